"""The retriever seam."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ingest.vector_store import StoredChunk


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk. ``score`` ranks hits; ``dense_score`` (cosine) is the evidence used to refuse."""

    chunk: StoredChunk
    score: float
    dense_score: float | None = None
    lexical_score: float | None = None


class Retriever(Protocol):
    def retrieve(self, query: str, k: int) -> list[Hit]: ...
