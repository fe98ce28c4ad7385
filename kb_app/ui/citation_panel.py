"""The citation viewer: a side panel that opens when a person clicks an ``[n]`` in an answer.

It shows where the cited passage comes from (file, page, heading path, knowledge base), the passage with the
sentence the answer relies on marked, the PDF page with the passage's region marked (or, for other formats, the
text around it), and the passages the model read that no sentence cites. What it shows is read from the
visitor's own kept conversation and fetched through the Assistant for their role: the browser only says which
turn and which number was clicked. A caller with only ``ask`` sees file and page, never text or the page image.

The chat renders each marker as a link to ``#cite-T-N`` (:func:`link_markers`); :data:`PAGE_SCRIPT`, run once on
the page, catches clicks on such links, writes ``T-N`` into the panel's hidden textbox and clicks its hidden button.
"""

from __future__ import annotations

import html
import re
from urllib.parse import quote

import gradio as gr

from kb_app.access.roles import Role
from kb_app.assistant import Assistant
from kb_app.chat.conversations import Turn
from kb_app.errors import KbError
from kb_app.language import detect_language
from kb_app.ui.common import PRIVATE, acting, escape_markdown, problem
from kb_app.ui.i18n import t
from kb_app.viewer.context import PassageContext, claims, supporting_span

_MARKER = re.compile(r"(?<!\\)\[(\d{1,2})\](?!\()")
_TARGET = re.compile(r"(\d{1,5})-(\d{1,2})")
ASK_ONLY = (
    "<p>Your role on this knowledge base is <b>ask</b>: file and page only; readers see the passage and the page. "
    "你在此知识库只有提问权限：只显示文件和页码。</p>"
)
PAGE_SCRIPT = """() => {
    document.addEventListener("click", (event) => {
        const link = event.target instanceof Element && event.target.closest('a[href^="#cite-"]');
        if (!link) return;
        event.preventDefault();
        event.stopPropagation();
        const box = document.querySelector("#citation-target textarea, #citation-target input");
        const open = document.querySelector("#citation-open");
        if (!box || !open) return;
        box.value = link.getAttribute("href").slice("#cite-".length);
        box.dispatchEvent(new Event("input", { bubbles: true }));
        open.click();
    }, true);
}"""


def cite_link(turn: int, n: int) -> str:
    """The Markdown link an answer shows for citation ``n`` of turn ``turn`` (its index in the kept conversation)."""
    return f"[\\[{n}\\]](#cite-{turn}-{n})"


def link_markers(text: str, turn: int) -> str:
    """Every ``[n]`` of an answer (already through ``neutralise``) as a :func:`cite_link`."""
    return _MARKER.sub(lambda m: cite_link(turn, int(m.group(1))), text)


def _mark(text: str, span: tuple[int, int] | None) -> str:
    """``text`` escaped for HTML, the span in ``<mark>``."""
    if span is None:
        return html.escape(text)
    start, end = span
    return f"{html.escape(text[:start])}<mark>{html.escape(text[start:end])}</mark>{html.escape(text[end:])}"


def page_url(kb: str, source: str, page: int, chunk_id: str) -> str:
    """Where the panel's ``<img>`` loads the page from (:mod:`kb_app.api.viewer`), every part percent-encoded."""
    return (
        f"/api/kb/{quote(kb, safe='')}/documents/{quote(source, safe='/')}/pages/{page}.png"
        f"?chunk={quote(chunk_id, safe='')}"
    )


def header(citation: dict, kb: str) -> str:
    page = f" · page {citation['page']} 第 {citation['page']} 页" if citation.get("page") else ""
    heading = f" · {escape_markdown(citation['heading'])}" if citation.get("heading") else ""
    return (
        f"**\\[{citation['n']}\\] {escape_markdown(citation['source'])}**{page}{heading}  \n"
        f"Knowledge base 知识库: {escape_markdown(kb)}"
    )


def passage_html(context: PassageContext, answer: str, n: int) -> str:
    """The passage with its supporting sentence marked, between the text around it (for formats without pages)."""
    text = context.chunk.text
    span = supporting_span(text, claims(answer, n), detect_language(answer))
    parts = [f"<p>{_mark(text, span)}</p>"]
    if not context.page_image:
        parts = [_around(context.before), *parts, _around(context.after)]
    return f'<div class="kb-passage" style="white-space:pre-wrap">{"".join(parts)}</div>'


def _around(text: str) -> str:
    return f'<p class="kb-context" style="opacity:.65">{html.escape(text)}</p>' if text else ""


