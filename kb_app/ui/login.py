"""The sign-in page: ``GET /login`` (a form), ``POST /login`` (starts a session), ``POST /logout`` (ends it).

The form is one self-contained HTML page (inline style, no script, no asset), so it needs no other route to be
public. The session lives in the ``kb_session`` cookie: HttpOnly (no script reads it), SameSite=Strict (no other
site's page sends it), Secure when the request came over https. Failed attempts are counted per user name and per
client address: past :attr:`Attempts.limit` in :attr:`Attempts.window_s` further tries are refused for a while,
which caps guessing far below what argon2's cost alone allows.
"""

from __future__ import annotations

import html
import math
import threading
import time
from collections import deque
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from kb_app.api.auth import SESSION_COOKIE
from kb_app.assistant import Assistant
from kb_app.errors import AuthenticationError

router = APIRouter(include_in_schema=False)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>kb · Sign in 登录</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f4f5f7; display: flex; justify-content: center;
       align-items: center; min-height: 100vh; margin: 0; }}
form {{ background: #fff; padding: 2rem; border-radius: 8px; box-shadow: 0 1px 4px #0002; width: 18rem; }}
h1 {{ font-size: 1.3rem; margin: 0 0 1rem; }}
label {{ display: block; margin: .8rem 0 .3rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem; }}
button {{ margin-top: 1.2rem; width: 100%; padding: .6rem; font-size: 1rem; }}
p.problem {{ color: #b00020; }}
</style></head>
<body><form method="post" action="/login">
<h1>kb · Sign in 登录</h1>
{problem}
<label for="name">User name 用户名</label>
<input id="name" name="name" autocomplete="username" required autofocus value="{name}">
<label for="password">Password 密码</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in 登录</button>
</form></body></html>
"""


class Attempts:
    """Failed sign-ins in the last ``window_s`` seconds, per key (a user name, a client address); thread-safe."""

    def __init__(self, limit: int = 10, window_s: float = 600.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, keys: list[str]) -> float:
        """Seconds until any of ``keys`` may try again; 0 when all may."""
        now = time.monotonic()
        with self._lock:
            waits = [self._recent(key, now) for key in keys]
        return max((failures[0] + self.window_s - now for failures in waits if len(failures) >= self.limit), default=0)

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)

    def forget(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] < now - self.window_s:
            failures.popleft()
        return failures


def page(problem: str = "", name: str = "", status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    shown = f'<p class="problem" role="alert">{html.escape(problem)}</p>' if problem else ""
    return HTMLResponse(_PAGE.format(problem=shown, name=html.escape(name)), status, headers=headers)


@router.get("/login")
def login_form() -> HTMLResponse:
    return page()


@router.post("/login")
def sign_in(request: Request, name: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "") -> Response:
    """Runs in a worker thread: argon2 takes tens of milliseconds on purpose."""
    assistant: Assistant = request.app.state.assistant
    attempts: Attempts = request.app.state.sign_in_attempts
    name = name.strip()[:64]
    keys = [f"name:{name}", f"address:{request.client.host if request.client else ''}"]
    if wait := attempts.wait_s(keys):
        minutes = math.ceil(wait / 60)
        problem = f"Too many failed attempts; try again in {minutes} min. 尝试次数过多，请 {minutes} 分钟后再试。"
        return page(problem, name, 429, {"Retry-After": str(math.ceil(wait))})
    try:
        user = assistant.access.authenticate(name, password)
    except AuthenticationError as error:
        attempts.failed(keys)
        return page(f"{error.message}. 用户名或密码错误。", name, 401)
    attempts.forget(keys[0])
    response = RedirectResponse("/", 303)
    response.set_cookie(
        SESSION_COOKIE,
        assistant.access.start_session(user.name),
        max_age=int(assistant.settings.auth.session_hours * 3600),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout")
def sign_out(request: Request) -> Response:
    assistant: Assistant = request.app.state.assistant
    if token := request.cookies.get(SESSION_COOKIE):
        assistant.access.end_session(token)
    response = RedirectResponse("/login", 303)
    secure = request.url.scheme == "https"
    response.delete_cookie(SESSION_COOKIE, path="/", secure=secure, httponly=True, samesite="strict")
    return response
