"""Answer-quality gate: retrieval, generated answers and refusal with the default settings, each with its cost.

Runs the hybrid pipeline on ../shared/eval/{zh_dev,en_dev,en_dev_unanswerable}.jsonl and on zh_dev with each
question's own document left out (``zh_dev without gold``: negative rejection, as RGB builds it, the Chinese
unanswerable set), prints one table of measured figure against target with the cost beside it (median seconds to
the whole answer and to its first piece of text, over the answers that were not refusals), and exits 1 when any
target is missed. Generation is the slow part (a few seconds a question on 2 cores): ``--generate N`` answers the
first N questions of each set (0: retrieval only).

    .venv/bin/python bench/quality.py --generate 50
    .venv/bin/python bench/quality.py --generate 40 --sets en_dev,en_dev_unanswerable   # one language
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval import RESULTS, SETS, kb_name  # noqa: E402
from kb_app.assistant import Assistant  # noqa: E402
from kb_app.evaluation import evaluate  # noqa: E402
from kb_app.settings import load_settings  # noqa: E402

# (set, metric, target, higher is better)
TARGETS = [
    ("zh_dev", "AnswerHit@1", 0.90, True),
    ("zh_dev", "AnswerHit@5", 0.99, True),
    ("en_dev", "AnswerHit@1", 0.85, True),
    ("en_dev", "AnswerHit@5", 0.95, True),
    ("zh_dev", "Contains", 0.75, True),
    ("en_dev", "Contains", 0.70, True),
    ("zh_dev without gold", "abstention_rate", 0.80, True),
    ("en_dev_unanswerable", "abstention_rate", 0.80, True),
    ("zh_dev", "refusal_rate", 0.10, False),
    ("en_dev", "refusal_rate", 0.10, False),
]
# run name -> (eval set, each question's own document left out)
RUNS = {
    "zh_dev": ("zh_dev", False),
    "zh_dev without gold": ("zh_dev", True),
    "en_dev": ("en_dev", False),
    "en_dev_unanswerable": ("en_dev_unanswerable", False),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generate", type=int, default=50, metavar="N", help="answer the first N of each set")
    parser.add_argument("--home", type=Path, default=RESULTS / "kb_home", help="KB_HOME for the eval KBs")
    parser.add_argument(
        "--sets",
        type=lambda text: [name.strip().replace("_without_gold", " without gold") for name in text.split(",")],
        default=list(RUNS),
        help=f"runs to measure, comma-separated (default: all): {', '.join(n.replace(' ', '_') for n in RUNS)}",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.sets if name not in RUNS]
    if unknown:
        parser.error(f"unknown set {', '.join(unknown)}; choose from {', '.join(n.replace(' ', '_') for n in RUNS)}")

    settings = load_settings(home=args.home)
    assistant = Assistant(settings)
    metrics: dict[str, dict[str, float]] = {}
    for name in args.sets:
        set_name, exclude_gold = RUNS[name]
        eval_set = SETS[set_name]
        result = evaluate(
            assistant,
            eval_set.qa,
            eval_set.docs,
            kb_name(settings, eval_set.language),
            run_path=RESULTS / f"quality_{name.replace(' ', '_')}.jsonl",
            generate=args.generate,
            language=eval_set.language,  # type: ignore[arg-type]
            exclude_gold=exclude_gold,
        )
        metrics[name] = result.metrics

    missed = 0
    print("| set | metric | measured | target | answer s (p50) | first token s (p50) |\n|---|---|---|---|---|---|")
    for name, metric, target, higher in (row for row in TARGETS if row[0] in metrics):
        value = metrics[name].get(metric)
        ok = value is not None and (value >= target if higher else value <= target)
        missed += not ok
        shown = "not measured" if value is None else f"{value:.3f}"
        cost = metrics[name] if metric in ("Contains", "refusal_rate") else {}
        spent = [f"{cost[key]:.1f}" if key in cost else "" for key in ("answer_s_p50", "first_token_s_p50")]
        row = f"| {name} | {metric} | {shown} | {'≥' if higher else '≤'} {target:.2f} {'' if ok else '✗'} |"
        print(f"{row} {spent[0]} | {spent[1]} |")
    lengths = [f"{name} {metrics[name]['mean_chunk_len']:.0f}" for name in ("zh_dev", "en_dev") if name in metrics]
    if lengths:
        print(f"\nmean chunk length: {', '.join(lengths)} characters")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
