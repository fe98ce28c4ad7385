"""Which language a question is in, to pick the prompt and the refusal sentence."""

from __future__ import annotations

import re
from typing import Literal

Language = Literal["zh", "en"]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> Language:
    """Chinese when CJK ideographs make up at least a fifth of the letters (a 2-char word beats a long acronym)."""
    cjk = len(_CJK.findall(text))
    latin_words = len(re.findall(r"[A-Za-z]+", text))
    if cjk == 0:
        return "en"
    return "zh" if cjk >= 0.2 * (cjk + latin_words) or cjk >= 2 else "en"
