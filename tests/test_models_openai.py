"""The OpenAI-compatible backend against a real server: ``python -m llama_cpp.server`` on 127.0.0.1 serving the
default GGUF. Servers are started on free ports, waited for with a bounded timeout and always killed."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kb_app.errors import KbError
from kb_app.models.base import Message
from kb_app.models.errors import ModelServerError
from kb_app.models.factory import build_chat_model, resolve_gguf
from kb_app.models.openai_compatible import OpenAICompatibleModel, estimate_tokens
from kb_app.settings import LlmSettings, load_settings
from tests.contracts import ChatModelContract
from tests.servers import KEY, N_CTX, LlamaServer, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf() -> Path:
    return resolve_gguf(LlmSettings(), load_settings().cache_dir)


@pytest.fixture(scope="module")
def server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    running = LlamaServer(gguf, free_port(), tmp_path_factory.mktemp("server") / "server.log").start()
    try:
        yield running
    finally:
        running.kill()


def openai_settings(base_url: str, **extra: object) -> LlmSettings:
    return LlmSettings(backend="openai", base_url=base_url, api_key=KEY, n_ctx=N_CTX, **extra)


QUESTION = [{"role": "user", "content": "What is 2+2? Reply with just the number."}]
LONG = [{"role": "user", "content": "Count from 1 to 300, separated by commas. Do not stop early."}]


def test_normal_answer(server: LlamaServer, gguf: Path) -> None:
    model = build_chat_model(openai_settings(server.base_url, tokenizer_path=str(gguf)), Path("unused-cache"))
    assert isinstance(model, OpenAICompatibleModel)
    assert "4" in "".join(model.stream(QUESTION, max_tokens=8, temperature=0.0))
    assert model.name == str(gguf)  # llm.model unset: the first (only) model the server lists
    assert model.context_length == N_CTX
    text = "已知信息：知识库根据你自己的文档回答问题。Question: what does it do?"
    local = model.count_tokens(text)  # llm.tokenizer_path: the GGUF's own tokenizer, read locally
    remote = build_chat_model(openai_settings(server.base_url), Path("unused-cache")).count_tokens(text)
    assert local == remote  # the server's /extras/tokenize/count uses the same tokenizer


def test_streamed_answer(server: LlamaServer) -> None:
    model = build_chat_model(openai_settings(server.base_url), Path("unused-cache"))
    started = time.perf_counter()
    arrivals: list[float] = []
    pieces: list[str] = []
    for piece in model.stream([{"role": "user", "content": "Count from 1 to 10, separated by commas."}], 40, 0.0):
        arrivals.append(time.perf_counter() - started)
        pieces.append(piece)
    assert len(pieces) > 5
    assert arrivals[0] < arrivals[-1] - 0.05  # pieces came as they were generated, not all at the end
    assert "1, 2, 3" in "".join(pieces)


YES_NO = [["yes", "Yes", " yes", " Yes"], ["no", "No", " no", " No"]]
ASK_YES = [{"role": "user", "content": "Is Paris the capital of France? Answer yes or no."}]


def test_reply_probabilities_come_from_the_servers_logprobs(server: LlamaServer) -> None:
    """The refusal check's yes/no reading over HTTP: the server's top_logprobs for the first token."""
    model = build_chat_model(openai_settings(server.base_url), Path("unused-cache"))
    yes, no = model.reply_start_logprobs(ASK_YES, YES_NO)
    assert math.log(0.5) < yes <= 0.0 and no < yes


def test_a_server_without_logprobs_names_the_setting(gguf: Path, tmp_path: Path) -> None:
    plain = LlamaServer(gguf, free_port(), tmp_path / "plain.log", "--logits_all", "False").start()
    try:
        model = build_chat_model(openai_settings(plain.base_url, max_retries=0), Path("unused-cache"))
        with pytest.raises(ModelServerError) as info:
            model.reply_start_logprobs(ASK_YES, YES_NO)
    finally:
        plain.kill()
    assert "log-probabilities" in info.value.message and "refusal.check: similarity" in info.value.hint


def test_server_killed_mid_stream_then_restarted(gguf: Path, tmp_path: Path) -> None:
    """A server that dies in the middle of an answer gives a clean KbError; once it is back, the same model
    object answers again."""
    victim = LlamaServer(gguf, free_port(), tmp_path / "victim.log").start()
    try:
        model = build_chat_model(openai_settings(victim.base_url), Path("unused-cache"))
        received: list[str] = []
        with pytest.raises(ModelServerError) as info:
            for piece in model.stream(LONG, max_tokens=600, temperature=0.0):
                received.append(piece)
                if len(received) == 3:
                    victim.kill()
        assert len(received) >= 3
        assert isinstance(info.value, KbError) and victim.base_url in info.value.message
        assert "running" in info.value.hint

        victim.start()
        assert "4" in "".join(model.stream(QUESTION, max_tokens=8, temperature=0.0))
    finally:
        victim.kill()


def test_server_down_fails_fast_with_a_hint() -> None:
    port = free_port()  # nothing listens there
    model = build_chat_model(openai_settings(f"http://127.0.0.1:{port}/v1", max_retries=2), Path("unused-cache"))
    started = time.perf_counter()
    with pytest.raises(ModelServerError) as info:
        list(model.stream(QUESTION, 8, 0.0))
    assert time.perf_counter() - started < 10  # two retries with backoff, never a long wait
    assert "cannot reach" in info.value.message and "llm.base_url" in info.value.hint
    assert model.context_length == N_CTX  # unreachable: falls back to llm.n_ctx instead of failing
    assert model.count_tokens("你好 world") == estimate_tokens("你好 world")


def test_silent_server_times_out() -> None:
    """A server that accepts the connection but never answers is given up after llm.timeout_s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                accepted.append(listener.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        model = build_chat_model(openai_settings(url, model="m", timeout_s=0.5, max_retries=0), Path("unused-cache"))
        started = time.perf_counter()
        with pytest.raises(ModelServerError) as info:
            list(model.stream(QUESTION, 8, 0.0))
        assert time.perf_counter() - started < 5
        assert "0.5 s" in info.value.message and "llm.timeout_s" in info.value.hint
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


def test_wrong_key_names_the_setting(server: LlamaServer) -> None:
    settings = LlmSettings(backend="openai", base_url=server.base_url, api_key="wrong", model="x")
    with pytest.raises(ModelServerError) as info:
        list(build_chat_model(settings, Path("unused-cache")).stream(QUESTION, 8, 0.0))
    assert "401" in info.value.message and "llm.api_key" in info.value.hint


@pytest.fixture(scope="module")
def vocab(gguf: Path) -> Iterator[object]:
    """The served GGUF's own tokenizer, read locally: what the server tokenizes with."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    yield llm
    llm.close()


class TestOpenAIContract(ChatModelContract):
    """The ChatModel contract over HTTP, against the real llama_cpp.server serving the default GGUF (Qwen, ChatML).

    The server renders and tokenizes the prompt itself, so what the model reads is checked in what kb sends:
    each message's content, tokenized by the served GGUF's tokenizer with special tokens on.
    """

    ASK = QUESTION
    SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")

    @pytest.fixture(scope="class")
    @classmethod
    def llm_settings(cls, server: LlamaServer) -> LlmSettings:
        return openai_settings(server.base_url)

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, llm_settings: LlmSettings) -> OpenAICompatibleModel:
        return build_chat_model(llm_settings, Path("unused-cache"))  # type: ignore[return-value]

    @pytest.fixture(scope="class")
    @classmethod
    def looping(cls, model: OpenAICompatibleModel) -> tuple[OpenAICompatibleModel, list[Message]]:
        return model, LONG

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def reference_count(cls, vocab):
        cls.vocab = vocab  # for the hooks below
        return lambda text: len(vocab.tokenize(text.encode(), add_bos=False, special=True))

    def evaluated_ids(self, model, messages):
        sent: list[dict] = []
        model._client.event_hooks = {"request": [lambda r: sent.append(json.loads(r.content))], "response": []}
        try:
            "".join(model.stream(messages, max_tokens=1, temperature=0.0))
        finally:
            model._client.event_hooks = {"request": [], "response": []}
        contents = [m["content"].encode() for m in sent[-1]["messages"]]
        return [i for content in contents for i in self.vocab.tokenize(content, False, special=True)]

    def special_ids(self, model):
        return {ids[0] for ids in (self.vocab.tokenize(s.encode(), False, special=True) for s in self.SPECIALS)}

    def decode(self, model, ids):
        return self.vocab.detokenize(ids, special=True).decode("utf-8", errors="replace")


def test_proxy_variables_are_ignored_unless_asked(server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Questions and passages for a loopback server never go through HTTP(S)_PROXY (here a port nothing serves);
    llm.use_proxy_env routes them there, which is how this test knows the variables are really read."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    direct = build_chat_model(openai_settings(server.base_url), Path("unused-cache"))
    assert "4" in "".join(direct.stream(QUESTION, max_tokens=8, temperature=0.0))
    proxied = build_chat_model(openai_settings(server.base_url, use_proxy_env=True, max_retries=0), Path("unused"))
    with pytest.raises(ModelServerError, match="cannot reach"):
        list(proxied.stream(QUESTION, max_tokens=8, temperature=0.0))
