"""Figures as a person reads them, for the CLI and the page alike."""

from __future__ import annotations


def human_size(n: int | None) -> str:
    """``n`` bytes as "405 B", "1.2 MB"; "-" when unknown."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
