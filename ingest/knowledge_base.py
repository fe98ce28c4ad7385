"""One knowledge base on disk: its vectors (Chroma), its lexical index and its manifest, kept in step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.lexical_store import Bm25Store
from ingest.manifest import Manifest
from ingest.types import Chunk
from ingest.vector_store import ChromaVectorStore
from kb_app.settings import Settings


@dataclass
class KnowledgeBase:
    name: str
    vectors: ChromaVectorStore
    lexical: Bm25Store
    manifest: Manifest
    settings: Settings | None = None

    @classmethod
    def open(cls, settings: Settings, client, embedder_name: str, name: str | None = None) -> KnowledgeBase:
        """Open (creating if needed) and repair anything a crashed ingest left half-written."""
        name = name or settings.kb
        directory = settings.kb_dir(name)
        kb = cls(
            name=name,
            vectors=ChromaVectorStore(client, name, embedder_name),
            lexical=Bm25Store(directory / "lexical"),
            manifest=Manifest(directory / "manifest.sqlite"),
            settings=settings,
        )
        kb.recover()
        return kb

    def recover(self) -> list[str]:
        """Remove the chunks of files whose ingest never finished; returns their sources.

        Then bring the lexical index in line with the manifest: a lost or partly written index would otherwise
        turn hybrid retrieval into dense-only for good, since re-ingesting skips unchanged files.
        """
        broken = self.manifest.pending()
        for record in broken:
            self.remove_chunks(record.chunk_ids)
            self.manifest.remove(record.source)
        self.repair_lexical()
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
        return True

    def remove_files(self, sources: list[str]) -> list[str]:
        """Remove several files with one write to each store; returns the sources that were there."""
        records = [r for r in (self.manifest.get(s) for s in sources) if r is not None]
        for record in records:
            self.manifest.begin(record.source, record.sha256, record.size, record.chunk_ids, record.path, record.mtime)
        self.remove_chunks([i for record in records for i in record.chunk_ids])
        for record in records:
            self.manifest.remove(record.source)
        return [r.source for r in records]

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
