"""Evaluation against a QA set: ingest a folder of documents, retrieve for every question, score, write a run.

A QA file is JSON lines, one row per question: ``{"id", "question", "answers": [...], "doc_id", ...}``;
``answers`` is empty for a question the documents cannot answer, and ``doc_id`` is the name of the file
holding the answer without its ``.txt``. The run file written here is the one ``score.py`` reads:
``{"id", "retrieved": [{"doc_id", "text"}, ...], "answer"}`` (plus a few extra fields it ignores).

Metrics follow ``score.py``: answer metrics (AnswerHit@k, Contains) are counted over answerable rows only,
document metrics (DocRecall@k, MRR@10) over every row. AnswerHit grows with chunk size, so the mean chunk
length is reported with it.

``exclude_gold`` (``kb eval --exclude-gold``) turns any QA set into an unanswerable one, the way RGB measures
negative rejection: each question is asked as if the knowledge base held every document except its own gold
one (``doc_id``), so a correct system refuses. The one knowledge base of all documents is kept; each question's
retrieval leaves the gold document's chunks out (``kb_app.retrieval.excluding``). Every row then counts as
unanswerable: the score is abstention (refused / total), and DocRecall stays 0 when nothing leaked.
"""

from __future__ import annotations

import json
import statistics
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ingest.pipeline import IngestReport
from kb_app.assistant import Assistant
from kb_app.chat.citations import strip_markers
from kb_app.chat.pipeline import Answer, ChatPipeline
from kb_app.chat.prompt import PromptBuilder
from kb_app.errors import DocumentError
from kb_app.language import Language, detect_language
from kb_app.retrieval.base import Hit, Retriever
from kb_app.retrieval.excluding import ExcludingRetriever
from kb_app.settings import RetrievalSettings

CUTOFFS: tuple[int, ...] = (1, 3, 5, 10)
RETRIEVE_K = 10


@dataclass(frozen=True)
class QARow:
    """One question of a QA set; ``answers`` is empty when the documents do not answer it."""

    id: str
    question: str
    answers: list[str]
    doc_id: str

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


@dataclass
class RunRow:
    """What the system did for one question: ranked chunks, and the answer when one was generated."""

    id: str
    retrieved: list[dict[str, Any]]
    max_dense: float | None
    seconds: float
    answer: str | None = None
    refused: bool | None = None
    answer_seconds: float | None = None  # question to the whole answer (retrieval, checks, generation)
    first_token_seconds: float | None = None  # question to the first piece of text the person sees

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "retrieved": self.retrieved,
            "answer": self.answer or "",
            "refused": self.refused,
            "max_dense": self.max_dense,
            "answer_seconds": self.answer_seconds,
            "first_token_seconds": self.first_token_seconds,
        }


@dataclass
class EvalResult:
    """A finished evaluation: the per-question rows, the metrics, and where the run file was written."""

    name: str
    mode: str
    metrics: dict[str, float]
    rows: list[RunRow] = field(default_factory=list)
    run_path: Path | None = None


def read_qa(path: Path) -> list[QARow]:
    """Read a QA jsonl file (blank lines are skipped)."""
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                rows.append(QARow(str(r["id"]), r["question"], list(r.get("answers") or []), str(r["doc_id"])))
    return rows


def guess_language(rows: Sequence[QARow]) -> Language:
    """The language most questions are written in."""
    zh = sum(detect_language(r.question) == "zh" for r in rows)
    return "zh" if zh * 2 > len(rows) else "en"


def normalizer(language: Language) -> Callable[[str], str]:
    """The answer-matching normalisation of ``score.py``: zh drops punctuation and spaces, en folds spaces."""
    if language == "zh":
        return lambda s: "".join(
            c
            for c in unicodedata.normalize("NFKC", s).lower()
            if not (unicodedata.category(c).startswith("P") or c.isspace())
        )
    return lambda s: " ".join(s.lower().split())


def doc_id(source: str) -> str:
    """The eval ``doc_id`` of an ingested file: its name without the ``.txt`` suffix."""
    name = source.rsplit("/", 1)[-1]
    return name[:-4] if name.lower().endswith(".txt") else name


def ensure_ingested(assistant: Assistant, docs_dir: Path, kb: str, show_progress: bool = True) -> IngestReport:
    """Ingest ``docs_dir`` into ``kb``; unchanged files already there are skipped, so re-runs are cheap."""
    with tqdm(
        total=1.0,
        desc=f"ingest {kb}",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
        disable=not show_progress,
    ) as bar:

        def progress(fraction: float, message: str) -> None:
            bar.update(fraction - bar.n)

        report = assistant.ingest([Path(docs_dir)], kb=kb, progress=progress)
    if report.failed:
        reasons = "; ".join(f.reason for f in report.failed[:3])
        raise DocumentError(
            f"{len(report.failed)} files failed to ingest into {kb}: {reasons}",
            "an evaluation needs every document of its set; fix or remove those files",
        )
    return report


