"""The knowledge bases under one root (``KB_HOME/kbs``): which exist, where each lives, and deleting one.

Each knowledge base is a folder named by its id (``ingest.kb_names``) holding ``kb.json`` (its display name),
its manifest and its lexical index; its vectors are the Chroma collection of the same id. The folders are the
list: a delete first renames the folder to a tombstone (one atomic step: the knowledge base is gone), then drops
the collection, then the tombstone; a crash in between is finished by :meth:`Catalog.sweep` on the next start.
A rename writes its plan into the folder first, moves the folder to the new id, renames the collection, then
rewrites ``kb.json``; :meth:`Catalog.sweep` finishes a rename a crash interrupted (or drops a plan never begun).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

from ingest.errors import KbError, KnowledgeBaseNameError
from ingest.kb_names import check_name, inside, kb_id

META_FILE = "kb.json"
RENAME_FILE = "renaming.json"  # a rename's plan, inside the folder being renamed
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
            _write_json(meta, {"name": name})
        return directory

    def rename(self, old: str, new: str) -> Path:
        """Give knowledge base ``old`` the name ``new``: its folder moves to the new id, its collection is renamed
        and its vectors stay as they are. The caller holds its writer lock and has closed its open handle."""
        new = check_name(new)
        source, target = self.directory(old), self.directory(new)
        if not (source / META_FILE).is_file():
            raise KbError(f"there is no knowledge base named '{old}'", "`kb list` shows the knowledge bases")
        if target.exists():
            raise KbError(f"a knowledge base named '{new}' exists already", "pick another name, or delete that one")
        _write_json(source / RENAME_FILE, {"name": new, "collection": source.name})
        source.rename(target)
        self._finish_rename(target)
        return target

    def _finish_rename(self, folder: Path) -> None:
        """Carry out the plan in ``folder``: the collection gets the folder's id, ``kb.json`` the new name. A plan
        left in a folder that never moved is dropped (the rename did not happen)."""
        plan_file = folder / RENAME_FILE
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
        name, collection = str(plan["name"]), str(plan["collection"])
        if folder.name == kb_id(name):
            self._rename_collection(collection, folder.name, name)
            _write_json(folder / META_FILE, {"name": name})
        plan_file.unlink()

    def _rename_collection(self, old_id: str, new_id: str, name: str) -> None:
        """Rename the collection (done already if only the new one is there; a stray new one is an orphan left by
        an older knowledge base of that name, whose folder is gone)."""
        collection = self._collection(old_id)
        if collection is None:
            return
        if self._collection(new_id) is not None:
            self._client.delete_collection(new_id)
        metadata = {k: v for k, v in (collection.metadata or {}).items() if not k.startswith("hnsw:")}
        collection.modify(name=new_id, metadata={**metadata, "kb_name": name})

    def _collection(self, collection_id: str):
        from chromadb.errors import NotFoundError

        try:
            return self._client.get_collection(collection_id, embedding_function=None)
        except (NotFoundError, ValueError):  # ValueError: older chromadb clients
            return None

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
            for plan in self.root.glob(f"*/{RENAME_FILE}"):
                self._finish_rename(plan.parent)

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


def _write_json(path: Path, value: dict) -> None:
    """``value`` into ``path`` through a temporary file renamed into place (no reader sees half of it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
