"""Checks on the generated answer: can any tell an answer kb should have withheld from one it should give?

Issue 15 asks for abstention ≥ .80 on unanswerable questions while refusing ≤ .10 of answerable ones. The check
kb runs (``kb_app/chat/refusal.py``: best cosine, then the model's yes/no on the passages) reaches .30 on
en_dev_unanswerable. This measures the candidates that read the answer too, on the answerable and unanswerable
questions of a language, with the default model and the default pipeline's passages:

- ``cosine``: the best passage's cosine to the question (what ``SimilarityCheck`` reads);
- ``judge``: log P(yes) − log P(no) for "does the context contain the answer?" (what ``ModelCheck`` reads);
- ``answer_logprob``: the mean token log-probability of the generated answer (the model's own confidence);
- ``evidence_gain``: that, minus the answer's log-probability given the question alone (how much the passages
  explain the answer rather than the question);
- ``verify``: the dialogue continued after the answer with "Is your answer stated in the context?": log-odds;
- ``supported``: the judge prompt with the answer proposed: "Is the proposed answer supported by the context?";
- ``cosine + verify``: the two best, each scaled to unit deviation, added.

For each it prints the AUC (answerable above unanswerable) and the most abstention any threshold reaches at a
false refusal ≤ .10, the threshold fitted on the same questions (so an upper bound). Exits 1 when no check reaches
the target. The post-answer checks cost one prompt each after the answer (most of it cached).

    .venv/bin/python bench/answer_checks.py                  # en: 80 answerable + 50 unanswerable, ~20 min
    .venv/bin/python bench/answer_checks.py --answerable 20 --unanswerable 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval import RESULTS, SETS, kb_name  # noqa: E402
from kb_app.assistant import Assistant  # noqa: E402
from kb_app.chat.citations import strip_markers  # noqa: E402
from kb_app.chat.prompt import PromptBuilder  # noqa: E402
from kb_app.chat.refusal import ModelCheck, SimilarityCheck, yes_over_no  # noqa: E402
from kb_app.evaluation import ensure_ingested, read_qa  # noqa: E402
from kb_app.models.base import Message  # noqa: E402
from kb_app.settings import load_settings  # noqa: E402

TARGET_FALSE_REFUSAL = 0.10
TARGET_ABSTENTION = 0.80
# The candidate checks' wording (English: the language whose abstention misses the target).
VERIFY = "Is your answer stated in the context? Answer yes or no."
SUPPORTED = "Proposed answer: {answer}\nIs the proposed answer supported by the context above? Answer yes or no."
BARE = "Question: {question}\nAnswer in one sentence."
JUDGE_ASK = "Does the context above contain the answer to this question? Answer yes or no."


def measure(assistant: Assistant, set_name: str, limit: int) -> list[dict[str, float]]:
    """Per question, every candidate's score (higher: answer), from one retrieval and one generated answer."""
    spec = SETS[set_name]
    language = spec.language
    kb = kb_name(assistant.settings, language)
    ensure_ingested(assistant, spec.docs, kb)
    prompts = PromptBuilder(assistant.settings.prompts_dir)
    t = prompts.templates(language)  # type: ignore[arg-type]
    judge = ModelCheck(SimilarityCheck({}), assistant.model, prompts, {})
    retriever, model, llm = assistant.retriever(kb), assistant.model(), assistant.settings.llm
    out = []
    for row in tqdm(read_qa(spec.qa)[:limit], desc=set_name, unit="q"):
        hits = retriever.retrieve(row.question, assistant.settings.retrieval.top_k)
        messages, used = prompts.build(
            row.question, hits, language, model.context_length - llm.max_tokens, model.count_tokens
        )  # type: ignore[arg-type]
        answer = strip_markers("".join(model.stream(messages, llm.max_tokens, llm.temperature)).strip())
        bare: list[Message] = [
            {"role": "system", "content": t.system},
            {"role": "user", "content": BARE.format(question=row.question)},
        ]
        judged = prompts.judge(row.question, used, language)  # type: ignore[arg-type]
        if JUDGE_ASK not in judged[-1]["content"]:
            raise SystemExit(f"prompts/{language}/judge.txt no longer ends with {JUDGE_ASK!r}: update JUDGE_ASK")
        proposed = judged[-1]["content"].replace(JUDGE_ASK, SUPPORTED.format(answer=answer))
        answer_logprob = model.reply_logprob(messages, answer)
        follow_up: list[Message] = [{"role": "assistant", "content": answer}, {"role": "user", "content": VERIFY}]
        out.append(
            {
                "cosine": max((h.dense_score for h in used if h.dense_score is not None), default=0.0),
                "judge": judge.log_odds(row.question, used, language),  # type: ignore[arg-type]
                "answer_logprob": answer_logprob,
                "evidence_gain": answer_logprob - model.reply_logprob(bare, answer),
                "verify": yes_over_no(model, [*messages, *follow_up], t.judge_words),
                "supported": yes_over_no(model, [*judged[:-1], {"role": "user", "content": proposed}], t.judge_words),
            }
        )
    return out


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """The chance that an answerable question scores above an unanswerable one (ties count half)."""
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    return sum(pairs) / len(pairs)


