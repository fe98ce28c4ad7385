"""The search screen: the passages a query finds in one or several knowledge bases, without the model, with how
each retrieval leg ranked them; and every chunk a document was indexed as, so a person can see what kb holds.

Both need ``read`` on each knowledge base: the Assistant refuses otherwise and the page shows its refusal. Passages,
file names, headings and names are escaped like everywhere on the page.
"""

from __future__ import annotations

import json

import gradio as gr

from ingest.vector_store import StoredChunk
from kb_app.access.roles import Role
from kb_app.assistant import Assistant
from kb_app.errors import KbError, LimitExceededError
from kb_app.retrieval.base import Hit
from kb_app.ui.common import PRIVATE, acting, escape_markdown, knowledge_bases, picked, problem
from kb_app.ui.i18n import t

MAX_RESULTS = 50  # passages one search may ask for, whatever a crafted request sends
MAX_CHUNKS_SHOWN = 500  # chunks of one document shown at once: a large file can hold thousands
NO_RESULTS = "No passage matches. 没有匹配的段落。"


def readable(me: Assistant) -> tuple[list[str], list[str]]:
    """The knowledge bases ``me`` may search (``read`` or more) and those selected first."""
    visible, default = knowledge_bases(me)
    choices = [kb for kb in visible if (me.role(kb) or 0) >= Role.READ]
    return choices, [default] if default in choices else choices[:1]


def quoted(text: str) -> str:
    return "\n".join(f"> {escape_markdown(line)}" for line in text.splitlines() if line.strip())


def place(chunk: StoredChunk) -> str:
    """Page and heading path, as far as the chunk has them."""
    page = f" · page {chunk.page}" if chunk.page else ""
    return page + (f" · {escape_markdown(chunk.heading)}" if chunk.heading else "")


def legs(hit: Hit) -> str:
    """Which leg found the hit and how: place and BM25 score (lexical), place and cosine (dense), rerank score.
    A cosine without a dense place was computed for a hit the lexical leg alone found."""
    shown = []
    if hit.lexical_rank is not None and hit.lexical_score is not None:
        shown.append(f"lexical #{hit.lexical_rank} ({hit.lexical_score:.2f})")
    if hit.dense_score is not None:
        rank = f"#{hit.dense_rank}" if hit.dense_rank is not None else "–"
        shown.append(f"dense {rank} (cosine {hit.dense_score:.3f})")
    if hit.rerank_score is not None:
        shown.append(f"rerank {hit.rerank_score:.3f}")
    return " · ".join(shown)


def format_results(hits: list[Hit]) -> str:
    """Markdown: each hit's rank, score, legs, file, page, heading path, knowledge base and passage (escaped)."""
    if not hits:
        return NO_RESULTS
    blocks = []
    for n, hit in enumerate(hits, 1):
        kb = f" · in **{escape_markdown(hit.kb)}**" if hit.kb else ""
        header = f"**{n}.** score {hit.score:.4f} · {legs(hit)}"
        blocks.append(
            f"{header}  \n**{escape_markdown(hit.chunk.source)}**{place(hit.chunk)}{kb}\n\n{quoted(hit.chunk.text)}"
        )
    return "\n\n---\n\n".join(blocks)


def format_chunks(chunks: list[StoredChunk], source: str) -> str:
    """Markdown: every chunk of ``source`` in order, with its number, page, heading path and text."""
    if not chunks:
        return f"**{escape_markdown(source)}** holds no chunk (nothing readable was found in it)"
    more = f", the first {MAX_CHUNKS_SHOWN} shown" if len(chunks) > MAX_CHUNKS_SHOWN else ""
    blocks = [f"**{escape_markdown(source)}**: {len(chunks)} chunk(s) 个片段{more}"]
    blocks += [f"**#{n}**{place(c)}\n\n{quoted(c.text)}" for n, c in enumerate(chunks[:MAX_CHUNKS_SHOWN], 1)]
    return "\n\n---\n\n".join(blocks)


def document_choices(me: Assistant, kbs: list[str]) -> list[tuple[str, str]]:
    """The documents of the picked knowledge bases ``me`` may read, as (label, value); the value names both."""
    choices = []
    for kb in kbs:
        if me.has_knowledge_base(kb) and (me.role(kb) or 0) >= Role.READ:
            prefix = f"{kb}: " if len(kbs) > 1 else ""
            choices += [(prefix + r.source, json.dumps([kb, r.source], ensure_ascii=False)) for r in me.files(kb)]
    return choices


