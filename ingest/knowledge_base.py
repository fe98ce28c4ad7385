"""One knowledge base on disk: its vectors (Chroma), its lexical index and its manifest, kept in step."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.lexical_store import Bm25Store
from ingest.manifest import Manifest
from ingest.vector_store import ChromaVectorStore
from kb_app.settings import Settings


@dataclass
class KnowledgeBase:
    name: str
    vectors: ChromaVectorStore
    lexical: Bm25Store
    manifest: Manifest

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
        )
        kb.recover()
        return kb

    def recover(self) -> list[str]:
        """Remove the chunks of files whose ingest never finished; returns their sources."""
        broken = self.manifest.pending()
        for record in broken:
            self.remove_chunks(record.chunk_ids)
            self.manifest.remove(record.source)
        return [r.source for r in broken]

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
