"""What people thought of the answers (``KB_HOME/feedback.sqlite``, mode 0600): a thumb up or down on an answer,
and a comment if they care to say why. Admins read it (``kb feedback list``, ``kb feedback export``) to find the
questions the documents or the model get wrong.

Each rating keeps a copy of the question, the answer and its citations as the asker saw them, so it still reads
right after the conversation was continued, regenerated or deleted. The text is taken from the kept conversation,
never from the page: a visitor can rate only their own turns, and cannot put words in the answer they rate.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

from kb_app.access.roles import User
from kb_app.chat.conversations import Conversations
from kb_app.errors import KbError, LimitExceededError, PermissionDeniedError
from kb_app.private_db import PrivateDb

MAX_COMMENT_CHARS = 2000
EXPORT_FORMATS = ("jsonl", "csv")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    user TEXT NOT NULL, conversation TEXT NOT NULL, turn INTEGER NOT NULL, rating INTEGER NOT NULL,
    comment TEXT NOT NULL DEFAULT '', question TEXT NOT NULL, answer TEXT NOT NULL, citations TEXT NOT NULL,
    kbs TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (user, conversation, turn));
CREATE INDEX IF NOT EXISTS feedback_by_time ON feedback (at);
"""


@dataclass(frozen=True)
class Rating:
    """One person's verdict on one answer: ``rating`` is +1 (helpful) or -1 (not)."""

    user: str
    conversation: str
    turn: int  # the turn's index in its conversation, from 0
    rating: int
    comment: str
    question: str
    answer: str
    citations: list[dict]
    kbs: list[str]
    at: float


class FeedbackStore:
    """A connection per call, safe from any thread or process; one rating per user and turn (the latest wins)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = PrivateDb(path, _SCHEMA)

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._file.connect()

    def rate(self, rating: Rating) -> None:
        """Keep ``rating``, replacing the user's earlier one on that turn (its comment stays)."""
        with self._db() as db:
            db.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user, conversation, turn) "
                "DO UPDATE SET rating = excluded.rating, question = excluded.question, answer = excluded.answer, "
                "citations = excluded.citations, kbs = excluded.kbs, at = excluded.at",
                (
                    rating.user,
                    rating.conversation,
                    rating.turn,
                    rating.rating,
                    rating.comment,
                    rating.question,
                    rating.answer,
                    json.dumps(rating.citations, ensure_ascii=False),
                    json.dumps(rating.kbs, ensure_ascii=False),
                    rating.at,
                ),
            )

    def comment(self, user: str, conversation: str, turn: int, text: str) -> bool:
        """Add the reason to a rating already given; False when there is no such rating."""
        with self._db() as db:
            changed = db.execute(
                "UPDATE feedback SET comment = ? WHERE user = ? AND conversation = ? AND turn = ?",
                (text, user, conversation, turn),
            ).rowcount
        return changed > 0

    def withdraw(self, user: str, conversation: str, turn: int) -> None:
        with self._db() as db:
            db.execute(
                "DELETE FROM feedback WHERE user = ? AND conversation = ? AND turn = ?", (user, conversation, turn)
            )

    def all(self, limit: int | None = None) -> list[Rating]:
        """Every rating, the newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM feedback ORDER BY at DESC, rowid DESC LIMIT ?", (limit or -1,)).fetchall()
        return [Rating(*row[:7], json.loads(row[7]), json.loads(row[8]), row[9]) for row in rows]


def export(ratings: list[Rating], fmt: str) -> str:
    """``jsonl``: one JSON object a rating, citations included; ``csv``: one row a rating, citations as JSON."""
    if fmt not in EXPORT_FORMATS:
        raise KbError(f"'{fmt}' is not an export format", "use --format jsonl or --format csv")
    if fmt == "jsonl":
        return "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in ratings)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(Rating.__dataclass_fields__))
    writer.writeheader()
    for r in ratings:
        row = asdict(r)
        writer.writerow({**row, "citations": json.dumps(r.citations, ensure_ascii=False), "kbs": ";".join(r.kbs)})
    return out.getvalue()


class Feedback:
    """What ``Assistant.feedback`` hands a caller: rate and comment on their own answers; admins read them all."""

    def __init__(self, store: FeedbackStore, conversations: Conversations, caller: User) -> None:
        self._store = store
        self._conversations = conversations
        self._caller = caller

    def rate(self, conversation: str, turn: int, liked: bool | None) -> None:
        """Thumb up (True), down (False) or taken back (None) on turn ``turn`` of one of the caller's conversations;
        another user's is refused like a missing one (:class:`ConversationNotFoundError`)."""
        kept = self._conversations.get(conversation)
        turns = self._conversations.turns(conversation)
        if not 0 <= turn < len(turns):
            raise KbError(f"conversation '{conversation}' has no answer {turn + 1}", "rate an answer shown in the chat")
        if liked is None:
            self._store.withdraw(self._caller.name, conversation, turn)
            return
        shown = turns[turn]
        self._store.rate(
            Rating(
                self._caller.name,
                conversation,
                turn,
                1 if liked else -1,
                "",
                shown.question,
                shown.answer,
                shown.citations,
                kept.kbs,
                time.time(),
            )
        )

    def comment(self, conversation: str, turn: int, text: str) -> None:
        """Say why, on an answer the caller has rated."""
        self._conversations.get(conversation)
        text = text.strip()
        if not text:
            raise KbError("the comment is empty", "write what was wrong or right about the answer")
        if len(text) > MAX_COMMENT_CHARS:
            raise LimitExceededError(
                f"the comment is {len(text)} characters long", f"keep it under {MAX_COMMENT_CHARS}"
            )
        if not self._store.comment(self._caller.name, conversation, turn, text):
            raise KbError("that answer has no rating of yours yet", "give it a thumb up or down first")

    def all(self, limit: int | None = None) -> list[Rating]:
        """Everyone's ratings, the newest first: admins only."""
        if not self._caller.admin:
            raise PermissionDeniedError(
                "only an admin may read the feedback", "ask an admin, or run `kb` on the server"
            )
        return self._store.all(limit)

    def export(self, fmt: str = "jsonl") -> str:
        return export(self.all(), fmt)
