"""Reciprocal-rank fusion of the dense and lexical legs: fetch wide from each, then cut to ``k``."""

from __future__ import annotations

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
        dense_scores: dict[str, float] = {}
        lexical_scores: dict[str, float] = {}
        chunks = {}
        query_vector = self._embedder.embed_query(query)
        legs = (
            (self._dense.retrieve_vector(query_vector, fetch), dense_scores),
            (self._lexical.retrieve(query, fetch), lexical_scores),
        )
        for hits, scores in legs:
            for rank, hit in enumerate(hits):
                fused[hit.chunk.id] = fused.get(hit.chunk.id, 0.0) + 1.0 / (self._rrf_k + rank + 1)
                scores[hit.chunk.id] = hit.score
                chunks[hit.chunk.id] = hit.chunk
        best = sorted(fused, key=fused.__getitem__, reverse=True)[:k]
        dense_scores.update(self._cosines(query_vector, [i for i in best if i not in dense_scores]))
        return [Hit(chunks[i], fused[i], dense_scores.get(i), lexical_scores.get(i)) for i in best]

    def _cosines(self, query_vector: np.ndarray, ids: list[str]) -> dict[str, float]:
        """Cosine for hits found only lexically, so refusal judges every hit on one scale."""
        if not ids:
            return {}
        return {cid: float(np.dot(vec, query_vector)) for cid, vec in self._vectors.embeddings(ids).items()}
