"""`kb eval` on a tiny QA set of our own: metrics, run file in score.py's format."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from kb_app.cli import app

DOCS = {
    "bluewhale_travel": "Bluewhale travel policy\n\nEconomy class is booked for flights under six hours. "
    "Hotel rooms are reimbursed up to 180 euros a night.",
    "bluewhale_leave": "蓝鲸公司休假制度\n\n正式员工每年享有十五天带薪年假。病假需要在三天内提交医院证明。",
}
QA = [
    {
        "id": "q1",
        "question": "How much is reimbursed for a hotel room per night?",
        "answers": ["180 euros"],
        "doc_id": "bluewhale_travel",
    },
    {"id": "q2", "question": "员工每年有多少天带薪年假？", "answers": ["十五天"], "doc_id": "bluewhale_leave"},
    {"id": "q3", "question": "Who founded the Bluewhale company?", "answers": [], "doc_id": "bluewhale_travel"},
]


def test_kb_eval_retrieval_only(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / f"{name}.txt").write_text(text, encoding="utf-8")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in QA) + "\n", encoding="utf-8")
    run = tmp_path / "run.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "--home",
            str(tmp_path / "home"),
            "eval",
            str(qa),
            "--docs",
            str(docs),
            "--out",
            str(run),
            "--retrieval-only",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output[result.output.index("{") :])
    assert metrics["n"] == 3 and metrics["n_answerable"] == 2
    assert metrics["AnswerHit@1"] == 1.0
    assert metrics["DocRecall@1"] == 1.0
    rows = [json.loads(line) for line in run.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    assert rows[0]["retrieved"][0]["doc_id"] == "bluewhale_travel"
    assert "180 euros" in rows[0]["retrieved"][0]["text"]
    assert set(rows[0]) >= {"id", "retrieved", "answer"}


def _qa_and_docs(tmp_path: Path) -> tuple[Path, Path]:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in {**DOCS, **MORE_DOCS}.items():
        (docs / f"{name}.txt").write_text(text, encoding="utf-8")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in QA[:2]) + "\n", encoding="utf-8")
    return qa, docs


MORE_DOCS = {
    "bluewhale_meals": "Bluewhale meal allowance\n\nLunch on a business trip is reimbursed up to 25 euros a day.",
    "bluewhale_office": "蓝鲸公司办公室\n\n办公室周一到周五开放，周五下午六点关门。",
}


def test_kb_eval_exclude_gold_asks_every_question_without_its_document(tmp_path: Path) -> None:
    """One knowledge base of all documents; each question's retrieval leaves its own gold document out."""
    qa, docs = _qa_and_docs(tmp_path)
    run = tmp_path / "run.jsonl"
    args = ["--home", str(tmp_path / "home"), "eval", str(qa), "--docs", str(docs), "--retrieval-only", "--json"]
    no_reread = {"KB_RERANK__MODEL_PASSAGES": "{}"}  # retrieval alone: the chat model is not loaded
    result = CliRunner().invoke(app, [*args, "--exclude-gold", "--out", str(run)], env=no_reread)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output[result.output.index("{") :])
    assert (metrics["n"], metrics["n_answerable"], metrics["n_unanswerable"]) == (2, 0, 2)
    assert metrics["DocRecall@10"] == 0.0 and "evidence_abstention" in metrics
    rows = {r["id"]: r for r in map(json.loads, run.read_text(encoding="utf-8").splitlines())}
    gold = {row["id"]: row["doc_id"] for row in QA[:2]}
    for qid, row in rows.items():
        found = {hit["doc_id"] for hit in row["retrieved"]}
        assert found == (set(DOCS) | set(MORE_DOCS)) - {gold[qid]}  # every other document is still in reach
    assert not any("180 euros" in hit["text"] for hit in rows["q1"]["retrieved"])

    plain = CliRunner().invoke(app, args, env=no_reread)  # the same knowledge base without it: the gold first
    assert json.loads(plain.output[plain.output.index("{") :])["DocRecall@1"] == 1.0


class EchoModel:
    """Answers with the prompt it was given: the answer shows which passages the pipeline read."""

    name = "echo"
    context_length = 4096
    scores_replies = False
    reads_first_token_logprobs = False

    def stream(self, messages, max_tokens, temperature):
        yield messages[-1]["content"]

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1


def test_exclude_gold_answers_from_the_same_exclusion_and_scores_abstention(tmp_path: Path) -> None:
    from kb_app.assistant import Assistant
    from kb_app.evaluation import evaluate
    from kb_app.settings import load_settings

    qa, docs = _qa_and_docs(tmp_path)
    settings = load_settings(
        home=tmp_path / "home", **{"refusal.check": "similarity", "refusal.min_dense_score": {"zh": -1, "en": -1}}
    )
    assistant = Assistant(settings, model=EchoModel())
    result = evaluate(assistant, qa, docs, "negatives", generate=2, show_progress=False, exclude_gold=True)
    answers = {r.id: r.answer or "" for r in result.rows}
    assert "180 euros" not in answers["q1"] and "25 euros" in answers["q1"]  # read another document
    assert "十五天" not in answers["q2"]
    assert result.metrics["abstention_rate"] == 0.0  # the echo never refuses: a wrong system scores 0
    assert "Contains" not in result.metrics and result.name == "qa without gold"

    plain = evaluate(assistant, qa, docs, "negatives", generate=2, show_progress=False, ingest=False)
    assert "180 euros" in {r.id: r.answer for r in plain.rows}["q1"] and plain.metrics["Contains"] == 1.0


def test_exclude_gold_refuses_a_doc_id_that_names_no_file(tmp_path: Path) -> None:
    qa, docs = _qa_and_docs(tmp_path)
    qa.write_text(json.dumps({**QA[0], "doc_id": "no_such_doc"}) + "\n", encoding="utf-8")
    args = ["--home", str(tmp_path / "home"), "eval", str(qa), "--docs", str(docs), "--retrieval-only"]
    result = CliRunner().invoke(app, [*args, "--exclude-gold"])
    assert result.exit_code != 0 and "no_such_doc" in str(result.exception)


class PausingModel(EchoModel):
    """Waits before its first piece and again before its last, so the two costs differ by a known pause."""

    def stream(self, messages, max_tokens, temperature):
        time.sleep(0.2)
        yield "The fee is"
        time.sleep(0.3)
        yield " 180 euros."


def test_each_generated_answer_keeps_its_cost(tmp_path: Path) -> None:
    """Seconds to the first piece of text and to the whole answer, per question and as medians."""
    from kb_app.assistant import Assistant
    from kb_app.evaluation import evaluate
    from kb_app.settings import load_settings

    qa, docs = _qa_and_docs(tmp_path)
    settings = load_settings(
        home=tmp_path / "home", **{"refusal.check": "similarity", "refusal.min_dense_score": {"zh": -1, "en": -1}}
    )
    result = evaluate(Assistant(settings, model=PausingModel()), qa, docs, "costs", generate=1, show_progress=False)
    timed, untimed = result.rows[0], result.rows[1:]
    assert timed.first_token_seconds is not None and timed.answer_seconds is not None
    assert 0.2 <= timed.first_token_seconds < timed.answer_seconds - 0.25
    assert all(r.answer_seconds is None and r.first_token_seconds is None for r in untimed)
    assert result.metrics["first_token_s_p50"] == timed.first_token_seconds
    assert result.metrics["answer_s_p50"] == timed.answer_seconds
