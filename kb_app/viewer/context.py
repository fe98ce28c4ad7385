"""What the citation viewer shows around a passage: the text just before and after it in its file, and the sentence
in it that the answer relies on. Pure functions over stored chunks and strings; the Assistant fetches them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.vector_store import StoredChunk
from kb_app.chat.citations import ngrams, split_sentences
from kb_app.language import Language

_MARKERS = re.compile(r"\[(\d{1,2})\]")
# A sentence of a passage: up to its closing mark (a full stop only before a space: 3.5 is a number) or a blank
# line. A single line break does not end one: PDF text breaks lines mid-sentence.
_PASSAGE_SENTENCE = re.compile(r"\S.*?(?:[。！？!?；;]|\.(?=\s|$)|(?=\n\s*\n)|$)", re.S)


@dataclass(frozen=True)
class PassageContext:
    """A cited chunk with the text around it in its file (``before``/``after`` empty at the file's edges)."""

    chunk: StoredChunk
    before: str
    after: str
    page_image: bool  # the kept copy is a PDF and the chunk names its page: the viewer can render it


def surrounding(chunk: StoredChunk, previous: StoredChunk | None, following: StoredChunk | None) -> tuple[str, str]:
    """The text of the chunks either side of ``chunk``, without the part they share with it: chunks overlap by
    ``splitter.chunk_overlap`` characters, and repeating that would look like the document repeats itself."""
    before = previous.text if previous is not None else ""
    after = following.text if following is not None else ""
    if previous is not None and previous.page == chunk.page and previous.start < chunk.start < previous.end:
        before = previous.text[: chunk.start - previous.start]
    if following is not None and following.page == chunk.page and following.start < chunk.end < following.end:
        after = following.text[chunk.end - following.start :]
    return before.rstrip(), after.lstrip()


def neighbours(chunk_ids: list[str], chunk_id: str) -> tuple[str | None, str | None]:
    """The ids of the chunks stored just before and after ``chunk_id`` in its file (the manifest keeps them in
    file order)."""
    if chunk_id not in chunk_ids:
        return None, None
    at = chunk_ids.index(chunk_id)
    return (chunk_ids[at - 1] if at > 0 else None), (chunk_ids[at + 1] if at + 1 < len(chunk_ids) else None)


def claims(answer: str, n: int) -> list[str]:
    """The answer's sentences that carry the marker ``[n]``: what citation ``n`` is said to support."""
    return [s for s in split_sentences(answer) if str(n) in _MARKERS.findall(s)]


def supporting_span(passage: str, said: list[str], language: Language) -> tuple[int, int] | None:
    """Where in ``passage`` the sentence lies that shares most with what the answer ``said`` (character n-grams
    or words, as the citation alignment counts them); None when none shares anything."""
    wanted = set().union(*(ngrams(_MARKERS.sub("", s), language) for s in said)) if said else set()
    best, best_score = None, 0
    for sentence in _PASSAGE_SENTENCE.finditer(passage):
        score = len(wanted & ngrams(sentence.group(), language))
        if score > best_score:
            best, best_score = sentence.span(), score
    return best
