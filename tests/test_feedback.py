"""Feedback on answers: a thumb up or down on one's own turns, a comment, kept with the question, answer and
citations; only an admin lists and exports it (`kb feedback list`, `kb feedback export`)."""

from __future__ import annotations

import csv
import io
import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb_app.access.roles import User
from kb_app.assistant import Assistant
from kb_app.chat.pipeline import Answer, Citation
from kb_app.cli import app
from kb_app.errors import ConversationNotFoundError, KbError, LimitExceededError, PermissionDeniedError
from kb_app.settings import Settings, load_settings

ALICE = User("alice")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "kb_home")


def kept_turns(assistant: Assistant) -> str:
    """A conversation of two answered turns, as the page or `kb ask` would have kept it."""
    conversations = assistant.conversations
    kept = conversations.start(["hr", "finance"])
    cited = Citation(1, "leave.md", 2, "Every employee gets 15 days.", 0.91, "Annual leave", "c1", "hr")
    conversations.record(kept.id, "How long is annual leave?", Answer("Fifteen days [1].", "en", [cited]))
    conversations.record(kept.id, "And sick leave?", Answer("Ten days.", "en"))
    return kept.id


def test_a_rating_keeps_the_turn_as_the_asker_saw_it_and_the_latest_verdict_wins(settings: Settings) -> None:
    owner = Assistant(settings)
    alice = owner.as_user(ALICE)
    kept = kept_turns(alice)
    alice.feedback.rate(kept, 0, True)
    alice.feedback.rate(kept, 0, False)
    alice.feedback.comment(kept, 0, "  It is 15 working days, not calendar days.  ")
    alice.feedback.rate(kept, 1, True)
    first, second = sorted(owner.feedback.all(), key=lambda r: r.turn)
    assert (first.user, first.conversation, first.turn, first.rating) == ("alice", kept, 0, -1)
    assert first.comment == "It is 15 working days, not calendar days."
    assert (first.question, first.answer, first.kbs) == (
        "How long is annual leave?",
        "Fifteen days [1].",
        ["hr", "finance"],
    )
    assert first.citations[0]["source"] == "leave.md" and first.citations[0]["kb"] == "hr"
    assert (second.rating, second.comment, second.question) == (1, "", "And sick leave?")
    alice.feedback.rate(kept, 1, None)  # the thumb taken back
    assert [r.turn for r in owner.feedback.all()] == [0]
    alice.feedback.rate(kept, 0, True)  # a new verdict keeps the comment
    assert [(r.rating, r.comment[:6]) for r in owner.feedback.all()] == [(1, "It is ")]
    assert stat.S_IMODE(settings.feedback_db.stat().st_mode) == 0o600


def test_nobody_rates_another_users_turn_or_one_that_is_not_there(settings: Settings) -> None:
    owner = Assistant(settings)
    kept = kept_turns(owner.as_user(ALICE))
    bob = owner.as_user(User("bob"))
    with pytest.raises(ConversationNotFoundError):
        bob.feedback.rate(kept, 0, False)
    with pytest.raises(ConversationNotFoundError):
        bob.feedback.comment(kept, 0, "mine now")
    alice = owner.as_user(ALICE).feedback
    with pytest.raises(KbError, match="no answer 3"):
        alice.rate(kept, 2, True)
    with pytest.raises(KbError, match="no rating of yours"):
        alice.comment(kept, 1, "why")
    alice.rate(kept, 1, True)
    with pytest.raises(KbError, match="empty"):
        alice.comment(kept, 1, "   ")
    with pytest.raises(LimitExceededError):
        alice.comment(kept, 1, "x" * 2001)
    assert [r.user for r in owner.feedback.all()] == ["alice"]


def test_only_an_admin_lists_or_exports_the_feedback(settings: Settings) -> None:
    owner = Assistant(settings)
    alice = owner.as_user(ALICE)
    kept = kept_turns(alice)
    alice.feedback.rate(kept, 0, False)
    alice.feedback.comment(kept, 0, "wrong, see §4")
    for verb in (alice.feedback.all, alice.feedback.export):
        with pytest.raises(PermissionDeniedError, match="only an admin"):
            verb()
    admin = owner.as_user(User("root", admin=True)).feedback
    (row,) = [json.loads(line) for line in admin.export("jsonl").splitlines()]
    assert (row["comment"], row["rating"], row["citations"][0]["n"]) == ("wrong, see §4", -1, 1)
    (table,) = list(csv.DictReader(io.StringIO(admin.export("csv"))))
    assert table["comment"] == "wrong, see §4" and table["kbs"] == "hr;finance" and table["turn"] == "0"
    assert json.loads(table["citations"])[0]["source"] == "leave.md"
    with pytest.raises(KbError, match="not an export format"):
        admin.export("xml")


def test_kb_feedback_export_and_list_as_the_machines_owner(settings: Settings, tmp_path: Path) -> None:
    """The CLI acts as the machine's owner (an admin): it exports to a file, or lists the latest."""
    alice = Assistant(settings).as_user(ALICE)
    kept = kept_turns(alice)
    alice.feedback.rate(kept, 1, False)
    alice.feedback.comment(kept, 1, "sick leave is 12 days")
    runner = CliRunner()
    home = ["--home", str(settings.home)]
    out = tmp_path / "feedback.csv"
    done = runner.invoke(app, [*home, "feedback", "export", "--format", "csv", "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert [r["comment"] for r in csv.DictReader(out.open(encoding="utf-8"))] == ["sick leave is 12 days"]
    printed = runner.invoke(app, [*home, "feedback", "export"])
    assert json.loads(printed.output)["question"] == "And sick leave?"
    listed = runner.invoke(app, [*home, "feedback", "list"])
    assert "alice\t-1\t" in listed.output and "sick leave is 12 days" in listed.output
    assert json.loads(runner.invoke(app, [*home, "feedback", "list", "--json"]).output)[0]["user"] == "alice"
    with pytest.raises(KbError, match="not an export format"):
        runner.invoke(app, [*home, "feedback", "export", "--format", "xml"], catch_exceptions=False)
