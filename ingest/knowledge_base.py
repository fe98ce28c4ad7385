"""One knowledge base on disk: its vectors (Chroma), its lexical index and its manifest, kept in step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ingest.errors import KnowledgeBaseBusyError, StoreError
from ingest.lexical_store import Bm25Store
from ingest.locks import StoreLock, WriterLock, no_notice
from ingest.manifest import Manifest
from ingest.originals import Originals
from ingest.types import Chunk
from ingest.vector_store import ChromaVectorStore


def embedded_store_lock(client) -> StoreLock | None:
    """The lock of the on-disk Chroma store ``client`` opens (see ``ingest.locks``); None for a Chroma server
    (several processes may write to one) or an in-memory client."""
    chroma = client.get_settings()
    return StoreLock(Path(chroma.persist_directory)) if chroma.is_persistent else None


@dataclass
class KnowledgeBase:
    name: str
    vectors: ChromaVectorStore
    lexical: Bm25Store
    manifest: Manifest
    lock: WriterLock = field(repr=False, default=None)  # type: ignore[assignment]
    store: StoreLock | None = field(repr=False, default=None)  # the embedded store's lock; None with a server
    originals: Originals = field(repr=False, default=None)  # type: ignore[assignment]  # copies of the files
    closed: bool = False

    @classmethod
    def open(cls, directory: Path, client, embedder_name: str, name: str) -> KnowledgeBase:
        """Open the knowledge base in ``directory`` (its vectors: the collection named like the folder) and repair
        anything a crashed ingest left half-written, if no writer is at work (its pending rows are its progress,
        not leftovers) and no ``kb serve`` elsewhere holds the embedded store (it repairs on its next write)."""
        kb = cls(
            name=name,
            vectors=ChromaVectorStore(client, directory.name, name, embedder_name),
            lexical=Bm25Store(directory / "lexical", cache_dir=directory.parent / ".cache"),
            manifest=Manifest(directory / "manifest.sqlite"),
            lock=WriterLock(directory, name),
            store=embedded_store_lock(client),
            originals=Originals(directory / "originals"),
        )
        with contextlib.suppress(KnowledgeBaseBusyError), kb._store_shared():
            kb.lock.run_if_free(kb.recover)
        return kb

    def _store_shared(self) -> contextlib.AbstractContextManager[None]:
        return self.store.shared() if self.store is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def writing(self, wait_s: float = 600.0, notice: Callable[[str], None] = no_notice) -> Iterator[None]:
        """Hold the right to write for the block: the embedded store (refused at once while a ``kb serve`` in
        another process holds it), then this knowledge base's writer lock (waiting for another writer).

        Whoever takes the writer lock first removes what a crashed writer left: pending rows then have no living
        writer, and a long-running server would otherwise keep them until it is restarted.
        """
        self._check_open()
        with self._store_shared(), self.lock.held(wait_s, notice) as outermost:
            if outermost:
                self._check_open()  # deleted by the thread we waited for
                self.remove_pending()
            yield

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(
                f"knowledge base '{self.name}' was deleted (or closed) while this was about to write to it",
                "ingest into it again to create it anew (`kb ingest PATH --kb NAME`)",
            )

    def close(self) -> None:
        self.closed = True
        self.manifest.close()
        self.lexical.close()

    def recover(self) -> list[str]:
        """Remove the chunks of files whose ingest never finished (only ever call it holding the writer lock);
        returns their sources.

        Then bring the lexical index in line with the manifest: a lost or partly written index would otherwise
        turn hybrid retrieval into dense-only for good, since re-ingesting skips unchanged files.
        """
        broken = self.remove_pending()
        self.repair_lexical()
        return broken

    def remove_pending(self) -> list[str]:
        """Remove the chunks and rows of files still pending (a dead writer's leftovers); returns their sources."""
        broken = self.manifest.pending()
        for record in broken:
            self.remove_chunks(record.chunk_ids)
            self.manifest.remove(record.source)
        if broken:
            self.prune_originals()
        return [r.source for r in broken]

    def repair_lexical(self, batch: int = 500) -> int:
        """Index stored chunks the lexical index lacks and drop ids no file owns; returns how many were added."""
        owned = [cid for record in self.manifest.all() for cid in record.chunk_ids]
        indexed = self.lexical.ids()
        missing = [cid for cid in owned if cid not in indexed]
        orphans = indexed - set(owned)
        if orphans:
            self.lexical.update(remove=sorted(orphans))
        for start in range(0, len(missing), batch):
            chunks = self.vectors.get(missing[start : start + batch])
            self.lexical.update(add=[(c.id, c.indexed_text) for c in chunks])
        return len(missing)

    def remove_chunks(self, ids: list[str]) -> None:
        self.vectors.delete(ids)
        self.lexical.update(remove=ids)

    def remove_file(self, source: str) -> bool:
        record = self.manifest.get(source)
        if record is None:
            return False
        self.manifest.begin(source, record.sha256, record.size, record.chunk_ids)
        self.remove_chunks(record.chunk_ids)
        self.manifest.remove(source)
        self.prune_originals()
        return True

    def remove_files(self, sources: list[str]) -> list[str]:
        """Remove several files with one write to each store; returns the sources that were there."""
        records = [r for r in (self.manifest.get(s) for s in sources) if r is not None]
        for record in records:
            self.manifest.begin(record.source, record.sha256, record.size, record.chunk_ids, record.path, record.mtime)
        self.remove_chunks([i for record in records for i in record.chunk_ids])
        for record in records:
            self.manifest.remove(record.source)
        if records:
            self.prune_originals()
        return [r.source for r in records]

    def prune_originals(self) -> int:
        """Remove the kept copies no file refers to any more (after removals and replacements); how many."""
        return self.originals.prune(r.sha256 for r in self.manifest.everything() if r.status != "failed")

    def rename_file(self, old: str, new: str, path: str = "", mtime: float = 0.0) -> bool:
        """Give a moved or renamed file its new name without embedding it again (its vectors are kept).

        The manifest row moves to ``new`` as ``pending`` in one transaction, the chunks' metadata is rewritten
        (upserted with their stored vectors), then the row is committed: a crash in between leaves a pending row
        that ``recover`` removes, and the next sync adds the file again. Returns False if ``old`` is not stored.
        """
        record = self.manifest.get(old)
        if record is None or record.status != "done":
            return False
        stored = self.vectors.get(record.chunk_ids)
        vectors = self.vectors.embeddings(record.chunk_ids)
        if len(stored) != len(record.chunk_ids) or len(vectors) != len(stored):
            return False
        self.manifest.move(old, new, path, mtime)
        chunks = [Chunk(c.id, c.text, new, c.page, c.start, c.end, record.sha256, c.heading) for c in stored]
        if chunks:
            self.vectors.add(chunks, np.vstack([vectors[c.id] for c in chunks]))
        self.manifest.commit(new)
        return True

    def stored_chunks(self, source: str) -> tuple[list[Chunk], np.ndarray] | None:
        """The chunks of a stored file with their vectors, to reuse for a copy of it (None if incomplete)."""
        record = self.manifest.get(source)
        if record is None or record.status != "done" or not record.chunk_ids:
            return None
        stored = self.vectors.get(record.chunk_ids)
        vectors = self.vectors.embeddings(record.chunk_ids)
        if len(stored) != len(record.chunk_ids) or len(vectors) != len(stored):
            return None
        chunks = [Chunk(c.id, c.text, source, c.page, c.start, c.end, record.sha256, c.heading) for c in stored]
        return chunks, np.vstack([vectors[c.id] for c in chunks])
