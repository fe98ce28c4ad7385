"""Kept conversations: each user's own, continued with their history, listed by `kb history`, `kb ask -c`."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kb_app.assistant import Assistant
from kb_app.chat.conversations import Conversations, ConversationStore
from kb_app.chat.pipeline import Answer, Citation
from kb_app.cli import app
from kb_app.errors import ConversationNotFoundError, KbError
from kb_app.settings import load_settings


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
        "chunk_id": "",
        "kb": "",
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


def test_a_conversation_over_several_knowledge_bases_keeps_them_and_follows_their_renames(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "conversations.sqlite")
    both = store.start("alice", ["hr", "finance", "hr"])
    assert (both.kb, both.kbs) == ("hr", ["hr", "finance"])
    cited = Answer("Yes [1][2].", "en", [Citation(1, "a.md", 1, "p", 0.9, kb="hr"), Citation(2, "b.md", 1, "q", 0.8)])
    store.record("alice", both.id, "question", cited)
    bobs = store.start("bob", "hr")
    untouched = store.start("bob", "sales")
    store.rename_kb("hr", "people")
    again = store.get("alice", both.id)
    assert (again.kb, again.kbs) == ("people", ["people", "finance"])
    assert [c["kb"] for c in store.turns("alice", both.id)[0].citations] == ["people", ""]
    assert store.get("bob", bobs.id).kbs == ["people"] and store.get("bob", untouched.id).kbs == ["sales"]
    with pytest.raises(KbError, match="needs a knowledge base"):
        store.start("alice", [])


def test_a_file_kept_by_an_older_kb_opens_and_its_conversations_read_as_before(tmp_path: Path) -> None:
    """The table as the first release wrote it (no ``kbs``, no ``uncited``): its rows read with their one
    knowledge base, and new turns are added beside the old ones."""
    path = tmp_path / "conversations.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE conversations (id TEXT PRIMARY KEY, user TEXT NOT NULL, kb TEXT NOT NULL, "
            "title TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);"
            "CREATE TABLE turns (conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, "
            "n INTEGER NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL, citations TEXT NOT NULL, "
            "refused INTEGER NOT NULL, at REAL NOT NULL, PRIMARY KEY (conversation, n));"
            "INSERT INTO conversations VALUES ('0123456789ab', 'alice', 'hr', 'Old one', 1.0, 2.0);"
            "INSERT INTO turns VALUES ('0123456789ab', 0, 'old question', 'old answer', "
            '\'[{"n": 1, "source": "leave.md", "page": 2, "text": "passage", "score": 0.9, "heading": ""}]\', 0, 2.0);'
        )
    db.close()
    store = ConversationStore(path)
    old = store.get("alice", "0123456789ab")
    assert (old.kb, old.kbs, old.title, old.turns) == ("hr", ["hr"], "Old one", 1)
    uncited = Citation(2, "other.md", None, "unused", 0.5, kb="hr")
    store.record("alice", old.id, "new question", Answer("new answer", "en", [], uncited=[uncited]))
    first, second = store.turns("alice", old.id)
    assert (first.question, first.uncited, first.citations[0]["source"]) == ("old question", [], "leave.md")
    assert second.question == "new question" and second.uncited[0]["source"] == "other.md"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_drop_last_takes_the_last_turn_out_so_its_question_can_be_asked_again(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "conversations.sqlite")
    kept = store.start("alice", "hr")
    assert store.drop_last("alice", kept.id) is None
    store.record("alice", kept.id, "first", answer("one"))
    store.record("alice", kept.id, "second", answer("two"))
    assert store.drop_last("alice", kept.id).question == "second"
    store.record("alice", kept.id, "second again", answer("two, better"))
    assert [t.answer for t in store.turns("alice", kept.id)] == ["one", "two, better"]
    with pytest.raises(ConversationNotFoundError):
        store.drop_last("bob", kept.id)
    assert store.get("alice", kept.id).turns == 2


def test_the_markdown_export_quotes_each_source_and_can_show_no_image(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "conversations.sqlite")
    mine = Conversations(store, "alice")
    kept = mine.start(["hr", "finance"])
    hostile = "Leave is 15 days.\n![x](http://remote.example/p.png) <img src=x>"
    cited = Citation(1, "leave.md", 3, hostile, 0.9, heading="Annual leave", kb="hr")
    mine.record(kept.id, "How long is leave?", Answer("Fifteen days [1].", "en", [cited]))
    text = mine.export_markdown(kept.id)
    assert text.startswith("# How long is leave?\n") and "hr, finance" in text
    assert "## 1. How long is leave?\n\nFifteen days [1]." in text
    assert "[1] leave.md · page 3 · Annual leave · knowledge base hr" in text
    assert "  > Leave is 15 days." in text
    assert "![" not in text and "!\\[x](http://remote.example/p.png) \\<img" in text  # shown as text, not fetched
    with pytest.raises(ConversationNotFoundError):
        Conversations(store, "bob").export_markdown(kept.id)


def test_the_per_user_view_renames_and_deletes_only_its_own(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "conversations.sqlite")
    alice, bob = Conversations(store, "alice"), Conversations(store, "bob")
    kept = alice.start("hr")
    for verb in (bob.delete, lambda c: bob.rename(c, "mine"), bob.drop_last, bob.turns):
        with pytest.raises(ConversationNotFoundError, match="no conversation"):
            verb(kept.id)
    alice.rename(kept.id, "Leave questions")
    assert [c.title for c in alice.recent()] == ["Leave questions"] and bob.recent() == []
    alice.delete(kept.id)
    assert alice.recent() == []


def test_kb_history_markdown_prints_the_export(tmp_path: Path) -> None:
    """`kb history ID --markdown`: the same text as the page's export link; without an id it says what to give."""
    home = tmp_path / "kb_home"
    mine = Assistant(load_settings(home=home)).conversations
    kept = mine.start("hr")
    mine.record(kept.id, "How long is leave?", answer("Fifteen days [1]."))
    runner = CliRunner()
    shown = runner.invoke(app, ["--home", str(home), "history", kept.id, "--markdown"])
    assert shown.exit_code == 0 and shown.output == mine.export_markdown(kept.id)
    assert "[1] leave.md · page 2 · Leave" in shown.output
    with pytest.raises(KbError, match="one conversation"):
        runner.invoke(app, ["--home", str(home), "history", "--markdown"], catch_exceptions=False)


