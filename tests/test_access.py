"""Attacks on the access core through the Assistant: real Chroma, real ingest, the real model where an answer is
needed. Every rule here is one a caller could try to get around: stored secrets, sessions, keys, and every verb
on a knowledge base the caller holds no (or too small a) grant on."""

from __future__ import annotations

import re
import shutil
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kb_app.access import store as store_module
from kb_app.access.roles import Role, User
from kb_app.assistant import Assistant
from kb_app.errors import (
    AccessError,
    AuthenticationError,
    KbError,
    KnowledgeBaseNameError,
    PermissionDeniedError,
    UnknownUserError,
)
from kb_app.settings import Settings, load_settings
from tests.conftest import FIXTURES

PASSWORD = "correct horse battery"
HR_TEXT = "# Parental leave\n\nAt Quillfeather Ltd the parental leave is sixteen weeks on full pay.\n"
SALES_TEXT = "# Targets\n\nThe Quillfeather sales team must close forty contracts each quarter.\n"

# -- the house: two knowledge bases and one user per role on "hr" ----------------------------------------------


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory) -> Assistant:
    docs = tmp_path_factory.mktemp("docs")
    owner = Assistant(load_settings(home=tmp_path_factory.mktemp("home")))
    hr = [_write(docs / "hr", "leave.md", HR_TEXT), docs / "hr" / "memo.pdf"]
    shutil.copy(FIXTURES / "formats" / "memo.pdf", hr[1])
    assert not owner.ingest(hr, kb="hr").failed
    assert not owner.ingest([_write(docs / "sales", "targets.md", SALES_TEXT)], kb="sales").failed
    accounts = owner.accounts
    for name in ("nobody", "asker", "reader", "writer", "keeper"):
        accounts.add_user(name, PASSWORD)
    accounts.add_user("boss", PASSWORD, admin=True)
    for name, role in (("asker", "ask"), ("reader", "read"), ("writer", "write"), ("keeper", "admin")):
        accounts.grant(name, "hr", role)
    accounts.grant("nobody", "sales", "read")
    return owner


def as_(house: Assistant, name: str) -> Assistant:
    """The assistant acting for ``name``, as the server makes it after authentication."""
    return house.as_user(house.access.user(name))


def verbs(folder: Path) -> dict[str, Callable[[Assistant, str], object]]:
    """Every verb that reads or changes a knowledge base, called on ``kb``."""
    stop = threading.Event()
    stop.set()
    return {
        "knowledge_base": lambda a, kb: a.knowledge_base(kb, create=False),
        "files": lambda a, kb: a.files(kb),
        "failures": lambda a, kb: a.failures(kb),
        "search": lambda a, kb: a.search("parental leave", kb),
        "retriever": lambda a, kb: a.retriever(kb),
        "pipeline": lambda a, kb: a.pipeline(kb),
        "stream": lambda a, kb: next(iter(a.stream("How long is the parental leave?", kb))),
        "ask": lambda a, kb: a.ask("How long is the parental leave?", kb),
        "remove_file": lambda a, kb: a.remove_file("leave.md", kb),
        "delete_knowledge_base": lambda a, kb: a.delete_knowledge_base(kb),
        "sync": lambda a, kb: a.sync(folder, kb),
        "watch": lambda a, kb: a.watch(folder, lambda report: None, kb, stop=stop),
        "ingest": lambda a, kb: a.ingest([folder / "planted.md"], kb),
        "grant": lambda a, kb: a.accounts.grant("nobody", kb, "admin"),
        "revoke": lambda a, kb: a.accounts.revoke("asker", kb),
    }


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    folder = tmp_path / "planted"
    _write(folder, "planted.md", "# Planted\n\nText an intruder tries to slip into another department.\n")
    return folder


CREATING = {"ingest", "sync", "watch"}  # a name nobody holds is free: these create it, and its creator holds admin


def _same_text(error: KbError, kb: str) -> str:
    return re.sub(rf"(?<![\w-]){re.escape(kb)}(?![\w-])", "KB", str(error))


