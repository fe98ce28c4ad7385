"""Where passages are cut down before they reach the model: fewer prompt tokens, an earlier first token.

On two CPU cores the model reads a prompt at a few hundred tokens a second, so the passages are most of the time
to the first token. ``SentenceTrimmer`` keeps, in each passage after the first ``keep_whole``, the run of
consecutive sentences that shares the most with the question, up to a length; the top passages stay whole, since
the answer is in the first one most of the time. ``WholePassages`` gives them unchanged. Only the prompt sees the
cut text: citations show the stored passage.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from kb_app.chat.citations import ngrams, split_sentences
from kb_app.language import Language
from kb_app.retrieval.base import Hit
from kb_app.settings import RetrievalSettings

ELLIPSIS = "…"


class PassageTrimmer(Protocol):
    def trim(self, question: str, hits: list[Hit], language: Language) -> list[Hit]:
        """The hits in the same order, their chunk text possibly shortened."""
        ...


class WholePassages:
    def trim(self, question: str, hits: list[Hit], language: Language) -> list[Hit]:
        return hits


class SentenceTrimmer:
    def __init__(self, max_chars: dict[str, int], keep_whole: int) -> None:
        self._max_chars = max_chars
        self._keep_whole = keep_whole

    def trim(self, question: str, hits: list[Hit], language: Language) -> list[Hit]:
        limit = self._max_chars.get(language, 0)
        if limit <= 0:
            return hits
        wanted = ngrams(question, language)
        kept = hits[: self._keep_whole]
        for hit in hits[self._keep_whole :]:
            text = best_span(hit.chunk.text, wanted, language, limit)
            kept.append(hit if text == hit.chunk.text else replace(hit, chunk=replace(hit.chunk, text=text)))
        return kept


def best_span(text: str, wanted: set[str], language: Language, limit: int) -> str:
    """The run of consecutive sentences of ``text`` within ``limit`` characters that holds the most of the
    question's n-grams (the earliest such run on a tie), marked with an ellipsis where text was cut."""
    if len(text) <= limit:
        return text
    sentences = split_sentences(text)
    grams = [ngrams(s, language) & wanted for s in sentences]
    best, best_score = (0, 0), -1
    for start in range(len(sentences)):
        end, length, found = start, 0, set()
        while end < len(sentences) and length + len(sentences[end]) <= limit:
            length += len(sentences[end]) + 1
            found |= grams[end]
            end += 1
        if end > start and len(found) > best_score:
            best, best_score = (start, end), len(found)
    start, end = best
    if end == start:  # one sentence longer than the limit: its head
        return text[:limit] + ELLIPSIS
    joiner = "" if language == "zh" else " "
    span = joiner.join(sentences[start:end])
    return (ELLIPSIS if start > 0 else "") + span + (ELLIPSIS if end < len(sentences) else "")


def build_trimmer(settings: RetrievalSettings) -> PassageTrimmer:
    if not any(v > 0 for v in settings.passage_chars.values()):
        return WholePassages()
    return SentenceTrimmer(settings.passage_chars, settings.passage_keep_whole)
