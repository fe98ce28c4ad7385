"""The browser page: streaming chat with sources under each answer, drag-and-drop upload, knowledge bases, and
the admin screen (:mod:`kb_app.ui.admin`). :func:`kb_app.server.build_app` mounts it at ``/`` behind sign-in.

It is thin: every handler calls the :class:`Assistant` acting for the visitor (:func:`acting`: the user Gradio's
``request.username`` names, which the server's sign-in fills) and formats. The Assistant decides what a role
allows; the page only leaves out what it would refuse, and builds nothing user-specific into the page itself (a
``demo.load`` handler fills it per visitor). Three rules hold for everything it shows: a :class:`KbError` is shown
with its message and hint, any other failure only as one generic line (the details go to the server log); text
from documents and users (passages, file names, headings, names) is escaped so it renders as plain text; the
model's answer keeps its Markdown but can carry no image and no raw HTML. Together with the server's
Content-Security-Policy header, a hostile document cannot make a viewer's browser fetch anything remote.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
from gradio.utils import NamedString

from kb_app.access.roles import Role
from kb_app.assistant import Assistant
from kb_app.chat.conversations import Conversation
from kb_app.chat.pipeline import Answer, Citation
from kb_app.chat.turns import Waiting
from kb_app.errors import AuthenticationError, ConversationNotFoundError, KbError, LimitExceededError
from kb_app.language import detect_language
from kb_app.settings import Settings

log = logging.getLogger(__name__)

HEADERS = ["file", "chunks", "bytes"]
SOURCES_RULE = "\n\n---\n"  # separates an answer from its sources in the chat
WAITING = "⏳ {n} question(s) ahead of yours; the answer starts when the model is free. 前面还有 {n} 个问题，请稍候。"
GENERIC_ERROR = "⚠️ Something went wrong on the server; the details are in its log. 服务器出错，详情见日志。"

_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark CommonMark can escape
_ANSWER_SPECIALS = re.compile(r"\\|<|(?<=!)\[")  # backslash, raw HTML, the bracket that makes ![..] an image


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


def format_sources(citations: list[Citation], language: str) -> str:
    """Markdown under an answer: file, page, score and, for a caller who may read it, the passage (escaped)."""
    if not citations:
        return ""
    title = "来源" if language == "zh" else "Sources"
    page_word = "第 {} 页" if language == "zh" else "page {}"
    lines = [f"{SOURCES_RULE}**{title}**\n"]
    for c in citations:
        page = f" · {page_word.format(c.page)}" if c.page else ""
        page += f" · {escape_markdown(c.heading)}" if c.heading else ""
        quoted = "\n".join(f"> {escape_markdown(line)}" for line in c.text.splitlines() if line.strip())
        passage = f"\n{quoted}\n" if quoted else ""  # an ``ask`` caller gets no passage text: no empty quote either
        lines.append(f"**\\[{c.n}\\] {escape_markdown(c.source)}**{page} · score {c.score:.3f}\n{passage}")
    return "\n".join(lines)


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
    """The dropdown's choices (the knowledge bases ``me`` may see) and the one selected first: the configured
    default if ``me`` holds a role on it (an admin holds one on every name), else the first they may see."""
    visible = me.list_knowledge_bases()
    default = me.settings.kb
    if me.role(default) is not None:
        return sorted({*visible, default}), default
    return visible, visible[0] if visible else None


def files_table(me: Assistant, kb: str | None) -> list[list]:
    """The files of ``kb``; none for a knowledge base ``me`` may not see, whether it exists or not."""
    if not kb or not me.has_knowledge_base(kb):
        return []
    return [[r.source, len(r.chunk_ids), r.size] for r in me.files(kb)]


def files_note(me: Assistant, kb: str | None) -> str | dict:
    """The status line for a name with no knowledge base ``me`` may see: the same words whether one exists or not."""
    if not kb:
        return "type the name of a new knowledge base and drop files to create it, or ask an admin for a grant"
    if me.has_knowledge_base(kb):
        return gr.update()
    return f"no knowledge base named **{escape_markdown(kb)}** that you can open yet; drop files here to create it"


def controls(me: Assistant, kb: str | None) -> tuple[dict, dict]:
    """The upload box (writers, or anyone naming a knowledge base they hold no grant on, to create it) and the
    delete button (admins of ``kb``). Hidden controls are a courtesy: the Assistant refuses the verbs anyway."""
    role = me.role(kb) if kb else None
    return gr.update(visible=role is None or role >= Role.WRITE), gr.update(visible=role == Role.ADMIN)


def signed_in(me: Assistant) -> dict:
    """Who is signed in and a button that ends the session (``POST /logout``); nothing when auth is off."""
    if not me.settings.auth.enabled:
        return gr.update(value="", visible=False)
    form = (
        f'<form method="post" action="/logout" id="sign-out">Signed in as <b>{html.escape(me.user.name)}</b> '
        '<button type="submit">Sign out 退出</button></form>'
    )
    return gr.update(value=form, visible=True)


def shown_answer(answer: Answer) -> str:
    return neutralise(answer.text) + format_sources(answer.citations, answer.language)


def reopened(me: Assistant) -> tuple[Conversation | None, list[dict]]:
    """The visitor's last conversation and its turns as the chat shows them, so a reload continues where they were."""
    try:
        kept = me.conversations.last()
    except ConversationNotFoundError:
        return None, []
    chat: list[dict] = []
    for turn in me.conversations.turns(kept.id):
        citations = [Citation(**c) for c in turn.citations]
        answer = Answer(turn.answer, detect_language(turn.question), citations, turn.refused)
        chat += [
            {"role": "user", "content": neutralise(turn.question)},
            {"role": "assistant", "content": shown_answer(answer)},
        ]
    return kept, chat


