"""``kb users``, ``kb grant``/``revoke``/``grants`` and ``kb keys``, driven as a person or a script drives them:
typer's CliRunner for each command, and one real process for how an error reaches the terminal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from kb_app import assistant as assistant_module
from kb_app.access.roles import Role, User
from kb_app.assistant import Assistant
from kb_app.cli import app
from kb_app.errors import AccessError, AuthenticationError, KnowledgeBaseNotFoundError, UnknownUserError
from kb_app.settings import Settings

PASSWORD = "correct horse battery"


def kb(settings: Settings, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, ["--home", str(settings.home), *args], input=input)


def ok(settings: Settings, *args: str, input: str | None = None) -> Result:
    result = kb(settings, *args, input=input)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def add(settings: Settings, name: str, *flags: str) -> None:
    ok(settings, "users", "add", name, "--password-stdin", *flags, input=PASSWORD + "\n")


@pytest.fixture
def hr(settings: Settings, tmp_path: Path) -> Settings:
    """A home with a knowledge base "hr" (the owner's)."""
    doc = tmp_path / "leave.md"
    doc.write_text("# Leave\n\nParental leave is sixteen weeks.\n", encoding="utf-8")
    assert not Assistant(settings).ingest([doc], "hr").failed
    return settings


def test_users_add_from_stdin_and_list(settings: Settings) -> None:
    add(settings, "alice")
    added = ok(settings, "users", "add", "boss", "--admin", "--password-stdin", "--json", input=PASSWORD + "\r\n")
    assert json.loads(added.stdout) | {"created": None} == {"name": "boss", "admin": True, "created": None}
    listed = json.loads(ok(settings, "users", "list", "--json").stdout)
    assert [(u["name"], u["admin"]) for u in listed] == [("alice", False), ("boss", True)]
    text = ok(settings, "users", "list").stdout
    assert "alice\tuser" in text and "boss\tadmin" in text and PASSWORD not in text
    access = Assistant(settings).access
    assert access.authenticate("alice", PASSWORD) == User("alice")
    assert access.authenticate("boss", PASSWORD) == User("boss", admin=True)  # the line ending is not the password


def test_users_add_prompts_twice_without_echo(settings: Settings) -> None:
    result = ok(settings, "users", "add", "alice", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert PASSWORD not in result.output
    assert result.output.count("Password") == 1 and "Repeat for confirmation" in result.output
    assert Assistant(settings).access.authenticate("alice", PASSWORD) == User("alice")

    mismatch = kb(settings, "users", "add", "bob", input=f"{PASSWORD}\nsomething else\n")
    assert mismatch.exit_code != 0 and "do not match" in mismatch.output
    assert [u["name"] for u in json.loads(ok(settings, "users", "list", "--json").stdout)] == ["alice"]


def test_users_add_refuses_a_short_password_a_bad_name_and_a_duplicate(settings: Settings) -> None:
    for args, stdin, error in (
        (["alice"], "short\n", "8 characters"),
        (["alice"], "", "8 characters"),
        (["owner"], PASSWORD, "not a user name"),
        (["../x"], PASSWORD, "not a user name"),
    ):
        result = kb(settings, "users", "add", *args, "--password-stdin", input=stdin)
        assert isinstance(result.exception, AccessError) and error in str(result.exception), result.output
    add(settings, "alice")
    again = kb(settings, "users", "add", "alice", "--password-stdin", input="another password\n")
    assert isinstance(again.exception, AccessError) and "kb users passwd alice" in again.exception.hint


def test_users_passwd_from_stdin_and_prompt_ends_sessions(settings: Settings) -> None:
    add(settings, "alice")
    access = Assistant(settings).access
    token = access.start_session("alice")
    ok(settings, "users", "passwd", "alice", "--password-stdin", input="a brand new password\n")
    with pytest.raises(AuthenticationError):
        access.user_for_session(token)
    with pytest.raises(AuthenticationError):
        access.authenticate("alice", PASSWORD)
    assert access.authenticate("alice", "a brand new password") == User("alice")
    ok(settings, "users", "passwd", "alice", input="third password\nthird password\n")
    assert access.authenticate("alice", "third password") == User("alice")
    unknown = kb(settings, "users", "passwd", "mallory", input="whatever password\nwhatever password\n")
    assert isinstance(unknown.exception, UnknownUserError) and "Password" not in unknown.output  # asked nothing


def test_users_remove_asks_unless_yes(hr: Settings) -> None:
    for name in ("alice", "bob"):
        add(hr, name)
    ok(hr, "grant", "alice", "hr", "read")
    ok(hr, "keys", "create", "alice")
    declined = kb(hr, "users", "remove", "alice", input="n\n")
    assert declined.exit_code != 0 and "grants, keys and sessions" in declined.output
    assert "alice" in ok(hr, "users", "list").stdout
    ok(hr, "users", "remove", "alice", input="y\n")
    ok(hr, "users", "remove", "bob", "--yes")
    assert json.loads(ok(hr, "users", "list", "--json").stdout) == []
    assert json.loads(ok(hr, "grants", "--json").stdout) == []
    assert json.loads(ok(hr, "keys", "list", "--json").stdout) == []
    unknown = kb(hr, "users", "remove", "alice", "--yes")
    assert isinstance(unknown.exception, UnknownUserError) and "kb users list" in unknown.exception.hint


def test_grant_revoke_and_grants(hr: Settings) -> None:
    add(hr, "alice")
    add(hr, "bob")
    given = json.loads(ok(hr, "grant", "alice", "hr", "read", "--json").stdout)
    assert given == {"user": "alice", "kb": "hr", "role": "read"}
    assert "bob holds 'ask' on hr" in ok(hr, "grant", "bob", "hr", "ASK").stdout
    assert Assistant(hr).as_user(User("alice")).role("hr") is Role.READ
    listed = json.loads(ok(hr, "grants", "--json").stdout)
    assert listed == [{"user": "alice", "kb": "hr", "role": "read"}, {"user": "bob", "kb": "hr", "role": "ask"}]
    assert json.loads(ok(hr, "grants", "--kb", "hr", "--json").stdout) == listed
    assert json.loads(ok(hr, "grants", "--kb", "sales", "--json").stdout) == []
    assert "hr\talice\tread" in ok(hr, "grants").stdout

    ok(hr, "grant", "alice", "hr", "write")  # a second grant replaces the first
    assert Assistant(hr).as_user(User("alice")).role("hr") is Role.WRITE
    assert "alice no longer holds a grant on hr" in ok(hr, "revoke", "alice", "hr").stdout
    assert Assistant(hr).as_user(User("alice")).role("hr") is None
    again = kb(hr, "revoke", "alice", "hr")
    assert isinstance(again.exception, AccessError) and "kb grants --kb 'hr'" in again.exception.hint


def test_grant_refuses_a_bad_role_an_unknown_user_and_a_missing_knowledge_base(hr: Settings) -> None:
    add(hr, "alice")
    bad_role = kb(hr, "grant", "alice", "hr", "boss")
    assert isinstance(bad_role.exception, AccessError)
    assert bad_role.exception.hint == "choose one of: ask, read, write, admin"
    assert isinstance(kb(hr, "grant", "mallory", "hr", "read").exception, UnknownUserError)
    assert isinstance(kb(hr, "grant", "alice", "ghost", "read").exception, KnowledgeBaseNotFoundError)
    assert json.loads(ok(hr, "grants", "--json").stdout) == []


def test_keys_create_prints_the_key_once_and_list_never_does(settings: Settings) -> None:
    add(settings, "alice")
    created = json.loads(ok(settings, "keys", "create", "alice", "--label", "ci", "--json").stdout)
    assert set(created) == {"key", "id", "user", "label"}
    assert created["user"] == "alice" and created["label"] == "ci"
    plain = ok(settings, "keys", "create", "alice")
    second = plain.stdout.strip()
    assert plain.stdout == second + "\n" and "not shown again" in plain.stderr  # stdout holds only the key
    access = Assistant(settings).access
    assert access.user_for_key(created["key"]) == access.user_for_key(second) == User("alice")

    outputs = [ok(settings, "keys", "list", *args).output for args in ([], ["alice"], ["--json"], ["alice", "--json"])]
    for output in outputs:
        assert created["id"] in output
        assert created["key"] not in output and second not in output and created["key"][3:] not in output
    rows = json.loads(outputs[2])
    assert len(rows) == 2 and created["id"] in {row["id"] for row in rows}
    assert all(set(row) == {"id", "user", "label", "created", "last_used"} for row in rows)
    assert any(row["last_used"] for row in rows)  # the key was just used

    assert created["id"] in ok(settings, "keys", "revoke", created["id"]).stdout
    with pytest.raises(AuthenticationError):
        access.user_for_key(created["key"])
    assert access.user_for_key(second) == User("alice")
    unknown = kb(settings, "keys", "revoke", created["id"])
    assert isinstance(unknown.exception, AccessError) and "kb keys list" in unknown.exception.hint
    assert isinstance(kb(settings, "keys", "create", "mallory").exception, UnknownUserError)


def test_users_and_keys_never_open_chroma_or_the_model(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("a users/keys command opened the Chroma store")

    monkeypatch.setattr(assistant_module, "make_client", refuse)
    monkeypatch.setattr(assistant_module, "build_chat_model", refuse)
    monkeypatch.setattr(assistant_module, "build_embedder", refuse)
    add(settings, "alice")
    ok(settings, "users", "list")
    ok(settings, "users", "passwd", "alice", "--password-stdin", input="a brand new password\n")
    key_id = json.loads(ok(settings, "keys", "create", "alice", "--json").stdout)["id"]
    ok(settings, "keys", "list")
    ok(settings, "keys", "revoke", key_id)
    ok(settings, "grants")
    ok(settings, "users", "remove", "alice", "--yes")
    assert not settings.chroma_dir.exists()


def test_help_explains_each_command(settings: Settings) -> None:
    roles = ok(settings, "grant", "--help").output
    assert all(role in roles for role in ("ask", "read", "write", "admin"))
    for command in (["users"], ["keys"], ["users", "add"], ["users", "passwd"], ["keys", "create"], ["grants"]):
        assert "Usage" in ok(settings, *command, "--help").output
    assert "--password-stdin" in ok(settings, "users", "add", "--help").output
    assert "never the keys themselves" in ok(settings, "keys", "list", "--help").output


def test_an_error_is_a_message_and_a_hint_not_a_traceback(settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kb_app", "--home", str(settings.home), "users", "add", "alice", "--password-stdin"],
        input="short\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == "error: a password needs at least 8 characters\n  → choose a longer one\n"
