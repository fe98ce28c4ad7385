"""The splitter: chunk sizes, sentence boundaries, offsets that map back to the page, ids."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from ingest import splitter as splitter_module
from ingest.splitter import RecursiveSplitter, chunk_id, section_starts
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


def test_a_first_line_that_stands_alone_is_the_title_of_every_chunk() -> None:
    splitter = RecursiveSplitter(SplitterSettings(chunk_size=200, chunk_overlap=40))
    chunks = splitter.split(_doc("Travel policy 2024\n\n" + EN))
    assert len(chunks) > 3
    assert {c.heading for c in chunks} == {"Travel policy 2024"}
    assert all("Travel policy 2024" not in c.text for c in chunks[1:])
    assert chunks[1].indexed_text == f"Travel policy 2024\n{chunks[1].text}"


def test_without_a_title_line_the_file_name_is_the_title() -> None:
    document = LoadedDocument(source="sub/travel_policy.txt", path=Path("x"), sha256="0" * 64, size=1, pages=[Page(EN)])
    chunks = RecursiveSplitter(SplitterSettings(chunk_size=200, chunk_overlap=40)).split(document)
    assert {c.heading for c in chunks} == {"travel policy"}


def test_markdown_headings_nest_into_a_heading_path() -> None:
    text = f"# 员工手册\n\n{ZH[:150]}\n\n## 休假\n\n{ZH[:150]}\n\n### 病假\n\n{ZH[:150]}\n\n## 报销\n\n{ZH[:150]}"
    chunks = RecursiveSplitter(SplitterSettings(chunk_size=170, chunk_overlap=0)).split(_doc(text))
    by_start = {c.text.splitlines()[0]: c.heading for c in chunks if c.text.startswith("#")}
    assert by_start == {
        "# 员工手册": "员工手册",
        "## 休假": "员工手册 › 休假",
        "### 病假": "员工手册 › 休假 › 病假",
        "## 报销": "员工手册 › 报销",
    }
    assert chunks[-1].heading == "员工手册 › 报销"


def _rescanning_section_starts(text: str, title: str = "") -> list[int]:
    """The definition ``section_starts`` had before it was made linear: rescan the section so far at each heading."""
    starts = [0]
    for match in splitter_module._ATX_HEADING.finditer(text):
        body = text[starts[-1] : match.start()].splitlines()
        if match.start() > 0 and any(splitter_module._is_body(line, title) for line in body):
            starts.append(match.start())
    return starts


def test_sections_start_where_they_did_before_on_mixed_documents() -> None:
    """Headings, titles, blank lines, body text and odd line ends in random order: the same section starts."""
    pieces = [
        "# Guide\n",
        "## Leave\n",
        "###### deep\n",
        "#no-space\n",
        "Guide\n",
        "\n",
        "  \n",
        "body text\n",
        "正文。\n",
        "# 标题\r\n",
        "line\r\n",
        "x\u2028",
        "## trailing ##\n",
        "\t# indented\n",
    ]
    rng = random.Random(7)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        for title in ("", "Guide"):
            assert section_starts(text, title) == _rescanning_section_starts(text, title), (text, title)


def test_a_document_of_only_headings_is_read_line_by_line_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """50,000 headings and no text took minutes when each heading rescanned its section (quadratic); now each line
    is looked at once at most."""
    calls = 0
    is_body = splitter_module._is_body

    def counting(line: str, title: str) -> bool:
        nonlocal calls
        calls += 1
        return is_body(line, title)

    monkeypatch.setattr(splitter_module, "_is_body", counting)
    lines = 5_000
    assert section_starts("# h\n" * lines) == [0]  # headings without text of their own stay together
    assert calls <= lines
