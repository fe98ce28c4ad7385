"""The model seam: anything that streams a chat completion."""

from __future__ import annotations

from collections.abc import Iterator
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
