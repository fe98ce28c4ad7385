"""The application object and the only door: the CLI, the page and the API call its verbs and only format.

It builds every stage from one ``Settings`` (or takes the heavy parts it is given: ``Assistant(settings,
embedder=..., model=...)``), checks every knowledge-base name before it touches a path, and is the one place a
permission check will live.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from functools import cached_property
from pathlib import Path

from ingest.catalog import Catalog
from ingest.embedders import Embedder, build_embedder
from ingest.kb_names import check_name
from ingest.knowledge_base import KnowledgeBase, embedded_store_lock
from ingest.loaders import LoaderRegistry
from ingest.locks import no_notice
from ingest.manifest import FileRecord
from ingest.pipeline import Ingestor, IngestReport, ProgressCallback, expand_paths
from ingest.splitter import RecursiveSplitter
from ingest.sync import sync_folder, watch_folder
from ingest.vector_store import make_client
from kb_app.chat.pipeline import Answer, ChatPipeline
from kb_app.chat.prompt import PromptBuilder
from kb_app.chat.refusal import build_evidence_check
from kb_app.errors import KbError, KnowledgeBaseBusyError, KnowledgeBaseNotFoundError
from kb_app.models.base import Capabilities, ChatModel, Message
from kb_app.models.factory import backend_capabilities, build_chat_model, capabilities_of
from kb_app.retrieval.base import Hit, Retriever
from kb_app.retrieval.factory import build_retriever
from kb_app.settings import RetrievalSettings, Settings


def _no_progress(fraction: float, message: str) -> None:
    return None


class Assistant:
    """Heavy parts (embedder, Chroma client, model) are created on first use and shared, unless given."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        model: ChatModel | None = None,
        client=None,
    ) -> None:
        self.settings = settings
        self._kbs: dict[str, KnowledgeBase] = {}
        self._model = model
        self._lock = threading.RLock()
        self._ingest_lock = threading.Lock()  # one ingest at a time; chat is never blocked by it
        if embedder is not None:
            self.__dict__["embedder"] = embedder
        if client is not None:
            self.__dict__["client"] = client

    # -- parts -----------------------------------------------------------------------------------------------

    @cached_property
    def embedder(self) -> Embedder:
        return build_embedder(self.settings.embedding)

    @cached_property
    def client(self):
        return make_client(self.settings.store, self.settings.chroma_dir)

    @cached_property
    def registry(self) -> LoaderRegistry:
        return LoaderRegistry(max_file_mb=self.settings.max_file_mb)

    @cached_property
    def catalog(self) -> Catalog:
        catalog = Catalog(self.settings.kbs_dir, self.client)
        catalog.sweep()
        return catalog

    def model(self) -> ChatModel:
        with self._lock:
            if self._model is None:
                self._model = build_chat_model(self.settings.llm, self.settings.cache_dir)
            return self._model

    def model_capabilities(self) -> Capabilities:
        """What the model can do, without loading it: the given model's, else the configured backend's."""
        return capabilities_of(self._model) if self._model is not None else backend_capabilities(self.settings.llm)

    def hold_store(self, notice: Callable[[str], None] = no_notice) -> None:
        """Called once by ``kb serve``: hold the embedded Chroma store for this process's lifetime, so that a write
        from another process is refused at once instead of going stale or lost (embedded Chroma is one process
        only). Nothing is held with ``store.mode: http``: a Chroma server takes writers from many processes.
        An ingest already writing from another process is waited for (``notice`` says so)."""
        store = embedded_store_lock(self.client)
        if store is not None:
            store.hold(self.settings.ingest.lock_wait_s, notice)

    # -- knowledge bases -------------------------------------------------------------------------------------

    def knowledge_base(self, name: str | None = None, create: bool = True) -> KnowledgeBase:
        """The open knowledge base ``name`` (default: settings.kb); ``create=False`` refuses one that is not there."""
        name = check_name(name or self.settings.kb)  # before anything touches a path; one key per knowledge base
        directory = self.catalog.directory(name)
        with self._lock:
            if name not in self._kbs:
                if not self.catalog.exists(name):
                    if not create:
                        raise KnowledgeBaseNotFoundError(
                            f"there is no knowledge base named '{name}'",
                            "ingest files into it first (`kb ingest PATH --kb NAME`) or see `kb list`",
                        )
                    with self._store_writable():  # no empty knowledge base left behind a refused write
                        self.catalog.create(name)
                self._kbs[name] = KnowledgeBase.open(directory, self.client, self.embedder.name, name)
            return self._kbs[name]

    def _store_writable(self) -> AbstractContextManager[None]:
        """Refuses at once while a ``kb serve`` in another process holds the embedded store."""
        store = embedded_store_lock(self.client)
        return store.shared() if store is not None else nullcontext()

    def list_knowledge_bases(self) -> list[str]:
        return self.catalog.names()

    def has_knowledge_base(self, name: str) -> bool:
        """Whether ``name`` exists; :class:`KnowledgeBaseNameError` if it is not a name kb accepts."""
        return self.catalog.exists(name)

    def delete_knowledge_base(self, name: str) -> bool:
        """Delete a whole knowledge base (vectors, index, manifest; never the user's files). False if none.

        Waits for a writer in another process like any writer does, without holding the lock that chat needs to
        open knowledge bases; the open handle is closed and forgotten only once the delete can go ahead.
        """
        if not self.has_knowledge_base(name):
            return False
        if not self._ingest_lock.acquire(blocking=False):
            raise KnowledgeBaseBusyError(
                "files are being ingested right now", "delete the knowledge base when the ingest has finished"
            )
        try:
            kb = self.knowledge_base(name, create=False)
            with self._writing(kb):
                with self._lock:
                    self._kbs.pop(kb.name, None)
                kb.close()
                return self.catalog.delete(name)
        finally:
            self._ingest_lock.release()

    # -- documents -------------------------------------------------------------------------------------------

    def files(self, kb: str | None = None) -> list[FileRecord]:
        return self.knowledge_base(kb, create=False).manifest.all()

    def failures(self, kb: str | None = None) -> list[FileRecord]:
        """Files that could not be read, each with its reason."""
        return self.knowledge_base(kb, create=False).manifest.failures()

    def _writing(self, knowledge_base: KnowledgeBase, progress: ProgressCallback = _no_progress):
        """The knowledge base's writer lock; waiting for another process shows in the progress message."""
        return knowledge_base.writing(self.settings.ingest.lock_wait_s, lambda message: progress(0.0, message))

    def _ingestor(self, knowledge_base: KnowledgeBase) -> Ingestor:
        splitter = RecursiveSplitter(self.settings.splitter)
        return Ingestor(self.registry, splitter, self.embedder, knowledge_base, self.settings.ingest)

    def ingest(
        self, paths: Iterable[Path], kb: str | None = None, progress: ProgressCallback = _no_progress
    ) -> IngestReport:
        knowledge_base = self.knowledge_base(kb)
        files = list(expand_paths(Path(p) for p in paths))
        with self._ingest_lock:  # the Ingestor takes the writer lock itself
            return self._ingestor(knowledge_base).ingest(files, progress)

    def sync(self, folder: Path, kb: str | None = None, progress: ProgressCallback = _no_progress) -> IngestReport:
        """Make ``kb`` match ``folder``: add new files, re-ingest changed ones, remove deleted ones."""
        knowledge_base = self.knowledge_base(kb)
        with self._ingest_lock, self._writing(knowledge_base, progress):
            return sync_folder(self._ingestor(knowledge_base), knowledge_base, Path(folder), progress)

    def watch(
        self,
        folder: Path,
        on_report: Callable[[IngestReport], None],
        kb: str | None = None,
        interval_s: float = 5.0,
        stop: threading.Event | None = None,
    ) -> None:
        """Sync ``folder`` every ``interval_s`` seconds until ``stop`` is set (or Ctrl-C)."""
        self.knowledge_base(kb)
        watch_folder(lambda: self.sync(folder, kb), on_report, interval_s, stop)

    def remove_file(self, source: str, kb: str | None = None) -> None:
        """Remove one file and its chunks; :class:`KbError` if the knowledge base does not hold it."""
        knowledge_base = self.knowledge_base(kb, create=False)
        with self._ingest_lock, self._writing(knowledge_base):
            if not knowledge_base.remove_file(source):
                raise KbError(
                    f"'{source}' is not in the knowledge base '{knowledge_base.name}'", "`kb files` lists what is there"
                )

    # -- questions -------------------------------------------------------------------------------------------

    def retriever(self, kb: str | None = None, retrieval: RetrievalSettings | None = None) -> Retriever:
        """The configured retriever over ``kb``; ``retrieval`` overrides the settings (``kb eval`` compares modes)."""
        return build_retriever(
            retrieval or self.settings.retrieval,
            self.embedder,
            self.knowledge_base(kb, create=False),
            self.settings.rerank,
            model=self.model,
            reading_prompt=PromptBuilder(self.settings.prompts_dir).question_likelihood,
            capabilities=self.model_capabilities(),
        )

    def search(self, query: str, kb: str | None = None, k: int | None = None) -> list[Hit]:
        return self.retriever(kb).retrieve(query, k or self.settings.retrieval.top_k)

    def pipeline(self, kb: str | None = None, retrieval: RetrievalSettings | None = None) -> ChatPipeline:
        retrieval = retrieval or self.settings.retrieval
        prompts = PromptBuilder(self.settings.prompts_dir)
        return ChatPipeline(
            retriever=self.retriever(kb, retrieval),
            model=self.model,
            prompts=prompts,
            evidence=build_evidence_check(self.settings.refusal, self.model, prompts),
            retrieval=retrieval,
            llm=self.settings.llm,
            chat=self.settings.chat,
        )

    def stream(
        self, question: str, kb: str | None = None, history: list[Message] | None = None
    ) -> Iterator[str | Answer]:
        return self.pipeline(kb).stream(question, history)

    def ask(self, question: str, kb: str | None = None, history: list[Message] | None = None) -> Answer:
        return self.pipeline(kb).ask(question, history)
