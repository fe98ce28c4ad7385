"""Reciprocal-rank fusion of the dense and lexical legs: fetch wide from each, then cut to ``k``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ingest.embedders import Embedder
from ingest.vector_store import ChromaVectorStore
from kb_app.retrieval.base import Hit, Retriever
from kb_app.retrieval.dense import DenseRetriever


class HybridRetriever:
    def __init__(
        self,
        dense: DenseRetriever,
        lexical: Retriever,
        embedder: Embedder,
        vectors: ChromaVectorStore,
        fetch_k: int,
        rrf_k: int,
    ) -> None:
        self._dense = dense
        self._lexical = lexical
        self._embedder = embedder
        self._vectors = vectors
        self._fetch_k = fetch_k
        self._rrf_k = rrf_k

    def retrieve(self, query: str, k: int) -> list[Hit]:
        fetch = max(self._fetch_k, k)
        fused: dict[str, float] = {}
        found: dict[str, Hit] = {}  # each chunk's hit from both legs in one: its score and place in each
        query_vector = self._embedder.embed_query(query)
        for hits in (self._dense.retrieve_vector(query_vector, fetch), self._lexical.retrieve(query, fetch)):
            for rank, hit in enumerate(hits):
                fused[hit.chunk.id] = fused.get(hit.chunk.id, 0.0) + 1.0 / (self._rrf_k + rank + 1)
                found[hit.chunk.id] = _joined(found.get(hit.chunk.id), hit)
        best = sorted(fused, key=fused.__getitem__, reverse=True)[:k]
        cosines = self._cosines(query_vector, [i for i in best if found[i].dense_score is None])
        return [replace(found[i], score=fused[i], dense_score=cosines.get(i, found[i].dense_score)) for i in best]

    def _cosines(self, query_vector: np.ndarray, ids: list[str]) -> dict[str, float]:
        """Cosine for hits found only lexically, so refusal judges every hit on one scale."""
        if not ids:
            return {}
        return {cid: float(np.dot(vec, query_vector)) for cid, vec in self._vectors.embeddings(ids).items()}


def _joined(dense: Hit | None, lexical: Hit) -> Hit:
    """One chunk's hit from the dense leg (if it found it) with the lexical leg's score and place added."""
    if dense is None:
        return lexical
    return replace(dense, lexical_score=lexical.lexical_score, lexical_rank=lexical.lexical_rank)
