"""Kept conversations: each user's own, continued with their history, listed by `kb history`, `kb ask -c`."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb_app.chat.conversations import ConversationStore
from kb_app.chat.pipeline import Answer, Citation
from kb_app.cli import app
from kb_app.errors import ConversationNotFoundError


def answer(text: str) -> Answer:
    return Answer(text, "en", [Citation(1, "leave.md", 2, "passage", 0.9, "Leave")])


def test_a_conversation_keeps_its_turns_and_is_named_after_its_first_question(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "conversations.sqlite")
    kept = store.start("alice", "hr")
    store.record("alice", kept.id, "How long is   the annual leave?", answer("Fifteen days [1]."))
    store.record("alice", kept.id, "And for part-time staff?", answer("Pro rata [1]."))
    again = store.get("alice", kept.id)
    assert again.title == "How long is the annual leave?" and again.turns == 2 and again.kb == "hr"
    assert [t.question for t in store.turns("alice", kept.id)] == [
        "How long is   the annual leave?",
        "And for part-time staff?",
    ]
    assert store.turns("alice", kept.id)[0].citations[0] == {
        "n": 1,
        "source": "leave.md",
        "page": 2,
        "text": "passage",
        "score": 0.9,
        "heading": "Leave",
    }
    assert [m["role"] for m in store.history("alice", kept.id)] == ["user", "assistant", "user", "assistant"]
    assert stat.S_IMODE((tmp_path / "conversations.sqlite").stat().st_mode) == 0o600


def test_another_users_conversation_is_reported_like_a_missing_one(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "conversations.sqlite")
    kept = store.start("alice", "hr")
    store.record("alice", kept.id, "private question", answer("private answer"))
    with pytest.raises(ConversationNotFoundError) as other:
        store.turns("bob", kept.id)
    with pytest.raises(ConversationNotFoundError) as missing:
        store.turns("bob", "000000000000")
    assert str(other.value).replace(kept.id, "X") == str(missing.value).replace("000000000000", "X")
    for verb in (store.history, store.delete, lambda u, c: store.rename(u, c, "mine now")):
        with pytest.raises(ConversationNotFoundError):
            verb("bob", kept.id)
    assert store.recent("bob") == []
    assert store.get("alice", kept.id).title == "private question"


def test_the_latest_continued_comes_first_and_rename_and_delete_work(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "conversations.sqlite")
    first, second = store.start("alice", "hr"), store.start("alice", "finance")
    store.record("alice", first.id, "continued later", answer("yes"))
    assert [c.id for c in store.recent("alice")] == [first.id, second.id]
    store.rename("alice", second.id, "  Budget  ")
    assert store.get("alice", second.id).title == "Budget"
    store.delete("alice", first.id)
    assert [c.id for c in store.recent("alice")] == [second.id]


@pytest.mark.slow
def test_kb_ask_c_continues_the_last_conversation_and_kb_history_shows_it(tmp_path: Path) -> None:
    """With the real default model: the follow-up is answered from its history, and both turns are kept."""
    home = tmp_path / "kb_home"
    doc = tmp_path / "leave.md"
    doc.write_text(
        "# Annual leave\n\nEvery employee of Zephyr Labs gets 15 days of paid annual leave.\n\n"
        "# Parental leave\n\nParents at Zephyr Labs get 20 weeks of parental leave.\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    assert runner.invoke(app, ["--home", str(home), "ingest", str(doc), "--kb", "hr"]).exit_code == 0
    with pytest.raises(ConversationNotFoundError, match="no conversation to continue"):
        runner.invoke(app, ["--home", str(home), "ask", "-c", "hello"], catch_exceptions=False)
    first = json.loads(
        runner.invoke(
            app,
            ["--home", str(home), "ask", "--kb", "hr", "--json", "How many days of annual leave does an employee get?"],
        ).output
    )
    follow = runner.invoke(app, ["--home", str(home), "ask", "-c", "--json", "And how long is parental leave?"])
    assert follow.exit_code == 0, follow.output
    follow_up = json.loads(follow.output)
    assert follow_up["conversation"] == first["conversation"] and follow_up["kb"] == "hr"
    assert "20" in follow_up["answer"]
    listed = json.loads(runner.invoke(app, ["--home", str(home), "history", "--json"]).output)
    assert [(c["id"], c["turns"], c["kb"]) for c in listed] == [(first["conversation"], 2, "hr")]
    shown = runner.invoke(app, ["--home", str(home), "history", first["conversation"]])
    assert "And how long is parental leave?" in shown.output and "leave.md" in shown.output
    fresh = json.loads(
        runner.invoke(app, ["--home", str(home), "ask", "--kb", "hr", "--json", "Who gets leave?"]).output
    )
    assert fresh["conversation"] != first["conversation"]


@pytest.mark.slow
def test_the_page_reopens_the_last_conversation_after_a_reload(tmp_path: Path, monkeypatch) -> None:
    """Through the page's own routes, with the real default model: an answered question is kept, and a new page
    load (a reload) shows it again with its sources; the knowledge base it was asked in is selected."""
    from kb_app.assistant import Assistant
    from kb_app.settings import load_settings
    from tests.page_server import PageClient, last_message, serving

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    settings = load_settings(home=tmp_path / "kb_home", **{"ui.open_browser": False})
    assistant = Assistant(settings)
    doc = tmp_path / "leave.md"
    doc.write_text("# Annual leave\n\nEvery employee gets 15 days of paid annual leave.\n", encoding="utf-8")
    assistant.ingest([doc], kb="hr")
    assistant.ingest([doc], kb="other")
    with serving(settings, assistant) as url:
        page = PageClient(url)
        chat = page.call("ask", "How many days of annual leave?", [], "hr", None)[0]
        assert "15" in last_message(chat)
        picker, *_, reopened, _kept = page.call("load")[:6]
    assert picker["value"] == "hr"
    assert [m["role"] for m in reopened] == ["user", "assistant"]
    assert last_message(reopened[:1]).startswith("How many days") and "leave\\.md" in last_message(reopened)
    kept = assistant.conversations.recent()
    assert len(kept) == 1 and kept[0].kb == "hr" and kept[0].turns == 1
