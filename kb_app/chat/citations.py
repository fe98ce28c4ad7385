"""Citations a person can check: each answer sentence is aligned to the passages that support it.

The alignment is deterministic (shared character n-grams or words), so a citation never
depends on the model writing [n] correctly: markers pointing at passages that support nothing are dropped,
and each sentence gets a [n] for the passage that supports it, which the model need not write at all.
"""

from __future__ import annotations

import itertools
import re

from kb_app.language import Language
from kb_app.retrieval.base import Hit

_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])|(?<=\.)\s+|\n+")
_MARKER = re.compile(r"\[(\d{1,2})\]")
_TERMINAL = ("。", "！", "？", "!", "?", "；", ";", ".")
_SPACES_BEFORE_PUNCT = re.compile(r"\s+([。！？!?；;.,，])")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+")


def ngrams(text: str, language: Language) -> set[str]:
    """Character 2–3-grams (Chinese) or words and word pairs (other languages), case- and space-insensitive."""
    if language == "zh":
        t = _SPACE.sub("", text).lower()
        return {t[i : i + n] for n in (2, 3) for i in range(len(t) - n + 1)}
    words = _WORD.findall(text.lower())
    return set(words) | {f"{a} {b}" for a, b in itertools.pairwise(words)}


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _supporting(sentence: str, passages: list[set[str]], language: Language, min_support: float) -> list[int]:
    """The passages a sentence marks with [n] if they support it, else its best-supporting passage, if any.

    Support is the share of the sentence's n-grams found in a passage (0..1).
    """
    wanted = ngrams(_MARKER.sub("", sentence), language)
    scores = {n: len(wanted & grams) / len(wanted) if wanted else 0.0 for n, grams in enumerate(passages, 1)}
    if not scores:
        return []
    marked = [int(m) for m in _MARKER.findall(sentence) if int(m) in scores]
    chosen = [n for n in marked if scores[n] >= min_support]
    if not chosen:
        best = max(scores, key=scores.__getitem__)
        chosen = [best] if scores[best] >= min_support else []
    return list(dict.fromkeys(chosen))


def _marked(sentence: str, numbers: list[int]) -> str:
    """The sentence without the model's markers, with checked ones before its closing punctuation."""
    clean = strip_markers(sentence)
    if not numbers:
        return clean
    markers = "".join(f"[{n}]" for n in numbers)
    body = clean.rstrip("".join(_TERMINAL))
    return f"{body} {markers}{clean[len(body) :]}" if body else f"{clean} {markers}"


def annotate(answer: str, hits: list[Hit], language: Language, min_support: float) -> tuple[str, list[int]]:
    """The answer with checked [n] markers after each sentence, and the passages cited in order of first use.

    An answer nothing supports cites the top passage it was given, since that is what it was built from.
    """
    cited: list[int] = []
    parts: list[str] = []
    cursor = 0
    pending: list[int] = []  # support of a line that broke mid-sentence, marked where the sentence ends
    sentences = split_sentences(answer)
    passages = [ngrams(h.chunk.text, language) for h in hits]
    for i, sentence in enumerate(sentences):
        at = answer.find(sentence, cursor)
        if at < 0:
            continue
        numbers = _supporting(sentence, passages, language, min_support)
        cited.extend(n for n in numbers if n not in cited)
        pending.extend(n for n in numbers if n not in pending)
        ends = sentence.rstrip().endswith(_TERMINAL) or i == len(sentences) - 1
        parts += [answer[cursor:at], _marked(sentence, pending) if ends else strip_markers(sentence)]
        pending = [] if ends else pending
        cursor = at + len(sentence)
    parts.append(answer[cursor:])
    return "".join(parts).strip(), cited or ([1] if hits else [])


def strip_markers(text: str) -> str:
    """The answer as prose, without its [n] markers (what answer metrics compare with a gold answer)."""
    return _SPACES_BEFORE_PUNCT.sub(r"\1", _MARKER.sub("", text)).strip()
