"""Concurrent processes and threads never destroy or hide each other's work.

Every Chroma access of a writer happens in a child process (this file run as a script with one JSON argument), as
in ``tests/test_crash.py``: embedded Chroma is one process only, so the test process never holds a view of a store
that a child writes. The children use the fake embedder of test_crash, slowed or gated where a writer has to be
caught in the middle of its work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.children import ScriptChild

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a child script
    sys.path.insert(0, str(ROOT))

from ingest.errors import KbError, KnowledgeBaseBusyError, StoreError  # noqa: E402
from ingest.lexical_store import Bm25Store, tokenize  # noqa: E402
from ingest.locks import StoreLock, WriterLock  # noqa: E402
from tests.test_crash import FakeEmbedder  # noqa: E402

KB = "notes"
STORE_HINT_ENV = "KB_STORE__MODE=http"


def word(i: int) -> str:
    """A word found in note ``i`` only (letters, so the stemmer leaves it whole)."""
    return f"xylo{chr(97 + i)}{chr(97 + i)}q"


def make_notes(folder: Path, n: int, first: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(first, first + n):
        name = f"note{i:02d}.txt"
        (folder / name).write_text(f"Note {i} is about {word(i)} and nothing else. 第{i}条笔记。", encoding="utf-8")
        names.append(name)
    return names


# --- the child process --------------------------------------------------------------------------------------------


class GatedEmbedder(FakeEmbedder):
    """On its first batch, says so and waits for the ``gate`` file: its ingest is caught holding the writer lock."""

    def __init__(self, delay: float, gate: str) -> None:
        super().__init__(delay)
        self._gate = Path(gate) if gate else None

    def embed_passages(self, texts):
        if self._gate is not None:
            print("HOLDING", flush=True)
            while not self._gate.exists():
                time.sleep(0.05)
            self._gate = None
        return super().embed_passages(texts)


def _wait_file(path: str) -> None:
    while path and not Path(path).exists():
        time.sleep(0.05)


def _error(exc: KbError, started: float) -> dict:
    return {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint, "s": time.monotonic() - started}


def _state(assistant) -> dict:
    """What a fresh process sees: every manifest chunk in Chroma (its own nearest neighbour) and in the lexical index,
    each note by its word."""
    kb = assistant.knowledge_base(create=False)
    records = kb.manifest.all()
    owner = {cid: r.source for r in records for cid in r.chunk_ids}
    ids = list(owner)
    found = {}
    for record in records:
        i = int(record.source[4:6])
        hits = kb.lexical.search(word(i), 3)
        found[record.source] = owner.get(hits[0][0]) if hits else None
    vectors = kb.vectors.embeddings(ids)
    nearest = {cid: [c.id for c in kb.vectors.query(vector, 1)] for cid, vector in vectors.items()}
    return {
        "dense_missing": sorted(cid for cid, top in nearest.items() if top != [cid]),  # not in the HNSW index
        "done": sorted(r.source for r in records if r.status == "done"),
        "pending": sorted(r.source for r in records if r.status != "done"),
        "chunks": len(ids),
        "in_chroma": len(kb.vectors.get(ids)),
        "in_lexical": len(set(ids) & kb.lexical.ids()),
        "found": found,
    }


def child_main(args: dict) -> None:
    from kb_app.assistant import Assistant
    from kb_app.settings import load_settings

    overrides = {"ingest.workers": 0, "ingest.write_batch_files": 1, "ingest.lock_wait_s": args.get("wait_s", 600.0)}
    settings = load_settings(home=args["home"], kb=KB, **overrides)
    embedder = GatedEmbedder(args.get("delay", 0.0), args.get("gate", ""))
    assistant = Assistant(settings, embedder=embedder)
    role = args["role"]
    if role == "reader":  # opens the knowledge base afresh every 50 ms, as `kb files` run in a loop would
        opens = 0
        while not Path(args["stop"]).exists():
            fresh = Assistant(settings, embedder=FakeEmbedder())
            fresh.knowledge_base()
            fresh.files()
            opens += 1
            if opens == 1:
                print("READY", flush=True)
            time.sleep(0.05)
        print(f"OPENS {opens}", flush=True)
        return
    if role == "check":
        print("STATE " + json.dumps(_state(assistant)), flush=True)
        return
    if role == "serve":
        try:
            assistant.hold_store()
        except KbError as exc:
            print("ERROR " + json.dumps(_error(exc, time.monotonic())), flush=True)
            return
        print(f"READY {os.getpid()}", flush=True)
        _wait_file(args["go"])  # then add a file through the server's own assistant, as the page does
        report = assistant.ingest([Path(args["folder"])])
        print("DONE " + json.dumps([f.status for f in report.files]), flush=True)
        _wait_file(args["stop"])
        return
    if role == "verbs":  # every write verb, each refused or done
        folder, results = Path(args["folder"]), {}
        verbs = {
            "ingest": lambda: assistant.ingest([folder]),
            "sync": lambda: assistant.sync(folder),
            "remove_file": lambda: assistant.remove_file("note00.txt"),
            "delete_knowledge_base": lambda: assistant.delete_knowledge_base(KB),
        }
        for name in args["verbs"]:
            started = time.monotonic()
            try:
                verbs[name]()
                results[name] = "ok"
            except KbError as exc:
                results[name] = _error(exc, started)
        print("RESULTS " + json.dumps(results), flush=True)
        return
    assistant.knowledge_base()  # role "writer"
    print(f"READY {os.getpid()}", flush=True)
    _wait_file(args.get("go", ""))
    started = time.monotonic()
    try:
        report = assistant.ingest(
            [Path(args["folder"])], progress=lambda f, message: print(f"PROGRESS {message}", flush=True)
        )
    except KbError as exc:
        print("ERROR " + json.dumps(_error(exc, started)), flush=True)
        return
    print("DONE " + json.dumps([f.status for f in report.files]), flush=True)


# --- the test side ------------------------------------------------------------------------------------------------


class Child(ScriptChild):
    def __init__(self, **args) -> None:
        super().__init__(__file__, **args)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.end()


def check(home: Path) -> dict:
    child = Child(role="check", home=home)
    state = child.json("STATE")
    child.end()
    return state


def assert_all_findable(state: dict, names: list[str]) -> None:
    assert state["done"] == names and state["pending"] == []
    assert state["in_chroma"] == state["in_lexical"] == state["chunks"] >= len(names)
    assert state["found"] == {name: name for name in names}, "a note cannot be found by its own word"
    assert state["dense_missing"] == [], "chunks a vector query cannot find"


def test_a_reader_opening_during_an_ingest_destroys_nothing(tmp_path: Path) -> None:
    """The reviewer's reproduction: opening a knowledge base (`kb files`) every 50 ms while another process ingests
    16 notes. Opening used to run crash recovery on the writer's pending rows, deleting its vectors; the writer then
    marked the files done, and 15 of 16 notes could not be found by their own word."""
    home, folder, go, stop = tmp_path / "home", tmp_path / "notes", tmp_path / "go", tmp_path / "stop"
    names = make_notes(folder, 16)
    writer = Child(role="writer", home=home, folder=folder, delay=0.2, go=go)
    writer.wait_for("READY")
    reader = Child(role="reader", home=home, stop=stop)
    reader.wait_for("READY")
    go.touch()
    assert writer.json("DONE") == ["added"] * 16
    writer.end()
    stop.touch()
    opens = int(reader.wait_for("OPENS"))
    reader.end()
    assert opens >= 20, "the reader did not open the knowledge base while the writer wrote"
    assert_all_findable(check(home), names)


def test_a_second_writer_waits_for_the_first_then_proceeds(tmp_path: Path) -> None:
    home, first_folder, second_folder, gate = tmp_path / "home", tmp_path / "a", tmp_path / "b", tmp_path / "gate"
    first_names = make_notes(first_folder, 3)
    second_names = make_notes(second_folder, 3, first=3)
    first = Child(role="writer", home=home, folder=first_folder, gate=gate)
    first_pid = int(first.wait_for("READY"))
    first.wait_for("HOLDING")  # inside its ingest, holding the writer lock
    second = Child(role="writer", home=home, folder=second_folder)
    second.wait_for("READY")
    notice = second.wait_for("PROGRESS waiting")
    assert f"process {first_pid}" in notice and KB in notice
    gate.touch()
    assert first.json("DONE") == ["added"] * 3
    assert second.json("DONE") == ["added"] * 3
    first.end()
    second.end()
    assert_all_findable(check(home), first_names + second_names)


def test_a_second_writer_gives_up_naming_the_holder(tmp_path: Path) -> None:
    home, first_folder, second_folder, gate = tmp_path / "home", tmp_path / "a", tmp_path / "b", tmp_path / "gate"
    make_notes(first_folder, 2)
    make_notes(second_folder, 2, first=2)
    first = Child(role="writer", home=home, folder=first_folder, gate=gate)
    first_pid = int(first.wait_for("READY"))
    first.wait_for("HOLDING")
    second = Child(role="writer", home=home, folder=second_folder, wait_s=0.5)
    error = second.json("ERROR")
    second.end()
    gate.touch()
    first.json("DONE")
    first.end()
    assert error["type"] == "KnowledgeBaseBusyError"
    assert f"is being written by process {first_pid}" in error["message"]
    assert "KB_INGEST__LOCK_WAIT_S" in error["hint"]


def test_kb_serve_holds_the_embedded_store_against_other_processes(tmp_path: Path) -> None:
    """A write from another process while `kb serve` runs on embedded Chroma is refused at once, naming the server
    and the way out; the server's own writes go on; two servers cannot share a store; a killed server frees it."""
    home, folder, extra, go, stop = (tmp_path / n for n in ("home", "notes", "extra", "go", "stop"))
    names = make_notes(folder, 2)
    make_notes(extra, 1, first=2)
    setup = Child(role="writer", home=home, folder=folder)
    setup.json("DONE")
    setup.end()

    server = Child(role="serve", home=home, folder=extra, go=go, stop=stop)
    server_pid = int(server.wait_for("READY"))
    verbs = ["ingest", "sync", "remove_file", "delete_knowledge_base"]
    refused = Child(role="verbs", home=home, folder=folder, verbs=verbs).json("RESULTS")
    for verb in verbs:
        error = refused[verb]
        assert error != "ok", f"{verb} wrote to a store that kb serve holds"
        assert error["type"] == "KnowledgeBaseBusyError"
        assert f"kb serve (process {server_pid}) holds the embedded store in KB_HOME" in error["message"]
        assert STORE_HINT_ENV in error["hint"] and "through the page" in error["hint"]
        assert error["s"] < 30, f"{verb} waited for the server instead of failing at once"  # lock_wait_s is 600
    second_server = Child(role="serve", home=home, folder=extra, go=go, stop=stop)
    assert f"kb serve (process {server_pid})" in second_server.json("ERROR")["message"]
    second_server.end()
    go.touch()
    assert server.json("DONE") == ["added"]  # the server's own ingest
    assert check(home)["done"] == [*names, "note02.txt"]  # reading from another process is fine
    server.kill()

    after = Child(role="verbs", home=home, folder=folder, verbs=["remove_file"]).json("RESULTS")
    assert after == {"remove_file": "ok"}