def best_abstention(positive: Sequence[float], negative: Sequence[float]) -> tuple[float, float, float]:
    """(abstention, false refusal, threshold) of the threshold that abstains most within the false-refusal
    target: refuse when the score is below the threshold."""
    best = (0.0, 0.0, min(positive + negative, default=0.0))
    for threshold in sorted(set(positive) | set(negative)):
        false_refusal = sum(p < threshold for p in positive) / len(positive)
        abstention = sum(n < threshold for n in negative) / len(negative)
        if false_refusal <= TARGET_FALSE_REFUSAL and abstention > best[0]:
            best = (abstention, false_refusal, threshold)
    return best


def standardised(rows: list[dict[str, float]], key: str) -> Callable[[dict[str, float]], float]:
    values = [r[key] for r in rows]
    mean, spread = statistics.fmean(values), statistics.pstdev(values) or 1.0
    return lambda r: (r[key] - mean) / spread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answerable", type=int, default=80, help="first N questions of en_dev (default 80)")
    parser.add_argument("--unanswerable", type=int, default=50, help="first N of en_dev_unanswerable (default 50)")
    parser.add_argument("--home", type=Path, default=RESULTS / "kb_home", help="KB_HOME for the eval KBs")
    args = parser.parse_args(argv)

    assistant = Assistant(load_settings(home=args.home))
    answerable = measure(assistant, "en_dev", args.answerable)
    unanswerable = measure(assistant, "en_dev_unanswerable", args.unanswerable)
    (RESULTS / "answer_checks.json").write_text(json.dumps({"answerable": answerable, "unanswerable": unanswerable}))

    every = answerable + unanswerable
    cosine, verify = standardised(every, "cosine"), standardised(every, "verify")
    for row in every:
        row["cosine + verify"] = cosine(row) + verify(row)
    print(f"\n{len(answerable)} answerable, {len(unanswerable)} unanswerable (en, default model)")
    print("| check | AUC | best abstention at false refusal ≤ .10 | its false refusal | threshold |")
    print("|---|---|---|---|---|")
    reached = False
    for key in answerable[0]:
        positive, negative = [r[key] for r in answerable], [r[key] for r in unanswerable]
        abstention, false_refusal, threshold = best_abstention(positive, negative)
        reached |= abstention >= TARGET_ABSTENTION
        print(f"| {key} | {auc(positive, negative):.3f} | {abstention:.2f} | {false_refusal:.3f} | {threshold:.3f} |")
    print(f"target: abstention ≥ {TARGET_ABSTENTION:.2f} at false refusal ≤ {TARGET_FALSE_REFUSAL:.2f}")
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