def test_no_grant_means_no_verb_and_no_existence_leak(house: Assistant, planted: Path) -> None:
    nobody = as_(house, "nobody")
    assert nobody.list_knowledge_bases() == ["sales"]
    assert not nobody.has_knowledge_base("hr")
    assert nobody.role("hr") is None
    before = [r.source for r in house.files("hr")]
    for verb, call in verbs(planted).items():
        with pytest.raises(PermissionDeniedError) as on_hr:
            call(nobody, "hr")
        if verb in CREATING:
            continue
        with pytest.raises(PermissionDeniedError) as on_ghost:
            call(nobody, "ghost")
        assert _same_text(on_hr.value, "hr") == _same_text(on_ghost.value, "ghost"), verb
    assert [r.source for r in house.files("hr")] == before
    assert house.has_knowledge_base("hr") and not house.has_knowledge_base("ghost")


@pytest.mark.parametrize("crafted", ["hr ", " hr", "hr\n", "\thr"])
def test_a_padded_name_is_the_same_knowledge_base_and_refused(house: Assistant, crafted: str) -> None:
    nobody = as_(house, "nobody")
    assert not nobody.has_knowledge_base(crafted)
    for call in (nobody.files, lambda kb: nobody.search("parental leave", kb), nobody.delete_knowledge_base):
        with pytest.raises(PermissionDeniedError):
            call(crafted)


@pytest.mark.parametrize("crafted", ["../hr", "hr/..", "..", "kbs/hr", "hr\u200b", "h\x00r", "hr\\.."])
def test_a_name_shaped_like_a_path_never_reaches_it(house: Assistant, crafted: str) -> None:
    nobody = as_(house, "nobody")
    for call in (nobody.files, lambda kb: nobody.search("parental leave", kb), nobody.has_knowledge_base):
        with pytest.raises(KnowledgeBaseNameError):
            call(crafted)
    assert "hr" not in nobody.list_knowledge_bases()


def test_a_look_alike_name_is_another_knowledge_base(house: Assistant, planted: Path) -> None:
    """Creating "HR" (or a full-width "ｈｒ") makes a knowledge base of one's own; it holds none of "hr"."""
    nobody = as_(house, "nobody")
    for look_alike in ("HR", "ｈｒ", "Hr "):
        report = nobody.ingest([planted / "planted.md"], kb=look_alike)
        assert not report.failed
        assert nobody.role(look_alike) is Role.ADMIN
        sources = {hit.chunk.source for hit in nobody.search("parental leave sixteen weeks", look_alike)}
        assert sources == {"planted.md"}
        assert house.delete_knowledge_base(look_alike)
    assert "planted.md" not in [r.source for r in house.files("hr")]
    assert nobody.role("hr") is None


def test_ask_may_ask_and_list_files_but_not_read_passages(house: Assistant, planted: Path) -> None:
    asker = as_(house, "asker")
    assert asker.list_knowledge_bases() == ["hr"]
    assert asker.role("hr") is Role.ASK
    assert {r.source for r in asker.files("hr")} == {"leave.md", "memo.pdf"}
    calls = verbs(planted)
    for verb in ("search", "retriever", "pipeline", "ingest", "remove_file", "delete_knowledge_base"):
        with pytest.raises(PermissionDeniedError, match="'ask' grant on 'hr' does not allow this"):
            calls[verb](asker, "hr")
    with pytest.raises(PermissionDeniedError):
        asker.accounts.grant("nobody", "hr", "ask")


def test_read_may_search_but_not_write(house: Assistant, planted: Path) -> None:
    reader = as_(house, "reader")
    hits = reader.search("parental leave", "hr")
    assert hits and "sixteen weeks" in hits[0].chunk.text
    calls = verbs(planted)
    for verb in ("ingest", "remove_file", "sync", "delete_knowledge_base"):
        with pytest.raises(PermissionDeniedError, match="'read' grant"):
            calls[verb](reader, "hr")
    with pytest.raises(PermissionDeniedError):
        calls["search"](reader, "sales")


