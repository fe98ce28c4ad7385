"""`kb eval` on a tiny QA set of our own: metrics, run file in score.py's format."""

from __future__ import annotations

import json
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
