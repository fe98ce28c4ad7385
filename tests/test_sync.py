"""``kb sync DIR``: new files added, changed ones re-ingested, deleted ones removed, moved or renamed ones renamed
without embedding, unchanged ones skipped without even hashing; failures remembered; other folders left alone."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ingest.pipeline
from ingest.manifest import Manifest
from kb_app.assistant import Assistant
from kb_app.cli import app
from kb_app.settings import Settings, load_settings
from tests.test_crash import FakeEmbedder

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "formats"
ZH = "蓝鲸公司的报销流程分三步：提交发票，部门经理审批，财务在五个工作日内付款。"
EN = "The travel policy of Bluewhale Corp allows economy class for flights under six hours."


class CountingEmbedder(FakeEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.texts = 0

    def embed_passages(self, texts):
        self.texts += len(texts)
        return super().embed_passages(texts)


@pytest.fixture
def kit(tmp_path: Path):
    settings = load_settings(home=tmp_path / "kb_home", **{"splitter.chunk_size": 200, "splitter.chunk_overlap": 20})
    embedder = CountingEmbedder()
    assistant = Assistant(settings, embedder=embedder)
    kb = assistant.knowledge_base()

    def sync(folder: Path) -> dict[str, str]:
        report = assistant.sync(folder)
        return {f.source: f.status for f in report.files}

    return kb, embedder, sync, assistant


def consistent(kb) -> None:
    records = kb.manifest.all()
    ids = [i for r in records for i in r.chunk_ids]
    assert all(r.status == "done" for r in records)
    assert kb.vectors.count() == len(ids) == len(set(ids)) == len(kb.vectors.get(ids))
    assert kb.lexical.ids() == set(ids)
    for record in records:
        assert {c.source for c in kb.vectors.get(record.chunk_ids)} == {record.source}


def test_sync_adds_changes_removes_and_renames(tmp_path: Path, kit, monkeypatch: pytest.MonkeyPatch) -> None:
    kb, embedder, sync, _ = kit
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text(EN * 5, encoding="utf-8")
    (docs / "b.txt").write_text(ZH, encoding="utf-8")
    (docs / "sub" / "c.md").write_text("# C\n\n" + ZH * 3, encoding="utf-8")
    (docs / ".hidden.txt").write_text("not synced", encoding="utf-8")
    assert sync(docs) == {"a.txt": "added", "b.txt": "added", "sub/c.md": "added"}
    consistent(kb)

    hashed = []
    monkeypatch.setattr(ingest.pipeline, "file_sha256", lambda p: hashed.append(p) or "x")
    embedder.texts = 0
    assert set(sync(docs).values()) == {"unchanged"}
    assert hashed == [] and embedder.texts == 0  # size and mtime match: not even hashed
    monkeypatch.undo()

    a_chunks = len(kb.manifest.get("a.txt").chunk_ids)
    (docs / "b.txt").write_text(ZH + "第二版。", encoding="utf-8")
    (docs / "a.txt").rename(docs / "sub" / "a-moved.txt")
    (docs / "sub" / "c.md").unlink()
    (docs / "d.txt").write_text(EN, encoding="utf-8")
    assert sync(docs) == {
        "b.txt": "replaced",
        "sub/a-moved.txt": "renamed",
        "d.txt": "added",
        "sub/c.md": "removed",
    }
    assert embedder.texts == 2  # b.txt and d.txt; the moved file kept its vectors
    moved = kb.manifest.get("sub/a-moved.txt")
    assert moved is not None and len(moved.chunk_ids) == a_chunks
    assert moved.path == str((docs / "sub" / "a-moved.txt").resolve())
    assert kb.manifest.get("a.txt") is None and kb.manifest.get("sub/c.md") is None
    consistent(kb)


def test_copies_reuse_vectors_and_ids_never_collide(tmp_path: Path, kit) -> None:
    kb, embedder, sync, _ = kit
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(EN * 4, encoding="utf-8")
    sync(docs)
    (docs / "a.txt").rename(docs / "b.txt")
    assert sync(docs) == {"b.txt": "renamed"}
    embedder.texts = 0
    shutil.copy(docs / "b.txt", docs / "a.txt")  # the old name again, same content: ids would collide
    assert sync(docs) == {"a.txt": "added", "b.txt": "unchanged"}
    assert embedder.texts == 0  # a copy reuses the stored vectors
    a, b = kb.manifest.get("a.txt"), kb.manifest.get("b.txt")
    assert not set(a.chunk_ids) & set(b.chunk_ids)
    consistent(kb)
    (docs / "a.txt").unlink()
    assert sync(docs) == {"a.txt": "removed", "b.txt": "unchanged"}
    consistent(kb)
    assert len(kb.vectors.get(b.chunk_ids)) == len(b.chunk_ids)


def test_failures_are_remembered_and_retried_when_the_file_changes(tmp_path: Path, kit) -> None:
    kb, _, sync, _ = kit
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.txt").write_bytes(b"")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 broken")
    (docs / "ok.txt").write_text(EN, encoding="utf-8")
    assert sync(docs) == {"empty.txt": "failed", "broken.pdf": "failed", "ok.txt": "added"}
    failures = {r.source: r.error for r in kb.manifest.failures()}
    assert failures["empty.txt"] == "empty.txt: the file is empty"
    assert failures["broken.pdf"].startswith("broken.pdf: not a readable PDF")
    assert [r.source for r in kb.manifest.all()] == ["ok.txt"]  # failures are not documents
    assert sync(docs) == {"empty.txt": "failed", "broken.pdf": "failed", "ok.txt": "unchanged"}
    shutil.copy(FIXTURES / "memo.pdf", docs / "broken.pdf")
    assert sync(docs)["broken.pdf"] == "added"
    assert [r.source for r in kb.manifest.failures()] == ["empty.txt"]
    (docs / "empty.txt").unlink()
    assert sync(docs)["empty.txt"] == "removed"
    assert kb.manifest.failures() == []


def test_sync_leaves_other_folders_alone(tmp_path: Path, kit) -> None:
    kb, _, sync, assistant = kit
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "x.txt").write_text(EN, encoding="utf-8")
    (tmp_path / "two" / "y.txt").write_text(ZH, encoding="utf-8")
    assistant.ingest([tmp_path / "one"])
    assert sync(tmp_path / "two") == {"y.txt": "added"}
    assert [r.source for r in kb.manifest.all()] == ["x.txt", "y.txt"]


def test_watch_keeps_syncing_until_stopped(tmp_path: Path, kit) -> None:
    kb, _, _, assistant = kit
    docs = tmp_path / "docs"
    docs.mkdir()
    reports, stop = [], threading.Event()
    thread = threading.Thread(
        target=assistant.watch, args=(docs, reports.append), kwargs={"interval_s": 0.1, "stop": stop}
    )
    thread.start()
    try:
        (docs / "new.txt").write_text(EN, encoding="utf-8")
        for _ in range(100):
            if kb.manifest.get("new.txt"):
                break
            threading.Event().wait(0.1)
    finally:
        stop.set()
        thread.join(10)
    assert kb.manifest.get("new.txt") is not None
    assert [f.status for r in reports for f in r.files if f.source == "new.txt"][:1] == ["added"]


def test_old_manifests_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "manifest.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE files (source TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL, status TEXT NOT NULL"
        " CHECK (status IN ('pending', 'done')), chunk_ids TEXT NOT NULL, updated_at REAL NOT NULL)"
    )
    db.execute("INSERT INTO files VALUES ('a.txt', 'abc', 3, 'done', '[\"id-1\"]', 1.0)")
    db.commit()
    db.close()
    manifest = Manifest(path)
    record = manifest.get("a.txt")
    assert record is not None and record.chunk_ids == ["id-1"] and record.path == "" and record.error == ""
    manifest.fail("b.txt", "def", 0, "b.txt: the file is empty")
    assert [r.source for r in manifest.failures()] == ["b.txt"]


def test_cli_sync_and_password(tmp_path: Path, settings: Settings) -> None:
    from pypdf import PdfReader, PdfWriter

    docs = tmp_path / "docs"
    docs.mkdir()
    writer = PdfWriter(clone_from=PdfReader(FIXTURES / "memo.pdf"))
    writer.encrypt("s3cret", algorithm="RC4-128")
    with (docs / "locked.pdf").open("wb") as fh:
        writer.write(fh)
    (docs / "note.txt").write_text(ZH, encoding="utf-8")
    runner = CliRunner()
    home = ["--home", str(settings.home)]
    first = runner.invoke(app, [*home, "sync", str(docs), "--json"])
    assert first.exit_code == 0, first.output
    outcomes = {f["source"]: f for f in json.loads(first.stdout)["files"]}
    assert outcomes["note.txt"]["status"] == "added"
    assert outcomes["locked.pdf"]["status"] == "failed" and "--password" in outcomes["locked.pdf"]["reason"]
    second = runner.invoke(app, [*home, "sync", str(docs), "--password", "s3cret", "--json"])
    outcomes = {f["source"]: f["status"] for f in json.loads(second.stdout)["files"]}
    assert outcomes == {"locked.pdf": "added", "note.txt": "unchanged"}
    listed = runner.invoke(app, [*home, "files", "--failed", "--json"])
    assert json.loads(listed.stdout) == []


def test_hostile_names_are_ingested_under_escaped_names(tmp_path: Path, kit) -> None:
    kb, _, sync, _ = kit
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bell\x07name.txt").write_text(EN, encoding="utf-8")
    (docs / "new\nline.txt").write_text(ZH, encoding="utf-8")
    (docs / "back\\slash.txt").write_text(EN + " 2", encoding="utf-8")
    with open(os.path.join(os.fsencode(docs), b"caf\xe9.txt"), "wb") as fh:  # not UTF-8: a Latin-1 name
        fh.write(ZH.encode() * 2)
    outcomes = sync(docs)
    assert outcomes == {
        "bell\\x07name.txt": "added",
        "new\\x0aline.txt": "added",
        "back\\slash.txt": "added",
        "caf\\xe9.txt": "added",
    }
    consistent(kb)
    os.remove(os.path.join(os.fsencode(docs), b"caf\xe9.txt"))
    assert sync(docs)["caf\\xe9.txt"] == "removed"
