"""The browser app: streaming chat with sources under each answer, drag-and-drop upload, knowledge bases.

It is thin: every handler calls the :class:`Assistant` and formats. Three rules hold for everything it shows:
a :class:`KbError` is shown with its message and hint, any other failure only as one generic line (the details
go to the server log); text from documents (passages, file names, headings) is escaped so it renders as plain
text; the model's answer keeps its Markdown but can carry no image and no raw HTML. Together with the
Content-Security-Policy header, a hostile document cannot make a viewer's browser fetch anything remote.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
from gradio.utils import NamedString
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kb_app.assistant import Assistant
from kb_app.chat.pipeline import Answer, Citation
from kb_app.errors import KbError
from kb_app.models.base import Message as ChatMessage
from kb_app.settings import Settings

log = logging.getLogger(__name__)

HEADERS = ["file", "chunks", "bytes"]
SOURCES_RULE = "\n\n---\n"  # separates an answer from its sources in the chat
GENERIC_ERROR = "⚠️ Something went wrong on the server; the details are in its log. 服务器出错，详情见日志。"
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

_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark CommonMark can escape
_ANSWER_SPECIALS = re.compile(r"\\|<|(?<=!)\[")  # backslash, raw HTML, the bracket that makes ![..] an image
_ANSWER_ESCAPE = re.compile(r"\\([\\<\[])")


def escape_markdown(text: str) -> str:
    """``text`` as literal characters: no link, image, HTML tag or emphasis survives Markdown rendering."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def neutralise(text: str) -> str:
    """The model's (or the user's) Markdown without images or raw HTML; lists, emphasis and links stay."""
    return _ANSWER_SPECIALS.sub(lambda m: "\\" + m.group(0), text)


def unneutralise(text: str) -> str:
    """Undo :func:`neutralise`, so past turns reach the model as they were written."""
    return _ANSWER_ESCAPE.sub(r"\1", text)


def problem(exc: BaseException) -> str:
    """What the page shows for a failure: a KbError's message and hint; anything else only in the server log."""
    if not isinstance(exc, KbError):
        log.error("a request from the page failed", exc_info=exc)
        return GENERIC_ERROR
    hint = f"  \n→ {escape_markdown(exc.hint)}" if exc.hint else ""
    return f"⚠️ {escape_markdown(exc.message)}{hint}"


def format_sources(citations: list[Citation], language: str) -> str:
    """Markdown shown under an answer: file, page, score and the passage itself (escaped), for every citation."""
    if not citations:
        return ""
    title = "来源" if language == "zh" else "Sources"
    page_word = "第 {} 页" if language == "zh" else "page {}"
    lines = [f"{SOURCES_RULE}**{title}**\n"]
    for c in citations:
        page = f" · {page_word.format(c.page)}" if c.page else ""
        page += f" · {escape_markdown(c.heading)}" if c.heading else ""
        quoted = "\n".join(f"> {escape_markdown(line)}" for line in c.text.splitlines() if line.strip())
        lines.append(f"**\\[{c.n}\\] {escape_markdown(c.source)}**{page} · score {c.score:.3f}\n\n{quoted}\n")
    return "\n".join(lines)


def conversation(history: list[dict]) -> list[ChatMessage]:
    """Past turns as plain messages for condensing a follow-up: the sources shown under answers are left out."""
    turns: list[ChatMessage] = []
    for message in history:
        content = message.get("content")
        if isinstance(content, list):  # Gradio may hand back structured content: keep its text parts
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        if message.get("role") in ("user", "assistant") and isinstance(content, str) and content.strip():
            turns.append({"role": message["role"], "content": unneutralise(content.split(SOURCES_RULE)[0].strip())})
    return turns


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


