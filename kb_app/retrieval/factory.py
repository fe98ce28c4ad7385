"""Builds the retriever that ``retrieval.mode`` names, wrapped in the rerank stage that ``rerank`` configures."""

from __future__ import annotations

from collections.abc import Callable

from ingest.embedders import Embedder
from ingest.knowledge_base import KnowledgeBase
from kb_app.language import Language
from kb_app.models.base import Capabilities, ChatModel, Message
from kb_app.retrieval.base import Hit, Retriever
from kb_app.retrieval.dense import DenseRetriever
from kb_app.retrieval.hybrid import HybridRetriever
from kb_app.retrieval.lexical import LexicalRetriever
from kb_app.retrieval.rerank import ModelRereadingRetriever, RerankingRetriever, build_reranker
from kb_app.settings import RerankSettings, RetrievalSettings


def build_retriever(
    settings: RetrievalSettings,
    embedder: Embedder,
    kb: KnowledgeBase,
    rerank: RerankSettings | None = None,
    model: Callable[[], ChatModel] | None = None,
    reading_prompt: Callable[[Hit, Language], list[Message]] | None = None,
    capabilities: Capabilities | None = None,
) -> Retriever:
    """``model`` and ``reading_prompt`` turn on the model re-read of ``rerank.model_passages``, for a model whose
    declared ``capabilities`` (``kb_app.models.factory.backend_capabilities``: no model is loaded) say it
    scores replies; any other model keeps the reranker's order."""
    dense = DenseRetriever(embedder, kb.vectors)
    lexical = LexicalRetriever(kb.lexical, kb.vectors)
    retrievers: dict[str, Retriever] = {
        "dense": dense,
        "lexical": lexical,
        "hybrid": HybridRetriever(embedder, kb.vectors, kb.lexical, settings.fetch_k, settings.rrf_k),
    }
    base = retrievers[settings.mode]
    if rerank is None:
        return base
    reranker = build_reranker(rerank, kb.lexical)
    ranked = base if reranker is None else RerankingRetriever(base, reranker, rerank.candidates, rerank.languages)
    if model is None or reading_prompt is None or not any(n > 1 for n in rerank.model_passages.values()):
        return ranked
    if capabilities is None or not capabilities.scores_replies:
        return ranked
    return ModelRereadingRetriever(ranked, model, reading_prompt, rerank.model_passages, rerank.model_rank_weight)
