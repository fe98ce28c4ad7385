"""The ``kb`` command: ingest, search, ask and serve from the shell. Every command takes ``--json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from kb_app.errors import KbError
from kb_app.settings import Settings, load_settings

app = typer.Typer(
    help="kb: ask your documents, privately. Everything runs on this machine; nothing is downloaded.\n\n"
    "Settings come from defaults < kb.yaml < KB_* environment < these flags.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

KbOption = Annotated[str | None, typer.Option("--kb", help="Knowledge base name (default: settings.kb).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")]


@app.callback()
def main_options(
    ctx: typer.Context,
    home: Annotated[
        Path | None, typer.Option(help="Where knowledge bases are stored (KB_HOME).", show_default=False)
    ] = None,
    gguf: Annotated[Path | None, typer.Option(help="A local GGUF model file instead of the bundled default.")] = None,
) -> None:
    ctx.obj = {"home": home, "llm.gguf_path": gguf}


def _settings(ctx: typer.Context, **flags: Any) -> Settings:
    return load_settings(**{**(ctx.obj or {}), **flags})


def _assistant(settings: Settings):
    from kb_app.assistant import Assistant

    return Assistant(settings)


def _emit(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


@app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (folders are read recursively).")],
    kb: KbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add files to a knowledge base. Unchanged files are skipped; changed ones replace their old chunks."""
    from tqdm import tqdm

    settings = _settings(ctx, kb=kb)
    assistant = _assistant(settings)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise KbError(f"no such file or folder: {', '.join(missing)}")
    with tqdm(total=1.0, unit="", bar_format="{l_bar}{bar}| {elapsed}<{remaining}", disable=as_json) as bar:

        def progress(fraction: float, message: str) -> None:
            bar.set_description_str(message[:40])
            bar.update(fraction - bar.n)

        report = assistant.ingest(paths, progress=progress)
    if as_json:
        _emit(
            {
                "kb": settings.kb,
                "seconds": round(report.seconds, 2),
                "files": [f.__dict__ for f in report.files],
            }
        )
    else:
        for outcome in report.failed:
            typer.secho(f"skipped {outcome.reason}", fg="yellow", err=True)
        typer.echo(f"{settings.kb}: {report.summary()}")
    if report.files and len(report.failed) == len(report.files):
        raise typer.Exit(1)


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    kb: KbOption = None,
    k: Annotated[int | None, typer.Option("-k", help="Number of passages.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show the passages that best match QUERY, without asking the model."""
    hits = _assistant(_settings(ctx, kb=kb)).search(query, k=k)
    rows = [
        {
            "n": n,
            "source": h.chunk.source,
            "page": h.chunk.page,
            "text": h.chunk.text,
            "score": round(h.score, 4),
            "dense_score": None if h.dense_score is None else round(h.dense_score, 4),
        }
        for n, h in enumerate(hits, 1)
    ]
    if as_json:
        _emit(rows)
        return
    for row in rows:
        page = f" p.{row['page']}" if row["page"] else ""
        typer.secho(f"[{row['n']}] {row['source']}{page}  score {row['score']}", bold=True)
        typer.echo("    " + row["text"].replace("\n", " ")[:300])


@app.command()
def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="A question in Chinese or English.")],
    kb: KbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer QUESTION from the knowledge base with the local model, citing file and page."""
    from kb_app.chat.pipeline import Answer

    answer = None
    for item in _assistant(_settings(ctx, kb=kb)).stream(question):
        if isinstance(item, Answer):
            answer = item
        elif not as_json:
            typer.echo(item, nl=False)
    assert answer is not None
    if as_json:
        _emit(answer.to_dict())
        return
    typer.echo("")
    for c in answer.citations:
        page = f", page {c.page}" if c.page else ""
        typer.secho(f"[{c.n}] {c.source}{page} (score {c.score})", dim=True)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1: this machine only).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 7860).")] = None,
    browser: Annotated[bool | None, typer.Option("--browser/--no-browser", help="Open a browser tab.")] = None,
) -> None:
    """Start the web app: chat with citations, drag-and-drop upload, knowledge-base management."""
    from kb_app.ui.web import launch

    launch(_settings(ctx, **{"ui.host": host, "ui.port": port, "ui.open_browser": browser}))


@app.command("list")
def list_kbs(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List knowledge bases."""
    names = _assistant(_settings(ctx)).list_knowledge_bases()
    if as_json:
        _emit(names)
    else:
        typer.echo("\n".join(names) if names else "no knowledge bases yet: `kb ingest PATH` creates one")


@app.command()
def files(ctx: typer.Context, kb: KbOption = None, as_json: JsonOption = False) -> None:
    """List the files in a knowledge base."""
    records = _assistant(_settings(ctx, kb=kb)).knowledge_base(create=False).manifest.all()
    if as_json:
        _emit([{"source": r.source, "sha256": r.sha256, "size": r.size, "chunks": len(r.chunk_ids)} for r in records])
        return
    for r in records:
        typer.echo(f"{r.source}\t{r.size} bytes\t{len(r.chunk_ids)} chunks")


@app.command()
def remove(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="The file's name as `kb files` shows it.")],
    kb: KbOption = None,
) -> None:
    """Remove one file and its chunks from a knowledge base."""
    if not _assistant(_settings(ctx, kb=kb)).knowledge_base(create=False).remove_file(source):
        raise KbError(f"'{source}' is not in the knowledge base", "`kb files` lists what is there")
    typer.echo(f"removed {source}")


@app.command()
def drop(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Knowledge base to delete.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a whole knowledge base (its vectors, index and manifest; your files are untouched)."""
    if not yes:
        typer.confirm(f"Delete knowledge base '{name}'?", abort=True)
    _assistant(_settings(ctx)).delete_knowledge_base(name)
    typer.echo(f"deleted {name}")


def main() -> None:
    """Entry point: errors a user can fix are printed as one message, not a traceback."""
    try:
        app()
    except KbError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
