"""Privacy, proven: the whole team flow (add a user and a key, ``kb serve`` with sign-in, log in, upload, list,
search, ask through ``/v1`` with the openai client, streamed and not, embeddings, the page, log out) sends nothing
beyond this machine, and the server's output at the default log level holds no document text, question or secret.

Two walls, because each sees what the other cannot:

- A socket audit hook (``sys.addaudithook``) in every Python process of the flow: a ``sitecustomize.py`` on
  ``PYTHONPATH`` installs it in the driver, the ``kb`` commands, the server and the ingest fork server (whose
  parser workers inherit it). It refuses and records any connect, sendto or name lookup that is not loopback. A
  refused attempt is usually swallowed by the library that made it; only the record shows that something tried.
- A network namespace with loopback only (``unshare -n``, where this user may create one: root here and in CI).
  It stops what the hook cannot see: code in C or Rust (llama.cpp, Chroma's core, tesseract) opening sockets.

The driver (this file run as a script, inside the namespace) runs the flow and prints one JSON result; the test
asserts on it, on the audit records, and on the server's log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as the driver script
    sys.path.insert(0, str(ROOT))

pytestmark = pytest.mark.slow

KB = "研发部"
DOCUMENT = "zephyr-handbook.md"
SECRET_TEXT = "The Zephyr test bench is calibrated every Thursday by the night shift using the violet gauge."
QUESTION = "When is the Zephyr test bench calibrated?"
PASSWORD = "correct horse battery staple"
CANARY = ("192.0.2.1", 9)  # TEST-NET-1: never routed; the driver's own attempt proves the hook records and refuses

SITECUSTOMIZE = '''
"""Installed by tests/test_privacy.py: refuse and record every non-loopback socket use of this process."""
import ipaddress, json, os, sys

_DIR = os.environ["NET_AUDIT_DIR"]
_LOCAL_NAMES = {None, "", b"", "localhost", b"localhost", "0.0.0.0", "::"}


def _record(name, line):
    with open(os.path.join(_DIR, name), "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\\n")


def _loopback(host):
    if host in _LOCAL_NAMES:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _hook(event, args):
    if event in ("socket.connect", "socket.sendto"):
        address = args[1]
        if not isinstance(address, tuple) or _loopback(address[0]):
            return  # a Unix socket path, or loopback
        target = address[:2]
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        if _loopback(args[0]):
            return
        target = args[0]
    else:
        return
    _record("attempts.jsonl", {"pid": os.getpid(), "event": event, "target": repr(target)})
    raise OSError(f"outbound network use refused by tests/test_privacy.py: {event} {target!r}")


with open("/proc/self/cmdline", "rb") as _cmd:
    _record("processes.jsonl", {"pid": os.getpid(), "cmdline": _cmd.read().replace(b"\\0", b" ").decode()})
sys.addaudithook(_hook)
'''


# --- the driver, run inside the namespace ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kb_command(*args: str, stdin: str = "") -> str:
    done = subprocess.run([sys.executable, "-m", "kb_app", *args], input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"kb {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


def canaries() -> dict[str, str]:
    """The hook refuses this process's own attempts; without the hook (``-S``) the kernel refuses them in the
    namespace."""
    seen = {}
    for name, attempt in (("connect", _connect), ("lookup", _lookup)):
        try:
            attempt()
            seen[name] = "went out"
        except OSError as exc:
            seen[name] = str(exc)
    raw = f"import socket; socket.create_connection({CANARY!r}, 2)"
    done = subprocess.run([sys.executable, "-S", "-c", raw], capture_output=True, text=True)
    seen["unhooked"] = done.stderr.strip().splitlines()[-1] if done.returncode else "went out"
    return seen


def _connect() -> None:
    with socket.socket() as sock:
        sock.settimeout(2)
        sock.connect(CANARY)


def _lookup() -> None:
    socket.getaddrinfo("example.com", 443)


def wait_until_up(client, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kb serve exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if client.get("/login").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"kb serve was not up after {timeout_s} s: {log.read_text()[-3000:]}")


def flow(base: str, key: str) -> dict:
    """Everything a team member and a script do, through the server's own routes."""
    import httpx
    import openai

    result: dict = {}
    with httpx.Client(base_url=base, timeout=600) as page:
        signed_in = page.post("/login", data={"name": "alice", "password": PASSWORD})
        result["login"] = [signed_in.status_code, "kb_session" in page.cookies]
        result["page"] = page.get("/", headers={"accept": "text/html"}).status_code
        result["session"] = page.cookies.get("kb_session")
        upload = page.post(f"/api/kb/{KB}/documents", files={"files": (DOCUMENT, _document())})
        result["upload"] = [upload.status_code, [f["status"] for f in upload.json().get("files", [])]]
        result["logout"] = page.post("/logout").status_code
        result["after_logout"] = page.get("/api/kb").status_code
    api = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=api, timeout=600) as script:
        result["kbs"] = [k["name"] for k in script.get("/api/kb").json()["knowledge_bases"]]
        result["documents"] = script.get(f"/api/kb/{KB}/documents").json()
        hits = script.post(f"/api/kb/{KB}/search", json={"query": QUESTION, "k": 3}).json()["hits"]
        result["search"] = [h["source"] for h in hits]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    result["models"] = [m.id for m in client.models.list()]
    asked = [{"role": "user", "content": QUESTION}]
    answer = client.chat.completions.create(model=KB, messages=asked)
    result["answer_sources"] = [c["source"] for c in answer.choices[0].message.model_extra["citations"]]
    streamed = list(client.chat.completions.create(model=KB, messages=asked, stream=True))
    last = streamed[-1].choices[0].delta.model_extra or {}
    result["streamed_sources"] = [c["source"] for c in last.get("citations") or []]
    result["embedding"] = len(client.embeddings.create(model=KB, input=[QUESTION]).data[0].embedding)
    return result


