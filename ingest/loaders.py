"""Where files are read: one loader per format family, chosen by file suffix.

Every loader returns pages of plain text; failures raise errors that name the file and say what to do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from charset_normalizer import from_bytes

from ingest.types import LoadedDocument, Page
from ingest.unstructured_offline import use_offline_nlp
from kb_app.errors import DocumentReadError, UnsupportedFileError


class Loader(Protocol):
    suffixes: tuple[str, ...]

    def load(self, path: Path) -> list[Page]: ...


class TextLoader:
    """Plain text in any common encoding (UTF-8/16 with or without BOM, GBK, GB18030, Big5)."""

    suffixes = (".txt", ".text")

    def load(self, path: Path) -> list[Page]:
        raw = path.read_bytes()
        if raw.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
            text = raw.decode("utf-16" if not raw.startswith(b"\xef\xbb\xbf") else "utf-8-sig")
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                best = from_bytes(raw).best()
                if best is None:
                    raise DocumentReadError(
                        f"{path.name}: cannot tell the text encoding", "save the file as UTF-8 and retry"
                    ) from None
                text = str(best)
        return [Page(text)]


class PdfLoader:
    """PDF text layer through pypdf, one page per page so citations can name it."""

    suffixes = (".pdf",)

    def load(self, path: Path) -> list[Page]:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        try:
            reader = PdfReader(path)
            if reader.is_encrypted:
                raise DocumentReadError(
                    f"{path.name}: the PDF is encrypted", "remove the password (or export an unlocked copy)"
                )
            return [Page(page.extract_text() or "", number=i) for i, page in enumerate(reader.pages, 1)]
        except DocumentReadError:
            raise
        except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
            raise DocumentReadError(
                f"{path.name}: not a readable PDF ({exc})",
                "check that the file is complete and opens in a viewer",
            ) from exc


class UnstructuredLoader:
    """Word, HTML and Markdown through unstructured; elements are grouped by page where the file has pages."""

    suffixes = (".docx", ".html", ".htm", ".md", ".markdown")

    def load(self, path: Path) -> list[Page]:
        from unstructured.partition.auto import partition

        use_offline_nlp()
        try:
            elements = partition(filename=str(path))
        except Exception as exc:  # unstructured raises many kinds; each means "this file cannot be read"
            raise DocumentReadError(
                f"{path.name}: could not be parsed ({type(exc).__name__}: {exc})",
                "check that the file opens in its usual application",
            ) from exc
        pages: dict[int, list[str]] = {}
        current = 1
        for element in elements:
            current = getattr(element.metadata, "page_number", None) or current
            if text := str(element).strip():
                pages.setdefault(current, []).append(text)
        if len(pages) <= 1:
            return [Page("\n\n".join(t for texts in pages.values() for t in texts))]
        return [Page("\n\n".join(texts), number=number) for number, texts in pages.items()]


DEFAULT_LOADERS: tuple[Loader, ...] = (TextLoader(), PdfLoader(), UnstructuredLoader())


class LoaderRegistry:
    """Maps a suffix to its loader; adding a format is adding a loader to the tuple."""

    def __init__(self, loaders: Iterable[Loader] = DEFAULT_LOADERS, max_file_mb: int = 200) -> None:
        self._by_suffix = {suffix: loader for loader in loaders for suffix in loader.suffixes}
        self._max_bytes = max_file_mb * 1024 * 1024

    @property
    def suffixes(self) -> list[str]:
        return sorted(self._by_suffix)

    def supports(self, path: Path) -> bool:
        return path.suffix.lower() in self._by_suffix

    def load(self, path: Path, source: str) -> LoadedDocument:
        """Read ``path`` into a document named ``source``; raise a clear error if it cannot be."""
        loader = self._by_suffix.get(path.suffix.lower())
        if loader is None:
            raise UnsupportedFileError(
                f"{source}: unsupported file type '{path.suffix or '(none)'}'",
                f"supported: {', '.join(self.suffixes)}",
            )
        size = path.stat().st_size
        if size == 0:
            raise DocumentReadError(f"{source}: the file is empty")
        if size > self._max_bytes:
            raise DocumentReadError(
                f"{source}: {size / 1e6:.0f} MB is over the {self._max_bytes // 2**20} MB limit",
                "raise max_file_mb in kb.yaml (or KB_MAX_FILE_MB) or split the file",
            )
        sha256 = file_sha256(path)
        pages = [p for p in loader.load(path) if p.text.strip()]
        if not pages:
            raise DocumentReadError(
                f"{source}: no text found", "a scanned document needs OCR; export it with a text layer"
            )
        return LoadedDocument(source=source, path=path, sha256=sha256, size=size, pages=pages)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
