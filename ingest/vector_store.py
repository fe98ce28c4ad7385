"""Where vectors are stored: Chroma, embedded on disk by default or a Chroma server by configuration.

One collection per knowledge base, named by its id (``ingest.kb_names``); deletes go by the chunk ids the
manifest keeps, never by a ``where`` scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.errors import StoreError
from ingest.settings import StoreSettings
from ingest.types import Chunk, indexed_text


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as read back from the store, with its similarity to the query (cosine, higher is closer)."""

    id: str
    text: str
    source: str
    page: int | None
    start: int
    end: int
    score: float
    heading: str = ""

    @property
    def indexed_text(self) -> str:
        return indexed_text(self.heading, self.text)


def make_client(settings: StoreSettings, chroma_dir: Path):  # -> chromadb.api.ClientAPI
    """An embedded client on disk, or an HTTP client for a Chroma server; telemetry off in both."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.mode == "http":
        try:
            return chromadb.HttpClient(host=settings.host, port=settings.port, settings=chroma_settings)
        except Exception as exc:
            raise StoreError(
                f"cannot reach the Chroma server at {settings.host}:{settings.port} ({exc})",
                "start it (`chroma run --path DIR --port PORT`) or set store.mode: embedded",
            ) from exc
    chroma_dir.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(chroma_dir), settings=chroma_settings)


class ChromaVectorStore:
    """The vectors of one knowledge base."""

    def __init__(self, client, collection: str, kb: str, embedder_name: str) -> None:
        self._collection = client.get_or_create_collection(
            name=collection,
            metadata={"hnsw:space": "cosine", "kb_name": kb, "embedder": embedder_name},
            embedding_function=None,
        )
        stored = (self._collection.metadata or {}).get("embedder")
        if stored and stored != embedder_name:
            raise StoreError(
                f"knowledge base '{kb}' was built with the embedder {stored}, not {embedder_name}",
                "use the embedder it was built with, or ingest into a new knowledge base",
            )

    def count(self) -> int:
        return self._collection.count()

    def add(self, chunks: Sequence[Chunk], embeddings: np.ndarray) -> None:
        for start in range(0, len(chunks), 1000):
            batch = chunks[start : start + 1000]
            self._collection.upsert(
                ids=[c.id for c in batch],
                documents=[c.text for c in batch],
                metadatas=[c.metadata() for c in batch],
                embeddings=embeddings[start : start + len(batch)],
            )

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self._collection.delete(ids=list(ids))

    def query(self, embedding: np.ndarray, k: int) -> list[StoredChunk]:
        result = self._collection.query(
            query_embeddings=[embedding], n_results=k, include=["documents", "metadatas", "distances"]
        )
        return [
            _stored(cid, doc, meta, 1.0 - float(dist))
            for cid, doc, meta, dist in zip(
                result["ids"][0],
                result["documents"][0],
                result["metadatas"][0],
                result["distances"][0],
                strict=True,
            )
        ]

    def nearest(self, embedding: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Ids and cosines of the ``k`` nearest chunks, without their text: reading text and metadata doubles a
        query's cost, and the hybrid retriever reads only the chunks it keeps."""
        result = self._collection.query(query_embeddings=[embedding], n_results=k, include=["distances"])
        return [(cid, 1.0 - float(dist)) for cid, dist in zip(result["ids"][0], result["distances"][0], strict=True)]

    def embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        result = self._collection.get(ids=list(ids), include=["embeddings"])
        return {
            cid: np.asarray(vec, dtype=np.float32) for cid, vec in zip(result["ids"], result["embeddings"], strict=True)
        }

    def get(self, ids: Sequence[str]) -> list[StoredChunk]:
        """Chunks by id, in the order asked (score 0: no query was involved)."""
        if not ids:
            return []
        result = self._collection.get(ids=list(ids), include=["documents", "metadatas"])
        found = {
            cid: _stored(cid, doc, meta, 0.0)
            for cid, doc, meta in zip(result["ids"], result["documents"], result["metadatas"], strict=True)
        }
        return [found[i] for i in ids if i in found]


def _stored(cid: str, doc: str | None, meta, score: float) -> StoredChunk:
    meta = dict(meta or {})
    return StoredChunk(
        id=cid,
        text=doc or "",
        source=str(meta.get("source", "")),
        page=int(meta.get("page", 0)) or None,
        start=int(meta.get("start", 0)),
        end=int(meta.get("end", 0)),
        score=score,
        heading=str(meta.get("heading", "")),
    )
