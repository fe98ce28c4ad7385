"""The ingest pipeline: load → split → embed → store, file by file, reporting every skip by name.

Files are parsed and split in worker processes (``ingest.workers``, ``ingest.parse``) with a time and memory limit and
per-file caps on text and chunks, while the files before them are embedded: in embedding worker processes
(``ingest.embed_pool``, ``embedding.workers``), which work on the next files while this process writes the previous
ones, or here. Writes, manifest rows and progress still come file by file, in order. Unchanged files (same size and
mtime, else same sha256) are skipped without parsing; a file whose content is already stored under a name whose file
is gone was moved, and is renamed without embedding; a copy of a stored file reuses its vectors. Every file that
cannot be read is reported by name with the reason and recorded in the manifest as ``failed``; the rest of the batch
always lands.
With ``ingest.keep_originals`` a copy of each stored file is kept in the knowledge base (``ingest.originals``), once
its row is committed, for the page's citation viewer, downloads and re-indexing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ingest.embed_pool import EmbedPool, InProcess
from ingest.embedders import Embedder
from ingest.errors import DocumentReadError, KbError
from ingest.knowledge_base import KnowledgeBase
from ingest.loaders import LoaderRegistry, LoadOptions, file_sha256
from ingest.loaders.base import escape_controls
from ingest.manifest import FileRecord, path_of, path_text
from ingest.parse import FileParser, ParsedFile
from ingest.settings import IngestSettings
from ingest.splitter import Splitter, chunk_id
from ingest.types import Chunk
from ingest.workers import TaskResult, shared_pool

EMBED_BATCH = 16
WRITE_BATCH_CHUNKS = 512  # chunks written to the stores together, at most (ingest.write_batch_files: files)
STATUSES = ("added", "replaced", "renamed", "unchanged", "removed", "failed")


class ProgressCallback(Protocol):
    def __call__(self, fraction: float, message: str) -> None: ...


def _no_progress(fraction: float, message: str) -> None:
    return None


@dataclass(frozen=True)
class FileOutcome:
    source: str
    status: str  # "added", "replaced", "renamed", "unchanged", "removed" or "failed"
    chunks: int = 0
    reason: str = ""  # why it failed; for the other statuses, notes (read by OCR, moved from...), if any


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
        counts = {s: len(self.by_status(s)) for s in STATUSES}
        text = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "nothing to do"
        return f"{text}; {self.chunks_added} chunks in {self.seconds:.1f} s"


class Refused(tuple):
    """``(path, source)`` of a file found in a folder that will not be read, with the reason; the Ingestor reports
    it as failed. A tuple of two, so callers that only unpack ``path, source`` treat it like any other file."""

    reason: str

    def __new__(cls, path: Path, source: str, reason: str) -> Refused:
        item = super().__new__(cls, (path, source))
        item.reason = reason
        return item


def expand_paths(paths: Iterable[Path]) -> Iterator[tuple[Path, str]]:
    """Files to ingest with their source names: a file keeps its name, a folder's files their relative path.

    A file named directly is read wherever it points. In a folder, a symbolic link whose target lies outside the
    folder is :class:`Refused` (a synced folder must not pull in ``~/.ssh/id_rsa`` through ``notes.txt``); links
    to folders are not followed (one inside is reached anyway).
    """
    for path in paths:
        if path.is_dir():
            yield from _folder_files(path)
        else:
            yield path, path.name


def _folder_files(folder: Path) -> Iterator[tuple[Path, str]]:
    root = folder.resolve()
    for child in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        rel = child.relative_to(folder)
        source = rel.as_posix()
        if any(part.startswith(".") for part in rel.parts):
            continue
        if child.is_symlink() and _points_outside(child, root):
            kind = "folder" if child.is_dir() else "file"
            yield Refused(child, source, f"{source}: a symbolic link to a {kind} outside the folder; skipped")
        elif child.is_file():
            yield child, source


def _points_outside(link: Path, root: Path) -> bool:
    try:
        return not link.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a loop of links points nowhere, and is_file() skips it
        return False


def load_options(settings: IngestSettings) -> LoadOptions:
    return LoadOptions(
        password=settings.password,
        ocr=settings.ocr,
        ocr_languages=settings.ocr_languages,
        ocr_dpi=settings.ocr_dpi,
        archive_max_files=settings.archive_max_files,
        archive_max_mb=settings.archive_max_mb,
        archive_max_ratio=settings.archive_max_ratio,
        max_depth=settings.max_depth,
        max_text_chars=settings.max_text_chars,
    )


@dataclass
class _Queued:
    """A file's chunks and vectors waiting to be written with the others of its batch."""

    job: _Job
    chunks: list[Chunk]
    vectors: np.ndarray


