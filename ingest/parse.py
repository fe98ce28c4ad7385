"""What a parser worker does with one file: read it, hold it to the per-file limits, and split it into chunks.

Splitting runs in the worker too, so the worker's time and memory limits cover it, and the parent (which holds
the knowledge base's writer lock) only embeds and writes. A :class:`FileParser` is sent to the worker with every
task, so it and everything in it (the registry, the splitter) must pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ingest.errors import DocumentReadError
from ingest.loaders import LoaderRegistry, LoadOptions
from ingest.splitter import Splitter
from ingest.types import Chunk

CHUNKS_HINT = "raise ingest.max_chunks in kb.yaml (or KB_INGEST__MAX_CHUNKS) if the file is genuine, or split it"


@dataclass(frozen=True)
class ParsedFile:
    """One file's chunks, the notes worth telling the user, and the content's hash and size as read."""

    chunks: list[Chunk]
    notes: list[str]
    sha256: str
    size: int


@dataclass(frozen=True)
class FileParser:
    """``parse(path, source)``: load → cap → split, raising a :class:`DocumentReadError` that names the file."""

    registry: LoaderRegistry
    splitter: Splitter
    options: LoadOptions
    max_chunks: int

    def __call__(self, path: Path, source: str) -> ParsedFile:
        document, notes = self.registry.load_with_notes(path, source, self.options)  # text capped while loading
        chunks = self.splitter.split(document)
        if not chunks:
            raise DocumentReadError(f"{source}: no text found")
        if len(chunks) > self.max_chunks:
            raise DocumentReadError(
                f"{source}: yields {len(chunks):,} chunks, over {self.max_chunks:,} (ingest.max_chunks)", CHUNKS_HINT
            )
        return ParsedFile(chunks, notes, document.sha256, document.size)
