"""The records that flow through ingestion."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Page:
    """Text of one page (paged formats) or of the whole file (``number`` is None)."""

    text: str
    number: int | None = None


@dataclass(frozen=True)
class LoadedDocument:
    """A file read into text, keyed by ``source``: the name a citation shows."""

    source: str
    path: Path
    sha256: str
    size: int
    pages: list[Page] = field(default_factory=list)


def indexed_text(heading: str, text: str) -> str:
    """What is embedded and tokenized for a chunk: its heading path above its text.

    A passage rarely repeats the name of what it is about ("It was founded in 1903"); the document title and
    section headings restore that, for both the dense and the lexical leg, while the stored text stays the
    passage a citation quotes.
    """
    return f"{heading}\n{text}" if heading else text


@dataclass(frozen=True)
class Chunk:
    """A passage to embed. ``start``/``end`` are character offsets into its page's text.

    ``heading`` is the document title and the section headings the passage sits under ("Title › Section").
    """

    id: str
    text: str
    source: str
    page: int | None
    start: int
    end: int
    sha256: str
    heading: str = ""

    @property
    def indexed_text(self) -> str:
        return indexed_text(self.heading, self.text)

    def metadata(self) -> dict[str, str | int]:
        """Chroma metadata: scalars only, so a missing page is stored as 0."""
        return {
            "source": self.source,
            "page": self.page or 0,
            "start": self.start,
            "end": self.end,
            "sha256": self.sha256,
            "heading": self.heading,
        }
