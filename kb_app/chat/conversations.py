"""Conversations kept per user (``KB_HOME/conversations.sqlite``, mode 0600): continue one after a reload, on
another day, or from the shell (``kb ask -c``), list them (``kb history``), rename, delete and export them.

A conversation belongs to one user and asks one or several knowledge bases (``kbs``; ``kb`` is the first, for
callers that know one). Each turn keeps the question, the answer, its citations and the passages the model read
but did not cite, as the asker saw them (an ``ask``-only caller's without passage text). Another user's
conversation is reported exactly like one that does not exist.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kb_app.chat.pipeline import Answer
from kb_app.errors import ConversationNotFoundError, KbError
from kb_app.models.base import Message
from kb_app.private_db import PrivateDb

TITLE_CHARS = 60
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, kb TEXT NOT NULL, title TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, kbs TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations (user, updated);
CREATE TABLE IF NOT EXISTS turns (
    conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, n INTEGER NOT NULL,
    question TEXT NOT NULL, answer TEXT NOT NULL, citations TEXT NOT NULL, refused INTEGER NOT NULL,
    at REAL NOT NULL, uncited TEXT NOT NULL DEFAULT '[]', PRIMARY KEY (conversation, n));
"""
# Columns added since the first release: a file kept by an older kb gets them, its rows read as before
# (an empty ``kbs`` means the one ``kb``; no ``uncited`` means none were kept).
_ADDED_COLUMNS = {
    "conversations": {"kbs": "TEXT NOT NULL DEFAULT ''"},
    "turns": {"uncited": "TEXT NOT NULL DEFAULT '[]'"},
}
_INERT = re.compile(r"\\|<|(?<=!)\[")  # as the page's neutralise(): no image, no raw HTML in an exported file


@dataclass(frozen=True)
class Conversation:
    id: str
    kb: str  # the first of ``kbs``
    title: str
    created: float
    updated: float
    turns: int
    kbs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    citations: list[dict]
    refused: bool
    at: float
    uncited: list[dict] = field(default_factory=list)


def _names(kbs: str | list[str]) -> list[str]:
    """One name or several, each once, in the order given; at least one."""
    names = list(dict.fromkeys([kbs] if isinstance(kbs, str) else kbs))
    if not names:
        raise KbError("a conversation needs a knowledge base", "pick at least one knowledge base")
    return names


class ConversationStore:
    """Every method names the user it acts for (but :meth:`rename_kb`); a connection per call, safe from any
    thread or process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = PrivateDb(path, _SCHEMA)
        with self._db() as db:
            for table, columns in _ADDED_COLUMNS.items():
                present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns.items():
                    if name not in present:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._file.connect()

    def start(self, user: str, kbs: str | list[str], title: str = "") -> Conversation:
        names = _names(kbs)
        now = time.time()
        conversation = Conversation(secrets.token_hex(6), names[0], title.strip()[:TITLE_CHARS], now, now, 0, names)
        with self._db() as db:
            db.execute(
                "INSERT INTO conversations (id, user, kb, title, created, updated, kbs) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conversation.id, user, names[0], conversation.title, now, now, json.dumps(names, ensure_ascii=False)),
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
            "SELECT c.id, c.kb, c.title, c.created, c.updated, COUNT(t.n), c.kbs FROM conversations c "
            f"LEFT JOIN turns t ON t.conversation = c.id WHERE c.user = ? {where} "
            "GROUP BY c.id ORDER BY c.updated DESC, c.rowid DESC LIMIT ?"
        )
        with self._db() as db:
            rows = db.execute(query, (user, *args, limit)).fetchall()
        return [Conversation(*row[:6], json.loads(row[6]) if row[6] else [row[1]]) for row in rows]

    def turns(self, user: str, conversation_id: str) -> list[Turn]:
        self.get(user, conversation_id)
        with self._db() as db:
            rows = db.execute(
                "SELECT question, answer, citations, refused, at, uncited FROM turns WHERE conversation = ? ORDER BY n",
                (conversation_id,),
            ).fetchall()
        return [Turn(q, a, json.loads(c), bool(r), at, json.loads(u)) for q, a, c, r, at, u in rows]

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
        uncited = json.dumps([asdict(c) for c in answer.uncited], ensure_ascii=False)
        with self._db() as db:
            n = db.execute(
                "SELECT COALESCE(MAX(n) + 1, 0) FROM turns WHERE conversation = ?", (conversation_id,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO turns (conversation, n, question, answer, citations, refused, at, uncited) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, n, question, answer.text, citations, int(answer.refused), now, uncited),
            )
            title = conversation.title or " ".join(question.split())[:TITLE_CHARS]
            db.execute("UPDATE conversations SET updated = ?, title = ? WHERE id = ?", (now, title, conversation_id))

    def drop_last(self, user: str, conversation_id: str) -> Turn | None:
        """Take the last turn out (to ask its question again); None when there is none."""
        turns = self.turns(user, conversation_id)
        if not turns:
            return None
        with self._db() as db:
            db.execute(
                "DELETE FROM turns WHERE conversation = ? AND n = (SELECT MAX(n) FROM turns WHERE conversation = ?)",
                (conversation_id, conversation_id),
            )
        return turns[-1]

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

    def rename_kb(self, old: str, new: str) -> None:
        """A knowledge base was renamed: every user's conversations and citations name it by its new name."""
        with self._db() as db:
            rows = db.execute("SELECT id, kb, kbs FROM conversations").fetchall()
            for conversation_id, kb, kbs in rows:
                names = json.loads(kbs) if kbs else [kb]
                if old not in names:
                    continue
                names = [new if name == old else name for name in names]
                db.execute(
                    "UPDATE conversations SET kb = ?, kbs = ? WHERE id = ?",
                    (names[0], json.dumps(names, ensure_ascii=False), conversation_id),
                )
                self._rename_cited(db, conversation_id, old, new)

    @staticmethod
    def _rename_cited(db: sqlite3.Connection, conversation_id: str, old: str, new: str) -> None:
        turns = db.execute("SELECT n, citations, uncited FROM turns WHERE conversation = ?", (conversation_id,))
        for n, *lists in turns.fetchall():
            renamed = [
                json.dumps([{**c, "kb": new} if c.get("kb") == old else c for c in json.loads(raw)], ensure_ascii=False)
                for raw in lists
            ]
            db.execute(
                "UPDATE turns SET citations = ?, uncited = ? WHERE conversation = ? AND n = ?",
                (*renamed, conversation_id, n),
            )


