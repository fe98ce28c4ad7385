"""Load benchmark: a team asking one ``kb serve`` at once while a large upload is ingested.

    .venv/bin/python bench/load.py                        # 20 sessions asking for 60 s, 200 files ingested meanwhile
    .venv/bin/python bench/load.py --sessions 8 --duration 30 --files 50    # a quicker look

Starts ``kb serve`` (sign-in on, the default model, a fresh temporary KB_HOME) on 127.0.0.1 as a child process,
ingests a few base documents, then runs ``--sessions`` concurrent sessions for ``--duration`` seconds: half of
them (``--page-share``) are page users who sign in and ask through the page's Gradio queue routes
(``/gradio_api/queue/join`` and ``/queue/data``, as the browser does), the rest are scripts streaming
``/v1/chat/completions`` with an API key. Each session asks, waits for the whole answer, asks the next question;
no session starts a question after the time is up, and each finishes the one it is in. Meanwhile one upload of
``--files`` generated .md/.txt files goes through ``POST /api/kb/{name}/documents``.

Time to first token: for ``/v1`` the first chunk with text; on the page the second update of the chat (the first
only shows the question; kb's waiting notice is not counted). Queue position: the ``rank`` Gradio tells a waiting
page user (0 = next), and the place in kb's own line at the model shown in the chat (questions ahead). Afterwards
every uploaded file must be listed exactly once by ``GET /api/kb/{name}/documents``.
Exits 1 when any request failed or a file is missing or listed twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
KB = "bench"
WAITING_PLACE = re.compile(r"(\d+) question\(s\) ahead of yours")  # kb_app.ui.web.WAITING, as the chat shows it
USER, PASSWORD = "lead", "bench-password-1"
PROJECTS = ["Aurora", "Basalt", "Cobalt", "Dune", "Ember", "Fjord", "Granite", "Harbor", "Iris", "Juniper"]
PEOPLE = ["Li Wei", "Zhang Min", "Wang Fang", "Chen Jie", "Liu Yang", "Maria Lopez", "Tom Baker", "Anna Schmidt"]
MONTHS = ["January", "March", "May", "July", "September", "November"]
CITIES = ["北京", "上海", "深圳", "杭州", "成都", "武汉"]


@dataclass
class Ask:
    path: str
    started: float
    first_token: float | None = None
    finished: float | None = None
    error: str = ""
    ranks: list[int] = field(default_factory=list)


# -- documents ---------------------------------------------------------------------------------------------------


def base_documents(folder: Path) -> list[str]:
    """One short document per project, with facts the questions ask for; the questions the sessions ask."""
    folder.mkdir(parents=True)
    questions = []
    for i, project in enumerate(PROJECTS):
        lead, month, city = PEOPLE[i % len(PEOPLE)], MONTHS[i % len(MONTHS)], CITIES[i % len(CITIES)]
        text = (
            f"# Project {project}\n\nProject {project} is led by {lead}. It ships in {month} and its team works "
            f"in {city}.\n\n## 项目{project}\n\n{project}项目的负责人是{lead}，团队在{city}办公，计划在{month}发布。\n"
        )
        (folder / f"project-{project.lower()}.md").write_text(text, encoding="utf-8")
        questions += [f"Who leads project {project}?", f"{project}项目的团队在哪个城市办公？"]
    return questions


def upload_documents(folder: Path, count: int, seed: int = 13) -> list[Path]:
    """``count`` small, varied notes (.md and .txt, Chinese and English, one to six paragraphs)."""
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        project, person = rng.choice(PROJECTS), rng.choice(PEOPLE)
        paragraphs = []
        for j in range(rng.randint(1, 6)):
            if rng.random() < 0.5:
                paragraphs.append(
                    f"Meeting note {i}.{j}: {person} reviewed the {project} budget; item {rng.randint(100, 999)} "
                    f"moves to {rng.choice(MONTHS)} and the test plan gains {rng.randint(2, 40)} cases."
                )
            else:
                paragraphs.append(
                    f"会议纪要{i}.{j}：{person}检查了{project}项目的预算，第{rng.randint(100, 999)}项推迟到"
                    f"{rng.choice(MONTHS)}，{rng.choice(CITIES)}团队增加{rng.randint(2, 40)}个测试用例。"
                )
        suffix = ".md" if i % 2 else ".txt"
        body = (f"# Note {i}\n\n" if suffix == ".md" else "") + "\n\n".join(paragraphs) + "\n"
        path = folder / f"note-{i:03d}{suffix}"
        path.write_text(body, encoding="utf-8")
        paths.append(path)
    return paths


# -- the server ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kb_command(env: dict[str, str], *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "kb_app", *args], input=stdin, capture_output=True, text=True, env=env, cwd=ROOT
    )
    if done.returncode != 0:
        sys.exit(f"kb {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def wait_until_up(base: str, server: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"kb serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    sys.exit(f"kb serve was not up after {timeout_s} s:\n{log.read_text()[-3000:]}")


# -- sessions ------------------------------------------------------------------------------------------------------


async def api_ask(client: httpx.AsyncClient, question: str) -> Ask:
    ask = Ask("api", time.perf_counter())
    body = {"model": KB, "messages": [{"role": "user", "content": question}], "stream": True}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                ask.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return ask
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    ask.finished = time.perf_counter()
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    ask.error = chunk["error"].get("message", "error event")
                    return ask
                delta = chunk["choices"][0]["delta"]
                if delta.get("content") and ask.first_token is None:
                    ask.first_token = time.perf_counter()
        if ask.finished is None:
            ask.error = "the stream ended without [DONE]"
    except httpx.HTTPError as exc:
        ask.error = f"{type(exc).__name__}: {exc}"
    return ask


async def page_ask(client: httpx.AsyncClient, fn_index: int, question: str) -> Ask:
    ask = Ask("page", time.perf_counter())
    session = uuid.uuid4().hex
    body = {"data": [question, [], KB, None], "fn_index": fn_index, "session_hash": session, "trigger_id": None}
    try:
        joined = await client.post("/gradio_api/queue/join", json=body)
        if joined.status_code != 200:
            ask.error = f"join: HTTP {joined.status_code}: {joined.text[:200]}"
            return ask
        updates = 0
        async with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            async for line in stream.aiter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                kind = message.get("msg")
                if kind == "estimation" and message.get("rank") is not None:
                    ask.ranks.append(int(message["rank"]))
                elif kind == "process_generating" and (place := WAITING_PLACE.search(line)):
                    ask.ranks.append(int(place.group(1)))  # kb's own line at the model, shown in the chat
                elif kind == "process_generating":
                    updates += 1
                    if updates == 2:
                        ask.first_token = time.perf_counter()
                elif kind == "process_completed":
                    ask.finished = time.perf_counter()
                    ask.error = _page_problem(message)
                    return ask
        ask.error = "the event stream ended without a result"
    except httpx.HTTPError as exc:
        ask.error = f"{type(exc).__name__}: {exc}"
    return ask


def _page_problem(message: dict) -> str:
    """The page shows a failure as the answer itself (kb_app.ui.web.problem): '⚠️ ...' or the generic sentence."""
    if not message.get("success"):
        return f"failed: {str(message.get('output'))[:200]}"
    history = message["output"]["data"][0]
    content = str(history[-1].get("content", "")) if history else ""
    if content.startswith("⚠️") or "went wrong" in content:
        return content[:200]
    return "" if content else "an empty answer"


async def session(kind: str, base: str, key: str, questions: list[str], deadline: float, seed: int) -> list[Ask]:
    rng = random.Random(seed)
    asks: list[Ask] = []
    timeout = httpx.Timeout(None, connect=30)
    if kind == "api":
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=timeout) as c:
            while time.perf_counter() < deadline:
                asks.append(await api_ask(c, rng.choice(questions)))
        return asks
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as c:
        signed_in = await c.post("/login", data={"name": USER, "password": PASSWORD})
        if signed_in.status_code != 303:
            return [Ask("page", time.perf_counter(), error=f"sign-in: HTTP {signed_in.status_code}")]
        config = (await c.get("/config")).json()
        fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "ask")
        while time.perf_counter() < deadline:
            asks.append(await page_ask(c, fn_index, rng.choice(questions)))
    return asks


async def warm_up(base: str, key: str, question: str) -> Ask:
    """The first question loads the model; it is not counted."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=httpx.Timeout(None)) as client:
        return await api_ask(client, question)