def _document() -> bytes:
    filler = "\n".join(f"Section {i} of the handbook lists the bench's parts, number {i}." for i in range(20))
    return f"# Zephyr handbook\n\n{SECRET_TEXT}\n\n{filler}\n".encode()


def driver_main(args: dict) -> None:
    """Add a user and a key, serve with sign-in on, run the flow, stop the server; print the result."""
    import httpx

    work = Path(args["work"])
    result: dict = {"pid": os.getpid(), "canaries": canaries()}
    kb_command("users", "add", "alice", "--admin", "--password-stdin", stdin=PASSWORD + "\n")
    key = json.loads(kb_command("keys", "create", "alice", "--label", "privacy", "--json"))["key"]
    port = free_port()
    log = work / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "kb_app", "serve", "--port", str(port), "--no-browser"], stdout=out, stderr=out
        )
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base) as probe:
            wait_until_up(probe, server, log)
        result.update(flow(base, key))
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn shuts down and flushes its output
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
    result["key"] = key
    print("RESULT " + json.dumps(result), flush=True)


# --- the test side ------------------------------------------------------------------------------------------------


def namespace_prefix() -> list[str]:
    """``unshare -n`` with loopback up, when this user may create a network namespace; else nothing."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return []
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True)
    if probe.returncode != 0:
        return []
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("privacy")
    audit, hooks = work / "audit", work / "hooks"
    audit.mkdir()
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(
        PYTHONPATH=f"{hooks}{os.pathsep}{ROOT}",
        NET_AUDIT_DIR=str(audit),
        KB_HOME=str(work / "home"),
        KB_AUTH__ENABLED="true",
        KB_LLM__MAX_TOKENS="48",  # the answer's length does not matter here, only where its parts go
        XDG_CONFIG_HOME=str(work / "config"),
    )
    prefix = namespace_prefix()
    command = [*prefix, sys.executable, __file__, json.dumps({"work": str(work)})]
    done = subprocess.run(command, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=1500)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"the driver failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    result["namespace"] = bool(prefix)
    result["attempts"] = _records(audit / "attempts.jsonl")
    result["processes"] = _records(audit / "processes.jsonl")
    result["log"] = (work / "serve.log").read_text(encoding="utf-8", errors="replace")
    return result


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_whole_flow_worked(run: dict) -> None:
    """Without this, "nothing left" could mean "nothing happened"."""
    assert run["login"] == [303, True]
    assert run["page"] == 200
    assert run["upload"] == [200, ["added"]]
    assert run["logout"] == 303 and run["after_logout"] == 401
    assert run["kbs"] == [KB] and run["models"] == [KB]
    assert [d["source"] for d in run["documents"]["documents"]] == [DOCUMENT]
    assert run["search"][0] == DOCUMENT
    assert run["answer_sources"] and set(run["answer_sources"]) == {DOCUMENT}
    assert run["streamed_sources"] and set(run["streamed_sources"]) == {DOCUMENT}
    assert run["embedding"] > 0


def test_every_process_carried_the_hook(run: dict) -> None:
    commands = [p["cmdline"] for p in run["processes"]]
    assert any(" serve " in c for c in commands), commands
    assert any("users add" in c for c in commands) and any("keys create" in c for c in commands), commands
    assert any("forkserver" in c for c in commands), f"the ingest workers' fork server did not load it: {commands}"


def test_nothing_tried_to_leave(run: dict) -> None:
    canary = run["canaries"]
    assert "refused by tests/test_privacy.py" in canary["connect"] and "refused" in canary["lookup"]
    if run["namespace"]:
        assert "unreachable" in canary["unhooked"].lower(), canary["unhooked"]
    ours = [a["event"] for a in run["attempts"] if a["pid"] == run["pid"]]
    assert ours == ["socket.connect", "socket.getaddrinfo"], ours  # the two canaries
    others = [a for a in run["attempts"] if a["pid"] != run["pid"]]
    assert others == [], f"tried to reach beyond this machine: {others}"


def test_the_log_holds_no_document_text_question_or_secret(run: dict) -> None:
    log = run["log"]
    assert "kb is serving on" in log  # the server's own output, read whole
    for secret in (SECRET_TEXT, "violet gauge", QUESTION, "Zephyr test bench", PASSWORD, run["key"], run["session"]):
        assert secret not in log, f"the server's log holds {secret!r}"


if __name__ == "__main__":
    driver_main(json.loads(sys.argv[1]))
