"""Nearest neighbours of the query embedding in the knowledge base's Chroma collection."""

from __future__ import annotations

from ingest.embedders import Embedder
from ingest.vector_store import ChromaVectorStore
from kb_app.retrieval.base import Hit


class DenseRetriever:
    def __init__(self, embedder: Embedder, vectors: ChromaVectorStore) -> None:
        self._embedder = embedder
        self._vectors = vectors

    def retrieve(self, query: str, k: int) -> list[Hit]:
        found = self._vectors.query(self._embedder.embed_query(query), k)
        return [Hit(chunk=c, score=c.score, dense_score=c.score, dense_rank=n) for n, c in enumerate(found, 1)]