def page_html(context: PassageContext, kb: str) -> str:
    if not context.page_image or context.chunk.page is None:
        return ""
    chunk = context.chunk
    url = html.escape(page_url(kb, chunk.source, chunk.page, chunk.id), quote=True)
    alt = html.escape(f"page {chunk.page} of {chunk.source}", quote=True)
    image = f'<img id="citation-image" src="{url}" alt="{alt}" style="max-width:100%;border:1px solid #ccc">'
    return f'<a href="{url}" target="_blank" rel="noopener" title="Open the page 打开整页">{image}</a>'


def uncited_markdown(uncited: list[dict], readable: set[str], fallback_kb: str) -> str:
    """The passages read but not cited: file and page, and the passage where the visitor may read it."""
    if not uncited:
        return "None 无"
    lines = []
    for c in uncited:
        page = f" · page {c['page']}" if c.get("page") else ""
        lines.append(f"- **\\[{c['n']}\\] {escape_markdown(c['source'])}**{page}")
        if (c.get("kb") or fallback_kb) in readable and c.get("text"):
            lines += [f"  > {escape_markdown(line)}" for line in c["text"].splitlines() if line.strip()]
    return "\n".join(lines)


class CitationPanel:
    """Built inside the chat screen's layout, beside the chat; ``kept`` is the gr.State of the kept conversation."""

    def __init__(self, assistant: Assistant, kept: gr.State) -> None:
        self.assistant = assistant
        with gr.Column(visible=False, scale=2, min_width=360, elem_id="citation-panel") as self.column:
            with gr.Row():
                self.header = gr.Markdown(elem_id="citation-header")
                close = gr.Button(t("citation_panel.close"), size="sm", scale=0, elem_id="citation-close")
            self.passage = gr.HTML(elem_id="citation-passage")
            self.page = gr.HTML(elem_id="citation-page")
            with gr.Accordion(t("citation_panel.retrieved_not_cited"), open=False, elem_id="citation-uncited"):
                self.uncited = gr.Markdown()
        # Hidden, not invisible: the page script writes into them, so they must be in the page.
        self.target = gr.Textbox(visible="hidden", elem_id="citation-target", show_label=False, container=False)
        opener = gr.Button("open", visible="hidden", elem_id="citation-open")
        outputs = [self.column, self.header, self.passage, self.page, self.uncited]
        opener.click(self.open, inputs=[self.target, kept], outputs=outputs, api_name="open_citation", **PRIVATE)
        close.click(lambda: gr.update(visible=False), outputs=self.column, api_name="close_citation", **PRIVATE)

    def open(self, target: str, kept: str | None, request: gr.Request) -> tuple:
        """The citation ``target`` ("T-N") of the visitor's own kept conversation, shown as their role allows."""
        try:
            return self._shown(target, kept, request)
        except Exception as exc:
            return gr.update(visible=True), problem(exc), "", "", ""

    def _shown(self, target: str, kept: str | None, request: gr.Request) -> tuple:
        me = acting(self.assistant, request)
        found = _TARGET.fullmatch((target or "").strip())
        if kept is None or found is None:
            raise KbError("there is no such citation in this conversation", "ask a question, then click its [n]")
        conversation = me.conversations.get(kept)
        turns = me.conversations.turns(conversation.id)
        turn_index, n = int(found.group(1)), int(found.group(2))
        turn = turns[turn_index] if turn_index < len(turns) else None
        citation = _citation(turn, n)
        kb = citation.get("kb") or conversation.kb
        me.knowledge_base(kb, create=False, need=Role.ASK)  # a grant withdrawn since: the Assistant's refusal
        readable = {k for k in {kb, *(c.get("kb") or conversation.kb for c in turn.uncited)} if _reads(me, k)}
        uncited = uncited_markdown(turn.uncited, readable, conversation.kb)
        if kb not in readable or not citation.get("chunk_id"):
            return gr.update(visible=True), header(citation, kb), ASK_ONLY if kb not in readable else "", "", uncited
        context = me.passage_context(kb, citation["chunk_id"])
        passage = passage_html(context, turn.answer, n)
        return gr.update(visible=True), header(citation, kb), passage, page_html(context, kb), uncited


def _citation(turn: Turn | None, n: int) -> dict:
    for citation in turn.citations if turn is not None else []:
        if citation.get("n") == n:
            return citation
    raise KbError("there is no such citation in this conversation", "click an [n] under an answer")


def _reads(me: Assistant, kb: str) -> bool:
    role = me.role(kb)
    return role is not None and role >= Role.READ
