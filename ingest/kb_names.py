"""Where a knowledge-base name is made safe: display names in any language, mapped to ids for disk and Chroma.

A name is what a person types ("财务部", "HR 2026"); it never becomes a path. Its id is the name itself when the
name is already a plain ASCII word that Chroma accepts as a collection name, else ``kb-`` and a hash of the name
(a plain id never starts with ``kb-``, so the two kinds cannot collide). Every path kb writes or deletes for a
knowledge base goes through :func:`inside`, which refuses one that would leave its root.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

from ingest.errors import KnowledgeBaseNameError

MAX_NAME_CHARS = 64
_PLAIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,62}[A-Za-z0-9]$")
_NAME_HINT = "use letters, digits, spaces or - _ . (up to 64 characters), in any language, e.g. 财务部 or HR 2026"


def check_name(name: str) -> str:
    """The name, stripped, if kb accepts it as a knowledge-base name; else :class:`KnowledgeBaseNameError`."""
    stripped = (name or "").strip()
    shown = repr(name)[:80]
    if not stripped:
        raise KnowledgeBaseNameError("a knowledge-base name cannot be empty", _NAME_HINT)
    if len(stripped) > MAX_NAME_CHARS:
        raise KnowledgeBaseNameError(f"the knowledge-base name {shown} is over {MAX_NAME_CHARS} characters", _NAME_HINT)
    if "/" in stripped or "\\" in stripped or ".." in stripped:
        raise KnowledgeBaseNameError(
            f"the knowledge-base name {shown} contains a path separator or '..'",
            "a name is a label, not a folder: " + _NAME_HINT,
        )
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for ch in stripped):
        raise KnowledgeBaseNameError(f"the knowledge-base name {shown} contains control characters", _NAME_HINT)
    return stripped


def kb_id(name: str) -> str:
    """The id of a (checked) name: the name when it is a plain word, else ``kb-`` and a hash of it."""
    name = check_name(name)
    if _PLAIN_ID.match(name) and not name.lower().startswith("kb-"):
        return name
    return "kb-" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:20]


def inside(root: Path, *parts: str) -> Path:
    """``root/parts`` resolved, refused unless it stays under ``root`` (symlinks included)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path == base or base not in path.parents:
        raise KnowledgeBaseNameError(
            f"refusing a path outside {base}: {path}", "knowledge bases live under KB_HOME; check the name"
        )
    return path
