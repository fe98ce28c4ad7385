"""What the documents screen stands on: kept originals (copied once stored, pruned once no file refers to them),
the manifest's pages and first-ingest time (old manifests migrated), renaming a knowledge base (its folder, its
Chroma collection, its grants and kept conversations follow; a crash mid-rename is finished on the next start), and
the download route for an original. Real ingest, real Chroma; no chat model.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest

from ingest.catalog import RENAME_FILE, Catalog
from ingest.kb_names import kb_id
from ingest.loaders import file_sha256
from ingest.manifest import Manifest
from kb_app.access.roles import User
from kb_app.assistant import Assistant
from kb_app.errors import KbError, KnowledgeBaseBusyError, PermissionDeniedError
from kb_app.settings import Settings, load_settings
from tests.conftest import FIXTURES, write
from tests.page_server import serving

PDF = FIXTURES / "formats" / "memo.pdf"
PASSWORD = "correct horse battery"


@pytest.fixture
def assistant(settings: Settings) -> Assistant:
    return Assistant(settings)


def kept(assistant: Assistant, kb: str) -> set[str]:
    folder = assistant.knowledge_base(kb).originals.directory
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


# -- originals ---------------------------------------------------------------------------------------------------


def test_a_stored_file_is_kept_byte_for_byte_and_shared_by_its_copies(assistant: Assistant, tmp_path: Path) -> None:
    note = write(tmp_path / "a", "note.md", "# Note\n\nThe office opens at nine.\n")
    twin = tmp_path / "b" / "same.md"
    twin.parent.mkdir()
    shutil.copy(note, twin)
    assert not assistant.ingest([note, twin], kb="hr").failed
    digest = file_sha256(note)
    assert kept(assistant, "hr") == {digest}
    assert assistant.original("note.md", kb="hr").read_bytes() == note.read_bytes()
    assert assistant.original("same.md", kb="hr") == assistant.original("note.md", kb="hr")


def test_a_replaced_or_removed_file_takes_its_copy_along_once_nothing_refers_to_it(
    assistant: Assistant, tmp_path: Path
) -> None:
    note = write(tmp_path, "note.md", "# Note\n\nThe office opens at nine.\n")
    other = write(tmp_path, "other.md", "# Other\n\nLunch is at noon.\n")
    assistant.ingest([note, other], kb="hr")
    first = file_sha256(note)
    note.write_text("# Note\n\nThe office opens at ten.\n", encoding="utf-8")
    report = assistant.ingest([note], kb="hr")
    assert [f.status for f in report.files] == ["replaced"]
    assert kept(assistant, "hr") == {file_sha256(note), file_sha256(other)} and first not in kept(assistant, "hr")
    assistant.remove_file("note.md", kb="hr")
    assert kept(assistant, "hr") == {file_sha256(other)}


def test_no_copy_is_kept_when_keep_originals_is_off(tmp_path: Path) -> None:
    assistant = Assistant(load_settings(home=tmp_path / "kb_home", **{"ingest.keep_originals": False}))
    assistant.ingest([write(tmp_path, "note.md", "# Note\n\nNine.\n")], kb="hr")
    assert kept(assistant, "hr") == set()
    with pytest.raises(KbError, match="no copy"):
        assistant.original("note.md", kb="hr")


def test_reindex_parses_the_kept_copy_again_after_the_file_is_gone(assistant: Assistant, tmp_path: Path) -> None:
    upload = write(tmp_path / "uploads", "note.md", "# Note\n\nThe office opens at nine.\n")
    assistant.ingest([upload], kb="hr")
    before = assistant.files("hr")[0]
    upload.unlink()
    assistant.reindex("note.md", kb="hr")
    assert assistant._parts.ingest_queue.wait_idle("hr", 60)
    assert [f.message for f in assistant.ingest_status("hr")] == ["replaced"]
    after = assistant.files("hr")[0]
    assert (after.path, after.mtime, after.added, after.sha256) == (
        before.path,
        before.mtime,
        before.added,
        before.sha256,
    )
    assert len(after.chunk_ids) == len(before.chunk_ids)
    assert list((assistant.settings.home / "uploads").iterdir()) == []  # the copy it was read from is gone


# -- the manifest --------------------------------------------------------------------------------------------------


def test_pages_and_the_first_ingest_time_are_kept(assistant: Assistant, tmp_path: Path) -> None:
    pdf = tmp_path / PDF.name
    shutil.copy(PDF, pdf)
    note = write(tmp_path, "note.md", "# Note\n\nNine.\n")
    assistant.ingest([pdf, note], kb="hr")
    records = {r.source: r for r in assistant.files("hr")}
    assert records[PDF.name].pages >= 1 and records["note.md"].pages == 0
    added = records["note.md"].added
    note.write_text("# Note\n\nTen.\n", encoding="utf-8")
    assistant.ingest([note], kb="hr")
    replaced = next(r for r in assistant.files("hr") if r.source == "note.md")
    assert replaced.added == added and replaced.updated_at > added


def test_an_old_manifest_gains_pages_and_added(tmp_path: Path) -> None:
    path = tmp_path / "manifest.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE files (source TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,"
        " status TEXT NOT NULL, chunk_ids TEXT NOT NULL, updated_at REAL NOT NULL, path TEXT NOT NULL DEFAULT '',"
        " error TEXT NOT NULL DEFAULT '', mtime REAL NOT NULL DEFAULT 0)"
    )
    db.execute("INSERT INTO files VALUES ('a.md', 'ab', 3, 'done', '[\"c1\"]', 1234.5, '/x/a.md', '', 7.0)")
    db.commit()
    db.close()
    manifest = Manifest(path)
    (record,) = manifest.all()
    assert (record.source, record.chunk_ids, record.pages, record.added) == ("a.md", ["c1"], 0, 1234.5)
    manifest.close()
    assert Manifest(path).get("a.md") == record  # opened again: nothing migrated twice


# -- renaming ------------------------------------------------------------------------------------------------------


@pytest.fixture
def team(tmp_path: Path) -> tuple[Assistant, dict[str, Assistant]]:
    owner = Assistant(load_settings(home=tmp_path / "kb_home", **{"auth.enabled": True}))
    owner.ingest([write(tmp_path / "docs", "leave.md", "# Leave\n\nParental leave is sixteen weeks.\n")], kb="hr")
    views = {}
    for name, role in (("keeper", "admin"), ("writer", "write")):
        owner.accounts.add_user(name, PASSWORD)
        owner.accounts.grant(name, "hr", role)
        views[name] = owner.as_user(User(name, admin=False))
    return owner, views


def test_a_renamed_knowledge_base_keeps_its_files_grants_and_conversations(team) -> None:
    owner, views = team
    keeper, writer = views["keeper"], views["writer"]
    conversation = writer.conversations.start("hr")
    before = [h.chunk.id for h in writer.search("parental leave", kb="hr")]
    assert keeper.rename_knowledge_base("hr", "人事部 HR") == "人事部 HR"
    assert owner.list_knowledge_bases() == ["人事部 HR"]
    assert [r.source for r in writer.files("人事部 HR")] == ["leave.md"]
    assert [h.chunk.id for h in writer.search("parental leave", kb="人事部 HR")] == before  # same vectors
    assert writer.role("人事部 HR").label == "write" and writer.role("hr") is None
    assert writer.conversations.get(conversation.id).kb == "人事部 HR"
    assert owner.original("leave.md", kb="人事部 HR").is_file()
    with pytest.raises(KbError, match="no knowledge base named 'hr'"):
        owner.files("hr")


def test_a_rename_needs_admin_and_a_free_name(team, tmp_path: Path) -> None:
    owner, views = team
    with pytest.raises(PermissionDeniedError, match="does not allow"):
        views["writer"].rename_knowledge_base("hr", "people")
    owner.ingest([write(tmp_path / "other", "x.md", "# X\n\nX.\n")], kb="sales")
    with pytest.raises(KbError, match="exists already"):
        owner.rename_knowledge_base("hr", "sales")
    with pytest.raises(KbError, match="path separator"):
        owner.rename_knowledge_base("hr", "../escape")
    assert owner.list_knowledge_bases() == ["hr", "sales"]


def test_a_rename_is_refused_while_files_of_it_are_queued(team, tmp_path: Path) -> None:
    owner, _ = team
    with owner._parts.ingest_lock:
        owner.queue_ingest([write(tmp_path / "more", "y.md", "# Y\n\nY.\n")], kb="hr")
        with pytest.raises(KnowledgeBaseBusyError):
            owner.rename_knowledge_base("hr", "people")
    assert owner._parts.ingest_queue.wait_idle("hr", 60)
    assert owner.rename_knowledge_base("hr", "people") == "people"


def test_a_rename_cut_short_after_the_folder_moved_is_finished_on_the_next_start(team) -> None:
    """The crash a rename guards against: its plan written and the folder moved, the collection not renamed yet."""
    owner, _ = team
    catalog: Catalog = owner.catalog
    owner.knowledge_base("hr").close()
    source, target = catalog.directory("hr"), catalog.directory("people")
    (source / RENAME_FILE).write_text(json.dumps({"name": "people", "collection": source.name}), encoding="utf-8")
    source.rename(target)
    restarted = Assistant(owner.settings)
    assert restarted.list_knowledge_bases() == ["people"]
    assert not (target / RENAME_FILE).exists()
    assert [c.name for c in restarted.client.list_collections()] == [kb_id("people")]
    assert [h.chunk.source for h in restarted.search("parental leave", kb="people")][:1] == ["leave.md"]


def test_a_rename_plan_whose_folder_never_moved_is_dropped(team) -> None:
    owner, _ = team
    folder = owner.catalog.directory("hr")
    (folder / RENAME_FILE).write_text(json.dumps({"name": "people", "collection": folder.name}), encoding="utf-8")
    restarted = Assistant(owner.settings)
    assert restarted.list_knowledge_bases() == ["hr"] and not (folder / RENAME_FILE).exists()


# -- downloading an original ---------------------------------------------------------------------------------------


def test_the_original_downloads_with_a_safe_name_for_a_reader_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # prepare_uploads() sets it; monkeypatch puts it back
    settings = load_settings(home=tmp_path / "kb_home", **{"auth.enabled": True, "ui.open_browser": False})
    owner = Assistant(settings)
    hostile = write(tmp_path / "docs", 'a"b\\c;.md', "# Note\n\n<script>alert(1)</script>\n")
    owner.ingest([hostile], kb="hr")
    accounts = owner.accounts
    for name, role in (("reader", "read"), ("asker", "ask")):
        accounts.add_user(name, PASSWORD)
        accounts.grant(name, "hr", role)
    with serving(settings, owner) as url:
        keys = {name: accounts.create_key(name)[1] for name in ("reader", "asker")}

        def get(name: str | None, source: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {keys[name]}"} if name else {}
            return httpx.get(f"{url}/api/kb/hr/documents/{source}/original", headers=headers)

        response = get("reader", 'a"b\\c;.md')
        assert response.status_code == 200, response.text
        assert response.content == hostile.read_bytes()
        assert response.headers["content-type"] == "application/octet-stream"
        disposition = response.headers["content-disposition"]
        assert disposition.startswith("attachment;") and '"b' not in disposition and "\n" not in disposition
        assert get("asker", 'a"b\\c;.md').status_code == 403
        assert get(None, 'a"b\\c;.md').status_code == 401
        assert get("reader", "missing.md").status_code == 404
