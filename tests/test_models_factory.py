"""Backend selection by settings alone, `kb models`, offline failures, and context budgeting with GLM's tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

import pytest
from typer.testing import CliRunner

from ingest.vector_store import StoredChunk
from kb_app.chat.prompt import PromptBuilder
from kb_app.cli import app
from kb_app.errors import ModelNotFoundError, SettingsError
from kb_app.models import bundled
from kb_app.models.base import Capabilities
from kb_app.models.errors import ModelLoadError
from kb_app.models.factory import (
    BACKENDS,
    CAPABILITIES,
    DESCRIBERS,
    backend_capabilities,
    build_chat_model,
    describe_models,
    resolve_hf_dir,
)
from kb_app.models.llama_cpp import LlamaCppModel
from kb_app.models.openai_compatible import OpenAICompatibleModel
from kb_app.retrieval.base import Hit
from kb_app.settings import LlmSettings, Settings, load_settings
from tests.conftest import ROOT
from tests.glm_fixture import TinyGlm, tiny_glm  # noqa: F401 - the session fixture

HUB_NAME = "THUDM/glm-4-9b-chat"


@pytest.fixture
def empty_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Hugging Face cache: a hub name cannot be found locally."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


def test_every_backend_has_a_constructor_and_a_description() -> None:
    backends = set(get_args(LlmSettings.model_fields["backend"].annotation))
    assert backends == set(BACKENDS) == set(DESCRIBERS) == set(CAPABILITIES) == {"llama_cpp", "transformers", "openai"}


def test_backend_is_chosen_by_settings_alone(monkeypatch: pytest.MonkeyPatch, tiny_glm: TinyGlm) -> None:  # noqa: F811
    monkeypatch.setenv("KB_LLM__BACKEND", "openai")
    monkeypatch.setenv("KB_LLM__BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("KB_LLM__API_KEY", "secret-key")
    monkeypatch.setenv("KB_LLM__TIMEOUT_S", "7.5")
    settings = load_settings()
    model = build_chat_model(settings.llm, settings.cache_dir)  # contacts nothing until used
    assert isinstance(model, OpenAICompatibleModel) and model.base_url == "http://127.0.0.1:9/v1"
    assert settings.llm.timeout_s == 7.5 and settings.llm.trust_remote_code is False
    assert "secret-key" not in json.dumps([i.__dict__ for i in describe_models(settings.llm, settings.cache_dir)])

    monkeypatch.setenv("KB_LLM__BACKEND", "llama_cpp")
    monkeypatch.setenv("KB_LLM__GGUF_PATH", str(tiny_glm.gguf_q4))
    settings = load_settings()
    assert isinstance(build_chat_model(settings.llm, settings.cache_dir), LlamaCppModel)


def test_hub_name_while_offline_fails_at_once(empty_hf_home: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        build_chat_model(LlmSettings(backend="transformers", hf_path=HUB_NAME), Path("unused-cache"))
    assert time.perf_counter() - started < 2
    assert HUB_NAME in info.value.message and "never downloads" in info.value.message
    assert "llm.hf_path" in info.value.hint and "KB_LLM__HF_PATH" in info.value.hint
    assert "huggingface-cli download" in info.value.hint  # where the files come from, and where they go

    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        build_chat_model(LlmSettings(gguf_path="THUDM/glm-4-9b-chat-gguf"), Path("unused-cache"))
    assert time.perf_counter() - started < 2
    assert "llm.gguf_path" in info.value.hint


def test_hub_name_already_in_the_local_cache_is_used(empty_hf_home: Path) -> None:
    snapshot = empty_hf_home / "hub" / "models--THUDM--glm-4-9b-chat" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}", encoding="utf-8")
    assert resolve_hf_dir(LlmSettings(backend="transformers", hf_path=HUB_NAME)) == snapshot


def test_cli_check_with_a_hub_name_exits_at_once_with_the_setting(empty_hf_home: Path) -> None:
    env = {**os.environ, "KB_LLM__BACKEND": "transformers", "KB_LLM__HF_PATH": HUB_NAME, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "kb_app", "models", "check"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert time.perf_counter() - started < 15  # interpreter start and imports; nothing waits on a network
    assert result.returncode == 1
    assert "KB_LLM__HF_PATH" in result.stderr and HUB_NAME in result.stderr


def test_cli_models_list_and_check(tiny_glm: TinyGlm) -> None:  # noqa: F811
    runner = CliRunner()
    listed = runner.invoke(app, ["--gguf", str(tiny_glm.gguf_q4_no_template), "models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    active, *choices = json.loads(listed.output)
    assert [c["bundled"] for c in choices] == list(bundled.MODELS)  # every bundled choice, none in use
    default = choices[0]
    assert active["active"] and active["backend"] == "llama_cpp"
    assert active["source"] == str(tiny_glm.gguf_q4_no_template)
    assert active["quantization"] == "Q4_0" and active["context_length"] == 2048
    assert active["size_bytes"] == tiny_glm.gguf_q4_no_template.stat().st_size
    assert "kb's glm4 template" in active["note"] and "chatglm" in active["note"]
    assert not default["active"] and default["quantization"] == "IQ4_NL (re-quantized from Q4_K_M)"
    assert active["scores_replies"] and active["reads_first_token_logprobs"]

    checked = runner.invoke(app, ["--gguf", str(tiny_glm.gguf_q4_no_template), "models", "check", "--json"])
    assert checked.exit_code == 0, checked.output
    result = json.loads(checked.output)
    assert result["text"] == "hello world" and result["context_length"] == 2048 and result["tokens_in_probe"] > 5

    text = runner.invoke(app, ["--gguf", str(tiny_glm.gguf_q4), "models", "list"])
    assert "Q4_0" in text.output and "2048 tokens" in text.output and " KB" in text.output
    assert "can:           scores replies" in text.output


def test_capabilities_are_known_from_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is loaded or contacted: a server on a dead port and a GGUF that does not exist are fine."""
    monkeypatch.setenv("KB_LLM__BACKEND", "openai")
    monkeypatch.setenv("KB_LLM__BASE_URL", "http://127.0.0.1:9/v1")
    server = load_settings()
    assert backend_capabilities(server.llm) == Capabilities(scores_replies=False, reads_first_token_logprobs=True)
    (listed,) = [i for i in describe_models(server.llm, server.cache_dir) if i.active]
    assert not listed.scores_replies and listed.reads_first_token_logprobs
    missing = LlmSettings(gguf_path=Path("/nonexistent.gguf"))
    assert backend_capabilities(missing) == Capabilities(True, True)
    assert backend_capabilities(missing.model_copy(update={"chat_format": "chatml"})) == Capabilities(False, False)
    assert backend_capabilities(LlmSettings(backend="transformers")) == Capabilities(True, True)