def build_ui(assistant: Assistant, uploads: Path) -> gr.Blocks:
    """The page over ``assistant``; files dropped on it arrive in ``uploads`` and are deleted once ingested."""
    default_kb = assistant.settings.kb
    ui = assistant.settings.ui

    def kb_choices() -> list[str]:
        return sorted({*assistant.list_knowledge_bases(), default_kb})

    def files_table(kb: str) -> list[list]:
        if not assistant.has_knowledge_base(kb):
            return []
        return [[r.source, len(r.chunk_ids), r.size] for r in assistant.files(kb)]

    def ingest(paths: list[Path], kb: str, progress: gr.Progress) -> str:
        if len(paths) > ui.max_files_per_upload:
            raise KbError(
                f"{len(paths)} files in one drop; at most {ui.max_files_per_upload} are taken at once",
                "drop fewer files at a time, or raise KB_UI__MAX_FILES_PER_UPLOAD",
            )
        report = assistant.ingest(paths, kb=kb, progress=lambda fraction, message: progress(fraction, desc=message))
        lines = [f"**{escape_markdown(kb)}**: {report.summary()}"]
        lines += [f"- ⚠️ {escape_markdown(f.reason.splitlines()[0])}" for f in report.failed]
        return "\n".join(lines)

    def on_upload(
        files: list[str] | None,
        kb: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ):
        """Ingest what was just dropped into ``kb``, delete the uploaded copies and empty the box for the next drop."""
        paths = [Path(p) for p in files or []]
        try:
            name = (kb or default_kb).strip()  # the Assistant checks it
            status = ingest(paths, name, progress)
        except Exception as exc:
            return problem(exc), gr.update(), gr.update(), None
        finally:
            discard_uploads(paths, uploads)
        return status, files_table(name), gr.update(choices=kb_choices(), value=name), None

    def on_kb_change(kb: str):
        try:
            return files_table(kb), gr.update()
        except Exception as exc:
            return [], problem(exc)

    def on_delete(kb: str):
        try:
            name = kb.strip()  # the Assistant checks it
            deleted = assistant.delete_knowledge_base(name)
        except Exception as exc:
            return gr.update(choices=kb_choices(), value=default_kb), files_table(default_kb), problem(exc)
        shown = escape_markdown(name)
        status = f"deleted **{shown}**" if deleted else f"there is no knowledge base named **{shown}**"
        return gr.update(choices=kb_choices(), value=default_kb), files_table(default_kb), status

    def respond(message: str, history: list[dict], kb: str) -> Iterator[tuple[list[dict], str | dict]]:
        message = (message or "").strip()
        if not message:
            yield history, ""
            return
        if len(message) > ui.max_question_chars:
            refusal = KbError(
                f"the question is {len(message)} characters long; at most {ui.max_question_chars} are accepted",
                "shorten it, or raise KB_UI__MAX_QUESTION_CHARS",
            )
            yield [*history, {"role": "assistant", "content": problem(refusal)}], gr.update()
            return
        past = conversation(history)
        history = [*history, {"role": "user", "content": neutralise(message)}, {"role": "assistant", "content": ""}]
        yield history, ""
        text = ""
        try:
            for item in assistant.stream(message, kb=kb, history=past):
                if isinstance(item, Answer):
                    shown = neutralise(item.text) + format_sources(item.citations, item.language)
                else:
                    text += item
                    shown = neutralise(text)
                history[-1] = {"role": "assistant", "content": shown}
                yield history, ""
        except Exception as exc:
            history[-1] = {"role": "assistant", "content": problem(exc)}
            yield history, ""

    with gr.Blocks(title="kb — private knowledge base") as demo:
        gr.Markdown(
            "## kb · 私有知识库问答 — private knowledge base\nAnswers come only from your documents, "
            "on this machine. 回答仅来自你上传的文档，全部在本机运行。"
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                kb = gr.Dropdown(
                    choices=kb_choices(),
                    value=default_kb,
                    allow_custom_value=True,
                    label="Knowledge base 知识库 (type a new name in any language to create one, e.g. 财务部)",
                    elem_id="kb-picker",
                )
                upload = upload_box(file_count="multiple", label="Drop files 拖放文件", elem_id="upload")
                gr.Markdown("Formats: " + " ".join(assistant.registry.suffixes), elem_classes="formats")
                status = gr.Markdown(elem_id="ingest-status")
                table = gr.Dataframe(
                    headers=HEADERS,
                    value=files_table(default_kb),
                    interactive=False,
                    label="Files 文件",
                    elem_id="files",
                )
                delete = gr.Button("Delete this knowledge base 删除知识库", variant="stop", size="sm")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="Chat",
                    height="70vh",
                    elem_id="chat",
                    latex_delimiters=[],
                    allow_tags=False,
                    buttons=["copy", "copy_all"],
                    feedback_options=None,
                )
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="Ask in Chinese or English… 用中文或英文提问…",
                        show_label=False,
                        scale=5,
                        elem_id="question",
                        autofocus=True,
                        max_length=ui.max_question_chars,
                    )
                    send = gr.Button("Ask 提问", variant="primary", scale=1, elem_id="send")

        private = {"api_visibility": "private"}
        upload.upload(on_upload, inputs=[upload, kb], outputs=[status, table, kb, upload], api_name="upload", **private)
        kb.change(on_kb_change, inputs=kb, outputs=[table, status], api_name="kb_change", **private)
        delete.click(on_delete, inputs=kb, outputs=[kb, table, status], api_name="delete", **private)
        question.submit(respond, inputs=[question, chatbot, kb], outputs=[chatbot, question], api_name="ask", **private)
        send.click(respond, inputs=[question, chatbot, kb], outputs=[chatbot, question], api_name="send", **private)
    return demo


class ContentSecurityPolicy:
    """ASGI middleware adding :data:`CONTENT_SECURITY_POLICY` to every response: a second wall behind escaping."""

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
                headers["Referrer-Policy"] = "no-referrer"
            await send(message)

        await self.app(scope, receive, send_with_policy)


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


def launch(settings: Settings, block: bool = True) -> gr.Blocks:
    """Start the app on ``settings.ui`` (127.0.0.1 by default); the model loads on the first question."""
    assistant = Assistant(settings)
    # The embedded store is one process's: writes from other processes are refused while this server runs.
    assistant.hold_store(notice=lambda message: print(message, file=sys.stderr, flush=True))
    uploads = prepare_uploads(settings)
    demo = build_ui(assistant, uploads)
    demo.queue(max_size=settings.ui.queue_size, default_concurrency_limit=settings.ui.concurrency, api_open=False)
    demo.launch(
        server_name=settings.ui.host,
        server_port=settings.ui.port,
        inbrowser=settings.ui.open_browser and block,
        prevent_thread_lock=not block,
        share=False,
        show_error=False,
        max_file_size=f"{settings.max_file_mb}mb",
        enable_monitoring=False,
        footer_links=[],
        run_history=False,
        mcp_server=False,
        ssr_mode=False,
        pwa=False,
        app_kwargs={"middleware": [Middleware(ContentSecurityPolicy)]},
        theme=gr.themes.Soft(),
    )
    return demo
