"""A cited PDF page as a PNG, with the passage's region marked, so a person sees where the answer came from.

The region is found in PDFium's own text layer (the same one the loader read), one character at a time, so each
matched character has a box on the page. Text is compared without whitespace: the loader turned PDFium's CRLF
into LF and the splitter trimmed chunk edges, and line breaks differ between the two anyway. When the passage as a
whole is not found (OCR text, a changed extraction), its longest sentences that are found are marked instead.
"""

from __future__ import annotations

import ctypes
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kb_app.chat.citations import split_sentences
from kb_app.errors import KbError

SCALE = 2.0  # 144 dpi: a page reads comfortably in the side panel
MAX_PIXELS = 4_000_000  # an A0 poster is rendered smaller rather than into hundreds of MB
MIN_SENTENCE_CHARS = 8  # shorter fragments match too many places to mark
MIN_BLOCK_CHARS = 12  # the shortest common run marked when no sentence matches
HIGHLIGHT = (255, 214, 0, 96)  # translucent yellow: the text stays legible under it
OUTLINE = (230, 140, 0, 220)
PAD = 2  # pixels around each line's box


@dataclass(frozen=True)
class Box:
    """A rectangle in the rendered image's pixels (origin top left)."""

    left: int
    top: int
    right: int
    bottom: int

    def union(self, other: Box) -> Box:
        return Box(
            min(self.left, other.left),
            min(self.top, other.top),
            max(self.right, other.right),
            max(self.bottom, other.bottom),
        )


@dataclass(frozen=True)
class RenderedPage:
    png: bytes
    width: int
    height: int
    marks: list[Box]  # one box per line of the passage; empty when it was not found on the page


def page_scale(width_pt: float, height_pt: float, scale: float = SCALE, max_pixels: int = MAX_PIXELS) -> float:
    """``scale``, or less where the page would exceed ``max_pixels``."""
    area = max(width_pt * height_pt, 1.0)
    return min(scale, math.sqrt(max_pixels / area))


def render_page(
    pdf: Path, page_number: int, passage: str = "", password: str | None = None, scale: float = SCALE
) -> RenderedPage:
    """Page ``page_number`` (1-based) of ``pdf`` as a PNG, with ``passage`` marked where the text layer holds it."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(str(pdf), password=password)
    except pdfium.PdfiumError as exc:
        raise KbError(f"the kept copy of this PDF cannot be opened ({exc})", "ingest the file again") from None
    try:
        if not 1 <= page_number <= len(document):
            raise KbError(f"the PDF has no page {page_number}", f"its pages are 1 to {len(document)}")
        page = document[page_number - 1]
        try:
            return _render(page, passage, page_scale(*page.get_size(), scale))
        finally:
            page.close()
    finally:
        document.close()


def _render(page, passage: str, scale: float) -> RenderedPage:
    from PIL import Image, ImageDraw

    image = page.render(scale=scale).to_pil().convert("RGBA")
    marks = passage_boxes(page, passage, image.size) if passage.strip() else []
    if marks:
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        for box in marks:
            draw.rectangle((box.left, box.top, box.right, box.bottom), fill=HIGHLIGHT, outline=OUTLINE, width=1)
        image = Image.alpha_composite(image, overlay)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG", optimize=True)
    return RenderedPage(out.getvalue(), image.width, image.height, marks)


def passage_boxes(page, passage: str, size: tuple[int, int]) -> list[Box]:
    """The line rectangles (in pixels of an image of ``size``) covering ``passage`` on ``page``."""
    textpage = page.get_textpage()
    try:
        chars = page_chars(textpage)
        indices = match_indices(chars, passage)
        boxes = [_device_box(page, textpage.get_charbox(i), size) for i in indices]
    finally:
        textpage.close()
    return merge_lines(boxes, size)


def page_chars(textpage) -> str:
    """The page's characters, one per entry of PDFium's character list, so ``text[i]`` is character ``i``
    (``get_text_range`` may return more or fewer characters than the list holds)."""
    import pypdfium2.raw as pdfium_c

    return "".join(chr(pdfium_c.FPDFText_GetUnicode(textpage, i) or 32) for i in range(textpage.count_chars()))


def _keyed(text: str) -> tuple[str, list[int]]:
    """``text`` without whitespace, and where each remaining character was."""
    kept = [(ch, i) for i, ch in enumerate(text) if not ch.isspace()]
    return "".join(ch for ch, _ in kept), [i for _, i in kept]


def match_indices(chars: str, passage: str) -> list[int]:
    """The indices in ``chars`` of the passage's characters: the whole passage where it is found, else its
    sentences that are (longest first, none overlapping), else the longest runs the two share."""
    page_key, where = _keyed(chars)
    passage_key, _ = _keyed(passage)
    if not passage_key:
        return []
    at = page_key.find(passage_key)
    if at >= 0:
        return where[at : at + len(passage_key)]
    spans = _sentence_spans(page_key, split_sentences(passage)) or _common_runs(page_key, passage_key)
    return [where[i] for start, end in sorted(spans) for i in range(start, end)]


def _sentence_spans(page_key: str, sentences: Iterable[str]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for sentence in sorted((_keyed(s)[0] for s in sentences), key=len, reverse=True):
        if len(sentence) < MIN_SENTENCE_CHARS:
            break
        at = page_key.find(sentence)
        span = (at, at + len(sentence))
        if at >= 0 and not any(s < span[1] and span[0] < e for s, e in spans):
            spans.append(span)
    return spans


def _common_runs(page_key: str, passage_key: str) -> list[tuple[int, int]]:
    from difflib import SequenceMatcher

    blocks = SequenceMatcher(None, page_key, passage_key, autojunk=False).get_matching_blocks()
    return [(b.a, b.a + b.size) for b in blocks if b.size >= MIN_BLOCK_CHARS]


def _device_box(page, charbox: tuple[float, float, float, float], size: tuple[int, int]) -> Box:
    """A character's box (PDF points, origin bottom left) in the image's pixels: PDFium maps the corners, so
    the page's rotation and crop box are taken into account as the rendering took them."""
    import pypdfium2.raw as pdfium_c

    left, bottom, right, top = charbox
    xs, ys = [], []
    for x, y in ((left, bottom), (right, top)):
        dx, dy = ctypes.c_int(), ctypes.c_int()
        pdfium_c.FPDF_PageToDevice(page, 0, 0, size[0], size[1], 0, x, y, dx, dy)
        xs.append(dx.value)
        ys.append(dy.value)
    return Box(min(xs), min(ys), max(xs), max(ys))


def merge_lines(boxes: Iterable[Box], size: tuple[int, int] = (1 << 30, 1 << 30)) -> list[Box]:
    """Character boxes, in reading order, merged into one rectangle per line: a box that overlaps the current
    line vertically and does not jump back to its left joins it; any other starts a new line. Each is padded a
    little and kept inside an image of ``size``."""
    lines: list[Box] = []
    for box in boxes:
        if box.right <= box.left or box.bottom <= box.top:
            continue  # a generated space or an empty glyph
        line = lines[-1] if lines else None
        middle = (box.top + box.bottom) / 2
        if line is not None and line.top <= middle <= line.bottom and box.left >= line.left:
            lines[-1] = line.union(box)
        else:
            lines.append(box)
    width, height = size
    return [
        Box(max(b.left - PAD, 0), max(b.top - PAD, 0), min(b.right + PAD, width - 1), min(b.bottom + PAD, height - 1))
        for b in lines
    ]
