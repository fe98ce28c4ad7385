"""Shared fixtures: every test gets its own KB_HOME; nothing from the developer's environment leaks in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kb_app.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KB_* variable or config file of the developer's may change what a test sees."""
    for key in list(os.environ):
        if key.startswith("KB_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a temporary KB_HOME; the model cache stays shared so the GGUF is assembled once."""
    return load_settings(home=tmp_path / "kb_home")


def write(folder: Path, name: str, text: str) -> Path:
    """A UTF-8 text file ``name`` in ``folder`` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing: the suite reads sample documents from ../shared beside the checkout")
    return path
