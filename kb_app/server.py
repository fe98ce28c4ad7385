"""The one server process: the API (``/v1``, ``/api/kb``), the sign-in page and the Gradio page in one FastAPI app.

Every route, the page's own Gradio routes included, passes the same walls, outermost first:

- :class:`SecurityHeaders`: the Content-Security-Policy and Referrer-Policy on every response, refusals included.
- :class:`TrustedHosts`: the Host header must name this server, so a page on a rebound DNS name cannot read it.
- :class:`SameOrigin`: a state-changing request sent by a page of another origin is refused, and so is a blind
  POST to the page's Gradio routes (no Content-Type, or text/plain: what a cross-site form or no-cors fetch sends).
- :class:`SignIn` (``auth.enabled``): a caller without an API key or session gets 401 (a browser page: a redirect
  to ``/login``), except on :data:`PUBLIC_PATHS`.

API clients (the openai package, curl) send no Origin and no Sec-Fetch-Site header, so only browsers are checked
for where they come from. The walls read headers only; nothing a request carries is logged.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
import time
import webbrowser
from collections.abc import Iterable
from urllib.parse import urlsplit

import gradio as gr
import uvicorn
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from kb_app.api import conversations, errors, knowledge_bases, openai, viewer
from kb_app.api.auth import authenticate, page_user
from kb_app.assistant import Assistant
from kb_app.errors import AuthenticationError, SettingsError
from kb_app.settings import Settings
from kb_app.ui import login, look
from kb_app.ui.citation_panel import PAGE_SCRIPT
from kb_app.ui.i18n import I18N
from kb_app.ui.web import build_ui, prepare_uploads

# Everything the page loads comes from this server; data:/blob: for the images and fonts Gradio inlines.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "img-src 'self' data: blob:",
        "media-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "frame-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    ]
)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DOCS_ASSETS = "/docs-assets"
# Open without signing in. The sign-in form and its two routes (the form needs nothing else: no asset, no script).
# The API docs: they describe routes that are the same on every kb and hold no knowledge base, user or document,
# and a browser cannot send an API key when it opens a page, so a script's author with only a key could not read
# them otherwise; every call made from the docs page still needs a key or a session.
PUBLIC_PATHS = frozenset({"/login", "/logout", "/docs", "/openapi.json"})
PUBLIC_PREFIXES = (DOCS_ASSETS + "/",)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: an address that only this machine can reach."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header without its port, lower-cased: ``[::1]:7860`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if ":" in header else header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _refuse(status: int, text: str) -> Response:
    return PlainTextResponse(text + "\n", status)


class SecurityHeaders:
    """:data:`CONTENT_SECURITY_POLICY` and no Referer to other sites on every response: a second wall behind the
    page's escaping."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
                # No Referer to other sites; to this one it is kept, since under no-referrer browsers send
                # Origin: null with the page's own POSTs and the origin check could no longer recognise them.
                headers["Referrer-Policy"] = "same-origin"
            await send(message)

        await self.app(scope, receive, send_with_policy)


class PageHead:
    """Puts ``script`` first in the page's ``<head>`` (``GET /``): it must run before Gradio's own scripts, which
    read the browser's language once when they start, and Gradio's ``head`` option is added only later."""

    def __init__(self, app: ASGIApp, script: str) -> None:
        self.app = app
        self.script = script.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body: list[bytes] = []

        async def send_with_script(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body)
            headers = MutableHeaders(scope=start)
            if headers.get("content-type", "").startswith("text/html"):
                page = page.replace(b"<head>", b"<head>" + self.script, 1)
                headers["Content-Length"] = str(len(page))
            await send(start)
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, send_with_script)