def test_the_model_reread_is_built_only_for_a_backend_that_scores_replies(settings: Settings, tmp_path: Path) -> None:
    """rerank.model_passages asks for the model re-read; with a server (which cannot score a reply) the retriever
    is built without it, known from settings before any model is loaded, so a search never contacts the server."""
    from kb_app.assistant import Assistant
    from kb_app.retrieval.rerank import ModelRereadingRetriever

    doc = tmp_path / "leave.txt"
    doc.write_text("Employees get fifteen days of paid leave.\n\nThe office closes at six on Fridays.", "utf-8")
    rerank = settings.rerank.model_copy(update={"model_passages": {"en": 3}})
    for backend, rereads in (("openai", False), ("llama_cpp", True)):
        llm = LlmSettings(backend=backend, base_url="http://127.0.0.1:9/v1", max_retries=0)
        assistant = Assistant(settings.model_copy(update={"llm": llm, "rerank": rerank}))
        assistant.ingest([doc])
        assert isinstance(assistant.retriever(), ModelRereadingRetriever) == rereads
        if not rereads:
            assert assistant.search("How many days of paid leave?", k=1)[0].chunk.source == "leave.txt"
        assert assistant._parts.model is None  # decided without loading the model


def test_a_named_reader_model_rereads_while_the_chat_model_is_never_loaded(settings: Settings, tmp_path: Path) -> None:
    """rerank.reader_model: the bundled 0.5B re-reads (really loaded and scoring) beside a chat model that cannot
    score replies, a server nobody listens on: the search ranks with the reader and never contacts the server."""
    from kb_app.assistant import Assistant
    from kb_app.retrieval.rerank import ModelRereadingRetriever

    (tmp_path / "docs").mkdir()
    for name, text in (
        ("leave.txt", "Employees get fifteen days of paid leave a year."),
        ("office.txt", "The office closes at six on Fridays and opens at eight."),
    ):
        (tmp_path / "docs" / name).write_text(text, "utf-8")
    llm = LlmSettings(backend="openai", base_url="http://127.0.0.1:9/v1", max_retries=0)
    rerank = settings.rerank.model_copy(update={"model_passages": {"en": 2}, "reader_model": bundled.DEFAULT})
    assistant = Assistant(settings.model_copy(update={"llm": llm, "rerank": rerank}))
    assistant.ingest([tmp_path / "docs"])
    assert isinstance(assistant.retriever(), ModelRereadingRetriever)
    assert assistant.search("How many days of paid leave do employees get?", k=1)[0].chunk.source == "leave.txt"
    assert isinstance(assistant._parts.reader, LlamaCppModel) and assistant._parts.model is None
    same = settings.model_copy(update={"rerank": rerank})  # the reader named is the chat model: one model, loaded once
    assert Assistant(same)._reader_settings() is None
    with pytest.raises(SettingsError, match="reader_model"):
        load_settings(home=tmp_path / "home", **{"rerank.reader_model": "no-such-model"})


