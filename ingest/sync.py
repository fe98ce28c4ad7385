"""Keep a knowledge base in step with a folder (``kb sync DIR``, ``--watch`` to keep doing it).

New files are added, changed ones (by sha256; size and mtime let unchanged ones skip even the hashing) are
ingested again, moved or renamed ones get their new name without being embedded again, and files that are gone
are removed. Only files that an earlier ingest or sync recorded under this folder can be removed: other folders
in the same knowledge base are left alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ingest.errors import KbError
from ingest.knowledge_base import KnowledgeBase
from ingest.manifest import path_of, path_text
from ingest.pipeline import FileOutcome, Ingestor, IngestReport, ProgressCallback, _no_progress, expand_paths


def sync_folder(
    ingestor: Ingestor, kb: KnowledgeBase, folder: Path, progress: ProgressCallback = _no_progress
) -> IngestReport:
    """Make ``kb`` match ``folder``; sources are paths relative to it, as ``kb ingest FOLDER`` names them."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise KbError(f"{folder}: not a folder", "give the folder to keep in step with the knowledge base")
    started = time.perf_counter()
    files = list(expand_paths([folder]))
    report = ingestor.ingest(files, progress, retry_failed=False)
    seen = {path_text(path) for path, _ in files}
    gone = [
        record
        for record in kb.manifest.everything()
        if _under(record.path, folder) and record.path not in seen and not path_of(record.path).exists()
    ]
    kb.remove_files([r.source for r in gone])
    report.files.extend(FileOutcome(r.source, "removed", len(r.chunk_ids)) for r in gone)
    report.seconds = time.perf_counter() - started
    return report


def _under(stored: str, folder: Path) -> bool:
    return bool(stored) and str(path_of(stored)).startswith(str(folder).rstrip(os.sep) + os.sep)


def watch_folder(
    sync: Callable[[], IngestReport],
    on_report: Callable[[IngestReport], None],
    interval_s: float = 5.0,
    stop: threading.Event | None = None,
) -> None:
    """Call ``sync`` every ``interval_s`` seconds until ``stop`` is set; reports only syncs that changed something.

    ``sync`` is one whole sync (``Assistant.sync`` takes the writer lock for each, so other writers get their
    turn between two of them).
    """
    stop = stop or threading.Event()
    known_failures: set[str] = set()
    while not stop.is_set():
        report = sync()
        failures = {f.source for f in report.failed}
        if failures != known_failures or any(f.status not in ("unchanged", "failed") for f in report.files):
            on_report(report)
        known_failures = failures
        stop.wait(interval_s)
