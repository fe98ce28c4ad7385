"""The SQLite files kb keeps for people (users and keys, conversations): readable by this machine's owner only.

A connection per call, with foreign keys on: the CLI may change a file while ``kb serve`` reads it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path


class PrivateDb:
    """``path`` is created with mode 0600 (and set to it if it existed), then ``schema`` is applied."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        with self.connect() as db:
            db.executescript(schema)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one transaction, committed when the block ends (rolled back on an error)."""
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.execute("PRAGMA foreign_keys = ON")
            with db:
                yield db
