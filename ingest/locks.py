"""Who may write, across processes: ``flock`` locks on small files beside what they guard.

:class:`WriterLock` (``<kb dir>/.writer.lock``): one writer per knowledge base. A writer (ingest, sync, remove,
delete) holds it for as long as it writes; a second writer (another process, another thread, another object)
waits for it, saying who holds it, and gives up with :class:`KnowledgeBaseBusyError` after a while. Opening a
knowledge base repairs a crashed ingest's leftovers only when it can take the lock at once: a pending row whose
writer is alive is that writer's work in progress, not a leftover.

:class:`StoreLock` (``<chroma dir>/.kb-serve.lock``): embedded Chroma is one process only (another process's HNSW
index goes stale, concurrent writers lose data), so ``kb serve`` holds it exclusively for its lifetime and a writer
in another process holds it shared while it writes, refused at once while a server holds it.

The kernel drops a lock when the last descriptor of its open file goes, however the process dies, so a ``kill -9``
never leaves anything locked. The descriptors are close-on-exec (Python's default) and parser workers come from an
exec'd fork server, so no child process keeps a lock alive after its parent.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ingest.errors import KnowledgeBaseBusyError, StoreError

LOCK_FILE = ".writer.lock"
STORE_LOCK_FILE = ".kb-serve.lock"
POLL_S = 0.2
STORE_HINT = (
    "add files through the page, or stop the server; to write from several processes run a Chroma server "
    "and set store.mode: http (KB_STORE__MODE=http)"
)
_SERVED: set[Path] = set()  # store locks this process holds exclusively (a flock belongs to the whole process)


def no_notice(message: str) -> None:
    return None


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def _unlock(fd: int) -> None:
    """Empty the pid (so nobody names a process that is gone), drop the lock, close."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def holder(path: Path) -> str:
    """Who holds the lock of ``path``, for a message ("process 1234"), from the pid its holder wrote."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip() or 0)
        if pid == os.getpid():
            return "this process"
        if pid > 0 and _alive(pid):
            return f"process {pid}"
    return "another process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:  # gone (the pid of a holder killed before it could empty it), or in another pid space
        return False
    except PermissionError:  # another user's
        return True
    return True


class WriterLock:
    """Exclusive across processes, threads and objects; re-entrant in the thread holding it (a sync that removes
    files takes it once). Its guard only protects its fields and is never held while waiting or writing."""

    def __init__(self, directory: Path, label: str) -> None:
        self._path = directory / LOCK_FILE
        self._label = label
        self._guard = threading.Lock()
        self._fd: int | None = None
        self._owner: int | None = None  # the thread holding it
        self._depth = 0

    def holder(self) -> str:
        return holder(self._path)

    def _try(self) -> bool:
        """Take the lock for this thread if nobody (no thread, no process) holds it; never waits."""
        with self._guard:
            if self._owner is not None:
                return False
            try:
                fd = _open(self._path)
            except FileNotFoundError as exc:
                raise StoreError(
                    f"knowledge base '{self._label}' was deleted while this process had it open",
                    "ingest into it again to create it anew (`kb ingest PATH --kb NAME`)",
                ) from exc
            try:
                if not _try_flock(fd, fcntl.LOCK_EX):
                    os.close(fd)
                    return False
                _write_pid(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._owner = fd, threading.get_ident()
            return True

    def _release(self) -> None:
        with self._guard:
            if self._fd is not None:
                _unlock(self._fd)
            self._fd, self._owner = None, None

    @contextlib.contextmanager
    def held(self, wait_s: float, notice: Callable[[str], None] = no_notice) -> Iterator[bool]:
        """Hold the lock for the block, waiting up to ``wait_s`` seconds for another writer to finish; yields
        True where this block took it (the outermost one), False where the thread already held it."""
        outermost = self._owner != threading.get_ident()  # only this thread ever sets it to its own id
        if outermost:
            self._acquire(wait_s, notice)
        self._depth += 1
        try:
            yield outermost
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._release()

    def _acquire(self, wait_s: float, notice: Callable[[str], None]) -> None:
        deadline = time.monotonic() + wait_s
        told = False
        while not self._try():
            who = "another thread of this process" if self._owner is not None else self.holder()
            if time.monotonic() >= deadline:
                raise KnowledgeBaseBusyError(
                    f"knowledge base '{self._label}' is being written by {who}",
                    "wait until that ingest or sync has finished (or stop it), then try again; "
                    "ingest.lock_wait_s (KB_INGEST__LOCK_WAIT_S) says how long a writer waits",
                )
            if not told:
                notice(f"waiting for {who}, which is writing to '{self._label}'…")
                told = True
            time.sleep(POLL_S)

    def run_if_free(self, action: Callable[[], object]) -> bool:
        """Run ``action`` holding the lock if nobody holds it now; False (not run) if someone does."""
        if not self._try():
            return False
        self._depth = 1
        try:
            action()
        finally:
            self._depth = 0
            self._release()
        return True


class StoreLock:
    """One embedded Chroma store (its folder): exclusive for a server's lifetime, shared by writers meanwhile."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._path = self.directory / STORE_LOCK_FILE
        self._key = self._path.resolve()
        self._fd: int | None = None

    def _served_elsewhere(self) -> KnowledgeBaseBusyError:
        return KnowledgeBaseBusyError(
            f"kb serve ({holder(self._path)}) holds the embedded store in KB_HOME ({self.directory})", STORE_HINT
        )

    def hold(self, wait_s: float, notice: Callable[[str], None] = no_notice) -> None:
        """Hold the store alone until the process ends (or :meth:`release`); waits up to ``wait_s`` for writers
        that started before, and fails at once if another server holds it. Holding it twice is holding it."""
        if self._key in _SERVED:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            fd = _open(self._path)
            if _try_flock(fd, fcntl.LOCK_EX):
                _write_pid(fd)
                self._fd = fd
                _SERVED.add(self._key)
                return
            only_writers = _try_flock(fd, fcntl.LOCK_SH)  # shared taken: no server, only writers hold it
            os.close(fd)
            if not only_writers:
                raise self._served_elsewhere()
            if time.monotonic() >= deadline:
                raise KnowledgeBaseBusyError(
                    f"another process is writing to the embedded store in KB_HOME ({self.directory})",
                    "start kb serve when that ingest or sync has finished; "
                    "ingest.lock_wait_s (KB_INGEST__LOCK_WAIT_S) says how long it waits",
                )
            if not told:
                notice("waiting for an ingest or sync in another process to finish…")
                told = True
            time.sleep(POLL_S)

    def release(self) -> None:
        if self._fd is not None:
            _SERVED.discard(self._key)
            _unlock(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Write to the store in the block; :class:`KnowledgeBaseBusyError` at once while a server in another
        process holds it. A server's own writes pass: the store is its own."""
        if self._key in _SERVED:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = _open(self._path)
        try:
            if not _try_flock(fd, fcntl.LOCK_SH):
                raise self._served_elsewhere()
            yield
        finally:
            os.close(fd)
