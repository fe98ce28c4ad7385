"""Per-file caps, enforced in the parser worker: a file that yields more text than ``ingest.max_text_chars`` or more
chunks than ``ingest.max_chunks`` is refused by name with the setting to raise, and the rest of the batch lands.

Everything goes through ``Assistant.ingest`` with real worker processes; only the embedder is a fast fake.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import openpyxl

from ingest.loaders import LoaderRegistry, LoadOptions
from ingest.parse import FileParser, ParsedFile
from ingest.splitter import RecursiveSplitter
from ingest.workers import WorkerPool
from kb_app.assistant import Assistant
from kb_app.settings import Settings, SplitterSettings, load_settings
from tests.test_crash import FakeEmbedder

NEIGHBOUR = "Quillfeather reimbursement forms are due on the fifth working day."


def _assistant(tmp_path: Path, **overrides: object) -> Assistant:
    settings = load_settings(home=tmp_path / "kb_home", **{"ingest.workers": 1, **overrides})
    return Assistant(settings, embedder=FakeEmbedder())


def _batch(folder: Path, big: Path) -> list[Path]:
    neighbour = folder / "a.txt"
    neighbour.write_text(NEIGHBOUR, encoding="utf-8")
    return [big, neighbour]


def _assert_refused_and_neighbour_landed(assistant: Assistant, report, name: str, message: str, env: str) -> None:
    failed = {f.source: f.reason for f in report.failed}
    assert failed.keys() == {name}, report.files
    assert failed[name].startswith(f"{name}: {message}"), failed[name]
    assert env in failed[name]
    assert [f.source for f in report.by_status("added")] == ["a.txt"]
    kb = assistant.knowledge_base()
    assert {r.source for r in kb.manifest.all() if r.status == "done"} == {"a.txt"}
    ids = kb.manifest.get("a.txt").chunk_ids
    assert kb.lexical.ids() == set(ids) and kb.vectors.count() == len(ids)  # nothing of the refused file is stored
    assert [i for i, _ in kb.lexical.search("Quillfeather", 3)] == ids


def _epub_repeating_one_chapter(path: Path, chapter_chars: int, times: int) -> Path:
    """An EPUB whose spine lists the same ~``chapter_chars`` chapter ``times`` times (a few KB on disk)."""
    paragraph = "<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20 + "</p>\n"
    body = paragraph * (chapter_chars // len(paragraph) + 1)
    chapter = f'<html xmlns="http://www.w3.org/1999/xhtml"><body><h1>Chapter</h1>{body}</body></html>'
    spine = "".join('<itemref idref="c1"/>' for _ in range(times))
    opf = (
        '<package xmlns="http://www.idpf.org/2007/opf" version="3.0"><metadata/>'
        '<manifest><item id="c1" href="chapter.xhtml" media-type="application/xhtml+xml"/></manifest>'
        f"<spine>{spine}</spine></package>"
    )
    container = (
        '<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container" version="1.0"><rootfiles>'
        '<rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>'
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        archive.writestr("META-INF/container.xml", container)
        archive.writestr("OEBPS/content.opf", opf)
        archive.writestr("OEBPS/chapter.xhtml", chapter)
    return path


def test_an_epub_listing_one_big_chapter_400_times_is_refused_within_seconds(tmp_path: Path) -> None:
    """400 × 1 MB would be 400 MB of text to split and embed (hours); the chapters are counted as they are read,
    so it stops after a handful. The 60 s bound is loose (it takes a few seconds) and only guards against reading
    all 400 chapters first, which takes minutes and runs into the worker's memory limit."""
    book = _epub_repeating_one_chapter(tmp_path / "book.epub", 1_000_000, 400)
    assert book.stat().st_size < 100_000
    assistant = _assistant(tmp_path)
    started = time.perf_counter()
    report = assistant.ingest(_batch(tmp_path, book))
    assert time.perf_counter() - started < 60
    message = "yields over 5,000,000 characters (ingest.max_text_chars)"
    _assert_refused_and_neighbour_landed(assistant, report, "book.epub", message, "KB_INGEST__MAX_TEXT_CHARS")
    assert "book.epub" in {r.source for r in assistant.failures()}


