"""Symbolic links in an ingested or synced folder: a link whose target lies outside the folder is skipped and named
in the report, and nothing of its target is stored; a link that stays inside may be followed; a link named
directly on the command line is the user's choice and is read."""

from __future__ import annotations

from pathlib import Path

from kb_app.assistant import Assistant
from kb_app.settings import Settings
from tests.test_crash import FakeEmbedder

SECRET = "Zebracornsecretkey"
OUTSIDE_FOLDER_WORD = "Quasimodoledger"
INSIDE = "Marmaladeharbour opens at nine."
NORMAL = "Pelicanbridge is closed on Sundays."


def _tree(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text(f"-----BEGIN KEY----- {SECRET} -----END KEY-----", encoding="utf-8")
    (outside / "ledger").mkdir()
    (outside / "ledger" / "book.txt").write_text(f"{OUTSIDE_FOLDER_WORD} entries.", encoding="utf-8")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "normal.txt").write_text(NORMAL, encoding="utf-8")
    (docs / "sub" / "real.md").write_text(INSIDE, encoding="utf-8")
    (docs / "notes.txt").symlink_to(outside / "id_rsa")
    (docs / "alias.md").symlink_to(Path("sub") / "real.md")
    (docs / "ledger").symlink_to(outside / "ledger", target_is_directory=True)
    return docs


def _stored_text(assistant: Assistant, kb: str | None = None) -> str:
    knowledge_base = assistant.knowledge_base(kb)
    ids = [i for r in knowledge_base.manifest.all() for i in r.chunk_ids]
    return "\n".join(c.text for c in knowledge_base.vectors.get(ids))


def _assert_outside_refused(assistant: Assistant, report, outside: Path) -> None:
    failed = {f.source: f.reason for f in report.failed}
    assert failed == {
        "notes.txt": "notes.txt: a symbolic link to a file outside the folder; skipped",
        "ledger": "ledger: a symbolic link to a folder outside the folder; skipped",
    }
    kb = assistant.knowledge_base()
    assert {r.source for r in kb.manifest.all() if r.status == "done"} == {"normal.txt", "alias.md", "sub/real.md"}
    for word in (SECRET, OUTSIDE_FOLDER_WORD):
        assert kb.lexical.search(word, 5) == []
        assert word not in _stored_text(assistant)
    assert not any(r.path.startswith(str(outside.resolve())) for r in kb.manifest.all())
    assert kb.lexical.search("Marmaladeharbour", 5) and kb.lexical.search("Pelicanbridge", 5)


def test_links_out_of_an_ingested_or_synced_folder_are_skipped_and_named(tmp_path: Path, settings: Settings) -> None:
    docs = _tree(tmp_path)
    assistant = Assistant(settings, embedder=FakeEmbedder())
    _assert_outside_refused(assistant, assistant.ingest([docs]), tmp_path / "outside")
    _assert_outside_refused(assistant, assistant.sync(docs), tmp_path / "outside")


def test_a_file_that_becomes_a_link_out_of_the_folder_is_taken_out(tmp_path: Path, settings: Settings) -> None:
    docs = _tree(tmp_path)
    assistant = Assistant(settings, embedder=FakeEmbedder())
    assistant.sync(docs)
    (docs / "normal.txt").unlink()
    (docs / "normal.txt").symlink_to(tmp_path / "outside" / "id_rsa")
    report = assistant.sync(docs)
    reason = {f.source: f.reason for f in report.failed}["normal.txt"]
    assert reason.startswith("normal.txt: a symbolic link to a file outside the folder; skipped")
    assert "normal.txt" not in {r.source for r in assistant.files()}
    assert NORMAL not in _stored_text(assistant) and SECRET not in _stored_text(assistant)


def test_a_link_named_on_the_command_line_is_read(tmp_path: Path, settings: Settings) -> None:
    docs = _tree(tmp_path)
    assistant = Assistant(settings, embedder=FakeEmbedder())
    report = assistant.ingest([docs / "notes.txt"], kb="keys")
    assert [f.source for f in report.by_status("added")] == ["notes.txt"]
    assert SECRET in _stored_text(assistant, "keys")
