"""Ingest benchmark: ingestion, with its embedding workers, against embedding alone in one process.

    .venv/bin/python bench/ingest.py                    # all of ../shared/eval/zh_docs (~10 min, 2 cores)
    .venv/bin/python bench/ingest.py --files 100        # the first 100 files, for a quick look
    .venv/bin/python bench/ingest.py --embed-workers 1  # embedding in the app process, as before the pool

Ingests the documents into a fresh temporary KB_HOME with the configured splitter and embedder, embedding in
``embedding.workers`` processes (0: automatic; started and warm before the clock starts, as they stay between
ingests in the app), then embeds the very same chunks again, in the same batches, with the same embedder in this
process and nothing else: the single-process cost of embedding. Ingest time / embed-only time below 1 is what the
workers win back beyond everything else (loading, splitting, Chroma, BM25, manifest) ingestion adds.
CPU time (this process and its children: the parser and embedding workers) is shown beside it.
Exits 1 when the wall-clock ratio is above the target (0.6).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.embed_pool import shared_embed_pool  # noqa: E402
from ingest.pipeline import EMBED_BATCH  # noqa: E402
from kb_app.assistant import Assistant  # noqa: E402
from kb_app.settings import load_settings  # noqa: E402

DOCS = ROOT.parent / "shared" / "eval" / "zh_docs"
TARGET_RATIO = 0.6


def cpu_seconds() -> float:
    """CPU time of this process and of its live descendants (workers are kept, so never reaped and counted)."""
    me = psutil.Process()
    total = time.process_time()
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=DOCS, help="folder of documents to ingest")
    parser.add_argument("--files", type=int, default=None, help="only the first N files (sorted by name)")
    parser.add_argument("--chunk-size", type=int, default=None, help="splitter.chunk_size (default: settings)")
    parser.add_argument("--chunk-overlap", type=int, default=None, help="splitter.chunk_overlap")
    parser.add_argument("--embed-workers", type=int, default=None, help="embedding.workers (default: settings)")
    args = parser.parse_args(argv)

    files = sorted(p for p in args.docs.iterdir() if p.is_file() and not p.name.startswith("."))
    files = files[: args.files] if args.files else files
    home = Path(tempfile.mkdtemp(prefix="kb-bench-ingest-"))
    try:
        settings = load_settings(
            home=home,
            kb="bench",
            **{
                "splitter.chunk_size": args.chunk_size,
                "splitter.chunk_overlap": args.chunk_overlap,
                "embedding.workers": args.embed_workers,
            },
        )
        assistant = Assistant(settings)
        started = time.perf_counter()
        embedder = assistant.embedder
        assistant.knowledge_base("bench")  # Chroma client and empty stores: not part of the per-file cost
        pool = shared_embed_pool(settings.embedding)
        if pool is not None:
            pool.start()  # the app keeps its embedding workers between ingests: not part of the per-file cost
        workers = f"{pool.size} processes" if pool is not None else "1 (in this process)"
        setup = time.perf_counter() - started

        load_before = os.getloadavg()[0]
        started, cpu = time.perf_counter(), cpu_seconds()
        report = assistant.ingest(files, kb="bench")
        ingest_s, ingest_cpu = time.perf_counter() - started, cpu_seconds() - cpu
        if report.failed:
            print(f"{len(report.failed)} files failed, e.g. {report.failed[0].reason}")
            return 2

        started = time.perf_counter()
        again = assistant.ingest(files, kb="bench")
        unchanged_s = time.perf_counter() - started
        assert not again.chunks_added, "re-ingesting unchanged files added chunks"

        # The same chunks, in the same order and batches, embedded with nothing else around them.
        knowledge_base = assistant.knowledge_base("bench")
        per_file = [[c.text for c in knowledge_base.vectors.get(r.chunk_ids)] for r in assistant.files("bench")]
        texts = [t for chunk_texts in per_file for t in chunk_texts]
        started, cpu = time.perf_counter(), time.process_time()
        for chunk_texts in per_file:
            for start in range(0, len(chunk_texts), EMBED_BATCH):
                embedder.embed_passages(chunk_texts[start : start + EMBED_BATCH])
        embed_s, embed_cpu = time.perf_counter() - started, time.process_time() - cpu
        load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(home, ignore_errors=True)

    megabytes = sum(p.stat().st_size for p in files) / 1e6
    chunks = len(texts)
    ratio = ingest_s / embed_s
    print(
        f"\n{args.docs} ({len(files)} files), chunk_size {settings.splitter.chunk_size}, "
        f"overlap {settings.splitter.chunk_overlap}, embedder {embedder.name}, embedding workers {workers}; "
        f"setup {setup:.1f} s"
    )
    rows = [
        ("files", f"{len(files)}"),
        ("MB", f"{megabytes:.2f}"),
        ("chunks", f"{chunks}"),
        ("mean chunk length (chars)", f"{statistics.fmean(len(t) for t in texts):.0f}"),
        ("ingest (s)", f"{ingest_s:.1f}"),
        ("files/s", f"{len(files) / ingest_s:.2f}"),
        ("MB/s", f"{megabytes / ingest_s:.4f}"),
        ("chunks/s", f"{chunks / ingest_s:.2f}"),
        ("embedding workers", workers),
        ("embed the same chunks only, one process (s)", f"{embed_s:.1f}"),
        ("ingest / embed-only", f"{ratio:.3f} (target <= {TARGET_RATIO})"),
        ("same, CPU time with children", f"{ingest_cpu:.1f} s / {embed_cpu:.1f} s = {ingest_cpu / embed_cpu:.3f}"),
        ("re-ingest, all unchanged (s)", f"{unchanged_s:.2f}"),
    ]
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if max(load_before, load_after) > (os.cpu_count() or 2) + 0.5:
        print(
            f"warning: load average {load_before:.1f} / {load_after:.1f} on {os.cpu_count()} cores: other work "
            "skews the wall-clock ratio"
        )
    verdict = f"ingestion takes {ratio:.2f}x the time of embedding alone in one process (target <= {TARGET_RATIO})"
    if ratio > TARGET_RATIO:
        print(f"\nMISSED: {verdict}")
        return 1
    print(f"\n{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
