"""For the page tests (test_ui_safety, test_ui_access, test_ui_browser): the real server
(``kb_app.server.build_app``) under uvicorn on 127.0.0.1 and a free port, a client that calls the page's Gradio
routes the way the browser does, and headless Chromium that records every request it makes.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from kb_app.assistant import Assistant
from kb_app.server import build_app
from kb_app.settings import Settings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(settings: Settings, assistant: Assistant | None = None) -> Iterator[str]:
    """The whole app (``build_app``) served until the block ends; its base URL."""
    with serving_app(build_app(settings, assistant)) as url:
        yield url


@contextmanager
def serving_app(app: FastAPI) -> Iterator[str]:
    """``app`` under uvicorn in a thread of this process until the block ends; its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the kb server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


class PageClient:
    """The page's routes called over HTTP as one visitor (their session cookie, if they signed in)."""

    def __init__(self, base_url: str, home: Path | None = None) -> None:
        self.home = home
        self.http = httpx.Client(base_url=base_url, timeout=120)

    def sign_in(self, name: str, password: str) -> PageClient:
        response = self.http.post("/login", data={"name": name, "password": password})
        assert response.status_code == 303, response.text
        return self

    @property
    def config(self) -> dict:
        response = self.http.get("/config")
        assert response.status_code == 200, response.text
        return response.json()

    @cached_property
    def events(self) -> dict[str, int]:
        """Each handler's fn_index by its api_name, read from the page's config as this visitor."""
        return {d["api_name"]: d["id"] for d in self.config["dependencies"]}

    def upload(self, *paths: Path) -> httpx.Response:
        return self.http.post("/gradio_api/upload", files=[("files", (p.name, p.read_bytes())) for p in paths])

    def files(self, *paths: Path) -> list[dict]:
        """Upload ``paths`` and return them as the File box sends them to its handler."""
        response = self.upload(*paths)
        assert response.status_code == 200, response.text
        return [
            {"path": server, "orig_name": p.name, "meta": {"_type": "gradio.FileData"}}
            for server, p in zip(response.json(), paths, strict=True)
        ]

    def call(self, event: str, *data: Any) -> list:
        """Run one handler to its end through ``/gradio_api/queue/join`` and ``/queue/data``; its outputs."""
        session = uuid.uuid4().hex
        joined = self.http.post(
            "/gradio_api/queue/join",
            json={"data": list(data), "fn_index": self.events[event], "session_hash": session, "trigger_id": None},
        )
        assert joined.status_code == 200, joined.text
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed":
                    assert message["success"], message
                    return message["output"]["data"]
        raise AssertionError(f"the event stream of {event} ended without a result")

    def call_by_name(self, api_name: str, *data: Any) -> list:
        """The same handler through Gradio's ``/gradio_api/call/<api_name>`` (no fn_index, no page needed)."""
        joined = self.http.post(f"/gradio_api/call/{api_name}", json={"data": list(data)})
        assert joined.status_code == 200, joined.text
        event_id = joined.json()["event_id"]
        outputs: list = []
        with self.http.stream("GET", f"/gradio_api/call/{api_name}/{event_id}") as stream:
            kind = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    assert kind != "error", line
                    outputs = json.loads(line[5:])
        return outputs

    def status_of_upload(self, paths: list[Path], kb: str) -> str:
        """Drop ``paths`` into ``kb`` and wait until they are ingested: the status line then (a refusal: at once)."""
        return self.queued(self.call("upload", self.files(*paths), kb), kb)[1]

    def queued(self, outputs: list, kb: str, timeout_s: float = 120.0) -> list:
        """The outputs of an upload once its files are ingested: the timer's ticks (``refresh``) until it stops."""
        deadline = time.monotonic() + timeout_s
        while outputs[1].startswith("⏳"):
            assert time.monotonic() < deadline, f"still indexing after {timeout_s:.0f} s: {outputs[1]}"
            time.sleep(0.3)
            outputs = [*self.call("refresh", kb)[:2], *outputs[2:]]
        return outputs

    def table(self, kb: str) -> list[list]:
        return self.call("kb_change", kb)[0]["data"]


def last_message(chat: list[dict]) -> str:
    content = chat[-1]["content"]
    return content if isinstance(content, str) else " ".join(part.get("text", "") for part in content)


# -- the browser ---------------------------------------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ANSWER_TIMEOUT_MS = 120_000  # a 0.5B model on two CPU cores; the first token comes after a few seconds
# True once the newest bot message carries its sources and the chat's event is over (status tracker hidden).
ANSWER_DONE_JS = """() => {
    const bots = document.querySelectorAll('#chat [data-testid="bot"]');
    const last = bots[bots.length - 1];
    const tracker = document.querySelector('#chat [data-testid="status-tracker"]');
    return !!last && /Sources|来源/.test(last.innerText) && (!tracker || tracker.classList.contains('hide'));
}"""


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is missing: the browser tests drive Debian's chromium (run `make system-deps`)")
    return path


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium (Debian's), closed when the block ends."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watch:
    """What one browser context did: every URL it requested (any host but this machine's is aborted) and every
    uncaught script error or Content-Security-Policy complaint."""

    requested: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def hosts(self) -> set[str | None]:
        return {urlsplit(url).hostname for url in self.requested}

    def record(self, route: Route) -> None:
        """A context's route handler: note the request; let it through only to this machine."""
        self.requested.append(route.request.url)
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            route.abort()


def open_page(browser: Browser, url: str, watch: Watch) -> Page:
    """A page in a fresh context (its own cookies) at ``url``, every request recorded in ``watch``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    expect.set_options(timeout=30_000)
    page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
    page.on("console", lambda msg: watch.errors.append(msg.text) if "Content Security Policy" in msg.text else None)

    context.route("**/*", watch.record)
    page.goto(url, wait_until="domcontentloaded")
    return page


def open_tab(page: Page, screen: str) -> None:
    """Show one of the page's screens ("chat", "documents", "search", "admin"), whatever the interface language."""
    button = page.locator(f"#{screen}-tab-button").first
    button.click()
    expect(button).to_have_attribute("aria-selected", "true")


def ask(page: Page, question: str, screenshot: Path) -> str:
    """Ask ``question`` in the chat box and wait for the whole answer with its sources; the bot's text."""
    box = page.locator("#question textarea")
    expect(page.locator("#send")).to_be_enabled()
    box.fill(question)
    box.press("Enter")
    expect(page.locator('#chat [data-testid="user"]')).to_contain_text(question)
    try:
        page.wait_for_function(ANSWER_DONE_JS, timeout=ANSWER_TIMEOUT_MS)
    except PlaywrightError:
        page.screenshot(path=str(screenshot.with_name(screenshot.stem + "_failed.png")), full_page=True)
        pytest.fail(
            f"no finished answer with sources in {ANSWER_TIMEOUT_MS / 1000:.0f} s; chat:\n"
            + page.locator("#chat").inner_text()
        )
    page.screenshot(path=str(screenshot), full_page=True)
    return page.locator('#chat [data-testid="bot"]').last.inner_text()
