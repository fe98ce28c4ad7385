"""Property-based tests over the whole OpenAPI schema (schemathesis): every operation, fed generated valid and
invalid requests, answers without a server error and within what /openapi.json says (status, content type,
body schema).

The server is the real one (``build_app``) on 127.0.0.1 with sign-in on and a real admin key, over a tiny knowledge
base. Chat completions get a handful of examples only: a generated ``model`` almost never names the knowledge base,
so they exercise the request checks and refusals without loading the model; answers themselves (slow on two cores)
are tested in tests/test_api.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from kb_app.assistant import Assistant
from kb_app.server import build_app
from kb_app.settings import load_settings
from tests.servers import free_port

pytestmark = pytest.mark.slow

EXAMPLES = 20
API = {
    "GET /v1/models",
    "POST /v1/chat/completions",
    "POST /v1/embeddings",
    "GET /api/kb",
    "POST /api/kb/{name}/documents",
    "GET /api/kb/{name}/documents",
    "DELETE /api/kb/{name}/documents/{source}",
    "POST /api/kb/{name}/search",
}
CHAT_EXAMPLES = 5


@dataclass
class Target:
    base_url: str
    key: str


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    home = tmp_path_factory.mktemp("schema") / "kb_home"
    overrides = {"auth.enabled": True, "ui.max_files_per_upload": 3, "max_file_mb": 1, "ui.max_embedding_inputs": 4}
    app_settings = load_settings(home=home, **overrides)
    assistant = Assistant(app_settings)
    doc = tmp_path_factory.mktemp("docs") / "tiny.md"
    doc.write_text("# Tiny\n\nThe tiny knowledge base holds one sentence about lighthouses.\n")
    assert not assistant.ingest([doc], kb="tiny").failed
    assistant.accounts.add_user("admin", "a long enough password", admin=True)
    key = assistant.accounts.create_key("admin")[1]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(app_settings, assistant), host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the kb server did not start within 60 s"
        time.sleep(0.05)
    try:
        yield Target(f"http://127.0.0.1:{port}", key)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def api_schema(target: Target):
    return schemathesis.openapi.from_url(f"{target.base_url}/openapi.json")


HYPOTHESIS = {"deadline": None, "derandomize": True, "suppress_health_check": list(HealthCheck), "database": None}


@pytest.mark.parametrize(
    ("mode", "kb"),
    [(GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None), (GenerationMode.POSITIVE, "tiny")],
    ids=["positive", "negative", "on-tiny"],
)
def test_every_operation_answers_within_its_schema(
    api_schema, target: Target, mode: GenerationMode, kb: str | None
) -> None:
    """schemathesis' default checks on every operation: no 5xx, a documented status and content type, a body that
    matches its schema, invalid data refused with a 4xx. Not "schema-valid data is accepted": kb refuses some
    schema-valid requests by design, with a documented 413 or 422 (a knowledge-base name with '..', a question over
    ui.max_question_chars, a conversation that does not end with the user's question), rules that live in the
    settings and in ``ingest.kb_names``, not in JSON Schema. A generated name almost never names a knowledge base,
    so a third run fixes ``{name}`` to the tiny one: its successful answers are checked against their schemas too.
    Chat completions are left out of that run: every example would load and run the model."""
    auth = {"Authorization": f"Bearer {target.key}"}
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation in operations:
        examples = CHAT_EXAMPLES if operation.path == "/v1/chat/completions" else EXAMPLES
        if kb and "{name}" not in operation.path:
            continue
        fixed = {"name": kb} if kb else None

        @given(case=operation.as_strategy(mode, headers=auth, path_parameters=fixed))
        @settings(max_examples=examples, **HYPOTHESIS)
        def check(case) -> None:
            case.call_and_validate(base_url=target.base_url, headers=auth, excluded_checks=[positive_data_acceptance])

        try:
            check()
        except Unsatisfiable:  # negative mode: nothing in this operation can violate its schema (string paths only)
            assert mode == GenerationMode.NEGATIVE, operation.label
        except Exception as error:  # every operation is run, and every failure reported
            failures[operation.label] = str(error)[:3000]
    assert {operation.label for operation in operations} >= API
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
