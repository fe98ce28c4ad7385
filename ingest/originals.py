"""Copies of the ingested files, kept inside the knowledge base's folder so the page can show a cited page and
offer the original for download without ever reading a path outside ``KB_HOME``.

A copy is named by its content's sha256 (no file name, hostile or not, becomes a path), written to a temporary
name and renamed into place (a crash leaves no half file under a real name), and shared by every file with the
same content. A copy no manifest row names any more is removed by :meth:`Originals.prune`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path

_SHA256 = re.compile(r"[0-9a-f]{64}")


class Originals:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _where(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256 digest: {sha256[:80]!r}")
        return self.directory / sha256

    def keep(self, path: Path, sha256: str) -> Path | None:
        """Keep a copy of ``path`` if its content still hashes to ``sha256`` (hashed as it is copied: the file may
        have changed since it was read, and a copy must show what the chunks came from); None if it does not. An
        existing copy is left as it is."""
        target = self._where(sha256)
        if target.is_file():
            return target
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.directory / f".{sha256}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        digest = hashlib.sha256()
        try:
            with Path(path).open("rb") as source, tmp.open("wb") as copy:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    copy.write(block)
            if digest.hexdigest() != sha256:
                return None
            tmp.chmod(0o600)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def path(self, sha256: str) -> Path | None:
        """The kept copy of the content ``sha256``, or None (not kept, or kept by an older kb)."""
        with contextlib.suppress(ValueError):
            target = self._where(sha256)
            if target.is_file():
                return target
        return None

    def prune(self, referenced: Iterable[str]) -> int:
        """Remove copies (and leftover temporary files) whose content no file refers to; returns how many."""
        keep = set(referenced)
        removed = 0
        if not self.directory.is_dir():
            return 0
        for child in self.directory.iterdir():
            if child.name not in keep and child.is_file():
                child.unlink(missing_ok=True)
                removed += 1
        return removed
