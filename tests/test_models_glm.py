"""GLM through llama.cpp and transformers, on a tiny GLM built offline (tests/glm_fixture.py).

The tiny model's planted greedy answer is "hello world" followed by <|user|> (GLM's end of turn), so these
tests check real behaviour of every layer: the GGUF conversion (logits equal transformers'), the templates
(token by token equal to the tokenizer's own apply_chat_template), streaming, max_tokens and the stop token.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import threading
import time
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from kb_app.models.base import Capabilities, Message
from kb_app.models.errors import ModelGenerationError, ModelLoadError
from kb_app.models.factory import backend_capabilities, build_chat_model, capabilities_of
from kb_app.models.glm_templates import (
    CHATGLM3_TEMPLATE,
    GLM4_TEMPLATE,
    choose_template,
    family_from_tokens,
    glm_family,
    is_usable_glm_template,
    render,
)
from kb_app.models.llama_cpp import LlamaCppModel
from kb_app.models.transformers_backend import TransformersModel, quantization_config
from kb_app.settings import LlmSettings
from tests.contracts import ChatModelContract
from tests.glm_fixture import (
    CHATGLM3_HF_TEMPLATE,
    CHATGLM3_SPECIAL_TOKENS,
    GLM4_HF_TEMPLATE,
    TinyGlm,
    build_tokenizer,
    tiny_glm,  # noqa: F401 - the session fixture
)

CONVERSATIONS: list[list[Message]] = [
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "Answer from the documents."}, {"role": "user", "content": "What is kb?"}],
    [
        {"role": "system", "content": "根据已知信息回答问题。"},
        {"role": "user", "content": "已知信息：\n[1] 知识库根据你自己的文档回答问题。\n\n问题：它做什么？"},
        {"role": "assistant", "content": "  It answers from your documents [1].  "},
        {"role": "user", "content": "And numbers like 1234567? what's\n\n new"},
    ],
]
RAW = "{{ messages[0]['content'] }}"  # a template that sends the bare text, so no turn ever starts or ends
PING: list[Message] = [{"role": "user", "content": "ping"}]


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_glm: TinyGlm):  # noqa: F811
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_glm.hf_dir, local_files_only=True)


def _hf_ids(tokenizer, messages: list[Message]) -> list[int]:
    """The tokenizer's own apply_chat_template, tokenized by itself: the reference."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded)


# -- the conversion ---------------------------------------------------------------------------------------------


def test_gguf_logits_match_transformers(tiny_glm: TinyGlm, hf_tokenizer) -> None:  # noqa: F811
    """The F32 GGUF computes what transformers computes: tensor mapping, RoPE layout and vocabulary are right."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    ids = _hf_ids(hf_tokenizer, CONVERSATIONS[2])
    llm = Llama(str(tiny_glm.gguf_f32), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    ours = np.array(llm.scores[: len(ids)])
    model = AutoModelForCausalLM.from_pretrained(tiny_glm.hf_dir, local_files_only=True).eval()
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ours - reference).max() < 1e-3 * np.abs(reference).max()
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


# -- templates --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system+user", "multi-turn-zh"])
def test_glm4_template_token_by_token(tiny_glm: TinyGlm, hf_tokenizer, messages: list[Message]) -> None:  # noqa: F811
    """kb's GLM-4 template, rendered the way llama-cpp-python renders it and tokenized by llama.cpp from the GGUF,
    gives exactly the ids of the tokenizer's own apply_chat_template (glm-4-9b-chat's template)."""
    reference = _hf_ids(hf_tokenizer, messages)
    assert hf_tokenizer.encode(render(GLM4_TEMPLATE, messages), add_special_tokens=False) == reference

    model = LlamaCppModel(tiny_glm.gguf_q4_no_template, n_ctx=512, n_threads=2)
    assert model.template_source.startswith("kb's glm4 template")
    prompt = model.prompt(messages)
    assert prompt == render(GLM4_HF_TEMPLATE, messages)
    assert model._llm.tokenize(prompt.encode(), add_bos=False, special=True) == reference


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system+user", "multi-turn-zh"])
def test_chatglm3_template_token_by_token(messages: list[Message]) -> None:
    """kb's ChatGLM3 template against a ChatGLM3-style tokenizer's own apply_chat_template (chatglm3-6b's
    template) and against llama.cpp's built-in C++ "chatglm3" formatter."""
    import llama_cpp

    tokenizer = build_tokenizer(CHATGLM3_SPECIAL_TOKENS, CHATGLM3_HF_TEMPLATE)
    ours = render(CHATGLM3_TEMPLATE, messages)
    assert tokenizer.encode(ours, add_special_tokens=False) == _hf_ids(tokenizer, messages)

    chat = (llama_cpp.llama_chat_message * len(messages))(
        *(llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in messages)
    )
    buf = ctypes.create_string_buffer(8192)
    n = llama_cpp.llama_chat_apply_template(b"chatglm3", chat, len(messages), True, buf, len(buf))
    assert buf.raw[:n].decode() == ours


