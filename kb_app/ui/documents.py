"""The documents screen: create, rename and delete knowledge bases; drop files into one; follow each file as it is
indexed in the background; delete, re-index or download one file.

A drop only queues the files (``Assistant.queue_ingest``) and returns at once; a ``gr.Timer`` then refreshes the
table and the status line about once a second while anything is queued or indexing, and stops when nothing is.
Hidden controls are a courtesy: the Assistant refuses what a role does not allow whether the control was shown or
not. Names typed here are checked by the Assistant before anything touches a path.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import gradio as gr

from ingest.manifest import FileRecord
from kb_app.access.roles import Role
from kb_app.assistant import Assistant
from kb_app.errors import KbError, LimitExceededError
from kb_app.humanize import human_size
from kb_app.ingest_queue import CANCELLED, DONE, FAILED, INDEXING, QUEUED, QueuedFile
from kb_app.ui.common import PRIVATE, acting, discard_uploads, escape_markdown, knowledge_bases, problem, upload_box
from kb_app.ui.i18n import t

HEADERS = ["file 文件", "pages 页数", "chunks 分块", "size 大小", "added 添加时间", "status 状态"]
NO_FILE = "pick a file in the table first 请先在表格中选择一个文件"


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else ""


def first_line(reason: str) -> str:
    return reason.splitlines()[0] if reason else ""


def queue_status(item: QueuedFile) -> str:
    """A file's place in the queue, in the table's words."""
    if item.state == INDEXING:
        return f"indexing 索引中 {item.fraction * 100:.0f} %"
    if item.state == FAILED:
        return f"failed 失败: {first_line(item.reason)}"
    return {QUEUED: "queued 排队中", DONE: "done 完成", CANCELLED: "cancelled 已取消"}.get(item.state, item.state)


def record_status(record: FileRecord) -> str:
    if record.status == "failed":
        return f"failed 失败: {first_line(record.error)}"
    return "done 完成" if record.status == "done" else "indexing 索引中"


def document_rows(records: list[FileRecord], queued: list[QueuedFile]) -> list[list]:
    """One row per file, by name: what the manifest knows (pages, chunks, size, added) and its latest state in
    the queue. A file the queue finished but the manifest no longer holds (deleted since) is left out."""
    rows = {
        r.source: [r.source, r.pages or "", len(r.chunk_ids), human_size(r.size), when(r.added), record_status(r)]
        for r in records
    }
    for item in queued:  # oldest first: the latest queueing of a name wins
        if item.state == DONE and item.source not in rows:
            continue
        row = rows.setdefault(item.source, [item.source, "", "", "", "", ""])
        row[5] = queue_status(item)
    return [rows[source] for source in sorted(rows, key=str.casefold)]


def queue_note(kb: str, queued: list[QueuedFile]) -> str | None:
    """The status line: what is being indexed and how many wait; once nothing is, the outcome of the last drop."""
    if not queued:
        return None
    name = escape_markdown(kb)
    active = [f for f in queued if f.active]
    if active:
        parts = [
            f"indexing 索引中 **{escape_markdown(f.source)}** {f.fraction * 100:.0f} %"
            for f in active
            if f.state == INDEXING
        ]
        waiting = sum(1 for f in active if f.state == QUEUED)
        parts += [f"{waiting} file(s) queued 个文件排队中"] if waiting else []
        return f"⏳ **{name}**: " + " · ".join(parts)
    batch = [f for f in queued if f.batch == queued[-1].batch]
    counts = Counter(f.message if f.state == DONE else f.state for f in batch)
    lines = [f"**{name}**: " + ", ".join(f"{n} {what}" for what, n in counts.items())]
    lines += [f"- ⚠️ {escape_markdown(first_line(f.reason))}" for f in batch if f.state == FAILED]
    return "\n".join(lines)


def files_table(me: Assistant, kb: str | None) -> list[list]:
    """The files of ``kb``; none for a knowledge base ``me`` may not see, whether it exists or not."""
    if not kb or not me.has_knowledge_base(kb):
        return []
    return document_rows([*me.files(kb), *me.failures(kb)], me.ingest_status(kb))


def files_note(me: Assistant, kb: str | None) -> str | dict:
    """The status line for a name with no knowledge base ``me`` may see: the same words whether one exists or not."""
    if not kb:
        return "type the name of a new knowledge base and drop files to create it, or ask an admin for a grant"
    if me.has_knowledge_base(kb):
        return queue_note(kb, me.ingest_status(kb)) or ""
    return f"no knowledge base named **{escape_markdown(kb)}** that you can open yet; drop files here to create it"


def busy(me: Assistant, kb: str | None) -> bool:
    """Whether anything of ``kb`` is queued or indexing (the table then refreshes itself)."""
    return bool(kb) and me.has_knowledge_base(kb) and me.indexing(kb) > 0


def controls(me: Assistant, kb: str | None) -> tuple[dict, dict]:
    """The upload box (writers, or anyone naming a knowledge base they hold no grant on, to create it) and the
    delete button (admins of ``kb``)."""
    role = me.role(kb) if kb else None
    return gr.update(visible=role is None or role >= Role.WRITE), gr.update(visible=role == Role.ADMIN)


def download_link(me: Assistant, kb: str, source: str) -> str:
    """A link to the kept original of ``source`` for a reader of ``kb`` (the route checks again); else nothing."""
    role = me.role(kb)
    if role is None or role < Role.READ:
        return ""
    url = f"/api/kb/{quote(kb, safe='')}/documents/{quote(source, safe='/')}/original"
    return f'<a href="{html.escape(url)}" download>Download original 下载原件</a>'


class DocumentsScreen:
    """The documents tab, built inside the page's ``gr.Tabs``; files dropped on it arrive in ``uploads`` and are
    deleted by the ingest queue once ingested."""

    def __init__(self, assistant: Assistant, uploads: Path) -> None:
        self.assistant = assistant
        self.uploads = uploads
        with gr.Tab(t("tab.documents"), elem_id="documents-tab"):
            self._build_knowledge_bases()
            self.upload = upload_box(
                file_count="multiple", label=t("documents.drop_files"), elem_id="upload", visible=False
            )
            gr.Markdown("Formats: " + " ".join(assistant.registry.suffixes), elem_classes="formats")
            self.status = gr.Markdown(elem_id="ingest-status")
            self.table = gr.Dataframe(
                headers=HEADERS, value=[], interactive=False, label=t("documents.files"), elem_id="files"
            )
            self._build_file_actions()
            self.timer = gr.Timer(1.0, active=False)
        self._wire()

    def _build_knowledge_bases(self) -> None:
        self.kb = gr.Dropdown(
            choices=[],
            value=None,
            allow_custom_value=True,
            label=t("documents.knowledge_base"),
            elem_id="docs-kb",
        )
        with gr.Row():
            self.new_name = gr.Textbox(
                label=t("documents.new_knowledge_base"), placeholder="财务部, HR 2026…", elem_id="kb-new-name", scale=3
            )
            self.create = gr.Button(t("documents.create"), size="sm", elem_id="kb-create", scale=1)
            self.rename_to = gr.Textbox(label=t("documents.rename_to"), elem_id="kb-rename-to", visible=False, scale=3)
            self.rename = gr.Button(t("documents.rename"), size="sm", elem_id="kb-rename", visible=False, scale=1)
        with gr.Row():
            self.delete = gr.Button(
                t("documents.delete_this_knowledge_base"), variant="stop", size="sm", elem_id="delete", visible=False
            )
            self.confirm = gr.Button(variant="stop", size="sm", elem_id="delete-confirm", visible=False)
        self.doomed = gr.State(None)  # the knowledge base the confirm button deletes

    def _build_file_actions(self) -> None:
        self.picked = gr.State(None)  # the file selected in the table
        with gr.Row():
            self.selected = gr.Markdown(elem_id="doc-selected")
            self.download = gr.HTML(elem_id="doc-download")
        with gr.Row(visible=False) as self.file_actions:
            self.remove_doc = gr.Button(t("documents.delete_file"), size="sm", elem_id="doc-delete")
            self.reindex = gr.Button(t("documents.re_index"), size="sm", elem_id="doc-reindex")
            self.cancel = gr.Button(t("documents.cancel_queued"), size="sm", elem_id="cancel-queued")

    @property
    def extras(self) -> list:
        """What :meth:`details` fills beside the four components :meth:`shown` fills."""
        return [self.rename_to, self.rename, self.file_actions, self.timer, self.confirm, self.doomed, *self.selection]

    @property
    def selection(self) -> list:
        return [self.picked, self.selected, self.download]

    def _wire(self) -> None:
        shown = [self.table, self.status, self.upload, self.delete]
        every = [*shown, *self.extras]
        self.upload.upload(
            self.on_upload, inputs=[self.upload, self.kb], outputs=[*every, self.kb], api_name="upload", **PRIVATE
        )
        self.kb.change(self.on_kb_change, inputs=self.kb, outputs=every, api_name="kb_change", **PRIVATE)
        self.timer.tick(
            self.on_tick, inputs=self.kb, outputs=[self.table, self.status, self.timer], api_name="refresh", **PRIVATE
        )
        self.create.click(
            self.on_create,
            inputs=self.new_name,
            outputs=[self.kb, self.status, self.new_name],
            api_name="create_kb",
            **PRIVATE,
        )
        self.rename.click(
            self.on_rename,
            inputs=[self.kb, self.rename_to],
            outputs=[self.kb, self.status, self.rename_to],
            api_name="rename_kb",
            **PRIVATE,
        )
        confirm = [self.table, self.status, self.upload, self.delete, self.kb, self.confirm, self.doomed]
        self.delete.click(self.on_delete_asked, inputs=self.kb, outputs=confirm, api_name="delete", **PRIVATE)
        self.confirm.click(self.on_delete, inputs=self.doomed, outputs=confirm, api_name="delete_confirm", **PRIVATE)
        self.table.select(self.on_select, inputs=self.kb, outputs=self.selection, api_name="select_file", **PRIVATE)
        after_file = [self.table, self.status, self.timer, *self.selection]
        self.remove_doc.click(
            self.on_remove_file, inputs=[self.kb, self.picked], outputs=after_file, api_name="delete_file", **PRIVATE
        )
        self.reindex.click(
            self.on_reindex, inputs=[self.kb, self.picked], outputs=after_file, api_name="reindex", **PRIVATE
        )
        self.cancel.click(
            self.on_cancel, inputs=[self.kb, self.picked], outputs=after_file, api_name="cancel_queued", **PRIVATE
        )

    @property
    def outputs(self) -> list:
        return [self.kb, self.table, self.status, self.upload, self.delete]

    def hidden(self) -> tuple:
        return gr.update(choices=[], value=None), [], gr.update(), gr.update(visible=False), gr.update(visible=False)

    def view(self, me: Assistant) -> tuple:
        """The picker and what :meth:`shown` fills; setting the picker fires its change event, which fills the rest
        (:meth:`details`)."""
        choices, selected = knowledge_bases(me)
        return gr.update(choices=choices, value=selected), *self.shown(me, selected)

    def shown(self, me: Assistant, kb: str | None) -> tuple:
        """Table, status line, upload box and delete button for ``kb``."""
        return files_table(me, kb), files_note(me, kb), *controls(me, kb)

    def details(self, me: Assistant, kb: str | None, ticking: bool = False) -> tuple:
        """The rest of the screen for ``kb``: rename (admins), file actions (writers), the timer (on while anything
        is queued or indexing, or ``ticking``: files were just queued), no pending delete and no file selected."""
        role = me.role(kb) if kb else None
        admin, writer = role == Role.ADMIN, role is not None and role >= Role.WRITE
        rename = [gr.update(visible=admin, value=""), gr.update(visible=admin)]
        timer = gr.update(active=ticking or busy(me, kb))
        return *rename, gr.update(visible=writer), timer, gr.update(visible=False), None, None, "", ""

    def everything(self, me: Assistant, kb: str | None, ticking: bool = False) -> list:
        return [*self.shown(me, kb), *self.details(me, kb, ticking)]

    def unchanged(self, status: str) -> list:
        """Every output of :meth:`everything` left as it is but the status line."""
        return [gr.update(), status, *[gr.update()] * (2 + len(self.extras))]

    # -- knowledge bases ---------------------------------------------------------------------------------------

    def on_kb_change(self, kb: str, request: gr.Request):
        try:
            return self.everything(acting(self.assistant, request), kb)
        except Exception as exc:
            return [[], *self.unchanged(problem(exc))[1:]]

    def on_create(self, name: str, request: gr.Request):
        """Create a knowledge base and select it (its change event fills the screen)."""
        try:
            me = acting(self.assistant, request)
            created = me.create_knowledge_base((name or "").strip())
            choices, _ = knowledge_bases(me)
        except Exception as exc:
            return gr.update(), problem(exc), gr.update()
        return gr.update(choices=choices, value=created), f"created **{escape_markdown(created)}**", ""

    def on_rename(self, kb: str, new: str, request: gr.Request):
        try:
            me = acting(self.assistant, request)
            renamed = me.rename_knowledge_base(kb.strip(), (new or "").strip())
            choices, _ = knowledge_bases(me)
        except Exception as exc:
            return gr.update(), problem(exc), gr.update()
        status = f"renamed **{escape_markdown(kb)}** to **{escape_markdown(renamed)}**"
        return gr.update(choices=choices, value=renamed), status, ""

    def on_delete_asked(self, kb: str, request: gr.Request):
        """The first click: check that the visitor may delete it, then offer the button that does."""
        try:
            me = acting(self.assistant, request)
            name = me.knowledge_base(kb.strip(), create=False, need=Role.ADMIN).name
        except Exception as exc:
            return gr.update(), problem(exc), gr.update(), gr.update(), gr.update(), gr.update(visible=False), None
        status = f"delete **{escape_markdown(name)}** and everything indexed in it? Your own files are not touched."
        confirm = gr.update(value=f"Confirm delete {name} 确认删除", visible=True)
        return gr.update(), status, gr.update(), gr.update(), gr.update(), confirm, name

    def on_delete(self, kb: str | None, request: gr.Request):
        hide = gr.update(visible=False)
        try:
            me = acting(self.assistant, request)
            name = (kb or "").strip()  # the Assistant checks it
            deleted = me.delete_knowledge_base(name)
            choices, selected = knowledge_bases(me)
            table, _, upload, delete = self.shown(me, selected)
        except Exception as exc:
            return gr.update(), problem(exc), gr.update(), gr.update(), gr.update(), hide, None
        name = escape_markdown(name)
        status = f"deleted **{name}**" if deleted else f"there is no knowledge base named **{name}**"
        return table, status, upload, delete, gr.update(choices=choices, value=selected), hide, None

    # -- files -------------------------------------------------------------------------------------------------

    def queue(self, me: Assistant, paths: list[Path], kb: str) -> str:
        limit = me.settings.ui.max_files_per_upload
        if len(paths) > limit:
            raise LimitExceededError(
                f"{len(paths)} files in one drop; at most {limit} are taken at once",
                "drop fewer files at a time, or raise KB_UI__MAX_FILES_PER_UPLOAD",
            )
        queued = me.queue_ingest(paths, kb=kb, discard=True)
        return f"⏳ **{escape_markdown(kb)}**: {len(queued)} file(s) queued 个文件已加入队列"

    def on_upload(self, files: list[str] | None, kb: str, request: gr.Request):
        """Queue what was just dropped into ``kb`` and return at once (the queue deletes the uploaded copies once
        ingested); the box is emptied for the next drop and the timer follows the progress."""
        paths = [Path(p) for p in files or []]
        try:
            me = acting(self.assistant, request)
            name = (kb or me.settings.kb).strip()  # the Assistant checks it
            status = self.queue(me, paths, name)
            choices, _ = knowledge_bases(me)
            outputs = [*self.everything(me, name, ticking=True), gr.update(choices=choices, value=name)]
            outputs[1] = status
        except Exception as exc:
            discard_uploads(paths, self.uploads)
            outputs = [*self.unchanged(problem(exc)), gr.update()]
        outputs[2] = {**outputs[2], "value": None}  # the upload box, emptied for the next drop
        return outputs

    def on_tick(self, kb: str, request: gr.Request):
        """The timer: table and status line again; it stops itself once nothing of ``kb`` is queued or indexing."""
        try:
            me = acting(self.assistant, request)
            return files_table(me, kb), files_note(me, kb), gr.update(active=busy(me, kb))
        except Exception as exc:
            return gr.update(), problem(exc), gr.update(active=False)

    def on_select(self, kb: str, evt: gr.SelectData, request: gr.Request):
        """A row picked in the table: its file, and a link to its original for a reader."""
        source = str((evt.row_value or [""])[0])
        if not source:
            return None, "", ""
        try:
            link = download_link(acting(self.assistant, request), kb, source)
        except Exception as exc:
            return None, problem(exc), ""
        return source, f"selected 已选择: **{escape_markdown(source)}**", link

    def after_file(self, me: Assistant, kb: str, status: str, keep: str | None, ticking: bool = False) -> list:
        selection = [keep, gr.update(), gr.update()] if keep else [None, "", ""]
        return [files_table(me, kb), status, gr.update(active=ticking or busy(me, kb)), *selection]

    def on_remove_file(self, kb: str, source: str | None, request: gr.Request):
        try:
            me = acting(self.assistant, request)
            if not source:
                raise KbError(NO_FILE, "")
            me.remove_file(source, kb=kb)
            return self.after_file(me, kb, f"deleted 已删除 **{escape_markdown(source)}**", None)
        except Exception as exc:
            return gr.update(), problem(exc), gr.update(), gr.update(), gr.update(), gr.update()

    def on_reindex(self, kb: str, source: str | None, request: gr.Request):
        try:
            me = acting(self.assistant, request)
            if not source:
                raise KbError(NO_FILE, "")
            me.reindex(source, kb=kb)
            return self.after_file(
                me, kb, f"⏳ re-indexing 重新索引 **{escape_markdown(source)}**", source, ticking=True
            )
        except Exception as exc:
            return gr.update(), problem(exc), gr.update(), gr.update(), gr.update(), gr.update()

    def on_cancel(self, kb: str, source: str | None, request: gr.Request):
        try:
            me = acting(self.assistant, request)
            dropped = me.cancel_ingest(kb)
            return self.after_file(me, kb, f"cancelled 已取消 {dropped} queued file(s)", source)
        except Exception as exc:
            return gr.update(), problem(exc), gr.update(), gr.update(), gr.update(), gr.update()
