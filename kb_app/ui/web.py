"""The browser page: one tab per screen (chat, documents, search, admin); :func:`kb_app.server.build_app` mounts it at
``/`` behind sign-in.

It is thin: every handler calls the :class:`Assistant` acting for the visitor (:func:`kb_app.ui.common.acting`)
and formats. The Assistant decides what a role allows; the page only leaves out what it would refuse, and builds
nothing user-specific into the page itself (that would ship to every visitor in /config): ``demo.load`` fills each
screen per visitor. The rules for what the page shows are in :mod:`kb_app.ui.common`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import gradio as gr

from kb_app.assistant import Assistant
from kb_app.settings import Settings
from kb_app.ui import look
from kb_app.ui.admin import AdminScreen
from kb_app.ui.chat import ChatScreen
from kb_app.ui.common import PRIVATE, Screen, acting, problem, signed_in
from kb_app.ui.documents import DocumentsScreen
from kb_app.ui.i18n import t
from kb_app.ui.search import SearchScreen


def build_ui(assistant: Assistant, uploads: Path) -> gr.Blocks:
    """The page over ``assistant``; files dropped on it arrive in ``uploads`` and are deleted once ingested."""
    with gr.Blocks(title="kb — private knowledge base") as demo:
        with gr.Row(elem_id="header"):
            with gr.Column(scale=4):
                gr.Markdown(t("app.title"))
                gr.Markdown(t("app.tagline"))
            who = gr.HTML(visible=False, elem_id="signed-in")
            language = gr.Button(t("app.language"), size="sm", elem_id="language", elem_classes="switch")
            theme = gr.Button(t("app.theme"), size="sm", elem_id="theme", elem_classes="switch")
        language.click(None, js=look.SWITCH_LANGUAGE)
        theme.click(None, js=look.SWITCH_THEME)
        with gr.Tabs():
            screens: list[Screen] = [
                ChatScreen(assistant),
                DocumentsScreen(assistant, uploads),
                SearchScreen(assistant),
                AdminScreen(assistant),
            ]

        def on_load(request: gr.Request):
            try:
                me = acting(assistant, request)
                return signed_in(me), *(value for screen in screens for value in screen.view(me))
            except Exception as exc:
                return gr.update(value=problem(exc), visible=True), *(v for s in screens for v in s.hidden())

        outputs = [who, *(component for screen in screens for component in screen.outputs)]
        demo.load(on_load, outputs=outputs, api_name="load", **PRIVATE)
    return demo


def prepare_uploads(settings: Settings) -> Path:
    """``KB_HOME/uploads`` (mode 0700, emptied of leftovers), made Gradio's upload folder.

    Gradio 6.31 reads ``GRADIO_TEMP_DIR`` when a component is built (its cache), when the server app is created
    (where ``/upload`` writes) and on every request (the check that an input file lies in the folder), so it is
    set before :func:`build_ui` and stays set: one page per process.
    """
    uploads = settings.home / "uploads"
    shutil.rmtree(uploads, ignore_errors=True)
    uploads.mkdir(parents=True, mode=0o700)
    uploads.chmod(0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)
    return uploads
