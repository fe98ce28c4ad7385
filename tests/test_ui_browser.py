"""End to end in a real browser: the real server (``build_app`` under uvicorn) on a free port, sign-in off, driven by
headless Chromium (Playwright).

One document is uploaded through the file input, one question is answered by the real default model, and the
answer must arrive with its sources (file name, score, passage) under it. An unsupported file must be named in
the ingest status. The document carries a remote image, a raw ``<img>``, a CSS ``url()`` and a link beside the
answer: every request the browser makes is recorded, and all of them must go to 127.0.0.1. A full-page screenshot of
the answer is kept in test-artifacts/ui_answer.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from kb_app.settings import load_settings
from tests.conftest import ARTIFACTS, FIXTURES
from tests.page_server import Watch, ask, chromium, open_page, open_tab, serving

pytestmark = pytest.mark.slow

POLICY = FIXTURES / "ui" / "zephyr_policy.txt"
REMOTE = "remote.example"
HOSTILE = (
    f' ![badge](http://{REMOTE}/p.png) <img src="http://{REMOTE}/raw.png"> [the form](http://{REMOTE}/form)'
    f" <span style=\"background:url('http://{REMOTE}/css.png')\">x</span>"
)
QUESTION = "What is the annual hardware allowance at Zephyrine Instruments?"
PASSAGE = "receives an annual hardware allowance of 740 euros"


@pytest.fixture
def app_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The real server (sign-in off, as on one person's machine) with a temporary KB_HOME; stopped after the test."""
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # prepare_uploads() sets it; monkeypatch puts it back
    settings = load_settings(home=tmp_path / "kb_home", **{"ui.open_browser": False})
    assert settings.ui.host == "127.0.0.1" and not settings.auth.enabled
    with serving(settings) as url:
        yield url + "/"


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def page(browser: Browser, app_url: str, watch: Watch) -> Page:
    return open_page(browser, app_url, watch)


def upload(page: Page, path: Path) -> None:
    page.set_input_files("#upload input[type=file]", str(path))


def hostile_policy(folder: Path) -> Path:
    """The policy as Markdown, with hostile markup right after the sentence that answers the question."""
    text = POLICY.read_text(encoding="utf-8").replace("740 euros.", "740 euros." + HOSTILE, 1)
    path = folder / "zephyr_policy.md"
    path.write_text(text, encoding="utf-8")
    return path


def test_upload_ask_and_see_sources(page: Page, watch: Watch, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    document = hostile_policy(tmp_path)
    status = page.locator("#ingest-status")
    files = page.locator("#files")

    # A supported document: queued at once, then reported as added and listed in the files table.
    open_tab(page, "documents")
    upload(page, document)
    expect(status).to_contain_text("1 added")
    expect(files).to_contain_text(document.name)
    expect(files).to_contain_text("done")

    # An unsupported file through the same input: named in the status, listed as failed with the reason.
    unsupported = tmp_path / "notes.xyz"
    unsupported.write_text("kb cannot read this format\n", encoding="utf-8")
    upload(page, unsupported)
    expect(status).to_contain_text("notes.xyz")
    expect(status).to_contain_text("unsupported")
    expect(status).to_contain_text("1 failed")
    expect(status).not_to_contain_text("unchanged")  # the earlier drop was not sent again
    expect(files).to_contain_text(document.name)
    expect(files.get_by_role("row").filter(has_text="notes.xyz")).to_contain_text("failed")

    # One question, answered by the real model; wait for streaming to end and the sources to appear.
    open_tab(page, "chat")
    expect(page.locator("#kb-picker .token")).to_have_text(["default"])
    bot = ask(page, QUESTION, ARTIFACTS / "ui_answer.png")
    answer, _, sources = bot.partition("Sources")
    assert "740" in answer, bot
    assert document.name in sources, bot
    assert "score" in sources, bot
    assert PASSAGE in " ".join(sources.split()), bot
    assert f"http://{REMOTE}/p.png" in sources, bot  # the hostile markup is in the passage, shown as text
    assert page.locator("#question textarea").input_value() == ""
    assert page.locator(f'#chat img[src*="{REMOTE}"], #chat [style*="{REMOTE}"]').count() == 0
    assert watch.requested and watch.hosts() == {"127.0.0.1"}, watch.requested
    assert watch.errors == []
