"""The documents screen in a real browser, with the real server and the real default model.

(a) The bug it fixes: files dropped on the Documents tab and a question asked at once on the Chat tab. The question
used to be answered before the files were indexed, and refused ("not in the knowledge base"); now the chat says it
waits for indexing, then answers from the files with their sources. (b) A document deleted from the table is no
longer cited by the next answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from kb_app.settings import load_settings
from tests.conftest import ARTIFACTS, FIXTURES, ROOT
from tests.page_server import Watch, ask, chromium, open_page, open_tab, serving

pytestmark = pytest.mark.slow

POLICY = FIXTURES / "ui" / "zephyr_policy.txt"
QUESTION = "What is the annual hardware allowance at Zephyrine Instruments?"
REFUSALS = [(ROOT / "prompts" / lang / "refusal.txt").read_text(encoding="utf-8").strip() for lang in ("en", "zh")]
# Records every notice the chat shows while the answer is on its way (a notice is replaced as the answer streams).
RECORD_NOTICES_JS = """() => {
    window.kbNotices = [];
    const chat = document.querySelector('#chat');
    new MutationObserver(() => {
        const bots = chat.querySelectorAll('[data-testid="bot"]');
        const text = bots.length ? bots[bots.length - 1].innerText : '';
        if (/indexing|正在索引/.test(text)) window.kbNotices.push(text);
    }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def update_notice(folder: Path) -> Path:
    """A second file that answers the question too, long enough that indexing it takes a few seconds."""
    rooms = "\n\n".join(
        f"Meeting room {n} of Zephyrine Instruments is on floor {n % 7} and seats {4 + n % 9} people."
        for n in range(400)
    )
    path = folder / "allowance_update.txt"
    path.write_text(
        "Zephyrine Instruments — Allowance Update\n\nFrom next year the annual hardware allowance at Zephyrine "
        f"Instruments is 810 euros for every full-time employee.\n\n{rooms}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # prepare_uploads() sets it; monkeypatch puts it back
    settings = load_settings(home=tmp_path / "kb_home", **{"ui.open_browser": False})
    with serving(settings) as url, chromium() as browser:
        yield open_page(browser, url + "/", Watch())


def sources_of(bot: str) -> str:
    return bot.partition("Sources")[2] or bot.partition("来源")[2]


def test_a_question_asked_while_files_index_waits_for_them_and_a_deleted_file_is_no_longer_cited(
    page: Page, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    update = update_notice(tmp_path)
    status, files = page.locator("#ingest-status"), page.locator("#files")

    # (a) Two files dropped; the handler returns at once with them queued; the question is asked right away.
    open_tab(page, "documents")
    page.set_input_files("#upload input[type=file]", [str(POLICY), str(update)])
    expect(status).to_contain_text("2 file(s) queued")
    open_tab(page, "chat")
    expect(page.locator("#chat")).to_be_attached()  # the script hooks into it
    page.evaluate(RECORD_NOTICES_JS)
    bot = ask(page, QUESTION, ARTIFACTS / "ui_documents_indexing.png")
    assert page.evaluate("window.kbNotices.length") > 0, "the chat never said it waits for indexing"
    assert not any(refusal in bot for refusal in REFUSALS), bot
    assert POLICY.name in sources_of(bot) or update.name in sources_of(bot), bot

    # The table shows both files done, with their chunks.
    open_tab(page, "documents")
    expect(files.get_by_role("row").filter(has_text=POLICY.name)).to_contain_text("done")
    expect(files.get_by_role("row").filter(has_text=update.name)).to_contain_text("done")
    expect(status).to_contain_text("2 added")

    # (b) The policy picked in the table and deleted: the next answer cites only the update.
    files.get_by_text(POLICY.name, exact=True).last.click()  # the cell (the first match is its wrapper)
    expect(page.locator("#doc-selected")).to_contain_text(POLICY.name)
    expect(page.locator("#doc-download a")).to_have_attribute("download", "")
    page.locator("#doc-delete").click()
    expect(status).to_contain_text("deleted")
    expect(files).not_to_contain_text(POLICY.name)
    open_tab(page, "chat")
    page.locator("#new-conversation").click()
    expect(page.locator('#chat [data-testid="bot"]')).to_have_count(0)
    bot = ask(page, QUESTION, ARTIFACTS / "ui_documents_deleted.png")
    sources = sources_of(bot)
    assert update.name in sources and POLICY.name not in sources, bot
