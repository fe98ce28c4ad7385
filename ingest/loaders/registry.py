"""The loader registry: picks a loader by suffix (checked against the content), enforces size limits, and turns
every failure into an error that names the file and says what to do."""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ingest.errors import DocumentReadError, KbError, UnsupportedFileError
from ingest.loaders.archive import ZipLoader
from ingest.loaders.base import Budget, LoadContext, Loader, LoadOptions, TextBudget, TextLimitError, clean_text
from ingest.loaders.email import EmlLoader, MsgLoader
from ingest.loaders.legacy_office import DocLoader, PptLoader, XlsLoader
from ingest.loaders.markup import HtmlLoader, RtfLoader
from ingest.loaders.ocr import ImageLoader
from ingest.loaders.office import DocxLoader, PptxLoader, XlsxLoader
from ingest.loaders.opendoc import EpubLoader, OdfLoader
from ingest.loaders.pdf import PdfLoader
from ingest.loaders.sniff import ENCRYPTED_OFFICE, sniff
from ingest.loaders.text import CsvLoader, JsonLoader, TextLoader, XmlLoader, looks_like_text
from ingest.types import LoadedDocument, Page

DEFAULT_LOADERS: tuple[Loader, ...] = (
    TextLoader(),
    CsvLoader(),
    JsonLoader(),
    XmlLoader(),
    HtmlLoader(),
    RtfLoader(),
    PdfLoader(),
    ImageLoader(),
    DocxLoader(),
    PptxLoader(),
    XlsxLoader(),
    DocLoader(),
    PptLoader(),
    XlsLoader(),
    OdfLoader(),
    EpubLoader(),
    EmlLoader(),
    MsgLoader(),
    ZipLoader(),
)
HEAD_BYTES = 8192
_SAFE_SUFFIX = re.compile(r"^\.[a-z0-9]{1,10}$")


