"""The retriever seam."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ingest.vector_store import StoredChunk


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk. ``score`` ranks hits; ``dense_score`` (cosine) is the evidence used to refuse.

    The rest says how it was found, so a person can see why it ranks where it does: its place (1-based) in each
    leg that returned it (None: that leg did not), the rerank stage's score if it ran, and the knowledge base.
    """

    chunk: StoredChunk
    score: float
    dense_score: float | None = None
    lexical_score: float | None = None
    dense_rank: int | None = None
    lexical_rank: int | None = None
    rerank_score: float | None = None
    kb: str = ""


class Retriever(Protocol):
    def retrieve(self, query: str, k: int) -> list[Hit]: ...
