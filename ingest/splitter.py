"""Where text is split: Chinese-aware recursive splitting into overlapping chunks with offsets.

Each chunk also carries its heading path: the document's title (its first line when that reads as a title, else
the file name) and the Markdown-style headings (``#`` … ``######``) above it, which the loaders emit for
Markdown, HTML and Word headings.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePath
from typing import Protocol

from langchain_text_splitters import RecursiveCharacterTextSplitter

from ingest.settings import SplitterSettings
from ingest.types import Chunk, LoadedDocument

# Paragraphs first, then lines, then sentence ends (zh full-width and en), then clauses, then words.
SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "! ", "? ", "; ", "，", ", ", " ", ""]


_ATX_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
TITLE_MAX_CHARS = 80
HEADING_MAX_CHARS = 200
_SENTENCE_END = tuple("。．.!?！？;；:：,，、")
HEADING_JOINER = " › "


def document_title(document: LoadedDocument) -> str:
    """The first line when it stands alone (a Markdown heading, or a short line before a blank one), else the
    file name without its extension."""
    text = next((p.text for p in document.pages if p.text.strip()), "").lstrip()
    first, _, rest = text.partition("\n")
    first = first.strip()
    if match := _ATX_HEADING.match(first):
        return match.group(2).strip()[:TITLE_MAX_CHARS]
    stands_alone = rest.startswith("\n") or rest.lstrip(" \t").startswith(("\n", "#"))
    if first and len(first) <= TITLE_MAX_CHARS and stands_alone and not first.endswith(_SENTENCE_END):
        return first
    return PurePath(document.source).stem.replace("_", " ").strip()


class _HeadingPath:
    """The headings in force at each offset of a document, fed page by page and offset by offset."""

    def __init__(self, title: str) -> None:
        self._title = title
        self._stack: list[tuple[int, str]] = []
        self._page: list[tuple[int, int, str]] = []
        self._next = 0

    def start_page(self, text: str) -> None:
        """The page's (offset, level, text) headings; the stack carries over from the page before."""
        self._page = [(m.start(), len(m.group(1)), m.group(2).strip()) for m in _ATX_HEADING.finditer(text)]
        self._next = 0

    def advance(self, upto: int) -> None:
        """Apply the page's headings that start at or before ``upto``."""
        while self._next < len(self._page) and self._page[self._next][0] <= upto:
            _, level, text = self._page[self._next]
            self._stack = [(lvl, t) for lvl, t in self._stack if lvl < level] + [(level, text)]
            self._next += 1

    def render(self) -> str:
        sections = [t for _, t in self._stack if t != self._title]
        parts = [self._title, *sections] if self._title else sections
        return HEADING_JOINER.join(parts)[:HEADING_MAX_CHARS]


def _body_offset(text: str, title: str) -> int:
    """Where a chunk's body starts: past the title and heading lines it opens with, which belong to its path."""
    offset = 0
    for line in text.splitlines(keepends=True):
        if _is_body(line, title):
            return offset
        offset += len(line)
    return offset


def _is_body(line: str, title: str) -> bool:
    """Text of the document's own, not its title or a heading line."""
    stripped = line.strip()
    return bool(stripped) and stripped != title and not _ATX_HEADING.match(stripped)


def section_starts(text: str, title: str = "") -> list[int]:
    """Offsets where sections begin: at each heading, so no chunk runs across one; a title or headings with no
    text of their own before the next heading stay with it.

    Each line is looked at once (headings start lines, so the text between two of them splits into whole lines):
    a document of nothing but headings is as quick as any other.
    """
    starts = [0]
    scanned = 0
    has_body = False
    for match in _ATX_HEADING.finditer(text):
        at = match.start()
        has_body = has_body or any(_is_body(line, title) for line in text[scanned:at].splitlines())
        scanned = at
        if at > 0 and has_body:
            starts.append(at)
            has_body = False
    return starts


class Splitter(Protocol):
    def split(self, document: LoadedDocument) -> list[Chunk]: ...


def chunk_id(source: str, sha256: str, index: int) -> str:
    """Stable id: the same file content under the same name always gives the same ids."""
    digest = hashlib.sha1(f"{source}\x00{sha256}".encode()).hexdigest()[:16]
    return f"{digest}-{index:05d}"


class RecursiveSplitter:
    """Splits on paragraph, sentence (。！？；. ! ?) and clause boundaries before falling back to characters."""

    def __init__(self, settings: SplitterSettings) -> None:
        self._splitter = RecursiveCharacterTextSplitter(
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
            separators=SEPARATORS,
            keep_separator="end",
            add_start_index=True,
            strip_whitespace=True,
        )

    def split_text(self, text: str, title: str = "") -> list[tuple[str, int]]:
        """Chunks of ``text`` with their start offsets, section by section."""
        starts = section_starts(text, title)
        chunks = []
        for start, end in zip(starts, [*starts[1:], len(text)], strict=True):
            docs = self._splitter.create_documents([text[start:end]])
            chunks += [(d.page_content, start + int(d.metadata["start_index"])) for d in docs if d.page_content.strip()]
        return chunks

    def split(self, document: LoadedDocument) -> list[Chunk]:
        chunks: list[Chunk] = []
        title = document_title(document)
        path = _HeadingPath(title)
        for page in document.pages:
            path.start_page(page.text)
            for text, start in self.split_text(page.text, title):
                path.advance(start + _body_offset(text, title))
                chunks.append(
                    Chunk(
                        id=chunk_id(document.source, document.sha256, len(chunks)),
                        text=text,
                        source=document.source,
                        page=page.number,
                        start=start,
                        end=start + len(text),
                        sha256=document.sha256,
                        heading=path.render(),
                    )
                )
        return chunks