class _Wall:
    """A pure ASGI check run before the app for HTTP and WebSocket requests; a refusal ends the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (refusal := await self.refusal(HTTPConnection(scope))):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def refusal(self, connection: HTTPConnection) -> Response | None:
        raise NotImplementedError


class TrustedHosts(_Wall):
    """Serve only requests whose Host header names this server: localhost, the bind address, ``ui.allowed_hosts``.

    DNS rebinding points a name the attacker owns at this machine, so the victim's browser treats the server as
    that name's origin and lets its page read the answers; the Host header then carries the attacker's name and is
    refused here. An IP address always passes: a page can reach it only under its own origin, the address itself.
    """

    def __init__(self, app: ASGIApp, names: Iterable[str]) -> None:
        super().__init__(app)
        self.names = LOOPBACK_NAMES | {host_name(name) for name in names if name}

    async def refusal(self, connection: HTTPConnection) -> Response | None:
        name = host_name(connection.headers.get("host", ""))
        if name in self.names or _is_ip(name):
            return None
        return _refuse(421, "kb does not serve this host name; add it to ui.allowed_hosts (KB_UI__ALLOWED_HOSTS)")


class SameOrigin(_Wall):
    """A state-changing request from a browser must come from this server's own pages.

    Browsers send Origin with every cross-origin POST and Sec-Fetch-Site with every request; API clients send
    neither and pass. A POST to the page's Gradio routes must also declare a Content-Type other than text/plain:
    the page always does, and a cross-site form or ``no-cors`` fetch cannot, even from a browser that omits Origin.
    """

    async def refusal(self, connection: HTTPConnection) -> Response | None:
        method = connection.scope.get("method")  # a WebSocket handshake has none and is always checked
        if method not in STATE_CHANGING and connection.scope["type"] == "http":
            return None
        headers = connection.headers
        if _from_elsewhere(connection):
            return _refuse(403, "kb refuses requests sent by pages of other sites")
        if method == "POST" and connection.url.path.startswith("/gradio_api/") and _blind_content_type(headers):
            return _refuse(403, "kb's page always sends a Content-Type; this request looks like a cross-site form")
        return None


def _from_elsewhere(connection: HTTPConnection) -> bool:
    """Sent by a page that is not this server's, as the browser tells it (page scripts can set neither header).

    Sec-Fetch-Site ``same-site`` is refused too: a site ignores the port, so another local service's page is one.
    Origin ``null`` (a sandboxed frame, or a page whose Referrer-Policy is no-referrer) passes only with
    Sec-Fetch-Site ``same-origin``. Without either header the request is not a browser's: it passes.
    """
    site = connection.headers.get("sec-fetch-site", "").lower()
    if site not in ("", "same-origin", "none"):
        return True
    origin = connection.headers.get("origin")
    if origin is None:
        return False
    if origin.strip().lower() == "null":
        return site != "same-origin"
    return not _own_origin(connection, origin)


def _own_origin(connection: HTTPConnection, origin: str) -> bool:
    """``origin`` is exactly this server's scheme, host and port, as the request addressed it."""
    parts = urlsplit(origin.strip().lower())
    scheme = {"ws": "http", "wss": "https"}.get(connection.url.scheme, connection.url.scheme)
    return parts.scheme == scheme and parts.netloc == connection.headers.get("host", "").strip().lower()


def _blind_content_type(headers: Headers) -> bool:
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    return media_type in ("", "text/plain")


class SignIn(_Wall):
    """With ``auth.enabled`` every path but :data:`PUBLIC_PATHS` needs an API key or a session cookie.

    A browser opening a page is sent to ``/login``; anything else gets the API's 401. The Gradio routes that check
    no user themselves (``/gradio_api/cancel``, ``/gradio_api/stream/...``) are covered too.
    """

    def __init__(self, app: ASGIApp, assistant: Assistant) -> None:
        super().__init__(app)
        self.assistant = assistant

    async def refusal(self, connection: HTTPConnection) -> Response | None:
        path = connection.url.path
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        try:
            await run_in_threadpool(authenticate, connection, self.assistant)  # SQLite: off the event loop
        except AuthenticationError as error:
            if _opens_page(connection):
                return RedirectResponse("/login", 303)
            return errors.kb_error_response(error)
        return None


def _opens_page(connection: HTTPConnection) -> bool:
    return connection.scope.get("method") in ("GET", "HEAD") and "text/html" in connection.headers.get("accept", "")


