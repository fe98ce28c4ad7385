"""The citation viewer: a cited PDF page rendered with the passage's region marked where the passage really is, the
text around a passage of another format, and who may see either (the Assistant decides; the route and the panel
only ask). Real ingest, real Chroma, real PDFium; the turns opened in the panel are recorded in the real
conversation store from citations of real stored chunks (no model is needed to open a citation)."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import httpx
import pytest
from PIL import Image

from ingest.knowledge_base import KnowledgeBase
from ingest.vector_store import StoredChunk
from kb_app.access.roles import Role
from kb_app.assistant import Assistant
from kb_app.chat.pipeline import Answer, Citation
from kb_app.errors import KbError, PermissionDeniedError
from kb_app.settings import load_settings
from kb_app.ui.citation_panel import (
    ASK_ONLY,
    CitationPanel,
    cite_link,
    header,
    link_markers,
    page_html,
    page_url,
    passage_html,
)
from kb_app.ui.common import escape_markdown
from kb_app.viewer.context import PassageContext, claims, supporting_span
from kb_app.viewer.pdf_page import MAX_PIXELS, SCALE, Box, match_indices, merge_lines, page_scale, render_page
from tests.page_server import serving
from tests.test_api import pdf_bytes

PASSWORD = "a long enough password"
INTRO = ["Halvorsen Optics staff handbook.", "This handbook describes workplace policies."]
FACTS = [
    "Every engineer receives a yearly",
    "training budget of 910 euros.",
    "The budget covers courses and books.",
    "Requests go to Ilse Marquardt.",
]
TOP_PT, LINE_PT, LEFT_PT, PAGE_H_PT = 720, 16, 72, 792  # where pdf_bytes draws its lines
HANDBOOK = "\n\n".join(
    [
        "# Travel",
        "Trains are booked through the travel desk on the second floor of the north building.",
        "Flights need the approval of a department head before any ticket is bought.",
        "Hotel nights are refunded up to 140 euros in capitals and 95 euros elsewhere.",
        "Receipts are uploaded to the expense portal within thirty days of the trip.",
        "Taxis are refunded only between midnight and five in the morning.",
    ]
)


@dataclass
class House:
    owner: Assistant
    docs: Path
    keys: dict[str, str] = field(default_factory=dict)

    def as_(self, name: str) -> Assistant:
        return self.owner.as_user(self.owner.access.user(name))

    def kb(self, name: str) -> KnowledgeBase:
        return self.owner.knowledge_base(name, create=False)

    def chunks(self, kb: str, source: str) -> list[StoredChunk]:
        knowledge_base = self.kb(kb)
        return knowledge_base.vectors.get(knowledge_base.manifest.get(source).chunk_ids)


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory) -> House:
    docs = tmp_path_factory.mktemp("docs")
    settings = load_settings(
        home=tmp_path_factory.mktemp("home") / "kb_home",
        **{"splitter.chunk_size": 120, "splitter.chunk_overlap": 30, "auth.enabled": True},
    )
    owner = Assistant(settings)
    (docs / "budget.pdf").write_bytes(pdf_bytes([INTRO, FACTS]))
    (docs / "travel.md").write_text(HANDBOOK, encoding="utf-8")
    (docs / "targets.md").write_text("# Targets\n\nThe sales team closes forty contracts a quarter.\n")
    assert not owner.ingest([docs / "budget.pdf", docs / "travel.md"], kb="hr").failed
    assert not owner.ingest([docs / "targets.md"], kb="sales").failed
    house = House(owner, docs)
    accounts = owner.accounts
    for name, role in (("nobody", None), ("asker", Role.ASK), ("reader", Role.READ)):
        accounts.add_user(name, PASSWORD)
        if role is not None:
            accounts.grant(name, "hr", role)
        house.keys[name] = accounts.create_key(name)[1]
    accounts.grant("nobody", "sales", Role.READ)
    return house


def budget_chunk(house: House) -> StoredChunk:
    """The chunk of budget.pdf that holds the training budget (page 2)."""
    return next(c for c in house.chunks("hr", "budget.pdf") if "910 euros" in c.text)


def kept_pdf(house: House) -> Path:
    kb = house.kb("hr")
    path = kb.originals.path(kb.manifest.get("budget.pdf").sha256)
    assert path is not None, "the ingest keeps a copy of every stored file (ingest.keep_originals)"
    return path


def yellow_pixels(png: bytes) -> list[tuple[int, int]]:
    """Where the image is tinted by the highlight: page white under translucent yellow (blue well below red)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    pixels = image.load()
    return [
        (x, y)
        for y in range(0, image.height, 2)
        for x in range(0, image.width, 2)
        if (p := pixels[x, y])[0] > 200 and p[1] > 170 and p[0] - p[2] > 80
    ]


