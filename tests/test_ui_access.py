"""Who sees what on the page, with sign-in on: the real server (``build_app`` under uvicorn), users alice (``read``
on "hr"), bob (no grant) and root (admin).

Through Gradio's own HTTP routes, as a script would call them (``/gradio_api/queue/join`` with a handler's
fn_index read from ``/config`` as the signed-in user, and ``/gradio_api/call/<api_name>``): bob naming "hr" in a
crafted request gets an error and no passage, file name or grant of it; without a session everything is refused;
``/config`` holds nothing of any knowledge base. In headless Chromium: alice signs in through the login page and
asks the real default model, bob does not see "hr" until root grants it to him on the admin screen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, expect

from kb_app.assistant import Assistant
from kb_app.settings import load_settings
from kb_app.ui.web import build_ui
from tests.conftest import ARTIFACTS, FIXTURES
from tests.page_server import PageClient, Watch, ask, chromium, last_message, open_page, open_tab, serving, serving_app

DOCUMENT = FIXTURES / "ui" / "zephyr_policy.txt"
PASSAGES = ("740 euros", "Mirela Dobrev")  # the document's text, never in the question
QUESTION = "What is the annual hardware allowance at Zephyrine Instruments?"
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "root": "root-password"}


@dataclass
class House:
    url: str
    assistant: Assistant

    def visitor(self, name: str | None = None) -> PageClient:
        client = PageClient(self.url)
        return client.sign_in(name, PASSWORDS[name]) if name else client


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory) -> Iterator[House]:
    """One server for the module: "hr" (the configured default) holds the policy; only alice may read it."""
    root = tmp_path_factory.mktemp("access")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("GRADIO_TEMP_DIR", raising=False)  # prepare_uploads() sets it
        env.setenv("XDG_CONFIG_HOME", str(root / "config"))
        settings = load_settings(home=root / "kb_home", **{"auth.enabled": True, "ui.open_browser": False, "kb": "hr"})
        assistant = Assistant(settings)
        for name, password in PASSWORDS.items():
            assistant.access.add_user(name, password, admin=name == "root")
        assistant.ingest([DOCUMENT], kb="hr")
        assistant.accounts.grant("alice", "hr", "read")
        with serving(settings, assistant) as url:
            yield House(url, assistant)


def leaks(outputs: object) -> bool:
    """Whether anything of hr's one document (its name or its text) is in what a handler sent back."""
    text = str(outputs)
    return DOCUMENT.name in text or any(passage in text for passage in PASSAGES)


def test_bob_naming_hr_in_crafted_requests_gets_an_error_and_nothing_of_it(house: House) -> None:
    bob = house.visitor("bob")
    chat = bob.call("ask", QUESTION, [], "hr", None)[0]
    assert last_message(chat).startswith("⚠️") and "no grant" in last_message(chat)
    table, status, *_ = bob.call("kb_change", "hr")
    assert table["data"] == [] and "no knowledge base named" in status
    assert "no grant" in bob.status_of_upload([DOCUMENT], "hr")
    assert "no grant" in bob.call("delete", "hr")[1]
    by_name = bob.call_by_name("send", QUESTION, [], "hr", None)[0]
    assert last_message(by_name).startswith("⚠️") and "no grant" in last_message(by_name)
    assert bob.call_by_name("kb_change", "hr")[0]["data"] == []
    for outputs in (chat, table, status, by_name):
        assert not leaks(outputs), outputs
    assert [f.source for f in house.assistant.files("hr")] == [DOCUMENT.name]  # neither deleted nor re-ingested


SHOWN = ("signed-in", "docs-kb", "files", "ingest-status", "upload", "delete", "admin-tab")


def loaded(client: PageClient, *elem_ids: str) -> list:
    """What the page's load handler filled for ``client`` in the components ``elem_ids``, in that order."""
    config = client.config
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    load = next(d for d in config["dependencies"] if d["api_name"] == "load")
    by_id = dict(zip((ids[i] for i in load["outputs"]), client.call("load"), strict=True))
    return [by_id[elem_id] for elem_id in elem_ids]


