"""The lexical index: BM25 over jieba tokens, kept on disk beside the knowledge base and updated in place.

SQLite (``tokens.sqlite``) holds each chunk's token list and is the source of truth. The scoring index lives in
memory as a term-major base segment (CSC: per term, the slots of the chunks holding it and their term counts), a
small delta of the rows added since, and a mask of the slots deleted since; document frequencies, the chunk count
and the average length are taken from them at query time, so scores equal those of an index built from scratch
(bm25s's default "lucene" BM25, which this index replaced). A snapshot of the base (``bm25.snapshot``) lets the
next process open without reading every token list. The same tokens and document frequencies serve the rerank
stage (``kb_app.retrieval.rerank``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import sqlite3
import tempfile
import threading
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jieba
import numpy as np
import opencc
import scipy.sparse
import Stemmer
from bm25s.stopwords import STOPWORDS_EN_PLUS

jieba.setLogLevel(logging.WARNING)
log = logging.getLogger(__name__)

_WORD = re.compile(r"\w", re.UNICODE)
_LATIN = re.compile(r"^[a-z][a-z'-]*$")
_STOPWORDS = frozenset(STOPWORDS_EN_PLUS)
_stemmer = Stemmer.Stemmer("english")
_to_simplified = opencc.OpenCC("t2s")
# Bumped whenever ``tokenize`` changes: stored tokens of another version are dropped and rebuilt on open.
TOKENIZER_VERSION = "2"

K1, B = 1.5, 0.75  # bm25s's defaults, kept so retrieval quality did not move when the index replaced bm25s
SNAPSHOT = "bm25.snapshot"
_MAGIC = b"KBBM25\x00\x01"
_ALIGN = 64
# The delta and the deleted slots are merged into a new base once they pass DELTA_SHARE of the live chunks, at
# least DELTA_MIN rows and at most DELTA_MAX: a merge copies every posting (0.6 s per 100k chunks with its
# snapshot), so it must stay rare, and the delta is what the next process reads from SQLite on open (0.1 s per
# 1000 rows: at 100k chunks a delta of 5,353 rows made opening 0.58 s instead of 0.05), so it must stay small.
DELTA_SHARE, DELTA_MIN, DELTA_MAX = 0.02, 2000, 20000
BLOCK = 1024  # slots per block when a search looks for its best scores (``top_slots``)


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


class _Vocabulary(dict):
    """Term -> term id; an unseen term gets the next id when looked up with ``[]`` (``get`` and ``in`` never add)."""

    def __init__(self, terms: list[str]) -> None:
        super().__init__(zip(terms, range(len(terms)), strict=True))
        self.terms = terms

    def __missing__(self, term: str) -> int:
        self[term] = tid = len(self.terms)
        self.terms.append(term)
        return tid


@dataclass
class _Segment:
    """Postings by term: those of term ``t`` are ``slots[indptr[t]:indptr[t + 1]]`` (ascending), with counts ``tf``."""

    indptr: np.ndarray
    slots: np.ndarray
    tf: np.ndarray

    def postings(self, tid: int) -> tuple[np.ndarray, np.ndarray] | None:
        if tid + 1 >= len(self.indptr):
            return None
        start, end = int(self.indptr[tid]), int(self.indptr[tid + 1])
        return (self.slots[start:end], self.tf[start:end]) if end > start else None


@dataclass
class _Base:
    """The merged part of the index: its postings and, per slot, the chunk's row, length and liveness."""

    segment: _Segment
    rows: np.ndarray
    lengths: np.ndarray
    live: np.ndarray  # writable: deletions since the merge clear slots here
    max_row: int  # the highest row it covers; rows above it are read from SQLite


@dataclass
class _View:
    """What a query needs, derived from base + delta after each change: per slot liveness and length norm."""

    live: np.ndarray
    norm: np.ndarray  # K1 * (1 - B + B * length / average length)
    delta: _Segment | None