def document_of(value: str | None) -> tuple[str, str]:
    """The (knowledge base, file) a document choice names; a crafted value is refused like an unknown file."""
    try:
        kb, source = json.loads(value or "")
    except (ValueError, TypeError):
        raise KbError("pick a document from the list", "its chunks are shown here once it is picked") from None
    if not isinstance(kb, str) or not isinstance(source, str):
        raise KbError("pick a document from the list", "its chunks are shown here once it is picked")
    return kb, source


class SearchScreen:
    """The search tab, built inside the page's ``gr.Tabs``."""

    def __init__(self, assistant: Assistant) -> None:
        self.assistant = assistant
        ui = assistant.settings.ui
        with gr.Tab(t("tab.search"), elem_id="search-tab") as tab:
            self.kb = gr.Dropdown(
                choices=[],
                value=[],
                multiselect=True,
                allow_custom_value=True,
                label=t("search.knowledge_bases_one_or_several"),
                elem_id="search-kb",
            )
            with gr.Row():
                query = gr.Textbox(
                    placeholder=t("search.search_passages_without_the_mode"),
                    show_label=False,
                    scale=5,
                    elem_id="search-query",
                    max_length=ui.max_question_chars,
                )
                k = gr.Slider(1, MAX_RESULTS, value=10, step=1, label=t("search.passages"), scale=1, elem_id="search-k")
                go = gr.Button(t("search.search"), variant="primary", scale=1, elem_id="search-go")
            results = gr.Markdown(elem_id="search-results")
            gr.Markdown(t("search.chunks_of_a_document"))
            self.document = gr.Dropdown(
                choices=[], value=None, allow_custom_value=True, label=t("search.document"), elem_id="chunks-doc"
            )
            chunks = gr.Markdown(elem_id="chunks")

        tab.select(self.on_show, inputs=self.kb, outputs=self.kb, api_name="search_tab", **PRIVATE)
        search_io = {"inputs": [self.kb, query, k], "outputs": results, **PRIVATE}
        query.submit(self.on_search, **search_io, api_name="search")
        go.click(self.on_search, **search_io, api_name="search_go")
        self.kb.change(
            self.on_kb_change, inputs=self.kb, outputs=[self.document, chunks], api_name="search_kb", **PRIVATE
        )
        self.document.change(self.on_document, inputs=self.document, outputs=chunks, api_name="chunks", **PRIVATE)

    @property
    def outputs(self) -> list:
        return [self.kb, self.document]

    def hidden(self) -> tuple:
        return gr.update(choices=[], value=[]), gr.update(choices=[], value=None)

    def view(self, me: Assistant) -> tuple:
        choices, selected = readable(me)
        return gr.update(choices=choices, value=selected), gr.update(choices=document_choices(me, selected), value=None)

    def on_show(self, kbs: list[str] | None, request: gr.Request) -> dict:
        """Coming back to the tab: the knowledge bases created (or granted) meanwhile are offered too."""
        try:
            choices, selected = readable(acting(self.assistant, request))
        except Exception:
            return gr.update()
        kept = [kb for kb in picked(kbs) if kb in choices]
        return gr.update(choices=choices, value=kept or selected)

    def on_search(self, kbs: list[str] | None, query: str, k: float | None, request: gr.Request) -> str:
        query = (query or "").strip()
        if not query:
            return "Type what to search for. 请输入检索内容。"
        try:
            me = acting(self.assistant, request)
            limit = me.settings.ui.max_question_chars
            if len(query) > limit:
                raise LimitExceededError(
                    f"the query is {len(query)} characters long; at most {limit} are accepted",
                    "shorten it, or raise KB_UI__MAX_QUESTION_CHARS",
                )
            return format_results(me.search(query, picked(kbs), k=min(max(int(k or 10), 1), MAX_RESULTS)))
        except Exception as exc:
            return problem(exc)

    def on_kb_change(self, kbs: list[str] | None, request: gr.Request) -> tuple:
        try:
            choices = document_choices(acting(self.assistant, request), picked(kbs))
        except Exception as exc:
            return gr.update(choices=[], value=None), problem(exc)
        return gr.update(choices=choices, value=None), ""

    def on_document(self, value: str | None, request: gr.Request) -> str:
        if not value:
            return ""
        try:
            kb, source = document_of(value)
            return format_chunks(acting(self.assistant, request).chunks(source, kb), source)
        except Exception as exc:
            return problem(exc)