def test_template_choice() -> None:
    good_glm4 = GLM4_HF_TEMPLATE
    llama2 = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    assert choose_template(None, None, None) == (None, "model")  # not a GLM: left to llama-cpp-python
    assert choose_template(None, "glm4", good_glm4) == (good_glm4, "model")
    assert choose_template(None, "glm4", None)[0] == GLM4_TEMPLATE
    assert choose_template(None, "glm4", llama2)[0] == GLM4_TEMPLATE  # renders, but not a GLM conversation
    assert choose_template(None, "chatglm3", "{% for m in messages %}{{ m.content ")[0] == CHATGLM3_TEMPLATE
    assert choose_template("chatglm3", "glm4", good_glm4) == (CHATGLM3_TEMPLATE, "llm.chat_template")
    assert is_usable_glm_template(CHATGLM3_HF_TEMPLATE) and is_usable_glm_template(GLM4_TEMPLATE)
    assert (glm_family("chatglm", "llama"), glm_family("chatglm", "gpt2"), glm_family("glm4"), glm_family("qwen2")) == (
        "chatglm3",
        "glm4",
        "glm4",
        None,
    )
    glm4_vocab, glm3_vocab = {"[gMASK]", "<sop>", "<|user|>"}, {"[gMASK]", "sop", "<|user|>"}
    assert family_from_tokens(glm4_vocab.__contains__) == "glm4"
    assert family_from_tokens(glm3_vocab.__contains__) == "chatglm3"
    assert family_from_tokens({"<|im_start|>"}.__contains__) is None


# -- llama.cpp backend ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "source"),
    [
        ("gguf_q4", "model"),
        ("gguf_q4_no_template", "kb's glm4 template (the model's own is missing)"),
        ("gguf_q4_broken_template", "kb's glm4 template (the model's own is broken)"),
    ],
)
def test_llama_cpp_q4_streams_and_stops(tiny_glm: TinyGlm, variant: str, source: str) -> None:  # noqa: F811
    """Q4_0 GLM through the llama_cpp backend, chosen by settings alone: the GGUF's template when it is
    good, kb's when it is missing or does not even compile; the answer stops at <|user|>, not at max_tokens."""
    settings = LlmSettings(gguf_path=getattr(tiny_glm, variant), n_ctx=4096, n_threads=2)
    model = build_chat_model(settings, Path("unused-cache"))
    assert isinstance(model, LlamaCppModel)
    assert model.template_source == source
    assert model.context_length == 2048  # llm.n_ctx 4096 capped by the model's trained window
    messages: list[Message] = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    pieces = list(model.stream(messages, max_tokens=32, temperature=0.0))
    assert pieces == ["hello", " world"]  # two tokens, then <|user|> ended the turn well before 32
    assert list(model.stream(messages, max_tokens=1, temperature=0.0)) == ["hello"]


GLM_SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "[gMASK]", "<sop>", "<|endoftext|>")
ASK: list[Message] = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]


class TestLlamaCppContract(ChatModelContract):
    """The ChatModel contract for the llama_cpp backend on the tiny GLM (Q4_0)."""

    ASK = ASK
    SPECIALS = GLM_SPECIALS

    @pytest.fixture(scope="class")
    @classmethod
    def llm_settings(cls, tiny_glm: TinyGlm) -> LlmSettings:  # noqa: F811
        return LlmSettings(gguf_path=tiny_glm.gguf_q4, n_ctx=4096, n_threads=2)

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, llm_settings: LlmSettings) -> LlamaCppModel:
        return build_chat_model(llm_settings, Path("unused-cache"))  # type: ignore[return-value]

    @pytest.fixture(scope="class")
    @classmethod
    def looping(cls, tiny_glm: TinyGlm) -> tuple[LlamaCppModel, list[Message]]:  # noqa: F811
        """Without the chat template the tiny model loops "ping pong" forever: only max_tokens ends it."""
        return LlamaCppModel(tiny_glm.gguf_q4, n_ctx=512, n_threads=2, chat_template=RAW), PING

    @pytest.fixture(scope="class")
    @classmethod
    def reference_count(cls, hf_tokenizer):
        return lambda text: len(hf_tokenizer.encode(text, add_special_tokens=False))

    def evaluated_ids(self, model, messages):
        return model._prompt_tokens(messages)

    def special_ids(self, model):
        return {model._special_id(s) for s in self.SPECIALS} - {None}

    def decode(self, model, ids):
        return model._llm.detokenize(ids, special=True).decode("utf-8", errors="replace")


