"""The manifest: one SQLite row per ingested file, the ledger that keeps the stores consistent.

A file is written as ``pending`` (with the chunk ids about to be stored) before its chunks reach the
stores and marked ``done`` after; rows still pending when a knowledge base is opened belong to an ingest
that crashed, and their chunks are removed (see ``Ingestor.recover``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    source TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done')),
    chunk_ids TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class FileRecord:
    source: str
    sha256: str
    size: int
    status: str
    chunk_ids: list[str]
    updated_at: float


class Manifest:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def get(self, source: str) -> FileRecord | None:
        row = self._db.execute("SELECT * FROM files WHERE source = ?", (source,)).fetchone()
        return _record(row) if row else None

    def all(self) -> list[FileRecord]:
        return [_record(r) for r in self._db.execute("SELECT * FROM files ORDER BY source")]

    def pending(self) -> list[FileRecord]:
        return [_record(r) for r in self._db.execute("SELECT * FROM files WHERE status = 'pending'")]

    def begin(self, source: str, sha256: str, size: int, chunk_ids: Sequence[str]) -> None:
        """Record that ``chunk_ids`` are about to be written for ``source`` (replacing any older row)."""
        self._db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, 'pending', ?, ?)",
            (source, sha256, size, json.dumps(list(chunk_ids)), time.time()),
        )

    def commit(self, source: str) -> None:
        self._db.execute("UPDATE files SET status = 'done', updated_at = ? WHERE source = ?", (time.time(), source))

    def remove(self, source: str) -> None:
        self._db.execute("DELETE FROM files WHERE source = ?", (source,))


def _record(row: tuple) -> FileRecord:
    source, sha256, size, status, chunk_ids, updated_at = row
    return FileRecord(source, sha256, int(size), status, json.loads(chunk_ids), float(updated_at))
