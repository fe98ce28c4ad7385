"""Files ingested in the background, one at a time, each with a state the page can show while it waits.

Dropping files on the page used to ingest them inside the request: the page froze, and a question asked meanwhile
in another tab found nothing and was refused as "not in the knowledge base". Now a drop only queues the files; one
worker thread (started when the first file is queued, gone when the queue is empty) runs them in arrival order
through the Assistant's usual ingest (its ingest lock, the Ingestor and its progress callback), and every file is
visible as queued → indexing (fraction and message) → done / failed (the reason) / cancelled. A question over a
knowledge base with files queued or indexing waits for them (:class:`Indexing`) instead of answering without them.

The queue is in memory: a restart forgets what was still queued (its uploads are emptied at start as well), while
what was ingested is in the knowledge base. Finished files stay listed for a while (the last
:data:`KEEP_FINISHED` per knowledge base), so the documents table can say why one failed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ingest.errors import KbError
from ingest.loaders.base import escape_controls
from ingest.pipeline import FileOutcome, ProgressCallback

log = logging.getLogger(__name__)

KEEP_FINISHED = 100  # finished files listed per knowledge base
QUEUED, INDEXING, DONE, FAILED, CANCELLED = "queued", "indexing", "done", "failed", "cancelled"
ACTIVE = (QUEUED, INDEXING)


@dataclass(frozen=True)
class Indexing:
    """What a question yields while it waits: ``files`` of its knowledge base(s) are queued or being indexed."""

    files: int


@dataclass(frozen=True)
class QueuedFile:
    """One file's place in the queue, as the page shows it (a snapshot: the queue replaces it as it moves on)."""

    id: int
    kb: str
    source: str
    batch: int  # the files queued together (one drop) share it
    state: str = QUEUED  # queued, indexing, done, failed or cancelled
    fraction: float = 0.0  # while indexing, from the Ingestor's progress
    message: str = ""  # while indexing: the Ingestor's message; once done: added, replaced, unchanged...
    reason: str = ""  # why it failed
    queued_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


Runner = Callable[["IngestTask", ProgressCallback], FileOutcome]


@dataclass(frozen=True)
class IngestTask:
    """What the worker runs for one file: ``run(task, progress)`` (the queuing Assistant's ingest of it)."""

    kb: str
    file: tuple[Path, str]  # (path, source) as ``expand_paths`` gives it: a refused file keeps its reason
    run: Runner = field(repr=False)
    discard: Path | None = None  # delete ``path`` afterwards, if it lies under this folder (an upload)
    force: bool = False  # parse and embed again even if unchanged (re-index)

    @property
    def path(self) -> Path:
        return Path(self.file[0])

    @property
    def source(self) -> str:
        return self.file[1]


