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


@dataclass(frozen=True)
class Chunk:
    """A passage to embed. ``start``/``end`` are character offsets into its page's text."""

    id: str
    text: str
    source: str
    page: int | None
    start: int
    end: int
    sha256: str

    def metadata(self) -> dict[str, str | int]:
        """Chroma metadata: scalars only, so a missing page is stored as 0."""
        return {
            "source": self.source,
            "page": self.page or 0,
            "start": self.start,
            "end": self.end,
            "sha256": self.sha256,
        }
