"""End to end with the real default model: ingest real files, ask in Chinese and English, check citations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb_app.assistant import Assistant
from kb_app.chat.citations import strip_markers
from kb_app.chat.prompt import PromptBuilder
from kb_app.chat.refusal import ModelCheck, SimilarityCheck
from kb_app.cli import app
from kb_app.retrieval.base import Hit
from kb_app.retrieval.rerank import ModelRereadingRetriever
from kb_app.settings import Settings
from tests.conftest import shared_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    shutil.copy(shared_path("corpus", "chatchat_samples", "langchain.pdf"), folder)
    shutil.copy(shared_path("corpus", "chatchat_samples", "大模型推理优化策略.md"), folder)
    shutil.copy(shared_path("eval", "zh_docs", "1999年国家联盟分区赛.txt"), folder)
    shutil.copy(shared_path("corpus", "unstructured", "fake-html.html"), folder)
    return folder


@pytest.fixture(scope="module")
def assistant(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Assistant:
    from kb_app.settings import load_settings

    assistant = Assistant(load_settings(home=tmp_path_factory.mktemp("home")))
    report = assistant.ingest([corpus])
    assert not report.failed, report.failed
    assert len(report.by_status("added")) == 4
    return assistant


def test_chinese_question_cites_the_right_file(assistant: Assistant) -> None:
    answer = assistant.ask("1999年国家联盟分区赛是在哪一天结束的？")
    assert answer.language == "zh" and not answer.refused
    assert "10月9日" in answer.text
    assert answer.citations[0].source == "1999年国家联盟分区赛.txt"
    assert "10月9日" in answer.citations[0].text


def test_english_question_cites_the_right_file_and_page(assistant: Assistant) -> None:
    answer = assistant.ask("What main components does LangChain have?")
    assert answer.language == "en" and not answer.refused
    assert answer.text
    cited = {(c.source, c.page) for c in answer.citations}
    assert ("langchain.pdf", 3) in cited, cited
    assert any("Prompts" in c.text and "Memory" in c.text for c in answer.citations)


def test_question_outside_the_knowledge_base_is_refused(assistant: Assistant) -> None:
    answer = assistant.ask("巴西的首都是哪座城市的气候怎么样，适合种植咖啡吗？")
    assert answer.refused
    assert answer.text == "根据已知信息无法回答该问题。"
    assert answer.citations == []


def test_the_model_check_reads_the_passages(assistant: Assistant) -> None:
    """refusal.check model: the model's yes-over-no drops when the passages do not hold the answer, and the
    calibrated threshold decides on that number alone, the same whatever the model read before it."""
    question = "What main components does LangChain have?"
    prompts = PromptBuilder(assistant.settings.prompts_dir)
    relevant = assistant.search(question, k=3)
    unrelated = assistant.search("1999年国家联盟分区赛是在哪一天结束的？", k=3)
    assert relevant[0].chunk.source == "langchain.pdf" and unrelated[0].chunk.source.startswith("1999")
    measure = ModelCheck(SimilarityCheck({}), assistant.model, prompts, {})
    odds = measure.log_odds(question, relevant, "en")
    assert odds > measure.log_odds(question, unrelated, "en") + 0.25  # 0.59 measured: a small model, a small margin
    assert measure.log_odds(question, relevant, "en") == odds
    for threshold, passes in ((odds - 0.01, True), (odds + 0.01, False)):
        check = ModelCheck(SimilarityCheck({"en": 0.0}), assistant.model, prompts, {"en": threshold})
        assert check.sufficient(question, relevant, "en") is passes


class FixedOrder:
    """A base retriever with a known order, so the test sees what the model re-read changes."""

    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits

    def retrieve(self, query: str, k: int) -> list[Hit]:
        return self.hits[:k]


def test_the_model_rereads_passages_by_query_likelihood(assistant: Assistant) -> None:
    question = "What main components does LangChain have?"
    relevant = assistant.search(question, k=1)[0]
    unrelated = assistant.search("1999年国家联盟分区赛是在哪一天结束的？", k=1)[0]
    reading = PromptBuilder(assistant.settings.prompts_dir).question_likelihood
    reread = ModelRereadingRetriever(FixedOrder([unrelated, relevant]), assistant.model, reading, {"en": 2}, 0.05)
    assert [h.chunk.id for h in reread.retrieve(question, 2)] == [relevant.chunk.id, unrelated.chunk.id]
    off = ModelRereadingRetriever(FixedOrder([unrelated, relevant]), assistant.model, reading, {"zh": 2}, 0.05)
    assert off.retrieve(question, 2)[0].chunk.id == unrelated.chunk.id  # en not re-read: the order stays


def test_cli_ask_json(assistant: Assistant, corpus: Path) -> None:
    home = str(assistant.settings.home)
    result = CliRunner().invoke(app, ["--home", home, "ask", "--json", "What is LangChain?"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"answer", "citations", "conversation", "kb"}
    assert data["answer"]
    assert data["citations"] and set(data["citations"][0]) == {
        "n",
        "source",
        "page",
        "text",
        "score",
        "heading",
        "chunk_id",
        "kb",
    }
    assert data["citations"][0]["source"] == "langchain.pdf"


def test_streaming_yields_text_before_the_answer(settings: Settings, assistant: Assistant) -> None:
    items = list(assistant.stream("Which company designed LangChain's modular abstractions?"))
    pieces = [i for i in items[:-1] if isinstance(i, str)]
    assert len(pieces) > 1
    # The final text is the streamed one with checked [n] markers placed after its supported sentences.
    assert strip_markers("".join(pieces)) == strip_markers(items[-1].text)


def test_follow_up_question_is_condensed_with_its_history(assistant: Assistant) -> None:
    history = [
        {"role": "user", "content": "1999年国家联盟分区赛是什么比赛？"},
        {"role": "assistant", "content": "它是1999年国联季后赛的第一轮。"},
    ]
    pipeline = assistant.pipeline()
    standalone = pipeline.standalone("它是哪一天开打的？", history, "zh")
    assert "国家联盟" in standalone or "分区赛" in standalone, standalone
    answer = assistant.ask("它是哪一天开打的？", history=history)
    assert answer.citations and answer.citations[0].source == "1999年国家联盟分区赛.txt"
