"""The lexical index updated in place: after adds, removals and rewrites (in this store, seen by a second store on
the same folder, or reopened from the snapshot) it answers exactly as one built from scratch on the final chunks,
and as bm25s, whose scoring it keeps; a small change never rebuilds the base; a bad snapshot or the old table
layout only costs a rebuild."""

from __future__ import annotations

import functools
import json
import random
import shutil
import sqlite3
from pathlib import Path

import bm25s
import numpy as np
import pytest

from ingest import lexical_store
from ingest.lexical_store import SNAPSHOT, TOKENIZER_VERSION, Bm25Store, tokenize

ZH = [
    "公司",
    "总部",
    "杭州",
    "员工",
    "工程师",
    "季度",
    "收入",
    "增长",
    "市场",
    "客户",
    "合同",
    "研发",
    "芯片",
    "电池",
    "汽车",
    "银行",
    "利率",
    "贷款",
    "政策",
    "法院",
    "判决",
    "医院",
    "医生",
    "药品",
    "疫苗",
    "学校",
    "学生",
    "考试",
    "教材",
    "铁路",
    "机场",
    "航班",
    "港口",
    "天气",
    "台风",
    "暴雨",
    "地震",
    "农业",
    "水稻",
    "茶叶",
    "熊猫",
    "鲸鱼",
    "森林",
    "河流",
    "山脉",
    "城市",
    "乡村",
    "博物馆",
    "图书馆",
    "音乐",
    "电影",
    "小说",
    "诗歌",
    "足球",
    "篮球",
    "奥运",
    "选举",
    "议会",
    "总统",
    "宪法",
    "税收",
    "预算",
]
EN = [
    "company",
    "founded",
    "engineers",
    "revenue",
    "quarterly",
    "market",
    "customers",
    "contract",
    "research",
    "battery",
    "vehicle",
    "bank",
    "interest",
    "loan",
    "policy",
    "court",
    "ruling",
    "hospital",
    "doctor",
    "vaccine",
    "school",
    "student",
    "exam",
    "railway",
    "airport",
    "flight",
    "harbour",
    "weather",
    "typhoon",
    "earthquake",
    "farming",
    "rice",
    "tea",
    "panda",
    "whale",
    "forest",
    "river",
    "mountain",
    "city",
    "village",
    "museum",
    "library",
    "music",
    "film",
    "novel",
    "poem",
    "football",
    "basketball",
    "olympics",
    "election",
    "parliament",
    "president",
    "constitution",
    "budget",
    "quokka",
    "wombat",
]


def chunk_text(rng: random.Random) -> str:
    """A passage of 8-30 words, some Chinese (run together, jieba cuts them), some English."""
    parts = []
    for _ in range(rng.randint(2, 5)):
        if rng.random() < 0.6:
            parts.append("".join(rng.choices(ZH, k=rng.randint(2, 8))) + "。")
        else:
            parts.append(" ".join(rng.choices(EN, k=rng.randint(2, 8))) + ".")
    return " ".join(parts)


def corpus(n: int, seed: int = 1, prefix: str = "c") -> dict[str, str]:
    rng = random.Random(seed)
    return {f"{prefix}{i:05d}": chunk_text(rng) for i in range(n)}


QUERIES = [
    "公司总部在杭州",
    "quarterly revenue of the company",
    "熊猫 鲸鱼 forest",
    "台风暴雨",
    "court ruling on the loan policy",
    "奥运足球篮球",
    "quokka",
    "宪法 税收 预算 budget",
    "医生 医生 药品",  # a repeated term counts twice, as in bm25s
    "unknownword 不存在的词",
]
TERMS = ["公司", "杭州", "revenu", "quokka", "熊猫", "missing"]


@pytest.fixture(autouse=True)
def cached_tokenize(monkeypatch: pytest.MonkeyPatch) -> None:
    """jieba once per distinct text: the stores here tokenize the same passages many times over."""
    cached = functools.lru_cache(maxsize=None)(lambda text: tuple(tokenize(text)))
    monkeypatch.setattr(lexical_store, "tokenize", lambda text: list(cached(text)))


def built_from_scratch(directory: Path, chunks: dict[str, str]) -> Bm25Store:
    store = Bm25Store(directory)
    store.update(add=list(chunks.items()))
    return store


