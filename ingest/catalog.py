"""The knowledge bases under one root (``KB_HOME/kbs``): which exist, where each lives, and deleting one.

Each knowledge base is a folder named by its id (``ingest.kb_names``) holding ``kb.json`` (its display name),
its manifest and its lexical index; its vectors are the Chroma collection of the same id. The folders are the
list: a delete first renames the folder to a tombstone (one atomic step: the knowledge base is gone), then drops
the collection, then the tombstone; a crash in between is finished by :meth:`Catalog.sweep` on the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

from ingest.errors import KnowledgeBaseNameError
from ingest.kb_names import check_name, inside, kb_id

META_FILE = "kb.json"
_TOMBSTONE = ".deleted-"


class Catalog:
    def __init__(self, root: Path, client) -> None:
        self.root = Path(root)
        self._client = client

    def directory(self, name: str) -> Path:
        """The folder of knowledge base ``name`` (checked to stay under the root; not created)."""
        return inside(self.root, kb_id(name))

    def exists(self, name: str) -> bool:
        return (self.directory(name) / META_FILE).is_file()

    def create(self, name: str) -> Path:
        name = check_name(name)
        directory = self.directory(name)
        directory.mkdir(parents=True, exist_ok=True)
        meta = directory / META_FILE
        if not meta.is_file():  # several writers may create it at once: each renames its own copy into place
            tmp = directory / f".{META_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.write_text(json.dumps({"name": name}, ensure_ascii=False), encoding="utf-8")
            tmp.replace(meta)
        return directory

    def names(self) -> list[str]:
        """Display names of the knowledge bases, sorted; folders of an older kb are brought to this layout first."""
        self._adopt_legacy()
        names = []
        for meta in self.root.glob(f"*/{META_FILE}"):
            if meta.parent.name.startswith("."):  # a tombstone
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                names.append(str(json.loads(meta.read_text(encoding="utf-8"))["name"]))
        return sorted(names)

    def delete(self, name: str) -> bool:
        """Delete knowledge base ``name`` (folder and collection); False if there was none."""
        directory = self.directory(name)
        if not directory.is_dir():
            return False
        tombstone = inside(self.root, f"{_TOMBSTONE}{directory.name}.{uuid.uuid4().hex[:8]}")
        directory.rename(tombstone)
        self._finish(tombstone)
        return True

    def sweep(self) -> None:
        """Finish deletes a crash interrupted."""
        if self.root.is_dir():
            for tombstone in self.root.glob(f"{_TOMBSTONE}*"):
                self._finish(tombstone)

    def _finish(self, tombstone: Path) -> None:
        collection = tombstone.name[len(_TOMBSTONE) :].rsplit(".", 1)[0]
        with contextlib.suppress(Exception):  # chromadb raises NotFoundError (or ValueError) when it has none
            self._client.delete_collection(collection)
        shutil.rmtree(inside(self.root, tombstone.name), ignore_errors=True)

    def _adopt_legacy(self) -> None:
        """kb before 0.2 named a folder by the raw name and had no ``kb.json``: give it its id and its meta file."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder.name.startswith(".") or (folder / META_FILE).exists():
                continue
            try:
                name = check_name(folder.name)
            except KnowledgeBaseNameError:
                continue
            target = self.directory(name)
            if target != folder.resolve() and not target.exists():
                folder.rename(target)
            self.create(name)
