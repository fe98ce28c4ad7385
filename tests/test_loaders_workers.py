"""Parsing in worker processes: a file that hangs, crashes its parser or eats memory is stopped and reported by
name, and the rest of the batch lands."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ingest.loaders import DEFAULT_LOADERS, LoadContext, LoaderRegistry
from ingest.pipeline import Ingestor
from ingest.splitter import RecursiveSplitter
from ingest.types import Page
from ingest.workers import WorkerPool
from kb_app.assistant import Assistant
from kb_app.settings import IngestSettings, Settings

EN = "The travel policy of Bluewhale Corp allows economy class for flights under six hours."


class HangingLoader:
    suffixes = (".hang",)

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        time.sleep(120)
        return []


class CrashingLoader:
    suffixes = (".crash",)

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        os.kill(os.getpid(), signal.SIGSEGV)  # what a C parser's bug looks like
        return []


class GreedyLoader:
    suffixes = (".greedy",)

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        hog = bytearray(8 * 1024**3)
        return [Page(str(len(hog)))]


def hostile_registry() -> LoaderRegistry:
    return LoaderRegistry([*DEFAULT_LOADERS, HangingLoader(), CrashingLoader(), GreedyLoader()], max_file_mb=5)


def make_batch(folder: Path) -> list[tuple[Path, str]]:
    folder.mkdir()
    names = ["a.txt", "slow.hang", "b.txt", "boom.crash", "c.txt", "hog.greedy", "d.txt"]
    for name in names:
        (folder / name).write_text(f"{name}: {EN}", encoding="utf-8")
    return [(folder / name, name) for name in names]


def test_pool_stops_hangs_crashes_and_memory_hogs_by_name(tmp_path: Path) -> None:
    files = make_batch(tmp_path / "docs")
    registry = hostile_registry()
    pool = WorkerPool(workers=2, memory_mb=1024)
    started = time.perf_counter()
    try:
        results = list(pool.map(registry.load_with_notes, [(p, s) for p, s in files], [s for _, s in files], 3.0))
    finally:
        pool.close()
    assert time.perf_counter() - started < 20
    by_name = {source: result for (_, source), result in zip(files, results, strict=True)}
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        assert by_name[name].error is None and EN in by_name[name].value[0].pages[0].text
    assert str(by_name["slow.hang"].error).startswith("slow.hang: parsing took longer than the 3 s limit")
    assert str(by_name["boom.crash"].error).startswith("boom.crash: the parser crashed (signal 11: SIGSEGV)")
    assert str(by_name["hog.greedy"].error).startswith("hog.greedy: ran out of memory (limit 1024 MB)")


def test_workers_are_reused_and_replaced(tmp_path: Path) -> None:
    pool = WorkerPool(workers=1, memory_mb=1024)
    try:
        first = list(pool.map(os.getpid, [(), ()], ["x", "y"], 10.0))
        assert first[0].value == first[1].value != os.getpid()  # one worker, reused
        crash = tmp_path / "boom.crash"
        crash.write_text("x", encoding="utf-8")
        registry = hostile_registry()
        assert next(pool.map(registry.load_with_notes, [(crash, "boom.crash")], ["boom.crash"], 10.0)).error
        after = list(pool.map(os.getpid, [()], ["z"], 10.0))
        assert after[0].value not in (first[0].value, os.getpid())  # a fresh worker took over
    finally:
        pool.close()


def test_in_process_mode_has_the_same_contract(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(EN, encoding="utf-8")
    (tmp_path / "b.pdf").write_bytes(b"%PDF-1.4 broken")
    registry = LoaderRegistry()
    tasks = [(tmp_path / "a.txt", "a.txt"), (tmp_path / "b.pdf", "b.pdf")]
    results = list(WorkerPool(workers=0).map(registry.load_with_notes, tasks, ["a.txt", "b.pdf"], 1.0))
    assert results[0].value[0].pages[0].text == EN
    assert str(results[1].error).startswith("b.pdf: not a readable PDF")


def test_ingest_batch_survives_hostile_files(tmp_path: Path, settings: Settings) -> None:
    files = make_batch(tmp_path / "docs")
    assistant = Assistant(settings)
    kb = assistant.knowledge_base()
    limits = IngestSettings(workers=1, timeout_s=3.0, memory_mb=1024)
    ingestor = Ingestor(hostile_registry(), RecursiveSplitter(settings.splitter), assistant.embedder, kb, limits)
    report = ingestor.ingest(files)
    assert {f.source for f in report.by_status("added")} == {"a.txt", "b.txt", "c.txt", "d.txt"}
    assert {f.source for f in report.failed} == {"slow.hang", "boom.crash", "hog.greedy"}
    assert all(f.reason.startswith(f.source) for f in report.failed)
    failures = {r.source: r.error for r in kb.manifest.failures()}
    assert failures.keys() == {"slow.hang", "boom.crash", "hog.greedy"}
    assert "took longer than the 3 s limit" in failures["slow.hang"]
    assert kb.vectors.count() == 4 == len(kb.lexical)
