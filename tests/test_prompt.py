"""Language detection, prompt selection by language, and context trimming to the token budget."""

from __future__ import annotations

import pytest

from ingest.vector_store import StoredChunk
from kb_app.chat.citations import annotate, split_sentences, strip_markers
from kb_app.chat.prompt import PromptBuilder
from kb_app.language import detect_language
from kb_app.retrieval.base import Hit
from kb_app.settings import Settings


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("公司的年假有几天？", "zh"),
        ("How many vacation days do we get?", "en"),
        ("GPU 的显存需要多少？", "zh"),
        ("What does 数据 mean in the report?", "zh"),
        ("Is the RAG pipeline ready?", "en"),
        ("請問報銷流程是什麼？", "zh"),
    ],
)
def test_detect_language(text: str, language: str) -> None:
    assert detect_language(text) == language


def _hit(n: int, text: str, page: int | None = None) -> Hit:
    return Hit(StoredChunk(f"id{n}", text, f"doc{n}.pdf", page, 0, len(text), 0.9), score=1.0 / n, dense_score=0.9)


def test_prompt_follows_question_language(settings: Settings) -> None:
    builder = PromptBuilder(settings.prompts_dir)
    zh_messages, _ = builder.build("年假有几天？", [_hit(1, "员工每年有十五天年假。", page=3)], "zh")
    en_messages, _ = builder.build("How many days?", [_hit(1, "Employees get 15 days.", page=3)], "en")
    zh_template = (settings.prompts_dir / "zh" / "system.txt").read_text(encoding="utf-8").strip()
    en_template = (settings.prompts_dir / "en" / "system.txt").read_text(encoding="utf-8").strip()
    assert zh_messages[0] == {"role": "system", "content": zh_template}
    assert en_messages[0] == {"role": "system", "content": en_template}
    assert "[1] doc1.pdf（第 3 页）" in zh_messages[1]["content"]
    assert "年假有几天？" in zh_messages[1]["content"]
    assert "[1] doc1.pdf (page 3)" in en_messages[1]["content"]
    assert builder.refusal("zh") == "根据已知信息无法回答该问题。"


def test_context_is_numbered_in_rank_order_and_trimmed_from_the_bottom(settings: Settings) -> None:
    builder = PromptBuilder(settings.prompts_dir)
    hits = [_hit(n, f"passage number {n} " * 30) for n in range(1, 6)]
    messages, kept = builder.build("question?", hits, "en")
    assert len(kept) == 5
    content = messages[1]["content"]
    assert content.index("[1] doc1.pdf") < content.index("[2] doc2.pdf") < content.index("[5] doc5.pdf")
    full = sum(len(m["content"]) for m in messages)
    _, kept = builder.build("question?", hits, "en", token_budget=full - 100, count_tokens=len)
    assert [h.chunk.id for h in kept] == ["id1", "id2", "id3", "id4"]
    _, kept = builder.build("question?", hits, "en", token_budget=10, count_tokens=len)
    assert [h.chunk.id for h in kept] == ["id1"]


def test_citations_are_aligned_to_supporting_passages() -> None:
    hits = [
        _hit(1, "1999年国家联盟分区赛于10月5日开打，结束于10月9日。"),
        _hit(2, "Employees receive fifteen days of paid leave every year."),
        _hit(3, "The office closes at six in the evening on Fridays."),
    ]
    # The model marked the wrong passage: the marker is dropped and the supporting passage cited instead.
    assert annotate("分区赛结束于10月9日 [3]。", hits, "zh", 0.3)[1] == [1]
    # Two sentences, each supported by its own passage; unmarked support is found too.
    assert annotate(
        "Employees get fifteen days of paid leave [2]. The office closes at six on Fridays.", hits, "en", 0.3
    )[1] == [2, 3]
    # Nothing supports the answer: it cites the top passage it was built from.
    assert annotate("Bananas are yellow.", hits, "en", 0.3)[1] == [1]
    assert split_sentences("第一句。第二句！Third one. Fourth?") == ["第一句。", "第二句！", "Third one.", "Fourth?"]


def test_the_final_answer_carries_checked_markers_after_each_supported_sentence() -> None:
    hits = [
        _hit(1, "Employees receive fifteen days of paid leave every year."),
        _hit(2, "The office closes at six in the evening on Fridays."),
    ]
    text, cited = annotate(
        "The office closes at six on Fridays [1].\nStaff get fifteen days of paid leave.", hits, "en", 0.3
    )
    assert text == "The office closes at six on Fridays [2].\nStaff get fifteen days of paid leave [1]."
    assert cited == [2, 1]
    assert strip_markers(text) == "The office closes at six on Fridays.\nStaff get fifteen days of paid leave."
    zh_hits = [_hit(1, "蓝鲸公司的总部设在杭州，员工约三千人。")]
    assert annotate("总部设在杭州。", zh_hits, "zh", 0.3) == ("总部设在杭州 [1]。", [1])
    assert annotate("香蕉是黄色的。", zh_hits, "zh", 0.3) == ("香蕉是黄色的。", [1])