def test_a_small_zip_of_big_texts_that_passes_the_bomb_check_is_refused_by_the_text_cap(tmp_path: Path) -> None:
    """Four 2 MB members compress about 1000:1, but each is under the bomb check's 16 MB floor and the whole is far
    under ``archive_max_mb``: only the text cap stops 8 MB of text."""
    archive = tmp_path / "texts.zip"
    line = "The quarterly numbers are final and approved by the board of directors.\n"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(4):
            zf.writestr(f"part{i}.txt", line * (2_000_000 // len(line)))
        assert all(info.file_size < 16 * 2**20 for info in zf.infolist())
    assert archive.stat().st_size < 100_000
    assistant = _assistant(tmp_path)
    report = assistant.ingest(_batch(tmp_path, archive))
    message = "yields over 5,000,000 characters (ingest.max_text_chars)"
    _assert_refused_and_neighbour_landed(assistant, report, "texts.zip", message, "KB_INGEST__MAX_TEXT_CHARS")


def test_a_file_over_max_chunks_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "long.txt"
    big.write_text("\n\n".join(f"Paragraph {i} talks about a different topic at some length." for i in range(400)))
    assistant = _assistant(
        tmp_path, **{"ingest.max_chunks": 20, "splitter.chunk_size": 100, "splitter.chunk_overlap": 0}
    )
    report = assistant.ingest(_batch(tmp_path, big))
    _assert_refused_and_neighbour_landed(
        assistant, report, "long.txt", "yields 400 chunks, over 20", "KB_INGEST__MAX_CHUNKS"
    )


def test_the_worker_returns_split_chunks_in_process_and_in_a_worker(tmp_path: Path, settings: Settings) -> None:
    """The parse task (registry and splitter inside) pickles to a forkserver worker and gives the same chunks as in
    this process (``workers: 0``), heading paths included."""
    doc = tmp_path / "guide.md"
    doc.write_text(
        "# Guide\n\nIntro text here.\n\n## Leave\n\n" + "Annual leave is twenty days. " * 30, encoding="utf-8"
    )
    parse = FileParser(LoaderRegistry(), RecursiveSplitter(SplitterSettings()), LoadOptions(), max_chunks=100)
    pool = WorkerPool(workers=1, memory_mb=1024)
    try:
        (remote,) = list(pool.map(parse, [(doc, "guide.md")], ["guide.md"], 30.0))
    finally:
        pool.close()
    (local,) = list(WorkerPool(workers=0).map(parse, [(doc, "guide.md")], ["guide.md"], 30.0))
    assert remote.error is None and isinstance(remote.value, ParsedFile)
    assert remote.value == local.value
    assert {c.heading for c in remote.value.chunks} == {"Guide", "Guide › Leave"}


def test_wide_tables_keep_every_column(tmp_path: Path) -> None:
    """Tables were cut at 200 columns without a word; a 300-column sheet or CSV keeps its last column, header
    names included."""
    header = [f"col{i}" for i in range(300)]
    row = [f"value{i}" for i in range(300)]
    csv = tmp_path / "wide.csv"
    csv.write_text(",".join(header) + "\n" + ",".join(row) + "\n", encoding="utf-8")
    workbook = openpyxl.Workbook()
    workbook.active.append(header)
    workbook.active.append(row)
    workbook.save(tmp_path / "wide.xlsx")
    registry = LoaderRegistry()
    for name in ("wide.csv", "wide.xlsx"):
        text = registry.load(tmp_path / name, name).pages[0].text
        assert "col299: value299" in text and "col250: value250" in text, name
    assistant = _assistant(tmp_path)
    report = assistant.ingest([csv])
    assert [f.source for f in report.by_status("added")] == ["wide.csv"]
    assert assistant.knowledge_base().lexical.search("value299", 3)
