"""A tiny randomly initialised GLM, built offline: a Hugging Face directory, and GGUFs for llama.cpp.

No GLM weights can be downloaded here, so the tests build one: ``GlmConfig`` (the architecture of
``glm-4-9b-chat-hf``) with 2 layers and a 64-wide hidden state, a byte-level BPE tokenizer trained on a few
sentences with GLM-4's pre-tokenizer and special tokens, and GLM-4's own chat template.

The weights are random except for a planted chain: after ``<|assistant|>`` the model says "hello", then
" world", then ``<|user|>`` (GLM's end of turn). That makes greedy output deterministic on every backend, so the
tests can check templating, streaming, ``max_tokens`` and the stop token rather than just "something came out".

llama.cpp's converter (``convert_hf_to_gguf.py``) is not in any installed package (it ships only in the
llama-cpp-python sdist) and it refuses a tokenizer whose pre-tokenizer hash it does not know, which a tiny
trained one never matches. So ``write_gguf`` writes the GGUF with the ``gguf`` package the same way the
converter's ``ChatGLMModel`` does for ``GlmForCausalLM``: architecture ``chatglm``, ``gpt2`` tokenizer with the
``chatglm-bpe`` pre-tokenizer, tensor names from ``gguf.get_tensor_name_map``. A logits comparison against
transformers checks that the mapping is right. Checked once by hand against the real converter (from the
llama-cpp-python 0.3.36 sdist, its pre-tokenizer hash check bypassed): same tensors bit for bit, same vocabulary,
merges, special tokens and template; the converter only differs in writing ``chatglm.context_length`` = the hidden
size (its fallback when a config has no ``seq_length``), where this writes ``max_position_embeddings``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

# GLM-4's special tokens, in the order of the real tokenizer (there they start at id 151329).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
# ChatGLM3's: "sop"/"eop" without brackets; the roles are the same.
CHATGLM3_SPECIAL_TOKENS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>"]

# GLM-4's pre-tokenizer split (tokenizer.json of glm-4-9b-chat-hf); llama.cpp's "chatglm-bpe" uses the same.
GLM4_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The chat template in glm-4-9b-chat's tokenizer_config.json, with the long Chinese tool preamble shortened
# (the tool branch is never taken by kb). This is the reference kb's shipped template is tested against.
GLM4_HF_TEMPLATE = (
    "[gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>\n"
    "你是一个名为 ChatGLM 的人工智能助手。\n\n# 可用工具{% set tools = item['tools'] %}{% for tool in tools %}"
    "{% if tool['type'] == 'function' %}\n\n## {{ tool['function']['name'] }}\n\n"
    "{{ tool['function'] | tojson(indent=4) }}\n......{% endif %}{% endfor %}{% endif %}"
    "{% if item['content'] %}<|{{ item['role'] }}|>{{ item['metadata'] }}\n{{ item['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# chatglm3-6b's tokenizer_config.json chat_template.
CHATGLM3_HF_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n {{ message['content'] }}"
    "{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

CORPUS = [
    "hello world, hello there. The knowledge base answers questions from your own documents.",
    "Hello world! It cites the file and the page, so every answer can be checked.",
    "你好，世界。知识库根据你自己的文档回答问题，并给出处。",
    "根据已知信息回答问题。如果无法从中得到答案，请说根据已知信息无法回答该问题。",
    "The model runs on this machine: nothing is downloaded and nothing leaves it. 1234567890",
    "GLM-4 and ChatGLM3 are bilingual chat models; kb runs them through llama.cpp or transformers.",
    "ping pong ping pong, ping pong ping pong.",
]
ANSWER = ["hello", " world"]  # the planted greedy answer after <|assistant|>
LOOP = ["ping", " pong"]  # planted cycle: after "ping" comes " pong", after " pong" comes " ping"... no stop
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128
CONTEXT = 2048


@dataclass(frozen=True)
class TinyGlm:
    hf_dir: Path  # transformers checkpoint (GlmForCausalLM) with tokenizer and chat template
    gguf_f32: Path  # the same weights as GGUF, chat template included
    gguf_q4: Path  # Q4_0 quantized, chat template included
    gguf_q4_no_template: Path  # Q4_0 without tokenizer.chat_template (as some GLM GGUFs are published)
    gguf_q4_broken_template: Path  # Q4_0 whose template does not even parse
    answer: str  # what greedy decoding says after <|assistant|>


def build_tokenizer(special_tokens: list[str], template: str, vocab_size: int = 400):
    """A byte-level BPE tokenizer with GLM-4's pre-tokenizer, trained on a few sentences, as transformers loads it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GLM4_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens(special_tokens)  # appended after the BPE vocabulary, as in the real tokenizer
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>" if "<|endoftext|>" in special_tokens else None,
        pad_token="<|endoftext|>" if "<|endoftext|>" in special_tokens else None,
        chat_template=template,
        clean_up_tokenization_spaces=False,
    )


