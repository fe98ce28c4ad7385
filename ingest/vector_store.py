"""Where vectors are stored: Chroma, embedded on disk by default or a Chroma server by configuration.

One collection per knowledge base; deletes go by the chunk ids the manifest keeps, never by a ``where`` scan.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.types import Chunk, indexed_text
from kb_app.errors import KbError
from kb_app.settings import StoreSettings

_VALID_COLLECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")


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


def collection_name(kb: str) -> str:
    """Chroma allows only [A-Za-z0-9._-]; other names (Chinese, spaces) get a stable hashed name."""
    if _VALID_COLLECTION.match(kb):
        return kb
    return "kb-" + hashlib.sha1(kb.encode()).hexdigest()[:20]


def make_client(settings: StoreSettings, chroma_dir: Path):  # -> chromadb.api.ClientAPI
    """An embedded client on disk, or an HTTP client for a Chroma server; telemetry off in both."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.mode == "http":
        try:
            return chromadb.HttpClient(host=settings.host, port=settings.port, settings=chroma_settings)
        except Exception as exc:
            raise KbError(
                f"cannot reach the Chroma server at {settings.host}:{settings.port} ({exc})",
                "start it (`chroma run --path DIR --port PORT`) or set store.mode: embedded",
            ) from exc
    chroma_dir.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(chroma_dir), settings=chroma_settings)


class ChromaVectorStore:
    """The vectors of one knowledge base."""

    def __init__(self, client, kb: str, embedder_name: str) -> None:
        self._collection = client.get_or_create_collection(
            name=collection_name(kb),
            metadata={"hnsw:space": "cosine", "kb_name": kb, "embedder": embedder_name},
            embedding_function=None,
        )
        stored = (self._collection.metadata or {}).get("embedder")
        if stored and stored != embedder_name:
            raise KbError(
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

    def embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
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


def list_knowledge_bases(client) -> list[str]:
    names = []
    for collection in client.list_collections():
        meta = collection.metadata or {}
        names.append(str(meta.get("kb_name", collection.name)))
    return sorted(names)


def delete_knowledge_base(client, kb: str) -> None:
    client.delete_collection(collection_name(kb))
