"""Passages cut to the sentences that bear on the question (kb_app/chat/trim.py): what is read, what is cited."""

from __future__ import annotations

from collections.abc import Iterator

from ingest.vector_store import StoredChunk
from kb_app.chat.citations import ngrams
from kb_app.chat.pipeline import ChatPipeline
from kb_app.chat.prompt import PromptBuilder
from kb_app.chat.refusal import SimilarityCheck
from kb_app.chat.trim import ELLIPSIS, SentenceTrimmer, WholePassages, best_span, build_trimmer
from kb_app.models.base import Message
from kb_app.retrieval.base import Hit
from kb_app.settings import RetrievalSettings, Settings

FILLER_ZH = "这一段讲的是公司食堂的菜单安排。每周一供应面条。周二供应米饭和炒菜。"
ANSWER_ZH = "员工的年假为十五天，由部门经理审批。"
FILLER_EN = "The cafeteria serves noodles on Mondays. Rice is served on Tuesdays. Fruit comes on Fridays."
ANSWER_EN = "Employees get fifteen days of annual leave, approved by their manager."


def _hit(text: str, n: int = 0) -> Hit:
    return Hit(StoredChunk(f"id{n}", text, f"doc{n}.txt", None, 0, len(text), ""), score=1.0, dense_score=0.95)


def test_the_span_sharing_most_with_the_question_is_kept() -> None:
    text = FILLER_ZH + ANSWER_ZH + FILLER_ZH
    span = best_span(text, ngrams("员工的年假有几天？", "zh"), "zh", len(ANSWER_ZH) + 5)
    assert span == ELLIPSIS + ANSWER_ZH + ELLIPSIS
    english = f"{FILLER_EN} {ANSWER_EN} {FILLER_EN}"
    span = best_span(english, ngrams("How many days of annual leave do employees get?", "en"), "en", 120)
    assert ANSWER_EN in span and span.startswith(ELLIPSIS) and len(span) <= 120 + 2 * len(ELLIPSIS)


def test_a_short_passage_and_an_overlong_sentence() -> None:
    assert best_span(ANSWER_ZH, {"年假"}, "zh", 100) == ANSWER_ZH
    long_sentence = "年假" * 100 + "。"
    assert best_span(long_sentence, {"年假"}, "zh", 50) == long_sentence[:50] + ELLIPSIS


def test_the_top_passages_stay_whole_and_the_order_is_kept() -> None:
    long = FILLER_ZH * 3 + ANSWER_ZH
    hits = [_hit(long, 0), _hit(long, 1), _hit(FILLER_ZH, 2)]
    trimmed = SentenceTrimmer({"zh": 40}, keep_whole=1).trim("年假几天", hits, "zh")
    assert [h.chunk.id for h in trimmed] == ["id0", "id1", "id2"]
    assert trimmed[0].chunk.text == long and trimmed[2].chunk.text == FILLER_ZH  # short enough already
    assert ANSWER_ZH in trimmed[1].chunk.text and len(trimmed[1].chunk.text) < len(long)
    assert SentenceTrimmer({"zh": 40}, keep_whole=1).trim("question", hits, "en") == hits  # en not configured


def test_the_setting_chooses_the_trimmer() -> None:
    assert isinstance(build_trimmer(RetrievalSettings()), SentenceTrimmer)  # default cuts zh passages
    assert RetrievalSettings().passage_chars == {"zh": 200}
    assert isinstance(build_trimmer(RetrievalSettings(passage_chars={})), WholePassages)


class _Retriever:
    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits

    def retrieve(self, query: str, k: int) -> list[Hit]:
        return self.hits[:k]


class _Model:
    """Answers with the answer sentence, and keeps the prompt it was given."""

    context_length = 4096

    def __init__(self) -> None:
        self.prompts: list[list[Message]] = []

    def count_tokens(self, text: str) -> int:
        return len(text)

    def stream(self, messages: list[Message], max_tokens: int, temperature: float) -> Iterator[str]:
        self.prompts.append(messages)
        yield ANSWER_ZH


def test_the_model_reads_the_cut_passage_and_the_citation_shows_it_whole(settings: Settings) -> None:
    long = FILLER_ZH * 4 + ANSWER_ZH
    hits = [_hit(FILLER_ZH * 4, 0), _hit(long, 1)]
    model = _Model()
    pipeline = ChatPipeline(
        retriever=_Retriever(hits),
        model=lambda: model,
        prompts=PromptBuilder(settings.prompts_dir),
        evidence=SimilarityCheck({"zh": 0.5}),
        retrieval=RetrievalSettings(top_k=2),
        llm=settings.llm,
        trimmer=SentenceTrimmer({"zh": 60}, keep_whole=1),
    )
    answer = pipeline.ask("员工的年假有几天？")
    prompt = model.prompts[0][1]["content"]
    assert FILLER_ZH * 4 in prompt  # the first passage whole
    assert long not in prompt and ANSWER_ZH in prompt  # the second cut around the answer
    cited = {c.n: c.text for c in answer.citations}
    assert cited == {2: long}, answer  # the answer is aligned to the second passage, and cites all of it