# -- the PDF page --------------------------------------------------------------------------------------------------


def test_the_marked_region_is_where_the_passage_lies_on_the_page(house: House) -> None:
    chunk = budget_chunk(house)
    assert chunk.page == 2
    rendered = render_page(kept_pdf(house), 2, chunk.text)
    image = Image.open(io.BytesIO(rendered.png))
    assert image.format == "PNG" and image.size == (rendered.width, rendered.height) == (612 * SCALE, 792 * SCALE)
    lines = [i for i, line in enumerate(FACTS) if line.split()[0] in chunk.text]
    assert len(rendered.marks) == len(lines) >= 2
    for mark, i in zip(rendered.marks, lines, strict=True):
        baseline = (PAGE_H_PT - (TOP_PT - LINE_PT * i)) * SCALE  # the line's baseline in pixels from the top
        assert mark.top < baseline < mark.bottom + 6, (mark, baseline)
        assert abs(mark.left - LEFT_PT * SCALE) <= 6
    yellow = yellow_pixels(rendered.png)
    assert len(yellow) > 500
    inside = [p for p in yellow if any(m.left <= p[0] <= m.right and m.top <= p[1] <= m.bottom for m in rendered.marks)]
    assert inside == yellow  # nothing outside the passage is tinted
    assert all(y < (PAGE_H_PT - TOP_PT + LINE_PT * len(FACTS)) * SCALE for _, y in yellow)


def test_the_page_without_the_passage_is_rendered_unmarked(house: House) -> None:
    rendered = render_page(kept_pdf(house), 1, budget_chunk(house).text)
    assert rendered.marks == [] and yellow_pixels(rendered.png) == []


def test_a_page_that_is_not_there_is_refused_with_the_range(house: House) -> None:
    with pytest.raises(KbError, match="no page 3") as caught:
        render_page(kept_pdf(house), 3)
    assert "1 to 2" in caught.value.hint


def test_text_the_loader_read_differently_is_found_by_its_sentences_then_by_shared_runs() -> None:
    chars = "Intro line.\r\nThe budget is 910 euros. It covers books.\r\nRequests go to Ilse.\r\n"
    whole = match_indices(chars, "The budget is 910 euros.\nIt covers books.")
    assert chars[whole[0] : whole[-1] + 1] == "The budget is 910 euros. It covers books."
    changed = "The budget is 910 euros. This sentence is not on the page. Requests go to Ilse."
    marked = "".join(chars[i] for i in match_indices(chars, changed))
    assert marked == "Thebudgetis910euros.RequestsgotoIlse."
    runs = "".join(chars[i] for i in match_indices(chars, "budget is 910 euro$ it covers books"))
    assert "budgetis910euro" in runs and "Intro" not in runs
    assert match_indices(chars, "nothing like it anywhere at all") == []


def test_character_boxes_merge_into_one_rectangle_per_line() -> None:
    line1 = [Box(10 + 8 * i, 100, 17 + 8 * i, 112) for i in range(5)]
    line2 = [Box(10 + 8 * i, 120, 17 + 8 * i, 132) for i in range(3)]
    blank = Box(60, 100, 60, 112)  # a generated space has no area
    merged = merge_lines([*line1, blank, *line2], size=(200, 200))
    assert merged == [Box(8, 98, 51, 114), Box(8, 118, 35, 134)]


def test_a_huge_page_is_rendered_under_the_pixel_cap() -> None:
    scale = page_scale(14400, 14400)  # a 5 m poster
    assert scale < SCALE and (14400 * scale) ** 2 <= MAX_PIXELS
    assert page_scale(612, 792) == SCALE


# -- the passage and what is around it -----------------------------------------------------------------------------


def test_a_text_chunk_comes_with_the_text_before_and_after_it_in_its_file(house: House) -> None:
    chunks = house.chunks("hr", "travel.md")
    assert len(chunks) >= 3
    middle = chunks[1]
    context = house.owner.passage_context("hr", middle.id)
    assert context.chunk == middle and not context.page_image
    flat = " ".join(HANDBOOK.split())
    joined = " ".join(f"{context.before} {middle.text} {context.after}".split())
    assert joined in flat  # in file order, and the overlap between chunks is not repeated
    assert context.before and context.after
    first = house.owner.passage_context("hr", chunks[0].id)
    assert first.before == "" and first.after


def test_a_pdf_chunk_says_its_page_can_be_shown(house: House) -> None:
    assert house.owner.passage_context("hr", budget_chunk(house).id).page_image


