"""Real servers a test starts on 127.0.0.1 and a free port: llama.cpp's OpenAI-compatible server and Chroma.

Each is a child process waited for with a bounded timeout, its output kept in a log file the failure message quotes,
and always killed by the test that started it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

KEY = "kb-test-key"
N_CTX = 2048
CHROMA = Path(sys.executable).parent / "chroma"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server as a child process, ready once ``ready()`` answers."""

    name = "server"

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout_s: float = 120):
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if _answers(self.ready):
                return self
            time.sleep(0.25)
        self.kill()
        pytest.fail(f"{self.name} was not ready after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _answers(ready: Callable[[], bool]) -> bool:
    try:
        return ready()
    except httpx.HTTPError:
        return False


class LlamaServer(ServerProcess):
    """``python -m llama_cpp.server`` serving a GGUF with the bearer key ``KEY``."""

    name = "llama_cpp.server"

    def __init__(self, gguf: Path, port: int, log: Path, *extra: str) -> None:
        super().__init__(port, log)
        self.gguf, self.extra = gguf, extra

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        args = ["--model", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--n_ctx", str(N_CTX), "--n_threads", "2", "--api_key", KEY, "--verbose", "False", *self.extra]
        return [sys.executable, "-m", "llama_cpp.server", *args]

    def ready(self) -> bool:
        headers = {"Authorization": f"Bearer {KEY}"}
        return httpx.get(f"{self.base_url}/models", headers=headers, timeout=2).is_success


class ChromaServer(ServerProcess):
    """``chroma run`` keeping its data in ``path``: what ``store.mode: http`` talks to."""

    name = "chroma run"

    def __init__(self, path: Path, port: int, log: Path) -> None:
        super().__init__(port, log)
        self.path = path

    def command(self) -> list[str]:
        return [str(CHROMA), "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)]

    def ready(self) -> bool:
        return httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat", timeout=2).is_success
