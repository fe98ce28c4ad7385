"""OpenDocument (odt, ods, odp) from its ``content.xml``, and EPUB chapters in spine order; both are zip packages
read with the standard library and lxml (entities never resolved)."""

from __future__ import annotations

import posixpath
import zipfile
from pathlib import Path
from urllib.parse import unquote

from ingest.loaders.base import LoadContext, clean_text
from ingest.loaders.markup import html_to_text
from ingest.loaders.tables import rows_to_text
from ingest.types import Page

TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
TABLE = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"
DRAW = "{urn:oasis:names:tc:opendocument:xmlns:drawing:1.0}"
MAX_REPEAT = 50  # table:number-columns-repeated="16384" pads sheets with empty cells
MAX_XML_BYTES = 512 * 1024 * 1024


def _safe_parser():
    from lxml import etree

    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _read_member(archive: zipfile.ZipFile, name: str, ctx: LoadContext) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > MAX_XML_BYTES:
        raise ctx.error(f"{name} would unpack to {info.file_size // 2**20} MB", "the file looks like a zip bomb")
    return archive.read(name)


def _inline_text(element) -> str:
    parts: list[str] = []

    def walk(el) -> None:
        if el.text:
            parts.append(el.text)
        for child in el:
            tag = child.tag
            if tag == f"{TEXT}s":
                parts.append(" " * min(int(child.get(f"{TEXT}c", "1") or 1), 100))
            elif tag == f"{TEXT}tab":
                parts.append("\t")
            elif tag == f"{TEXT}line-break":
                parts.append("\n")
            elif tag in (f"{TEXT}note", f"{TEXT}annotation"):
                pass
            else:
                walk(child)
            if child.tail:
                parts.append(child.tail)

    walk(element)
    return "".join(parts).strip()


def _odf_table(table) -> str:
    rows = []
    for row in table.iter(f"{TABLE}table-row"):
        cells: list[str] = []
        for cell in row:
            if cell.tag not in (f"{TABLE}table-cell", f"{TABLE}covered-table-cell"):
                continue
            text = "\n".join(_inline_text(p) for p in cell.iter(f"{TEXT}p", f"{TEXT}h"))
            repeat = min(int(cell.get(f"{TABLE}number-columns-repeated", "1") or 1), MAX_REPEAT)
            cells.extend([text] * repeat)
        repeat_rows = min(int(row.get(f"{TABLE}number-rows-repeated", "1") or 1), MAX_REPEAT)
        rows.extend([cells] * (repeat_rows if any(cells) else 1))
    return rows_to_text(rows)


def _odf_blocks(element, out: list[str]) -> None:
    for child in element:
        tag = child.tag
        if tag in (f"{TEXT}p", f"{TEXT}h"):
            if text := _inline_text(child):
                out.append(text)
            _odf_blocks_in_frames(child, out)
        elif tag == f"{TABLE}table":
            name = child.get(f"{TABLE}name")
            text = _odf_table(child)
            if text:
                out.append(f"Sheet: {name}\n{text}" if element.tag.endswith("spreadsheet") and name else text)
        elif tag == f"{DRAW}page":
            out.append("")  # slide boundary
            _odf_blocks(child, out)
        else:
            _odf_blocks(child, out)


def _odf_blocks_in_frames(paragraph, out: list[str]) -> None:
    for box in paragraph.iter(f"{DRAW}text-box"):
        _odf_blocks(box, out)


class OdfLoader:
    suffixes = (".odt", ".ods", ".odp", ".ott")
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        from lxml import etree

        try:
            with zipfile.ZipFile(path) as archive:
                manifest = (
                    archive.read("META-INF/manifest.xml") if "META-INF/manifest.xml" in archive.namelist() else b""
                )
                if b"encryption-data" in manifest:
                    raise ctx.error("the document is password-protected", "save an unprotected copy and ingest that")
                content = _read_member(archive, "content.xml", ctx)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise ctx.error(f"not a readable OpenDocument file ({exc})", "check that it opens in LibreOffice") from exc
        try:
            root = etree.fromstring(content, parser=_safe_parser())
        except etree.XMLSyntaxError as exc:
            raise ctx.error(f"the document's content.xml is damaged ({exc})", "open and re-save it") from exc
        body = root.find("{urn:oasis:names:tc:opendocument:xmlns:office:1.0}body")
        blocks: list[str] = []
        _odf_blocks(body if body is not None else root, blocks)
        return [Page(clean_text("\n\n".join(b for b in blocks if b)))]


class EpubLoader:
    """EPUB chapters in reading (spine) order, each through the HTML reader."""

    suffixes = (".epub",)
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        from lxml import etree

        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                if "META-INF/encryption.xml" in names:
                    ctx.note(f"{ctx.name}: the EPUB declares encrypted parts (DRM); they may be unreadable")
                container = etree.fromstring(_read_member(archive, "META-INF/container.xml", ctx), _safe_parser())
                rootfile = container.find(".//{*}rootfile")
                opf_name = rootfile.get("full-path") if rootfile is not None else None
                if not opf_name or opf_name not in names:
                    raise ctx.error("the EPUB has no package document", "check that it opens in an e-book reader")
                opf = etree.fromstring(_read_member(archive, opf_name, ctx), _safe_parser())
                base = posixpath.dirname(opf_name)
                items = {
                    item.get("id"): (item.get("href"), item.get("media-type", ""))
                    for item in opf.iterfind(".//{*}manifest/{*}item")
                }
                chapters = []
                for ref in opf.iterfind(".//{*}spine/{*}itemref"):
                    href, media = items.get(ref.get("idref"), (None, ""))
                    if not href or "html" not in media:
                        continue
                    name = posixpath.normpath(posixpath.join(base, unquote(href.split("#")[0])))
                    if name in names:
                        chapters.append(html_to_text(_read_member(archive, name, ctx), ctx))
                        ctx.charge_text(chapters[-1])  # a spine may list one big chapter hundreds of times
        except (zipfile.BadZipFile, KeyError, OSError, etree.XMLSyntaxError) as exc:
            raise ctx.error(f"not a readable EPUB ({exc})", "check that it opens in an e-book reader") from exc
        return [Page(clean_text("\n\n".join(c for c in chapters if c)))]