def test_the_supporting_sentence_is_the_one_the_answer_relies_on() -> None:
    passage = "Trains are booked at the desk. Hotel nights are refunded\nup to 140.5 euros. Taxis are rare."
    answer = "You book trains at the desk [1]. A hotel night is refunded up to 140.5 euros [2]."
    said = claims(answer, 2)
    assert said == ["A hotel night is refunded up to 140.5 euros [2]."]
    start, end = supporting_span(passage, said, "en")
    assert passage[start:end] == "Hotel nights are refunded\nup to 140.5 euros."  # a PDF's line break is no end
    zh = "差旅须提前申请。酒店每晚报销上限为四百元；出租车不予报销。"
    start, end = supporting_span(zh, ["酒店每晚最多报销四百元 [1]。"], "zh")
    assert zh[start:end] == "酒店每晚报销上限为四百元；"
    assert supporting_span(passage, claims(answer, 3), "en") is None


# -- who may see it ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["nobody", "asker"])
def test_without_read_the_passage_and_the_page_are_refused(house: House, who: str) -> None:
    chunk = budget_chunk(house)
    me = house.as_(who)
    with pytest.raises(PermissionDeniedError):
        me.passage_context("hr", chunk.id)
    with pytest.raises(PermissionDeniedError):
        me.citation_page("hr", "budget.pdf", 2, chunk.id)


def test_a_reader_gets_the_page_the_assistant_renders(house: House) -> None:
    chunk = budget_chunk(house)
    png = house.as_("reader").citation_page("hr", "budget.pdf", 2, chunk.id)
    assert png == render_page(kept_pdf(house), 2, chunk.text).png


def test_a_chunk_of_another_knowledge_base_or_page_is_refused(house: House) -> None:
    sales = house.chunks("sales", "targets.md")[0]
    reader = house.as_("reader")
    for call in (
        lambda: reader.passage_context("hr", sales.id),
        lambda: reader.citation_page("hr", "targets.md", 1, sales.id),
        lambda: reader.citation_page("hr", "budget.pdf", 1, budget_chunk(house).id),  # right file, wrong page
        lambda: reader.citation_page("hr", "travel.md", 2, budget_chunk(house).id),
        lambda: reader.passage_context("hr", "x" * 5000),
    ):
        with pytest.raises(KbError) as caught:
            call()
        assert not isinstance(caught.value, PermissionDeniedError)
    with pytest.raises(PermissionDeniedError):  # and reading sales through its own name needs a grant there
        reader.passage_context("sales", sales.id)


# -- the route -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(house: House) -> Iterator[str]:
    with serving(house.owner.settings, house.owner) as url:
        yield url


