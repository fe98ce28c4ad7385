"""End to end in a real browser: the Gradio app on a free port, driven by headless Chromium (Playwright).

One document is uploaded through the file input, one question is answered by the real default model, and the
answer must arrive with its sources (file name, score, passage) under it. An unsupported file must be named in
the ingest status. The document carries a remote image, a raw ``<img>``, a CSS ``url()`` and a link beside the
answer: every request the browser makes is recorded, and none may leave this machine. A full-page screenshot of
the answer is kept in test-artifacts/ui_answer.png.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Route, expect, sync_playwright

from kb_app.settings import load_settings
from kb_app.ui.web import launch
from tests.conftest import ARTIFACTS, FIXTURES

pytestmark = pytest.mark.slow

POLICY = FIXTURES / "ui" / "zephyr_policy.txt"
REMOTE = "remote.example"
HOSTILE = (
    f' ![badge](http://{REMOTE}/p.png) <img src="http://{REMOTE}/raw.png"> [the form](http://{REMOTE}/form)'
    f" <span style=\"background:url('http://{REMOTE}/css.png')\">x</span>"
)
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
QUESTION = "What is the annual hardware allowance at Zephyrine Instruments?"
PASSAGE = "receives an annual hardware allowance of 740 euros"
ANSWER_TIMEOUT_MS = 120_000  # a 0.5B model on two CPU cores; the first token comes after a few seconds
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

# True once the newest bot message carries its sources and the chat's event is over (status tracker hidden).
ANSWER_DONE_JS = """() => {
    const bots = document.querySelectorAll('#chat [data-testid="bot"]');
    const last = bots[bots.length - 1];
    const tracker = document.querySelector('#chat [data-testid="status-tracker"]');
    return !!last && /Sources|来源/.test(last.innerText) && (!tracker || tracker.classList.contains('hide'));
}"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is missing: the browser tests drive Debian's chromium (run `make system-deps`)")
    return path


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    """The real app with a temporary KB_HOME, started without blocking; closed after the test."""
    port = free_port()
    settings = load_settings(home=tmp_path / "kb_home", **{"ui.port": port, "ui.open_browser": False})
    assert settings.ui.host == "127.0.0.1"
    demo = launch(settings, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Uncaught exceptions thrown by the page's scripts, and the console's Content-Security-Policy complaints."""
    return []


@pytest.fixture
def remote_requests() -> list[str]:
    """Every request the browser tried to send to another host (each one aborted)."""
    return []


@pytest.fixture
def page(app_url: str, page_errors: list[str], remote_requests: list[str]) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=30_000)
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: page_errors.append(msg.text) if "Content Security Policy" in msg.text else None,
            )

            def guard(route: Route) -> None:
                if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
                    route.continue_()
                else:
                    remote_requests.append(route.request.url)
                    route.abort()

            page.route("**/*", guard)
            page.goto(app_url, wait_until="domcontentloaded")
            yield page
        finally:
            browser.close()


def upload(page: Page, path: Path) -> None:
    page.set_input_files("#upload input[type=file]", str(path))


def hostile_policy(folder: Path) -> Path:
    """The policy as Markdown, with hostile markup right after the sentence that answers the question."""
    text = POLICY.read_text(encoding="utf-8").replace("740 euros.", "740 euros." + HOSTILE, 1)
    path = folder / "zephyr_policy.md"
    path.write_text(text, encoding="utf-8")
    return path


def test_upload_ask_and_see_sources(
    page: Page, page_errors: list[str], remote_requests: list[str], tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    document = hostile_policy(tmp_path)
    status = page.locator("#ingest-status")
    files = page.locator("#files")

    # A supported document: reported as added and listed in the files table.
    upload(page, document)
    expect(status).to_contain_text("1 added")
    expect(files).to_contain_text(document.name)

    # An unsupported file through the same input: named in the status, never listed as a file.
    unsupported = tmp_path / "notes.xyz"
    unsupported.write_text("kb cannot read this format\n", encoding="utf-8")
    upload(page, unsupported)
    expect(status).to_contain_text("notes.xyz")
    expect(status).to_contain_text("unsupported")
    expect(status).to_contain_text("1 failed")
    expect(status).not_to_contain_text("unchanged")  # the earlier drop was not sent again
    expect(files).to_contain_text(document.name)
    expect(files).not_to_contain_text("notes.xyz")

    # One question, answered by the real model; wait for streaming to end and the sources to appear.
    question = page.locator("#question textarea")
    expect(page.locator("#send")).to_be_enabled()
    question.fill(QUESTION)
    question.press("Enter")
    expect(page.locator('#chat [data-testid="user"]')).to_contain_text(QUESTION)
    try:
        page.wait_for_function(ANSWER_DONE_JS, timeout=ANSWER_TIMEOUT_MS)
    except PlaywrightError:
        page.screenshot(path=str(ARTIFACTS / "ui_answer_failed.png"), full_page=True)
        pytest.fail(
            f"no finished answer with sources in {ANSWER_TIMEOUT_MS / 1000:.0f} s; chat:\n"
            + page.locator("#chat").inner_text()
        )
    page.screenshot(path=str(ARTIFACTS / "ui_answer.png"), full_page=True)

    bot = page.locator('#chat [data-testid="bot"]').last.inner_text()
    answer, _, sources = bot.partition("Sources")
    assert "740" in answer, bot
    assert document.name in sources, bot
    assert "score" in sources, bot
    assert PASSAGE in " ".join(sources.split()), bot
    assert f"http://{REMOTE}/p.png" in sources, bot  # the hostile markup is in the passage, shown as text
    assert question.input_value() == ""
    assert page.locator(f'#chat img[src*="{REMOTE}"], #chat [style*="{REMOTE}"]').count() == 0
    assert remote_requests == []
    assert page_errors == []
