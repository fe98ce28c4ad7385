"""What every screen of the page shares: acting for the visitor, showing failures, and escaping text.

Three rules hold for everything the page shows: a :class:`KbError` is shown with its message and hint, any other
failure only as one generic line (the details go to the server log); text from documents and users (passages,
file names, headings, names) is escaped so it renders as plain text; the model's answer keeps its Markdown but can
carry no image and no raw HTML. Together with the server's Content-Security-Policy header, a hostile document
cannot make a viewer's browser fetch anything remote.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
from pathlib import Path
from typing import Protocol

import gradio as gr
from gradio.utils import NamedString

from kb_app.assistant import Assistant
from kb_app.errors import AuthenticationError, KbError

log = logging.getLogger(__name__)

GENERIC_ERROR = "⚠️ Something went wrong on the server; the details are in its log. 服务器出错，详情见日志。"
PRIVATE = {"api_visibility": "private"}  # the page's handlers are not part of the documented API

_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark CommonMark can escape
_ANSWER_SPECIALS = re.compile(r"\\|<|(?<=!)\[")  # backslash, raw HTML, the bracket that makes ![..] an image


class Screen(Protocol):
    """One tab of the page. :meth:`view` fills :attr:`outputs` for a visitor when the page loads; :meth:`hidden`
    is what they get when that fails (nothing of anybody's shown)."""

    @property
    def outputs(self) -> list: ...

    def view(self, me: Assistant) -> tuple: ...

    def hidden(self) -> tuple: ...


def escape_markdown(text: str) -> str:
    """``text`` as literal characters: no link, image, HTML tag or emphasis survives Markdown rendering."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def neutralise(text: str) -> str:
    """The model's (or the user's) Markdown without images or raw HTML; lists, emphasis and links stay."""
    return _ANSWER_SPECIALS.sub(lambda m: "\\" + m.group(0), text)


def problem(exc: BaseException) -> str:
    """What the page shows for a failure: a KbError's message and hint; anything else only in the server log."""
    if not isinstance(exc, KbError):
        log.error("a request from the page failed", exc_info=exc)
        return GENERIC_ERROR
    hint = f"  \n→ {escape_markdown(exc.hint)}" if exc.hint else ""
    return f"⚠️ {escape_markdown(exc.message)}{hint}"


def acting(assistant: Assistant, request: gr.Request | None) -> Assistant:
    """``assistant`` acting for whoever sent ``request``: the user the server's ``auth_dependency`` named, or the
    machine's owner when authentication is off. A page mounted without that dependency while auth is on serves
    nobody (the server refuses such a request before it gets here; this holds if it ever does not)."""
    name = getattr(request, "username", None)
    if name:
        return assistant.as_user(assistant.access.user(name))
    if assistant.settings.auth.enabled:
        raise AuthenticationError("sign in first: this kb server requires a user", "open /login in the browser")
    return assistant


def knowledge_bases(me: Assistant) -> tuple[list[str], str | None]:
    """A picker's choices (the knowledge bases ``me`` may see) and the one selected first: the configured
    default if ``me`` holds a role on it (an admin holds one on every name), else the first they may see."""
    visible = me.list_knowledge_bases()
    default = me.settings.kb
    if me.role(default) is not None:
        return sorted({*visible, default}), default
    return visible, visible[0] if visible else None


def picked(kbs: str | list[str] | None) -> list[str]:
    """A multiselect picker's value as a list (a script may send one name)."""
    if not kbs:
        return []
    return [kbs] if isinstance(kbs, str) else list(kbs)


def signed_in(me: Assistant) -> dict:
    """Who is signed in and a button that ends the session (``POST /logout``); nothing when auth is off."""
    if not me.settings.auth.enabled:
        return gr.update(value="", visible=False)
    form = (
        f'<form method="post" action="/logout" id="sign-out">Signed in as <b>{html.escape(me.user.name)}</b> '
        '<button type="submit">Sign out 退出</button></form>'
    )
    return gr.update(value=form, visible=True)


def discard_uploads(paths: list[Path], uploads: Path) -> None:
    """Delete uploaded copies once ingested (kb keeps chunks, not files), with the per-upload folder Gradio made."""
    root = uploads.resolve()
    for path in paths:
        resolved = path.resolve()
        if root not in resolved.parents:
            continue
        resolved.unlink(missing_ok=True)
        folder = resolved.parent
        if folder != root:
            with contextlib.suppress(OSError):  # not empty: the same file is being dropped again right now
                folder.rmdir()


def upload_box(**kwargs) -> gr.File:
    """A ``gr.File`` that hands over the uploaded paths as they are.

    Gradio 6.31's File leaves an empty temporary file in the upload folder for every file it hands over; the
    folder must be empty once the files are ingested. The override is set on the instance: a subclass of a
    Gradio component would make Gradio write a ``.pyi`` file beside this module at import.
    """
    box = gr.File(**kwargs)
    box._process_single_file = lambda f: NamedString(f.path)  # type: ignore[method-assign]
    return box
