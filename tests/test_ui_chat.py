"""The chat screen a person uses every day, on the real server (``build_app`` under uvicorn).

Through the page's own routes with sign-in on: bob cannot open, rename, delete, regenerate or export alice's
conversation, and is told so in the words used for one that does not exist. In headless Chromium: a kept
conversation is renamed and deleted from the sidebar, a thumb down with a comment lands in `kb feedback export`;
and with the real default model, a question is answered, listed, reopened after a reload, and a follow-up
continues the same conversation.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr
import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from typer.testing import CliRunner

from kb_app.assistant import Assistant
from kb_app.chat.conversations import TITLE_CHARS
from kb_app.chat.pipeline import Answer, Citation
from kb_app.cli import app
from kb_app.settings import Settings, load_settings
from kb_app.ui.chat import ChatScreen
from tests.conftest import ARTIFACTS, FIXTURES
from tests.page_server import ANSWER_TIMEOUT_MS, PageClient, Watch, ask, chromium, last_message, open_page, serving

POLICY = FIXTURES / "ui" / "zephyr_policy.txt"
QUESTION = "What is the annual hardware allowance at Zephyrine Instruments?"
TITLE = QUESTION[:TITLE_CHARS]  # a conversation is named after its first question, cut to a title's length
FOLLOW_UP = "Who approves the allowance requests at Zephyrine Instruments?"
STOPPED = "What can the allowance be spent on at Zephyrine Instruments?"
SECRET = "Alice asked about her private leave"


def keep(assistant: Assistant, question: str, kb: str = "default") -> str:
    """A kept conversation of one answered turn, as the page would have kept it; its id."""
    conversations = assistant.conversations
    kept = conversations.start(kb)
    cited = Citation(1, POLICY.name, None, "receives an annual hardware allowance of 740 euros", 0.9, kb=kb)
    conversations.record(kept.id, question, Answer("740 euros a year [1].", "en", [cited]))
    return kept.id


def settings_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides) -> Settings:
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # prepare_uploads() sets it; monkeypatch puts it back
    return load_settings(home=tmp_path / "kb_home", **{"ui.open_browser": False, **overrides})


def test_another_users_conversation_cannot_be_opened_changed_rated_or_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's handlers, as a request signed in as bob would reach them (Gradio itself takes the kept
    conversation from bob's own session and refuses a sidebar value it did not offer him): every one is refused
    in the words used for a conversation that does not exist; the export route answers him 404."""
    settings = settings_for(tmp_path, monkeypatch, **{"auth.enabled": True})
    assistant = Assistant(settings)
    for name in ("alice", "bob"):
        assistant.access.add_user(name, f"{name}-password")
    alice = assistant.as_user(assistant.access.user("alice"))
    kept = keep(alice, SECRET)
    with gr.Blocks(), gr.Tabs():
        screen = ChatScreen(assistant)
    bob = gr.Request(username="bob")
    opened, missing = screen.on_open(kept, bob), screen.on_open("000000000000", bob)
    renamed, deleted = screen.on_rename(kept, "mine now", bob), screen.on_delete(kept, bob)
    regenerated = list(screen.on_regenerate([], ["default"], kept, bob))
    rated = screen.on_like(kept, gr.LikeData(None, {"index": 1, "value": "", "liked": False}), bob)
    assert opened[-1].startswith("⚠️") and opened[-1].replace(kept, "X") == missing[-1].replace("000000000000", "X")
    for refused in (renamed[-1], deleted[-1], last_message(regenerated[-1][0]), rated[-1]):
        assert refused == opened[-1], refused
    assert SECRET not in str([opened, renamed, deleted, regenerated, rated])
    assert alice.conversations.get(kept).title == SECRET and alice.conversations.get(kept).turns == 1
    assert assistant.feedback.all() == []
    chat, kept_id, kbs, title, link, status = screen.on_open(kept, gr.Request(username="alice"))
    assert [m["role"] for m in chat] == ["user", "assistant"] and last_message(chat[:1]) == SECRET
    assert (kept_id, kbs["value"], title, status) == (kept, ["default"], SECRET, "")
    with serving(settings, assistant) as url:
        exported = PageClient(url).sign_in("bob", "bob-password").http.get(f"/api/conversations/{kept}.md")
        own = PageClient(url).sign_in("alice", "alice-password").http.get(link.split('"')[1])
    assert exported.status_code == 404 and SECRET not in exported.text
    assert own.status_code == 200 and own.text.startswith(f"# {SECRET}")


# -- in the browser ----------------------------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def eventually(seen: Callable[[], object], expected: object, page: Page) -> None:
    """Wait for the kept conversation to reach ``expected`` (as ``seen`` reads it), as long as an answer may take.
    The page's requests pass through this process's route guard (``open_page``): waiting must keep Playwright
    running (``wait_for_timeout``), or they are held back and nothing is ever asked."""
    deadline = time.monotonic() + 2 * ANSWER_TIMEOUT_MS / 1000  # a follow-up is condensed first: two model calls
    while (now := seen()) != expected:
        assert time.monotonic() < deadline, (
            f"kept: {now!r}, not {expected!r}; chat:\n{page.locator('#chat').inner_text()}"
        )
        page.wait_for_timeout(500)


