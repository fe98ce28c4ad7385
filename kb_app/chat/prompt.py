"""Where the prompt is built: templates from ``prompts/<lang>/``, numbered context, the question.

The passages are fenced by the tags ``user.txt`` and ``judge.txt`` write around the context (``<passages>`` …
``</passages>``), and the system message says fenced text is data. So that a document cannot close the fence and
speak after it, those tags are neutralised in passage text, file names and headings (a zero-width joiner after the
``<``, as the backends do for special tokens, ``kb_app.models.special_tokens``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kb_app.language import Language
from kb_app.models.base import Message
from kb_app.models.special_tokens import Neutraliser
from kb_app.retrieval.base import Hit


@dataclass(frozen=True)
class PromptTemplates:
    system: str
    user: str
    context_item: str
    page: str
    refusal: str
    condense: str
    judge: str
    question_likelihood: str
    judge_words: tuple[tuple[str, ...], tuple[str, ...]]
    quote: Neutraliser  # makes untrusted text unable to write the fence tags


def fence_tags(templates: str) -> Neutraliser:
    """Every tag the templates around the passages use, opening or closing, in any letter case, as untrusted text
    must not write."""
    names = set(re.findall(r"</?([A-Za-z][\w-]*)", templates))
    return Neutraliser([f"{start}{name}" for name in names for start in ("<", "</")], ignore_case=True)


@cache
def load_templates(prompts_dir: Path, language: Language) -> PromptTemplates:
    folder = prompts_dir / language

    def read(name: str) -> str:
        return (folder / name).read_text(encoding="utf-8").strip("\n")

    return PromptTemplates(
        system=read("system.txt"),
        user=read("user.txt"),
        context_item=read("context_item.txt"),
        quote=fence_tags("\n".join(read(name) for name in ("user.txt", "judge.txt", "context_item.txt"))),
        page=read("page.txt"),
        refusal=read("refusal.txt"),
        condense=read("condense.txt"),
        judge=read("judge.txt"),
        question_likelihood=read("question_likelihood.txt"),
        judge_words=_judge_words(read("judge_words.txt")),
    )


def _judge_words(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Line 1: spellings of "yes", line 2: of "no"; each also counts with a leading space (one more token form)."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if len(lines) != 2:
        raise ValueError("judge_words.txt must have two lines: the spellings of yes, then of no")
    yes, no = ((*words, *(f" {w}" for w in words)) for words in lines)
    return tuple(yes), tuple(no)


class PromptBuilder:
    def __init__(self, prompts_dir: Path) -> None:
        self._dir = prompts_dir

    def templates(self, language: Language) -> PromptTemplates:
        return load_templates(self._dir, language)

    def refusal(self, language: Language) -> str:
        return self.templates(language).refusal

    def condense(
        self,
        question: str,
        history: list[Message],
        language: Language,
        token_budget: int,
        count_tokens: Callable[[str], int] = len,
    ) -> list[Message]:
        """Messages asking the model for a standalone question; only the newest turns that fit the budget."""
        t = self.templates(language)
        lines: list[str] = []
        used = 0
        for message in reversed(history):
            line = f"{message['role']}: {message['content'].strip()}"
            used += count_tokens(line)
            if used > token_budget and lines:
                break
            lines.insert(0, line)
        return [{"role": "user", "content": t.condense.format(history="\n".join(lines), question=question)}]

    def judge(self, question: str, hits: list[Hit], language: Language) -> list[Message]:
        """Messages asking whether the numbered passages answer the question (yes/no).

        Same system message and context as ``build``, so a model that keeps its prompt cache reads them once.
        """
        t = self.templates(language)
        return [
            {"role": "system", "content": t.system},
            {"role": "user", "content": t.judge.format(context=self._context(t, hits), question=question)},
        ]

    def question_likelihood(self, hit: Hit, language: Language) -> list[Message]:
        """Messages after which the question is scored as the model's reply (the rerank stage's model pass)."""
        text = self.templates(language).question_likelihood.format(text=hit.chunk.text, heading=hit.chunk.heading)
        return [{"role": "user", "content": text}]

    @staticmethod
    def _context(t: PromptTemplates, hits: list[Hit]) -> str:
        return "\n\n".join(
            t.context_item.format(
                n=n,
                source=t.quote(h.chunk.source),
                page=t.page.format(page=h.chunk.page) if h.chunk.page else "",
                text=t.quote(h.chunk.text),
                heading=t.quote(h.chunk.heading),
            )
            for n, h in enumerate(hits, 1)
        )

    def build(
        self,
        question: str,
        hits: list[Hit],
        language: Language,
        token_budget: int | None = None,
        count_tokens: Callable[[str], int] = len,
    ) -> tuple[list[Message], list[Hit]]:
        """Messages for the model and the hits they number [1]..[n].

        When ``token_budget`` is given, the lowest-ranked hits are dropped until the prompt fits.
        """
        t = self.templates(language)
        kept = list(hits)
        while True:
            context = self._context(t, kept)
            messages: list[Message] = [
                {"role": "system", "content": t.system},
                {"role": "user", "content": t.user.format(context=context, question=question)},
            ]
            if token_budget is None or len(kept) <= 1:
                return messages, kept
            if sum(count_tokens(m["content"]) for m in messages) + 16 * len(messages) <= token_budget:
                return messages, kept
            kept.pop()
