"""BM25 over jieba tokens: exact names, numbers and rare terms that embeddings blur."""

from __future__ import annotations

from ingest.lexical_store import Bm25Store
from ingest.vector_store import ChromaVectorStore
from kb_app.retrieval.base import Hit


class LexicalRetriever:
    def __init__(self, lexical: Bm25Store, vectors: ChromaVectorStore) -> None:
        self._lexical = lexical
        self._vectors = vectors

    def retrieve(self, query: str, k: int) -> list[Hit]:
        scored = self._lexical.search(query, k)
        chunks = {c.id: c for c in self._vectors.get([cid for cid, _ in scored])}
        found = [(chunks[cid], s) for cid, s in scored if cid in chunks]
        return [Hit(chunk=c, score=s, lexical_score=s, lexical_rank=n) for n, (c, s) in enumerate(found, 1)]
