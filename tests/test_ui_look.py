"""How the page looks, in a real browser: both languages, light and dark, wide and phone-narrow, and the time from
pressing send to the first streamed character.

One server (sign-in off, so the owner sees every tab) over a knowledge base with one document. Every screen is
saved as a screenshot in ``test-artifacts/screens/`` for each language, theme and width; every request the
browser makes must go to this machine. The interface follows the browser's language and the header's switch
changes it (kept across reloads); the theme switch likewise. At 390 px nothing may stick out sideways.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from kb_app.assistant import Assistant
from kb_app.settings import load_settings
from kb_app.ui.i18n import TEXT
from tests.conftest import ARTIFACTS, FIXTURES
from tests.page_server import ANSWER_TIMEOUT_MS, Watch, chromium, serving

pytestmark = pytest.mark.slow

SCREENS = ("chat", "documents", "search", "admin")
SHOTS = ARTIFACTS / "screens"
DOCUMENT = FIXTURES / "ui" / "zephyr_policy.txt"
QUESTION = "What is the annual hardware allowance at Zephyrine Instruments?"
WIDE, NARROW = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
LOCALES = {"en": "en-US", "zh": "zh-CN"}


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("look")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("GRADIO_TEMP_DIR", raising=False)  # prepare_uploads() sets it
        env.setenv("XDG_CONFIG_HOME", str(root / "config"))
        settings = load_settings(home=root / "kb_home", **{"ui.open_browser": False})
        assistant = Assistant(settings)
        assistant.ingest([DOCUMENT])
        with serving(settings, assistant) as url:
            yield url + "/"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def visit(browser: Browser, url: str, language: str, viewport: dict, watch: Watch) -> Page:
    context = browser.new_context(viewport=viewport, locale=LOCALES[language])
    context.route("**/*", lambda route: watch.record(route))
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
    page.goto(url, wait_until="domcontentloaded")
    expect(tab(page, "chat")).to_be_visible()
    return page


def tab(page: Page, screen: str):
    return page.locator(f"#{screen}-tab-button").first


def words(key: str, language: str) -> str:
    return TEXT[key][0 if language == "en" else 1]


def test_every_screen_in_both_languages_light_and_dark_wide_and_narrow(browser: Browser, app_url: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    watch = Watch()
    for language in ("en", "zh"):
        for name, viewport in (("wide", WIDE), ("narrow", NARROW)):
            page = visit(browser, app_url, language, viewport, watch)
            expect(tab(page, "chat")).to_have_text(re.compile(re.escape(words("tab.chat", language))))
            for theme in ("light", "dark"):
                if (theme == "dark") != page.evaluate("document.body.classList.contains('dark')"):
                    page.locator("#theme").click()
                assert page.evaluate("document.body.classList.contains('dark')") == (theme == "dark")
                for screen in SCREENS:
                    tab(page, screen).click()
                    expect(tab(page, screen)).to_have_attribute("aria-selected", "true")
                    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                    assert overflow <= 1, f"{screen} sticks out {overflow} px at {viewport['width']} px ({language})"
                    page.screenshot(path=str(SHOTS / f"{screen}_{language}_{theme}_{name}.png"), full_page=True)
            page.context.close()
    assert len(list(SHOTS.glob("*.png"))) >= len(SCREENS) * 8
    assert watch.requested and watch.hosts() == {"127.0.0.1"}, watch.requested
    assert watch.errors == []


def test_the_language_and_theme_switches_are_kept_across_a_reload(browser: Browser, app_url: str) -> None:
    watch = Watch()
    page = visit(browser, app_url, "en", WIDE, watch)
    expect(tab(page, "documents")).to_have_text(re.compile(re.escape(words("tab.documents", "en"))))
    page.locator("#language").click()
    page.wait_for_load_state("domcontentloaded")
    expect(tab(page, "documents")).to_have_text(re.compile(re.escape(words("tab.documents", "zh"))))
    page.locator("#theme").click()
    page.reload()
    expect(tab(page, "documents")).to_have_text(re.compile(re.escape(words("tab.documents", "zh"))))
    expect(page.locator("body")).to_have_class(re.compile(r"\bdark\b"))
    page.locator("#language").click()
    page.wait_for_load_state("domcontentloaded")
    expect(tab(page, "documents")).to_have_text(re.compile(re.escape(words("tab.documents", "en"))))
    assert watch.hosts() == {"127.0.0.1"} and watch.errors == []


# Records, in the page, when Enter was pressed in the question box and when the newest bot message first showed
# a character of the answer (a waiting or indexing notice does not count).
TIMING_JS = """() => {
    window.__kb = {};
    document.querySelector('#question textarea').addEventListener('keydown', (e) => {
        if (e.key === 'Enter' && !window.__kb.sent) window.__kb.sent = performance.now();
    }, true);
    new MutationObserver(() => {
        const bots = document.querySelectorAll('#chat [data-testid="bot"]');
        const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
        if (window.__kb.sent && !window.__kb.first && text && !/^⏳/.test(text)) window.__kb.first = performance.now();
    }).observe(document.querySelector('#chat'), {subtree: true, childList: true, characterData: true});
}"""


def test_time_from_send_to_the_first_streamed_character_measured_in_the_browser(browser: Browser, app_url: str) -> None:
    watch = Watch()
    page = visit(browser, app_url, "en", WIDE, watch)
    box = page.locator("#question textarea")
    expect(box).to_be_visible()
    expect(page.locator("#chat")).to_be_attached()  # the script hooks into both; the page may still be building
    page.evaluate(TIMING_JS)
    box.fill(QUESTION)
    box.press("Enter")
    page.wait_for_function("() => window.__kb.first", timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator('#chat [data-testid="bot"]').last).to_contain_text("740", timeout=ANSWER_TIMEOUT_MS)
    timing = page.evaluate("window.__kb")
    first_token_s = (timing["first"] - timing["sent"]) / 1000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "ttft.json").write_text(json.dumps({"first_character_s": round(first_token_s, 2)}), "utf-8")
    print(f"\nbrowser: send → first streamed character {first_token_s:.2f} s")
    assert 0 < first_token_s < ANSWER_TIMEOUT_MS / 1000
    assert watch.hosts() == {"127.0.0.1"} and watch.errors == []


def test_every_interface_key_has_both_languages() -> None:
    used = set()
    for module in Path(__file__).resolve().parent.parent.joinpath("kb_app", "ui").glob("*.py"):
        used |= set(re.findall(r"""\bt\(\s*["']([\w.]+)["']""", module.read_text(encoding="utf-8")))
    assert used, "no screen names its words with t()"
    assert used <= TEXT.keys(), sorted(used - TEXT.keys())
    assert all(en.strip() and zh.strip() and en != zh for en, zh in TEXT.values())
