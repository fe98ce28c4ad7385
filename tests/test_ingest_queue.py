"""The background ingest queue through the Assistant: real ingest (embedder, Chroma, parser workers), the real
default model only where a question is answered.

A file's states are watched as the worker moves it on; the worker is held where a test needs a file to stay
queued by holding the Assistant's ingest lock, the one lock every ingest takes (the worker blocks on it exactly as
it would behind a sync or an API upload).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.pipeline import FileOutcome, ProgressCallback
from kb_app.access.roles import User
from kb_app.assistant import Assistant
from kb_app.chat.pipeline import Answer
from kb_app.errors import DocumentNotFoundError, KnowledgeBaseBusyError, PermissionDeniedError
from kb_app.ingest_queue import CANCELLED, DONE, FAILED, INDEXING, QUEUED, Indexing, IngestQueue, IngestTask
from kb_app.settings import Settings, load_settings
from tests.conftest import FIXTURES, write

POLICY = FIXTURES / "ui" / "zephyr_policy.txt"
QUESTION = "What is the annual hardware allowance at Zephyrine Instruments?"


def settle(assistant: Assistant, kb: str, timeout_s: float = 120.0) -> None:
    """Wait until nothing of ``kb`` is queued or indexing."""
    deadline = time.monotonic() + timeout_s
    while assistant.indexing(kb):
        assert time.monotonic() < deadline, assistant.ingest_status(kb)
        time.sleep(0.1)


def states(assistant: Assistant, kb: str) -> dict[str, str]:
    return {f.source: f.state for f in assistant.ingest_status(kb)}


@pytest.fixture
def assistant(settings: Settings) -> Assistant:
    return Assistant(settings)


@pytest.fixture
def held(assistant: Assistant) -> Iterator[threading.Lock]:
    """The ingest lock held by the test until it releases it (or the test ends): the worker waits behind it."""
    lock = assistant._parts.ingest_lock
    lock.acquire()
    try:
        yield lock
    finally:
        if lock.locked():
            lock.release()


def test_files_move_from_queued_through_indexing_to_done_or_failed(assistant: Assistant, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    good = write(docs, "leave.md", "# Leave\n\nEvery employee has twenty-five days of annual leave.\n")
    empty = write(docs, "empty.txt", "")
    queued = assistant.queue_ingest([good, empty], kb="hr")
    assert [(f.source, f.state) for f in queued] == [("leave.md", QUEUED), ("empty.txt", QUEUED)]
    assert queued[0].batch == queued[1].batch
    settle(assistant, "hr")
    finished = {f.source: f for f in assistant.ingest_status("hr")}
    assert finished["leave.md"].state == DONE and finished["leave.md"].message == "added"
    assert finished["empty.txt"].state == FAILED and "empty" in finished["empty.txt"].reason
    record = next(r for r in assistant.files("hr") if r.source == "leave.md")
    assert record.added > 0 and record.pages == 0 and record.chunk_ids
    assert good.exists() and empty.exists()  # not uploads: never deleted


def test_a_file_being_indexed_shows_its_progress(assistant: Assistant, tmp_path: Path, held) -> None:
    path = write(tmp_path, "leave.md", "# Leave\n\nTwenty-five days.\n")
    assistant.queue_ingest([path], kb="hr")
    deadline = time.monotonic() + 30
    while states(assistant, "hr")["leave.md"] != INDEXING:  # taken by the worker, waiting for the lock
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert assistant.indexing("hr") == 1
    held.release()
    settle(assistant, "hr")
    (item,) = assistant.ingest_status("hr")
    assert item.state == DONE and item.fraction == 1.0 and item.finished_at is not None


def test_uploads_are_deleted_once_ingested_and_nothing_outside_the_uploads_folder_is(
    assistant: Assistant, tmp_path: Path
) -> None:
    upload = write(assistant.settings.home / "uploads" / "drop-1", "leave.md", "# Leave\n\nTwenty-five days.\n")
    mine = write(tmp_path / "mine", "notes.md", "# Notes\n\nThe office opens at nine.\n")
    assistant.queue_ingest([upload, mine], kb="hr", discard=True)
    settle(assistant, "hr")
    assert set(states(assistant, "hr").values()) == {DONE}
    assert not upload.exists() and not upload.parent.exists()
    assert mine.exists()


def test_cancel_drops_the_queued_files_and_the_running_one_finishes(assistant: Assistant, tmp_path: Path, held) -> None:
    paths = [write(tmp_path / "docs", f"note{i}.md", f"# Note {i}\n\nRoom {i} is on floor {i}.\n") for i in range(4)]
    assistant.queue_ingest(paths, kb="hr")
    assert assistant.indexing("hr") == 4
    deadline = time.monotonic() + 30
    while states(assistant, "hr")["note0.md"] != INDEXING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert assistant.cancel_ingest("hr") == 3
    assert assistant.indexing("hr") == 1
    held.release()
    settle(assistant, "hr")
    assert states(assistant, "hr") == {
        "note0.md": DONE,
        "note1.md": CANCELLED,
        "note2.md": CANCELLED,
        "note3.md": CANCELLED,
    }
    assert [r.source for r in assistant.files("hr")] == ["note0.md"]


def test_finished_files_stay_listed_up_to_a_limit_per_knowledge_base() -> None:
    queue = IngestQueue(keep_finished=3)

    def run(task: IngestTask, progress: ProgressCallback) -> FileOutcome:
        progress(0.5, "half way")
        return FileOutcome(task.source, "added", 1)

    queue.put([IngestTask("a", (Path(f"f{i}"), f"f{i}"), run) for i in range(5)])
    queue.put([IngestTask("b", (Path("g"), "g"), run)])
    assert queue.wait_idle("a", 10) and queue.wait_idle("b", 10)
    assert [(f.source, f.state, f.message) for f in queue.files("a")] == [(f"f{i}", DONE, "added") for i in (2, 3, 4)]
    assert [f.source for f in queue.files("b")] == ["g"]


def test_deleting_a_knowledge_base_cancels_its_queued_files(assistant: Assistant, tmp_path: Path, held) -> None:
    assistant.queue_ingest([write(tmp_path / "docs", "a.md", "# A\n\nAlpha.\n")], kb="other")  # holds the worker
    assistant.queue_ingest([write(tmp_path / "docs", f"{n}.md", f"# {n}\n\n{n}.\n") for n in "bc"], kb="gone")
    assert assistant.indexing("gone") == 2
    with pytest.raises(KnowledgeBaseBusyError):  # an ingest is running (the held lock)
        assistant.delete_knowledge_base("gone")
    assert states(assistant, "gone") == {"b.md": CANCELLED, "c.md": CANCELLED}
    held.release()
    settle(assistant, "other")
    assert assistant.delete_knowledge_base("gone")
    assert not assistant.has_knowledge_base("gone")


def test_a_question_waits_for_its_files_to_be_indexed_then_answers_from_them(assistant: Assistant, held) -> None:
    """The page's bug: a question asked while its files were still being indexed was refused."""
    assistant.queue_ingest([POLICY], kb="policies")
    items = assistant.stream(QUESTION, kb="policies")
    first = next(items)
    assert first == Indexing(1)
    held.release()
    rest = list(items)
    answer = rest[-1]
    assert isinstance(answer, Answer) and not answer.refused, answer
    assert answer.citations and {c.source for c in answer.citations} == {POLICY.name}


