"""Conversations kept per user (``KB_HOME/conversations.sqlite``, mode 0600): continue one after a reload, on
another day, or from the shell (``kb ask -c``), and list them (``kb history``), as simonw/llm keeps its logs.

A conversation belongs to one user and one knowledge base. Each turn keeps the question, the answer and its
citations as the asker saw them (an ``ask``-only caller's without passage text). Another user's conversation is
reported exactly like one that does not exist.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

from kb_app.chat.pipeline import Answer
from kb_app.errors import ConversationNotFoundError
from kb_app.models.base import Message
from kb_app.private_db import PrivateDb

TITLE_CHARS = 60
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, kb TEXT NOT NULL, title TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations (user, updated);
CREATE TABLE IF NOT EXISTS turns (
    conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, n INTEGER NOT NULL,
    question TEXT NOT NULL, answer TEXT NOT NULL, citations TEXT NOT NULL, refused INTEGER NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (conversation, n));
"""


@dataclass(frozen=True)
class Conversation:
    id: str
    kb: str
    title: str
    created: float
    updated: float
    turns: int


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    citations: list[dict]
    refused: bool
    at: float


class ConversationStore:
    """Every method names the user it acts for; a connection per call, safe from any thread or process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = PrivateDb(path, _SCHEMA)

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._file.connect()

    def start(self, user: str, kb: str, title: str = "") -> Conversation:
        now = time.time()
        conversation = Conversation(secrets.token_hex(6), kb, title.strip()[:TITLE_CHARS], now, now, 0)
        with self._db() as db:
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                (conversation.id, user, kb, conversation.title, now, now),
            )
        return conversation

    def get(self, user: str, conversation_id: str) -> Conversation:
        found = self._select(user, "AND c.id = ?", (conversation_id,))
        if not found:
            raise ConversationNotFoundError(
                f"there is no conversation '{conversation_id[:40]}' of yours", "`kb history` lists your conversations"
            )
        return found[0]

    def recent(self, user: str, limit: int = 50) -> list[Conversation]:
        """The user's conversations, the most recently continued first."""
        return self._select(user, "", (), limit)

    def _select(self, user: str, where: str, args: tuple, limit: int = 1) -> list[Conversation]:
        query = (
            "SELECT c.id, c.kb, c.title, c.created, c.updated, COUNT(t.n) FROM conversations c "
            f"LEFT JOIN turns t ON t.conversation = c.id WHERE c.user = ? {where} "
            "GROUP BY c.id ORDER BY c.updated DESC, c.rowid DESC LIMIT ?"
        )
        with self._db() as db:
            rows = db.execute(query, (user, *args, limit)).fetchall()
        return [Conversation(*row) for row in rows]

    def turns(self, user: str, conversation_id: str) -> list[Turn]:
        self.get(user, conversation_id)
        with self._db() as db:
            rows = db.execute(
                "SELECT question, answer, citations, refused, at FROM turns WHERE conversation = ? ORDER BY n",
                (conversation_id,),
            ).fetchall()
        return [Turn(q, a, json.loads(c), bool(r), at) for q, a, c, r, at in rows]

    def history(self, user: str, conversation_id: str) -> list[Message]:
        """The past turns as chat messages, for condensing the next question."""
        messages: list[Message] = []
        for turn in self.turns(user, conversation_id):
            messages += [{"role": "user", "content": turn.question}, {"role": "assistant", "content": turn.answer}]
        return messages

    def record(self, user: str, conversation_id: str, question: str, answer: Answer) -> None:
        """Add a turn; a conversation without a title is named after its first question."""
        conversation = self.get(user, conversation_id)
        now = time.time()
        citations = json.dumps([asdict(c) for c in answer.citations], ensure_ascii=False)
        with self._db() as db:
            db.execute(
                "INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, conversation.turns, question, answer.text, citations, int(answer.refused), now),
            )
            title = conversation.title or " ".join(question.split())[:TITLE_CHARS]
            db.execute("UPDATE conversations SET updated = ?, title = ? WHERE id = ?", (now, title, conversation_id))

    def rename(self, user: str, conversation_id: str, title: str) -> None:
        self.get(user, conversation_id)
        with self._db() as db:
            db.execute(
                "UPDATE conversations SET title = ? WHERE id = ?", (title.strip()[:TITLE_CHARS], conversation_id)
            )

    def delete(self, user: str, conversation_id: str) -> None:
        self.get(user, conversation_id)
        with self._db() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))


class Conversations:
    """One user's conversations: what ``Assistant.conversations`` hands the CLI, the page and the API."""

    def __init__(self, store: ConversationStore, user: str) -> None:
        self._store = store
        self._user = user

    def start(self, kb: str, title: str = "") -> Conversation:
        return self._store.start(self._user, kb, title)

    def get(self, conversation_id: str) -> Conversation:
        return self._store.get(self._user, conversation_id)

    def recent(self, limit: int = 50) -> list[Conversation]:
        return self._store.recent(self._user, limit)

    def last(self) -> Conversation:
        """The conversation continued most recently; :class:`ConversationNotFoundError` when there is none."""
        found = self._store.recent(self._user, 1)
        if not found:
            raise ConversationNotFoundError("you have no conversation to continue yet", "ask without -c to start one")
        return found[0]

    def turns(self, conversation_id: str) -> list[Turn]:
        return self._store.turns(self._user, conversation_id)

    def history(self, conversation_id: str) -> list[Message]:
        return self._store.history(self._user, conversation_id)

    def record(self, conversation_id: str, question: str, answer: Answer) -> None:
        self._store.record(self._user, conversation_id, question, answer)
