"""Loading every supported format, bad input reported by name, dedup/replace, and crash recovery."""

from __future__ import annotations

from pathlib import Path

import docx
import pytest

from ingest.knowledge_base import KnowledgeBase
from ingest.loaders import LoaderRegistry
from ingest.splitter import RecursiveSplitter
from kb_app.assistant import Assistant
from kb_app.errors import DocumentReadError, UnsupportedFileError
from kb_app.settings import Settings, SplitterSettings
from tests.conftest import shared_path

ZH_TEXT = "蓝鲸公司的报销流程分三步：提交发票，部门经理审批，财务在五个工作日内付款。"
EN_TEXT = "The travel policy of Bluewhale Corp allows economy class for flights under six hours."


@pytest.fixture
def registry() -> LoaderRegistry:
    return LoaderRegistry(max_file_mb=1)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "gb18030", "utf-16", "big5"])
def test_text_encodings(tmp_path: Path, registry: LoaderRegistry, encoding: str) -> None:
    text = "請問報銷流程是什麼" if encoding == "big5" else ZH_TEXT
    path = tmp_path / "policy.txt"
    path.write_bytes((text * 3).encode(encoding))
    doc = registry.load(path, "policy.txt")
    assert doc.pages[0].text.replace("\ufeff", "") == text * 3


def test_markdown_html_and_docx(tmp_path: Path, registry: LoaderRegistry) -> None:
    (tmp_path / "a.md").write_text(f"# Policy\n\n{EN_TEXT}\n", encoding="utf-8")
    (tmp_path / "b.html").write_text(f"<html><body><h1>政策</h1><p>{ZH_TEXT}</p></body></html>", encoding="utf-8")
    document = docx.Document()
    document.add_heading("Policy", 1)
    document.add_paragraph(EN_TEXT)
    document.save(str(tmp_path / "c.docx"))
    assert EN_TEXT in registry.load(tmp_path / "a.md", "a.md").pages[0].text
    assert ZH_TEXT in registry.load(tmp_path / "b.html", "b.html").pages[0].text
    assert EN_TEXT in registry.load(tmp_path / "c.docx", "c.docx").pages[0].text


def test_html_and_word_headings_reach_the_chunks_heading_path(tmp_path: Path, registry: LoaderRegistry) -> None:
    (tmp_path / "a.html").write_text(
        f"<html><head><title>Handbook</title></head><body><h2>Travel</h2><p>{EN_TEXT}</p></body></html>",
        encoding="utf-8",
    )
    document = docx.Document()
    document.add_heading("Handbook", 0)
    document.add_heading("Travel", 1)
    document.add_paragraph(EN_TEXT)
    document.save(str(tmp_path / "b.docx"))
    splitter = RecursiveSplitter(SplitterSettings())
    for name in ("a.html", "b.docx"):
        chunks = splitter.split(registry.load(tmp_path / name, name))
        assert [c.heading for c in chunks] == ["Handbook › Travel"], name


def test_pdf_keeps_page_numbers() -> None:
    doc = LoaderRegistry().load(shared_path("corpus", "chatchat_samples", "langchain.pdf"), "langchain.pdf")
    assert [p.number for p in doc.pages] == list(range(1, len(doc.pages) + 1))
    assert len(doc.pages) > 3
    assert "LangChain" in doc.pages[0].text


def test_bad_files_raise_clear_errors(tmp_path: Path, registry: LoaderRegistry) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage")
    (tmp_path / "data.xyz").write_text("x", encoding="utf-8")
    (tmp_path / "big.txt").write_bytes(b"a" * (2 * 1024 * 1024))
    with pytest.raises(DocumentReadError, match=r"empty\.txt: the file is empty"):
        registry.load(tmp_path / "empty.txt", "empty.txt")
    with pytest.raises(DocumentReadError, match=r"broken\.pdf"):
        registry.load(tmp_path / "broken.pdf", "broken.pdf")
    with pytest.raises(UnsupportedFileError, match=r"data.xyz: unsupported file type '.xyz'"):
        registry.load(tmp_path / "data.xyz", "data.xyz")
    with pytest.raises(DocumentReadError, match=r"big\.txt: .* over the 1 MB limit"):
        registry.load(tmp_path / "big.txt", "big.txt")


