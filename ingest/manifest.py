"""The manifest: one SQLite row per file, the ledger that keeps the stores consistent.

A file is written as ``pending`` (with the chunk ids about to be stored) before its chunks reach the
stores and marked ``done`` after; rows still pending when a knowledge base is opened belong to an ingest
that crashed, and their chunks are removed (see ``KnowledgeBase.recover``). A file that could not be read is
kept as ``failed`` with its error, so a sync does not retry an unchanged bad file and the user can see why.
Each row also keeps the file's absolute ``path`` and ``mtime``: a sync skips hashing files whose size and
mtime have not changed, and finds moved files by hash; and, for the documents table, its ``pages`` (the highest
page number its chunks carry, 0 for a format without pages) and when it was ``added`` first.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_RAW_PREFIX = "raw-bytes:"
_COLUMNS = "source, sha256, size, status, chunk_ids, updated_at, path, error, mtime, pages, added"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    source TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    chunk_ids TEXT NOT NULL,
    updated_at REAL NOT NULL,
    path TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    mtime REAL NOT NULL DEFAULT 0,
    pages INTEGER NOT NULL DEFAULT 0,
    added REAL NOT NULL DEFAULT 0
)
"""
_ADDED = "COALESCE((SELECT added FROM files WHERE source = ?), ?)"  # a row replaced keeps its first ingest time
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS files_sha256 ON files(sha256)",
    "CREATE INDEX IF NOT EXISTS files_path ON files(path)",
    "CREATE INDEX IF NOT EXISTS files_status ON files(status)",
)


@dataclass(frozen=True)
class FileRecord:
    source: str
    sha256: str
    size: int
    status: str
    chunk_ids: list[str]
    updated_at: float
    path: str = ""
    error: str = ""
    mtime: float = 0.0
    pages: int = 0  # the highest page number of its chunks; 0 for a format without pages
    added: float = 0.0  # when the file was first ingested


