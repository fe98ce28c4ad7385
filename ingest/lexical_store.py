"""The lexical index: BM25 (bm25s) over jieba tokens, kept on disk beside the knowledge base.

Tokens are stored per chunk so an update re-tokenizes only new chunks; the BM25 matrix is rebuilt
(seconds even at 100k chunks) on the first search after the chunk set changed, never per query.
The same tokens and their document frequencies serve the rerank stage (``kb_app.retrieval.rerank``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import jieba
import opencc
import Stemmer
from bm25s.stopwords import STOPWORDS_EN_PLUS

jieba.setLogLevel(logging.WARNING)

_WORD = re.compile(r"\w", re.UNICODE)
_LATIN = re.compile(r"^[a-z][a-z'-]*$")
_STOPWORDS = frozenset(STOPWORDS_EN_PLUS)
_stemmer = Stemmer.Stemmer("english")
_to_simplified = opencc.OpenCC("t2s")
# Bumped whenever ``tokenize`` changes: stored tokens of another version are dropped and rebuilt on open.
TOKENIZER_VERSION = "2"


def tokenize(text: str) -> list[str]:
    """jieba's search-mode cut, lower-cased, punctuation and spaces dropped. Traditional Chinese is read as
    Simplified (OpenCC), so either script finds the other and jieba's dictionary applies; English words lose stop
    words and are stemmed (Snowball), so "founded" meets "founding"."""
    tokens = []
    for raw in jieba.cut_for_search(_to_simplified.convert(text)):
        tok = raw.strip().lower()
        if not tok or not _WORD.search(tok):
            continue
        if _LATIN.match(tok):
            if tok in _STOPWORDS:
                continue
            tok = _stemmer.stemWord(tok)
        tokens.append(tok)
    return tokens


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
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        version = self._db.execute("SELECT value FROM meta WHERE key = 'tokenizer'").fetchone()
        if version is None or version[0] != TOKENIZER_VERSION:
            # Tokens of another tokenizer would not match queries: drop them; the knowledge base re-indexes its
            # chunks from the vector store when it opens (``KnowledgeBase.repair_lexical``).
            self._db.execute("DELETE FROM tokens")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('tokenizer', ?)", (TOKENIZER_VERSION,))
        self._tokens: dict[str, list[str]] = {
            cid: json.loads(toks) for cid, toks in self._db.execute("SELECT id, t FROM tokens")
        }
        self._df: Counter[str] = Counter(t for toks in self._tokens.values() for t in set(toks))
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
                if (gone := self._tokens.pop(cid, None)) is not None:
                    self._df.subtract(set(gone))
            for cid, toks in added:
                if (old := self._tokens.get(cid)) is not None:
                    self._df.subtract(set(old))
                self._tokens[cid] = toks
                self._df.update(set(toks))
            self._index = None

    def tokens(self, ids: Sequence[str]) -> dict[str, list[str]]:
        """Stored tokens of the given chunk ids (those the index knows)."""
        with self._lock:
            return {cid: self._tokens[cid] for cid in ids if cid in self._tokens}

    def idf(self, terms: Iterable[str]) -> dict[str, float]:
        """Inverse document frequency, ``log(1 + N / df)``, of each term over every indexed chunk (0 if unseen)."""
        with self._lock:
            n = len(self._tokens)
            return {t: math.log(1 + n / self._df[t]) if self._df.get(t, 0) > 0 else 0.0 for t in terms}

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