@dataclass
class _Embedding:
    """A parsed file (or its parse error) whose batches of chunks are being embedded, waiting for its turn to be
    written; ``reported`` counts the batches whose progress was shown (-1: not even its start)."""

    job: _Job
    step: Callable[[float], None]
    parsed: TaskResult
    batches: list = field(default_factory=list)  # futures of EMBED_BATCH chunks each
    reported: int = -1

    def outstanding(self) -> int:
        return sum(not batch.done() for batch in self.batches)

    def report(self) -> None:
        """Progress for the batches done so far, in order."""
        if self.reported < 0:
            self.step(0.0)
            self.reported = 0
        total = len(self.parsed.value.chunks) if self.batches else 1
        while self.reported < len(self.batches) and self.batches[self.reported].done():
            self.reported += 1
            self.step(0.95 * min(self.reported * EMBED_BATCH, total) / total)

    def finished(self) -> bool:
        return self.parsed.error is not None or self.reported == len(self.batches)

    def wait(self) -> None:
        """Until its next batch is embedded (or failed: the error comes out when the file is written)."""
        with contextlib.suppress(KbError):
            self.batches[self.reported].result()
        self.report()

    def cancel(self) -> None:
        for batch in self.batches:
            batch.cancel()


@dataclass
class _Job:
    """A file that has to be parsed, with what the check found out about it."""

    index: int
    path: Path
    source: str
    sha256: str
    size: int
    mtime: float
    previous: FileRecord | None
    notes: list[str]
    recorded: tuple[str, float] = ("", 0.0)  # the path and mtime its manifest row keeps


