"""The one server process (``kb_app.server``): its walls, attacked over real HTTP.

One real uvicorn server with sign-in on (``auth.enabled``) runs on 127.0.0.1 and a free port for the module; each
test speaks to it with httpx, sending exactly the headers a hostile page, a browser or an API client would: a
foreign Host (DNS rebinding), a cross-site Origin, a blind text/plain POST, no session, a wrong password, an
expired session. ``serve`` and ``kb serve`` must refuse to listen beyond this machine without sign-in, before
binding any port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from kb_app.access.store import AccessStore
from kb_app.api.auth import SESSION_COOKIE
from kb_app.cli import app as cli_app
from kb_app.errors import SettingsError
from kb_app.server import CONTENT_SECURITY_POLICY, build_app, serve
from kb_app.settings import Settings, load_settings
from kb_app.ui.login import Attempts
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

USER, PASSWORD = "alice", "correct horse battery"
EVIL = "http://evil.example"
PAGE = {"Accept": "text/html,application/xhtml+xml"}  # what a browser sends when it opens a page


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Server:
    url: str
    settings: Settings
    app: object

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, **kwargs)

    def sign_in(self, name: str = USER, password: str = PASSWORD) -> httpx.Response:
        return self.post("/login", data={"name": name, "password": password}, headers={"Origin": self.url})

    def session(self) -> dict[str, str]:
        """A Cookie header for a fresh session of :data:`USER`, got through the form."""
        response = self.sign_in()
        assert response.status_code == 303, response.text
        return {"Cookie": f"{SESSION_COOKIE}={response.cookies[SESSION_COOKIE]}"}


@pytest.fixture
def never_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal must come before uvicorn: were it to start, the test fails instead of serving forever."""

    def listen(self: uvicorn.Server, *args: object) -> None:
        raise AssertionError("a server was started")

    monkeypatch.setattr(uvicorn.Server, "run", listen)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The whole app (page, API, sign-in) with auth on, one user, ``kb.lan`` as an extra host name."""
    port = free_port()
    settings = load_settings(
        home=tmp_path_factory.mktemp("server") / "kb_home",
        **{"ui.port": port, "ui.open_browser": False, "ui.allowed_hosts": ["kb.lan"], "auth.enabled": True},
    )
    app = build_app(settings)
    app.state.assistant.access.add_user(USER, PASSWORD)
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uvicorn_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield Server(f"http://127.0.0.1:{port}", settings, app)
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=30)


# -- Host header (DNS rebinding) --------------------------------------------------------------------------------


def test_a_foreign_host_name_is_refused(server: Server) -> None:
    refused = server.get("/login", headers={"Host": "evil.example"})
    assert refused.status_code == 421
    assert "ui.allowed_hosts" in refused.text
    assert server.get("/openapi.json", headers={"Host": "evil.example:80"}).status_code == 421


def test_localhost_the_configured_names_and_ip_addresses_pass(server: Server) -> None:
    port = server.settings.ui.port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "kb.lan", f"KB.LAN:{port}", "192.168.1.20:7860"):
        assert server.get("/login", headers={"Host": host}).status_code == 200, host


# -- Origin, Sec-Fetch-Site, blind POSTs ------------------------------------------------------------------------


def test_a_cross_site_post_is_refused_even_with_the_right_password(server: Server) -> None:
    form = {"name": USER, "password": PASSWORD}
    for headers in (
        {"Origin": EVIL},
        {"Origin": "null"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port of this host: the same site, another origin
        {"Origin": server.url, "Sec-Fetch-Site": "cross-site"},
    ):
        response = server.post("/login", data=form, headers=headers)
        assert response.status_code == 403, headers
        assert SESSION_COOKIE not in response.cookies
    other_port = f"http://127.0.0.1:{server.settings.ui.port + 1}"  # another local service is another origin
    assert server.post("/login", data=form, headers={"Origin": other_port}).status_code == 403


def test_a_cross_site_api_call_is_refused_with_a_valid_session(server: Server) -> None:
    headers = {**server.session(), "Origin": EVIL, "Content-Type": "application/json"}
    assert server.post("/gradio_api/queue/join", content="{}", headers=headers).status_code == 403


def test_a_blind_post_to_the_page_routes_is_refused(server: Server) -> None:
    session = server.session()
    for content_type in (None, "text/plain", "text/plain;charset=UTF-8"):
        headers = {**session, **({"Content-Type": content_type} if content_type else {})}
        response = server.post("/gradio_api/queue/join", content=b'{"data": []}', headers=headers)
        assert response.status_code == 403, content_type
        assert "Content-Type" in response.text


def test_same_origin_posts_and_api_clients_pass(server: Server) -> None:
    session = server.session()
    # The page's own upload: multipart, with the page's Origin.
    upload = server.post(
        "/gradio_api/upload", files={"files": ("note.txt", b"hello\n")}, headers={**session, "Origin": server.url}
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()[0].endswith("note.txt")
    # A same-origin POST from a page whose Origin the browser hid ("null") but whose Sec-Fetch-Site it told.
    hidden = {**session, "Origin": "null", "Sec-Fetch-Site": "same-origin"}
    assert server.post("/gradio_api/queue/join", json={}, headers=hidden).status_code == 422  # Gradio: no data
    # A JSON POST without Origin (curl, the openai client) reaches the route: Gradio itself judges the body.
    joined = server.post("/gradio_api/queue/join", json={}, headers=session)
    assert joined.status_code == 422, joined.text  # Gradio read the body: it holds no event


# -- serve() and `kb serve` refuse to expose kb without sign-in -------------------------------------------------


@pytest.mark.usefixtures("never_listens")
def test_serve_refuses_a_network_address_without_sign_in(tmp_path: Path) -> None:
    port = free_port()
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        settings = load_settings(home=tmp_path / "kb_home", **{"ui.host": host, "ui.port": port})
        with pytest.raises(SettingsError) as refused:
            serve(settings)
        assert "KB_AUTH__ENABLED=true" in str(refused.value)
        assert "kb users add" in str(refused.value)
        assert not port_is_open(port)


@pytest.mark.usefixtures("never_listens")
def test_serve_refuses_sign_in_with_no_user(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "kb_home", **{"ui.host": "0.0.0.0", "auth.enabled": True})
    with pytest.raises(SettingsError, match="no user") as refused:
        serve(settings)
    assert "kb users add" in refused.value.hint


@pytest.mark.usefixtures("never_listens")
def test_kb_serve_on_all_interfaces_exits_with_the_fix(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_app, ["--home", str(tmp_path / "kb_home"), "serve", "--host", "0.0.0.0", "--no-browser"]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, SettingsError), result.exception
    assert "0.0.0.0" in str(result.exception)
    assert "KB_AUTH__ENABLED=true" in str(result.exception)


# -- sign-in ----------------------------------------------------------------------------------------------------


def test_without_a_session_a_page_redirects_to_login_and_everything_else_is_401(server: Server) -> None:
    opened = server.get("/", headers=PAGE)
    assert opened.status_code == 303
    assert opened.headers["location"] == "/login"
    for path in ("/", "/config", "/gradio_api/config", "/gradio_api/info", "/gradio_api/file=/etc/hostname",
                 "/gradio_api/queue/data?session_hash=x", "/theme.css", "/v1/models", "/api/kb"):  # fmt: skip
        response = server.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "AuthenticationError"
    for path in ("/gradio_api/queue/join", "/gradio_api/cancel", "/gradio_api/stream/x/close"):
        assert server.post(path, json={}).status_code == 401, path
    upload = server.post("/gradio_api/upload", files={"files": ("x.txt", b"x")})
    assert upload.status_code == 401
    assert server.get("/", headers={**PAGE, "Cookie": f"{SESSION_COOKIE}=forged"}).status_code == 303


def test_a_wrong_password_shows_the_form_again_and_sets_no_cookie(server: Server) -> None:
    for name, password in ((USER, "not the password"), ("nobody", PASSWORD)):
        response = server.sign_in(name, password)
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
        assert "wrong user name or password" in response.text
        assert 'name="password"' in response.text


def test_the_right_password_sets_a_strict_http_only_cookie_that_opens_the_page(server: Server) -> None:
    response = server.sign_in()
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = SimpleCookie(response.headers["set-cookie"])[SESSION_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "strict"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == str(int(server.settings.auth.session_hours * 3600))
    assert not cookie["secure"]  # plain http on 127.0.0.1; behind https the cookie is Secure
    session = {"Cookie": f"{SESSION_COOKIE}={cookie.value}"}
    page = server.get("/", headers={**PAGE, **session})
    assert page.status_code == 200
    assert "<html" in page.text.lower()
    config = server.get("/config", headers=session)
    assert config.status_code == 200
    assert config.json()["username"] == USER  # the page's handlers see who signed in


def test_logout_ends_the_session(server: Server) -> None:
    session = server.session()
    assert server.get("/config", headers=session).status_code == 200
    out = server.post("/logout", headers={**session, "Origin": server.url})
    assert out.status_code == 303
    assert out.headers["location"] == "/login"
    assert 'kb_session=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
    assert server.get("/config", headers=session).status_code == 401


def test_an_expired_session_is_refused(server: Server) -> None:
    token = AccessStore(server.settings.access_db, session_hours=1e-9).start_session(USER)  # expires at once
    assert server.get("/config", headers={"Cookie": f"{SESSION_COOKIE}={token}"}).status_code == 401


def test_an_api_key_opens_the_same_routes(server: Server) -> None:
    _, key = server.app.state.assistant.access.create_key(USER)
    assert server.get("/config", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert server.get("/config", headers={"Authorization": "Bearer kb-not-a-key"}).status_code == 401


def test_repeated_failures_lock_the_name_and_the_address_for_a_while(server: Server) -> None:
    server.app.state.sign_in_attempts = Attempts(limit=3)
    try:
        for _ in range(3):
            assert server.sign_in(USER, "guess guess").status_code == 401
        locked = server.sign_in()  # even the right password
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) > 0
        assert "set-cookie" not in locked.headers
        assert server.sign_in("someone-else", "whatever1").status_code == 429  # same address
    finally:
        server.app.state.sign_in_attempts = Attempts()


# -- what is served at all --------------------------------------------------------------------------------------


def test_monitoring_is_not_served(server: Server) -> None:
    session = server.session()
    for path in ("/monitoring", "/monitoring/summary", "/gradio_api/monitoring/summary"):
        response = server.get(path, headers=session)
        assert response.status_code in (403, 404), path


def test_the_api_docs_are_served_from_this_machine(server: Server) -> None:
    docs = server.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text
    assert "cdn." not in docs.text
    assert '"validatorUrl": null' in docs.text
    script = server.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    schema = server.get("/openapi.json").json()
    assert schema["info"]["title"] == "kb"
    assert "/login" not in schema["paths"]


def test_every_response_carries_the_content_security_policy(server: Server) -> None:
    session = server.session()
    responses = [
        server.get("/login", headers={"Host": "evil.example"}),  # 421
        server.post("/login", headers={"Origin": EVIL}),  # 403
        server.get("/", headers=PAGE),  # 303
        server.get("/config"),  # 401
        server.get("/", headers={**PAGE, **session}),  # the page
        server.get("/config", headers=session),
        server.get("/login"),
        server.get("/docs"),
        server.get("/openapi.json"),
        server.get("/no-such-path", headers=session),
    ]
    for response in responses:
        assert response.headers.get("content-security-policy") == CONTENT_SECURITY_POLICY, response.url
        assert response.headers.get("referrer-policy") == "same-origin", response.url


# -- a real browser through every wall --------------------------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-quic"]


def test_a_browser_signs_in_through_the_form_and_the_page_passes_every_wall(server: Server) -> None:
    """Chromium sends its own Origin, Sec-Fetch-Site and Content-Type headers: none of the page's requests may be
    refused, the cookie must survive the redirect after the form, and the page must render under the CSP."""
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    refused: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("response", lambda r: refused.append(f"{r.status} {r.url}") if r.status in (401, 403, 421) else 0)
            page.goto(server.url + "/")
            assert page.url == server.url + "/login"
            page.fill("#name", USER)
            page.fill("#password", "wrong password!")
            page.click("button[type=submit]")
            expect(page.locator("p.problem")).to_contain_text("wrong user name or password")
            refused.clear()  # that 401 was the point
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            expect(page.locator("#question textarea")).to_be_visible(timeout=30_000)
            assert page.url == server.url + "/"
            cookie = next(c for c in page.context.cookies() if c["name"] == SESSION_COOKIE)
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # no script on the page can read the session
        finally:
            browser.close()
    assert refused == []


# -- `kb serve` itself: it serves, and its output holds no secret -----------------------------------------------


def test_kb_serve_serves_and_logs_no_password_key_or_question(tmp_path: Path) -> None:
    """The real command in a child process, with auth on; every secret a request carries is a unique marker that
    must appear nowhere in what the server printed (uvicorn's access log would hold each URL)."""
    home, port, log = tmp_path / "kb_home", free_port(), tmp_path / "serve.log"
    store = AccessStore(home / "access.sqlite")
    store.add_user(USER, PASSWORD)
    _, key = store.create_key(USER)
    markers = {"password": "pw-marker-7f3a", "question": "question-marker-19bc", "bad_key": "kb-key-marker-5e21"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")} | {"KB_AUTH__ENABLED": "true"}
    command = [sys.executable, "-m", "kb_app", "--home", str(home), "serve", "--port", str(port), "--no-browser"]
    with log.open("w") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not port_is_open(port):
            assert child.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(url + "/login", data={"name": USER, "password": markers["password"]}).status_code == 401
        assert httpx.get(url + "/config", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(url + "/config", headers={"Authorization": f"Bearer {markers['bad_key']}"}).status_code == 401
        assert httpx.get(f"{url}/login?q={markers['question']}").status_code == 200
        search = {"query": markers["question"], "k": 3}
        httpx.post(url + "/api/kb/none-here/search", json=search, headers={"Authorization": f"Bearer {key}"})
    finally:
        child.terminate()
        child.wait(timeout=30)
    printed = log.read_text()
    assert f"kb is serving on http://127.0.0.1:{port}/" in printed
    for marker in (*markers.values(), key, PASSWORD):
        assert marker not in printed, marker
