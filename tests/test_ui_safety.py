"""The page attacked through its HTTP routes, as a script (not the page) would call them; no chat model is loaded.

Each test serves the real app (``kb_app.server.build_app`` under uvicorn) with a temporary KB_HOME on a free port
and speaks Gradio's own protocol: ``POST /gradio_api/upload`` for files, ``POST /gradio_api/queue/join`` and the
event stream of ``/gradio_api/queue/data`` for handlers. Ingest uses the real embedder and store.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from kb_app.chat.pipeline import Citation
from kb_app.settings import load_settings
from kb_app.ui.chat import format_sources
from kb_app.ui.common import GENERIC_ERROR, escape_markdown, neutralise
from tests.conftest import FIXTURES
from tests.page_server import PageClient, last_message, serving

DOCUMENT = FIXTURES / "ui" / "zephyr_policy.txt"


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.fixture
def open_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., PageClient]]:
    """Serve the app with settings ``overrides``; stopped (and GRADIO_TEMP_DIR restored) after the test."""
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # prepare_uploads() sets it; monkeypatch puts it back
    with ExitStack() as servers:

        def open_(**overrides: Any) -> PageClient:
            home = tmp_path / "kb_home"
            settings = load_settings(home=home, **{"ui.open_browser": False, **overrides})
            return PageClient(servers.enter_context(serving(settings)), home)

        yield open_


HOSTILE_NAMES = ["../victim", "../../victim", "..", "bad\x07name", "two\nlines", "k" * 65]


def test_hostile_names_from_the_page_touch_nothing_outside_kb_home(open_page, tmp_path: Path) -> None:
    """Audit H1: an upload into, then a delete of, a path-like name leaves every folder around KB_HOME alone."""
    beside, inside_home = tmp_path / "victim", tmp_path / "kb_home" / "victim"
    for victim in (beside, inside_home):
        victim.mkdir(parents=True)
        (victim / "keep.txt").write_text("mine\n", encoding="utf-8")
    page = open_page()
    assert "1 added" in page.status_of_upload([DOCUMENT], "keep")
    outside_before = {p for p in files_under(tmp_path) if (tmp_path / "kb_home") not in p.parents}

    for name in [*HOSTILE_NAMES, str(beside), str(inside_home)]:
        upload_status = page.status_of_upload([DOCUMENT], name)
        delete_status = page.call("delete", name)[1]
        for shown in (upload_status, delete_status):
            assert shown.startswith("⚠️") and "knowledge" in shown, (name, shown)
            assert "Traceback" not in shown

    assert (beside / "keep.txt").read_text(encoding="utf-8") == "mine\n"
    assert (inside_home / "keep.txt").read_text(encoding="utf-8") == "mine\n"
    assert {p for p in files_under(tmp_path) if (tmp_path / "kb_home") not in p.parents} == outside_before
    assert page.table("keep")[0][0] == DOCUMENT.name  # ".." did not take the knowledge bases with it
    assert files_under(page.home / "uploads") == []


def test_a_hostile_name_in_a_question_or_a_kb_change_is_shown_not_raised(open_page) -> None:
    page = open_page()
    chat = page.call("ask", "What is the allowance?", [], "../../victim", None)[0]
    assert last_message(chat).startswith("⚠️") and "path separator" in last_message(chat)
    table, status, *_ = page.call("kb_change", "/etc")
    assert table["data"] == [] and "path separator" in status


def test_any_other_failure_shows_one_generic_line_and_no_exception_text(open_page) -> None:
    """A value the page itself never sends (a number for the name) fails inside; the visitor sees no internals."""
    page = open_page()
    status = page.call("delete", 123)[1]
    assert status == GENERIC_ERROR
    assert "AttributeError" not in status and "strip" not in status


def test_display_names_in_any_language_and_the_same_file_in_two_of_them(open_page) -> None:
    """Audit L5: the same file dropped into a second knowledge base is ingested there, not skipped as seen."""
    page = open_page()
    assert "1 added" in page.status_of_upload([DOCUMENT], "财务部")
    outputs = page.queued(page.call("upload", page.files(DOCUMENT), "HR 2026"), "HR 2026")
    assert "1 added" in outputs[1], outputs[1]
    assert {"财务部", "HR 2026"} <= {choice[0] for choice in outputs[-1]["choices"]}
    assert page.table("财务部")[0][0] == DOCUMENT.name
    assert page.table("HR 2026")[0][0] == DOCUMENT.name


def test_uploads_land_in_a_private_folder_under_kb_home_and_are_deleted_once_ingested(open_page) -> None:
    page = open_page()
    uploads = page.home / "uploads"
    assert stat.S_IMODE(uploads.stat().st_mode) == 0o700
    files = page.files(DOCUMENT)
    assert uploads in Path(files[0]["path"]).parents
    assert "1 added" in page.queued(page.call("upload", files, "default"), "default")[1]
    assert files_under(uploads) == []


def test_an_upload_over_the_size_limit_is_refused(open_page, tmp_path: Path) -> None:
    page = open_page(max_file_mb=1)
    big = tmp_path / "big.txt"
    big.write_bytes(b"kb " * 400_000)
    response = page.upload(big)
    assert response.status_code == 413, response.text
    assert all(p.stat().st_size == 0 for p in files_under(page.home / "uploads"))


def test_too_many_files_in_one_drop_are_refused(open_page, tmp_path: Path) -> None:
    page = open_page(**{"ui.max_files_per_upload": 2})
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"note{i}.txt")
        paths[-1].write_text(f"note number {i} about the budget\n", encoding="utf-8")
    status = page.status_of_upload(paths, "default")
    assert "3 files in one drop" in status and "KB\\_UI\\_\\_MAX\\_FILES\\_PER\\_UPLOAD" in status
    assert page.table("default") == []
    assert files_under(page.home / "uploads") == []


def test_a_too_long_question_is_refused_by_the_box_and_by_the_route(open_page) -> None:
    page = open_page(**{"ui.max_question_chars": 40})
    box = next(c for c in page.config["components"] if c["props"].get("elem_id") == "question")
    assert box["props"]["max_length"] == 40
    chat = page.call("ask", "why" * 15, [], "default", None)[0]
    assert "45 characters long; at most 40" in last_message(chat).replace("\\", "")
    assert all(m["role"] == "assistant" for m in chat)  # the long text is not echoed into the chat


def test_monitoring_api_docs_and_remote_loads_are_switched_off(open_page) -> None:
    page = open_page()
    assert page.http.get("/monitoring/summary").status_code in (403, 404)
    assert page.http.get("/gradio_api/info").json()["named_endpoints"] == {}
    assert page.config["footer_links"] == []
    policy = page.http.get("/").headers["content-security-policy"]
    assert "img-src 'self' data: blob:" in policy and "connect-src 'self'" in policy


HOSTILE_MARKDOWN = [
    "![x](http://remote.example/p.png)",
    '<img src="http://remote.example/p.png">',
    "![x][r]\n\n[r]: http://remote.example/p.png",
    "\\<img src=http://remote.example/p.png>",
    '!\\[x](http://remote.example/p.png) <style>body{background:url("http://remote.example/p.png")}</style>',
    "<http://remote.example/> <iframe src=http://remote.example/></iframe>",
]


@pytest.mark.parametrize("text", HOSTILE_MARKDOWN)
def test_rendered_text_holds_no_image_and_no_raw_html(text: str) -> None:
    """Rendered by a CommonMark renderer with raw HTML on: escaped passages and neutralised answers load nothing."""
    render = MarkdownIt("commonmark", {"html": True}).render
    for rendered in (render(escape_markdown(text)), render(neutralise(text))):
        assert "<img" not in rendered and "<iframe" not in rendered and "<style" not in rendered, rendered
    assert "<a " not in render(escape_markdown(text))


def test_sources_for_an_ask_caller_name_files_without_an_empty_quote() -> None:
    """The Assistant blanks passage text for ``ask``; the sources then show file, page and score, and no quote."""
    render = MarkdownIt("commonmark").render
    citations = [Citation(1, "a.pdf", 2, "", 0.8, "Intro"), Citation(2, "b.txt", None, "", 0.7)]
    rendered = render(format_sources(citations, "en"))
    assert "a.pdf" in rendered and "page 2" in rendered and "b.txt" in rendered
    assert "<blockquote>" not in rendered
    with_text = render(format_sources([Citation(1, "a.pdf", 2, "the passage", 0.8)], "en"))
    assert "<blockquote>" in with_text and "the passage" in with_text
