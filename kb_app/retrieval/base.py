"""The retriever seam."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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

    @property
    def chunk_id(self) -> str:
        return self.chunk.id


@dataclass
class Candidate:
    """A chunk found but not yet read: a hit without its text, for ranking stages that need none (reading the text
    of every candidate cost more than both searches at 100k chunks)."""

    chunk_id: str
    score: float
    dense_score: float | None = None
    lexical_score: float | None = None
    dense_rank: int | None = None
    lexical_rank: int | None = None
    rerank_score: float | None = None


class Retriever(Protocol):
    def retrieve(self, query: str, k: int) -> list[Hit]: ...


@runtime_checkable
class CandidateRetriever(Retriever, Protocol):
    """A retriever that can rank before it reads: ``read`` turns the candidates kept into hits, in their order."""

    def candidates(self, query: str, k: int) -> list[Candidate]: ...

    def read(self, candidates: list[Candidate]) -> list[Hit]: ...