def _docs() -> HTMLResponse:
    """Swagger UI from the files of the swagger-ui-bundle package: the docs page fetches nothing from the Internet."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="kb API",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # else it loads a badge from validator.swagger.io
    )


def _mount_page(app: FastAPI, settings: Settings, assistant: Assistant) -> None:
    """The Gradio page at ``/``, hardened as ``web.launch`` hardened it; its queue starts with the app (lifespan)."""
    ui = settings.ui
    blocks = build_ui(assistant, prepare_uploads(settings))
    blocks.queue(max_size=ui.queue_size, default_concurrency_limit=ui.concurrency, api_open=False)
    signed_in = (lambda request: page_user(request, assistant)) if settings.auth.enabled else None
    gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        server_name=ui.host,
        server_port=ui.port,
        footer_links=[],
        run_history=False,
        auth_dependency=signed_in,
        show_error=False,
        max_file_size=f"{settings.max_file_mb}mb",
        ssr_mode=False,
        enable_monitoring=False,
        pwa=False,
        mcp_server=False,
        theme=gr.themes.Soft(),
        i18n=I18N,
        css=look.CSS,
        js=look.on_load(PAGE_SCRIPT),  # the kept theme; the citation links open the side panel
    )


def build_app(settings: Settings, assistant: Assistant | None = None) -> FastAPI:
    """The whole server: API routers, sign-in routes, API docs and the page, behind the walls above."""
    assistant = assistant or Assistant(settings)
    app = FastAPI(title="kb", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.assistant = assistant
    errors.install(app)
    app.include_router(openai.router)
    app.include_router(knowledge_bases.router)
    app.include_router(conversations.router)
    app.include_router(viewer.router)
    app.include_router(login.router)
    app.state.sign_in_attempts = login.Attempts()
    app.add_api_route("/docs", _docs, methods=["GET"], include_in_schema=False)
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    _mount_page(app, settings, assistant)  # last: the page at "/" would answer every path mounted after it
    if settings.auth.enabled:
        app.add_middleware(SignIn, assistant=assistant)
    app.add_middleware(SameOrigin)
    app.add_middleware(TrustedHosts, names=[settings.ui.host, *settings.ui.allowed_hosts])
    app.add_middleware(PageHead, script=look.HEAD)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so refusals carry the headers too
    return app


def check_exposure(settings: Settings, assistant: Assistant) -> None:
    """Refuse to serve beyond this machine without sign-in, and to require sign-in when nobody can sign in."""
    auth = settings.auth
    if not auth.enabled and not is_loopback(settings.ui.host):
        raise SettingsError(
            f"kb will not listen on {settings.ui.host} without sign-in: anyone on the network could read "
            "every knowledge base",
            "turn sign-in on (KB_AUTH__ENABLED=true, or `auth: {enabled: true}` in kb.yaml) and add a user: "
            "`kb users add NAME --admin`; or keep ui.host at 127.0.0.1",
        )
    if auth.enabled and not assistant.access.users():
        raise SettingsError(
            "sign-in is on but there is no user yet: nobody could sign in",
            "add one first: `kb users add NAME --admin`",
        )


def serve(settings: Settings) -> None:
    """Start the server on ``settings.ui`` (127.0.0.1 by default) and block; the model loads on the first question."""
    assistant = Assistant(settings)
    check_exposure(settings, assistant)
    # The embedded store is one process's: writes from other processes are refused while this server runs.
    assistant.hold_store(notice=lambda message: print(message, file=sys.stderr, flush=True))
    app = build_app(settings, assistant)
    host = f"[{settings.ui.host}]" if ":" in settings.ui.host else settings.ui.host
    url = f"http://{host}:{settings.ui.port}/"
    print(f"kb is serving on {url}", flush=True)
    # No access log: it would hold every URL; kb's URLs carry no key or question, but there is no need for it.
    config = uvicorn.Config(app, host=settings.ui.host, port=settings.ui.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if settings.ui.open_browser:
        threading.Thread(target=_open_when_up, args=(server, url), daemon=True).start()
    server.run()


def _open_when_up(server: uvicorn.Server, url: str) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.1)
    if server.started:
        webbrowser.open(url)
