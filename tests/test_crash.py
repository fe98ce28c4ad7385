"""Crash safety with real processes: an ingest (or sync) is killed with SIGKILL in the middle of writing a file to
the stores; the next process that opens the knowledge base finds the manifest, Chroma and the lexical index in
agreement, with no half-ingested file, and finishes the job. Parser workers die with the killed process.

Every Chroma access happens in a child process (this file run as a script), so no process ever holds a stale view
of a store another one wrote. The children use a fast deterministic embedder to keep the test short.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from tests.children import ChildProcess

ROOT = Path(__file__).resolve().parent.parent
FAKE_EMBEDDER = "test/fake-embedder-8d"


class FakeEmbedder:
    """Deterministic 8-d vectors from a hash of the text; ``delay`` seconds per batch to make ingests take time."""

    name = FAKE_EMBEDDER
    dimension = 8

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def _vector(self, text: str) -> np.ndarray:
        raw = np.frombuffer(hashlib.sha256(text.encode()).digest()[:32], dtype=np.uint8).astype(np.float32)
        vector = raw.reshape(8, 4).sum(axis=1) + 1.0
        return vector / np.linalg.norm(vector)

    def embed_passages(self, texts) -> np.ndarray:
        time.sleep(self.delay)
        return np.vstack([self._vector(t) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)


# --- the child process --------------------------------------------------------------------------------------------


def _state(kb, recovered: list[str]) -> dict:
    records = kb.manifest.all()
    ids = [i for r in records for i in r.chunk_ids]
    return {
        "recovered": recovered,
        "done": sorted(r.source for r in records if r.status == "done"),
        "pending": sorted(r.source for r in records if r.status != "done"),
        "manifest_chunks": len(ids),
        "unique_ids": len(set(ids)),
        "vectors": kb.vectors.count(),
        "vectors_found": len(kb.vectors.get(ids)),
        "lexical_matches": kb.lexical.ids() == set(ids),
        "sources_match": all(c.source == r.source for r in records for c in kb.vectors.get(r.chunk_ids)),
    }


def child_main(home: str, folder: str, op: str, pause: str, delay: float, batch: int) -> None:
    sys.path.insert(0, str(ROOT))
    from ingest.manifest import Manifest
    from kb_app.assistant import Assistant
    from kb_app.settings import load_settings

    settings = load_settings(
        home=home, **{"splitter.chunk_size": 200, "splitter.chunk_overlap": 20, "ingest.write_batch_files": batch}
    )
    assistant = Assistant(settings, embedder=FakeEmbedder(delay))
    pending = Manifest(assistant.catalog.directory(settings.kb) / "manifest.sqlite")
    recovered = sorted(r.source for r in pending.pending())
    pending.close()
    kb = assistant.knowledge_base()
    print("STATE " + json.dumps(_state(kb, recovered)), flush=True)

    def stall(where: str) -> None:
        print(f"MIDWAY {where}", flush=True)
        time.sleep(600)

    if pause.startswith("lexical:"):  # after the chunks of the n-th file reached Chroma, before the lexical index
        target = int(pause.split(":")[1])
        update, seen = kb.lexical.update, []

        def paused_update(add=(), remove=()):
            add = list(add)
            if add:
                seen.append(1)
                if len(seen) == target:
                    stall("lexical")
            return update(add=add, remove=remove)

        kb.lexical.update = paused_update
    elif pause == "rename":  # the manifest row has moved, the chunks' metadata is not rewritten yet
        add = kb.vectors.add

        def paused_add(chunks, embeddings):
            if kb.manifest.pending() and any(r.chunk_ids == [c.id for c in chunks] for r in kb.manifest.pending()):
                stall("rename")
            return add(chunks, embeddings)

        kb.vectors.add = paused_add
    print(f"READY {os.getpid()}", flush=True)
    report = assistant.sync(Path(folder)) if op == "sync" else assistant.ingest([Path(folder)])
    print("REPORT " + json.dumps([f.__dict__ for f in report.files]), flush=True)
    print("DONE " + json.dumps(_state(kb, recovered)), flush=True)


# --- the test side ------------------------------------------------------------------------------------------------


class Child(ChildProcess):
    def __init__(
        self, home: Path, folder: Path, op: str = "ingest", pause: str = "none", delay: float = 0.0, batch: int = 1
    ) -> None:
        super().__init__(__file__, str(home), str(folder), op, pause, str(delay), str(batch))

    def state(self, prefix: str = "STATE") -> dict:
        return json.loads(self.wait_for(prefix + " "))

    def kill(self) -> None:
        """SIGKILL, then check that its parser processes die with it."""
        family = psutil.Process(self.proc.pid).children(recursive=True)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        _, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"processes outlived the killed ingest: {alive}"
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.proc.stderr:
            self.proc.stderr.close()

    def finish(self) -> dict:
        state = self.state("DONE")
        self.proc.wait(30)
        return state


def assert_consistent(state: dict) -> None:
    assert state["pending"] == []
    assert state["vectors"] == state["manifest_chunks"] == state["unique_ids"] == state["vectors_found"]
    assert state["lexical_matches"] and state["sources_match"]


def make_folder(folder: Path, n: int, words: int = 120) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"doc{i:02d}.txt"
        text = " ".join(f"file{i} word{j} 第{j}句话。" for j in range(words))
        (folder / name).write_text(text, encoding="utf-8")
        names.append(name)
    return names


def test_kill_between_chroma_and_lexical_writes(tmp_path: Path) -> None:
    home, folder = tmp_path / "home", tmp_path / "docs"
    names = make_folder(folder, 6)
    child = Child(home, folder, pause="lexical:4")
    assert child.state()["done"] == []
    child.wait_for("MIDWAY")
    child.kill()  # doc03's chunks are in Chroma and in the manifest as pending, not in the lexical index

    finisher = Child(home, folder)
    after = finisher.state()
    assert after["recovered"] == ["doc03.txt"]
    assert after["done"] == names[:3]
    assert_consistent(after)
    final = finisher.finish()
    assert final["done"] == names
    assert_consistent(final)


def test_kill_in_a_batched_write(tmp_path: Path) -> None:
    home, folder = tmp_path / "home", tmp_path / "docs"
    names = make_folder(folder, 7)
    child = Child(home, folder, pause="lexical:2", batch=3)  # files are written three at a time
    child.wait_for("MIDWAY")
    child.kill()  # the second batch (doc03-doc05) is in Chroma and pending, not in the lexical index

    finisher = Child(home, folder, batch=3)
    after = finisher.state()
    assert after["recovered"] == names[3:6] and after["done"] == names[:3]
    assert_consistent(after)
    final = finisher.finish()
    assert final["done"] == names
    assert_consistent(final)


def test_kill_while_replacing_a_changed_file(tmp_path: Path) -> None:
    home, folder = tmp_path / "home", tmp_path / "docs"
    names = make_folder(folder, 3)
    assert Child(home, folder).finish()["done"] == names
    (folder / "doc01.txt").write_text("changed content 内容已修改。" * 40, encoding="utf-8")
    child = Child(home, folder, pause="lexical:1")
    child.wait_for("MIDWAY")
    child.kill()  # the old chunks are gone, the new ones half written

    finisher = Child(home, folder)
    after = finisher.state()
    assert after["recovered"] == ["doc01.txt"] and after["done"] == ["doc00.txt", "doc02.txt"]
    assert_consistent(after)
    final = finisher.finish()
    assert final["done"] == names
    assert_consistent(final)


def test_kill_during_a_rename_in_sync(tmp_path: Path) -> None:
    home, folder = tmp_path / "home", tmp_path / "docs"
    make_folder(folder, 3)
    assert Child(home, folder, op="sync").finish()["done"] == ["doc00.txt", "doc01.txt", "doc02.txt"]
    (folder / "doc01.txt").rename(folder / "renamed.txt")
    child = Child(home, folder, op="sync", pause="rename")
    child.wait_for("MIDWAY")
    child.kill()

    finisher = Child(home, folder, op="sync")
    after = finisher.state()
    assert after["recovered"] == ["renamed.txt"] and after["done"] == ["doc00.txt", "doc02.txt"]
    assert_consistent(after)
    final = finisher.finish()
    assert final["done"] == ["doc00.txt", "doc02.txt", "renamed.txt"]
    assert_consistent(final)


def test_kill_at_random_moments(tmp_path: Path) -> None:
    home, folder = tmp_path / "home", tmp_path / "docs"
    names = make_folder(folder, 12, words=200)
    rng = random.Random(7)
    for _ in range(2):
        child = Child(home, folder, delay=0.05, batch=3)
        assert_consistent(child.state())
        child.wait_for("READY")
        time.sleep(rng.uniform(0.2, 1.5))
        child.kill()
    finisher = Child(home, folder)
    assert_consistent(finisher.state())
    final = finisher.finish()
    assert final["done"] == names
    assert_consistent(final)


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), int(sys.argv[6]))
