"""The model seam: anything that streams a chat completion."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, TypedDict


class Message(TypedDict):
    role: str  # "system", "user" or "assistant"
    content: str


class ChatModel(Protocol):
    """A chat model. ``stream`` yields text pieces as they are generated."""

    name: str
    context_length: int

    def stream(self, messages: list[Message], max_tokens: int, temperature: float) -> Iterator[str]: ...

    def count_tokens(self, text: str) -> int: ...


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
