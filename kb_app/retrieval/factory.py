"""Builds the retriever that ``retrieval.mode`` names, wrapped in the rerank stage that ``rerank`` configures."""

from __future__ import annotations

from ingest.embedders import Embedder
from ingest.knowledge_base import KnowledgeBase
from kb_app.retrieval.base import Retriever
from kb_app.retrieval.dense import DenseRetriever
from kb_app.retrieval.hybrid import HybridRetriever
from kb_app.retrieval.lexical import LexicalRetriever
from kb_app.retrieval.rerank import RerankingRetriever, build_reranker
from kb_app.settings import RerankSettings, RetrievalSettings


def build_retriever(
    settings: RetrievalSettings, embedder: Embedder, kb: KnowledgeBase, rerank: RerankSettings | None = None
) -> Retriever:
    dense = DenseRetriever(embedder, kb.vectors)
    lexical = LexicalRetriever(kb.lexical, kb.vectors)
    retrievers: dict[str, Retriever] = {
        "dense": dense,
        "lexical": lexical,
        "hybrid": HybridRetriever(dense, lexical, embedder, kb.vectors, settings.fetch_k, settings.rrf_k),
    }
    base = retrievers[settings.mode]
    reranker = build_reranker(rerank, kb.lexical) if rerank else None
    if reranker is None:
        return base
    return RerankingRetriever(base, reranker, rerank.candidates, rerank.languages)
