"""One question over several knowledge bases: each is searched on its own, the hits are merged into one top ``k``.

Each knowledge base keeps its own retriever (its lexical index, its rerank stage), so a passage is scored exactly as
it would be alone; the merge only interleaves. Every hit is tagged with its knowledge base's name, so a citation can
say where it came from (one knowledge base is tagged too).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import replace

from kb_app.retrieval.base import Hit, Retriever


class MultiRetriever:
    """Merges ``(name, retriever)`` pairs by the final score.

    Each knowledge base's own order is kept (the model re-read may reorder a few passages without rescoring them);
    between knowledge bases the higher score goes first, the earlier-named one on a tie.
    """

    def __init__(self, retrievers: Sequence[tuple[str, Retriever]]) -> None:
        self._retrievers = list(retrievers)

    def retrieve(self, query: str, k: int) -> list[Hit]:
        found = [[replace(h, kb=name) for h in retriever.retrieve(query, k)] for name, retriever in self._retrievers]
        if len(found) == 1:
            return found[0][:k]
        return list(heapq.merge(*found, key=lambda h: -h.score))[:k]