def test_llama_cpp_context_length_follows_n_ctx(tiny_glm: TinyGlm) -> None:  # noqa: F811
    assert LlamaCppModel(tiny_glm.gguf_q4, n_ctx=512, n_threads=2).context_length == 512


def test_llama_cpp_reads_the_weights_unless_told_to_map_them(tiny_glm: TinyGlm) -> None:  # noqa: F811
    """llm.use_mmap off: llama.cpp's repacked copy of the weights is all that stays resident, not the file too."""
    path = str(tiny_glm.gguf_q4.resolve())
    read = LlamaCppModel(tiny_glm.gguf_q4, n_ctx=512, n_threads=2)
    assert path not in Path("/proc/self/maps").read_text()
    mapped = LlamaCppModel(tiny_glm.gguf_q4, n_ctx=512, n_threads=2, use_mmap=True)
    assert path in Path("/proc/self/maps").read_text()
    assert read.context_length == mapped.context_length == 512


def test_llm_flash_attn_reaches_llama_cpp_and_leaves_the_answer_alone(tiny_glm: TinyGlm) -> None:  # noqa: F811
    """llm.flash_attn (on by default: the first token sooner on 2 cores) is what llama.cpp's context is built with,
    and the fused attention gives the planted greedy answer and its log-probability as the plain path does."""
    built = {}
    for flash in (True, False):
        settings = LlmSettings(gguf_path=tiny_glm.gguf_q4, n_ctx=512, n_threads=2, flash_attn=flash)
        model = build_chat_model(settings, Path("unused-cache"))
        wanted = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        assert model._llm.context_params.flash_attn_type == wanted
        assert "".join(model.stream(ASK, 16, 0.0)) == "hello world"
        built[flash] = model.reply_logprob(ASK, "hello world")
    assert LlmSettings().flash_attn is True
    assert built[True] == pytest.approx(built[False], abs=0.05)


def test_llama_cpp_chat_format_declares_no_probabilities(tiny_glm: TinyGlm) -> None:  # noqa: F811
    """llama.cpp formats the prompt itself with llm.chat_format, so kb cannot read its token probabilities: the
    model says so, and so does the factory from settings alone."""
    settings = LlmSettings(gguf_path=tiny_glm.gguf_q4, n_ctx=512, n_threads=2, chat_format="chatml")
    model = build_chat_model(settings, Path("unused-cache"))
    assert backend_capabilities(settings) == capabilities_of(model) == Capabilities(False, False)
    with pytest.raises(ModelGenerationError):
        model.reply_logprob(ASK, "hello")


# -- transformers backend ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_settings(tiny_glm: TinyGlm) -> LlmSettings:  # noqa: F811
    return LlmSettings(backend="transformers", hf_path=str(tiny_glm.hf_dir), quantization="int8", device="cpu")


@pytest.fixture(scope="module")
def int8_model(int8_settings: LlmSettings) -> TransformersModel:
    model = build_chat_model(int8_settings, Path("unused-cache"))
    assert isinstance(model, TransformersModel)
    return model


def test_transformers_int8_on_cpu_streams_and_stops(int8_model: TransformersModel) -> None:
    import torch

    layers = int8_model._model.model.layers[0]
    for linear in (layers.self_attn.q_proj, layers.mlp.gate_up_proj, int8_model._model.lm_head):
        assert isinstance(linear, torch.ao.nn.quantized.dynamic.Linear)  # int8 weights, really applied
        assert linear.weight().dtype == torch.qint8
    assert int8_model.template_source == "model" and int8_model.context_length == 2048
    messages: list[Message] = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    pieces = list(int8_model.stream(messages, max_tokens=32, temperature=0.0))
    assert len(pieces) >= 2 and "".join(pieces) == "hello world"  # streamed, stopped by <|user|>
    assert "".join(int8_model.stream(messages, max_tokens=1, temperature=0.0)) == "hello"


