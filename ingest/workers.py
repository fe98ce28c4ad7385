"""Parsing in worker processes, so that one hostile file cannot take the app down.

Each worker is a separate process (started by a fork server that has the loaders and the splitter imported, so a fresh
worker costs milliseconds) with an address-space limit (``RLIMIT_AS``). The parent gives every task a deadline: a worker
that overruns it is killed together with anything it started (tesseract), a worker that crashes (a C parser's segfault)
or runs out of memory is replaced, and the task comes back as an error naming the file. Results come back in submission
order while later files are already being parsed, so parsing overlaps with embedding.

Workers die with the app: they watch their parent (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the app leaves no parser
running.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Generic, Protocol, TypeVar

from ingest import errors
from ingest.errors import DocumentReadError, KbError

_PR_SET_PDEATHSIG = 1
PRELOAD = ("ingest.loaders", "ingest.splitter")  # what an ingest's tasks import, so a fresh worker starts warm
MEMORY_HINT = "raise ingest.memory_mb in kb.yaml if the file is genuine, or split it"
TIMEOUT_HINT = "raise ingest.timeout_s in kb.yaml if the file is genuine (OCR of long scans takes time), or split it"


@dataclass
class TaskResult:
    """What one task gave: ``value`` or ``error`` (an error a person can read, naming the file)."""

    value: Any = None
    error: KbError | None = None
    seconds: float = 0.0


def _error_from(kind: str, message: str, hint: str) -> KbError:
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, KbError)):
        cls = DocumentReadError
    return cls(message, hint)


# --- the worker side ----------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _limit_memory(memory_mb: int) -> None:
    if memory_mb > 0:
        import resource

        limit = memory_mb * 1024 * 1024
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _worker_main(conn, memory_mb: int) -> None:
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.setpgrp()  # its own process group: a timeout kills the worker and any tesseract it started
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _limit_memory(memory_mb)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        fn, args = task
        recycle = False
        try:
            reply: tuple = ("ok", fn(*args))
        except MemoryError:
            reply = ("retire", ("DocumentReadError", f"ran out of memory (limit {memory_mb} MB)", MEMORY_HINT, False))
            recycle = True
        except KbError as exc:
            reply = ("error", (type(exc).__name__, exc.message, exc.hint, True))
        except BaseException as exc:  # anything else a parser throws is this file's problem, not the app's
            reply = ("error", ("DocumentReadError", f"the parser failed ({type(exc).__name__}: {exc})", "", False))
        try:
            conn.send(reply)
        except (MemoryError, OSError):
            return
        except Exception as exc:  # an unpicklable result
            conn.send(("error", ("DocumentReadError", f"the result could not be sent back ({exc})", "", False)))
        if recycle:
            return


# --- the parent side ----------------------------------------------------------------------------------------------


def _context():
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
        return ctx
    return mp.get_context("spawn")


class _Worker:
    def __init__(self, ctx, memory_mb: int) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, memory_mb), daemon=True, name="kb-parser")
        self.process.start()
        child.close()
        self.conn = parent
        self.task: tuple[int, float, float] | None = None  # (index, deadline, started)

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        if self.process.exitcode is None:  # not reaped yet, so its pid (and process group id) is still ours
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.process.kill()
        self.process.join(2)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.process.join(1)
        if self.process.is_alive():
            self.kill()
        else:
            self.conn.close()


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {-code}: {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class WorkerPool:
    """A few parser processes with per-task time and memory limits; ``workers=0`` runs tasks in this process."""

    def __init__(self, workers: int = 1, memory_mb: int = 2048) -> None:
        self.size = max(0, workers)
        self.memory_mb = memory_mb
        self._ctx = _context() if self.size else None
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.memory_mb)

    def _ensure(self) -> None:
        while len(self._workers) < self.size:
            self._workers.append(self._spawn())

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = self._spawn()
        self._workers[self._workers.index(worker)] = fresh
        return fresh

    def map(
        self, fn: Callable[..., Any], tasks: Sequence[tuple], labels: Sequence[str], timeout_s: float
    ) -> Iterator[TaskResult]:
        """``fn(*task)`` for every task, in order; ``labels`` name the tasks' files in errors."""
        if not self.size:
            yield from self._map_here(fn, tasks, labels)
            return
        with self._lock:
            yield from self._map_workers(fn, tasks, labels, timeout_s)

    def _map_here(self, fn, tasks, labels) -> Iterator[TaskResult]:
        for task, label in zip(tasks, labels, strict=True):
            started = time.perf_counter()
            try:
                yield TaskResult(value=fn(*task), seconds=time.perf_counter() - started)
            except KbError as exc:
                yield TaskResult(error=exc, seconds=time.perf_counter() - started)
            except Exception as exc:  # same contract as in a worker: the file fails, the batch goes on
                error = DocumentReadError(f"{label}: the parser failed ({type(exc).__name__}: {exc})")
                yield TaskResult(error=error, seconds=time.perf_counter() - started)

    def _map_workers(self, fn, tasks, labels, timeout_s: float) -> Iterator[TaskResult]:
        n = len(tasks)
        window = 2 * self.size + 1  # parsed documents waiting for the consumer, at most
        done: dict[int, TaskResult] = {}
        next_task = next_out = 0
        self._ensure()
        try:
            while next_out < n:
                for worker in list(self._workers):
                    if worker.task is None and next_task < n and next_task < next_out + window:
                        self._dispatch(worker, fn, tasks, next_task, timeout_s)
                        next_task += 1
                if next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
                    continue
                self._collect(labels, done)
        finally:
            for worker in list(self._workers):  # the consumer stopped early: abandon what is still running
                if worker.task is not None:
                    self._replace(worker)

    def _dispatch(self, worker: _Worker, fn, tasks, index: int, timeout_s: float) -> None:
        if not worker.alive():  # it died while idle (killed from outside, out of memory): a fresh one takes over
            worker = self._replace(worker)
        try:
            worker.conn.send((fn, tasks[index]))
        except (OSError, ValueError):
            worker = self._replace(worker)
            worker.conn.send((fn, tasks[index]))
        now = time.monotonic()
        worker.task = (index, now + timeout_s, now)

    def _collect(self, labels: Sequence[str], done: dict[int, TaskResult]) -> None:
        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            return
        deadline = min(w.task[1] for w in busy)  # type: ignore[index]
        wait([w.conn for w in busy] + [w.process.sentinel for w in busy], max(0.0, deadline - time.monotonic()))
        now = time.monotonic()
        for worker in busy:
            index, task_deadline, started = worker.task  # type: ignore[misc]
            label = labels[index]
            result: TaskResult | None = None
            if worker.conn.poll(0):
                try:
                    status, payload = worker.conn.recv()
                except (EOFError, OSError):
                    worker.process.join(1)
                    result = self._crashed(label, worker)
                else:
                    if status == "ok":
                        result = TaskResult(value=payload)
                    else:
                        kind, message, hint, named = payload
                        result = TaskResult(error=_error_from(kind, message if named else f"{label}: {message}", hint))
                    if status == "retire":  # it exits after a MemoryError: its heap may be in a poor state
                        worker.process.join(2)
                        worker.task = None
                        self._replace(worker)
            elif not worker.alive():
                result = self._crashed(label, worker)
            elif now >= task_deadline:
                worker.task = None
                self._replace(worker)
                result = TaskResult(
                    error=DocumentReadError(
                        f"{label}: parsing took longer than the {task_deadline - started:.0f} s limit and was stopped",
                        TIMEOUT_HINT,
                    )
                )
            if result is not None:
                result.seconds = now - started
                done[index] = result
                worker.task = None

    def _crashed(self, label: str, worker: _Worker) -> TaskResult:
        worker.process.join(1)
        how = _describe_exit(worker.process.exitcode)
        worker.task = None
        self._replace(worker)
        return TaskResult(
            error=DocumentReadError(
                f"{label}: the parser crashed ({how}); the file may be damaged or need more than the memory limit",
                MEMORY_HINT,
            )
        )

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []


class Closable(Protocol):
    def close(self) -> None: ...


P = TypeVar("P", bound=Closable)


class SharedPools(Generic[P]):
    """Pools kept for the whole app, one per key: started on first use, kept across ingests, closed at exit."""

    def __init__(self) -> None:
        self._pools: dict[Hashable, P] = {}
        self._lock = threading.Lock()
        atexit.register(self.close_all)

    def get(self, key: Hashable, make: Callable[[], P]) -> P:
        with self._lock:
            if key not in self._pools:
                self._pools[key] = make()
            return self._pools[key]

    def close_all(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            with contextlib.suppress(Exception):
                pool.close()


_PARSER_POOLS: SharedPools[WorkerPool] = SharedPools()


def shared_pool(workers: int, memory_mb: int) -> WorkerPool:
    """One pool per (workers, memory) for the whole app."""
    return _PARSER_POOLS.get((workers, memory_mb), lambda: WorkerPool(workers, memory_mb))