# --- in one process: threads, lock objects, the lexical index -----------------------------------------------------


def test_delete_while_ingesting_in_another_thread_is_refused_cleanly(settings) -> None:
    """Audit L10: deleting a knowledge base while another thread ingests into it gives KnowledgeBaseBusyError (not a
    sqlite ProgrammingError from a closed manifest), and the ingest lands whole."""
    from kb_app.assistant import Assistant
    from kb_app.settings import load_settings

    folder = settings.home.parent / "notes"
    names = make_notes(folder, 3)
    entered, release = threading.Event(), threading.Event()

    class Held(FakeEmbedder):
        def embed_passages(self, texts):
            entered.set()
            release.wait(60)
            return super().embed_passages(texts)

    assistant = Assistant(settings, embedder=Held())
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(assistant.ingest([folder])))
    worker.start()
    try:
        assert entered.wait(60)
        with pytest.raises(KnowledgeBaseBusyError):
            assistant.delete_knowledge_base(settings.kb)
        impatient = load_settings(home=settings.home, **{"ingest.lock_wait_s": 0.3})
        other = Assistant(impatient, embedder=FakeEmbedder(), client=assistant.client)
        with pytest.raises(KnowledgeBaseBusyError, match="being written by this process"):
            other.delete_knowledge_base(settings.kb)  # another Assistant: the writer lock, not the thread lock
    finally:
        release.set()
        worker.join(60)
    assert [f.status for f in outcome[0].files] == ["added"] * 3
    assert [r.source for r in assistant.files()] == names
    assert assistant.delete_knowledge_base(settings.kb)


