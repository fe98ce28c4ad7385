"""Tables as text a reader (and a retriever) can follow: one line per row, each value named by its column.

``Name: Alice | Dept: Finance`` keeps a row meaningful when a chunk boundary separates it from its header row.
Every column is kept, however wide the table: a row costs only the cells it fills, and the file's text cap
(``ingest.max_text_chars``) bounds the whole.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Sequence

_SPACE = re.compile(r"\s+")


def cell_text(value: object) -> str:
    """A cell as text: whole floats without '.0', dates without midnight, inner line breaks as spaces."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    elif isinstance(value, _dt.datetime) and value.time() == _dt.time():
        value = value.date()
    return _SPACE.sub(" ", str(value)).strip()


def _looks_like_header(row: Sequence[str], width: int) -> bool:
    filled = [c for c in row if c]
    if len(filled) < 2 or len(filled) < 0.8 * width or len(set(filled)) != len(filled):
        return False
    return all(not _is_number(c) and len(c) <= 60 and not c.endswith((":", "：")) for c in filled)


def _header_index(table: list[list[str]], width: int) -> int | None:
    """The header row: the first of the first rows that looks like one (title rows may sit above it)."""
    for i, row in enumerate(table[:4]):
        if i + 1 < len(table) and _looks_like_header(row, width):
            return i
    return None


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def rows_to_text(rows: Iterable[Sequence[object]], header: bool | None = None) -> str:
    """Rows of cells as lines; with a header row (detected when ``header`` is None) as ``column: value`` pairs."""
    table = [_without_trailing_blanks([cell_text(c) for c in row]) for row in rows]
    table = [row for row in table if row]
    if not table:
        return ""
    width = max(len(row) for row in table)
    at = _header_index(table, width)
    if header is not None:
        at = 0 if header and len(table) > 1 else None
    if at is None:
        return "\n".join(" | ".join(c for c in row if c) for row in table)
    names = table[at]
    lines = [" | ".join(c for c in row if c) for row in table[: at + 1]]
    for row in table[at + 1 :]:
        pairs = [
            f"{names[i]}: {value}" if i < len(names) and names[i] else value for i, value in enumerate(row) if value
        ]
        lines.append(" | ".join(pairs))
    return "\n".join(lines)


def _without_trailing_blanks(row: list[str]) -> list[str]:
    """A row up to its last filled cell (none left when all are empty): sheets pad rows with empty cells."""
    end = len(row)
    while end and not row[end - 1]:
        end -= 1
    return row[:end]
