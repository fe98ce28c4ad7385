"""The documents screen: pick or name a knowledge base, drop files into it, see its files, delete it.

Hidden controls are a courtesy: the Assistant refuses what a role does not allow whether the control was shown or
not. Names typed here are checked by the Assistant before anything touches a path.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from kb_app.access.roles import Role
from kb_app.assistant import Assistant
from kb_app.errors import LimitExceededError
from kb_app.ui.common import PRIVATE, acting, discard_uploads, escape_markdown, knowledge_bases, problem, upload_box

HEADERS = ["file", "chunks", "bytes"]


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
    delete button (admins of ``kb``)."""
    role = me.role(kb) if kb else None
    return gr.update(visible=role is None or role >= Role.WRITE), gr.update(visible=role == Role.ADMIN)


class DocumentsScreen:
    """The documents tab, built inside the page's ``gr.Tabs``; files dropped on it arrive in ``uploads`` and are
    deleted once ingested."""

    def __init__(self, assistant: Assistant, uploads: Path) -> None:
        self.assistant = assistant
        self.uploads = uploads
        with gr.Tab("Documents 文档", elem_id="documents-tab"):
            self.kb = gr.Dropdown(
                choices=[],
                value=None,
                allow_custom_value=True,
                label="Knowledge base 知识库 (type a new name in any language to create one, e.g. 财务部)",
                elem_id="docs-kb",
            )
            self.upload = upload_box(file_count="multiple", label="Drop files 拖放文件", elem_id="upload", visible=False)
            gr.Markdown("Formats: " + " ".join(assistant.registry.suffixes), elem_classes="formats")
            self.status = gr.Markdown(elem_id="ingest-status")
            self.table = gr.Dataframe(headers=HEADERS, value=[], interactive=False, label="Files 文件", elem_id="files")
            self.delete = gr.Button(
                "Delete this knowledge base 删除知识库", variant="stop", size="sm", elem_id="delete", visible=False
            )

        shown = [self.table, self.status, self.upload, self.delete]
        self.upload.upload(
            self.on_upload, inputs=[self.upload, self.kb], outputs=[*shown, self.kb], api_name="upload", **PRIVATE
        )
        self.kb.change(self.on_kb_change, inputs=self.kb, outputs=shown, api_name="kb_change", **PRIVATE)
        self.delete.click(self.on_delete, inputs=self.kb, outputs=[*shown, self.kb], api_name="delete", **PRIVATE)

    @property
    def outputs(self) -> list:
        return [self.kb, self.table, self.status, self.upload, self.delete]

    def hidden(self) -> tuple:
        return gr.update(choices=[], value=None), [], gr.update(), gr.update(visible=False), gr.update(visible=False)

    def view(self, me: Assistant) -> tuple:
        choices, selected = knowledge_bases(me)
        return gr.update(choices=choices, value=selected), *self.shown(me, selected)

    def shown(self, me: Assistant, kb: str | None) -> tuple:
        """Table, status line, upload box and delete button for ``kb``."""
        return files_table(me, kb), files_note(me, kb), *controls(me, kb)

    def ingest(self, me: Assistant, paths: list[Path], kb: str, progress: gr.Progress) -> str:
        limit = me.settings.ui.max_files_per_upload
        if len(paths) > limit:
            raise LimitExceededError(
                f"{len(paths)} files in one drop; at most {limit} are taken at once",
                "drop fewer files at a time, or raise KB_UI__MAX_FILES_PER_UPLOAD",
            )
        report = me.ingest(paths, kb=kb, progress=lambda fraction, message: progress(fraction, desc=message))
        lines = [f"**{escape_markdown(kb)}**: {report.summary()}"]
        lines += [f"- ⚠️ {escape_markdown(f.reason.splitlines()[0])}" for f in report.failed]
        return "\n".join(lines)

    def on_upload(
        self,
        files: list[str] | None,
        kb: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ):
        """Ingest what was just dropped into ``kb``, delete the uploaded copies and empty the box for the next drop."""
        paths = [Path(p) for p in files or []]
        try:
            me = acting(self.assistant, request)
            name = (kb or me.settings.kb).strip()  # the Assistant checks it
            status = self.ingest(me, paths, name, progress)
            choices, _ = knowledge_bases(me)
            table, _, upload, delete = self.shown(me, name)
            outputs = [table, status, upload, delete, gr.update(choices=choices, value=name)]
        except Exception as exc:
            outputs = [gr.update(), problem(exc), gr.update(), gr.update(), gr.update()]
        finally:
            discard_uploads(paths, self.uploads)
        outputs[2] = {**outputs[2], "value": None}  # the upload box, emptied for the next drop
        return outputs

    def on_kb_change(self, kb: str, request: gr.Request):
        try:
            return self.shown(acting(self.assistant, request), kb)
        except Exception as exc:
            return [], problem(exc), gr.update(), gr.update()

    def on_delete(self, kb: str, request: gr.Request):
        try:
            me = acting(self.assistant, request)
            name = kb.strip()  # the Assistant checks it
            deleted = me.delete_knowledge_base(name)
            choices, selected = knowledge_bases(me)
            table, _, upload, delete = self.shown(me, selected)
        except Exception as exc:
            return gr.update(), problem(exc), gr.update(), gr.update(), gr.update()
        name = escape_markdown(name)
        status = f"deleted **{name}**" if deleted else f"there is no knowledge base named **{name}**"
        return table, status, upload, delete, gr.update(choices=choices, value=selected)
