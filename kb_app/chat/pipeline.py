"""The question-answering pipeline: retrieve evidence, refuse if it is weak, else prompt the model and cite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from kb_app.chat.citations import annotate
from kb_app.chat.prompt import PromptBuilder
from kb_app.chat.refusal import EvidenceCheck
from kb_app.chat.trim import PassageTrimmer, WholePassages
from kb_app.language import Language, detect_language
from kb_app.models.base import ChatModel, Message
from kb_app.retrieval.base import Hit, Retriever
from kb_app.settings import ChatSettings, LlmSettings, RetrievalSettings


@dataclass(frozen=True)
class Citation:
    """A source a person can check: the file, its page, the passage itself, and how well it matched."""

    n: int
    source: str
    page: int | None
    text: str
    score: float
    heading: str = ""
    chunk_id: str = ""  # the stored chunk, so a viewer can find it again (empty in turns kept by an older kb)
    kb: str = ""  # the knowledge base it came from

    @classmethod
    def from_hit(cls, n: int, hit: Hit) -> Citation:
        score = hit.dense_score if hit.dense_score is not None else hit.score
        c = hit.chunk
        return cls(
            n=n,
            source=c.source,
            page=c.page,
            text=c.text,
            score=round(score, 4),
            heading=c.heading,
            chunk_id=c.id,
            kb=hit.kb,
        )


@dataclass
class Answer:
    text: str
    language: Language
    citations: list[Citation] = field(default_factory=list)
    refused: bool = False
    uncited: list[Citation] = field(default_factory=list)  # passages the model read that no sentence relies on

    def to_dict(self) -> dict:
        return {"answer": self.text, "citations": [asdict(c) for c in self.citations]}


class ChatPipeline:
    """``stream`` yields answer text as it is generated and finally the complete ``Answer``."""

    def __init__(
        self,
        retriever: Retriever,
        model: Callable[[], ChatModel],
        prompts: PromptBuilder,
        evidence: EvidenceCheck,
        retrieval: RetrievalSettings,
        llm: LlmSettings,
        chat: ChatSettings | None = None,
        trimmer: PassageTrimmer | None = None,
    ) -> None:
        self._retriever = retriever
        self._model = model
        self._prompts = prompts
        self._evidence = evidence
        self._retrieval = retrieval
        self._llm = llm
        self._chat = chat or ChatSettings()
        self._trimmer = trimmer or WholePassages()

    def standalone(self, question: str, history: list[Message], language: Language) -> str:
        """The follow-up rewritten by the model into a question that stands alone; the question if no history.

        A small model sometimes rambles: an empty or overlong rewrite falls back to the previous question
        joined with this one, which still carries the subject into retrieval.
        """
        if not history:
            return question
        model = self._model()
        messages = self._prompts.condense(
            question, history, language, self._chat.history_tokens, count_tokens=model.count_tokens
        )
        rewritten = "".join(model.stream(messages, self._chat.condense_max_tokens, 0.0)).strip()
        rewritten = rewritten.splitlines()[0].strip() if rewritten else ""
        if rewritten and len(rewritten) <= 3 * len(question) + 80:
            return rewritten
        previous = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
        return f"{previous} {question}".strip()

    def stream(self, question: str, history: list[Message] | None = None) -> Iterator[str | Answer]:
        language = detect_language(question)
        question = self.standalone(question, history or [], language)
        hits = self._retriever.retrieve(question, self._retrieval.top_k)
        model = self._model()
        messages, read = self._prompts.build(
            question,
            self._trimmer.trim(question, hits, language),
            language,
            token_budget=model.context_length - self._llm.max_tokens,
            count_tokens=model.count_tokens,
        )
        used = hits[: len(read)]  # the stored passages the numbers name: a citation shows all of one
        if not self._evidence.sufficient(question, read, language):
            refusal = self._prompts.refusal(language)
            yield refusal
            uncited = [Citation.from_hit(n, hit) for n, hit in enumerate(used, 1)]
            yield Answer(text=refusal, language=language, refused=True, uncited=uncited)
            return
        pieces: list[str] = []
        for piece in model.stream(messages, self._llm.max_tokens, self._llm.temperature):
            pieces.append(piece)
            yield piece
        text, numbers = annotate("".join(pieces).strip(), read, language, self._retrieval.citation_min_support)
        yield Answer(
            text=text,
            language=language,
            citations=[Citation.from_hit(n, used[n - 1]) for n in numbers],
            uncited=[Citation.from_hit(n, hit) for n, hit in enumerate(used, 1) if n not in numbers],
        )

    def ask(self, question: str, history: list[Message] | None = None) -> Answer:
        for item in self.stream(question, history):
            if isinstance(item, Answer):
                return item
        raise RuntimeError("the pipeline ended without an answer")
