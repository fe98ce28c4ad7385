"""Knowledge-base names are labels, never paths: a hostile name is refused before anything touches the disk,
display names in any language work, and every folder kb writes or deletes stays under KB_HOME."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest.kb_names import check_name, inside, kb_id
from kb_app.assistant import Assistant
from kb_app.cli import app
from kb_app.errors import KnowledgeBaseNameError
from kb_app.settings import Settings
from tests.test_crash import FakeEmbedder

HOSTILE = ["../../victim", "..", "a/b", "a\\b", "bell\x07", "new\nline", "x" * 65, "", "   ", "\u202eevil"]


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A folder of the user's beside KB_HOME that no knowledge-base name may reach."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious", encoding="utf-8")
    return folder


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "a.txt"
    path.write_text("The Zephyrine handbook grants twelve days of leave.", encoding="utf-8")
    return path


def outside_home(settings: Settings, root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if settings.home not in p.parents and p != settings.home}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(KnowledgeBaseNameError):
        check_name(name)


@pytest.mark.parametrize("name", ["财务部", "HR 2026", "default", "Ventes-été", "a.b", "kb-x"])
def test_display_names_map_to_ids_that_are_single_safe_folder_names(name: str) -> None:
    ident = kb_id(name)
    assert "/" not in ident and ".." not in ident and len(ident) <= 63
    assert ident == name or ident.startswith("kb-")


def test_a_name_cannot_pose_as_another_names_id() -> None:
    """Audit L6: a knowledge base literally named like another's hashed id gets an id of its own."""
    hashed = kb_id("人事")
    assert hashed.startswith("kb-") and kb_id(hashed) != hashed


def test_the_assistant_refuses_a_path_as_name(settings: Settings, victim: Path, doc: Path, tmp_path: Path) -> None:
    assistant = Assistant(settings, embedder=FakeEmbedder())
    before = outside_home(settings, tmp_path)
    for name in (str(victim), "../../victim", "../victim"):
        with pytest.raises(KnowledgeBaseNameError):
            assistant.ingest([doc], kb=name)
        with pytest.raises(KnowledgeBaseNameError):
            assistant.delete_knowledge_base(name)
    assert (victim / "keep.txt").read_text(encoding="utf-8") == "precious"
    assert outside_home(settings, tmp_path) == before  # no manifest, no lexical folder planted outside


def test_the_cli_refuses_a_path_as_name(settings: Settings, victim: Path, doc: Path) -> None:
    runner = CliRunner()
    home = ["--home", str(settings.home)]
    ingested = runner.invoke(app, [*home, "ingest", str(doc), "--kb", "../../victim"])
    assert ingested.exit_code != 0 and "path separator" in str(ingested.exception or ingested.output)
    dropped = runner.invoke(app, [*home, "drop", str(victim), "--yes"])
    assert dropped.exit_code != 0
    assert (victim / "keep.txt").exists() and not (victim / "manifest.sqlite").exists()


def test_display_names_in_any_language_live_side_by_side(settings: Settings, doc: Path) -> None:
    assistant = Assistant(settings, embedder=FakeEmbedder())
    lookalike = "kb-" + hashlib.sha1("财务部".encode()).hexdigest()[:20]  # the id 财务部 gets
    for name in ("财务部", "HR 2026", lookalike):
        assert assistant.ingest([doc], kb=name).files[0].status == "added"
    names = assistant.list_knowledge_bases()
    assert "财务部" in names and "HR 2026" in names and len(names) == 3
    assert assistant.delete_knowledge_base("财务部") is True
    assert "财务部" not in assistant.list_knowledge_bases()
    assert [r.source for r in assistant.files("HR 2026")] == ["a.txt"]
    assert [r.source for r in assistant.files(lookalike)] == ["a.txt"]  # its own folder and collection survived
    assert assistant.delete_knowledge_base("财务部") is False


def test_a_knowledge_base_folder_that_links_outside_is_refused(settings: Settings, victim: Path) -> None:
    settings.kbs_dir.mkdir(parents=True)
    (settings.kbs_dir / "planted").symlink_to(victim, target_is_directory=True)
    with pytest.raises(KnowledgeBaseNameError, match="outside"):
        inside(settings.kbs_dir, "planted")
    assistant = Assistant(settings, embedder=FakeEmbedder())
    with pytest.raises(KnowledgeBaseNameError):
        assistant.delete_knowledge_base("planted")
    assert (victim / "keep.txt").exists()


def test_an_interrupted_delete_is_finished_on_the_next_start(settings: Settings, doc: Path) -> None:
    assistant = Assistant(settings, embedder=FakeEmbedder())
    assistant.ingest([doc], kb="hr-team")
    directory = assistant.catalog.directory("hr-team")
    tombstone = directory.with_name(f".deleted-{directory.name}.abcd1234")
    directory.rename(tombstone)  # the crash came right after the folder was renamed away
    assert "hr-team" not in assistant.list_knowledge_bases()
    fresh = Assistant(settings, embedder=FakeEmbedder(), client=assistant.client)
    fresh.list_knowledge_bases()
    assert not tombstone.exists()
    assert "hr-team" not in [c.name for c in assistant.client.list_collections()]


def test_knowledge_bases_of_an_older_kb_are_adopted(settings: Settings, doc: Path) -> None:
    """Before 0.2 a folder was named by the raw name: it keeps working under its id."""
    assistant = Assistant(settings, embedder=FakeEmbedder())
    assistant.ingest([doc], kb="人事")
    directory = assistant.catalog.directory("人事")
    (directory / "kb.json").unlink()
    directory.rename(directory.with_name("人事"))
    fresh = Assistant(settings, embedder=FakeEmbedder(), client=assistant.client)
    assert fresh.list_knowledge_bases() == ["人事"]
    assert [r.source for r in fresh.files("人事")] == ["a.txt"]
