"""A test's child process (a test file run as a script) read line by line: tests that need a second process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class ChildProcess:
    """``python SCRIPT ARGS`` from the project root (importable as ``tests.*``), without any KB_* variable."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, script, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            env={**{k: v for k, v in os.environ.items() if not k.startswith("KB_")}, "PYTHONPATH": str(ROOT)},
        )
        self.lines: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 120.0) -> str:
        """The rest of the first line the child prints that starts with ``prefix``; fails the test otherwise."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                _, err = self.proc.communicate(timeout=30)
                pytest.fail(f"child ended before {prefix!r}: {self.lines}\n{err[-3000:]}")
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        pytest.fail(f"no {prefix!r} from the child within {timeout} s: {self.lines}")


class ScriptChild(ChildProcess):
    """The test file itself run as a script with keyword arguments as one JSON argument; it answers in JSON lines
    (``PREFIX {...}``)."""

    def __init__(self, script: str, **args: object) -> None:
        super().__init__(script, json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in args.items()}))

    def json(self, prefix: str, timeout: float = 120.0):
        return json.loads(self.wait_for(prefix + " ", timeout))

    def end(self) -> None:
        self.proc.wait(60)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
