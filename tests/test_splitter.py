"""The splitter: chunk sizes, sentence boundaries, offsets that map back to the page, ids."""

from __future__ import annotations

import itertools
from pathlib import Path

from ingest.splitter import RecursiveSplitter, chunk_id
from ingest.types import LoadedDocument, Page
from kb_app.settings import SplitterSettings

ZH = (
    "知识库助手把公司的文件切成段落。每一段都带着来源文件和页码！这样回答时可以引用原文？"
    "分段时优先在句号、感叹号和问号处断开；其次才是逗号。"
) * 12
EN = (
    "The assistant splits company files into passages. Every passage keeps its source file and page! "
    "Can answers quote the original text? They can; sentences end at full stops first, commas second. "
) * 12


def _doc(text: str, page: int | None = None) -> LoadedDocument:
    return LoadedDocument(source="a.txt", path=Path("a.txt"), sha256="0" * 64, size=len(text), pages=[Page(text, page)])


def test_chinese_chunks_respect_size_and_end_on_sentence_punctuation() -> None:
    splitter = RecursiveSplitter(SplitterSettings(chunk_size=120, chunk_overlap=20))
    chunks = splitter.split(_doc(ZH))
    assert len(chunks) > 3
    assert all(len(c.text) <= 120 for c in chunks)
    assert all(c.text[-1] in "。！？；" for c in chunks[:-1]), [c.text[-3:] for c in chunks]


def test_english_chunks_end_on_sentence_boundaries() -> None:
    splitter = RecursiveSplitter(SplitterSettings(chunk_size=200, chunk_overlap=40))
    chunks = splitter.split(_doc(EN))
    assert all(len(c.text) <= 200 for c in chunks)
    assert all(c.text[-1] in ".!?;" for c in chunks[:-1]), [c.text[-10:] for c in chunks]


def test_offsets_point_back_into_the_page_and_page_numbers_are_kept() -> None:
    splitter = RecursiveSplitter(SplitterSettings(chunk_size=100, chunk_overlap=30))
    text = ZH + "\n\n" + EN
    chunks = splitter.split(_doc(text, page=7))
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert c.page == 7
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def test_neighbouring_chunks_overlap() -> None:
    splitter = RecursiveSplitter(SplitterSettings(chunk_size=100, chunk_overlap=40))
    chunks = splitter.split(_doc(ZH))
    overlapping = sum(1 for a, b in itertools.pairwise(chunks) if b.start < a.end)
    assert overlapping >= len(chunks) // 2


def test_chunk_ids_are_stable_and_depend_on_name_and_content() -> None:
    assert chunk_id("a.txt", "1" * 64, 0) == chunk_id("a.txt", "1" * 64, 0)
    assert chunk_id("a.txt", "1" * 64, 0) != chunk_id("b.txt", "1" * 64, 0)
    assert chunk_id("a.txt", "1" * 64, 0) != chunk_id("a.txt", "2" * 64, 0)
    assert chunk_id("a.txt", "1" * 64, 0) != chunk_id("a.txt", "1" * 64, 1)
