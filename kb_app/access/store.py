"""Users, grants, API keys and sessions, in one SQLite file under ``KB_HOME`` (``access.sqlite``, mode 0600).

Passwords are hashed with argon2id (argon2-cffi's defaults): slow on purpose, since a password is guessable. API keys
and session tokens are 32 random bytes, so a SHA-256 digest is enough to store them (a stolen file gives no key) and
keeps every request cheap. A connection per call: the CLI may add a user while ``kb serve`` reads the same file.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from kb_app.access.roles import Role, User, check_user_name
from kb_app.errors import AccessError, AuthenticationError, UnknownUserError
from kb_app.private_db import PrivateDb

KEY_PREFIX = "kb-"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, admin INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS grants (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE, kb TEXT NOT NULL, role INTEGER NOT NULL,
    PRIMARY KEY (user, kb));
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE, label TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE, created REAL NOT NULL, last_used REAL);
CREATE TABLE IF NOT EXISTS sessions (
    digest TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE, expires REAL NOT NULL);
"""


@dataclass(frozen=True)
class UserRecord:
    name: str
    admin: bool
    created: float


@dataclass(frozen=True)
class Grant:
    user: str
    kb: str
    role: Role


@dataclass(frozen=True)
class KeyRecord:
    id: str
    user: str
    label: str
    created: float
    last_used: float | None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class AccessStore:
    """The file is created on first use with mode 0600; every method is safe from any thread or process."""

    def __init__(self, path: Path, session_hours: float = 12.0) -> None:
        self.path = path
        self.session_s = session_hours * 3600
        self._hasher = PasswordHasher()
        self._file = PrivateDb(path, _SCHEMA)

    @cached_property
    def _dummy_hash(self) -> str:
        return self._hasher.hash(secrets.token_hex(8))

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._file.connect()

    # -- users -----------------------------------------------------------------------------------------------

    def add_user(self, name: str, password: str, admin: bool = False) -> UserRecord:
        name = check_user_name(name)
        _check_password(password)
        record = UserRecord(name, admin, time.time())
        row = (name, self._hasher.hash(password), int(admin), record.created)
        try:
            with self._db() as db:
                db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", row)
        except sqlite3.IntegrityError:
            hint = f"`kb users passwd {name}` changes the password"
            raise AccessError(f"there is already a user named '{name}'", hint) from None
        return record

    def users(self) -> list[UserRecord]:
        with self._db() as db:
            rows = db.execute("SELECT name, admin, created FROM users ORDER BY name").fetchall()
        return [UserRecord(name, bool(admin), created) for name, admin, created in rows]

    def user(self, name: str) -> User:
        with self._db() as db:
            row = db.execute("SELECT name, admin FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownUserError(f"there is no user named '{name[:80]}'", "`kb users list` shows them")
        return User(row[0], bool(row[1]))

    def remove_user(self, name: str) -> None:
        """The user goes with their grants, keys and sessions."""
        self.user(name)
        with self._db() as db:
            db.execute("DELETE FROM users WHERE name = ?", (name,))

    def set_password(self, name: str, password: str) -> None:
        """A new password also ends every session the user has open."""
        self.user(name)
        _check_password(password)
        with self._db() as db:
            db.execute("UPDATE users SET password_hash = ? WHERE name = ?", (self._hasher.hash(password), name))
            db.execute("DELETE FROM sessions WHERE user = ?", (name,))

    def authenticate(self, name: str, password: str) -> User:
        """The user if the password is theirs; :class:`AuthenticationError` otherwise, the same for an unknown name."""
        with self._db() as db:
            row = db.execute("SELECT password_hash, admin FROM users WHERE name = ?", (name,)).fetchone()
        stored = row[0] if row else self._dummy_hash  # an unknown name costs as much time as a known one
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            row = None
        if row is None:
            raise AuthenticationError("wrong user name or password", "an admin can reset it: `kb users passwd NAME`")
        if self._hasher.check_needs_rehash(stored):
            with self._db() as db:
                db.execute("UPDATE users SET password_hash = ? WHERE name = ?", (self._hasher.hash(password), name))
        return User(name, bool(row[1]))

    # -- grants ----------------------------------------------------------------------------------------------

    def grant(self, user: str, kb: str, role: Role) -> Grant:
        self.user(user)
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO grants VALUES (?, ?, ?)", (user, kb, int(role)))
        return Grant(user, kb, role)

    def revoke(self, user: str, kb: str) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM grants WHERE user = ? AND kb = ?", (user, kb)).rowcount > 0

    def role(self, user: str, kb: str) -> Role | None:
        with self._db() as db:
            row = db.execute("SELECT role FROM grants WHERE user = ? AND kb = ?", (user, kb)).fetchone()
        return Role(row[0]) if row else None

    def grants(self, user: str | None = None, kb: str | None = None) -> list[Grant]:
        query, args = "SELECT user, kb, role FROM grants WHERE 1=1", []
        for column, value in (("user", user), ("kb", kb)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        with self._db() as db:
            rows = db.execute(query + " ORDER BY kb, user", args).fetchall()
        return [Grant(u, k, Role(r)) for u, k, r in rows]

    def forget_kb(self, kb: str) -> None:
        """A deleted knowledge base's grants go with it: one created later under that name starts with none."""
        with self._db() as db:
            db.execute("DELETE FROM grants WHERE kb = ?", (kb,))

    def rename_kb(self, old: str, new: str) -> None:
        """A renamed knowledge base keeps its grants (any left under the new name are an older one's: dropped)."""
        with self._db() as db:
            db.execute("DELETE FROM grants WHERE kb = ?", (new,))
            db.execute("UPDATE grants SET kb = ? WHERE kb = ?", (new, old))

    # -- keys ------------------------------------------------------------------------------------------------

    def create_key(self, user: str, label: str = "") -> tuple[KeyRecord, str]:
        """A new key for ``user``: the record and the key itself, which is shown once and stored only as a digest."""
        self.user(user)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(secrets.token_hex(4), user, label, time.time(), None)
        with self._db() as db:
            db.execute(
                "INSERT INTO keys VALUES (?, ?, ?, ?, ?, NULL)",
                (record.id, user, label, _digest(secret), record.created),
            )
        return record, secret

    def keys(self, user: str | None = None) -> list[KeyRecord]:
        query = "SELECT id, user, label, created, last_used FROM keys"
        with self._db() as db:
            args = (user,) if user else ()
            rows = db.execute(query + (" WHERE user = ?" if user else "") + " ORDER BY created", args).fetchall()
        return [KeyRecord(*row) for row in rows]

    def revoke_key(self, key_id: str, user: str | None = None) -> bool:
        """Revoke a key by its id (``kb keys list``); with ``user``, only one of theirs."""
        query, args = "DELETE FROM keys WHERE id = ?", [key_id]
        if user is not None:
            query, args = query + " AND user = ?", [key_id, user]
        with self._db() as db:
            return db.execute(query, args).rowcount > 0

    def user_for_key(self, secret: str) -> User:
        with self._db() as db:
            row = db.execute(
                "SELECT users.name, users.admin, keys.id FROM keys JOIN users ON users.name = keys.user "
                "WHERE keys.digest = ?",
                (_digest(secret),),
            ).fetchone()
            if row is not None:
                db.execute("UPDATE keys SET last_used = ? WHERE id = ?", (time.time(), row[2]))
        if row is None:
            raise AuthenticationError("that API key is not valid", "create one with `kb keys create NAME`")
        return User(row[0], bool(row[1]))

    # -- sessions --------------------------------------------------------------------------------------------

    def start_session(self, user: str) -> str:
        """A session token for the page's cookie; it expires after ``auth.session_hours``."""
        self.user(user)
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            db.execute("INSERT INTO sessions VALUES (?, ?, ?)", (_digest(token), user, now + self.session_s))
        return token

    def user_for_session(self, token: str) -> User:
        with self._db() as db:
            row = db.execute(
                "SELECT users.name, users.admin FROM sessions JOIN users ON users.name = sessions.user "
                "WHERE sessions.digest = ? AND sessions.expires >= ?",
                (_digest(token), time.time()),
            ).fetchone()
        if row is None:
            raise AuthenticationError("you are not signed in, or your session has expired", "sign in again")
        return User(row[0], bool(row[1]))

    def end_session(self, token: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE digest = ?", (_digest(token),))


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise AccessError("a password needs at least 8 characters", "choose a longer one")
