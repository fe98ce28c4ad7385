"""The question-answering pipeline: retrieve evidence, refuse if it is weak, else prompt the model and cite."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from kb_app.chat.language import Language, detect_language
from kb_app.chat.prompt import PromptBuilder
from kb_app.models.base import ChatModel
from kb_app.retrieval.base import Hit, Retriever
from kb_app.settings import LlmSettings, RetrievalSettings

_CITATION = re.compile(r"\[(\d{1,2})\]")


@dataclass(frozen=True)
class Citation:
    """A source a person can check: the file, its page, the passage itself, and how well it matched."""

    n: int
    source: str
    page: int | None
    text: str
    score: float

    @classmethod
    def from_hit(cls, n: int, hit: Hit) -> Citation:
        score = hit.dense_score if hit.dense_score is not None else hit.score
        return cls(n=n, source=hit.chunk.source, page=hit.chunk.page, text=hit.chunk.text, score=round(score, 4))


@dataclass
class Answer:
    text: str
    language: Language
    citations: list[Citation] = field(default_factory=list)
    refused: bool = False

    def to_dict(self) -> dict:
        return {"answer": self.text, "citations": [asdict(c) for c in self.citations]}


def cited_numbers(text: str, available: int) -> list[int]:
    """The [n] markers in ``text`` that point at a real passage, in order of first use."""
    seen: list[int] = []
    for match in _CITATION.finditer(text):
        n = int(match.group(1))
        if 1 <= n <= available and n not in seen:
            seen.append(n)
    return seen


class ChatPipeline:
    """``stream`` yields answer text as it is generated and finally the complete ``Answer``."""

    def __init__(
        self,
        retriever: Retriever,
        model: Callable[[], ChatModel],
        prompts: PromptBuilder,
        retrieval: RetrievalSettings,
        llm: LlmSettings,
    ) -> None:
        self._retriever = retriever
        self._model = model
        self._prompts = prompts
        self._retrieval = retrieval
        self._llm = llm

    def has_evidence(self, hits: list[Hit]) -> bool:
        scores = [h.dense_score for h in hits if h.dense_score is not None]
        return bool(scores) and max(scores) >= self._retrieval.min_dense_score

    def stream(self, question: str) -> Iterator[str | Answer]:
        language = detect_language(question)
        hits = self._retriever.retrieve(question, self._retrieval.top_k)
        if not self.has_evidence(hits):
            refusal = self._prompts.refusal(language)
            yield refusal
            yield Answer(text=refusal, language=language, refused=True)
            return
        model = self._model()
        messages, used = self._prompts.build(
            question,
            hits,
            language,
            token_budget=model.context_length - self._llm.max_tokens,
            count_tokens=model.count_tokens,
        )
        pieces: list[str] = []
        for piece in model.stream(messages, self._llm.max_tokens, self._llm.temperature):
            pieces.append(piece)
            yield piece
        text = "".join(pieces).strip()
        numbers = cited_numbers(text, len(used)) or list(range(1, len(used) + 1))
        yield Answer(
            text=text,
            language=language,
            citations=[Citation.from_hit(n, used[n - 1]) for n in numbers],
        )

    def ask(self, question: str) -> Answer:
        for item in self.stream(question):
            if isinstance(item, Answer):
                return item
        raise RuntimeError("the pipeline ended without an answer")
