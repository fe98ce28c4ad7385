"""Who is calling: an API key (``Authorization: Bearer KEY``) or the page's session cookie, else nobody.

With ``auth.enabled`` false every request acts as the machine's owner, as kb always did on 127.0.0.1.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection, Request

from kb_app.access.roles import OWNER, User
from kb_app.assistant import Assistant
from kb_app.errors import AuthenticationError

SESSION_COOKIE = "kb_session"
# Where the caller found for a request is kept for the rest of it: the server's sign-in check finds it first, and
# the route or page handler after it reuses it instead of asking the access store again. Only the server sets it.
_CALLER = "kb.caller"


def bearer_key(connection: HTTPConnection) -> str | None:
    scheme, _, key = connection.headers.get("authorization", "").partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def authenticate(connection: HTTPConnection, assistant: Assistant) -> User:
    """The caller of this request; :class:`AuthenticationError` when auth is on and neither key nor session holds."""
    if not assistant.settings.auth.enabled:
        return OWNER
    if (known := connection.scope.get(_CALLER)) is not None:
        return known
    connection.scope[_CALLER] = user = _caller(connection, assistant)
    return user


def _caller(connection: HTTPConnection, assistant: Assistant) -> User:
    if key := bearer_key(connection):
        return assistant.access.user_for_key(key)
    if token := connection.cookies.get(SESSION_COOKIE):
        return assistant.access.user_for_session(token)
    raise AuthenticationError(
        "sign in first: this kb server requires a user",
        "open /login in the browser, or send an API key: `Authorization: Bearer KEY` (`kb keys create NAME`)",
    )


def current_assistant(request: Request) -> Assistant:
    """FastAPI dependency: the server's Assistant (``app.state.assistant``) acting for this request's caller."""
    assistant: Assistant = request.app.state.assistant
    return assistant.as_user(authenticate(request, assistant))


def page_user(connection: HTTPConnection, assistant: Assistant) -> str | None:
    """The signed-in user's name for the Gradio page (its ``request.username``), or None: Gradio then answers 401."""
    try:
        return authenticate(connection, assistant).name
    except AuthenticationError:
        return None