def test_writing_to_a_deleted_knowledge_base_is_a_clean_error(settings) -> None:
    """A knowledge base handle kept by one caller after another deleted it: a KbError, not ProgrammingError."""
    from kb_app.assistant import Assistant

    assistant = Assistant(settings, embedder=FakeEmbedder())
    kb = assistant.knowledge_base()
    assert assistant.delete_knowledge_base(settings.kb)
    with pytest.raises(StoreError, match="was deleted"), kb.writing(1.0):
        pass


def test_the_next_writer_removes_what_a_dead_writer_left(settings) -> None:
    """A knowledge base opened before another writer died (a `kb serve` running for days) used to keep the dead
    writer's pending rows, listed by `kb files` but not searchable, until it was opened again; now the next
    writer, once it holds the lock, removes them."""
    import numpy as np

    from ingest.types import Chunk
    from kb_app.assistant import Assistant

    folder = settings.home.parent / "notes"
    make_notes(folder, 1)
    assistant = Assistant(settings, embedder=FakeEmbedder())
    kb = assistant.knowledge_base()
    half = Chunk("half-1", "half written", "dead.txt", None, 0, 12, "0" * 64)
    kb.manifest.begin("dead.txt", "0" * 64, 12, [half.id])  # what a writer killed mid-write leaves
    kb.vectors.add([half], np.ones((1, 8), dtype=np.float32))
    kb.lexical.update(add=[(half.id, half.text)])
    assistant.ingest([folder])
    assert [r.source for r in assistant.files()] == ["note00.txt"]
    assert kb.vectors.get([half.id]) == [] and half.id not in kb.lexical.ids()