def build_ui(assistant: Assistant, uploads: Path) -> gr.Blocks:
    """The page over ``assistant``; files dropped on it arrive in ``uploads`` and are deleted once ingested.

    Nothing about a user is put into the page when it is built (that would ship to every visitor in /config): the
    knowledge bases, their files and the controls a role allows are filled in per visitor by ``demo.load``.
    """
    from kb_app.ui.admin import AdminScreen  # here: the admin screen builds on this module's helpers

    default_kb = assistant.settings.kb
    ui = assistant.settings.ui

    def ingest(me: Assistant, paths: list[Path], kb: str, progress: gr.Progress) -> str:
        if len(paths) > ui.max_files_per_upload:
            raise LimitExceededError(
                f"{len(paths)} files in one drop; at most {ui.max_files_per_upload} are taken at once",
                "drop fewer files at a time, or raise KB_UI__MAX_FILES_PER_UPLOAD",
            )
        report = me.ingest(paths, kb=kb, progress=lambda fraction, message: progress(fraction, desc=message))
        lines = [f"**{escape_markdown(kb)}**: {report.summary()}"]
        lines += [f"- ⚠️ {escape_markdown(f.reason.splitlines()[0])}" for f in report.failed]
        return "\n".join(lines)

    def view(me: Assistant, kb: str | None) -> tuple:
        """Everything that depends on who ``me`` is and on the selected knowledge base."""
        return (*controls(me, kb), *admin.view(me, kb))

    def on_load(request: gr.Request):
        try:
            me = acting(assistant, request)
            choices, selected = knowledge_bases(me)
            kept, chat = reopened(me)
            if kept is not None and kept.kb in choices:
                selected = kept.kb
            shown = files_table(me, selected), files_note(me, selected), signed_in(me)
            reopen = (chat, kept.id) if kept is not None else ([], None)
            return gr.update(choices=choices, value=selected), *shown, *reopen, *view(me, selected)
        except Exception as exc:
            return gr.update(), [], problem(exc), gr.update(), gr.update(), None, *hidden

    def on_upload(
        files: list[str] | None,
        kb: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ):
        """Ingest what was just dropped into ``kb``, delete the uploaded copies and empty the box for the next drop."""
        paths = [Path(p) for p in files or []]
        try:
            me = acting(assistant, request)
            name = (kb or default_kb).strip()  # the Assistant checks it
            status = ingest(me, paths, name, progress)
            choices, _ = knowledge_bases(me)
            shown = [files_table(me, name), gr.update(choices=choices, value=name), *view(me, name)]
        except Exception as exc:
            status, shown = problem(exc), [gr.update(), gr.update(), *unchanged]
        finally:
            discard_uploads(paths, uploads)
        shown[2] = {**shown[2], "value": None}  # the upload box, emptied for the next drop
        return status, *shown

    def on_kb_change(kb: str, request: gr.Request):
        try:
            me = acting(assistant, request)
            return files_table(me, kb), files_note(me, kb), *view(me, kb)
        except Exception as exc:
            return [], problem(exc), *unchanged

    def on_delete(kb: str, request: gr.Request):
        try:
            me = acting(assistant, request)
            name = kb.strip()  # the Assistant checks it
            deleted = me.delete_knowledge_base(name)
            choices, selected = knowledge_bases(me)
            shown = (gr.update(choices=choices, value=selected), files_table(me, selected), *view(me, selected))
        except Exception as exc:
            return gr.update(), gr.update(), problem(exc), *unchanged
        name = escape_markdown(name)
        status = f"deleted **{name}**" if deleted else f"there is no knowledge base named **{name}**"
        return *shown[:2], status, *shown[2:]

    def respond(
        message: str, history: list[dict], kb: str, kept: str | None, request: gr.Request
    ) -> Iterator[tuple[list[dict], str | dict, str | None]]:
        """Answer within the visitor's kept conversation (a new one when there is none or the knowledge base
        changed); the model gets the kept turns as history, not the page's rendering of them."""
        message = (message or "").strip()
        if not message:
            yield history, "", kept
            return
        if len(message) > ui.max_question_chars:
            refusal = LimitExceededError(
                f"the question is {len(message)} characters long; at most {ui.max_question_chars} are accepted",
                "shorten it, or raise KB_UI__MAX_QUESTION_CHARS",
            )
            yield [*history, {"role": "assistant", "content": problem(refusal)}], gr.update(), kept
            return
        history = [*history, {"role": "user", "content": neutralise(message)}, {"role": "assistant", "content": ""}]
        yield history, "", kept
        text = ""
        try:
            me = acting(assistant, request)
            if kept is None or me.conversations.get(kept).kb != kb:
                kept = me.conversations.start(kb or default_kb).id
            for item in me.chat(message, kept):
                if isinstance(item, Waiting):
                    shown = WAITING.format(n=item.ahead)
                elif isinstance(item, Answer):
                    shown = shown_answer(item)
                else:
                    text += item
                    shown = neutralise(text)
                if shown == history[-1]["content"]:  # a repeated waiting notice: Gradio keeps the page alive itself
                    continue
                history[-1] = {"role": "assistant", "content": shown}
                yield history, "", kept
        except Exception as exc:
            history[-1] = {"role": "assistant", "content": problem(exc)}
            yield history, "", kept

    with gr.Blocks(title="kb — private knowledge base") as demo:
        with gr.Row():
            gr.Markdown(
                "## kb · 私有知识库问答 — private knowledge base\nAnswers come only from your documents, "
                "on this machine. 回答仅来自你上传的文档，全部在本机运行。"
            )
            who = gr.HTML(visible=False, elem_id="signed-in")
        with gr.Tabs():
            with gr.Tab("Chat 问答", elem_id="chat-tab"), gr.Row():
                with gr.Column(scale=1, min_width=280):
                    kb = gr.Dropdown(
                        choices=[],
                        value=None,
                        allow_custom_value=True,
                        label="Knowledge base 知识库 (type a new name in any language to create one, e.g. 财务部)",
                        elem_id="kb-picker",
                    )
                    upload = upload_box(
                        file_count="multiple", label="Drop files 拖放文件", elem_id="upload", visible=False
                    )
                    gr.Markdown("Formats: " + " ".join(assistant.registry.suffixes), elem_classes="formats")
                    status = gr.Markdown(elem_id="ingest-status")
                    table = gr.Dataframe(
                        headers=HEADERS, value=[], interactive=False, label="Files 文件", elem_id="files"
                    )
                    delete = gr.Button(
                        "Delete this knowledge base 删除知识库",
                        variant="stop",
                        size="sm",
                        elem_id="delete",
                        visible=False,
                    )
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
                    new_chat = gr.Button("New conversation 新对话", size="sm", elem_id="new-conversation")
                    kept = gr.State(None)  # the kept conversation this tab continues
            admin = AdminScreen(assistant)

        roles = [upload, delete, *admin.outputs]
        unchanged = tuple(gr.update() for _ in roles)
        hidden = (gr.update(visible=False), gr.update(visible=False), *admin.hidden())
        private = {"api_visibility": "private"}
        demo.load(on_load, outputs=[kb, table, status, who, chatbot, kept, *roles], api_name="load", **private)
        new_chat.click(lambda: ([], None), outputs=[chatbot, kept], api_name="new_conversation", **private)
        upload.upload(on_upload, inputs=[upload, kb], outputs=[status, table, kb, *roles], api_name="upload", **private)
        kb.change(on_kb_change, inputs=kb, outputs=[table, status, *roles], api_name="kb_change", **private)
        delete.click(on_delete, inputs=kb, outputs=[kb, table, status, *roles], api_name="delete", **private)
        # Every question on the page joins the Assistant's one line at the model at once (it shows the place):
        # held back in Gradio's queue by ui.concurrency, page users would wait behind every API caller.
        asking = {**private, "concurrency_limit": ui.queue_size, "concurrency_id": "ask"}
        chat_io = {"inputs": [question, chatbot, kb, kept], "outputs": [chatbot, question, kept]}
        question.submit(respond, **chat_io, api_name="ask", **asking)
        send.click(respond, **chat_io, api_name="send", **asking)
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
