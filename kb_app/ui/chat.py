"""The chat screen: questions streamed into a kept conversation, the sources under each answer, past
conversations on the left.

A reload reopens the visitor's last conversation; picking one in the sidebar reopens it (its knowledge bases
selected), and follow-ups continue it. The model gets the kept turns as history, never the page's rendering of
them. After every answer the chat is drawn again from the kept turns, so the n-th answer shown is the n-th turn
kept: a thumb on it rates that turn, and the feedback store takes the question and answer from the kept
conversation, not from the page.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from urllib.parse import quote

import gradio as gr

from kb_app.assistant import Assistant
from kb_app.chat.conversations import Conversation, Turn
from kb_app.chat.pipeline import Answer, Citation
from kb_app.chat.turns import Waiting
from kb_app.errors import ConversationNotFoundError, KbError, LimitExceededError
from kb_app.ingest_queue import Indexing
from kb_app.language import detect_language
from kb_app.ui.citation_panel import CitationPanel, cite_link, link_markers
from kb_app.ui.common import PRIVATE, acting, escape_markdown, knowledge_bases, neutralise, picked, problem
from kb_app.ui.i18n import t

SOURCES_RULE = "\n\n---\n"  # separates an answer from its sources in the chat
WAITING = "⏳ {n} question(s) ahead of yours; the answer starts when the model is free. 前面还有 {n} 个问题，请稍候。"
INDEXING = "⏳ indexing {n} file(s)… 正在索引 {n} 个文件…"
UNTITLED = "New conversation 新对话"
THANKS = "Thanks! Say why below if you like. 谢谢！可在下方补充原因。"


def format_sources(citations: list[Citation], language: str, turn: int | None = None, several: bool = False) -> str:
    """Markdown under an answer: each number a link that opens the citation panel (``turn`` is the answer's index
    in its kept conversation; None: not kept, no link), file, page, score, the knowledge base when the question
    asked ``several``, and for a caller who may read it, the passage (all escaped)."""
    if not citations:
        return ""
    title = "来源" if language == "zh" else "Sources"
    page_word = "第 {} 页" if language == "zh" else "page {}"
    kb_word = "知识库 {}" if language == "zh" else "knowledge base {}"
    lines = [f"{SOURCES_RULE}**{title}**\n"]
    for c in citations:
        where = f" · {page_word.format(c.page)}" if c.page else ""
        where += f" · {escape_markdown(c.heading)}" if c.heading else ""
        where += f" · {kb_word.format(escape_markdown(c.kb))}" if several and c.kb else ""
        quoted = "\n".join(f"> {escape_markdown(line)}" for line in c.text.splitlines() if line.strip())
        passage = f"\n{quoted}\n" if quoted else ""  # an ``ask`` caller gets no passage text: no empty quote either
        number = cite_link(turn, c.n) if turn is not None else f"\\[{c.n}\\]"
        lines.append(f"**{number} {escape_markdown(c.source)}**{where} · score {c.score:.3f}\n{passage}")
    return "\n".join(lines)


def shown_answer(answer: Answer, turn: int, several: bool = False) -> str:
    """The answer with its ``[n]`` markers as links to the citation panel, and its sources under it."""
    text = link_markers(neutralise(answer.text), turn)
    return text + format_sources(answer.citations, answer.language, turn, several)


def kept_answer(turn: Turn) -> Answer:
    """A kept turn as the :class:`Answer` it was (citations kept by an older kb lack the newer fields)."""
    citations = [Citation(**c) for c in turn.citations]
    uncited = [Citation(**c) for c in turn.uncited]
    return Answer(turn.answer, detect_language(turn.question), citations, turn.refused, uncited)


def rendered(me: Assistant, kept: Conversation) -> list[dict]:
    """The kept conversation's turns as the chat shows them: one question and one answer a turn."""
    chat: list[dict] = []
    several = len(kept.kbs) > 1
    for index, turn in enumerate(me.conversations.turns(kept.id)):
        chat += [
            {"role": "user", "content": neutralise(turn.question)},
            {"role": "assistant", "content": shown_answer(kept_answer(turn), index, several)},
        ]
    return chat