def test_a_question_gives_up_waiting_after_question_wait_s(tmp_path: Path) -> None:
    assistant = Assistant(load_settings(home=tmp_path / "kb_home", **{"ingest.question_wait_s": 0.3}))
    with assistant._parts.ingest_lock:
        assistant.queue_ingest([POLICY], kb="policies")
        started = time.monotonic()
        with pytest.raises(KnowledgeBaseBusyError, match="still being indexed"):
            list(assistant.stream(QUESTION, kb="policies"))
        assert time.monotonic() - started < 5


# -- permissions -------------------------------------------------------------------------------------------------


@pytest.fixture
def team(tmp_path: Path) -> tuple[Assistant, dict[str, Assistant]]:
    owner = Assistant(load_settings(home=tmp_path / "kb_home", **{"auth.enabled": True}))
    owner.ingest([POLICY], kb="hr")
    accounts = owner.accounts
    views = {}
    for name, role in (("nobody", None), ("asker", "ask"), ("reader", "read"), ("writer", "write")):
        accounts.add_user(name, "correct horse battery")
        if role:
            accounts.grant(name, "hr", role)
        views[name] = owner.as_user(User(name, admin=False))
    return owner, views


def test_a_user_without_a_grant_is_refused_every_new_verb(team, tmp_path: Path) -> None:
    _, views = team
    nobody = views["nobody"]
    path = write(tmp_path / "docs", "x.md", "# X\n\nSecret.\n")
    calls = [
        lambda: nobody.queue_ingest([path], kb="hr"),
        lambda: nobody.ingest_status("hr"),
        lambda: nobody.cancel_ingest("hr"),
        lambda: nobody.indexing("hr"),
        lambda: nobody.reindex(POLICY.name, kb="hr"),
        lambda: nobody.original(POLICY.name, kb="hr"),
        lambda: nobody.rename_knowledge_base("hr", "people"),
    ]
    for call in calls:
        with pytest.raises(PermissionDeniedError, match="no grant"):
            call()


def test_each_new_verb_needs_its_role(team, tmp_path: Path) -> None:
    owner, views = team
    asker, reader, writer = views["asker"], views["reader"], views["writer"]
    assert asker.ingest_status("hr") == [] and asker.indexing("hr") == 0
    for refused in (
        lambda: asker.original(POLICY.name, kb="hr"),
        lambda: reader.reindex(POLICY.name, kb="hr"),
        lambda: reader.cancel_ingest("hr"),
        lambda: reader.queue_ingest([POLICY], kb="hr"),
        lambda: writer.rename_knowledge_base("hr", "people"),
    ):
        with pytest.raises(PermissionDeniedError, match="does not allow"):
            refused()
    assert reader.original(POLICY.name, kb="hr").read_bytes() == POLICY.read_bytes()
    assert writer.reindex(POLICY.name, kb="hr").state == QUEUED
    settle(owner, "hr")
    assert [f.message for f in owner.ingest_status("hr")] == ["replaced"]
    with pytest.raises(DocumentNotFoundError):
        reader.original("missing.md", kb="hr")


def test_a_new_knowledge_base_from_a_queue_is_its_creators(team, tmp_path: Path) -> None:
    owner, views = team
    nobody = views["nobody"]
    nobody.queue_ingest([write(tmp_path / "docs", "mine.md", "# Mine\n\nMy notes.\n")], kb="notes")
    settle(owner, "notes")
    assert [r.source for r in nobody.files("notes")] == ["mine.md"]
    assert nobody.create_knowledge_base("财务部") == "财务部" and "财务部" in nobody.list_knowledge_bases()