def test_the_writer_lock_is_exclusive_between_threads_and_reentrant_in_one(tmp_path: Path) -> None:
    """A second thread on the same lock object waits and gives up with a message (it used to block on the guard
    without a time limit); the holding thread may take it again; an opener's repair is skipped meanwhile."""
    lock = WriterLock(tmp_path, KB)
    other = WriterLock(tmp_path, KB)
    outcome: list = []

    def second() -> None:
        try:
            with lock.held(0.3):
                outcome.append("taken")
        except KnowledgeBaseBusyError as exc:
            outcome.append(exc.message)

    with lock.held(1.0) as outermost, lock.held(1.0) as nested:
        assert outermost and not nested
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "a second thread blocked on the lock without a time limit"
        assert other.run_if_free(lambda: None) is False
    assert outcome == [f"knowledge base '{KB}' is being written by another thread of this process"]
    assert other.run_if_free(lambda: None) is True
    with lock.held(0.3):
        pass


def _lock_holder(directory: str) -> None:
    with WriterLock(Path(directory), KB).held(1.0):
        StoreLock(Path(directory)).hold(1.0)
        print("READY", flush=True)
        time.sleep(600)


def test_a_killed_holder_leaves_nothing_locked(tmp_path: Path) -> None:
    """kill -9 of a process holding both locks frees them at once; while it lived, both named it."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_concurrency import _lock_holder; "
    proc = subprocess.Popen(
        [sys.executable, "-c", code + f"_lock_holder({str(tmp_path)!r})"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    lock, store = WriterLock(tmp_path, KB), StoreLock(tmp_path)
    assert lock.run_if_free(lambda: None) is False and lock.holder() == f"process {proc.pid}"
    with pytest.raises(KnowledgeBaseBusyError, match=f"kb serve \\(process {proc.pid}\\)"), store.shared():
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    assert lock.run_if_free(lambda: None) is True
    with store.shared():
        pass


def test_a_lexical_index_sees_what_another_connection_wrote(tmp_path: Path) -> None:
    """`kb serve` keeps one Bm25Store open; a `kb sync` elsewhere adds and removes chunks through another. The
    long-running one used to keep the tokens it loaded at open: it never found the new chunk, kept finding the
    removed one, and its IDF went stale."""
    server, syncer = Bm25Store(tmp_path / "lexical"), Bm25Store(tmp_path / "lexical")
    syncer.update(add=[("a", "the quokka sleeps"), ("b", "the wombat digs")])
    assert [cid for cid, _ in server.search("quokka", 5)] == ["a"]
    idf_before = server.idf(["wombat"])["wombat"]
    syncer.update(add=[("c", "another wombat digs deeper")])
    assert [cid for cid, _ in server.search("deeper", 5)] == ["c"]
    assert server.idf(["wombat"])["wombat"] < idf_before
    assert server.tokens(["c"]) == {"c": tokenize("another wombat digs deeper")}
    syncer.update(remove=["a"])
    assert server.search("quokka", 5) == []
    assert server.ids() == {"b", "c"} and len(server) == 2
    server.update(add=[("d", "a platypus swims")])  # and the other way round, after its own write
    assert [cid for cid, _ in syncer.search("platypus", 5)] == ["d"]
    syncer.update(add=[("d", "a platypus dives")])  # the same id written again with other tokens
    assert [cid for cid, _ in server.search("dives", 5)] == ["d"] and server.search("swims", 5) == []
    server.close()
    syncer.close()


def test_jieba_never_reads_a_cache_another_user_could_plant(tmp_path: Path) -> None:
    """Audit L4: jieba loads ``$TMPDIR/jieba.cache`` with ``marshal.load``. A planted cache (here an empty dictionary,
    which cuts Chinese into single characters) must be ignored: the cache lives in a folder of the store's."""
    import marshal

    planted, cache = tmp_path / "tmp", tmp_path / "home" / "kbs" / ".cache"
    planted.mkdir()
    (planted / "jieba.cache").write_bytes(marshal.dumps(({}, 1)))
    code = (
        f"import sys, json, jieba; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
        "from ingest.lexical_store import Bm25Store, tokenize; "
        f"Bm25Store(Path({str(tmp_path / 'lexical')!r}), cache_dir=Path({str(cache)!r})); "
        "print(json.dumps([tokenize('中华人民共和国'), jieba.dt.tmp_dir]))"
    )
    env = {**os.environ, "TMPDIR": str(planted)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    tokens, tmp_dir = json.loads(out.stdout.strip().splitlines()[-1])
    assert "人民" in tokens and "共和国" in tokens
    assert tmp_dir == str(cache) and (cache / "jieba.cache").is_file()
    assert (cache.stat().st_mode & 0o077) == 0


if __name__ == "__main__":
    child_main(json.loads(sys.argv[1]))


def test_many_creating_one_knowledge_base_at_once_all_succeed(tmp_path: Path) -> None:
    """Two writers on one Chroma server may both be first to create a knowledge base (seen in CI: they shared one
    temporary file name and the second rename found it gone)."""
    from ingest.catalog import Catalog

    failures: list[BaseException] = []
    for round_ in range(40):
        catalog = Catalog(tmp_path / f"kbs{round_}", client=None)
        start = threading.Barrier(6)

        def create(catalog: Catalog = catalog, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                catalog.create("notes")
            except OSError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=create) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert catalog.names() == ["notes"]
    assert failures == []