def reopened(me: Assistant) -> tuple[Conversation | None, list[dict]]:
    """The visitor's last conversation and its turns as the chat shows them, so a reload continues where they were."""
    try:
        kept = me.conversations.last()
    except ConversationNotFoundError:
        return None, []
    return kept, rendered(me, kept)


def sidebar(me: Assistant, selected: str | None) -> dict:
    """The visitor's conversations, newest first, each by its title (plain text: a radio label is not Markdown).
    One never answered (a refused first question) is left out unless it is the open one."""
    listed = [c for c in me.conversations.recent() if c.turns or c.id == selected]
    return gr.update(choices=[(c.title or UNTITLED, c.id) for c in listed], value=selected)


def export_link(conversation_id: str | None) -> str:
    """A link to the conversation as a Markdown file (``GET /api/conversations/{id}.md``, the visitor's own)."""
    if not conversation_id:
        return ""
    href = html.escape(f"/api/conversations/{quote(conversation_id, safe='')}.md")
    return f'<a href="{href}" download id="export-link">⬇ Export as Markdown 导出为 Markdown</a>'


def continued(me: Assistant, kept: str | None, kbs: list[str]) -> Conversation:
    """The conversation a question goes into: the kept one if it asks the same knowledge bases, else a new one
    (also when the kept one was deleted meanwhile, in another tab)."""
    kbs = kbs or [me.settings.kb]
    if kept is not None:
        try:
            conversation = me.conversations.get(kept)
        except ConversationNotFoundError:
            conversation = None
        if conversation is not None and set(conversation.kbs) == set(kbs):
            return conversation
    return me.conversations.start(kbs)


def progress_text(item: object) -> str | None:
    """What a notice from :meth:`Assistant.chat` shows in place of the answer; None for anything else."""
    if isinstance(item, Waiting):
        return WAITING.format(n=item.ahead)
    if isinstance(item, Indexing):
        return INDEXING.format(n=item.files)
    return None


def liked_turn(data: gr.LikeData) -> tuple[int, bool | None]:
    """The rated turn (the chat shows two messages a turn) and the verdict: True, False, or None when taken back."""
    index = data.index if isinstance(data.index, int) else data.index[0]
    return index // 2, data.liked if isinstance(data.liked, bool) else None