def top_slots(scores: np.ndarray, k: int) -> np.ndarray:
    """Where the ``k`` highest positive scores are, with any tied with the k-th, in no order. Over many slots the
    k-th highest of the maxima of blocks of ``BLOCK`` is a floor for the k-th highest score (k blocks hold one at
    least as high each), so only the slots at or above it are partitioned: at 1M chunks a query's common terms
    leave ~700k positive scores, and partitioning them all took 5 ms of its 17."""
    found = None
    if len(scores) >= 4 * BLOCK * k:
        whole = len(scores) - len(scores) % BLOCK
        maxima = scores[:whole].reshape(-1, BLOCK).max(axis=1)
        if whole < len(scores):
            maxima = np.append(maxima, scores[whole:].max())
        floor = np.partition(maxima, len(maxima) - k)[len(maxima) - k]
        if floor > 0:
            found = np.flatnonzero(scores >= floor)
    if found is None:
        found = np.flatnonzero(scores > 0)
    if len(found) > k:
        kth = np.partition(scores[found], len(found) - k)[len(found) - k]
        found = found[scores[found] >= kth]
    return found


def _empty_base() -> _Base:
    segment = _Segment(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.uint8))
    return _Base(segment, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool), 0)


def _small_uint(values: np.ndarray) -> np.ndarray:
    return values.astype(np.min_scalar_type(int(values.max()) if values.size else 0), copy=False)


