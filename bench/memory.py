"""Memory benchmark: the peak resident memory of ``kb serve`` after it has answered with the default model.

    .venv/bin/python bench/memory.py                              # the default model, target 1.5 GB
    .venv/bin/python bench/memory.py --model qwen2.5-coder-1.5b   # another bundled choice (no target)

Starts ``kb serve`` (a fresh temporary KB_HOME, sign-in on) on 127.0.0.1 as a child process, ingests a few short
documents beforehand with ``kb ingest``, uploads 40 more through the API (so that the parser and embedding workers
start, as in a day's use), asks ``--questions`` questions in Chinese and English through ``/v1/chat/completions``,
then reads the server's peak resident set (``VmHWM`` in ``/proc``) and adds what its child processes (the parser
and embedding workers, which stay for the next upload) hold at that moment.

It also states what the same server would take with ChatGLM3-6B in GGUF Q4_0 (docs/glm.md): the measured peak,
less the default model's footprint, plus ChatGLM3-6B's, each footprint computed the way ``kb models list`` does,
from the GGUF's size and its K/V cache at the configured ``llm.n_ctx``. No ChatGLM3 weights can be fetched here,
so its GGUF size is computed from its parameter count at Q4_0's 4.5 bits a weight. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import (  # noqa: E402
    KB,
    PASSWORD,
    USER,
    base_documents,
    free_port,
    kb_command,
    upload,
    upload_documents,
    wait_until_up,
    warm_up,
)
from kb_app.models.factory import describe_models  # noqa: E402
from kb_app.settings import load_settings  # noqa: E402

GB = 1e9
DEFAULT_TARGET_GB = 1.5
CHATGLM3_TARGET_GB = 4.5
CHATGLM3_PARAMETERS = 6_243_584_000  # THUDM/chatglm3-6b
CHATGLM3_Q4_0_BYTES = CHATGLM3_PARAMETERS * 4.5 / 8  # Q4_0: 18 bytes a block of 32 weights
CHATGLM3_KV_BYTES_PER_TOKEN = 2 * 2 * 28 * 2 * 128  # f16 K and V, 28 layers, 2 key/value heads of 128


def peak_bytes(pid: int) -> tuple[int, int]:
    """The process's own peak resident set, and what its children hold now."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    children = 0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            children += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return peak, children


def model_footprint(env: dict[str, str]) -> tuple[str, int, int]:
    """The configured model's name, its footprint as ``kb models list`` computes it, and its window."""
    settings = load_settings(home=Path(env["KB_HOME"]))
    info = describe_models(settings.llm, settings.cache_dir)[0]
    if info.memory_bytes is None:
        sys.exit(f"kb cannot compute the footprint of {info.name}")
    return info.name, info.memory_bytes, info.context_length or settings.llm.n_ctx


def ask_all(base: str, key: str, questions: list[str]) -> None:
    for question in questions:
        ask = asyncio.run(warm_up(base, key, question))
        if ask.error or ask.first_token is None:
            sys.exit(f"the question {question!r} failed: {ask.error or 'no text came back'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a bundled model name (llm.model); default: kb's default")
    parser.add_argument("--questions", type=int, default=6, help="questions asked before reading the peak")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="kb-bench-memory-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(KB_HOME=str(work / "home"), KB_AUTH__ENABLED="true", XDG_CONFIG_HOME=str(work / "config"))
    if args.model:
        env["KB_LLM__MODEL"] = args.model
    questions = base_documents(work / "base")[: max(1, args.questions)]
    kb_command(env, "users", "add", USER, "--admin", "--password-stdin", stdin=PASSWORD + "\n")
    key = json.loads(kb_command(env, "keys", "create", USER, "--label", "memory bench", "--json"))["key"]
    kb_command(env, "ingest", str(work / "base"), "--kb", KB)

    port, log = free_port(), work / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        command = [sys.executable, "-m", "kb_app", "serve", "--port", str(port), "--no-browser"]
        server = subprocess.Popen(command, stdout=out, stderr=out, env=env, cwd=ROOT)
    try:
        wait_until_up(base, server, log)
        _, uploaded = asyncio.run(upload(base, key, upload_documents(work / "upload", 40)))
        if uploaded["status"] != 200:
            sys.exit(f"the upload failed: {uploaded}")
        ask_all(base, key, questions)
        peak, children = peak_bytes(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    name, footprint, window = model_footprint(env)
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return report(name, footprint, window, peak, children, len(questions), gated=not args.model)


def report(name: str, footprint: int, window: int, peak: int, children: int, asked: int, gated: bool) -> int:
    total = peak + children
    glm = CHATGLM3_Q4_0_BYTES + CHATGLM3_KV_BYTES_PER_TOKEN * window
    estimate = total - footprint + glm
    rows = [
        (f"kb serve with {name}, after {asked} answers", total, DEFAULT_TARGET_GB if gated else None),
        (f"  of which the model ({name}: GGUF + K/V at n_ctx {window})", footprint, None),
        ("  of which the parser and embedding workers (child processes)", children, None),
        (
            f"kb serve with ChatGLM3-6B Q4_0 (computed: {CHATGLM3_Q4_0_BYTES / GB:.2f} GB GGUF + K/V)",
            estimate,
            CHATGLM3_TARGET_GB,
        ),
    ]
    missed = 0
    print("| figure | peak resident memory | target | |\n|---|---|---|---|")
    for label, value, target in rows:
        ok = target is None or value <= target * GB
        missed += not ok
        mark = "" if target is None else ("ok" if ok else "MISSED")
        print(f"| {label} | {value / GB:.2f} GB | {'' if target is None else f'≤ {target} GB'} | {mark} |")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