class ChatScreen:
    """The chat tab, built inside the page's ``gr.Tabs``: conversations on the left, the chat in the middle, the
    citation panel (:mod:`kb_app.ui.citation_panel`) on the right once an ``[n]`` is clicked."""

    def __init__(self, assistant: Assistant) -> None:
        self.assistant = assistant
        with gr.Tab(t("tab.chat"), elem_id="chat-tab") as tab:
            self.kept = gr.State(None)  # the kept conversation this tab continues
            self.rated = gr.State(None)  # [conversation, turn] of the answer rated last, for its comment
            with gr.Row():
                with gr.Column(scale=1, min_width=220, elem_classes="kb-sidebar"):
                    self._build_sidebar()
                with gr.Column(scale=4):
                    self._build_chat()
                self.citations = CitationPanel(assistant, self.kept)
        tab.select(self.on_show, inputs=self.kb, outputs=self.kb, api_name="chat_tab", **PRIVATE)
        self._wire_conversations()
        self._wire_questions()
        self._wire_feedback()

    def _build_sidebar(self) -> None:
        self.new_chat = gr.Button(t("chat.new_conversation"), size="sm", elem_id="new-conversation")
        self.conversations = gr.Radio(choices=[], value=None, label=t("chat.conversations"), elem_id="conversations")
        self.title = gr.Textbox(label=t("chat.title"), max_lines=1, elem_id="conversation-title")
        with gr.Row():
            self.rename = gr.Button(t("chat.rename"), size="sm", elem_id="rename-conversation")
            self.delete = gr.Button(t("chat.delete"), size="sm", variant="stop", elem_id="delete-conversation")
        with gr.Row(visible=False) as self.confirm_row:
            self.confirm = gr.Button(t("chat.delete_for_good"), size="sm", variant="stop", elem_id="confirm-delete")
            self.cancel = gr.Button(t("chat.keep_it"), size="sm", elem_id="cancel-delete")
        self.export = gr.HTML("", elem_id="export-conversation")
        self.status = gr.Markdown("", elem_id="conversation-status")

    def _build_chat(self) -> None:
        ui = self.assistant.settings.ui
        self.kb = gr.Dropdown(
            choices=[],
            value=[],
            multiselect=True,
            label=t("chat.knowledge_bases_one_or_several"),
            elem_id="kb-picker",
            allow_custom_value=True,
        )
        self.chatbot = gr.Chatbot(
            label="Chat",
            height="65vh",
            elem_id="chat",
            latex_delimiters=[],
            allow_tags=False,
            buttons=["copy", "copy_all"],
            feedback_options=("Like", "Dislike"),
        )
        with gr.Row():
            self.question = gr.Textbox(
                placeholder=t("chat.ask_in_chinese_or_english"),
                show_label=False,
                scale=5,
                elem_id="question",
                autofocus=True,
                max_length=ui.max_question_chars,
            )
            self.send = gr.Button(t("chat.ask"), variant="primary", scale=1, elem_id="send")
            self.stop = gr.Button(t("chat.stop"), scale=0, min_width=90, elem_id="stop")
            self.regenerate = gr.Button(t("chat.regenerate"), scale=0, min_width=110, elem_id="regenerate")
        with gr.Row():
            self.comment = gr.Textbox(
                placeholder=t("chat.what_was_wrong_or_right_about_th"),
                show_label=False,
                scale=5,
                max_lines=3,
                elem_id="feedback-comment",
            )
            self.send_comment = gr.Button(t("chat.send_comment"), scale=1, elem_id="send-feedback")
        self.feedback_status = gr.Markdown("", elem_id="feedback-status")

    # -- what the page load fills ----------------------------------------------------------------------------

    @property
    def outputs(self) -> list:
        return [self.kb, self.chatbot, self.kept, self.conversations, self.title, self.export]

    def hidden(self) -> tuple:
        return gr.update(choices=[], value=[]), [], None, gr.update(choices=[], value=None), "", ""

    def view(self, me: Assistant) -> tuple:
        choices, selected = knowledge_bases(me)
        kept, chat = reopened(me)
        kbs = [selected] if selected else []
        if kept is not None and any(kb in choices for kb in kept.kbs):
            kbs = [kb for kb in kept.kbs if kb in choices]
        kept_id = kept.id if kept is not None else None
        title = kept.title if kept is not None else ""
        return gr.update(choices=choices, value=kbs), chat, kept_id, sidebar(me, kept_id), title, export_link(kept_id)

    def on_show(self, kbs: list[str] | None, request: gr.Request) -> dict:
        """Coming back to the tab: the knowledge bases created (or granted) meanwhile are offered too."""
        try:
            choices, selected = knowledge_bases(acting(self.assistant, request))
        except Exception:
            return gr.update()
        still = [kb for kb in picked(kbs) if kb in choices]
        return gr.update(choices=choices, value=still or ([selected] if selected else []))

    # -- the sidebar -----------------------------------------------------------------------------------------

    def _wire_conversations(self) -> None:
        opened = [self.chatbot, self.kept, self.kb, self.title, self.export, self.status]
        fresh = {
            "fn": lambda: ([], None, gr.update(value=None), "", "", ""),
            "outputs": [self.chatbot, self.kept, self.conversations, self.title, self.export, self.status],
        }
        self.new_chat.click(**fresh, api_name="new_conversation", **PRIVATE)
        self.chatbot.clear(**fresh, api_name="clear_chat", **PRIVATE)  # the chat's own bin: a new conversation too
        self.conversations.input(
            self.on_open, inputs=self.conversations, outputs=opened, api_name="open_conversation", **PRIVATE
        )
        self.rename.click(
            self.on_rename,
            inputs=[self.kept, self.title],
            outputs=[self.conversations, self.status],
            api_name="rename_conversation",
            **PRIVATE,
        )
        self.delete.click(lambda: gr.update(visible=True), outputs=self.confirm_row, api_name="ask_delete", **PRIVATE)
        self.cancel.click(lambda: gr.update(visible=False), outputs=self.confirm_row, api_name="keep", **PRIVATE)
        self.confirm.click(
            self.on_delete,
            inputs=self.kept,
            outputs=[self.confirm_row, self.conversations, *opened[:2], self.title, self.export, self.status],
            api_name="delete_conversation",
            **PRIVATE,
        )

    def on_open(self, conversation_id: str | None, request: gr.Request) -> tuple:
        """A conversation picked in the sidebar: its turns, its knowledge bases selected; follow-ups continue it."""
        try:
            me = acting(self.assistant, request)
            kept = me.conversations.get(conversation_id or "")
            chat = rendered(me, kept)
        except Exception as exc:
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), problem(exc)
        return chat, kept.id, gr.update(value=kept.kbs), kept.title, export_link(kept.id), ""

    def on_rename(self, kept: str | None, title: str, request: gr.Request) -> tuple:
        try:
            me = acting(self.assistant, request)
            if not kept:
                raise KbError("no conversation is open", "ask a question or pick a conversation first")
            me.conversations.rename(kept, title or "")
            return sidebar(me, kept), ""
        except Exception as exc:
            return gr.update(), problem(exc)

    def on_delete(self, kept: str | None, request: gr.Request) -> tuple:
        """The confirmed delete: the conversation and its turns are gone; the chat starts empty."""
        try:
            me = acting(self.assistant, request)
            if not kept:
                raise KbError("no conversation is open", "pick the conversation to delete first")
            me.conversations.delete(kept)
            return gr.update(visible=False), sidebar(me, None), [], None, "", "", "Deleted. 已删除。"
        except Exception as exc:
            unchanged = (gr.update(),) * 5
            return gr.update(visible=False), *unchanged, problem(exc)

    def listing(self, kept: str | None, request: gr.Request) -> tuple:
        """The sidebar after an answer: the new conversation listed (named after its question), and selected."""
        try:
            me = acting(self.assistant, request)
            title = me.conversations.get(kept).title if kept else ""
            return sidebar(me, kept), title, export_link(kept)
        except Exception:
            return gr.update(), gr.update(), gr.update()

    # -- questions -------------------------------------------------------------------------------------------

    def _wire_questions(self) -> None:
        ui = self.assistant.settings.ui
        # Every question on the page joins the Assistant's one line at the model at once (it shows the place):
        # held back in Gradio's queue by ui.concurrency, page users would wait behind every API caller.
        asking = {**PRIVATE, "concurrency_limit": ui.queue_size, "concurrency_id": "ask"}
        answered = {"fn": self.listing, "inputs": self.kept, "outputs": [self.conversations, self.title, self.export]}
        outputs = [self.chatbot, self.question, self.kept]
        chat_io = {"inputs": [self.question, self.chatbot, self.kb, self.kept], "outputs": outputs}
        runs = [
            self.question.submit(self.respond, **chat_io, api_name="ask", **asking),
            self.send.click(self.respond, **chat_io, api_name="send", **asking),
            self.regenerate.click(
                self.on_regenerate,
                inputs=[self.chatbot, self.kb, self.kept],
                outputs=outputs,
                api_name="regenerate",
                **asking,
            ),
        ]
        for run in runs:
            run.then(**answered, **PRIVATE)
        # No server call of its own: the browser cancels the running answer at once, and Gradio closes its generator,
        # which gives the model's turn back; a stopped answer is not kept.
        self.stop.click(None, cancels=runs, api_name="stop", **PRIVATE)

    def respond(
        self, message: str, history: list[dict], kbs: str | list[str] | None, kept: str | None, request: gr.Request
    ) -> Iterator[tuple[list[dict], str | dict, str | None]]:
        """Answer within the visitor's kept conversation (a new one when there is none or the knowledge bases
        changed); the model gets the kept turns as history, not the page's rendering of them."""
        ui = self.assistant.settings.ui
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
        try:
            me = acting(self.assistant, request)
            conversation = continued(me, kept, picked(kbs))
            yield from self._answer(me, conversation, message, history)
        except Exception as exc:
            history[-1] = {"role": "assistant", "content": problem(exc)}
            yield history, "", kept

    def on_regenerate(
        self, history: list[dict], kbs: str | list[str] | None, kept: str | None, request: gr.Request
    ) -> Iterator[tuple[list[dict], str | dict, str | None]]:
        """Ask the last question again: its kept turn is taken out and a new answer replaces it."""
        try:
            me = acting(self.assistant, request)
            if not kept:
                raise KbError("there is no answer to regenerate yet", "ask a question first")
            conversation = me.conversations.get(kept)
            last = me.conversations.drop_last(kept)
            if last is None:
                raise KbError("there is no answer to regenerate yet", "ask a question first")
            history = [*rendered(me, conversation), {"role": "user", "content": neutralise(last.question)}]
            history.append({"role": "assistant", "content": ""})
            yield history, gr.update(), kept
            yield from self._answer(me, conversation, last.question, history)
        except Exception as exc:
            yield [*history, {"role": "assistant", "content": problem(exc)}], gr.update(), kept

    def _answer(
        self, me: Assistant, conversation: Conversation, message: str, history: list[dict]
    ) -> Iterator[tuple[list[dict], str, str]]:
        """Stream the answer into the last message; once it is kept, the chat is drawn again from the kept turns."""
        several = len(conversation.kbs) > 1
        turn = me.conversations.get(conversation.id).turns  # the index the new turn will have
        text = ""
        yield history, "", conversation.id
        for item in me.chat(message, conversation.id):
            shown = progress_text(item)
            if isinstance(item, Answer):
                shown = shown_answer(item, turn, several)
            elif shown is None:
                text += item
                shown = neutralise(text)
            if shown == history[-1]["content"]:  # a repeated waiting notice: Gradio keeps the page alive itself
                continue
            history[-1] = {"role": "assistant", "content": shown}
            yield history, "", conversation.id
        yield rendered(me, conversation), "", conversation.id

    # -- feedback --------------------------------------------------------------------------------------------

    def _wire_feedback(self) -> None:
        self.chatbot.like(
            self.on_like, inputs=self.kept, outputs=[self.rated, self.feedback_status], api_name="rate", **PRIVATE
        )
        self.send_comment.click(
            self.on_comment,
            inputs=[self.rated, self.comment],
            outputs=[self.comment, self.feedback_status],
            api_name="comment",
            **PRIVATE,
        )

    def on_like(self, kept: str | None, data: gr.LikeData, request: gr.Request) -> tuple:
        """A thumb on an answer: kept with that turn's question, answer and citations (taken from the store)."""
        turn, liked = liked_turn(data)
        try:
            if not kept:
                raise KbError("this answer was not kept", "rate an answer of a kept conversation")
            acting(self.assistant, request).feedback.rate(kept, turn, liked)
        except Exception as exc:
            return None, problem(exc)
        return ([kept, turn], THANKS) if liked is not None else (None, "")

    def on_comment(self, rated: list | None, text: str, request: gr.Request) -> tuple:
        try:
            if not rated:
                raise KbError("no answer is rated yet", "give an answer a thumb up or down first")
            acting(self.assistant, request).feedback.comment(rated[0], int(rated[1]), text or "")
        except Exception as exc:
            return gr.update(), problem(exc)
        return "", "Comment saved. 意见已保存。"