def chunk_lengths(assistant: Assistant, kb: str, batch: int = 500) -> list[int]:
    """Character length of every chunk in the knowledge base (read through the manifest's chunk ids)."""
    knowledge_base = assistant.knowledge_base(kb, create=False)
    ids = [cid for record in assistant.files(kb) for cid in record.chunk_ids]
    lengths: list[int] = []
    for start in range(0, len(ids), batch):
        lengths.extend(len(c.text) for c in knowledge_base.vectors.get(ids[start : start + batch]))
    return lengths


def retrieval_settings(assistant: Assistant, mode: str | None) -> RetrievalSettings:
    """The assistant's retrieval settings, with ``mode`` replaced when one is given."""
    base = assistant.settings.retrieval
    return base if mode is None else base.model_copy(update={"mode": mode})


def max_dense(hits: Sequence[Hit]) -> float | None:
    """The best cosine among ``hits``: the evidence the pipeline refuses on."""
    scores = [h.dense_score for h in hits if h.dense_score is not None]
    return max(scores) if scores else None


def gold_hidden(assistant: Assistant, kb: str, rows: Sequence[QARow]) -> Callable[[Retriever, QARow], Retriever]:
    """For ``exclude_gold``: wraps a retriever so that it leaves out the row's gold document (every file whose
    ``doc_id`` is the row's). A ``doc_id`` naming no ingested file fails: that question would not be negative."""
    files: dict[str, list[tuple[str, int]]] = {}
    for record in assistant.files(kb):
        files.setdefault(doc_id(record.source), []).append((record.source, len(record.chunk_ids)))
    if missing := sorted({r.doc_id for r in rows} - set(files)):
        raise DocumentError(
            f"--exclude-gold: {len(missing)} doc_id(s) name no ingested file, e.g. {missing[0]!r}",
            "each question's doc_id must be the name (without .txt) of a file in the documents folder",
        )

    def hide(retriever: Retriever, row: QARow) -> Retriever:
        gold = files[row.doc_id]
        return ExcludingRetriever(retriever, [source for source, _ in gold], sum(n for _, n in gold))

    return hide


def run_questions(
    assistant: Assistant,
    rows: Sequence[QARow],
    kb: str,
    mode: str | None = None,
    generate: int = 0,
    k: int = RETRIEVE_K,
    show_progress: bool = True,
    exclude_gold: bool = False,
) -> list[RunRow]:
    """Retrieve the top ``k`` for every question; for the first ``generate`` also answer with the pipeline, from
    the same retriever. ``exclude_gold``: each question's retrieval leaves its gold document out."""
    retrieval = retrieval_settings(assistant, mode)
    configured = assistant.retriever(kb, retrieval)
    per_question = gold_hidden(assistant, kb, rows) if exclude_gold else lambda retriever, row: retriever
    refusals = {PromptBuilder(assistant.settings.prompts_dir).refusal(lang) for lang in ("zh", "en")}
    results = []
    label = f"{kb} {retrieval.mode}"
    for i, row in enumerate(tqdm(rows, desc=label, unit="q", disable=not show_progress)):
        retriever = per_question(configured, row)
        started = time.perf_counter()
        hits = retriever.retrieve(row.question, max(k, retrieval.top_k))
        seconds = time.perf_counter() - started
        result = RunRow(
            id=row.id,
            retrieved=[
                {
                    "doc_id": doc_id(h.chunk.source),
                    "text": h.chunk.text,
                    "score": round(h.score, 5),
                    "dense_score": None if h.dense_score is None else round(h.dense_score, 5),
                }
                for h in hits[:k]
            ],
            max_dense=max_dense(hits[: retrieval.top_k]),
            seconds=seconds,
        )
        if i < generate:
            answer_question(assistant.pipeline(kb, retrieval, retriever), row.question, result, refusals)
        results.append(result)
    return results


def answer_question(pipeline: ChatPipeline, question: str, result: RunRow, refusals: set[str]) -> None:
    """Answer through the streaming path, as a person would see it, and keep what it cost."""
    started = time.perf_counter()
    for item in pipeline.stream(question):
        if isinstance(item, Answer):
            result.answer_seconds = time.perf_counter() - started
            result.answer = strip_markers(item.text)
            result.refused = item.refused or any(r in item.text for r in refusals)
        elif result.first_token_seconds is None and item.strip():
            result.first_token_seconds = time.perf_counter() - started


