"""What a file really is, from its first bytes: catches wrong extensions (a .doc that is a .docx, a .txt that is a
PDF) and encrypted Office files. Returns a canonical suffix, or None for text and unknown content."""

from __future__ import annotations

import zipfile
from pathlib import Path

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
ENCRYPTED_OFFICE = "encrypted-office"

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"{\\rtf", ".rtf"),
)


def sniff(path: Path, head: bytes) -> str | None:
    """The canonical suffix of the content, ``ENCRYPTED_OFFICE`` for a password-protected Office file, or None."""
    if b"%PDF-" in head[:1024]:
        return ".pdf"
    for magic, suffix in _MAGIC:
        if head.startswith(magic):
            return suffix
    if head.startswith(b"BM") and len(head) > 14 and head[6:10] == b"\x00\x00\x00\x00":
        return ".bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypheif"):
        return ".heic"
    if head.startswith(OLE_MAGIC):
        return _sniff_ole(path)
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path)
    return None


def _sniff_ole(path: Path) -> str | None:
    import olefile

    try:
        with olefile.OleFileIO(str(path)) as ole:
            streams = {"/".join(entry) for entry in ole.listdir(streams=True, storages=True)}
    except Exception:  # a damaged compound file: let the extension's loader report it
        return None
    if "EncryptedPackage" in streams:
        return ENCRYPTED_OFFICE
    if "WordDocument" in streams:
        return ".doc"
    if "Workbook" in streams or "Book" in streams:
        return ".xls"
    if "PowerPoint Document" in streams:
        return ".ppt"
    if any(name.startswith("__substg1.0_") for name in streams):
        return ".msg"
    return None


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            mimetype = archive.read("mimetype")[:100] if "mimetype" in names else b""
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return ".zip"
    if "word/document.xml" in names:
        return ".docx"
    if "ppt/presentation.xml" in names:
        return ".pptx"
    if "xl/workbook.xml" in names:
        return ".xlsx"
    if mimetype.startswith(b"application/epub+zip"):
        return ".epub"
    for kind, suffix in ((b"text", ".odt"), (b"spreadsheet", ".ods"), (b"presentation", ".odp")):
        if mimetype.startswith(b"application/vnd.oasis.opendocument." + kind):
            return suffix
    return ".zip"