def test_each_visitor_is_shown_only_the_knowledge_bases_they_hold_a_grant_on(house: House) -> None:
    who, choices, table, status, upload, delete, admin_tab = loaded(house.visitor("bob"), *SHOWN)
    assert "hr" not in {choice[0] for choice in choices["choices"]} and choices["value"] is None
    assert table["data"] == [] and not leaks([choices, table, status])
    assert "bob" in who["value"] and 'action="/logout"' in who["value"]
    assert upload["visible"] and not delete["visible"] and not admin_tab["visible"]
    _, choices, table, _, upload, delete, admin_tab = loaded(house.visitor("alice"), *SHOWN)
    assert choices["value"] == "hr" and table["data"][0][0] == DOCUMENT.name
    assert not upload["visible"] and not delete["visible"] and not admin_tab["visible"]  # read: no write, no admin


def test_the_page_config_holds_no_knowledge_base_file_or_user(house: House) -> None:
    """/config is the same for every visitor: what one user may see is sent only to them, by the load handler."""
    for name in ("bob", "alice", "root"):
        config = house.visitor(name).config
        assert not leaks(config) and (name == "alice" or "alice" not in str(config))
        picker = next(c for c in config["components"] if c["props"].get("elem_id") == "kb-picker")
        assert picker["props"]["choices"] == [] and not picker["props"].get("value")


