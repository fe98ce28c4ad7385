"""Office Open XML: Word (python-docx), PowerPoint (python-pptx) and Excel (openpyxl).

Word keeps the order of paragraphs and tables, text boxes included, and splits pages where Word recorded its page
breaks; pictures are read by OCR in place. PowerPoint gives one page per slide (notes and tables included).
Excel gives one block per sheet, each row a line of ``column: value`` pairs.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from ingest.loaders.base import LoadContext, clean_text
from ingest.loaders.ocr import ocr_available, ocr_images
from ingest.loaders.tables import rows_to_text
from ingest.types import Page

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
R = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
MAX_OCR_IMAGES = 50
MIN_OCR_PIXELS = 120 * 40


def _open_error(ctx: LoadContext, kind: str, exc: Exception):
    if isinstance(exc, zipfile.BadZipFile | KeyError):
        return ctx.error(f"not a readable {kind} file ({exc})", "check that the file is complete and opens in Office")
    return ctx.error(f"could not be parsed as {kind} ({type(exc).__name__}: {exc})", "check that it opens in Office")


class _ImageOcr:
    """OCR of embedded pictures, at most ``MAX_OCR_IMAGES`` per file and only pictures big enough to hold text."""

    def __init__(self, ctx: LoadContext) -> None:
        self.ctx = ctx
        self.enabled = ocr_available(ctx.options)
        self.done = 0

    def read(self, blobs: list[bytes]) -> str:
        if not self.enabled or not blobs:
            return ""
        blobs = [b for b in blobs if _big_enough(b)][: max(0, MAX_OCR_IMAGES - self.done)]
        self.done += len(blobs)
        return ocr_images(blobs, self.ctx) if blobs else ""


def _big_enough(blob: bytes) -> bool:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as image:
            return image.width * image.height >= MIN_OCR_PIXELS
    except Exception:  # any undecodable picture (WMF, EMF, broken) is simply not OCRed
        return False


def _paragraph_text(p) -> str:
    parts: list[str] = []

    def walk(element) -> None:
        for child in element:
            tag = child.tag
            if tag == MC_FALLBACK:  # the same content as mc:Choice, for old readers
                continue
            if tag == f"{W}t":
                parts.append(child.text or "")
            elif tag == f"{W}tab":
                parts.append("\t")
            elif tag in (f"{W}br", f"{W}cr"):
                parts.append("\n")
            elif tag == f"{W}p" and parts:  # a paragraph inside a text box
                parts.append("\n")
                walk(child)
            else:
                walk(child)

    walk(p)
    return "".join(parts).strip()


_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*([1-6])$", re.IGNORECASE)


def _heading_levels(document) -> dict[str, int]:
    """Style id → heading level for the built-in "Heading 1".."Heading 6" and "Title" styles (any UI language)."""
    levels = {}
    for style in document.styles:
        name = (style.name or "").strip()
        if match := _HEADING_STYLE.match(name):
            levels[style.style_id] = int(match.group(1))
        elif name.lower() == "title":
            levels[style.style_id] = 1
    return levels


def _table_rows(tbl) -> list[list[str]]:
    rows = []
    for tr in tbl.iter(f"{W}tr"):
        if tr.getparent() is not tbl:
            continue
        cells = [tc for tc in tr if tc.tag == f"{W}tc"]
        rows.append([" ".join(_paragraph_text(p) for p in tc.iter(f"{W}p")).strip() for tc in cells])
    return rows


class DocxLoader:
    suffixes = (".docx", ".docm", ".dotx")
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        import docx

        try:
            document = docx.Document(str(path))
        except Exception as exc:  # python-docx raises zip, KeyError, lxml and ValueError errors for broken files
            raise _open_error(ctx, "Word", exc) from exc
        images = _ImageOcr(ctx)
        rels = document.part.rels
        heading_levels = _heading_levels(document)
        pages: list[list[str]] = [[]]
        for block in document.element.body.iterchildren():
            if block.tag == f"{W}p":
                breaks = sum(1 for _ in block.iter(f"{W}lastRenderedPageBreak")) + sum(
                    1 for br in block.iter(f"{W}br") if br.get(f"{W}type") == "page"
                )
                if breaks and any(pages[-1]):
                    pages.append([])
                if text := _paragraph_text(block):
                    level = heading_levels.get(block.style or "", 0)
                    pages[-1].append(f"{'#' * level} {text}" if level else text)
                blobs = []
                for blip in block.iter(f"{A}blip"):
                    rel = rels.get(blip.get(f"{R}embed") or "")
                    if rel is not None and not rel.is_external and "image" in rel.reltype:
                        blobs.append(rel.target_part.blob)
                if ocr_text := images.read(blobs):
                    pages[-1].append(ocr_text)
            elif block.tag == f"{W}tbl":
                pages[-1].append(rows_to_text(_table_rows(block)))
        texts = [clean_text("\n\n".join(t for t in page if t)) for page in pages]
        if images.done:
            ctx.note(f"{ctx.name}: text of {images.done} picture(s) read by OCR")
        if len(texts) == 1:
            return [Page(texts[0])]
        return [Page(text, number=i) for i, text in enumerate(texts, 1)]


def _shape_texts(shapes, images: _ImageOcr) -> list[str]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    texts: list[str] = []
    for shape in shapes:
        try:
            if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
                texts.extend(_shape_texts(shape.shapes, images))
                continue
            if getattr(shape, "has_table", False) and shape.has_table:
                rows = [[cell.text for cell in row.cells] for row in shape.table.rows]
                texts.append(rows_to_text(rows))
            elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
                texts.append(shape.text_frame.text)
            if shape.shape_type == MSO_SHAPE_TYPE.PICTURE:
                texts.append(images.read([shape.image.blob]))
        except (AttributeError, KeyError, ValueError, NotImplementedError):
            continue  # a shape python-pptx cannot interpret (malformed XML, linked picture) is skipped
    return [t.strip() for t in texts if t and t.strip()]


class PptxLoader:
    suffixes = (".pptx", ".pptm", ".ppsx", ".potx")
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        import pptx

        try:
            presentation = pptx.Presentation(str(path))
        except Exception as exc:  # zip, KeyError, lxml, ValueError for broken files
            raise _open_error(ctx, "PowerPoint", exc) from exc
        images = _ImageOcr(ctx)
        pages = []
        for number, slide in enumerate(presentation.slides, 1):
            texts = _shape_texts(slide.shapes, images)
            if slide.has_notes_slide:
                notes = slide.notes_slide.notes_text_frame
                if notes is not None and notes.text.strip():
                    texts.append(f"Notes: {notes.text.strip()}")
            pages.append(Page(clean_text("\n\n".join(texts)), number=number))
        if images.done:
            ctx.note(f"{ctx.name}: text of {images.done} picture(s) read by OCR")
        return pages


class XlsxLoader:
    suffixes = (".xlsx", ".xlsm", ".xltx")
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        import openpyxl

        try:
            workbook = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
        except Exception as exc:  # zip, KeyError, lxml, ValueError, InvalidFileException
            raise _open_error(ctx, "Excel", exc) from exc
        blocks = []
        try:
            for sheet in workbook.worksheets:
                rows = sheet.iter_rows(values_only=True)
                text = rows_to_text(rows)
                if text:
                    blocks.append(f"Sheet: {sheet.title}\n{text}" if len(workbook.worksheets) > 1 else text)
        finally:
            workbook.close()
        return [Page(clean_text("\n\n".join(blocks)))]
