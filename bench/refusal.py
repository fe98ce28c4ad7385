"""Refusal calibration: the similarity and model checks on answerable and unanswerable dev questions.

For every question of ../shared/eval/{zh_dev,en_dev,en_dev_unanswerable}.jsonl this retrieves the passages the
answer would be given (``retrieval.top_k``), takes their best cosine (``refusal.min_dense_score``) and asks the
model whether they contain the answer (log P(yes) − log P(no), ``refusal.min_log_odds``). It prints, per
language, how often the configured checks would refuse answerable questions (false refusal) and unanswerable
ones (abstention), a sweep of ``min_log_odds``, and the value that abstains most while falsely refusing at most
``--max-false-refusal`` of answerable questions. Exits 1 when the configured thresholds miss the issue's
targets (false refusal ≤ 10%, abstention ≥ 80%).

    .venv/bin/python bench/refusal.py            # about 1.5 s a question on 2 cores
    .venv/bin/python bench/refusal.py --limit 50
    .venv/bin/python bench/refusal.py --sets en_dev,en_dev_unanswerable   # zh takes 5 s a question

Recalibrate after changing the model, the embedder or the judge prompts (prompts/*/judge.txt).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval import RESULTS, SETS, kb_name  # noqa: E402
from kb_app.assistant import Assistant  # noqa: E402
from kb_app.chat.prompt import PromptBuilder  # noqa: E402
from kb_app.chat.refusal import ModelCheck, SimilarityCheck  # noqa: E402
from kb_app.evaluation import ensure_ingested, read_qa  # noqa: E402
from kb_app.settings import load_settings  # noqa: E402

TARGET_FALSE_REFUSAL = 0.10
TARGET_ABSTENTION = 0.80


def measure(assistant: Assistant, set_name: str, limit: int | None) -> list[dict]:
    """Per question: the best cosine and the model's yes-over-no log-odds on the answer's passages."""
    spec = SETS[set_name]
    kb = kb_name(assistant.settings, spec.language)
    ensure_ingested(assistant, spec.docs, kb)
    prompts = PromptBuilder(assistant.settings.prompts_dir)
    judge = ModelCheck(SimilarityCheck({}), assistant.model, prompts, {})
    retriever = assistant.retriever(kb)
    model = assistant.model()
    top_k = assistant.settings.retrieval.top_k
    budget = model.context_length - assistant.settings.llm.max_tokens
    out = []
    for row in tqdm(read_qa(spec.qa)[:limit], desc=set_name, unit="q"):
        hits = retriever.retrieve(row.question, top_k)
        _, used = prompts.build(row.question, hits, spec.language, budget, model.count_tokens)  # type: ignore[arg-type]
        scores = [h.dense_score for h in used if h.dense_score is not None]
        out.append(
            {
                "id": row.id,
                "answerable": row.answerable,
                "cos": max(scores) if scores else None,
                "log_odds": judge.log_odds(row.question, used, spec.language),  # type: ignore[arg-type]
            }
        )
    return out


def refused(row: dict, min_cos: float, min_log_odds: float | None) -> bool:
    weak = row["cos"] is not None and row["cos"] < min_cos
    return weak or (min_log_odds is not None and row["log_odds"] < min_log_odds)


def rate(rows: list[dict], min_cos: float, min_log_odds: float | None) -> float:
    return sum(refused(r, min_cos, min_log_odds) for r in rows) / len(rows) if rows else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="questions per set (default: all)")
    parser.add_argument("--max-false-refusal", type=float, default=0.08, help="budget for the recommendation")
    parser.add_argument("--sets", default=",".join(SETS), help=f"eval sets (comma-separated) of {list(SETS)}")
    parser.add_argument("--home", type=Path, default=RESULTS / "kb_home", help="KB_HOME for the eval KBs")
    args = parser.parse_args(argv)

    settings = load_settings(home=args.home)
    assistant = Assistant(settings)
    rows = {name: measure(assistant, name, args.limit) for name in args.sets.split(",") if name}
    (RESULTS / "refusal.json").write_text(json.dumps(rows, indent=1))

    refusal = settings.refusal
    by_language: dict[str, dict[str, list[dict]]] = {}
    for name, measured in rows.items():
        kind = "answerable" if all(r["answerable"] for r in measured) else "unanswerable"
        by_language.setdefault(SETS[name].language, {}).setdefault(kind, []).extend(measured)

    missed = 0
    print(f"\ncheck: {refusal.check}; min_dense_score {refusal.min_dense_score}; min_log_odds {refusal.min_log_odds}")
    print("| language | min_log_odds | false refusal | abstention |\n|---|---|---|---|")
    for language, groups in by_language.items():
        answerable, unanswerable = groups.get("answerable", []), groups.get("unanswerable", [])
        min_cos = refusal.min_dense_score.get(language, 0.0)
        configured = refusal.min_log_odds.get(language) if refusal.check == "model" else None
        sweep = sorted({round(x / 10, 1) for x in range(-40, 1, 2)} | {configured} - {None})
        for t in [None, *sweep]:
            mark = " (configured)" if t == configured else ""
            shown = "similarity only" if t is None else f"{t:.1f}"
            print(
                f"| {language} | {shown}{mark} | {rate(answerable, min_cos, t):.3f} | "
                f"{rate(unanswerable, min_cos, t):.3f} |"
            )
        within = [t for t in sweep if rate(answerable, min_cos, t) <= args.max_false_refusal]
        best = max(within, key=lambda t: (rate(unanswerable, min_cos, t), -t)) if unanswerable else max(within)
        print(f"{language}: recommended min_log_odds {best:.1f} (false refusal ≤ {args.max_false_refusal:.2f})")
        false_refusal = rate(answerable, min_cos, configured)
        missed += false_refusal > TARGET_FALSE_REFUSAL
        if unanswerable:
            missed += rate(unanswerable, min_cos, configured) < TARGET_ABSTENTION
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
