"""Retrieval with some documents left out, for ``kb eval --exclude-gold``.

Each question is asked of the knowledge base as if its own gold document were missing (RGB's "negative
rejection"): one index of every document serves every question, and only the question's retrieval call hides
the gold document's chunks, instead of an index rebuilt without it per question.
"""

from __future__ import annotations

from collections.abc import Collection

from kb_app.retrieval.base import Hit, Retriever


class ExcludingRetriever:
    """``base``'s hits minus those from ``sources``. ``reserve`` is how many chunks those sources hold: asking
    ``base`` for ``k + reserve`` hits leaves at least ``k`` once they are dropped, in one call.

    The larger request can widen ``base``'s own candidate pool (hybrid fetch, rerank candidates) where it exceeds
    it, so the remaining order may differ slightly from an index built without the sources.
    """

    def __init__(self, base: Retriever, sources: Collection[str], reserve: int) -> None:
        self._base = base
        self._sources = frozenset(sources)
        self._reserve = reserve

    def retrieve(self, query: str, k: int) -> list[Hit]:
        hits = self._base.retrieve(query, k + self._reserve)
        return [h for h in hits if h.chunk.source not in self._sources][:k]