def to_markdown(conversation: Conversation, turns: list[Turn]) -> str:
    """A conversation as a Markdown file a person can keep or pass on: each question, its answer and every source
    cited (file, page, heading, knowledge base, the passage quoted). No text in it can show an image or run HTML."""
    when = datetime.fromtimestamp(conversation.created, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# {_inert(conversation.title or conversation.id)}",
        "",
        f"Knowledge bases: {', '.join(_inert(name) for name in conversation.kbs)} · started {when}",
    ]
    for number, turn in enumerate(turns, 1):
        lines += ["", f"## {number}. {_inert(' '.join(turn.question.split()))}", "", _inert(turn.answer.strip())]
        if turn.citations:
            lines += ["", "**Sources**", ""]
        for c in turn.citations:
            lines += [
                f"- {_source_line(c)}",
                *(f"  > {_inert(line)}" for line in c["text"].splitlines() if line.strip()),
            ]
    return "\n".join(lines) + "\n"


def _source_line(citation: dict) -> str:
    parts = [f"[{citation['n']}] {_inert(citation['source'])}"]
    if citation.get("page"):
        parts.append(f"page {citation['page']}")
    if citation.get("heading"):
        parts.append(_inert(citation["heading"]))
    if citation.get("kb"):
        parts.append(f"knowledge base {_inert(citation['kb'])}")
    return " · ".join(parts)


def _inert(text: str) -> str:
    return _INERT.sub(lambda m: "\\" + m.group(0), text)


class Conversations:
    """One user's conversations: what ``Assistant.conversations`` hands the CLI, the page and the API."""

    def __init__(self, store: ConversationStore, user: str) -> None:
        self._store = store
        self._user = user

    def start(self, kbs: str | list[str], title: str = "") -> Conversation:
        return self._store.start(self._user, kbs, title)

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

    def drop_last(self, conversation_id: str) -> Turn | None:
        return self._store.drop_last(self._user, conversation_id)

    def rename(self, conversation_id: str, title: str) -> None:
        self._store.rename(self._user, conversation_id, title)

    def delete(self, conversation_id: str) -> None:
        self._store.delete(self._user, conversation_id)

    def export_markdown(self, conversation_id: str) -> str:
        """The conversation as Markdown with its sources (``kb history ID --markdown``, the page's export link)."""
        return to_markdown(self.get(conversation_id), self.turns(conversation_id))