def write_run(path: Path, results: Sequence[RunRow]) -> None:
    """Write the run jsonl that ``score.py`` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in results:
            fh.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


def compute_metrics(
    rows: Sequence[QARow],
    results: Sequence[RunRow],
    language: Language,
    min_dense_score: float | None = None,
    chunk_lens: Sequence[int] = (),
) -> dict[str, float]:
    """Retrieval (and, where answers were generated, answer) metrics; rates are fractions in [0, 1]."""
    norm = normalizer(language)
    by_id = {r.id: r for r in results}
    answerable = [q for q in rows if q.answerable]
    unanswerable = [q for q in rows if not q.answerable]
    m: dict[str, float] = {
        "n": len(rows),
        "n_answerable": len(answerable),
        "n_unanswerable": len(unanswerable),
    }
    for k in CUTOFFS:
        hits = 0
        for q in answerable:
            texts = [norm(x["text"]) for x in by_id[q.id].retrieved[:k]] if q.id in by_id else []
            golds = [norm(a) for a in q.answers]
            hits += any(g in t for g in golds for t in texts)
        m[f"AnswerHit@{k}"] = hits / len(answerable) if answerable else float("nan")
    ranks = []
    for q in rows:
        docs = [x["doc_id"] for x in by_id[q.id].retrieved[:10]] if q.id in by_id else []
        ranks.append(next((i + 1 for i, d in enumerate(docs) if d == q.doc_id), None))
    for k in CUTOFFS:
        m[f"DocRecall@{k}"] = _mean([r is not None and r <= k for r in ranks])
    m["MRR@10"] = _mean([1 / r if r else 0.0 for r in ranks])
    m["mean_chunk_len"] = _mean(chunk_lens)
    m["mean_retrieved_len"] = _mean([len(x["text"]) for r in results for x in r.retrieved])
    m["retrieve_ms_p50"] = 1000 * statistics.median(r.seconds for r in results) if results else float("nan")
    if min_dense_score is not None:
        # What the pipeline's evidence check would do, from retrieval alone (no model call).
        def weak(q: QARow) -> bool:
            score = by_id[q.id].max_dense if q.id in by_id else None
            return score is None or score < min_dense_score

        m["min_dense_score"] = min_dense_score
        if answerable:
            m["evidence_refusal"] = _mean([weak(q) for q in answerable])
        if unanswerable:
            m["evidence_abstention"] = _mean([weak(q) for q in unanswerable])
    generated = [(q, by_id[q.id]) for q in rows if q.id in by_id and by_id[q.id].answer is not None]
    if generated:
        m["generated"] = len(generated)
        ans = [(q, r) for q, r in generated if q.answerable]
        unans = [r for q, r in generated if not q.answerable]
        if ans:
            m["Contains"] = _mean([any(norm(a) and norm(a) in norm(r.answer or "") for a in q.answers) for q, r in ans])
            m["refusal_rate"] = _mean([bool(r.refused) for _, r in ans])
        if unans:
            m["abstention_rate"] = _mean([bool(r.refused) for r in unans])
        answered = [r for _, r in generated if r.answer_seconds is not None and not r.refused]
        if answered:
            m["answer_s_p50"] = statistics.median(r.answer_seconds for r in answered)  # type: ignore[misc]
            m["first_token_s_p50"] = statistics.median(r.first_token_seconds or r.answer_seconds for r in answered)  # type: ignore[misc]
    return m


def evaluate(
    assistant: Assistant,
    qa_path: Path,
    docs_dir: Path,
    kb: str,
    mode: str | None = None,
    run_path: Path | None = None,
    generate: int = 0,
    language: Language | None = None,
    k: int = RETRIEVE_K,
    ingest: bool = True,
    show_progress: bool = True,
    exclude_gold: bool = False,
) -> EvalResult:
    """Ingest ``docs_dir`` into ``kb`` if needed, run every question of ``qa_path``, score, write the run.

    ``exclude_gold``: every question without its gold document, scored as unanswerable (module docstring)."""
    rows = read_qa(Path(qa_path))
    language = language or guess_language(rows)
    if ingest:
        ensure_ingested(assistant, Path(docs_dir), kb, show_progress)
    results = run_questions(assistant, rows, kb, mode, generate, k, show_progress, exclude_gold)
    retrieval = retrieval_settings(assistant, mode)
    threshold = assistant.settings.refusal.min_dense_score.get(language)
    scored = [replace(r, answers=[]) for r in rows] if exclude_gold else rows
    metrics = compute_metrics(scored, results, language, threshold, chunk_lengths(assistant, kb))
    if run_path is not None:
        write_run(Path(run_path), results)
    name = f"{Path(qa_path).stem} without gold" if exclude_gold else Path(qa_path).stem
    return EvalResult(name=name, mode=retrieval.mode, metrics=metrics, rows=results, run_path=run_path)