def test_the_export_route_serves_the_callers_own_conversation_and_no_one_elses(tmp_path: Path, monkeypatch) -> None:
    """`GET /api/conversations/ID.md` on the real server with sign-in on: alice gets her conversation as a file;
    bob is told it does not exist, in the very words used for an id nobody has; nobody signed in gets 401."""
    from tests.page_server import serving

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    settings = load_settings(home=tmp_path / "kb_home", **{"auth.enabled": True, "ui.open_browser": False})
    assistant = Assistant(settings)
    keys = {}
    for name in ("alice", "bob"):
        assistant.access.add_user(name, f"{name}-password")
        keys[name] = {"Authorization": f"Bearer {assistant.accounts.create_key(name)[1]}"}
    alice = assistant.as_user(assistant.access.user("alice")).conversations
    kept = alice.start("hr")
    alice.record(kept.id, "How long is leave?", answer("Fifteen days [1]."))
    with serving(settings, assistant) as url, httpx.Client(base_url=url) as http:
        own = http.get(f"/api/conversations/{kept.id}.md", headers=keys["alice"])
        other = http.get(f"/api/conversations/{kept.id}.md", headers=keys["bob"])
        missing = http.get("/api/conversations/000000000000.md", headers=keys["bob"])
        anonymous = http.get(f"/api/conversations/{kept.id}.md")
    assert own.status_code == 200 and own.text == alice.export_markdown(kept.id)
    assert (
        own.headers["content-type"].startswith("text/markdown") and "attachment" in own.headers["content-disposition"]
    )
    assert other.status_code == missing.status_code == 404
    assert other.json()["error"]["message"].replace(kept.id, "X") == missing.json()["error"]["message"].replace(
        "000000000000", "X"
    )
    assert "How long" not in other.text and anonymous.status_code == 401


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
        _who, picker, reopened, _kept, listed, title, export = page.call("load")[:7]
    kept_id = assistant.conversations.last().id
    assert picker["value"] == ["hr"]
    assert listed["value"] == kept_id and [c[1] for c in listed["choices"]] == [kept_id]
    assert title.startswith("How many days") and f"/api/conversations/{kept_id}.md" in export
    assert [m["role"] for m in reopened] == ["user", "assistant"]
    assert last_message(reopened[:1]).startswith("How many days") and "leave\\.md" in last_message(reopened)
    kept = assistant.conversations.recent()
    assert len(kept) == 1 and kept[0].kb == "hr" and kept[0].turns == 1