async def upload(base: str, key: str, paths: list[Path]) -> tuple[float, dict]:
    started = time.perf_counter()
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=httpx.Timeout(None)) as client:
        response = await client.post(f"/api/kb/{KB}/documents", files=files)
    return time.perf_counter() - started, {"status": response.status_code, "body": response.json()}


async def load(base: str, key: str, questions: list[str], paths: list[Path], args: argparse.Namespace):
    kinds = ["page" if (i + 0.5) / args.sessions < args.page_share else "api" for i in range(args.sessions)]
    ingest = asyncio.create_task(upload(base, key, paths))
    await asyncio.sleep(1)  # the upload is under way before the first question
    deadline = time.perf_counter() + args.duration
    sessions = [session(kind, base, key, questions, deadline, seed) for seed, kind in enumerate(kinds)]
    results = await asyncio.gather(*sessions)
    ended = time.perf_counter()
    ingest_s, ingest_result = await ingest
    return [a for asks in results for a in asks], ingest_s, ingest_result, ended - deadline + args.duration


# -- the report ----------------------------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float | None:
    """Nearest rank: the smallest value with at least ``share`` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(-(-share * len(ordered) // 1)) - 1))]


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def table(asks: list[Ask]) -> list[str]:
    rows = ["| path | answers | errors | first token p50 | p95 | full answer p50 | p95 | queue rank seen (max) |"]
    rows.append("|---|---|---|---|---|---|---|---|")
    for name, group in (("/v1 stream", "api"), ("page (Gradio queue)", "page"), ("all", None)):
        chosen = [a for a in asks if group is None or a.path == group]
        done = [a for a in chosen if not a.error and a.finished is not None]
        first = [a.first_token - a.started for a in done if a.first_token is not None]
        full = [a.finished - a.started for a in done]
        ranks = [r for a in chosen for r in a.ranks]
        rank = str(max(ranks)) if ranks else "—"
        rows.append(
            f"| {name} | {len(done)} | {len(chosen) - len(done)} | {seconds(percentile(first, 0.5))} | "
            f"{seconds(percentile(first, 0.95))} | {seconds(percentile(full, 0.5))} | "
            f"{seconds(percentile(full, 0.95))} | {rank} |"
        )
    return rows


def check_documents(base: str, key: str, paths: list[Path]) -> tuple[list[str], list[str]]:
    """The uploaded files missing from the knowledge base, and those listed more than once."""
    listed = httpx.get(f"{base}/api/kb/{KB}/documents", headers={"Authorization": f"Bearer {key}"}, timeout=60)
    sources = [d["source"] for d in listed.json()["documents"]]
    missing = [p.name for p in paths if p.name not in sources]
    twice = sorted({s for s in sources if sources.count(s) > 1})
    return missing, twice


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions (default 20)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds during which questions start")
    parser.add_argument("--files", type=int, default=200, help="files in the one upload ingested meanwhile")
    parser.add_argument("--page-share", type=float, default=0.5, help="share of the sessions that use the page")
    parser.add_argument("--keep", action="store_true", help="keep the temporary KB_HOME and the server log")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="kb-bench-load-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(
        KB_HOME=str(work / "home"),
        KB_AUTH__ENABLED="true",
        KB_UI__MAX_FILES_PER_UPLOAD=str(max(args.files, 1)),  # the whole batch in one upload
        XDG_CONFIG_HOME=str(work / "config"),
    )
    questions = base_documents(work / "base")
    paths = upload_documents(work / "upload", args.files)
    kb_command(env, "users", "add", USER, "--admin", "--password-stdin", stdin=PASSWORD + "\n")
    key = json.loads(kb_command(env, "keys", "create", USER, "--label", "load bench", "--json"))["key"]
    kb_command(env, "ingest", str(work / "base"), "--kb", KB)

    port, log = free_port(), work / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        command = [sys.executable, "-m", "kb_app", "serve", "--port", str(port), "--no-browser"]
        server = subprocess.Popen(command, stdout=out, stderr=out, env=env, cwd=ROOT)
    try:
        wait_until_up(base, server, log)
        started = time.perf_counter()
        warm = asyncio.run(warm_up(base, key, questions[0]))
        if warm.error:
            sys.exit(f"the first question failed: {warm.error}")
        print(f"model loaded and first answer in {time.perf_counter() - started:.1f} s (not counted)", flush=True)
        load_before = os.getloadavg()[0]
        asks, ingest_s, ingest_result, wall_s = asyncio.run(load(base, key, questions, paths, args))
        missing, twice = check_documents(base, key, paths)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    report(args, asks, ingest_s, ingest_result, wall_s, load_before, missing, twice)
    if args.keep:
        print(f"kept {work}")
    else:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    errors = [a for a in asks if a.error or a.finished is None]
    return 1 if errors or missing or twice or ingest_result["status"] != 200 else 0


def report(args, asks, ingest_s, ingest_result, wall_s, load_before, missing, twice) -> None:
    print(
        f"\n{args.sessions} sessions ({args.page_share:.0%} page) asking for {args.duration:.0f} s, "
        f"all answers in after {wall_s:.0f} s; load average before: {load_before:.1f} on {os.cpu_count()} CPUs\n"
    )
    print("\n".join(table(asks)))
    status, body = ingest_result["status"], ingest_result["body"]
    summary = body.get("summary") if status == 200 else body
    print(f"\ningest of {args.files} files through the API: HTTP {status} in {ingest_s:.0f} s: {summary}")
    print(f"files missing afterwards: {missing or 'none'}; listed twice: {twice or 'none'}")
    for ask in [a for a in asks if a.error][:10]:
        print(f"error ({ask.path}): {ask.error}")


if __name__ == "__main__":
    sys.exit(main())