def get(house: House, api: str, who: str | None, path: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {house.keys[who]}"} if who else {}
    return httpx.get(api + path, headers=headers, timeout=60)


@pytest.mark.slow
def test_the_route_serves_the_marked_page_to_a_reader_only(house: House, api: str) -> None:
    chunk = budget_chunk(house)
    path = page_url("hr", "budget.pdf", 2, chunk.id)
    served = get(house, api, "reader", path)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content == render_page(kept_pdf(house), 2, chunk.text).png
    assert "no-store" in served.headers["cache-control"]
    assert get(house, api, None, path).status_code == 401
    for who in ("asker", "nobody"):
        refused = get(house, api, who, path)
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "PermissionDeniedError"
    other = get(house, api, "reader", page_url("hr", "targets.md", 1, house.chunks("sales", "targets.md")[0].id))
    assert other.status_code == 422 and "no passage" in other.json()["error"]["message"]
    for bad in ("-1", "0", "two", "99999999999"):  # this route's refusal, not the page's 404 behind it
        malformed = get(house, api, "reader", f"/api/kb/hr/documents/budget.pdf/pages/{bad}.png?chunk={chunk.id}")
        assert malformed.status_code == 422 and malformed.json()["error"]["type"] == "RequestValidationError"


@pytest.mark.slow
@pytest.mark.parametrize(
    "source",
    ["../../../outside.pdf", "%2e%2e/%2e%2e/%2e%2e/outside.pdf", "/etc/passwd", "budget.pdf/../../outside.pdf"],
)
def test_a_hostile_source_in_the_route_never_reads_outside_kb_home(house: House, api: str, source: str) -> None:
    home = house.owner.settings.home
    for depth in (1, 2):  # a PDF wherever the name could lead, outside KB_HOME
        target = home.joinpath(*[".."] * depth, "outside.pdf").resolve()
        if home.resolve() not in target.parents:
            target.write_bytes(pdf_bytes([["Outside the knowledge base."]]))
    chunk = budget_chunk(house)
    path = f"/api/kb/hr/documents/{source}/pages/2.png?chunk={chunk.id}"
    refused = get(house, api, "reader", path)
    assert refused.status_code in (404, 422), refused.text
    assert not refused.content.startswith(b"\x89PNG")


# -- the panel -----------------------------------------------------------------------------------------------------


def test_markers_become_links_to_their_turn_and_number() -> None:
    assert cite_link(3, 2) == "[\\[2\\]](#cite-3-2)"
    text = "Hotels up to 140 euros [1][2]. Escaped \\[3\\] and a link [4](#x) stay."
    assert link_markers(text, 0) == (
        "Hotels up to 140 euros [\\[1\\]](#cite-0-1)[\\[2\\]](#cite-0-2). Escaped \\[3\\] and a link [4](#x) stay."
    )


def test_the_panel_escapes_document_text_and_names() -> None:
    hostile = '<img src=x onerror="alert(1)">'
    chunk = StoredChunk(
        "c-1",
        f"Trains are slow. Hotels cost 140 euros. <script>alert(1)</script> {hostile}",
        f"{hostile}.pdf",
        1,
        0,
        9,
        0.0,
    )
    shown = [
        passage_html(
            PassageContext(chunk, "<b>before</b>", hostile, page_image=False), "Hotels cost 140 euros [1].", 1
        ),
        page_html(PassageContext(chunk, "", "", page_image=True), 'k"b<'),
    ]
    assert not any(tag in "".join(shown) for tag in ("<script", "<img src=x", "<b>", 'k"b'))
    assert "<mark>Hotels cost 140 euros.</mark>" in shown[0]
    assert "&lt;script&gt;" in shown[0] and "/api/kb/k%22b%3C/documents/" in shown[1]
    citation = {"n": 1, "source": f"{hostile}.pdf", "page": 1, "heading": "**bold** [x](http://remote.example)"}
    shown_header = header(citation, "[kb](http://remote.example)")
    for text in (citation["source"], citation["heading"], "[kb](http://remote.example)"):
        assert escape_markdown(text) in shown_header


@pytest.fixture(scope="module")
def panel(house: House) -> CitationPanel:
    with gr.Blocks():
        kept = gr.State(None)
        return CitationPanel(house.owner, kept)


def record_turn(house: House, who: str) -> str:
    """A kept conversation of ``who`` whose one turn cites the training-budget chunk ([1]) and left travel.md
    uncited, as the chat records it (an asker's citations carry no text)."""
    me = house.as_(who)
    reads = me.role("hr") >= Role.READ
    budget, travel = budget_chunk(house), house.chunks("hr", "travel.md")[0]

    def cite(n: int, c: StoredChunk) -> Citation:
        return Citation(n, c.source, c.page, c.text if reads else "", 0.9, c.heading, c.id, "hr")

    conversation = me.conversations.start("hr")
    text = "Each engineer gets a training budget of 910 euros a year [1]."
    answer = Answer(text, "en", [cite(1, budget)], uncited=[cite(2, travel)])
    me.conversations.record(conversation.id, "What is the training budget?", answer)
    return conversation.id


def test_the_panel_shows_a_reader_the_passage_marked_and_the_page(house: House, panel: CitationPanel) -> None:
    kept = record_turn(house, "reader")
    column, header, passage, page, uncited = panel.open("0-1", kept, gr.Request(username="reader"))
    assert column["visible"] is True
    assert "budget\\.pdf" in header and "page 2" in header and header.endswith("知识库: hr")
    assert re.search(r"<mark>[^<]*910 euros[^<]*</mark>", passage)
    src = re.fullmatch(r'<a href="([^"]+)" [^>]+><img id="citation-image" src="([^"]+)" alt="[^"]+" [^>]+></a>', page)
    assert src and src.group(1) == src.group(2) == html.escape(page_url("hr", "budget.pdf", 2, budget_chunk(house).id))
    assert "travel\\.md" in uncited and "Trains are booked" in uncited


def test_the_panel_shows_an_asker_file_and_page_only(house: House, panel: CitationPanel) -> None:
    kept = record_turn(house, "asker")
    _, header, passage, page, uncited = panel.open("0-1", kept, gr.Request(username="asker"))
    assert "budget\\.pdf" in header and "page 2" in header
    assert passage == ASK_ONLY and page == ""
    assert "910" not in passage + page + uncited and "travel\\.md" in uncited and "Trains" not in uncited


def test_the_panel_opens_only_the_visitors_own_citations(house: House, panel: CitationPanel) -> None:
    theirs = record_turn(house, "reader")
    for target, kept, who in (
        ("0-1", theirs, "asker"),  # another user's conversation: as if it did not exist
        ("0-7", theirs, "reader"),  # no such citation
        ("5-1", theirs, "reader"),  # no such turn
        ("0-1<img src=x>", theirs, "reader"),
        ("0-1", None, "reader"),
    ):
        _, header, passage, page, _ = panel.open(target, kept, gr.Request(username=who))
        assert header.startswith("⚠️") and passage == page == "", (target, who)