def listed(page: Page) -> list[str]:
    """The conversations the sidebar lists, by title."""
    return [text.strip() for text in page.locator("#conversations label").all_inner_texts()]


@pytest.mark.slow
def test_the_sidebar_renames_and_deletes_and_a_thumb_down_with_a_comment_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Browser
) -> None:
    settings = settings_for(tmp_path, monkeypatch)
    assistant = Assistant(settings)
    older = keep(assistant, "An older question")
    kept = keep(assistant, QUESTION)
    watch = Watch()
    with serving(settings, assistant) as url:
        page = open_page(browser, url + "/", watch)
        expect(page.locator("#conversations label.selected")).to_have_text(TITLE)  # the last one, reopened
        assert listed(page) == [TITLE, "An older question"]

        page.locator("#chat").get_by_label("Dislike").first.click()
        expect(page.locator("#feedback-status")).to_contain_text("Thanks")
        page.locator("#feedback-comment textarea").fill("The allowance is 740 euros per calendar year.")
        page.locator("#send-feedback").click()
        expect(page.locator("#feedback-status")).to_contain_text("Comment saved")

        page.locator("#conversation-title textarea, #conversation-title input").fill("Hardware allowance")
        page.locator("#rename-conversation").click()
        expect(page.locator("#conversations label.selected")).to_have_text("Hardware allowance")

        page.locator("#conversations label", has_text="An older question").click()
        expect(page.locator('#chat [data-testid="user"]')).to_have_text(["An older question"])
        page.locator("#delete-conversation").click()
        page.locator("#cancel-delete").click()
        expect(page.locator("#confirm-delete")).to_be_hidden()
        page.locator("#delete-conversation").click()
        page.locator("#confirm-delete").click()
        expect(page.locator("#conversation-status")).to_contain_text("Deleted")
        expect(page.locator("#conversations label")).to_have_text(["Hardware allowance"])
        expect(page.locator('#chat [data-testid="user"]')).to_have_count(0)
    assert [c.id for c in assistant.conversations.recent()] == [kept] and older != kept
    exported = CliRunner().invoke(app, ["--home", str(settings.home), "feedback", "export"])
    (rating,) = [json.loads(line) for line in exported.output.splitlines()]
    assert (rating["rating"], rating["turn"], rating["conversation"]) == (-1, 0, kept)
    assert rating["comment"] == "The allowance is 740 euros per calendar year." and rating["question"] == QUESTION
    assert rating["citations"][0]["source"] == POLICY.name
    assert watch.hosts() == {"127.0.0.1"} and watch.errors == []


@pytest.mark.slow
def test_an_answered_question_is_listed_reopened_after_a_reload_continued_stopped_and_regenerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Browser
) -> None:
    """With the real default model: ask, reload, the conversation is listed and reopened, a follow-up continues it;
    a question stopped while it streams is not kept, and Regenerate answers the last kept question again."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    settings = settings_for(tmp_path, monkeypatch)
    assistant = Assistant(settings)
    assistant.ingest([POLICY], kb="default")
    watch = Watch()
    with serving(settings, assistant) as url:
        page = open_page(browser, url + "/", watch)
        bot = ask(page, QUESTION, ARTIFACTS / "ui_chat_answer.png")
        assert "740" in bot.partition("Sources")[0], bot
        expect(page.locator("#conversations label.selected")).to_have_text(TITLE)

        page.reload()
        expect(page.locator('#chat [data-testid="user"]')).to_have_text([QUESTION])
        expect(page.locator("#conversations label.selected")).to_have_text(TITLE)
        expect(page.locator("#kb-picker .token")).to_have_text(["default"])
        href = page.locator("#export-link").get_attribute("href")

        page.locator("#question textarea").fill(FOLLOW_UP)
        page.locator("#question textarea").press("Enter")
        eventually(lambda: [c.turns for c in assistant.conversations.recent()], [2], page)
        expect(page.locator('#chat [data-testid="user"]')).to_have_text([QUESTION, FOLLOW_UP])
        exported = httpx.get(url + href).text
        (kept,) = assistant.conversations.recent()
        answered_at = assistant.conversations.turns(kept.id)[1].at

        # Stopped while it streams: nothing is kept of it, and the model is free again for the regenerated answer.
        page.locator("#question textarea").fill(STOPPED)
        page.locator("#question textarea").press("Enter")
        expect(page.locator('#chat [data-testid="user"]')).to_have_count(3)
        page.locator("#stop").click()
        expect(page.locator('#chat [data-testid="status-tracker"]')).to_have_class(re.compile(r"\bhide\b"))
        page.locator("#regenerate").click()
        expect(page.locator('#chat [data-testid="user"]')).to_have_text([QUESTION, FOLLOW_UP])
        eventually(lambda: [t.at > answered_at for t in assistant.conversations.turns(kept.id)], [False, True], page)
    assert [t.question for t in assistant.conversations.turns(kept.id)] == [QUESTION, FOLLOW_UP]
    assert href == f"/api/conversations/{kept.id}.md" and kept.title == TITLE and kept.kbs == ["default"]
    assert f"## 1. {QUESTION}" in exported and f"## 2. {FOLLOW_UP}" in exported and POLICY.name in exported
    assert watch.hosts() == {"127.0.0.1"} and watch.errors == []
