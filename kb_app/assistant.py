"""The application object: builds every stage from one ``Settings`` and hands them to the CLI and the UI."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path

from ingest.embedders import Embedder, build_embedder
from ingest.knowledge_base import KnowledgeBase
from ingest.loaders import LoaderRegistry
from ingest.manifest import FileRecord
from ingest.pipeline import Ingestor, IngestReport, ProgressCallback, expand_paths
from ingest.splitter import RecursiveSplitter
from ingest.vector_store import delete_knowledge_base, list_knowledge_bases, make_client
from kb_app.chat.pipeline import Answer, ChatPipeline
from kb_app.chat.prompt import PromptBuilder
from kb_app.chat.refusal import build_evidence_check
from kb_app.errors import KnowledgeBaseNotFoundError
from kb_app.models.base import ChatModel, Message
from kb_app.models.factory import build_chat_model
from kb_app.retrieval.base import Hit, Retriever
from kb_app.retrieval.factory import build_retriever
from kb_app.settings import RetrievalSettings, Settings

# Nothing kb runs may reach a model hub or send telemetry; fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


class Assistant:
    """Heavy parts (embedder, Chroma client, model) are created on first use and shared."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._kbs: dict[str, KnowledgeBase] = {}
        self._model: ChatModel | None = None
        self._lock = threading.RLock()
        self._ingest_lock = threading.Lock()  # one ingest at a time; chat is never blocked by it

    @cached_property
    def embedder(self) -> Embedder:
        return build_embedder(self.settings.embedding)

    @cached_property
    def client(self):
        return make_client(self.settings.store, self.settings.chroma_dir)

    @cached_property
    def registry(self) -> LoaderRegistry:
        return LoaderRegistry(max_file_mb=self.settings.max_file_mb)

    def model(self) -> ChatModel:
        with self._lock:
            if self._model is None:
                self._model = build_chat_model(self.settings.llm, self.settings.cache_dir)
            return self._model

    def knowledge_base(self, name: str | None = None, create: bool = True) -> KnowledgeBase:
        name = name or self.settings.kb
        with self._lock:
            if name not in self._kbs:
                if not create and name not in self.list_knowledge_bases():
                    raise KnowledgeBaseNotFoundError(
                        f"there is no knowledge base named '{name}'",
                        "ingest files into it first (`kb ingest PATH --kb NAME`) or see `kb list`",
                    )
                self._kbs[name] = KnowledgeBase.open(self.settings, self.client, self.embedder.name, name)
            return self._kbs[name]

    def list_knowledge_bases(self) -> list[str]:
        return list_knowledge_bases(self.client)

    def delete_knowledge_base(self, name: str) -> None:
        import shutil

        with self._lock:
            kb = self._kbs.pop(name, None)
            if kb:
                kb.manifest.close()
            delete_knowledge_base(self.client, name)
            shutil.rmtree(self.settings.kb_dir(name), ignore_errors=True)

    def files(self, kb: str | None = None) -> list[FileRecord]:
        return self.knowledge_base(kb).manifest.all()

    def ingest(
        self, paths: Iterable[Path], kb: str | None = None, progress: ProgressCallback | None = None
    ) -> IngestReport:
        knowledge_base = self.knowledge_base(kb)
        ingestor = Ingestor(self.registry, RecursiveSplitter(self.settings.splitter), self.embedder, knowledge_base)
        files = list(expand_paths(Path(p) for p in paths))
        with self._ingest_lock:
            return ingestor.ingest(files, progress) if progress else ingestor.ingest(files)

    def retriever(self, kb: str | None = None, retrieval: RetrievalSettings | None = None) -> Retriever:
        """The configured retriever over ``kb``; ``retrieval`` overrides the settings (``kb eval`` compares modes)."""
        return build_retriever(
            retrieval or self.settings.retrieval,
            self.embedder,
            self.knowledge_base(kb, create=False),
            self.settings.rerank,
            model=self.model,
            reading_prompt=PromptBuilder(self.settings.prompts_dir).question_likelihood,
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
