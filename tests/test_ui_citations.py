"""The citation viewer in a real browser: the real server (sign-in off), a PDF uploaded through the page, one
question answered by the real default model, then a click on the answer's first citation link. The side panel must
open with the cited passage (its supporting sentence marked) and the PDF page, an ``<img>`` loaded from the
server's own ``/api/kb/...`` route. A screenshot of the open panel is kept in test-artifacts/ui_citation.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from kb_app.settings import load_settings
from tests.conftest import ARTIFACTS, FIXTURES
from tests.page_server import Watch, ask, chromium, open_page, open_tab, serving
from tests.test_api import pdf_bytes

pytestmark = pytest.mark.slow

QUESTION = "What is the annual hardware allowance at Zephyrine Instruments?"
IMAGE_LOADED_JS = """() => {
    const image = document.querySelector('#citation-image');
    return !!image && image.complete && image.naturalWidth > 0;
}"""


@pytest.fixture
def app_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # prepare_uploads() sets it; monkeypatch puts it back
    settings = load_settings(home=tmp_path / "kb_home", **{"ui.open_browser": False, "llm.max_tokens": 64})
    with serving(settings) as url:
        yield url + "/"


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def policy_pdf(folder: Path) -> Path:
    """The allowance policy as a two-page PDF with a text layer: the answer is on page 2."""
    intro = ["Zephyrine Instruments employee handbook.", "This handbook describes workplace policies."]
    lines = (FIXTURES / "ui" / "zephyr_policy.txt").read_text(encoding="utf-8").splitlines()[2:]
    path = folder / "allowance.pdf"
    path.write_bytes(pdf_bytes([intro, [line.replace("—", "-") for line in lines if line]]))
    return path


def test_a_citation_opens_the_panel_with_the_passage_and_the_page(
    browser: Browser, app_url: str, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    watch = Watch()
    page = open_page(browser, app_url, watch)
    document = policy_pdf(tmp_path)
    open_tab(page, "documents")
    page.set_input_files("#upload input[type=file]", str(document))
    expect(page.locator("#files")).to_contain_text(document.name, timeout=120_000)

    open_tab(page, "chat")
    bot = ask(page, QUESTION, ARTIFACTS / "ui_citation_answer.png")
    assert "740" in bot, bot
    link = page.locator('#chat [data-testid="bot"]').last.locator('a[href^="#cite-"]').first
    expect(link).to_be_visible()
    link.click()

    panel = page.locator("#citation-panel")
    expect(panel).to_be_visible()
    expect(page.locator("#citation-header")).to_contain_text(document.name)
    expect(page.locator("#citation-header")).to_contain_text("page 2")
    expect(page.locator("#citation-passage mark")).to_contain_text("740")
    page.wait_for_function(IMAGE_LOADED_JS, timeout=60_000)
    source = page.locator("#citation-image").get_attribute("src") or ""
    assert source.startswith("/api/kb/default/documents/allowance.pdf/pages/2.png?chunk="), source
    assert page.url.split("#")[0] == app_url  # the link opened the panel; the page did not navigate
    page.screenshot(path=str(ARTIFACTS / "ui_citation.png"), full_page=True)

    page.locator("#citation-close").click()
    expect(panel).to_be_hidden()
    assert watch.hosts() == {"127.0.0.1"}, watch.requested
    assert watch.errors == []