class Ingestor:
    def __init__(
        self,
        registry: LoaderRegistry,
        splitter: Splitter,
        embedder: Embedder,
        kb: KnowledgeBase,
        settings: IngestSettings,
        embed_pool: EmbedPool | None = None,
    ) -> None:
        """``embed_pool`` (``ingest.embed_pool.shared_embed_pool``) embeds passages in worker processes, each with
        its own copy of ``embedder``'s model; without it ``embedder`` embeds them here."""
        self._registry = registry
        self._splitter = splitter
        self._embedder = embedder
        self._embed_pool = embed_pool
        self._kb = kb
        self._settings = settings
        self._batch: list[_Queued] = []

    def ingest(
        self,
        files: Iterable[tuple[Path, str]],
        progress: ProgressCallback = _no_progress,
        retry_failed: bool = True,
        force: bool = False,
    ) -> IngestReport:
        """Ingest ``(path, source)`` pairs; a file that fails is reported and the batch goes on.

        ``retry_failed=False`` (sync) does not parse again a file that failed before and has not changed since.
        ``force=True`` (re-index, from a kept copy) parses and embeds a stored file again however unchanged it is;
        its row keeps the path and mtime it had, so a sync still recognises the user's file.
        The knowledge base's writer lock is held throughout (re-entrant: a caller may already hold it).
        """
        with self._kb.writing(self._settings.lock_wait_s, lambda message: progress(0.0, message)):
            return self._ingest(files, progress, retry_failed, force)

    def _ingest(
        self, files: Iterable[tuple[Path, str]], progress: ProgressCallback, retry_failed: bool, force: bool
    ) -> IngestReport:
        started = time.perf_counter()
        self._batch = []
        todo = list(files)
        total = max(len(todo), 1)
        outcomes: list[FileOutcome | None] = [None] * len(todo)
        jobs: list[_Job] = []
        for i, item in enumerate(todo):
            path, name = item
            source = escape_controls(name)
            notes = [] if source == name else [f"{source}: the name has control characters or undecodable bytes"]
            try:
                if isinstance(item, Refused):
                    checked = self._refuse(source, escape_controls(item.reason))
                else:
                    checked = self._check(i, Path(path), source, notes, retry_failed, force)
            except OSError as exc:
                checked = FileOutcome(source, "failed", reason=f"{source}: cannot read ({exc.strerror or exc})")
            except KbError as exc:
                checked = FileOutcome(source, "failed", reason=str(exc))
            if isinstance(checked, _Job):
                jobs.append(checked)
            else:
                outcomes[i] = checked
        first = len(todo) - len(jobs)
        progress(first / total, f"{len(jobs)} file(s) to read")
        parse = FileParser(self._registry, self._splitter, load_options(self._settings), self._settings.max_chunks)
        pool = shared_pool(self._settings.workers, self._settings.memory_mb)
        results = pool.map(
            parse, [(job.path, job.source) for job in jobs], [job.source for job in jobs], self._settings.timeout_s
        )
        embedding = self._embed_pool or InProcess(self._embedder)
        waiting: deque[_Embedding] = deque()  # parsed, in file order, their batches submitted
        try:
            for k, job in enumerate(jobs):

                def step(fraction: float, k: int = k, job: _Job = job) -> None:
                    progress((first + k + fraction) / total, f"{job.source} ({first + k + 1}/{len(todo)})")

                self._land(waiting, embedding.ahead, outcomes)
                if not waiting:
                    step(0.0)  # before waiting for its parse, so a long OCR shows the right name
                item = _Embedding(job, step, next(results), reported=-1 if waiting else 0)
                if item.parsed.error is None:
                    texts = [c.indexed_text for c in item.parsed.value.chunks]
                    item.batches = [
                        embedding.submit(texts[start : start + EMBED_BATCH], job.source)
                        for start in range(0, len(texts), EMBED_BATCH)
                    ]
                waiting.append(item)
            self._land(waiting, -1, outcomes)
            self._flush()
        finally:
            results.close()
            for item in waiting:  # an error stopped the ingest: what is still queued for embedding is dropped
                item.cancel()
            self._batch = []  # an error from a store: nothing queued was written, nothing of it is in the manifest
        progress(1.0, "done")
        return IngestReport(files=[o for o in outcomes if o is not None], seconds=time.perf_counter() - started)

    def _check(
        self, index: int, path: Path, source: str, notes: list[str], retry_failed: bool, force: bool
    ) -> FileOutcome | _Job:
        """What a file needs, decided without parsing it: nothing, a rename, a copy of stored vectors, or a parse."""
        manifest = self._kb.manifest
        stat = path.stat()
        if not path.is_file():
            raise DocumentReadError(f"{source}: not a regular file")
        resolved, size, mtime = path_text(path), stat.st_size, stat.st_mtime
        previous = manifest.get(source)
        too_big = size > self._registry.max_file_mb * 1024 * 1024  # the parser reports it; no point hashing it
        if force:
            recorded = (previous.path, previous.mtime) if previous else (resolved, mtime)
            sha256 = "" if too_big else file_sha256(path)
            return _Job(index, path, source, sha256, size, mtime, previous, notes, recorded)
        same_stat = previous is not None and (previous.path, previous.size, previous.mtime) == (resolved, size, mtime)
        if previous and previous.status == "done" and same_stat:
            self._keep_original(path, previous.sha256)
            return FileOutcome(source, "unchanged", len(previous.chunk_ids))
        if previous and previous.status == "failed" and not retry_failed:
            # a failure is retried only when the file changes, or when a password now comes with a locked file
            retry_failed = bool(self._settings.password) and "password" in previous.error.lower()
        if previous and previous.status == "failed" and same_stat and not retry_failed:
            return FileOutcome(source, "failed", reason=previous.error)
        sha256 = "" if too_big else file_sha256(path)
        if previous and previous.status == "done" and previous.sha256 == sha256:
            manifest.touch(source, resolved, mtime)
            self._keep_original(path, sha256)
            return FileOutcome(source, "unchanged", len(previous.chunk_ids))
        if previous and previous.status == "failed" and previous.sha256 == sha256 and not retry_failed:
            manifest.touch(source, resolved, mtime)
            return FileOutcome(source, "failed", reason=previous.error)
        job = _Job(index, path, source, sha256, size, mtime, previous, notes, (resolved, mtime))
        if sha256 and (previous is None or previous.status != "done"):
            twins = [r for r in manifest.by_sha256(sha256) if r.status == "done" and r.source != source]
            # moved: its old file is gone; or the same file seen under another name (ingested from another root)
            moved = [r for r in twins if r.path and (r.path == resolved or not path_of(r.path).exists())]
            if moved and self._kb.rename_file(moved[0].source, source, resolved, mtime):
                self._keep_original(path, sha256)
                note = f"{source}: moved or renamed from {moved[0].source}; its vectors were kept"
                return FileOutcome(source, "renamed", len(moved[0].chunk_ids), reason="; ".join([*notes, note]))
            for twin in twins:
                stored = self._kb.stored_chunks(twin.source)
                if stored is not None:
                    chunks, vectors = stored
                    note = f"{source}: same content as {twin.source}; its vectors were reused"
                    return self._write(job, chunks, vectors, [*notes, note], "added")
        return job

    def _refuse(self, source: str, reason: str) -> FileOutcome:
        """A file that will not be read; whatever an earlier version of kb stored from it is taken out."""
        previous = self._kb.manifest.get(source)
        if previous is not None and previous.status == "done":
            self._kb.remove_files([source])
            reason += "; what was stored from it before was removed"
        return FileOutcome(source, "failed", reason=reason)

    def _land(self, waiting: deque[_Embedding], ahead: int, outcomes: list[FileOutcome | None]) -> None:
        """Write the files at the head of ``waiting`` whose vectors are all in, in order, waiting for the head's
        batches while more than ``ahead`` batches are outstanding (-1: until every file is written)."""
        while waiting:
            head = waiting[0]
            head.report()
            if head.finished():
                waiting.popleft()
                outcomes[head.job.index] = self._embedded(head)
            elif sum(item.outstanding() for item in waiting) > ahead:
                head.wait()
            else:
                return

    def _embedded(self, item: _Embedding) -> FileOutcome:
        job, result = item.job, item.parsed
        if result.error is not None:
            return self._failed(job, result.error)
        try:
            return self._ingest_parsed(job, result.value, np.vstack([batch.result() for batch in item.batches]))
        except KbError as exc:
            return self._failed(job, exc)

    def _ingest_parsed(self, job: _Job, parsed: ParsedFile, vectors: np.ndarray) -> FileOutcome:
        job.sha256, job.size = parsed.sha256, parsed.size
        status = "replaced" if job.previous and job.previous.status == "done" else "added"
        return self._write(job, parsed.chunks, vectors, job.notes + parsed.notes, status)

    def _write(self, job: _Job, chunks: list[Chunk], vectors: np.ndarray, notes: list[str], status: str) -> FileOutcome:
        """Queue one file's chunks for the next batched write (see :meth:`_flush`)."""
        if any(item.job.source == job.source for item in self._batch):
            self._flush()
        self._batch.append(_Queued(job, self._own_ids(job.source, job.sha256, chunks), vectors))
        queued_chunks = sum(len(item.chunks) for item in self._batch)
        if len(self._batch) >= self._settings.write_batch_files or queued_chunks >= WRITE_BATCH_CHUNKS:
            self._flush()
        return FileOutcome(job.source, status, len(chunks), reason="; ".join(notes))

    def _flush(self) -> None:
        """Write the queued files with one write per store: each file ``pending`` in the manifest first (listing
        the ids it is about to get and to lose), then Chroma, then the lexical index, then each file ``done``.
        A crash anywhere in between leaves pending rows, whose chunks ``KnowledgeBase.recover`` removes."""
        batch, self._batch = self._batch, []
        if not batch:
            return
        manifest = self._kb.manifest
        old_ids: list[str] = []
        rows = []
        replaced = False
        with manifest.transaction():
            for item in batch:
                job, previous = item.job, manifest.get(item.job.source)
                new_ids = [c.id for c in item.chunks]
                keep = set(new_ids)
                old = [i for i in (previous.chunk_ids if previous else []) if i not in keep]
                path, mtime = job.recorded
                pages = max((c.page or 0 for c in item.chunks), default=0)
                manifest.begin(job.source, job.sha256, job.size, new_ids + old, path, mtime, pages)
                old_ids += old
                replaced = replaced or (previous is not None and previous.sha256 != job.sha256)
                rows.append((job, new_ids, path, mtime, pages))
        self._kb.vectors.delete(old_ids)
        self._kb.vectors.add([c for item in batch for c in item.chunks], np.vstack([item.vectors for item in batch]))
        self._kb.lexical.update(add=[(c.id, c.indexed_text) for item in batch for c in item.chunks], remove=old_ids)
        with manifest.transaction():
            for job, new_ids, path, mtime, pages in rows:
                manifest.begin(job.source, job.sha256, job.size, new_ids, path, mtime, pages)
                manifest.commit(job.source)
        for job, *_ in rows:
            self._keep_original(job.path, job.sha256)
        if replaced:
            self._kb.prune_originals()

    def _keep_original(self, path: Path, sha256: str) -> None:
        """Keep a copy of a stored file (``ingest.keep_originals``) if it still has the content it was stored as."""
        originals = self._kb.originals
        if not self._settings.keep_originals or not sha256 or originals.path(sha256) is not None:
            return
        with contextlib.suppress(OSError):  # gone or unreadable since it was read: the page offers no copy of it
            originals.keep(path, sha256)

    def _own_ids(self, source: str, sha256: str, chunks: list[Chunk]) -> list[Chunk]:
        """Chunk ids are derived from (name, content); a renamed file keeps its old ids, so a new file under its
        old name with the same content would collide with them: such chunks get ids of their own."""
        taken = {i for r in self._kb.manifest.by_sha256(sha256) if r.source != source for i in r.chunk_ids}
        salt = 0
        while True:
            name = source if salt == 0 else f"{source}\x00{salt}"
            renamed = [
                dataclasses.replace(c, id=chunk_id(name, sha256, n), source=source, sha256=sha256)
                for n, c in enumerate(chunks)
            ]
            if not taken.intersection(c.id for c in renamed):
                return renamed
            salt += 1

    def _failed(self, job: _Job, error: KbError) -> FileOutcome:
        previous = job.previous
        if previous is not None and previous.status == "done":
            error = type(error)(f"{error.message} (the version ingested before is kept)", error.hint)
        else:
            self._kb.manifest.fail(job.source, job.sha256, job.size, str(error), *job.recorded)
        return FileOutcome(job.source, "failed", reason=str(error))