def build_hf_model(out_dir: Path) -> tuple[Path, str]:
    """Save a tiny ``GlmForCausalLM`` with its tokenizer to ``out_dir``; returns the dir and the planted answer."""
    import torch
    from transformers import GenerationConfig, GlmConfig, GlmForCausalLM

    tokenizer = build_tokenizer(SPECIAL_TOKENS, GLM4_HF_TEMPLATE)
    vocab = len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    answer_ids = [tokenizer.encode(piece, add_special_tokens=False) for piece in ANSWER]
    loop_ids = [tokenizer.encode(piece, add_special_tokens=False) for piece in [*LOOP, " ping"]]
    assert all(len(a) == 1 for a in answer_ids + loop_ids), f"must be single tokens: {answer_ids} {loop_ids}"
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    config = GlmConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HIDDEN // HEADS,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=eos,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = GlmForCausalLM(config).eval()
    with torch.no_grad():
        # Large, random embeddings keep the residual stream dominated by the current token, so a row of the
        # output matrix aligned with token A's embedding makes its token the greedy successor of A.
        embed = torch.randn(vocab, HIDDEN)
        model.model.embed_tokens.weight.copy_(embed)
        head = torch.randn(vocab, HIDDEN) * 0.02
        chain = [ids["<|assistant|>"], *(a[0] for a in answer_ids), ids["<|user|>"]]
        ping, pong, space_ping = (ids[0] for ids in loop_ids)
        for prev, nxt in [*itertools.pairwise(chain), (ping, pong), (pong, space_ping), (space_ping, pong)]:
            head[nxt] += 2.5 * embed[prev] / embed[prev].norm()
        model.lm_head.weight.copy_(head)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir, "".join(ANSWER)


def _vocab_for_gguf(hf_dir: Path) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """Tokens (byte-level strings, by id), token types, merges and special ids, as the converter reads them."""
    import gguf

    data = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    special = {t["content"]: t["id"] for t in data["added_tokens"]}
    vocab.update(special)
    tokens = [""] * len(vocab)
    types = [int(gguf.TokenType.NORMAL)] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
        if text in special:
            types[i] = int(gguf.TokenType.CONTROL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return tokens, types, merges, special


def write_gguf(hf_dir: Path, out: Path, chat_template: str | None) -> Path:
    """Write the checkpoint in ``hf_dir`` as an F32 GGUF of llama.cpp's ``chatglm`` architecture."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    arch = gguf.MODEL_ARCH.CHATGLM
    n_layers = config["num_hidden_layers"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    rope = config.get("rope_parameters") or {}
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name("tiny-glm-4")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(n_layers)
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 0.5)))
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens, types, merges, special = _vocab_for_gguf(hf_dir)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("chatglm-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(special["<|endoftext|>"])
    writer.add_eot_token_id(special["<|user|>"])
    writer.add_unk_token_id(special["<|endoftext|>"])
    writer.add_pad_token_id(special["<|endoftext|>"])
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    names = gguf.get_tensor_name_map(arch, n_layers)
    tensors = load_file(str(hf_dir / "model.safetensors"))
    for hf_name, array in tensors.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"no GGUF name for {hf_name}"
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def quantize_q4_0(src: Path, dst: Path) -> Path:
    """Quantize with llama.cpp itself (``llama_model_quantize``), as ``llama-quantize model.gguf out.gguf Q4_0``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    assert rc == 0, f"llama_model_quantize failed with {rc}"
    return dst


def build_tiny_glm(root: Path) -> TinyGlm:
    hf_dir, answer = build_hf_model(root / "tiny-glm-4-hf")
    template = (hf_dir / "chat_template.jinja").read_text(encoding="utf-8")  # what transformers saved
    f32 = write_gguf(hf_dir, root / "tiny-glm-4-f32.gguf", template)
    bare = write_gguf(hf_dir, root / "tiny-glm-4-f32-no-template.gguf", None)
    broken = write_gguf(hf_dir, root / "tiny-glm-4-f32-broken-template.gguf", "{% for m in messages %}{{ m.content ")
    return TinyGlm(
        hf_dir=hf_dir,
        gguf_f32=f32,
        gguf_q4=quantize_q4_0(f32, root / "tiny-glm-4-q4_0.gguf"),
        gguf_q4_no_template=quantize_q4_0(bare, root / "tiny-glm-4-q4_0-no-template.gguf"),
        gguf_q4_broken_template=quantize_q4_0(broken, root / "tiny-glm-4-q4_0-broken-template.gguf"),
        answer=answer,
    )


@pytest.fixture(scope="session")
def tiny_glm(tmp_path_factory: pytest.TempPathFactory) -> TinyGlm:
    """The tiny GLM, built once per test session (about 5 s) however many modules import this fixture."""
    root = tmp_path_factory.getbasetemp() / "tiny-glm"
    manifest = root / "built.json"
    if manifest.exists():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        return TinyGlm(**{k: Path(v) if k != "answer" else v for k, v in data.items()})
    root.mkdir(parents=True, exist_ok=True)
    built = build_tiny_glm(root)
    manifest.write_text(json.dumps({k: str(v) for k, v in built.__dict__.items()}), encoding="utf-8")
    return built