def _write_snapshot(path: Path, header: dict, arrays: dict[str, np.ndarray]) -> None:
    """One file: magic, header length, JSON header (array dtypes, sizes, offsets), then the arrays, each aligned
    so they can be mapped in place. Written to a temporary file, synced, then renamed over the old one."""
    offsets, offset = {}, 0
    for name, values in arrays.items():
        offsets[name] = [values.dtype.str, int(values.size), offset]
        offset += -(-values.nbytes // _ALIGN) * _ALIGN
    head = json.dumps({**header, "arrays": offsets}).encode()
    start = -(-(16 + len(head)) // _ALIGN) * _ALIGN
    fd, tmp = tempfile.mkstemp(prefix=".bm25-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(_MAGIC + len(head).to_bytes(8, "little") + head)
            for name, values in arrays.items():
                out.seek(start + offsets[name][2])
                out.write(np.ascontiguousarray(values).data)
            out.truncate(start + offset)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_snapshot(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Header and arrays of a snapshot, the arrays mapped read-only from the file (pages load as queries touch
    them). Raises ValueError (or OSError) if it is not a whole snapshot."""
    import mmap

    with path.open("rb") as f:
        if f.read(8) != _MAGIC:
            raise ValueError("not a snapshot")
        size = int.from_bytes(f.read(8), "little")
        head = json.loads(f.read(size))
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    start = -(-(16 + size) // _ALIGN) * _ALIGN
    arrays = {}
    for name, (dtype, count, offset) in head.pop("arrays").items():
        dtype = np.dtype(dtype)
        if start + offset + count * dtype.itemsize > len(mapped):
            raise ValueError("snapshot cut short")
        arrays[name] = np.frombuffer(mapped, dtype, count, start + offset)
    return head, arrays


class Bm25Store:
    """Token lists per chunk id in SQLite (``tokens.sqlite``) and a BM25 index over them, updated in place.

    Rows are numbered for good (``AUTOINCREMENT``: a number is never reused, rewriting a chunk gives it a new row),
    so "rows above the highest one read" and "rows no longer in the table" are all another connection's commits
    can be. ``PRAGMA data_version`` tells that the file changed; the next read then loads only the new rows and
    counts the table to notice deletions, so a ``kb serve`` never goes stale while a ``kb sync`` elsewhere writes.
    Adding or removing a document touches its own rows and slots; the delta is merged into the base (and the
    snapshot rewritten) only once it passes ``DELTA_SHARE`` of the chunks (see there), so a single change stays
    cheap at 100k chunks. ``builds`` counts the merges this instance made (the full build of a missing snapshot
    is one).
    """

    def __init__(self, directory: Path, cache_dir: Path | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        use_private_jieba_cache(cache_dir or directory / ".cache")
        self._lock = threading.Lock()
        self._snapshot = directory / SNAPSHOT
        self._db = sqlite3.connect(str(directory / "tokens.sqlite"), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self.builds = 0
        self._version: int | None = None
        with self._lock:
            self._generation = self._prepare_tables()
            self._read_transaction(self._load_snapshot())
            if self._pending() and (not len(self._base.rows) or self._compaction_due()):
                self._compact()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _prepare_tables(self) -> str:
        """Create or migrate the tables; returns the generation, a name that changes whenever the rows are
        replaced wholesale (a new file, a migration, another tokenizer), so no snapshot of other rows is trusted."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            db.execute(
                "CREATE TABLE IF NOT EXISTS token_lists "
                "(row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, t TEXT NOT NULL)"
            )
            meta = dict(db.execute("SELECT key, value FROM meta"))
            renewed = "token_lists" not in tables
            if "tokens" in tables:  # the layout before rows were numbered for good: copy its rows once
                db.execute("INSERT OR REPLACE INTO token_lists (id, t) SELECT id, t FROM tokens ORDER BY rowid")
                db.execute("DROP TABLE tokens")
                renewed = True
            if meta.get("tokenizer") != TOKENIZER_VERSION:
                # Tokens of another tokenizer would not match queries: drop them; the knowledge base re-indexes its
                # chunks from the vector store when it opens (``KnowledgeBase.repair_lexical``).
                db.execute("DELETE FROM token_lists")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('tokenizer', ?)", (TOKENIZER_VERSION,))
                renewed = True
            generation = meta.get("generation")
            if renewed or generation is None:
                generation = secrets.token_hex(8)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (generation,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return generation

    # --- the in-memory index -------------------------------------------------------------------------------

    def _reset(self, loaded: tuple[_Base, list[str], list[str]] | None) -> None:
        """Start over from a base (``(base, ids, terms)``), or from nothing; rows above its ``max_row`` come next."""
        base, ids, terms = loaded or (_empty_base(), [], [])
        self._base = base
        self._ids = ids  # chunk id per slot: the base's slots, then the delta's
        self._slot_of = {cid: slot for slot, cid in enumerate(ids)}  # live chunks only
        self._vocab = _Vocabulary(terms)
        self._d_terms, self._d_tf, self._d_ptr = array("i"), array("I"), array("q", [0])  # delta postings by slot
        self._d_rows, self._d_lengths, self._d_live = array("q"), array("i"), bytearray()
        self._live_count = len(ids)
        self._total_len = int(base.lengths.sum(dtype=np.int64))
        self._dead = 0  # slots killed since the base was built
        self._max_row = base.max_row
        self._view: _View | None = None

    def _add(self, cid: str, row: int, toks: list[str]) -> None:
        counts = Counter(toks)
        self._d_terms.extend(map(self._vocab.__getitem__, counts))
        self._d_tf.extend(counts.values())
        self._d_ptr.append(len(self._d_terms))
        self._d_rows.append(row)
        self._d_lengths.append(len(toks))
        self._d_live.append(1)
        if (old := self._slot_of.get(cid)) is not None:
            self._kill(old)
        self._slot_of[cid] = len(self._ids)
        self._ids.append(cid)
        self._live_count += 1
        self._total_len += len(toks)
        self._max_row = max(self._max_row, row)
        self._view = None

    def _kill(self, slot: int) -> None:
        n_base = len(self._base.rows)
        if slot < n_base:
            self._base.live[slot] = False
            self._total_len -= int(self._base.lengths[slot])
        else:
            self._d_live[slot - n_base] = 0
            self._total_len -= self._d_lengths[slot - n_base]
        del self._slot_of[self._ids[slot]]
        self._live_count -= 1
        self._dead += 1
        self._view = None

    def _slot_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Liveness, row and length of every slot, base then delta (copies: the delta buffers keep growing)."""
        base = self._base
        live = np.concatenate([base.live, np.frombuffer(bytes(self._d_live), np.uint8).astype(bool)])
        rows = np.concatenate([base.rows, np.array(self._d_rows, np.int64)])
        lengths = np.concatenate([base.lengths, np.array(self._d_lengths, np.int32)])
        return live, rows, lengths

    def _ensure_view(self) -> _View:
        if self._view is None:
            live, _, lengths = self._slot_arrays()
            average = self._total_len / self._live_count if self._total_len else 1.0
            delta = None
            if len(self._d_rows):
                shape = (len(self._d_rows), max(len(self._vocab.terms), 1))
                by_slot = scipy.sparse.csr_matrix(
                    (np.array(self._d_tf, np.uint32), np.array(self._d_terms, np.int32), np.array(self._d_ptr)),
                    shape=shape,
                )
                by_term = by_slot.tocsc()  # keeps the slots ascending within each term
                slots = by_term.indices.astype(np.int32) + np.int32(len(self._base.rows))
                delta = _Segment(by_term.indptr.astype(np.int64), slots, by_term.data)
            self._view = _View(live, K1 * (1 - B + B * lengths / average), delta)
        return self._view

    def _postings(self, tid: int, view: _View) -> list[tuple[np.ndarray, np.ndarray]]:
        found = [self._base.segment.postings(tid), view.delta.postings(tid) if view.delta else None]
        return [p for p in found if p is not None]

    def _df(self, postings: list[tuple[np.ndarray, np.ndarray]], view: _View) -> int:
        if not self._dead:
            return sum(len(slots) for slots, _ in postings)
        return sum(int(np.count_nonzero(view.live[slots])) for slots, _ in postings)

    # --- keeping up with SQLite ----------------------------------------------------------------------------

    def _catch_up(self) -> bool:
        """Apply rows committed since the last read (call inside a transaction); False if the table and the index
        disagree in a way new rows and deletions cannot explain (then only a rebuild helps)."""
        new = self._db.execute("SELECT row, id, t FROM token_lists WHERE row > ? ORDER BY row", (self._max_row,))
        for row, cid, toks in new:
            self._add(cid, row, json.loads(toks))
        (count,) = self._db.execute("SELECT count(*) FROM token_lists").fetchone()
        if count != self._live_count:
            stored = np.fromiter((row for (row,) in self._db.execute("SELECT row FROM token_lists")), np.int64)
            live, rows, _ = self._slot_arrays()
            slots = np.flatnonzero(live)
            for slot in slots[~np.isin(rows[slots], stored)].tolist():
                self._kill(slot)
        return count == self._live_count

    def _sync(self) -> None:
        if not self._catch_up():
            log.warning("lexical index: rebuilding, %s did not match the table", self._snapshot)
            self._reset(None)
            self._catch_up()

    def _read_transaction(self, loaded: tuple[_Base, list[str], list[str]] | None = None, reset: bool = True) -> None:
        """Catch up in one read transaction (one snapshot of the table), from ``loaded`` if ``reset``."""
        self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
        self._db.execute("BEGIN")
        try:
            if reset:
                self._reset(loaded)
            self._sync()
        finally:
            self._db.execute("COMMIT")

    def _refresh(self) -> None:
        """Catch up with commits of other connections since the last read (call holding ``_lock``)."""
        if self._db.execute("PRAGMA data_version").fetchone()[0] != self._version:
            self._read_transaction(reset=False)
            self._compact_if_due()

    # --- merging and the snapshot --------------------------------------------------------------------------

    def _pending(self) -> int:
        return len(self._d_rows) + self._dead

    def _compaction_due(self) -> bool:
        return self._pending() > min(max(DELTA_MIN, DELTA_SHARE * self._live_count), DELTA_MAX)

    def _compact_if_due(self) -> None:
        if not self._compaction_due():
            return
        newer = self._load_snapshot(after=self._base.max_row)  # another process may have merged already
        if newer is not None:
            self._read_transaction(newer)
        if self._compaction_due():
            self._compact()

    def _merged(self) -> tuple[_Base, list[str], list[str]]:
        """The base and the delta as one new base without the dead slots (their postings and unused terms)."""
        view = self._ensure_view()
        base, live = self._base.segment, view.live
        n_terms = len(self._vocab.terms)
        if self._base.live.all():
            b_indptr, b_slots, b_tf = base.indptr, base.slots, base.tf
        else:
            keep = live[base.slots]
            kept = np.zeros(len(keep) + 1, np.int64)
            np.cumsum(keep, out=kept[1:])
            b_indptr, b_slots, b_tf = kept[base.indptr], base.slots[keep], base.tf[keep]
        b_indptr = np.concatenate([b_indptr, np.full(n_terms + 1 - len(b_indptr), b_indptr[-1])])
        d_terms, d_slots, d_tf = np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.uint8)
        if view.delta is not None:
            delta = view.delta
            keep = live[delta.slots]
            d_terms = np.repeat(np.arange(len(delta.indptr) - 1), np.diff(delta.indptr))[keep]
            d_slots, d_tf = delta.slots[keep], delta.tf[keep]
        # Each term's delta postings go after its base postings: slots stay ascending within a term.
        at = b_indptr[d_terms + 1]
        slots = np.insert(b_slots, at, d_slots)
        tf = _small_uint(np.insert(b_tf.astype(np.promote_types(b_tf.dtype, d_tf.dtype)), at, d_tf))
        counts = np.diff(b_indptr) + np.bincount(d_terms, minlength=n_terms)
        if self._dead:
            slots = (np.cumsum(live, dtype=np.int64) - 1).astype(np.int32)[slots]
        terms = self._vocab.terms
        if not counts.all():
            used = np.flatnonzero(counts)
            terms, counts = [terms[t] for t in used.tolist()], counts[used]
        indptr = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        _, rows, lengths = self._slot_arrays()
        alive = np.flatnonzero(live)
        ids = [self._ids[s] for s in alive.tolist()] if self._dead else list(self._ids)
        segment = _Segment(indptr, slots.astype(np.int32, copy=False), tf)
        merged = _Base(segment, rows[alive], lengths[alive], np.ones(len(alive), bool), self._max_row)
        return merged, ids, list(terms)

    def _compact(self) -> None:
        """Merge delta and deletions into a new base and snapshot it, then map the snapshot in place of the merged
        arrays (the pages load as queries need them); a snapshot that cannot be written only costs the next
        process a rebuild."""
        merged = self._merged()
        self.builds += 1
        try:
            self._write_snapshot(*merged)
        except OSError as exc:
            log.warning("lexical index: could not write the snapshot %s (%s)", self._snapshot, exc)
            self._reset(merged)
            return
        mapped = self._load_snapshot(check=False)
        if mapped is None:
            self._reset(merged)
        else:
            self._read_transaction(mapped)

    def _write_snapshot(self, base: _Base, ids: list[str], terms: list[str]) -> None:
        header = {"tokenizer": TOKENIZER_VERSION, "generation": self._generation, "max_row": base.max_row}
        blobs = {
            name: np.frombuffer(json.dumps(v, ensure_ascii=False).encode(), np.uint8)
            for name, v in (("ids", ids), ("terms", terms))
        }
        segment = base.segment
        arrays = {
            "indptr": segment.indptr,
            "slots": segment.slots,
            "tf": segment.tf,
            "rows": base.rows,
            "lengths": base.lengths,
            **blobs,
        }
        _write_snapshot(self._snapshot, header, arrays)

    def _load_snapshot(self, after: int = -1, check: bool = True) -> tuple[_Base, list[str], list[str]] | None:
        """The base stored in the snapshot, if it is one of these rows' and covers rows beyond ``after``; anything
        else (no file, another tokenizer or table, a torn or foreign file) is None: the caller rebuilds."""
        try:
            head, arrays = _read_snapshot(self._snapshot)
            if head.get("tokenizer") != TOKENIZER_VERSION or head.get("generation") != self._generation:
                return None
            max_row = int(head["max_row"])
            if max_row <= after:
                return None
            ids, terms = (json.loads(arrays[name].tobytes()) for name in ("ids", "terms"))
            indptr, slots, tf, rows, lengths = (arrays[k] for k in ("indptr", "slots", "tf", "rows", "lengths"))
            whole = (
                len(indptr) == len(terms) + 1
                and indptr[0] == 0
                and indptr[-1] == len(slots) == len(tf)
                and len(rows) == len(lengths) == len(ids)
                and (not len(rows) or (rows[-1] <= max_row and bool(np.all(np.diff(rows) > 0))))
            )
            if whole and check:  # queries index by these: a torn file must not crash them
                whole = bool(np.all(np.diff(indptr) >= 0)) and (not len(slots) or int(slots.max()) < len(ids))
            if not whole:
                raise ValueError("inconsistent arrays")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("lexical index: rebuilding, the snapshot %s is unusable (%s)", self._snapshot, exc)
            return None
        base = _Base(_Segment(indptr, slots, tf), rows, lengths, np.ones(len(ids), bool), max_row)
        return base, ids, terms

    # --- the public interface ------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return self._live_count

    def ids(self) -> set[str]:
        with self._lock:
            self._refresh()
            return set(self._slot_of)

    def update(self, add: Iterable[tuple[str, str]] = (), remove: Sequence[str] = ()) -> None:
        """Add ``(id, text)`` pairs and remove ids in one transaction."""
        added = [(cid, tokenize(text)) for cid, text in add]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # Others' commits first, inside our write lock so none slips in between: our own commit leaves
                # data_version alone.
                self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
                self._sync()
                self._db.executemany("DELETE FROM token_lists WHERE id = ?", [(cid,) for cid in remove])
                insert = "INSERT OR REPLACE INTO token_lists (id, t) VALUES (?, ?)"
                rows = [
                    self._db.execute(insert, (cid, json.dumps(t, ensure_ascii=False))).lastrowid for cid, t in added
                ]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            for cid in remove:
                if (slot := self._slot_of.get(cid)) is not None:
                    self._kill(slot)
            for (cid, toks), row in zip(added, rows, strict=True):
                self._add(cid, row, toks)
            self._compact_if_due()

    def tokens(self, ids: Sequence[str]) -> dict[str, list[str]]:
        """Stored tokens of the given chunk ids (those the index knows), read from the table: only the few
        candidates of a rerank are ever asked for, so no token list is held in memory."""
        found: dict[str, list[str]] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                part = list(ids[start : start + 500])
                marks = ",".join("?" * len(part))
                for cid, toks in self._db.execute(f"SELECT id, t FROM token_lists WHERE id IN ({marks})", part):
                    found[cid] = json.loads(toks)
        return {cid: found[cid] for cid in ids if cid in found}

    def idf(self, terms: Iterable[str]) -> dict[str, float]:
        """Inverse document frequency, ``log(1 + N / df)``, of each term over every indexed chunk (0 if unseen)."""
        with self._lock:
            self._refresh()
            view, n = self._ensure_view(), self._live_count
            found = {}
            for term in terms:
                tid = self._vocab.get(term)
                df = self._df(self._postings(tid, view), view) if tid is not None else 0
                found[term] = math.log(1 + n / df) if df else 0.0
            return found

    def overlap(self, terms: Iterable[str], ids: Sequence[str]) -> list[float]:
        """Per chunk id, the IDF mass of ``terms`` it contains (0 for an id the index does not know), from the
        postings in memory: reading and parsing the candidates' token lists took longer than the whole BM25 leg."""
        with self._lock:
            self._refresh()
            view, n = self._ensure_view(), self._live_count
            known = [self._slot_of.get(cid, -1) for cid in ids]
            slots = np.array(known, dtype=np.int64)
            mass = np.zeros(len(slots))
            for term in set(terms):
                tid = self._vocab.get(term)
                postings = self._postings(tid, view) if tid is not None else []
                if df := self._df(postings, view):
                    present = np.zeros(len(slots), bool)
                    for holding, _ in postings:  # slots ascending: a binary search per candidate
                        at = np.minimum(np.searchsorted(holding, slots), len(holding) - 1)
                        present |= holding[at] == slots
                    mass[present] += math.log(1 + n / df)
            return mass.tolist()

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Up to ``k`` (chunk id, BM25 score) pairs, best first (ties by id); only chunks sharing a term with the
        query. A term repeated in the query counts as often as it appears, as in bm25s."""
        query_terms = tokenize(query)
        with self._lock:
            self._refresh()
            wanted = Counter(tid for t in query_terms if (tid := self._vocab.get(t)) is not None)
            if not wanted or k <= 0 or not self._live_count:
                return []
            view, n = self._ensure_view(), self._live_count
            scores = np.zeros(len(view.live))
            for tid, times in wanted.items():
                postings = self._postings(tid, view)
                if not (df := self._df(postings, view)):
                    continue
                weight = times * math.log(1 + (n - df + 0.5) / (df + 0.5))
                for slots, tf in postings:
                    scores[slots] += weight * tf / (tf + view.norm[slots])
            if self._dead:
                scores[~view.live] = 0.0
            found = top_slots(scores, k)
            best = sorted(found.tolist(), key=lambda s: (-scores[s], self._ids[s]))[:k]
            return [(self._ids[s], float(scores[s])) for s in best]