def assert_same(store: Bm25Store, reference: Bm25Store) -> None:
    assert len(store) == len(reference) and store.ids() == reference.ids()
    for query in QUERIES:
        got, want = store.search(query, 10), reference.search(query, 10)
        assert [cid for cid, _ in got] == [cid for cid, _ in want], query
        assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-9), query
    assert store.idf(TERMS) == pytest.approx(reference.idf(TERMS), rel=1e-12)
    sample = sorted(reference.ids())[::97]
    assert store.tokens(sample) == reference.tokens(sample)
    asked = [*sample, "no-such-chunk"]
    idf, tokens = reference.idf(TERMS), reference.tokens(asked)
    from_tokens = [sum(idf[t] for t in set(TERMS).intersection(tokens.get(cid, ()))) for cid in asked]
    assert store.overlap(TERMS, asked) == pytest.approx(from_tokens, rel=1e-12)
    assert any(from_tokens) and from_tokens[-1] == 0.0


def churn(store: Bm25Store, chunks: dict[str, str], seed: int) -> dict[str, str]:
    """Remove, rewrite and add chunks in document-sized batches, as ingest does; returns the final chunks."""
    rng = random.Random(seed)
    final = dict(chunks)
    extra = corpus(600, seed=seed, prefix=f"n{seed}-")
    for start in range(0, 600, 40):
        gone = rng.sample(sorted(final), 30)
        rewritten = {cid: chunk_text(rng) for cid in rng.sample(sorted(set(final) - set(gone)), 10)}
        added = dict(list(extra.items())[start : start + 40])
        store.update(add=[*rewritten.items(), *added.items()], remove=gone)
        for cid in gone:
            del final[cid]
        final.update(rewritten)
        final.update(added)
    return final


@pytest.mark.parametrize("delta_min", [300, 100_000], ids=["merging", "delta-only"])
def test_adds_and_removes_answer_as_a_store_built_from_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delta_min: int
) -> None:
    monkeypatch.setattr(lexical_store, "DELTA_MIN", delta_min)
    chunks = corpus(2500)
    store = Bm25Store(tmp_path / "kb")
    for start in range(0, 2500, 500):  # as repair_lexical does
        store.update(add=list(chunks.items())[start : start + 500])
    reader = Bm25Store(tmp_path / "kb")  # a `kb serve` while a `kb sync` writes
    assert_same(reader, built_from_scratch(tmp_path / "first", chunks))
    final = churn(store, chunks, seed=7)
    reference = built_from_scratch(tmp_path / "reference", final)
    assert_same(store, reference)
    assert_same(reader, reference)
    if delta_min < 1000:
        assert store.builds > 2 and reader.builds == 0  # the reader mapped the writer's snapshots instead
    else:
        assert store.builds == 0
    store.close()
    assert_same(Bm25Store(tmp_path / "kb"), reference)  # from the snapshot and the rows above it


def test_scores_are_bm25s_scores(tmp_path: Path) -> None:
    chunks = corpus(1500, seed=3)
    store = Bm25Store(tmp_path / "kb")
    store.update(add=list(chunks.items()))
    final = churn(store, chunks, seed=5)
    ids = sorted(final)
    index = bm25s.BM25()  # defaults: method "lucene", k1=1.5, b=0.75
    index.index([tokenize(final[cid]) for cid in ids], show_progress=False)
    for query in QUERIES[:-1]:
        terms = [t for t in tokenize(query) if t in index.vocab_dict]
        want = index.get_scores(terms)
        got = dict(store.search(query, len(ids)))
        assert set(got) == {ids[i] for i in np.flatnonzero(want > 0)}, query
        assert [got[ids[i]] for i in np.flatnonzero(want > 0)] == pytest.approx(want[want > 0], abs=1e-4)


def test_a_small_change_after_the_snapshot_rebuilds_nothing(tmp_path: Path) -> None:
    chunks = corpus(1500)
    Bm25Store(tmp_path / "kb").update(add=list(chunks.items()))  # too few rows to merge: all in the delta
    store = Bm25Store(tmp_path / "kb")  # builds the base from the table once and snapshots it
    assert store.builds == 1
    snapshot = (tmp_path / "kb" / SNAPSHOT).stat()
    store = Bm25Store(tmp_path / "kb")
    assert store.builds == 0
    store.update(add=[("new", "鲸鱼 quokka 新闻")], remove=sorted(chunks)[:40])
    assert store.search("新闻", 5)[0][0] == "new"
    reopened = Bm25Store(tmp_path / "kb")
    assert reopened.search("新闻", 5)[0][0] == "new" and len(reopened) == 1500 - 40 + 1
    assert store.builds == reopened.builds == 0
    after = (tmp_path / "kb" / SNAPSHOT).stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (snapshot.st_ino, snapshot.st_mtime_ns, snapshot.st_size)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _scribble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:200] = b"\xff" * 200
    path.write_bytes(bytes(data))