class IngestQueue:
    """A FIFO of per-file tasks over every knowledge base, run by one daemon thread; safe from any thread."""

    def __init__(self, keep_finished: int = KEEP_FINISHED) -> None:
        self._keep = keep_finished
        self._changed = threading.Condition()
        self._waiting: deque[tuple[int, IngestTask]] = deque()
        self._files: dict[int, QueuedFile] = {}
        self._finished: dict[str, deque[int]] = {}
        self._ids = itertools.count(1)
        self._batches = itertools.count(1)
        self._worker: threading.Thread | None = None

    def put(self, tasks: list[IngestTask]) -> list[QueuedFile]:
        """Queue ``tasks`` in order; the worker starts if it is not running."""
        with self._changed:
            shown = []
            batch = next(self._batches)
            for task in tasks:
                item = QueuedFile(next(self._ids), task.kb, escape_controls(task.source), batch)  # named as stored
                self._files[item.id] = item
                self._waiting.append((item.id, task))
                shown.append(item)
            if self._worker is None and self._waiting:
                self._worker = threading.Thread(target=self._work, name="kb-ingest", daemon=True)
                self._worker.start()
            self._changed.notify_all()
            return shown

    def files(self, kb: str) -> list[QueuedFile]:
        """``kb``'s files in the queue and recently finished, in the order they were queued."""
        with self._changed:
            return sorted((f for f in self._files.values() if f.kb == kb), key=lambda f: f.id)

    def active(self, kb: str) -> int:
        """How many of ``kb``'s files are queued or being indexed."""
        with self._changed:
            return sum(1 for f in self._files.values() if f.kb == kb and f.active)

    def cancel(self, kb: str) -> int:
        """Drop ``kb``'s queued files (the one being indexed finishes); how many were dropped."""
        with self._changed:
            dropped = [(i, t) for i, t in self._waiting if t.kb == kb]
            self._waiting = deque((i, t) for i, t in self._waiting if t.kb != kb)
            for item_id, _ in dropped:
                self._finish(item_id, CANCELLED)
            self._changed.notify_all()
        for _, task in dropped:
            _discard(task)
        return len(dropped)

    def forget(self, kb: str) -> None:
        """Drop ``kb``'s queued files and its finished ones from the list (the knowledge base is gone or renamed)."""
        self.cancel(kb)
        with self._changed:
            for item_id in self._finished.pop(kb, ()):
                self._files.pop(item_id, None)

    def wait_for_change(self, timeout: float) -> None:
        """Sleep until a file starts or finishes, or ``timeout`` seconds pass."""
        with self._changed:
            self._changed.wait(timeout)

    def wait_idle(self, kb: str, timeout: float) -> bool:
        """Wait until none of ``kb``'s files is queued or indexing; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            return self._changed.wait_for(lambda: self.active(kb) == 0, max(0.0, deadline - time.monotonic()))

    # -- the worker --------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while (next_task := self._next()) is not None:
            item_id, task = next_task
            state, message, reason = self._run(item_id, task)
            _discard(task)  # before the file shows finished: whoever waits for it finds the upload gone
            self._end(item_id, state, message, reason)

    def _run(self, item_id: int, task: IngestTask) -> tuple[str, str, str]:
        """Ingest one file: its final state, the Ingestor's status for it (added, unchanged...) and why it failed."""
        try:
            outcome = task.run(task, self._progress(item_id))
        except KbError as exc:
            return FAILED, "", str(exc)
        except Exception:
            log.exception("ingesting %s into %s failed", task.source, task.kb)
            return FAILED, "", f"{task.source}: unexpected error; the details are in the server log"
        if outcome.status == "failed":
            return FAILED, "", outcome.reason
        return DONE, outcome.status, ""

    def _next(self) -> tuple[int, IngestTask] | None:
        """The oldest queued task, now indexing; None (and the worker ends) when there is none."""
        with self._changed:
            if not self._waiting:
                self._worker = None
                return None
            item_id, task = self._waiting.popleft()
            self._files[item_id] = replace(self._files[item_id], state=INDEXING, message="starting")
            self._changed.notify_all()
            return item_id, task

    def _progress(self, item_id: int) -> ProgressCallback:
        def progress(fraction: float, message: str) -> None:
            with self._changed:  # no notify: a question waiting for the queue wakes for starts and ends only
                current = self._files.get(item_id)
                if current is not None and current.state == INDEXING:
                    self._files[item_id] = replace(current, fraction=min(max(fraction, 0.0), 1.0), message=message)

        return progress

    def _end(self, item_id: int, state: str, message: str = "", reason: str = "") -> None:
        with self._changed:
            self._finish(item_id, state, message, reason)
            self._changed.notify_all()

    def _finish(self, item_id: int, state: str, message: str = "", reason: str = "") -> None:
        """Mark a file finished and keep only the last few finished ones of its knowledge base (lock held)."""
        current = self._files.get(item_id)
        if current is None:
            return
        fraction = 1.0 if state == DONE else current.fraction
        done = replace(current, state=state, fraction=fraction, message=message, reason=reason, finished_at=time.time())
        self._files[item_id] = done
        finished = self._finished.setdefault(current.kb, deque())
        finished.append(item_id)
        while len(finished) > self._keep:
            self._files.pop(finished.popleft(), None)


def _discard(task: IngestTask) -> None:
    """Delete an uploaded copy once it has been ingested (or will not be), with the per-upload folder made for it;
    never a file outside the uploads folder."""
    if task.discard is None:
        return
    root = task.discard.resolve()
    path = task.path.resolve()
    if root not in path.parents:
        return
    path.unlink(missing_ok=True)
    if path.parent != root:
        with contextlib.suppress(OSError):  # not empty: another file of the same drop is still queued
            path.parent.rmdir()