class LoaderRegistry:
    """Maps a suffix to its loader; adding a format is adding a loader to ``DEFAULT_LOADERS``."""

    def __init__(
        self, loaders: Iterable[Loader] | None = None, max_file_mb: int = 200, options: LoadOptions | None = None
    ) -> None:
        self._loaders = tuple(DEFAULT_LOADERS if loaders is None else loaders)
        self._by_suffix = {suffix: loader for loader in self._loaders for suffix in loader.suffixes}
        self.max_file_mb = max_file_mb
        self._max_bytes = max_file_mb * 1024 * 1024
        self.options = options or LoadOptions()

    @property
    def suffixes(self) -> list[str]:
        return sorted(self._by_suffix)

    def supports(self, path: Path) -> bool:
        return path.suffix.lower() in self._by_suffix

    def load(self, path: Path, source: str, options: LoadOptions | None = None) -> LoadedDocument:
        """Read ``path`` into a document named ``source``; raise a clear error if it cannot be."""
        return self.load_with_notes(path, source, options)[0]

    def load_with_notes(
        self, path: Path, source: str, options: LoadOptions | None = None
    ) -> tuple[LoadedDocument, list[str]]:
        """The document and notes worth telling the user (wrong extension, OCR used, attachments skipped)."""
        path = Path(path)
        options = options or self.options
        try:
            if not path.is_file():
                raise DocumentReadError(f"{source}: not a regular file")
            size = path.stat().st_size
            with path.open("rb") as fh:
                head = fh.read(HEAD_BYTES)
        except OSError as exc:
            raise DocumentReadError(f"{source}: cannot read the file ({exc.strerror or exc})") from exc
        ctx = LoadContext(
            name=source,
            options=options,
            registry=self,
            budget=Budget(options.archive_max_mb * 2**20),
            text=TextBudget(source, options.max_text_chars),
        )
        loader, sniffed = self._pick(path, head, ctx)
        if size == 0:
            raise DocumentReadError(f"{source}: the file is empty")
        if size > self._max_bytes:
            raise DocumentReadError(
                f"{source}: {size / 1e6:.0f} MB is over the {self._max_bytes // 2**20} MB limit",
                "raise max_file_mb in kb.yaml (or KB_MAX_FILE_MB) or split the file",
            )
        sha256 = file_sha256(path)
        pages = self._run(loader, path, head, sniffed, ctx)
        pages = [Page(p.text.strip(), p.number) for p in pages if p.text.strip()]
        _charge_rest(ctx, pages, charged_before=0)
        if not pages:
            raise DocumentReadError(f"{source}: no text found" + (f" ({ctx.empty_hint})" if ctx.empty_hint else ""))
        return LoadedDocument(source=source, path=path, sha256=sha256, size=size, pages=pages), ctx.notes

    def _pick(self, path: Path, head: bytes, ctx: LoadContext) -> tuple[Loader, str | None]:
        """The loader for the content: the extension's, unless the bytes say it is another known format."""
        ext = path.suffix.lower()
        by_ext = self._by_suffix.get(ext)
        sniffed = sniff(path, head) if head else None
        if sniffed == ENCRYPTED_OFFICE:
            raise DocumentReadError(
                f"{ctx.name}: the Office file is password-protected",
                "save an unprotected copy (File → Info → Protect) and ingest that",
            )
        if sniffed and sniffed in self._by_suffix and (by_ext is None or sniffed not in by_ext.suffixes):
            loader = self._by_suffix[sniffed]
            if loader is not by_ext:
                kind = sniffed[1:].upper()
                ctx.note(
                    f"{ctx.name}: the content is {kind} although the name ends in '{ext or '(none)'}'; read as {kind}"
                )
                return loader, sniffed
        if by_ext is None:
            raise UnsupportedFileError(
                f"{ctx.name}: unsupported file type '{path.suffix or '(none)'}'",
                f"supported: {', '.join(self.suffixes)}",
            )
        return by_ext, sniffed

    def _run(self, loader: Loader, path: Path, head: bytes, sniffed: str | None, ctx: LoadContext) -> list[Page]:
        try:
            return loader.load(path, ctx)
        except (MemoryError, TextLimitError):
            raise
        except Exception as exc:
            error = exc
        # A binary format whose content is plain text (a mislabelled .doc, say): keep the text rather than lose it.
        if getattr(loader, "binary", False) and sniffed is None and looks_like_text(head):
            ctx.note(f"{ctx.name}: not a valid '{path.suffix.lower()}' file but plain text; read as text")
            return TextLoader().load(path, ctx)
        if isinstance(error, KbError):
            raise error
        if isinstance(error, RecursionError):
            raise DocumentReadError(f"{ctx.name}: nested too deeply to parse") from error
        raise DocumentReadError(
            f"{ctx.name}: could not be parsed ({type(error).__name__}: {error})",
            "check that the file opens in its usual application",
        ) from error

    def load_nested(self, parent: LoadContext, label: str, data: bytes) -> list[Page]:
        """Pages of an attachment or archive member; any failure becomes a note on the parent."""
        name = f"{parent.name}/{label}"
        if not data:
            parent.note(f"{name}: skipped, empty")
            return []
        suffix = Path(label).suffix.lower()
        suffix = suffix if _SAFE_SUFFIX.match(suffix) else ""
        child = LoadContext(
            name=name,
            options=parent.options,
            registry=self,
            depth=parent.depth + 1,
            budget=parent.budget,
            text=parent.text,
            notes=parent.notes,
        )
        charged_before = parent.text.used
        with tempfile.TemporaryDirectory(prefix="kb-nested-") as tmp:
            path = Path(tmp) / f"member{suffix}"
            path.write_bytes(data)
            try:
                loader, sniffed = self._pick(path, data[:HEAD_BYTES], child)
                pages = self._run(loader, path, data[:HEAD_BYTES], sniffed, child)
            except TextLimitError:
                raise  # the file as a whole is over its limit, not just this member
            except KbError as exc:
                parent.note(f"skipped {exc.message}")
                return []
        pages = [Page(clean_text(p.text), p.number) for p in pages if p.text.strip()]
        _charge_rest(child, pages, charged_before)
        return pages


def _charge_rest(ctx: LoadContext, pages: list[Page], charged_before: int) -> None:
    """Charge the text a load yielded beyond what its loader charged while reading, so nothing counts twice."""
    charged = ctx.text.used - charged_before
    ctx.text.charge(max(0, sum(len(p.text) for p in pages) - charged))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