def test_batch_goes_on_past_bad_files(tmp_path: Path, settings: Settings) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text(EN_TEXT, encoding="utf-8")
    (docs / "empty.txt").write_bytes(b"")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 nonsense")
    (docs / "notes.xyz").write_text("x", encoding="utf-8")
    (docs / "zh.md").write_text(ZH_TEXT, encoding="utf-8")
    report = Assistant(settings).ingest([docs])
    assert {f.source for f in report.by_status("added")} == {"good.txt", "zh.md"}
    assert {f.source for f in report.failed} == {"empty.txt", "broken.pdf", "notes.xyz"}
    assert all(f.reason.startswith(f.source) for f in report.failed)


def test_reingest_unchanged_adds_nothing_and_changed_replaces(tmp_path: Path, settings: Settings) -> None:
    assistant = Assistant(settings)
    path = tmp_path / "policy.txt"
    path.write_text((EN_TEXT + " ") * 20, encoding="utf-8")
    first = assistant.ingest([path])
    kb = assistant.knowledge_base()
    n = kb.vectors.count()
    assert first.files[0].status == "added" and n == first.files[0].chunks > 1

    again = assistant.ingest([path])
    assert again.files[0].status == "unchanged"
    assert kb.vectors.count() == n
    assert len(kb.lexical) == n

    path.write_text(ZH_TEXT, encoding="utf-8")
    changed = assistant.ingest([path])
    assert changed.files[0].status == "replaced"
    assert kb.vectors.count() == 1 == len(kb.lexical)
    record = kb.manifest.get("policy.txt")
    assert record is not None and record.status == "done"
    assert [c.text for c in kb.vectors.get(record.chunk_ids)] == [ZH_TEXT]
    assert assistant.search("报销流程")[0].chunk.source == "policy.txt"


def test_a_crash_mid_ingest_leaves_no_half_ingested_file(tmp_path: Path, settings: Settings) -> None:
    """Simulate a crash after chunks reached the stores but before the manifest said 'done'."""
    assistant = Assistant(settings)
    keep = tmp_path / "keep.txt"
    keep.write_text(EN_TEXT, encoding="utf-8")
    assistant.ingest([keep])
    kb = assistant.knowledge_base()
    vector = assistant.embedder.embed_passages([ZH_TEXT])
    from ingest.types import Chunk

    half = Chunk("half-00000", ZH_TEXT, "half.txt", None, 0, len(ZH_TEXT), "f" * 64)
    kb.manifest.begin("half.txt", "f" * 64, 10, [half.id])
    kb.vectors.add([half], vector)
    kb.lexical.update(add=[(half.id, half.text)])
    assert kb.vectors.count() == 2

    reopened = KnowledgeBase.open(
        assistant.catalog.directory("default"), assistant.client, assistant.embedder.name, "default"
    )
    assert reopened.manifest.get("half.txt") is None
    assert reopened.vectors.count() == 1
    assert reopened.lexical.ids() == set(reopened.manifest.get("keep.txt").chunk_ids)


def test_a_lost_lexical_index_is_rebuilt_from_the_stores(tmp_path: Path, settings: Settings) -> None:
    assistant = Assistant(settings)
    path = tmp_path / "policy.txt"
    path.write_text((EN_TEXT + " ") * 10, encoding="utf-8")
    assistant.ingest([path])
    ids = set(assistant.knowledge_base().manifest.get("policy.txt").chunk_ids)
    for leftover in (assistant.catalog.directory("default") / "lexical").iterdir():
        leftover.unlink()

    reopened = KnowledgeBase.open(
        assistant.catalog.directory("default"), assistant.client, assistant.embedder.name, "default"
    )
    assert reopened.lexical.ids() == ids
    assert reopened.lexical.search("travel policy economy", 3)[0][0] in ids