def test_describe_transformers_and_the_unassembled_default(tiny_glm: TinyGlm, tmp_path: Path) -> None:  # noqa: F811
    llm = LlmSettings(backend="transformers", hf_path=str(tiny_glm.hf_dir), quantization="int8")
    configured, default, *others = describe_models(llm, tmp_path / "empty-cache")
    assert configured.source == str(tiny_glm.hf_dir) and configured.quantization == "int8"
    assert configured.size_bytes == (tiny_glm.hf_dir / "model.safetensors").stat().st_size
    assert configured.context_length == 2048 and "model_type glm" in configured.note
    assert default.bundled == bundled.DEFAULT and default.size_bytes == bundled.MODELS[bundled.DEFAULT].size
    assert "bundled" in default.source and not default.active and not any(o.active for o in others)


def test_context_budget_uses_the_glm_tokenizer_and_drops_lowest_ranked(tiny_glm: TinyGlm, settings: Settings) -> None:  # noqa: F811
    """System prompt + context + question fit the window with room for the answer, counted by GLM's tokenizer."""
    model = LlamaCppModel(tiny_glm.gguf_q4, n_ctx=600, n_threads=2)
    assert model.context_length == 512  # a multiple of 256: llama.cpp would pad 600 to 768 (see context_window)
    max_tokens = 64
    hits = [
        Hit(
            StoredChunk(f"id{n}", f"第{n}段：知识库根据你自己的文档回答问题。" * 3, f"doc{n}.txt", None, 0, 1, 0.9),
            1 / n,
        )
        for n in range(1, 9)
    ]
    messages, kept = PromptBuilder(settings.prompts_dir).build(
        "它做什么？", hits, "zh", token_budget=model.context_length - max_tokens, count_tokens=model.count_tokens
    )
    assert 1 <= len(kept) < len(hits)
    assert [h.chunk.id for h in kept] == [f"id{n}" for n in range(1, len(kept) + 1)]  # the best ones stay
    prompt_tokens = len(model._prompt_tokens(messages))  # the real prompt, template included, as evaluated
    assert prompt_tokens + max_tokens <= model.context_length
    assert "".join(model.stream(messages, max_tokens, 0.0)) == "hello world"  # and llama.cpp accepts it


def test_a_file_that_is_not_gguf_is_refused_with_a_hint(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"<html>a download error page, not a model</html>")
    with pytest.raises(ModelLoadError) as info:
        build_chat_model(LlmSettings(gguf_path=fake), Path("unused-cache"))
    assert "not a readable GGUF" in info.value.message and "llm.gguf_path" in info.value.hint