def test_without_a_session_every_route_of_the_page_is_refused(house: House) -> None:
    anonymous = house.visitor()
    fn_index = house.visitor("bob").events["ask"]
    assert anonymous.http.get("/config").status_code == 401
    assert anonymous.http.get("/gradio_api/info").status_code == 401
    page = anonymous.http.get("/", headers={"accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login"
    joined = anonymous.http.post(
        "/gradio_api/queue/join",
        json={"data": [QUESTION, [], "hr"], "fn_index": fn_index, "session_hash": "x" * 10, "trigger_id": None},
    )
    assert joined.status_code == 401
    assert anonymous.http.post("/gradio_api/call/ask", json={"data": [QUESTION, [], "hr"]}).status_code == 401
    assert anonymous.upload(DOCUMENT).status_code == 401
    token = house.visitor("bob").http.cookies["kb_session"]
    signed_out = PageClient(house.url)
    signed_out.http.cookies.set("kb_session", token)
    assert signed_out.http.post("/logout").status_code == 303
    signed_out.http.cookies.set("kb_session", token)  # the browser dropped it; a thief would keep it
    assert signed_out.http.get("/config").status_code == 401


def test_only_admins_change_users_and_grants(house: House) -> None:
    for name in ("bob", "alice"):
        visitor = house.visitor(name)
        status = visitor.call("add_user", "mallory", "mallory-password", True)[0]
        assert status.startswith("⚠️") and "only an admin" in status
        status, grants = visitor.call("grant", name, "hr", "admin")
        assert status.startswith("⚠️") and not leaks(grants)
        assert visitor.call("remove_user", "root")[0].startswith("⚠️")
    assert [u.name for u in house.assistant.access.users()] == sorted(PASSWORDS)
    assert house.assistant.access.role("bob", "hr") is None
    root = house.visitor("root")
    status = root.call("add_user", "<b>carol</b>", "carol-password", False)[0]
    assert status.startswith("⚠️") and "<b>" not in status  # refused as a name, and shown escaped
    status, grants = root.call("grant", "alice", "hr", "ask")
    assert "alice" in status and ["alice", "hr", "ask"] in grants["data"]
    root.call("grant", "alice", "hr", "read")


def test_a_page_mounted_without_sign_in_serves_nobody_when_auth_is_on(house: House, tmp_path: Path) -> None:
    """Defence in depth: were the page ever mounted without the server's sign-in, its handlers still act for no one."""
    app = gr.mount_gradio_app(FastAPI(), build_ui(house.assistant, tmp_path), path="/")
    with serving_app(app) as url:
        visitor = PageClient(url)
        chat = visitor.call("ask", QUESTION, [], "hr", None)[0]
        table, status, *_ = visitor.call("kb_change", "hr")
        loaded = visitor.call("load")
    assert "sign in first" in last_message(chat) and "sign in first" in status and "sign in first" in loaded[0]["value"]
    assert not leaks([chat, table, status, loaded])


# -- in the browser --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def sign_in(browser: Browser, house: House, name: str, watch: Watch) -> Page:
    """A new browser context opening the page: sent to the login page, signed in there, back on the page."""
    page = open_page(browser, house.url + "/", watch)
    expect(page).to_have_url(house.url + "/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORDS[name])
    page.click("button[type=submit]")
    expect(page).to_have_url(house.url + "/")
    expect(page.locator("#signed-in")).to_contain_text(f"Signed in as {name}")
    return page


def offered(page: Page) -> list[str]:
    """The knowledge bases the page's multiselect offers (those already selected are marked ✓)."""
    page.locator("#kb-picker input").click()
    choices = [text.replace("✓", "").strip() for text in page.locator("#kb-picker [role=option]").all_inner_texts()]
    page.keyboard.press("Escape")
    return choices


@pytest.mark.slow
def test_alice_signs_in_sees_hr_and_reads_the_sources_of_an_answer(house: House, browser: Browser) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    watch = Watch()
    page = sign_in(browser, house, "alice", watch)
    expect(page.locator("#kb-picker .token")).to_have_text(["hr"])
    assert offered(page) == ["hr"]
    expect(page.locator("#admin-tab-button")).to_have_count(0)
    open_tab(page, "documents")
    expect(page.locator("#files")).to_contain_text(DOCUMENT.name)
    expect(page.locator("#upload")).to_have_count(0)  # read: no upload, no delete
    expect(page.locator("#delete")).to_have_count(0)
    open_tab(page, "chat")

    bot = ask(page, QUESTION, ARTIFACTS / "ui_access_answer.png")
    answer, _, sources = bot.partition("Sources")
    assert "740" in answer, bot
    assert DOCUMENT.name in sources, bot
    assert "receives an annual hardware allowance of 740 euros" in " ".join(sources.split()), bot  # read: passages

    page.get_by_role("button", name="Sign out 退出").click()
    expect(page).to_have_url(house.url + "/login")
    assert watch.hosts() == {"127.0.0.1"}, watch.requested
    assert watch.errors == []


@pytest.mark.slow
def test_bob_sees_hr_only_once_the_admin_grants_it_on_the_admin_screen(house: House, browser: Browser) -> None:
    watch = Watch()
    try:
        bob = sign_in(browser, house, "bob", watch)
        assert "hr" not in offered(bob)
        expect(bob.locator("#admin-tab-button")).to_have_count(0)
        open_tab(bob, "documents")
        expect(bob.locator("#ingest-status")).to_contain_text("ask an admin for a grant")
        expect(bob.locator("#files")).not_to_contain_text(DOCUMENT.name)

        root = sign_in(browser, house, "root", watch)
        root.locator("#admin-tab-button").click()
        expect(root.locator("#users")).to_contain_text("bob")
        root.locator("#grant-user textarea").fill("bob")
        expect(root.locator("#grant-kb input")).to_have_value("hr")
        root.locator("#grant-role input").click()
        root.locator("#grant-role [role=option]", has_text="ask").click()
        root.locator("#grant").click()
        expect(root.locator("#admin-status")).to_contain_text("bob holds ask on hr")
        expect(root.locator("#grants")).to_contain_text("bob")

        bob.reload()
        expect(bob.locator("#kb-picker .token")).to_have_text(["hr"])
        assert offered(bob) == ["hr"]
        open_tab(bob, "documents")
        expect(bob.locator("#files")).to_contain_text(DOCUMENT.name)
        expect(bob.locator("#upload")).to_have_count(0)  # ask: answers only
    finally:
        house.assistant.access.revoke("bob", "hr")
    assert watch.hosts() == {"127.0.0.1"}, watch.requested
    assert watch.errors == []