def test_write_may_ingest_and_remove_but_not_delete_or_grant(house: Assistant, planted: Path) -> None:
    writer = as_(house, "writer")
    assert writer.ingest([planted / "planted.md"], "hr").by_status("added")
    writer.remove_file("planted.md", "hr")
    assert {r.source for r in writer.files("hr")} == {"leave.md", "memo.pdf"}
    with pytest.raises(PermissionDeniedError, match="needs 'admin'"):
        writer.delete_knowledge_base("hr")
    with pytest.raises(PermissionDeniedError, match="needs 'admin'"):
        writer.accounts.grant("nobody", "hr", "read")
    with pytest.raises(PermissionDeniedError):
        writer.accounts.revoke("asker", "hr")
    assert house.has_knowledge_base("hr") and as_(house, "nobody").role("hr") is None


def test_admin_of_a_knowledge_base_grants_on_it_and_nowhere_else(house: Assistant) -> None:
    keeper = as_(house, "keeper")
    keeper.accounts.grant("nobody", "hr", "ask")
    try:
        assert as_(house, "nobody").role("hr") is Role.ASK
        held = {(g.user, g.role) for g in keeper.accounts.grants("hr")}
        assert held >= {("nobody", Role.ASK), ("keeper", Role.ADMIN)}
    finally:
        assert keeper.accounts.revoke("nobody", "hr")
    assert as_(house, "nobody").role("hr") is None
    with pytest.raises(PermissionDeniedError):
        keeper.accounts.grant("keeper", "sales", "admin")
    assert all(g.kb == "hr" for g in keeper.accounts.grants())  # the other knowledge bases' grants stay hidden
    for what in (lambda: keeper.accounts.add_user("mallory", PASSWORD), keeper.accounts.users):
        with pytest.raises(PermissionDeniedError, match="only an admin"):
            what()


def test_a_global_admin_sees_and_may_do_everything(house: Assistant) -> None:
    boss = as_(house, "boss")
    assert boss.list_knowledge_bases() == ["hr", "sales"]
    assert boss.role("hr") is Role.ADMIN and boss.role("sales") is Role.ADMIN
    assert boss.search("forty contracts", "sales")[0].chunk.source == "targets.md"
    assert {u.name for u in boss.accounts.users()} >= {"nobody", "boss"}


def test_creator_holds_admin_and_deleting_drops_every_grant(settings: Settings, tmp_path: Path) -> None:
    owner = Assistant(settings)
    for name in ("creator", "colleague", "later"):
        owner.accounts.add_user(name, PASSWORD)
    creator, colleague, later = (owner.as_user(owner.access.user(n)) for n in ("creator", "colleague", "later"))
    doc = _write(tmp_path / "docs", "leave.md", HR_TEXT)

    assert not creator.ingest([doc], "hr").failed
    assert creator.role("hr") is Role.ADMIN
    creator.accounts.grant("colleague", "hr", "read")
    assert colleague.search("parental leave", "hr")
    with pytest.raises(PermissionDeniedError):
        later.delete_knowledge_base("hr")

    assert creator.delete_knowledge_base("hr")
    assert owner.access.grants(kb="hr") == []
    assert not owner.has_knowledge_base("hr")

    assert not later.ingest([doc], "hr").failed  # recreated under the same name by someone else
    assert later.role("hr") is Role.ADMIN
    assert creator.role("hr") is None and colleague.role("hr") is None
    assert not colleague.has_knowledge_base("hr")
    with pytest.raises(PermissionDeniedError):
        colleague.search("parental leave", "hr")


# -- the store: passwords, keys, sessions ------------------------------------------------------------------------


def _stored_bytes(settings: Settings) -> bytes:
    """Everything SQLite keeps for the access store: the file and any journal beside it."""
    return b"".join(p.read_bytes() for p in settings.access_db.parent.glob(settings.access_db.name + "*"))


