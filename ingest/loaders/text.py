"""Text formats: plain text and markup read as text, CSV/TSV, JSON, XML; all through one encoding detector.

Encodings: a BOM (UTF-8, UTF-16, UTF-32) decides; else strict UTF-8; else UTF-16 without BOM when every other byte
is NUL; else charset-normalizer (GBK/GB18030, Big5, cp1252, ...). GBK and GB2312 are read as GB18030, their superset.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from ingest.errors import DocumentReadError
from ingest.loaders.base import LoadContext, clean_text
from ingest.loaders.tables import rows_to_text
from ingest.types import Page

_BOMS = (
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "cp936": "gb18030", "big5": "big5hkscs", "ascii": "utf-8"}
DETECT_BYTES = 256 * 1024
_TIE_ORDER = ("utf_8", "gb18030", "big5hkscs", "big5", "cp1252")


def detect_encoding(raw: bytes) -> str | None:
    """The encoding of ``raw``, or None when it does not look like text at all."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return encoding
    sample = raw[:4096]
    if len(sample) >= 4:  # UTF-16 without a BOM, mostly ASCII: every other byte is NUL
        even, odd = sample[0::2], sample[1::2]
        if odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.05 * len(even):
            return "utf-16-le"
        if even.count(0) > 0.4 * len(even) and odd.count(0) < 0.05 * len(odd):
            return "utf-16-be"
    if b"\x00" not in sample:
        try:
            raw.decode("utf-8")
            return "utf-8"
        except UnicodeDecodeError as exc:
            if exc.start >= len(raw) - 3 and len(raw) > DETECT_BYTES:  # a character cut by a sample boundary
                return "utf-8"
    from charset_normalizer import from_bytes

    matches = from_bytes(raw[:DETECT_BYTES])
    best = matches.best()
    if best is None:
        return None
    if b"\x00" in sample and not best.encoding.startswith(("utf_16", "utf_32")):
        return None  # NUL bytes in anything but UTF-16/32 mean binary data
    # Short texts fit several code pages equally well; break ties towards Chinese, then Western European.
    tied = {m.encoding for m in matches if m.chaos <= best.chaos + 0.005}
    encoding = next((e for e in _TIE_ORDER if e in tied), best.encoding)
    return _SUPERSETS.get(encoding.lower().replace("_", ""), encoding)


def decode_text(raw: bytes, ctx: LoadContext | None = None, name: str = "") -> str:
    """Bytes to text in the detected encoding; raises ``DocumentReadError`` for binary data."""
    encoding = detect_encoding(raw)
    if encoding is None:
        label = ctx.name if ctx else name
        raise DocumentReadError(
            f"{label}: looks like binary data, not text",
            "check the file's extension; save text as UTF-8 and retry",
        )
    return clean_text(raw.decode(encoding, errors="replace"))


def looks_like_text(head: bytes) -> bool:
    return detect_encoding(head[:8192]) is not None


class TextLoader:
    """Plain text and lightweight markup (Markdown, reStructuredText, Org, YAML...) read as they are."""

    suffixes = (
        ".txt",
        ".text",
        ".md",
        ".markdown",
        ".rst",
        ".org",
        ".log",
        ".yaml",
        ".yml",
        ".ini",
        ".cfg",
        ".conf",
        ".toml",
        ".tex",
        ".adoc",
    )

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        return [Page(decode_text(path.read_bytes(), ctx))]


class CsvLoader:
    """CSV and TSV in any encoding and delimiter (, ; tab |); each row a line of ``column: value`` pairs."""

    suffixes = (".csv", ".tsv", ".tab")

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        text = decode_text(path.read_bytes(), ctx)
        if path.suffix.lower() in (".tsv", ".tab"):
            delimiter = "\t"
        else:
            try:
                delimiter = csv.Sniffer().sniff(text[:20000], delimiters=",;\t|").delimiter
            except csv.Error:
                delimiter = ","
        csv.field_size_limit(16 * 1024 * 1024)
        try:
            rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
        except csv.Error as exc:
            ctx.note(f"{ctx.name}: not well-formed CSV ({exc}); read as text")
            return [Page(text)]
        return [Page(rows_to_text(rows))]


def _json_lines(value: object, prefix: str, out: list[str]) -> None:
    if isinstance(value, dict):
        scalars = {k: v for k, v in value.items() if not isinstance(v, dict | list)}
        if scalars:
            line = " | ".join(f"{k}: {_scalar(v)}" for k, v in scalars.items())
            out.append(f"{prefix}: {line}" if prefix else line)
        for key, child in value.items():
            if isinstance(child, dict | list):
                _json_lines(child, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            if value:
                out.append(
                    f"{prefix}: {', '.join(_scalar(v) for v in value)}" if prefix else ", ".join(map(_scalar, value))
                )
            return
        for i, child in enumerate(value):
            _json_lines(child, f"{prefix}[{i}]", out)
    else:
        out.append(f"{prefix}: {_scalar(value)}" if prefix else _scalar(value))


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace("\n", " ")


def json_to_text(value: object) -> str:
    out: list[str] = []
    _json_lines(value, "", out)
    return "\n".join(out)


class JsonLoader:
    """JSON and JSON Lines as ``path: value`` lines; text that does not parse is kept as text (with a note)."""

    suffixes = (".json", ".ndjson", ".jsonl", ".geojson")

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        text = decode_text(path.read_bytes(), ctx)
        if path.suffix.lower() in (".ndjson", ".jsonl"):
            lines = []
            for line in text.splitlines():
                if not line.strip():
                    continue
                try:
                    lines.append(json_to_text(json.loads(line)))
                except json.JSONDecodeError:
                    lines.append(line)
            return [Page("\n".join(lines))]
        try:
            return [Page(json_to_text(json.loads(text)))]
        except (json.JSONDecodeError, RecursionError) as exc:
            ctx.note(f"{ctx.name}: not valid JSON ({exc}); read as text")
            return [Page(text)]


_TAGS = re.compile(r"<[^>]*>")


class XmlLoader:
    """XML text content; short leaf elements as ``tag: text``. Entities and DTDs are never resolved (no XXE)."""

    suffixes = (".xml",)

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        from lxml import etree

        raw = path.read_bytes()
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_comments=True,
            recover=False,
        )
        try:
            root = etree.fromstring(raw, parser=parser)
        except (etree.XMLSyntaxError, ValueError) as exc:
            ctx.note(f"{ctx.name}: not well-formed XML ({exc}); read as text")
            return [Page(_TAGS.sub(" ", decode_text(raw, ctx)))]
        lines: list[str] = []
        for element in root.iter():
            if not isinstance(element.tag, str):
                continue
            text = (element.text or "").strip()
            if text:
                tag = etree.QName(element).localname
                lines.append(f"{tag}: {text}" if len(element) == 0 and len(text) <= 200 else text)
            for child in element:
                if child.tail and child.tail.strip():
                    lines.append(child.tail.strip())
        return [Page(clean_text("\n".join(lines)))]
