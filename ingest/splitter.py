"""Where text is split: Chinese-aware recursive splitting into overlapping chunks with offsets."""

from __future__ import annotations

import hashlib
from typing import Protocol

from langchain_text_splitters import RecursiveCharacterTextSplitter

from ingest.types import Chunk, LoadedDocument
from kb_app.settings import SplitterSettings

# Paragraphs first, then lines, then sentence ends (zh full-width and en), then clauses, then words.
SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "! ", "? ", "; ", "，", ", ", " ", ""]


class Splitter(Protocol):
    def split(self, document: LoadedDocument) -> list[Chunk]: ...


def chunk_id(source: str, sha256: str, index: int) -> str:
    """Stable id: the same file content under the same name always gives the same ids."""
    digest = hashlib.sha1(f"{source}\x00{sha256}".encode()).hexdigest()[:16]
    return f"{digest}-{index:05d}"


class RecursiveSplitter:
    """Splits on paragraph, sentence (。！？；. ! ?) and clause boundaries before falling back to characters."""

    def __init__(self, settings: SplitterSettings) -> None:
        if settings.chunk_overlap >= settings.chunk_size:
            raise ValueError("splitter.chunk_overlap must be smaller than splitter.chunk_size")
        self._splitter = RecursiveCharacterTextSplitter(
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
            separators=SEPARATORS,
            keep_separator="end",
            add_start_index=True,
            strip_whitespace=True,
        )

    def split_text(self, text: str) -> list[tuple[str, int]]:
        """Chunks of ``text`` with their start offsets."""
        docs = self._splitter.create_documents([text])
        return [(d.page_content, int(d.metadata["start_index"])) for d in docs if d.page_content.strip()]

    def split(self, document: LoadedDocument) -> list[Chunk]:
        chunks: list[Chunk] = []
        for page in document.pages:
            for text, start in self.split_text(page.text):
                chunks.append(
                    Chunk(
                        id=chunk_id(document.source, document.sha256, len(chunks)),
                        text=text,
                        source=document.source,
                        page=page.number,
                        start=start,
                        end=start + len(text),
                        sha256=document.sha256,
                    )
                )
        return chunks