def _out_of_range_slot(path: Path) -> None:
    """A slot past the last chunk, keeping every size right: found by the bounds check, not by a crash later."""
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16 : 16 + size])
    _, _, offset = header["arrays"]["slots"]
    start = -(-(16 + size) // 64) * 64 + offset
    data[start : start + 4] = np.int32(10**6).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("spoil", ["missing", "truncated", "scribbled", "out-of-range", "foreign"])
def test_a_bad_snapshot_falls_back_to_the_table(tmp_path: Path, spoil: str) -> None:
    chunks = corpus(800)
    built_from_scratch(tmp_path / "kb", chunks).close()
    Bm25Store(tmp_path / "kb").close()  # now with a snapshot
    path = tmp_path / "kb" / SNAPSHOT
    if spoil == "missing":
        path.unlink()
    elif spoil == "truncated":
        _truncate(path)
    elif spoil == "scribbled":
        _scribble(path)
    elif spoil == "out-of-range":
        _out_of_range_slot(path)
    else:  # another knowledge base's snapshot copied over
        other = built_from_scratch(tmp_path / "other", corpus(800, seed=9))
        other.close()
        Bm25Store(tmp_path / "other").close()
        shutil.copyfile(tmp_path / "other" / SNAPSHOT, path)
    store = Bm25Store(tmp_path / "kb")
    assert store.builds == 1
    assert_same(store, built_from_scratch(tmp_path / "reference", chunks))
    assert Bm25Store(tmp_path / "kb").builds == 0  # the rebuild wrote a good snapshot again


def test_the_old_table_layout_is_migrated(tmp_path: Path) -> None:
    chunks = corpus(600)
    directory = tmp_path / "kb"
    directory.mkdir()
    db = sqlite3.connect(str(directory / "tokens.sqlite"))
    db.execute("CREATE TABLE tokens (id TEXT PRIMARY KEY, t TEXT NOT NULL)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('tokenizer', ?)", (TOKENIZER_VERSION,))
    rows = [(cid, json.dumps(tokenize(text), ensure_ascii=False)) for cid, text in chunks.items()]
    db.executemany("INSERT INTO tokens VALUES (?, ?)", rows)
    db.commit()
    db.close()
    reference = built_from_scratch(tmp_path / "reference", chunks)
    store = Bm25Store(directory)
    assert_same(store, reference)
    db = sqlite3.connect(str(directory / "tokens.sqlite"))
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'tokens'").fetchone() == (0,)
    db.close()
    store.update(remove=["c00000"])
    reference.update(remove=["c00000"])
    assert_same(Bm25Store(directory), reference)


@pytest.mark.parametrize("seed", range(6))
def test_the_best_slots_are_found_from_block_maxima_as_from_every_score(seed: int) -> None:
    """``top_slots`` narrows a large score array by a floor taken from block maxima; it must pick exactly the
    slots a partition of every positive score picks, ties at the cut, zeros, a ragged last block and all."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(200_000, 300_000))
    scores = np.zeros(n)
    held = rng.choice(n, size=int(rng.integers(10, n // 2)), replace=False)
    scores[held] = np.round(rng.gamma(2.0, 1.0, len(held)), 1)  # rounded: many ties
    for k in (1, 10, 30, 5000, len(held) + 5):
        positive = np.flatnonzero(scores > 0)
        want = positive
        if len(positive) > k:
            kth = np.sort(scores[positive])[len(positive) - k]
            want = positive[scores[positive] >= kth]
        assert sorted(lexical_store.top_slots(scores, k).tolist()) == want.tolist(), k
    sparse = np.zeros(n)
    sparse[[3, n - 1]] = [2.0, 5.0]  # fewer blocks with a score than k: every positive one
    assert sorted(lexical_store.top_slots(sparse, 30).tolist()) == [3, n - 1]
