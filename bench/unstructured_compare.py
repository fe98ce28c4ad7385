"""kb's own loaders against ``unstructured`` on every file of ../shared/corpus: files read, seconds, peak memory.

Each engine runs in its own process, one after the other (never in parallel: two cores), with its own interpreter:

    .venv/bin/python bench/unstructured_compare.py --engine kb
    /tmp/unst-venv/bin/python bench/unstructured_compare.py --engine unstructured
    python3 bench/unstructured_compare.py --compare      # the files where the two differ (stdlib only)

``unstructured`` is not a dependency of kb and must not go into .venv; its venv is made apart:

    python3 -m venv /tmp/unst-venv
    /tmp/unst-venv/bin/pip install "unstructured[docx,pptx,xlsx,md,epub,odt,rtf,org,rst,doc,ppt]==0.27.35" \
        pdfminer.six pdf2image pi-heif pikepdf "pypdf<7" unstructured-pytesseract \
        opencv-python-headless scipy onnxruntime onnx huggingface_hub matplotlib
    /tmp/unst-venv/bin/pip install --no-deps unstructured-inference==1.6.14

Its ``[pdf,image]`` extras pull torch and the CUDA wheels (through ``unstructured-inference``); yet even strategy
"fast" imports ``unstructured_inference`` (partition/pdf_image/pdfminer_processing.py), so it goes in without its
dependencies plus the few it needs at import; torch is never installed (hi_res layout models are unusable).

kb: ``LoaderRegistry().load(path, name)`` in this process, OCR (a tesseract subprocess) included. unstructured:
``partition(filename=...)`` with strategy "fast" (PDFs), "ocr_only" (images) or its default (the rest).
Any exception counts as no text.
Per-file rows go to bench/results/unstructured_compare_<engine>.json; totals are printed as a Markdown table.
Peak RSS is ``ru_maxrss`` of this process (RUSAGE_SELF) and, apart, of the largest child (tesseract, soffice).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
RESULTS = ROOT / "bench" / "results"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".heic", ".tif", ".tiff", ".gif", ".webp"}
OCR_LANGUAGES = ["eng", "chi_sim", "chi_tra"]  # kb's default ocr_languages, given to unstructured's OCR as well


def corpus_files(corpus: Path) -> list[Path]:
    """Every regular file under ``corpus`` (links and empty files included), sorted."""
    return sorted(p for p in corpus.rglob("*") if p.is_file())


def kb_reader():
    sys.path.insert(0, str(ROOT))
    from ingest.loaders import LoaderRegistry

    registry = LoaderRegistry()

    def read(path: Path, name: str) -> str:
        return "\n\n".join(page.text for page in registry.load(path, name).pages)

    return read, "kb (working tree)"


def patch_unstructured_offline() -> str:
    """unstructured 0.27 loads spaCy's en_core_web_sm at its first text heuristic (every .txt, .html, .eml ...) and,
    when it is missing, downloads the wheel from GitHub (``unstructured.nlp.tokenize._install_spacy_model``): offline
    that raises, so every such file fails. The model is not on PyPI (only unofficial re-uploads), so the minimal
    patch swaps the private ``_get_nlp`` for a blank English pipeline with a rule-based sentencizer: sentences and
    tokens still work, POS tags are empty (so fewer elements are classed NarrativeText; the text is the same)."""
    import functools

    import spacy
    from unstructured.nlp import tokenize

    try:
        spacy.load("en_core_web_sm")
        return "none (en_core_web_sm installed)"
    except OSError:
        pass

    @functools.lru_cache(maxsize=1)
    def blank_nlp():
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        return nlp

    tokenize._get_nlp = blank_nlp
    return "unstructured.nlp.tokenize._get_nlp -> spacy.blank('en') + sentencizer"


def unstructured_reader(patch: bool):
    from unstructured.__version__ import __version__
    from unstructured.partition.auto import partition

    note = patch_unstructured_offline() if patch else "none"

    def read(path: Path, name: str) -> str:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            elements = partition(filename=str(path), strategy="ocr_only", languages=OCR_LANGUAGES)
        elif path.suffix.lower() == ".pdf":
            elements = partition(filename=str(path), strategy="fast")
        else:  # strategy="fast" here would be passed on to image attachments of e-mails, which refuse it
            elements = partition(filename=str(path))
        return "\n\n".join(str(el) for el in elements)

    return read, f"unstructured {__version__} (patch: {note})"


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KB on Linux


def cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run(engine: str, corpus: Path, patch: bool) -> dict:
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    read, version = kb_reader() if engine == "kb" else unstructured_reader(patch)
    setup_s = time.perf_counter() - started
    files = corpus_files(corpus)
    rows = []
    for path in files:
        name = str(path.relative_to(corpus))
        t0 = time.perf_counter()
        error = ""
        try:
            text = read(path, name)
        except Exception as exc:  # a failure counts as no text
            text, error = "", f"{type(exc).__name__}: {str(exc)[:200]}"
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "file": name,
                "text": bool(text.strip()),
                "chars": len(text.strip()),
                "s": round(seconds, 4),
                "error": error,
            }
        )
        print(f"{seconds:7.2f}s {len(text.strip()):>9} {name} {error[:100]}", file=sys.stderr, flush=True)
    total = {
        "engine": engine,
        "version": version,
        "python": platform.python_version(),
        "files": len(rows),
        "with_text": sum(r["text"] for r in rows),
        "chars": sum(r["chars"] for r in rows),
        "setup_s": round(setup_s, 2),
        "files_s": round(sum(r["s"] for r in rows), 2),
        "wall_s": round(time.perf_counter() - started, 2),
        "cpu_s": round(cpu_s(resource.RUSAGE_SELF), 1),
        "children_cpu_s": round(cpu_s(resource.RUSAGE_CHILDREN), 1),
        "peak_rss_mb": round(peak_mb(resource.RUSAGE_SELF)),
        "children_peak_rss_mb": round(peak_mb(resource.RUSAGE_CHILDREN)),
        "load_avg_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    return {"total": total, "rows": rows}


def print_totals(totals: list[dict]) -> None:
    print(
        "| engine | version | files with text | setup s | files s | wall s | CPU s (+children) | peak RSS MB (child) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for t in totals:
        print(
            f"| {t['engine']} | {t['version']} | {t['with_text']} / {t['files']} | {t['setup_s']} | {t['files_s']} | "
            f"{t['wall_s']} | {t['cpu_s']} (+{t['children_cpu_s']}) | "
            f"{t['peak_rss_mb']} ({t['children_peak_rss_mb']}) |"
        )


def compare() -> None:
    runs = {e: json.loads((RESULTS / f"unstructured_compare_{e}.json").read_text()) for e in ("kb", "unstructured")}
    print_totals([r["total"] for r in runs.values()])
    kb = {r["file"]: r for r in runs["kb"]["rows"]}
    un = {r["file"]: r for r in runs["unstructured"]["rows"]}
    print("\n| file | kb | unstructured |")
    print("|---|---|---|")
    for name in sorted(kb.keys() | un.keys()):
        a, b = kb.get(name), un.get(name)
        if a and b and a["text"] == b["text"]:
            continue
        for r in (a, b):
            if r is not None:
                r["cell"] = f"{r['chars']} chars" if r["text"] else f"no text ({r['error'][:70] or 'empty'})"
        print(f"| {name} | {a['cell'] if a else '-'} | {b['cell'] if b else '-'} |".replace("\n", " "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["kb", "unstructured"])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--no-patch", action="store_true", help="run unstructured without the offline spaCy patch")
    parser.add_argument("--compare", action="store_true", help="print the two saved runs side by side")
    args = parser.parse_args()
    if args.compare:
        compare()
        return 0
    if not args.engine:
        parser.error("--engine or --compare")
    result = run(args.engine, args.corpus.resolve(), patch=not args.no_patch)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"unstructured_compare_{args.engine}{'_nopatch' if args.no_patch else ''}.json"
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1))
    print_totals([result["total"]])
    print(f"\nrows: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
