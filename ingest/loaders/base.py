"""What every loader shares: the ``Loader`` protocol, the options a load runs under and the context it reports to.

A loader turns one file into pages of plain text. It never decides what a file is called (the registry passes the
display name in the context) and never writes next to the file: nested content (mail attachments, archive members)
goes back through the registry with :meth:`LoadContext.nested`, which keeps depth and size budgets.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ingest.errors import DocumentReadError
from ingest.types import Page

if TYPE_CHECKING:
    from ingest.loaders.registry import LoaderRegistry


@dataclass(frozen=True)
class LoadOptions:
    """How files are read; built from ``IngestSettings`` (kb.yaml ``ingest:``) and CLI flags."""

    password: str | None = None
    ocr: bool = True
    ocr_languages: str = "chi_sim+chi_tra+eng"
    ocr_dpi: int = 200
    ocr_timeout_s: float = 120.0
    max_ocr_pages: int = 300
    archive_max_files: int = 1000
    archive_max_mb: int = 500
    archive_max_ratio: int = 200
    max_depth: int = 3
    max_text_chars: int = 5_000_000

    def __repr__(self) -> str:  # never print a password into a log or a report
        shown = {k: ("***" if k == "password" and v else v) for k, v in self.__dict__.items()}
        return f"LoadOptions({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


@dataclass
class Budget:
    """Bytes that nested content (archive members, attachments) may still unpack to, shared by one top-level file."""

    remaining: int


TEXT_LIMIT_HINT = (
    "raise ingest.max_text_chars in kb.yaml (or KB_INGEST__MAX_TEXT_CHARS) if the file is genuine, or split it"
)


class TextLimitError(DocumentReadError):
    """A file yields more text than ``ingest.max_text_chars``: the whole file is refused, not just a nested part."""


@dataclass
class TextBudget:
    """Characters one top-level file may yield, shared by everything nested in it.

    Loaders that gather text piece by piece (EPUB chapters, PDF pages, archive members) charge each piece as it
    comes, so an EPUB that lists one chapter 400 times stops at the limit instead of after reading all 400.
    """

    name: str  # the top-level file, which the error names
    limit: int = sys.maxsize
    used: int = 0

    def charge(self, chars: int) -> None:
        self.used += chars
        if self.used > self.limit:
            raise TextLimitError(
                f"{self.name}: yields over {self.limit:,} characters (ingest.max_text_chars)", TEXT_LIMIT_HINT
            )


@dataclass
class LoadContext:
    """One load in progress: its display name, options, notes for the report and the nesting it sits in."""

    name: str
    options: LoadOptions
    registry: LoaderRegistry
    depth: int = 0
    budget: Budget = field(default_factory=lambda: Budget(0))
    text: TextBudget = field(default_factory=lambda: TextBudget(""))
    notes: list[str] = field(default_factory=list)
    empty_hint: str = ""

    def note(self, message: str) -> None:
        """Something the user should know although the file was read (a skipped attachment, OCR used...)."""
        if message not in self.notes:
            self.notes.append(message)

    def charge_text(self, text: str) -> None:
        """Count text this load has produced; :class:`TextLimitError` once the file is over its limit."""
        self.text.charge(len(text))

    def error(self, message: str, hint: str = "") -> DocumentReadError:
        return DocumentReadError(f"{self.name}: {message}", hint)

    def nested(self, label: str, data: bytes) -> list[Page]:
        """Pages of an embedded file (attachment, archive member); failures become notes, never exceptions."""
        label = safe_label(label)
        if self.depth + 1 > self.options.max_depth:
            self.note(f"{label}: skipped, nested more than {self.options.max_depth} levels deep")
            return []
        if len(data) > self.budget.remaining:
            self.note(f"{label}: skipped, the unpacked size limit ({self.options.archive_max_mb} MB) is used up")
            return []
        self.budget.remaining -= len(data)
        return self.registry.load_nested(self, label, data)


class Loader(Protocol):
    """Reads the formats named by ``suffixes``. ``binary`` loaders may fall back to plain text on text content."""

    suffixes: tuple[str, ...]

    def load(self, path: Path, ctx: LoadContext) -> list[Page]: ...


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def safe_label(name: str) -> str:
    """A name fit to show and store: control characters and undecodable bytes escaped, no '..' or root parts.

    Used for archive members and attachments, whose names come from inside a file and may be hostile
    (``../../etc/passwd``, ``C:\\x``, newlines); the name is only ever a label, never a path that is written.
    """
    name = name.replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".", "..")]
    return escape_controls("/".join(parts)) or "(unnamed)"


def escape_controls(text: str) -> str:
    r"""Replace control characters and lone surrogates (undecodable bytes in file names) with ``\xNN`` escapes."""

    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the raw byte that was not UTF-8
            return f"\\x{code - 0xDC00:02x}"
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(escape, text)


def clean_text(text: str) -> str:
    """Normalise line ends and drop NULs and other invisible control characters that parsers leave behind."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub(r"[\x00-\x08\x0b\x0e-\x1f\x7f\ufeff\ufffe]", "", text.replace("\x0c", "\n\n"))
