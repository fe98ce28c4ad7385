"""Office 97-2003 binary files, read in pure Python: Word .doc and PowerPoint .ppt through olefile, Excel .xls
through xlrd. No LibreOffice needed.

Word: the text is found through the piece table ([MS-DOC] 2.8.35 Clx) in the table stream; field codes are
dropped and their results kept, table cells become ``|``-separated rows. PowerPoint: the text atoms of the
document stream ([MS-PPT] TextCharsAtom/TextBytesAtom), in stream order, master-slide boilerplate left out.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from ingest.loaders.base import LoadContext, clean_text
from ingest.loaders.tables import rows_to_text
from ingest.types import Page

ENCRYPTED_HINT = "save an unprotected copy (File → Info → Protect) and ingest that"


def _ole(path: Path, ctx: LoadContext, kind: str):
    import olefile

    try:
        return olefile.OleFileIO(str(path))
    except (OSError, olefile.olefile.NotOleFileError, ValueError, struct.error) as exc:
        raise ctx.error(
            f"not a readable {kind} file ({exc})", "check that the file is complete and opens in Office"
        ) from exc


# --- Word 97-2003 -------------------------------------------------------------------------------------------------

_FIELD = re.compile(r"\x13[^\x13\x14\x15]*\x14?|\x15")  # field begin + code (+ separator), field end


def _strip_fields(text: str) -> str:
    previous = None
    while previous != text:  # nested fields: innermost first
        previous = text
        text = re.sub(r"\x13[^\x13\x14\x15]*\x14([^\x13\x14\x15]*)\x15", r"\1", text)
        text = re.sub(r"\x13[^\x13\x14\x15]*\x15", "", text)
    return _FIELD.sub("", text)


def word_text(word: bytes, table: bytes | None) -> str:
    """The main text (and footnotes) of a Word 97+ WordDocument stream, given its table stream."""
    n_fib = struct.unpack_from("<H", word, 2)[0]
    if n_fib < 101 or table is None:  # Word 6/95: one cp1252 run between fcMin and fcMac
        fc_min, fc_mac = struct.unpack_from("<II", word, 0x18)
        return word[fc_min:fc_mac].decode("cp1252", "replace")
    ccp_text, ccp_ftn = struct.unpack_from("<ii", word, 0x4C)
    fc_clx, lcb_clx = struct.unpack_from("<II", word, 0x01A2)
    clx = table[fc_clx : fc_clx + lcb_clx]
    i = 0
    while i < len(clx) and clx[i] == 0x01:  # Prc: property modifiers, skipped
        i += 3 + struct.unpack_from("<H", clx, i + 1)[0]
    if i >= len(clx) or clx[i] != 0x02:
        raise ValueError("no piece table")
    lcb = struct.unpack_from("<I", clx, i + 1)[0]
    plc = clx[i + 5 : i + 5 + lcb]
    n = (lcb - 4) // 12
    cps = struct.unpack_from(f"<{n + 1}i", plc, 0)
    pieces = []
    for k in range(n):
        fc = struct.unpack_from("<I", plc, 4 * (n + 1) + 8 * k + 2)[0]
        length = cps[k + 1] - cps[k]
        if fc & 0x40000000:
            start = (fc & 0x3FFFFFFF) // 2
            pieces.append(word[start : start + length].decode("cp1252", "replace"))
        else:
            pieces.append(word[fc : fc + 2 * length].decode("utf-16-le", "replace"))
    text = "".join(pieces)
    return text[: ccp_text + max(ccp_ftn, 0)]


def tidy_word(text: str) -> str:
    text = _strip_fields(text)
    text = text.replace("\x07\r\x07", "\n").replace("\x07\x07", "\n").replace("\x07", " | ")
    text = text.replace("\x0b", "\n").replace("\x1e", "-").replace("\x1f", "").replace("\x01", "").replace("\x08", "")
    lines = [re.sub(r"\s*\|\s*", " | ", re.sub(r"(\s*\|\s*)+$", "", ln)).strip() for ln in clean_text(text).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class DocLoader:
    suffixes = (".doc", ".dot")
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        with _ole(path, ctx, "Word") as ole:
            if not ole.exists("WordDocument"):
                raise ctx.error("not a Word document (no WordDocument stream)", "check the file's extension")
            word = ole.openstream("WordDocument").read()
            flags = struct.unpack_from("<H", word, 0x0A)[0]
            if flags & 0x0100:
                raise ctx.error("the Word document is password-protected", ENCRYPTED_HINT)
            name = "1Table" if flags & 0x0200 else "0Table"
            table = ole.openstream(name).read() if ole.exists(name) else None
        try:
            return [Page(tidy_word(word_text(word, table)))]
        except (struct.error, ValueError, IndexError) as exc:
            raise ctx.error(f"the Word file is damaged ({exc})", "open and re-save it in Word") from exc


# --- PowerPoint 97-2003 -------------------------------------------------------------------------------------------

_CONTAINER = 0xF
_TEXT_CHARS, _TEXT_BYTES, _CSTRING = 0x0FA0, 0x0FA8, 0x0FBA
_MAIN_MASTER, _SLIDE, _NOTES = 0x03F8, 0x03EE, 0x03F0
_MASTER_BOILERPLATE = re.compile(
    r"^(Click to edit|单击此处编辑|按一下以編輯|Second level|Third level|Fourth level|Fifth level)"
)


def ppt_texts(stream: bytes) -> list[tuple[int, str]]:
    """(slide index, text) pairs; index counts SlideContainers in stream order (0: outside any slide)."""
    out: list[tuple[int, str]] = []
    slide = 0

    def walk(start: int, end: int, in_master: bool, depth: int) -> None:
        nonlocal slide
        i = start
        while i + 8 <= end and depth < 64:
            ver_inst, rec_type, rec_len = struct.unpack_from("<HHI", stream, i)
            body, i = i + 8, i + 8 + rec_len
            if (ver_inst & 0xF) == _CONTAINER:
                if rec_type == _SLIDE:
                    slide += 1
                walk(body, min(i, end), in_master or rec_type == _MAIN_MASTER, depth + 1)
            elif rec_type in (_TEXT_CHARS, _TEXT_BYTES) and not in_master:
                raw = stream[body : min(i, end)]
                text = raw.decode("utf-16-le" if rec_type == _TEXT_CHARS else "cp1252", "replace")
                if text.strip() and not _MASTER_BOILERPLATE.match(text):
                    out.append((slide, text.replace("\r", "\n").replace("\x0b", "\n")))

    walk(0, len(stream), False, 0)
    return out


class PptLoader:
    suffixes = (".ppt", ".pps", ".pot")
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        with _ole(path, ctx, "PowerPoint") as ole:
            if ole.exists("EncryptedSummary") or not ole.exists("PowerPoint Document"):
                if ole.exists("EncryptedSummary"):
                    raise ctx.error("the presentation is password-protected", ENCRYPTED_HINT)
                raise ctx.error("not a PowerPoint file (no PowerPoint Document stream)", "check the file's extension")
            stream = ole.openstream("PowerPoint Document").read()
        try:
            texts = ppt_texts(stream)
        except struct.error as exc:
            raise ctx.error(f"the PowerPoint file is damaged ({exc})", "open and re-save it in PowerPoint") from exc
        seen: set[str] = set()
        lines = []
        for _, text in texts:
            if text not in seen:  # outline text and slide text boxes can repeat each other
                seen.add(text)
                lines.append(text.strip())
        return [Page(clean_text("\n\n".join(lines)))]


# --- Excel 97-2003 ------------------------------------------------------------------------------------------------


class XlsLoader:
    suffixes = (".xls", ".xlt")
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        import xlrd

        try:
            book = xlrd.open_workbook(str(path), on_demand=True)
        except xlrd.biffh.XLRDError as exc:
            if "encrypt" in str(exc).lower():
                raise ctx.error("the workbook is password-protected", ENCRYPTED_HINT) from exc
            raise ctx.error(f"not a readable Excel file ({exc})", "check that it opens in Excel") from exc
        except (OSError, ValueError, struct.error, IndexError, AssertionError) as exc:
            raise ctx.error(f"not a readable Excel file ({exc})", "check that it opens in Excel") from exc
        blocks = []
        try:
            for index in range(book.nsheets):
                sheet = book.sheet_by_index(index)
                rows = [[_xls_value(cell, book.datemode) for cell in sheet.row(r)] for r in range(sheet.nrows)]
                text = rows_to_text(rows)
                if text:
                    blocks.append(f"Sheet: {sheet.name}\n{text}" if book.nsheets > 1 else text)
                book.unload_sheet(index)
        finally:
            book.release_resources()
        return [Page(clean_text("\n\n".join(blocks)))]


def _xls_value(cell, datemode: int) -> object:
    import xlrd

    if cell.ctype == xlrd.XL_CELL_DATE:
        try:
            return xlrd.xldate_as_datetime(cell.value, datemode)
        except (ValueError, OverflowError, xlrd.xldate.XLDateError):
            return cell.value
    if cell.ctype == xlrd.XL_CELL_BOOLEAN:
        return bool(cell.value)
    if cell.ctype in (xlrd.XL_CELL_ERROR, xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK):
        return None
    return cell.value
