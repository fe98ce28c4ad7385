"""Retrieval parts that need no model: the lexical tokenizer and index, and the blend rerank stage."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ingest.lexical_store import Bm25Store, tokenize
from ingest.vector_store import StoredChunk
from kb_app.retrieval.base import Hit
from kb_app.retrieval.rerank import BlendReranker, RerankingRetriever
from kb_app.settings import RerankSettings

PASSAGES = {
    "a": "The company was founded in Oslo by two engineers.",
    "b": "Its headquarters moved to Bergen after the merger.",
    "c": "Annual revenue grew because the founders opened new offices.",
    "d": "蓝鲸公司的总部设在杭州，员工约三千人。",
}


def _hit(cid: str, score: float, cosine: float | None) -> Hit:
    chunk = StoredChunk(id=cid, text=PASSAGES[cid], source=f"{cid}.txt", page=None, start=0, end=1, score=score)
    return Hit(chunk, score, dense_score=cosine)


@pytest.fixture
def lexical(tmp_path: Path) -> Bm25Store:
    store = Bm25Store(tmp_path / "lexical")
    store.update(add=list(PASSAGES.items()))
    return store


def test_english_tokens_drop_stop_words_and_share_stems() -> None:
    assert tokenize("Who founded the company?") == ["found", "compani"]
    assert set(tokenize("the founding of companies")) == {"found", "compani"}


def test_traditional_chinese_is_tokenized_as_simplified_so_either_script_finds_the_other() -> None:
    assert {"总部", "杭州"} <= set(tokenize("总部设在杭州。"))
    assert tokenize("總部設在杭州。臺灣") == tokenize("总部设在杭州。台湾")


def test_idf_and_tokens_follow_adds_replacements_and_removals(lexical: Bm25Store) -> None:
    idf = lexical.idf(["found", "bergen", "missing"])
    assert idf["bergen"] == idf["found"] > 0  # each in one of four chunks ("founders" stems to "founder")
    assert idf["missing"] == 0.0
    lexical.update(add=[("e", "Bergen is rainy.")])
    assert lexical.idf(["bergen"])["bergen"] < idf["bergen"]
    lexical.update(add=[("e", "Oslo is dry.")])  # the same id again: replaces, never counts twice
    assert lexical.idf(["bergen"])["bergen"] == pytest.approx(idf["bergen"] * 0 + lexical.idf(["found"])["found"])
    lexical.update(remove=["b", "e"])
    assert lexical.idf(["bergen"])["bergen"] == 0.0
    assert lexical.tokens(["a", "b"]) == {"a": tokenize(PASSAGES["a"])}


def test_tokens_of_an_older_tokenizer_are_dropped_on_open(tmp_path: Path, lexical: Bm25Store) -> None:
    directory = tmp_path / "lexical"
    db = sqlite3.connect(str(directory / "tokens.sqlite"))
    db.execute("UPDATE meta SET value = 'old' WHERE key = 'tokenizer'")
    db.commit()
    db.close()
    assert len(Bm25Store(directory)) == 0  # KnowledgeBase.repair_lexical re-indexes from the vector store
    assert len(Bm25Store(directory)) == 0


def test_blend_lifts_the_passage_holding_the_questions_rare_terms(lexical: Bm25Store) -> None:
    reranker = BlendReranker(lexical, RerankSettings(lexical_weight={"en": 2.0}, dense_weight={"en": 0.0}))
    hits = [_hit("b", 0.03, 0.80), _hit("c", 0.02, 0.80), _hit("a", 0.01, 0.80)]
    reranked = reranker.rerank("Where was the company founded?", hits)
    assert [h.chunk.id for h in reranked] == ["a", "b", "c"]
    assert reranked[0].score > reranked[1].score


def test_blend_weighs_the_cosine_per_question_language(lexical: Bm25Store) -> None:
    hits = [_hit("a", 0.03, 0.70), _hit("b", 0.02, 0.80), _hit("c", 0.01, 0.75)]
    by_cosine = BlendReranker(lexical, RerankSettings(lexical_weight={"en": 0.0}, dense_weight={"en": 5.0}))
    assert [h.chunk.id for h in by_cosine.rerank("unrelated words", hits)] == ["b", "c", "a"]
    zh_only = BlendReranker(lexical, RerankSettings(lexical_weight={"en": 0.0}, dense_weight={"zh": 5.0, "en": 0.0}))
    assert [h.chunk.id for h in zh_only.rerank("unrelated words", hits)] == ["a", "b", "c"]


def test_reranking_retriever_runs_only_for_its_languages(lexical: Bm25Store) -> None:
    class Fixed:
        def retrieve(self, query: str, k: int) -> list[Hit]:
            return [_hit("b", 0.03, 0.8), _hit("a", 0.02, 0.8), _hit("d", 0.01, 0.8)][:k]

    reranker = BlendReranker(lexical, RerankSettings(dense_weight={"en": 0.0, "zh": 0.0}))
    zh_only = RerankingRetriever(Fixed(), reranker, fetch_k=3, languages=["zh"])
    assert [h.chunk.id for h in zh_only.retrieve("Who founded the company?", 1)] == ["b"]
    assert [h.chunk.id for h in zh_only.retrieve("蓝鲸公司的总部在哪里？", 1)] == ["d"]
    both = RerankingRetriever(Fixed(), reranker, fetch_k=3, languages=["zh", "en"])
    assert [h.chunk.id for h in both.retrieve("Who founded the company?", 1)] == ["a"]
