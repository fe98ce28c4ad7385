"""Untrusted text must never speak as the system: special-token strings in message content are neutralised.

Passages, file names, headings, questions and chat history are pasted into message content, and the rendered
prompt is tokenized with special tokens enabled (the chat template's own role markers must become tokens), so a
document holding ``<|im_end|>\\n<|im_start|>system`` would open a real system turn. Every backend therefore
rewrites each special-token string of its model inside message *content* before rendering: a zero-width joiner
after the first character (``<\\u200d|im_end|>``) reads the same to a person and tokenizes as ordinary text.
kb's own templates hold no special tokens in content, so content is exactly where untrusted text enters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from kb_app.models.base import Message

ZWJ = "\u200d"

# For a server, whose tokenizer kb cannot read: the role and control markers of the families kb is used with.
# ChatGLM3's bare "sop"/"eop" are left out: they mark no role, and as plain words they occur inside ordinary text.
KNOWN_SPECIAL_TOKENS = (
    # ChatML (Qwen, Yi, many fine-tunes)
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_sep|>",
    # ChatGLM3 / GLM-4
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "[gMASK]",
    "[sMASK]",
    "[MASK]",
    "<sop>",
    "<eop>",
    # Llama 3
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    # Llama 2 / Mistral
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<s>",
    "</s>",
    # Gemma, Phi-3
    "<start_of_turn>",
    "<end_of_turn>",
    "<|end|>",
)

_MARKUP = re.compile(r"^(<[^<>\s]+>|\[[^\[\]\s]+\])$")


def looks_like_markup(text: str) -> bool:
    """``<...>`` or ``[...]``: how added tokens that mark structure are spelled (``<tool_call>``, ``[gMASK]``).

    Vocabularies also add plain words as user-defined tokens; those are left alone.
    """
    return bool(_MARKUP.match(text))


class Neutraliser:
    """Rewrites every occurrence of a set of strings so that it no longer matches any of them."""

    def __init__(self, strings: Iterable[str], ignore_case: bool = False) -> None:
        # one character cannot be split; longest first so "<|im_start|>" wins over a shorter overlapping token
        self.strings = tuple(sorted({s for s in strings if len(s) > 1}, key=len, reverse=True))
        flags = re.IGNORECASE if ignore_case else 0
        self._pattern = re.compile("|".join(map(re.escape, self.strings)), flags) if self.strings else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        # a rewrite could in principle complete another string; repeat until nothing matches (each pass adds ZWJs)
        for _ in range(4):
            rewritten = self._pattern.sub(lambda m: m[0][0] + ZWJ + m[0][1:], text)
            if rewritten == text:
                return text
            text = rewritten
        return text

    def messages(self, messages: Iterable[Message]) -> list[Message]:
        """The messages with their content neutralised; roles and any other keys are kept."""
        return [{**m, "content": self(m["content"])} for m in messages]  # type: ignore[typeddict-item]


def gguf_special_tokens(llm: Any) -> list[str]:
    """Control and unknown tokens of a llama-cpp-python ``Llama``, and user-defined ones spelled as markup.

    llama.cpp matches control tokens in text only when asked to (``special=True``) and user-defined ones always.
    """
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    always = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    found = []
    for token in range(llm.n_vocab()):
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        if attr & always or attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED:
            text = llm._model.token_get_text(token)
            if attr & always or looks_like_markup(text):
                found.append(text)
    return found


def hf_special_tokens(tokenizer: Any) -> list[str]:
    """A transformers tokenizer's special tokens, and added tokens spelled as markup (all are matched in text)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = [t.content for t in added.values() if t.special or looks_like_markup(t.content)]
    return [*found, *getattr(tokenizer, "all_special_tokens", [])]
