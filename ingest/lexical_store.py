"""The lexical index: BM25 (bm25s) over jieba tokens, kept on disk beside the knowledge base.

Tokens are stored per chunk so an update re-tokenizes only new chunks; the BM25 matrix is rebuilt
(seconds even at 100k chunks) on the first search after the chunk set changed, never per query.
The same tokens and their document frequencies serve the rerank stage (``kb_app.retrieval.rerank``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sqlite3
import tempfile
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


def _own_folder(path: Path) -> Path:
    """``path`` if it is a folder only this user can write to, else a fresh private temporary one."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        return Path(tempfile.mkdtemp(prefix="kb-jieba-"))
    return path


def use_private_jieba_cache(cache_dir: Path) -> None:
    """jieba reads its dictionary cache with ``marshal.load`` from ``$TMPDIR/jieba.cache``, a file any local user
    can plant (a crafted marshal stream crashes the reader or poisons every tokenization); keep it in a folder of
    ours. The first store opened names it for the whole process, since jieba's tokenizer is one per process."""
    if jieba.dt.tmp_dir is not None:
        return
    jieba.dt.tmp_dir = str(_own_folder(cache_dir))
    jieba.dt.initialized = False  # if something tokenized before any store opened, load it again from there


class Bm25Store:
    """Token lists per chunk id in SQLite (``tokens.sqlite``) and a BM25 index built from them on demand.

    Adding or deleting a document writes only its own rows, so a delete stays fast at 100k chunks. Another
    connection's commits (a ``kb sync`` in another process while ``kb serve`` runs) are picked up by the next
    read: ``PRAGMA data_version`` tells that the file changed, and the rows (id, rowid) tell which; only new rows
    are read and tokens dropped, so the index and the rerank IDF never go stale.
    """

    def __init__(self, directory: Path, cache_dir: Path | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        use_private_jieba_cache(cache_dir or directory / ".cache")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(directory / "tokens.sqlite"), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, t TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        version = self._db.execute("SELECT value FROM meta WHERE key = 'tokenizer'").fetchone()
        if version is None or version[0] != TOKENIZER_VERSION:
            # Tokens of another tokenizer would not match queries: drop them; the knowledge base re-indexes its
            # chunks from the vector store when it opens (``KnowledgeBase.repair_lexical``).
            self._db.execute("DELETE FROM tokens")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('tokenizer', ?)", (TOKENIZER_VERSION,))
        self._tokens: dict[str, list[str]] = {}
        self._rowids: dict[str, int] = {}  # the row each loaded token list came from
        self._df: Counter[str] = Counter()
        self._version: int | None = None
        self._index = None
        self._ids: list[str] = []
        with self._lock:
            self._refresh()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _refresh(self) -> None:
        """Catch up with commits of other connections since the last read (call holding ``_lock``)."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        self._version = version
        self._db.execute("BEGIN")  # one snapshot for the rows and their tokens
        try:
            rows = dict(self._db.execute("SELECT id, rowid FROM tokens"))
            gone = [cid for cid, rowid in self._rowids.items() if rows.get(cid) != rowid]
            fresh = [rowid for cid, rowid in rows.items() if self._rowids.get(cid) != rowid]
            if len(fresh) > 1000:  # the first load, or another process indexed a lot: one scan beats lookups
                wanted = set(fresh)
                loaded = [row for row in self._db.execute("SELECT id, rowid, t FROM tokens") if row[1] in wanted]
            else:
                marks = ",".join("?" * len(fresh))
                loaded = self._db.execute(f"SELECT id, rowid, t FROM tokens WHERE rowid IN ({marks})", fresh).fetchall()
        finally:
            self._db.execute("COMMIT")
        if not gone and not loaded:
            return
        self._forget(gone)
        self._remember([(cid, json.loads(toks)) for cid, _, toks in loaded])
        self._rowids.update({cid: rowid for cid, rowid, _ in loaded})

    def _forget(self, ids: Iterable[str]) -> None:
        for cid in ids:
            self._rowids.pop(cid, None)
            if (gone := self._tokens.pop(cid, None)) is not None:
                self._df.subtract(set(gone))
        self._index = None

    def _remember(self, added: Iterable[tuple[str, list[str]]]) -> None:
        for cid, toks in added:
            if (old := self._tokens.get(cid)) is not None:
                self._df.subtract(set(old))
            self._tokens[cid] = toks
            self._df.update(set(toks))
        self._index = None

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._tokens)

    def ids(self) -> set[str]:
        with self._lock:
            self._refresh()
            return set(self._tokens)

    def update(self, add: Iterable[tuple[str, str]] = (), remove: Sequence[str] = ()) -> None:
        """Add ``(id, text)`` pairs and remove ids in one transaction."""
        added = [(cid, tokenize(text)) for cid, text in add]
        with self._lock:
            self._refresh()  # our own commit leaves data_version alone: catch up with the others' first
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM tokens WHERE id = ?", [(cid,) for cid in remove])
                self._db.executemany(
                    "INSERT OR REPLACE INTO tokens VALUES (?, ?)",
                    [(cid, json.dumps(toks, ensure_ascii=False)) for cid, toks in added],
                )
                rowids = self._rowids_of([cid for cid, _ in added])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._forget(remove)
            self._remember(added)
            self._rowids.update(rowids)

    def _rowids_of(self, ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            marks = ",".join("?" * len(part))
            found.update(self._db.execute(f"SELECT id, rowid FROM tokens WHERE id IN ({marks})", part).fetchall())
        return found

    def tokens(self, ids: Sequence[str]) -> dict[str, list[str]]:
        """Stored tokens of the given chunk ids (those the index knows)."""
        with self._lock:
            self._refresh()
            return {cid: self._tokens[cid] for cid in ids if cid in self._tokens}

    def idf(self, terms: Iterable[str]) -> dict[str, float]:
        """Inverse document frequency, ``log(1 + N / df)``, of each term over every indexed chunk (0 if unseen)."""
        with self._lock:
            self._refresh()
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
            self._refresh()
            index = self._ensure_index()
            if index is None:
                return []
            vocab = index.vocab_dict
            terms = [t for t in tokenize(query) if t in vocab]
            if not terms:
                return []
            docs, scores = index.retrieve([terms], k=min(k, len(self._ids)), show_progress=False)
            return [(self._ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]
