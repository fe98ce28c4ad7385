"""The chat screen: questions streamed into a kept conversation, the sources under each answer.

A reload reopens the visitor's last conversation; "New conversation" starts another. The model gets the kept turns
as history, never the page's rendering of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from kb_app.assistant import Assistant
from kb_app.chat.conversations import Conversation
from kb_app.chat.pipeline import Answer, Citation
from kb_app.chat.turns import Waiting
from kb_app.errors import ConversationNotFoundError, LimitExceededError
from kb_app.language import detect_language
from kb_app.ui.common import PRIVATE, acting, escape_markdown, knowledge_bases, neutralise, problem

SOURCES_RULE = "\n\n---\n"  # separates an answer from its sources in the chat
WAITING = "⏳ {n} question(s) ahead of yours; the answer starts when the model is free. 前面还有 {n} 个问题，请稍候。"


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


class ChatScreen:
    """The chat tab, built inside the page's ``gr.Tabs``."""

    def __init__(self, assistant: Assistant) -> None:
        self.assistant = assistant
        ui = assistant.settings.ui
        with gr.Tab("Chat 问答", elem_id="chat-tab") as tab:
            self.kb = gr.Dropdown(
                choices=[], value=None, label="Knowledge base 知识库", elem_id="kb-picker", allow_custom_value=True
            )
            self.chatbot = gr.Chatbot(
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
            self.kept = gr.State(None)  # the kept conversation this tab continues

        tab.select(self.on_show, inputs=self.kb, outputs=self.kb, api_name="chat_tab", **PRIVATE)
        new_chat.click(lambda: ([], None), outputs=[self.chatbot, self.kept], api_name="new_conversation", **PRIVATE)
        # Every question on the page joins the Assistant's one line at the model at once (it shows the place):
        # held back in Gradio's queue by ui.concurrency, page users would wait behind every API caller.
        asking = {**PRIVATE, "concurrency_limit": ui.queue_size, "concurrency_id": "ask"}
        chat_io = {"inputs": [question, self.chatbot, self.kb, self.kept], "outputs": [self.chatbot, question, self.kept]}
        question.submit(self.respond, **chat_io, api_name="ask", **asking)
        send.click(self.respond, **chat_io, api_name="send", **asking)

    @property
    def outputs(self) -> list:
        return [self.kb, self.chatbot, self.kept]

    def hidden(self) -> tuple:
        return gr.update(choices=[], value=None), [], None

    def view(self, me: Assistant) -> tuple:
        choices, selected = knowledge_bases(me)
        kept, chat = reopened(me)
        if kept is not None and kept.kb in choices:
            selected = kept.kb
        return gr.update(choices=choices, value=selected), chat, kept.id if kept is not None else None

    def on_show(self, kb: str | None, request: gr.Request) -> dict:
        """Coming back to the tab: the knowledge bases created (or granted) meanwhile are offered too."""
        try:
            choices, selected = knowledge_bases(acting(self.assistant, request))
        except Exception:
            return gr.update()
        return gr.update(choices=choices, value=kb if kb in choices else selected)

    def respond(
        self, message: str, history: list[dict], kb: str, kept: str | None, request: gr.Request
    ) -> Iterator[tuple[list[dict], str | dict, str | None]]:
        """Answer within the visitor's kept conversation (a new one when there is none or the knowledge base
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
        text = ""
        try:
            me = acting(self.assistant, request)
            if kept is None or me.conversations.get(kept).kb != kb:
                kept = me.conversations.start(kb or me.settings.kb).id
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
