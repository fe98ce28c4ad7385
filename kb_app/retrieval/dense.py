"""Nearest neighbours of the query embedding in the knowledge base's Chroma collection."""

from __future__ import annotations

import numpy as np

from ingest.embedders import Embedder
from ingest.vector_store import ChromaVectorStore
from kb_app.retrieval.base import Hit


class DenseRetriever:
    def __init__(self, embedder: Embedder, vectors: ChromaVectorStore) -> None:
        self._embedder = embedder
        self._vectors = vectors

    def retrieve(self, query: str, k: int) -> list[Hit]:
        return self.retrieve_vector(self._embedder.embed_query(query), k)

    def retrieve_vector(self, vector: np.ndarray, k: int) -> list[Hit]:
        """For callers that need the query embedding too, so it is computed once."""
        found = self._vectors.query(vector, k)
        return [Hit(chunk=c, score=c.score, dense_score=c.score, dense_rank=n) for n, c in enumerate(found, 1)]
