"""The lexical index: BM25 (bm25s) over jieba tokens, kept on disk beside the knowledge base.

Tokens are stored per chunk so an update re-tokenizes only new chunks; the BM25 matrix is rebuilt
(seconds even at 100k chunks) on the first search after the chunk set changed, never per query.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
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
    """Token lists per chunk id in SQLite (``tokens.sqlite``) and a BM25 index built from them on demand.

    Adding or deleting a document writes only its own rows, so a delete stays fast at 100k chunks.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(directory / "tokens.sqlite"), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, t TEXT NOT NULL)")
        self._tokens: dict[str, list[str]] = {
            cid: json.loads(toks) for cid, toks in self._db.execute("SELECT id, t FROM tokens")
        }
        self._index = None
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._tokens)

    def ids(self) -> set[str]:
        return set(self._tokens)

    def update(self, add: Iterable[tuple[str, str]] = (), remove: Sequence[str] = ()) -> None:
        """Add ``(id, text)`` pairs and remove ids in one transaction."""
        added = [(cid, tokenize(text)) for cid, text in add]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("DELETE FROM tokens WHERE id = ?", [(cid,) for cid in remove])
                self._db.executemany(
                    "INSERT OR REPLACE INTO tokens VALUES (?, ?)",
                    [(cid, json.dumps(toks, ensure_ascii=False)) for cid, toks in added],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            for cid in remove:
                self._tokens.pop(cid, None)
            self._tokens.update(added)
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