class TestTransformersContract(ChatModelContract):
    """The ChatModel contract for the transformers backend on the tiny GLM checkpoint (CPU int8)."""

    ASK = ASK
    SPECIALS = GLM_SPECIALS

    @pytest.fixture(scope="class")
    @classmethod
    def llm_settings(cls, int8_settings: LlmSettings) -> LlmSettings:
        return int8_settings

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, int8_model: TransformersModel) -> TransformersModel:
        return int8_model  # built by the factory from these llm_settings

    @pytest.fixture(scope="class")
    @classmethod
    def looping(cls, tiny_glm: TinyGlm) -> tuple[TransformersModel, list[Message]]:  # noqa: F811
        return TransformersModel(tiny_glm.hf_dir, quantization="none", device="cpu", chat_template=RAW), PING

    @pytest.fixture(scope="class")
    @classmethod
    def reference_count(cls, hf_tokenizer):
        return lambda text: len(hf_tokenizer.encode(text, add_special_tokens=False))

    def evaluated_ids(self, model, messages):
        return model._tokenizer.encode(model.prompt(messages), add_special_tokens=False)

    def special_ids(self, model):
        return {model._tokenizer.convert_tokens_to_ids(s) for s in self.SPECIALS if model._has_token(s)}

    def decode(self, model, ids):
        return model._tokenizer.decode(ids)


def test_transformers_closing_the_stream_cancels_generate(tiny_glm: TinyGlm) -> None:  # noqa: F811
    """Closing the stream cancels generate() at once instead of letting it run on to max_tokens in the background."""
    model = TransformersModel(tiny_glm.hf_dir, quantization="none", device="cpu", chat_template=RAW)
    stream = model.stream(PING, max_tokens=1500, temperature=0.0)  # about 20 s if it were not cancelled
    next(stream)
    started = time.perf_counter()
    stream.close()
    assert time.perf_counter() - started < 2
    assert not [t for t in threading.enumerate() if t.name == "kb-transformers-generate"]


def test_transformers_without_chat_template_uses_kbs(tiny_glm: TinyGlm, tmp_path: Path, hf_tokenizer) -> None:  # noqa: F811
    bare = tmp_path / "glm-no-template"
    shutil.copytree(tiny_glm.hf_dir, bare)
    (bare / "chat_template.jinja").unlink()
    model = TransformersModel(bare, quantization="none", device="cpu")
    assert model.template_source == "kb's glm4 template (the model's own is missing)"
    for messages in CONVERSATIONS:
        ids = model._tokenizer.encode(model.prompt(messages), add_special_tokens=False)
        assert ids == _hf_ids(hf_tokenizer, messages)
    assert "".join(model.stream(CONVERSATIONS[1], 16, 0.0)) == "hello world"


def test_bitsandbytes_configs_are_built_for_a_gpu() -> None:
    """No GPU here: only the configuration is checked. The 4/8-bit load itself runs only on a CUDA machine
    (see docs/glm.md); on a CPU the backend refuses before loading anything."""
    import torch

    four = quantization_config("4bit", "cuda")
    assert four.load_in_4bit and not four.load_in_8bit
    assert four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    eight = quantization_config("8bit", "cuda")
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert quantization_config("none", "cpu") is None
    with pytest.raises(ModelLoadError, match="CUDA GPU") as info:
        quantization_config("4bit", "cpu")
    assert "int8" in info.value.hint
    with pytest.raises(ModelLoadError) as info:
        quantization_config("int8", "cuda")  # CPU int8; a GPU has bitsandbytes
    assert "8bit" in info.value.hint


def test_remote_code_is_off_by_default(tmp_path: Path) -> None:
    """A ChatGLM3 checkpoint ships its own modelling code: kb refuses to run it unless told to, at once."""
    folder = tmp_path / "chatglm3-6b"
    folder.mkdir()
    config = {"model_type": "chatglm", "auto_map": {"AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        build_chat_model(LlmSettings(backend="transformers", hf_path=str(folder)), Path("unused-cache"))
    assert time.perf_counter() - started < 2
    assert "llm.trust_remote_code" in info.value.hint
