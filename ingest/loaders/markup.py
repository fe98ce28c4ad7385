"""HTML (also used for e-mail bodies and EPUB chapters) and RTF.

HTML goes through lxml's forgiving parser: scripts, styles and hidden parts are dropped, block elements become
lines, tables become ``column: value`` rows. The encoding comes from a BOM, then the page's own ``<meta charset>``,
then detection. RTF goes through striprtf with the code page the file declares (``\\ansicpg936`` for GBK...).
"""

from __future__ import annotations

import re
from pathlib import Path

from ingest.loaders.base import LoadContext, clean_text
from ingest.loaders.tables import rows_to_text
from ingest.loaders.text import decode_text
from ingest.types import Page

_SKIP = {"script", "style", "noscript", "template", "svg", "iframe", "object", "embed", "head", "button", "select"}
_BLOCK = {
    "address", "article", "aside", "blockquote", "body", "dd", "details", "dialog", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "html", "li",
    "main", "nav", "ol", "p", "pre", "section", "summary", "ul", "caption", "center", "title", "option", "table",
    "tbody", "thead", "tfoot", "tr", "td", "th",
}  # fmt: skip
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)
LAYOUT_CELL_CHARS = 400  # a cell holding more prose than this means the table lays out a page, not data
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")


def decode_html(raw: bytes, ctx: LoadContext | None = None) -> str:
    if not raw.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        match = _META_CHARSET.search(raw[:4096])
        if match:
            encoding = match.group(1).decode("ascii").lower()
            encoding = {"gb2312": "gb18030", "gbk": "gb18030", "big5": "big5hkscs"}.get(encoding, encoding)
            try:
                return clean_text(raw.decode(encoding, errors="replace"))
            except LookupError:
                pass
    return decode_text(raw, ctx, name="html")


class _Writer:
    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.line: list[str] = []

    def text(self, text: str | None, pre: bool = False) -> None:
        if text:
            self.line.append(text if pre else _SPACES.sub(" ", text.replace("\n", " ")))

    def newline(self) -> None:
        self.line.append("\n")

    def flush(self) -> None:
        text = "".join(self.line)
        self.line = []
        lines = [_SPACES.sub(" ", ln).strip() for ln in text.split("\n")]
        text = "\n".join(ln for ln in lines if ln)
        if text:
            self.blocks.append(text)

    def add_block(self, text: str) -> None:
        self.flush()
        if text.strip():
            self.blocks.append(text)


def _cell_text(cell) -> str:
    out = _Writer()
    out.text(cell.text)
    _walk(cell, out)
    out.flush()
    return " ".join(" ".join(out.blocks).split())


def _table_rows(table) -> list[list[str]] | None:
    """Cells per row, or None for a layout table (one column, or prose in its cells) that is read as text."""
    rows = []
    for tr in table.xpath("./tr|./thead/tr|./tbody/tr|./tfoot/tr"):
        rows.append([_cell_text(td) for td in tr if isinstance(td.tag, str) and td.tag.lower() in ("td", "th")])
    width = max((len(r) for r in rows), default=0)
    if width <= 1 or any(len(cell) > LAYOUT_CELL_CHARS for row in rows for cell in row):
        return None
    return rows


def _walk(element, out: _Writer, pre: bool = False) -> None:
    for child in element:
        tag = child.tag.lower() if isinstance(child.tag, str) else None
        if tag is None:  # comment or processing instruction
            out.text(child.tail, pre)
            continue
        if (
            tag in _SKIP
            or child.get("hidden") is not None
            or "display:none" in (child.get("style") or "").replace(" ", "")
        ):
            pass
        elif tag == "table" and (rows := _table_rows(child)) is not None:
            out.add_block(rows_to_text(rows))
        elif tag == "br":
            out.newline()
        elif tag in _BLOCK:
            out.flush()
            if tag in _HEADINGS:  # kept as a Markdown heading, so the splitter knows the section
                out.text("#" * _HEADINGS[tag] + " ")
            inner_pre = pre or tag == "pre"
            out.text(child.text, inner_pre)
            _walk(child, out, inner_pre)
            out.flush()
        else:
            out.text(child.text, pre)
            _walk(child, out, pre)
        out.text(child.tail, pre)


def html_to_text(html: str | bytes, ctx: LoadContext | None = None) -> str:
    """Readable text of an HTML document or fragment."""
    import lxml.html
    from lxml import etree

    if isinstance(html, bytes):
        html = decode_html(html, ctx)
    html = _XML_DECL.sub("", html, count=1)
    if not html.strip():
        return ""
    try:
        root = lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError):
        return ""
    out = _Writer()
    title = root.find(".//title")
    if title is not None and title.text and title.text.strip():
        out.add_block(title.text.strip())
    body = root.find("body")
    _walk(body if body is not None else root, out)
    out.flush()
    return "\n\n".join(out.blocks)


class HtmlLoader:
    suffixes = (".html", ".htm", ".xhtml", ".shtml")

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        return [Page(html_to_text(path.read_bytes(), ctx))]


_ANSICPG = re.compile(rb"\\ansicpg(\d+)")


class RtfLoader:
    """RTF through striprtf, decoding ``\\'hh`` bytes with the file's declared code page."""

    suffixes = (".rtf",)
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        from striprtf.striprtf import rtf_to_text

        raw = path.read_bytes()
        if not raw.lstrip().startswith(b"{\\rtf"):
            raise ctx.error("not an RTF file (it does not start with {\\rtf)", "check the file's extension")
        match = _ANSICPG.search(raw[:4096])
        encoding = f"cp{int(match.group(1))}" if match else "cp1252"
        try:
            "".encode(encoding)
        except LookupError:
            encoding = "cp1252"
        text = rtf_to_text(raw.decode("latin-1"), encoding=encoding, errors="replace")
        return [Page(clean_text(text))]