def test_passwords_are_argon2id_hashes_in_a_private_file(settings: Settings) -> None:
    owner = Assistant(settings)
    owner.accounts.add_user("alice", PASSWORD)
    owner.accounts.add_user("bob", "pässwörd-密码-42")
    assert stat.S_IMODE(settings.access_db.stat().st_mode) == 0o600
    with sqlite3.connect(settings.access_db) as db:
        hashes = [row[0] for row in db.execute("SELECT password_hash FROM users")]
    assert len(hashes) == 2 and all(h.startswith("$argon2id$") for h in hashes)
    stored = _stored_bytes(settings)
    for password in (PASSWORD, "pässwörd-密码-42"):
        for encoding in ("utf-8", "utf-16-le"):
            assert password.encode(encoding) not in stored
    assert owner.access.authenticate("alice", PASSWORD) == User("alice")


def test_an_existing_file_is_made_private_again(settings: Settings) -> None:
    settings.access_db.parent.mkdir(parents=True)
    settings.access_db.touch(mode=0o644)
    settings.access_db.chmod(0o644)
    Assistant(settings).accounts.add_user("alice", PASSWORD)
    assert stat.S_IMODE(settings.access_db.stat().st_mode) == 0o600


def test_a_wrong_password_and_an_unknown_user_look_the_same(settings: Settings) -> None:
    access = Assistant(settings).access
    Assistant(settings).accounts.add_user("alice", PASSWORD)
    failures = []
    for name, password in (("alice", "not the password"), ("mallory", PASSWORD), ("alice", ""), ("", "")):
        with pytest.raises(AuthenticationError) as caught:
            access.authenticate(name, password)
        failures.append((type(caught.value), str(caught.value)))
    assert len(set(failures)) == 1


def test_short_passwords_and_bad_names_are_refused(settings: Settings) -> None:
    accounts = Assistant(settings).accounts
    with pytest.raises(AccessError, match="8 characters"):
        accounts.add_user("alice", "short")
    for name in ("owner", "../etc", "a b", "", "x" * 65):
        with pytest.raises(AccessError, match="not a user name"):
            accounts.add_user(name, PASSWORD)
    accounts.add_user("alice", PASSWORD)
    with pytest.raises(AccessError, match="already a user"):
        accounts.add_user("alice", "another password")
    assert Assistant(settings).access.authenticate("alice", PASSWORD).name == "alice"


def test_keys_are_stored_as_digests_and_refused_once_revoked(settings: Settings) -> None:
    owner = Assistant(settings)
    owner.accounts.add_user("alice", PASSWORD)
    record, key = owner.accounts.create_key("alice", "ci")
    other, other_key = owner.accounts.create_key("alice")
    assert key.startswith("kb-") and len(key) > 40 and key != other_key
    stored = _stored_bytes(settings)
    assert key.encode() not in stored and key[3:].encode() not in stored
    assert owner.access.user_for_key(key) == User("alice")
    assert {k.id for k in owner.accounts.keys("alice")} == {record.id, other.id}
    assert owner.accounts.revoke_key(record.id)
    with pytest.raises(AuthenticationError):
        owner.access.user_for_key(key)
    assert owner.access.user_for_key(other_key) == User("alice")
    for forged in ("", "kb-", key[:-1], key + "x", key.upper()):
        with pytest.raises(AuthenticationError):
            owner.access.user_for_key(forged)


def test_a_user_manages_only_their_own_keys(settings: Settings) -> None:
    owner = Assistant(settings)
    for name in ("alice", "bob"):
        owner.accounts.add_user(name, PASSWORD)
    alice = owner.as_user(User("alice")).accounts
    bobs, _ = owner.accounts.create_key("bob")
    mine, _ = alice.create_key()
    assert mine.user == "alice"
    with pytest.raises(PermissionDeniedError):
        alice.create_key("bob")
    with pytest.raises(PermissionDeniedError):
        alice.keys("bob")
    own = alice.keys()  # no name: the caller's own
    assert [k.id for k in own] == [mine.id]
    assert not alice.revoke_key(bobs.id)
    assert [k.id for k in owner.accounts.keys("bob")] == [bobs.id]
    with pytest.raises(PermissionDeniedError):
        alice.set_password("bob", "a new password")


