"""The lexical index: BM25 (bm25s) over jieba tokens, kept on disk beside the knowledge base.

Tokens are stored per chunk so an update re-tokenizes only new chunks; the BM25 matrix is rebuilt
(seconds even at 100k chunks) when the chunk set changes, never per query.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import jieba

jieba.setLogLevel(logging.WARNING)

_WORD = re.compile(r"\w", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """jieba's search-mode cut, lower-cased, punctuation and spaces dropped; works for zh and en alike."""
    return [tok for tok in (t.strip().lower() for t in jieba.cut_for_search(text)) if tok and _WORD.search(tok)]


class Bm25Store:
    """Token lists per chunk id (``tokens.jsonl``) and a BM25 index built from them on demand."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._file = directory / "tokens.jsonl"
        self._lock = threading.Lock()
        self._tokens: dict[str, list[str]] = self._read()
        self._index = None
        self._ids: list[str] = []

    def _read(self) -> dict[str, list[str]]:
        if not self._file.exists():
            return {}
        tokens: dict[str, list[str]] = {}
        with self._file.open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                tokens[row["id"]] = row["t"]
        return tokens

    def _write(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = self._file.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for cid, toks in self._tokens.items():
                fh.write(json.dumps({"id": cid, "t": toks}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self._file)

    def __len__(self) -> int:
        return len(self._tokens)

    def ids(self) -> set[str]:
        return set(self._tokens)

    def update(self, add: Iterable[tuple[str, str]] = (), remove: Sequence[str] = ()) -> None:
        """Add ``(id, text)`` pairs and remove ids, then persist atomically."""
        with self._lock:
            for cid in remove:
                self._tokens.pop(cid, None)
            for cid, text in add:
                self._tokens[cid] = tokenize(text)
            self._write()
            self._index = None

    def _ensure_index(self):
        import bm25s

        if self._index is None and self._tokens:
            self._ids = list(self._tokens)
            index = bm25s.BM25()
            index.index([self._tokens[i] for i in self._ids], show_progress=False)
            self._index = index
        return self._index

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Up to ``k`` (chunk id, BM25 score) pairs, best first; only chunks sharing a term with the query."""
        with self._lock:
            index = self._ensure_index()
            if index is None:
                return []
            vocab = index.vocab_dict
            terms = [t for t in tokenize(query) if t in vocab]
            if not terms:
                return []
            docs, scores = index.retrieve([terms], k=min(k, len(self._ids)), show_progress=False)
            return [(self._ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]
