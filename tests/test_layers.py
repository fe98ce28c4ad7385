"""The house is one-way: ``ingest`` (load → split → embed → store) never imports ``kb_app``; the application
package sets its offline switches before any library reads them; the public surface imports cleanly."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_ingest_never_imports_kb_app() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m.split(".")[0] == "kb_app")
        for path in (ROOT / "ingest").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_layer_test_sees_an_upward_import(tmp_path: Path) -> None:
    """The check above would catch the import it forbids (a guard that cannot fail guards nothing)."""
    planted = tmp_path / "bad.py"
    planted.write_text("from kb_app.settings import Settings\nimport kb_app.errors\n", encoding="utf-8")
    assert {"kb_app.settings", "kb_app.errors"} <= imported_modules(planted)


def test_retrieval_does_not_import_chat() -> None:
    """``chat`` builds on ``retrieval``; the shared language detection is a leaf (``kb_app.language``)."""
    for path in (ROOT / "kb_app" / "retrieval").rglob("*.py"):
        assert not [m for m in imported_modules(path) if m.startswith("kb_app.chat")], path


def run_python(code: str) -> str:
    env_clean = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env_clean, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_offline_switches_are_set_before_gradio_imports_huggingface_hub() -> None:
    """Audit L1: huggingface_hub reads HF_HUB_OFFLINE once, at import; gradio imports it first."""
    out = run_python(
        "import kb_app.ui.web, huggingface_hub.constants as c, os;"
        "print(c.HF_HUB_OFFLINE, c.HF_HUB_DISABLE_TELEMETRY, os.environ['GRADIO_ANALYTICS_ENABLED'],"
        " os.environ['ANONYMIZED_TELEMETRY'])"
    )
    assert out == "True True False False"


def test_ingest_imports_alone() -> None:
    """``ingest`` stands on its own: importing it pulls in nothing of the application."""
    out = run_python(
        "import sys, ingest.pipeline, ingest.sync, ingest.catalog;"
        "print(any(m.startswith('kb_app') for m in sys.modules))"
    )
    assert out == "False"


def test_the_public_surface_is_what_all_says() -> None:
    """A script writes ``kb_app.Assistant(kb_app.load_settings()).ask(...)``; each name in ``__all__`` resolves."""
    import kb_app

    assert sorted(kb_app.__all__) == ["Answer", "Assistant", "Citation", "KbError", "Settings", "load_settings"]
    for name in kb_app.__all__:
        assert getattr(kb_app, name).__name__ == name


def test_importing_the_page_writes_nothing_into_the_package() -> None:
    """A Gradio component subclass makes Gradio write a ``.pyi`` beside its module at import, which fails on a
    read-only install; the page must not define one."""
    run_python("import kb_app.ui.web")
    assert not list((ROOT / "kb_app").rglob("*.pyi"))