def test_a_removed_user_takes_keys_sessions_and_grants_along(settings: Settings, tmp_path: Path) -> None:
    owner = Assistant(settings)
    owner.ingest([_write(tmp_path / "docs", "leave.md", HR_TEXT)], "hr")
    owner.accounts.add_user("alice", PASSWORD)
    owner.accounts.grant("alice", "hr", "read")
    _, key = owner.accounts.create_key("alice")
    token = owner.access.start_session("alice")

    owner.accounts.remove_user("alice")
    with pytest.raises(UnknownUserError):
        owner.access.user("alice")
    with pytest.raises(AuthenticationError):
        owner.access.authenticate("alice", PASSWORD)
    owner.accounts.add_user("alice", "a brand new password")  # the same name again inherits nothing
    assert owner.access.grants(user="alice") == [] and owner.accounts.keys("alice") == []
    with pytest.raises(AuthenticationError):
        owner.access.user_for_key(key)
    with pytest.raises(AuthenticationError):
        owner.access.user_for_session(token)
    assert owner.as_user(owner.access.user("alice")).list_knowledge_bases() == []
    with pytest.raises(UnknownUserError):
        owner.accounts.remove_user("nobody")


class Clock:
    """The store's clock, moved by the test instead of by sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_a_session_expires(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    monkeypatch.setattr(store_module, "time", clock)
    owner = Assistant(load_settings(home=tmp_path / "home", **{"auth.session_hours": 0.5}))
    owner.accounts.add_user("alice", PASSWORD)
    token = owner.access.start_session("alice")
    clock.now += 29 * 60
    assert owner.access.user_for_session(token) == User("alice")
    clock.now += 2 * 60
    with pytest.raises(AuthenticationError, match="expired"):
        owner.access.user_for_session(token)
    owner.access.start_session("alice")  # a new sign-in sweeps the expired session away
    with sqlite3.connect(owner.settings.access_db) as db:
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone() == (1,)


def test_sessions_are_digests_and_end_on_sign_out_and_new_password(settings: Settings) -> None:
    owner = Assistant(settings)
    owner.accounts.add_user("alice", PASSWORD)
    first, second = owner.access.start_session("alice"), owner.access.start_session("alice")
    assert first.encode() not in _stored_bytes(settings)
    owner.access.end_session(first)
    with pytest.raises(AuthenticationError):
        owner.access.user_for_session(first)
    assert owner.access.user_for_session(second) == User("alice")

    owner.as_user(User("alice")).accounts.set_password("alice", "a brand new password")
    with pytest.raises(AuthenticationError):
        owner.access.user_for_session(second)
    with pytest.raises(AuthenticationError):
        owner.access.authenticate("alice", PASSWORD)
    assert owner.access.authenticate("alice", "a brand new password") == User("alice")
    with pytest.raises(UnknownUserError):
        owner.access.start_session("mallory")


# -- answers with the real model ---------------------------------------------------------------------------------

QUESTION = "How many blankets were delivered on January 23, 2023?"


@pytest.mark.slow
def test_an_ask_grant_gets_citations_without_passage_text(house: Assistant) -> None:
    answered = as_(house, "asker").ask(QUESTION, "hr")
    assert not answered.refused and answered.citations
    assert ("memo.pdf", 1) in {(c.source, c.page) for c in answered.citations}
    assert all(c.text == "" for c in answered.citations)
    read = as_(house, "reader").ask(QUESTION, "hr")
    memo = [c for c in read.citations if c.source == "memo.pdf"]
    assert memo and "10,000 blankets" in memo[0].text
