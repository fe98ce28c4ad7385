"""How many passages should the model read? The same retrieved passages, answered with the top k1, k2, … of them.

    .venv/bin/python bench/passages_ab.py --set zh_dev --questions 40:100          # top 1 against top 3
    .venv/bin/python bench/passages_ab.py --set en_dev --questions 0:40 --top-k 1,2,3

``bench/quality.py`` measures one setting at a time, and between two runs retrieval moves too (the English model
re-read). Here each question is retrieved once, for the largest k, and every k answers from the first k of those
same passages through the default pipeline (trimming, refusal check, model), so the difference is the number of
passages alone. Per k: answers that contain a gold answer, refusals, and the questions only that k got right (the
discordant pairs, which say more than the totals on a few dozen questions). The eval KBs are ``bench/quality.py``'s
(``bench/results/kb_home``): run that once first. Each answer goes to ``bench/results/passages_ab_<set>.jsonl``.
Exits 0: a measurement to read, with no target of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval import RESULTS, SETS, kb_name  # noqa: E402
from kb_app.assistant import Assistant  # noqa: E402
from kb_app.evaluation import normalizer, read_qa  # noqa: E402
from kb_app.retrieval.base import Hit, Retriever  # noqa: E402
from kb_app.settings import load_settings  # noqa: E402


class RetrievedOnce:
    """The base retriever's ``largest`` hits per question, read once; a call for k gets the first k of them."""

    def __init__(self, base: Retriever, largest: int) -> None:
        self._base = base
        self._largest = largest
        self._seen: dict[str, list[Hit]] = {}

    def retrieve(self, query: str, k: int) -> list[Hit]:
        if query not in self._seen:
            self._seen[query] = self._base.retrieve(query, self._largest)
        return self._seen[query][:k]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="zh_dev", choices=("zh_dev", "en_dev"), help="dev set (default zh_dev)")
    parser.add_argument("--questions", default="0:40", help="a slice of the set, START:END (default 0:40)")
    parser.add_argument("--top-k", default="1,3", help="passages the model reads, comma-separated (default 1,3)")
    parser.add_argument("--home", type=Path, default=RESULTS / "kb_home", help="KB_HOME of bench/quality.py's KBs")
    args = parser.parse_args(argv)
    start, _, end = args.questions.partition(":")
    ks = sorted({int(k) for k in args.top_k.split(",")})
    eval_set = SETS[args.set]

    settings = load_settings(home=args.home)
    assistant = Assistant(settings)
    kb = kb_name(settings, eval_set.language)
    if not assistant.has_knowledge_base(kb):
        raise SystemExit(f"no knowledge base {kb} in {args.home}: run bench/quality.py once first")
    retriever = RetrievedOnce(assistant.retriever(kb), max(ks))
    rows = read_qa(eval_set.qa)[int(start or 0) : int(end) if end else None]
    norm = normalizer(eval_set.language)  # type: ignore[arg-type]
    right: dict[int, set[str]] = {k: set() for k in ks}
    refused: dict[int, int] = dict.fromkeys(ks, 0)
    out = RESULTS / f"passages_ab_{args.set}.jsonl"
    with out.open("w", encoding="utf-8") as answers:
        for number, row in enumerate(rows, 1):
            record: dict = {"id": row.id}
            for k in ks:
                retrieval = settings.retrieval.model_copy(update={"top_k": k})
                answer = assistant.pipeline(kb, retrieval=retrieval, retriever=retriever).ask(row.question)
                if any(norm(gold) and norm(gold) in norm(answer.text) for gold in row.answers):  # kb eval's Contains
                    right[k].add(row.id)
                refused[k] += answer.refused
                record[f"top{k}"] = {"answer": answer.text, "refused": answer.refused}
            answers.write(json.dumps(record, ensure_ascii=False) + "\n")
            print(f"\r{number} / {len(rows)} questions", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    everyone = set.intersection(*right.values())
    print(f"\n{args.set} questions {args.questions} ({len(rows)}), same retrieved passages for every k\n")
    print("| passages read (top_k) | Contains | refused | right only with this k |\n|---|---|---|---|")
    for k in ks:
        print(f"| {k} | {len(right[k])} / {len(rows)} | {refused[k]} | {len(right[k] - everyone)} |")
    print(f"\nanswers: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
