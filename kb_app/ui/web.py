"""The browser app: streaming chat with sources under each answer, drag-and-drop upload, knowledge bases."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from kb_app.assistant import Assistant
from kb_app.chat.pipeline import Answer, Citation
from kb_app.errors import KbError
from kb_app.models.base import Message
from kb_app.settings import Settings

HEADERS = ["file", "chunks", "bytes"]
SOURCES_RULE = "\n\n---\n"  # separates an answer from its sources in the chat


def format_sources(citations: list[Citation], language: str) -> str:
    """Markdown shown under an answer: file, page, score and the passage itself, for every citation."""
    if not citations:
        return ""
    title = "来源" if language == "zh" else "Sources"
    page_word = "第 {} 页" if language == "zh" else "page {}"
    lines = [f"{SOURCES_RULE}**{title}**\n"]
    for c in citations:
        page = f" · {page_word.format(c.page)}" if c.page else ""
        page += f" · {c.heading}" if c.heading else ""
        quoted = "\n".join(f"> {line}" for line in c.text.splitlines() if line.strip())
        lines.append(f"**[{c.n}] {c.source}**{page} · score {c.score:.3f}\n\n{quoted}\n")
    return "\n".join(lines)


def conversation(history: list[dict]) -> list[Message]:
    """Past turns as plain messages for condensing a follow-up: the sources shown under answers are left out."""
    turns: list[Message] = []
    for message in history:
        content = message.get("content")
        if isinstance(content, list):  # Gradio may hand back structured content: keep its text parts
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        if message.get("role") in ("user", "assistant") and isinstance(content, str) and content.strip():
            turns.append({"role": message["role"], "content": content.split(SOURCES_RULE)[0].strip()})
    return turns


def build_ui(assistant: Assistant) -> gr.Blocks:
    default_kb = assistant.settings.kb

    def kb_choices() -> list[str]:
        names = assistant.list_knowledge_bases()
        return sorted({*names, default_kb})

    def files_table(kb: str) -> list[list]:
        return [[r.source, len(r.chunk_ids), r.size] for r in assistant.files(kb)]

    def on_upload(
        paths: list[str] | None,
        kb: str,
        seen: list[str],
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ):
        """Ingest what was just dropped; the upload box keeps earlier drops, and those are not sent again."""
        new = [p for p in paths or [] if p not in seen]
        if not new:
            return gr.update(), gr.update(), gr.update(), seen
        kb = (kb or default_kb).strip()
        report = assistant.ingest(
            [Path(p) for p in new],
            kb=kb,
            progress=lambda fraction, message: progress(fraction, desc=message),
        )
        lines = [f"**{kb}**: {report.summary()}"]
        lines += [f"- ⚠️ {f.reason.splitlines()[0]}" for f in report.failed]
        return "\n".join(lines), files_table(kb), gr.update(choices=kb_choices(), value=kb), [*seen, *new]

    def on_kb_change(kb: str):
        return files_table(kb) if kb in assistant.list_knowledge_bases() else []

    def on_delete(kb: str):
        if kb in assistant.list_knowledge_bases():
            assistant.delete_knowledge_base(kb)
        return gr.update(choices=kb_choices(), value=default_kb), [], f"deleted **{kb}**"

    def respond(message: str, history: list[dict], kb: str) -> Iterator[tuple[list[dict], str]]:
        message = (message or "").strip()
        if not message:
            yield history, ""
            return
        past = conversation(history)
        history = [*history, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield history, ""
        text = ""
        try:
            for item in assistant.stream(message, kb=kb, history=past):
                if isinstance(item, Answer):
                    text = item.text + format_sources(item.citations, item.language)
                else:
                    text += item
                history[-1] = {"role": "assistant", "content": text}
                yield history, ""
        except KbError as exc:
            history[-1] = {"role": "assistant", "content": f"⚠️ {exc}"}
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
                    label="Knowledge base 知识库 (type a new name to create one)",
                    elem_id="kb-picker",
                )
                upload = gr.File(
                    file_count="multiple",
                    label="Drop files 拖放文件",
                    elem_id="upload",
                )
                gr.Markdown("Formats: " + " ".join(assistant.registry.suffixes), elem_classes="formats")
                status = gr.Markdown(elem_id="ingest-status")
                table = gr.Dataframe(
                    headers=HEADERS,
                    value=files_table(default_kb) if default_kb in kb_choices() else [],
                    interactive=False,
                    label="Files 文件",
                    elem_id="files",
                )
                delete = gr.Button("Delete this knowledge base 删除知识库", variant="stop", size="sm")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", height="70vh", elem_id="chat")
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="Ask in Chinese or English… 用中文或英文提问…",
                        show_label=False,
                        scale=5,
                        elem_id="question",
                        autofocus=True,
                    )
                    send = gr.Button("Ask 提问", variant="primary", scale=1, elem_id="send")

        uploaded = gr.State([])
        upload.upload(on_upload, inputs=[upload, kb, uploaded], outputs=[status, table, kb, uploaded])
        kb.change(on_kb_change, inputs=kb, outputs=table)
        delete.click(on_delete, inputs=kb, outputs=[kb, table, status])
        for trigger in (question.submit, send.click):
            trigger(respond, inputs=[question, chatbot, kb], outputs=[chatbot, question])
    return demo


def launch(settings: Settings, block: bool = True) -> gr.Blocks:
    """Start the app on ``settings.ui`` (127.0.0.1 by default); the model loads on the first question."""
    assistant = Assistant(settings)
    demo = build_ui(assistant)
    demo.queue(default_concurrency_limit=2).launch(
        server_name=settings.ui.host,
        server_port=settings.ui.port,
        inbrowser=settings.ui.open_browser and block,
        share=False,
        prevent_thread_lock=not block,
        show_error=True,
        theme=gr.themes.Soft(),
    )
    return demo
