"""The ingest pipeline: load → split → embed → store, file by file, reporting every skip by name."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ingest.embedders import Embedder
from ingest.knowledge_base import KnowledgeBase
from ingest.loaders import LoaderRegistry, file_sha256
from ingest.splitter import Splitter
from kb_app.errors import KbError

EMBED_BATCH = 16


class ProgressCallback(Protocol):
    def __call__(self, fraction: float, message: str) -> None: ...


def _no_progress(fraction: float, message: str) -> None:
    return None


@dataclass(frozen=True)
class FileOutcome:
    source: str
    status: str  # "added", "replaced", "unchanged" or "failed"
    chunks: int = 0
    reason: str = ""


@dataclass
class IngestReport:
    files: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def by_status(self, status: str) -> list[FileOutcome]:
        return [f for f in self.files if f.status == status]

    @property
    def failed(self) -> list[FileOutcome]:
        return self.by_status("failed")

    @property
    def chunks_added(self) -> int:
        return sum(f.chunks for f in self.files if f.status in ("added", "replaced"))

    def summary(self) -> str:
        counts = {s: len(self.by_status(s)) for s in ("added", "replaced", "unchanged", "failed")}
        text = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "nothing to do"
        return f"{text}; {self.chunks_added} chunks in {self.seconds:.1f} s"


def expand_paths(paths: Iterable[Path]) -> Iterator[tuple[Path, str]]:
    """Files to ingest with their source names: a file keeps its name, a folder's files their relative path."""
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = child.relative_to(path)
                if not any(part.startswith(".") for part in rel.parts):
                    yield child, rel.as_posix()
        else:
            yield path, path.name


class Ingestor:
    def __init__(self, registry: LoaderRegistry, splitter: Splitter, embedder: Embedder, kb: KnowledgeBase) -> None:
        self._registry = registry
        self._splitter = splitter
        self._embedder = embedder
        self._kb = kb

    def ingest(self, files: Iterable[tuple[Path, str]], progress: ProgressCallback = _no_progress) -> IngestReport:
        """Ingest ``(path, source)`` pairs; a file that fails is reported and the batch goes on."""
        started = time.perf_counter()
        todo = list(files)
        report = IngestReport()
        for i, (path, source) in enumerate(todo):

            def step(fraction: float, i: int = i, source: str = source) -> None:
                progress((i + fraction) / max(len(todo), 1), f"{source} ({i + 1}/{len(todo)})")

            step(0.0)
            try:
                report.files.append(self._ingest_one(path, source, step))
            except KbError as exc:
                report.files.append(FileOutcome(source, "failed", reason=str(exc)))
            except OSError as exc:
                report.files.append(FileOutcome(source, "failed", reason=f"{source}: cannot read ({exc.strerror})"))
        progress(1.0, "done")
        report.seconds = time.perf_counter() - started
        return report

    def _ingest_one(self, path: Path, source: str, step) -> FileOutcome:
        previous = self._kb.manifest.get(source)
        if previous and previous.status == "done" and path.is_file() and previous.sha256 == file_sha256(path):
            return FileOutcome(source, "unchanged", len(previous.chunk_ids))
        document = self._registry.load(path, source)
        chunks = self._splitter.split(document)
        vectors = []
        for start in range(0, len(chunks), EMBED_BATCH):
            vectors.extend(self._embedder.embed_passages([c.text for c in chunks[start : start + EMBED_BATCH]]))
            step(0.95 * min(start + EMBED_BATCH, len(chunks)) / len(chunks))
        new_ids = [c.id for c in chunks]
        keep = set(new_ids)
        old_ids = [i for i in (previous.chunk_ids if previous else []) if i not in keep]
        self._kb.manifest.begin(source, document.sha256, document.size, new_ids + old_ids)
        self._kb.remove_chunks(old_ids)
        self._kb.vectors.add(chunks, np.vstack(vectors))
        self._kb.lexical.update(add=[(c.id, c.text) for c in chunks])
        self._kb.manifest.begin(source, document.sha256, document.size, new_ids)
        self._kb.manifest.commit(source)
        return FileOutcome(source, "replaced" if previous else "added", len(chunks))