class Manifest:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._migrate()
        self._db.execute(_SCHEMA)
        self._add_table_columns()
        for statement in _INDEXES:
            self._db.execute(statement)

    def _migrate(self) -> None:
        """Manifests written before failed rows, paths and mtimes existed get the new columns (one transaction)."""
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(files)")]
        if not columns or "error" in columns:
            return
        with self.transaction():
            self._db.execute("ALTER TABLE files RENAME TO files_old")
            self._db.execute(_SCHEMA)
            self._db.execute(
                "INSERT INTO files (source, sha256, size, status, chunk_ids, updated_at, added) "
                "SELECT source, sha256, size, status, chunk_ids, updated_at, updated_at FROM files_old"
            )
            self._db.execute("DROP TABLE files_old")

    def _add_table_columns(self) -> None:
        """Manifests written before the documents table get its columns; a file's first ingest time is taken to
        be its last update, the best that is known."""
        if self._has_column("added"):
            return
        with self.transaction():  # checked again inside it: two processes may open an old manifest at once
            if self._has_column("added"):
                return
            self._db.execute("ALTER TABLE files ADD COLUMN pages INTEGER NOT NULL DEFAULT 0")
            self._db.execute("ALTER TABLE files ADD COLUMN added REAL NOT NULL DEFAULT 0")
            self._db.execute("UPDATE files SET added = updated_at")

    def _has_column(self, name: str) -> bool:
        return name in [row[1] for row in self._db.execute("PRAGMA table_info(files)")]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several writes as one (and one disk sync instead of one per write); nests inside nothing."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def _select(self, where: str = "", args: tuple = ()) -> list[FileRecord]:
        sql = f"SELECT {_COLUMNS} FROM files {where}"
        return [_record(r) for r in self._db.execute(sql, args)]

    def get(self, source: str) -> FileRecord | None:
        rows = self._select("WHERE source = ?", (source,))
        return rows[0] if rows else None

    def all(self) -> list[FileRecord]:
        """Files in the knowledge base (done or being written); failed files are in :meth:`failures`."""
        return self._select("WHERE status != 'failed' ORDER BY source")

    def failures(self) -> list[FileRecord]:
        return self._select("WHERE status = 'failed' ORDER BY source")

    def everything(self) -> list[FileRecord]:
        return self._select("ORDER BY source")

    def pending(self) -> list[FileRecord]:
        return self._select("WHERE status = 'pending'")

    def by_sha256(self, sha256: str) -> list[FileRecord]:
        return self._select("WHERE sha256 = ? ORDER BY source", (sha256,))

    def begin(
        self,
        source: str,
        sha256: str,
        size: int,
        chunk_ids: Sequence[str],
        path: str = "",
        mtime: float = 0.0,
        pages: int = 0,
    ) -> None:
        """Record that ``chunk_ids`` are about to be written for ``source`` (replacing any older row)."""
        now = time.time()
        self._db.execute(
            f"INSERT OR REPLACE INTO files ({_COLUMNS}) VALUES (?, ?, ?, 'pending', ?, ?, ?, '', ?, ?, {_ADDED})",
            (source, sha256, size, json.dumps(list(chunk_ids)), now, path, mtime, pages, source, now),
        )

    def commit(self, source: str) -> None:
        self._db.execute("UPDATE files SET status = 'done', updated_at = ? WHERE source = ?", (time.time(), source))

    def fail(self, source: str, sha256: str, size: int, error: str, path: str = "", mtime: float = 0.0) -> None:
        """Record that ``source`` could not be read (only for files with no chunks in the stores)."""
        now = time.time()
        self._db.execute(
            f"INSERT OR REPLACE INTO files ({_COLUMNS}) VALUES (?, ?, ?, 'failed', '[]', ?, ?, ?, ?, 0, {_ADDED})",
            (source, sha256, size, now, path, error, mtime, source, now),
        )

    def touch(self, source: str, path: str, mtime: float) -> None:
        """The file is unchanged (same hash) but was seen at ``path`` with ``mtime``."""
        self._db.execute("UPDATE files SET path = ?, mtime = ? WHERE source = ?", (path, mtime, source))

    def move(self, old: str, new: str, path: str, mtime: float) -> FileRecord | None:
        """Rename ``old`` to ``new`` in one transaction; the new row is ``pending`` until :meth:`commit`."""
        with self.transaction():
            rows = self._select("WHERE source = ?", (old,))
            if not rows:
                return None
            record = rows[0]
            kept = (record.pages, record.added)
            self._db.execute("DELETE FROM files WHERE source IN (?, ?)", (old, new))
            self._db.execute(
                f"INSERT INTO files ({_COLUMNS}) VALUES (?, ?, ?, 'pending', ?, ?, ?, '', ?, ?, ?)",
                (new, record.sha256, record.size, json.dumps(record.chunk_ids), time.time(), path, mtime, *kept),
            )
        return record

    def remove(self, source: str) -> None:
        self._db.execute("DELETE FROM files WHERE source = ?", (source,))


def path_text(path: Path) -> str:
    """A path as the manifest stores it: absolute, and valid UTF-8 even where the name's bytes are not."""
    text = str(Path(path).resolve())
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # undecodable bytes in a name (os.fsdecode gives lone surrogates)
        return _RAW_PREFIX + os.fsencode(text).hex()


def path_of(text: str) -> Path:
    """The path a stored ``path`` text stands for (the inverse of :func:`path_text`)."""
    if text.startswith(_RAW_PREFIX):
        return Path(os.fsdecode(bytes.fromhex(text[len(_RAW_PREFIX) :])))
    return Path(text)


def _record(row: tuple) -> FileRecord:
    source, sha256, size, status, chunk_ids, updated_at, path, error, mtime, pages, added = row
    return FileRecord(
        source,
        sha256,
        int(size),
        status,
        json.loads(chunk_ids),
        float(updated_at),
        path,
        error,
        float(mtime),
        int(pages),
        float(added),
    )
