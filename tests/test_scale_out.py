"""Scale-out by settings alone: a real ``chroma run`` server (``store.mode: http``) and a real OpenAI-compatible
model server (llama.cpp's, ``llm.backend: openai``), both on 127.0.0.1, and the end-to-end checks of
``tests/test_end_to_end.py`` run against them unchanged.

One Chroma server and one model server serve the whole module. The test that two processes write to the same
Chroma server runs its writers as child processes (this file run as a script with one JSON argument), as
``tests/test_concurrency.py`` does; the embedded store refuses exactly that while ``kb serve`` holds it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a child script
    sys.path.insert(0, str(ROOT))

from ingest.kb_names import kb_id  # noqa: E402
from kb_app.assistant import Assistant  # noqa: E402
from kb_app.models.factory import resolve_gguf  # noqa: E402
from kb_app.models.openai_compatible import OpenAICompatibleModel  # noqa: E402
from kb_app.settings import LlmSettings, load_settings  # noqa: E402
from tests.children import ScriptChild  # noqa: E402
from tests.servers import KEY, N_CTX, ChromaServer, LlamaServer, free_port  # noqa: E402
from tests.test_concurrency import _state, assert_all_findable, make_notes  # noqa: E402

# The end-to-end checks, collected again here against the servers (the model re-read is left out: a chat API
# cannot score a given reply, so ``rerank.model_passages`` does not run with the openai backend).
from tests.test_end_to_end import (  # noqa: E402, F401
    corpus,
    test_chinese_question_cites_the_right_file,
    test_cli_ask_json,
    test_english_question_cites_the_right_file_and_page,
    test_follow_up_question_is_condensed_with_its_history,
    test_question_outside_the_knowledge_base_is_refused,
    test_streaming_yields_text_before_the_answer,
    test_the_model_check_reads_the_passages,
)

pytestmark = pytest.mark.slow

KB = "notes"


def scale_out(chroma_port: int, base_url: str) -> dict[str, object]:
    """The settings that move kb onto the two servers, as ``load_settings`` overrides."""
    return {
        "store.mode": "http",
        "store.host": "127.0.0.1",
        "store.port": chroma_port,
        "llm.backend": "openai",
        "llm.base_url": base_url,
        "llm.api_key": KEY,
        "llm.n_ctx": N_CTX,
    }


# --- the child process --------------------------------------------------------------------------------------------


def wait_file(path: str) -> None:
    while not Path(path).exists():
        time.sleep(0.05)


def child_main(args: dict) -> None:
    """A writer on the shared Chroma server: ``serve`` holds the store as ``kb serve`` does, ingests, then reports
    what it sees once the other writer is done; ``writer`` ingests at the same moment."""
    settings = load_settings(home=args["home"], kb=KB, **args["settings"])
    assistant = Assistant(settings)
    if args["role"] == "serve":
        assistant.hold_store()
    assistant.knowledge_base()
    print("READY", flush=True)
    wait_file(args["go"])
    report = assistant.ingest([Path(args["folder"])])
    print("DONE " + json.dumps([f.status for f in report.files]), flush=True)
    if args["role"] == "serve":
        wait_file(args["other_done"])
        print("STATE " + json.dumps(_state(assistant)), flush=True)


# --- the test side ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChromaServer, LlamaServer]]:
    logs = tmp_path_factory.mktemp("server-logs")
    gguf = resolve_gguf(LlmSettings(), load_settings().cache_dir)
    chroma = ChromaServer(tmp_path_factory.mktemp("chroma-server"), free_port(), logs / "chroma.log")
    # kb sends temperature and max_tokens only; llama.cpp's server adds a repeat penalty of 1.1 over the last 64
    # tokens (in-process: none), which turned the default model's Chinese answer from 10月9日 to 10月5日.
    model = LlamaServer(gguf, free_port(), logs / "llama.log", "--last_n_tokens_size", "0")
    try:
        yield chroma.start(), model.start()
    finally:
        model.kill()
        chroma.kill()


@pytest.fixture(scope="module")
def overrides(servers: tuple[ChromaServer, LlamaServer]) -> dict[str, object]:
    chroma, model = servers
    return scale_out(chroma.port, model.base_url)


@pytest.fixture(autouse=True)
def scale_out_env(overrides: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same settings as environment variables, for the checks that run the ``kb`` command."""
    for key, value in overrides.items():
        monkeypatch.setenv("KB_" + key.replace(".", "__").upper(), str(value))


@pytest.fixture(scope="module")
def assistant(
    corpus: Path,  # noqa: F811 (test_end_to_end's fixture)
    servers: tuple[ChromaServer, LlamaServer],
    overrides: dict,
    tmp_path_factory: pytest.TempPathFactory,
) -> Assistant:
    """test_end_to_end's assistant, moved onto the servers by settings alone."""
    home = tmp_path_factory.mktemp("home")
    assistant = Assistant(load_settings(home=home, **overrides))
    report = assistant.ingest([corpus])
    assert not report.failed, report.failed
    assert len(report.by_status("added")) == 4
    assert isinstance(assistant.model(), OpenAICompatibleModel)
    assert not assistant.settings.chroma_dir.exists(), "vectors were written to the embedded store"
    assert any(servers[0].path.iterdir()), "the Chroma server holds nothing"
    return assistant


def test_the_vectors_live_on_the_chroma_server(assistant: Assistant, overrides: dict) -> None:
    """A second, fresh client of the server (another machine, as far as it knows) sees the ingested chunks."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    quiet = ChromaSettings(anonymized_telemetry=False)
    client = chromadb.HttpClient(host="127.0.0.1", port=int(overrides["store.port"]), settings=quiet)
    chunks = sum(len(r.chunk_ids) for r in assistant.files())
    assert chunks > 0
    assert client.get_collection(kb_id(assistant.settings.kb)).count() == chunks


class Writer(ScriptChild):
    def __init__(self, **args: object) -> None:
        super().__init__(__file__, **args)

    def json(self, prefix: str, timeout: float = 300.0):
        return super().json(prefix, timeout)


def test_two_processes_write_to_one_chroma_server(tmp_path: Path, overrides: dict) -> None:
    """A serving process and a second writer ingest into the same knowledge base at the same moment: neither is
    refused, and both the server's long-lived view and a fresh process find every note of both by its own word
    and its own vector (the embedded store refuses the second writer: tests/test_concurrency.py)."""
    home, go, other_done = tmp_path / "home", tmp_path / "go", tmp_path / "other-done"
    served_names = make_notes(tmp_path / "a", 4)
    written_names = make_notes(tmp_path / "b", 4, first=4)
    common = {"home": home, "go": go, "settings": overrides}
    server = Writer(role="serve", folder=tmp_path / "a", other_done=other_done, **common)
    writer = Writer(role="writer", folder=tmp_path / "b", **common)
    server.wait_for("READY")
    writer.wait_for("READY")
    go.touch()
    assert writer.json("DONE") == ["added"] * 4
    writer.end()
    assert server.json("DONE") == ["added"] * 4
    other_done.touch()
    served_view = server.json("STATE")
    server.end()
    names = served_names + written_names
    assert_all_findable(served_view, names)
    assert_all_findable(_state(Assistant(load_settings(home=home, kb=KB, **overrides))), names)


if __name__ == "__main__":
    child_main(json.loads(sys.argv[1]))
