"""The application object and the only door: the CLI, the page and the API call its verbs and only format.

It builds every stage from one ``Settings`` (or takes the heavy parts it is given: ``Assistant(settings,
embedder=..., model=...)``), checks every knowledge-base name before it touches a path, and checks permission
before it opens a knowledge base. ``Assistant(settings)`` acts as the machine's owner (the CLI);
``assistant.as_user(user)`` is the same assistant acting for one signed-in user (the page, the API): it shares
every heavy part and opens only the knowledge bases that user holds a grant on.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
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
from kb_app.access.accounts import Accounts
from kb_app.access.policy import Policy
from kb_app.access.roles import OWNER, Role, User
from kb_app.access.store import AccessStore
from kb_app.chat.conversations import Conversations, ConversationStore
from kb_app.chat.pipeline import Answer, ChatPipeline
from kb_app.chat.prompt import PromptBuilder
from kb_app.chat.refusal import build_evidence_check
from kb_app.chat.turns import Turns, Waiting
from kb_app.errors import KbError, KnowledgeBaseBusyError, KnowledgeBaseNotFoundError
from kb_app.models.base import Capabilities, ChatModel, Message
from kb_app.models.factory import backend_capabilities, build_chat_model, capabilities_of
from kb_app.retrieval.base import Hit, Retriever
from kb_app.retrieval.factory import build_retriever
from kb_app.settings import RetrievalSettings, Settings


def _no_progress(fraction: float, message: str) -> None:
    return None


class _Parts:
    """The heavy, shared parts (embedder, Chroma client, model, open knowledge bases): one set per process,
    however many users the assistant acts for. Each is created on first use, unless given."""

    def __init__(self, settings: Settings, embedder: Embedder | None, model: ChatModel | None, client) -> None:
        self.settings = settings
        self.kbs: dict[str, KnowledgeBase] = {}
        self.model: ChatModel | None = model
        self.lock = threading.RLock()
        self.ingest_lock = threading.Lock()  # one ingest at a time; chat is never blocked by it
        self.turns = Turns(settings.llm.concurrent_answers)  # one line at the model for every caller
        if embedder is not None:
            self.__dict__["embedder"] = embedder
        if client is not None:
            self.__dict__["client"] = client

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

    @cached_property
    def access(self) -> AccessStore:
        return AccessStore(self.settings.access_db, self.settings.auth.session_hours)

    @cached_property
    def conversations(self) -> ConversationStore:
        return ConversationStore(self.settings.conversations_db)


class Assistant:
    """Acts for :attr:`user`: the machine's owner unless made with :meth:`as_user`."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        model: ChatModel | None = None,
        client=None,
    ) -> None:
        self.settings = settings
        self.user: User = OWNER
        self._parts = _Parts(settings, embedder, model, client)

    def as_user(self, user: User) -> Assistant:
        """This assistant acting for ``user``: the same parts, only the knowledge bases ``user`` holds a grant on."""
        view = copy.copy(self)
        view.user = user
        return view

    # -- parts -----------------------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        return self._parts.embedder

    @property
    def client(self):
        return self._parts.client

    @property
    def registry(self) -> LoaderRegistry:
        return self._parts.registry

    @property
    def catalog(self) -> Catalog:
        return self._parts.catalog

    @property
    def access(self) -> AccessStore:
        """Users, grants, keys and sessions; the server authenticates callers against it."""
        return self._parts.access

    @property
    def policy(self) -> Policy:
        return Policy(self._parts.access)

    @property
    def accounts(self) -> Accounts:
        """Users, grants and keys, as far as :attr:`user` may change them. The catalog (and with it the Chroma
        client) is opened only when a grant needs to know its knowledge base exists."""
        return Accounts(self._parts.access, self.policy, self.user, lambda kb: self.catalog.exists(kb))

    @property
    def conversations(self) -> Conversations:
        """:attr:`user`'s kept conversations (only theirs)."""
        return Conversations(self._parts.conversations, self.user.name)

    def model(self) -> ChatModel:
        with self._parts.lock:
            if self._parts.model is None:
                self._parts.model = build_chat_model(self.settings.llm, self.settings.cache_dir)
            return self._parts.model

    def model_capabilities(self) -> Capabilities:
        """What the model can do, without loading it: the given model's, else the configured backend's."""
        model = self._parts.model
        return capabilities_of(model) if model is not None else backend_capabilities(self.settings.llm)

    def hold_store(self, notice: Callable[[str], None] = no_notice) -> None:
        """Called once by ``kb serve``: hold the embedded Chroma store for this process's lifetime, so that a write
        from another process is refused at once instead of going stale or lost (embedded Chroma is one process
        only). Nothing is held with ``store.mode: http``: a Chroma server takes writers from many processes.
        An ingest already writing from another process is waited for (``notice`` says so)."""
        store = embedded_store_lock(self.client)
        if store is not None:
            store.hold(self.settings.ingest.lock_wait_s, notice)

    # -- knowledge bases -------------------------------------------------------------------------------------

    def knowledge_base(self, name: str | None = None, create: bool = True, need: Role = Role.ASK) -> KnowledgeBase:
        """The open knowledge base ``name`` (default: settings.kb), once :attr:`user` is known to hold ``need`` on it.

        ``create=False`` refuses one that is not there; a new one is created for any caller, who then holds
        ``admin`` on it. A caller without a grant is refused the same way whether it exists or not.
        """
        name = check_name(name or self.settings.kb)  # before anything touches a path; one key per knowledge base
        parts = self._parts
        with parts.lock:
            exists = self.catalog.exists(name)
            if exists or not create or name in parts.kbs:  # an open handle is checked too: it may be gone since
                self.policy.require(self.user, name, need)
            if name not in parts.kbs:
                if not exists:
                    if not create:
                        raise KnowledgeBaseNotFoundError(
                            f"there is no knowledge base named '{name}'",
                            "ingest files into it first (`kb ingest PATH --kb NAME`) or see `kb list`",
                        )
                    with self._store_writable():  # no empty knowledge base left behind a refused write
                        self.catalog.create(name)
                    self.policy.created(self.user, name)
                directory = self.catalog.directory(name)
                parts.kbs[name] = KnowledgeBase.open(directory, self.client, self.embedder.name, name)
            return parts.kbs[name]

    def _store_writable(self) -> AbstractContextManager[None]:
        """Refuses at once while a ``kb serve`` in another process holds the embedded store."""
        store = embedded_store_lock(self.client)
        return store.shared() if store is not None else nullcontext()

    def list_knowledge_bases(self) -> list[str]:
        """The knowledge bases :attr:`user` holds any grant on (all of them for an admin)."""
        return self.policy.visible(self.user, self.catalog.names())

    def role(self, name: str | None = None) -> Role | None:
        """The role :attr:`user` holds on ``name``: what the page may offer them there."""
        return self.policy.role(self.user, check_name(name or self.settings.kb))

    def has_knowledge_base(self, name: str) -> bool:
        """Whether ``name`` exists and :attr:`user` may see it; :class:`KnowledgeBaseNameError` for a bad name."""
        return self.catalog.exists(name) and self.policy.role(self.user, check_name(name)) is not None

    def delete_knowledge_base(self, name: str) -> bool:
        """Delete a whole knowledge base (vectors, index, manifest, grants; never the user's files). False if none.

        Needs ``admin`` on it. Waits for a writer in another process like any writer does, without holding the
        lock that chat needs to open knowledge bases; the open handle is closed and forgotten only once the delete
        can go ahead.
        """
        if not self.catalog.exists(name):
            if not self.user.admin:
                self.policy.require(self.user, check_name(name), Role.ADMIN)
            return False
        kb = self.knowledge_base(name, create=False, need=Role.ADMIN)
        if not self._parts.ingest_lock.acquire(blocking=False):
            raise KnowledgeBaseBusyError(
                "files are being ingested right now", "delete the knowledge base when the ingest has finished"
            )
        try:
            with self._writing(kb):
                with self._parts.lock:
                    self._parts.kbs.pop(kb.name, None)
                kb.close()
                deleted = self.catalog.delete(kb.name)
            self.policy.deleted(kb.name)
            return deleted
        finally:
            self._parts.ingest_lock.release()

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
        """Needs ``write`` on ``kb`` (or creates it)."""
        knowledge_base = self.knowledge_base(kb, need=Role.WRITE)
        files = list(expand_paths(Path(p) for p in paths))
        with self._parts.ingest_lock:  # the Ingestor takes the writer lock itself
            return self._ingestor(knowledge_base).ingest(files, progress)

    def sync(self, folder: Path, kb: str | None = None, progress: ProgressCallback = _no_progress) -> IngestReport:
        """Make ``kb`` match ``folder``: add new files, re-ingest changed ones, remove deleted ones."""
        knowledge_base = self.knowledge_base(kb, need=Role.WRITE)
        with self._parts.ingest_lock, self._writing(knowledge_base, progress):
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
        self.knowledge_base(kb, need=Role.WRITE)
        watch_folder(lambda: self.sync(folder, kb), on_report, interval_s, stop)

    def remove_file(self, source: str, kb: str | None = None) -> None:
        """Remove one file and its chunks; :class:`KbError` if the knowledge base does not hold it."""
        knowledge_base = self.knowledge_base(kb, create=False, need=Role.WRITE)
        with self._parts.ingest_lock, self._writing(knowledge_base):
            if not knowledge_base.remove_file(source):
                raise KbError(
                    f"'{source}' is not in the knowledge base '{knowledge_base.name}'", "`kb files` lists what is there"
                )

    # -- questions -------------------------------------------------------------------------------------------

    def retriever(self, kb: str | None = None, retrieval: RetrievalSettings | None = None) -> Retriever:
        """The configured retriever over ``kb``; ``retrieval`` overrides the settings (``kb eval`` compares modes).

        It hands out passage text, so it needs ``read``; answers (``ask``) are built by :meth:`pipeline`.
        """
        return self._retriever(self.knowledge_base(kb, create=False, need=Role.READ), retrieval)

    def _retriever(self, knowledge_base: KnowledgeBase, retrieval: RetrievalSettings | None) -> Retriever:
        return build_retriever(
            retrieval or self.settings.retrieval,
            self.embedder,
            knowledge_base,
            self.settings.rerank,
            model=self.model,
            reading_prompt=PromptBuilder(self.settings.prompts_dir).question_likelihood,
            capabilities=self.model_capabilities(),
        )

    def search(self, query: str, kb: str | None = None, k: int | None = None) -> list[Hit]:
        """Passages that match ``query``: needs ``read``."""
        return self.retriever(kb).retrieve(query, k or self.settings.retrieval.top_k)

    def pipeline(self, kb: str | None = None, retrieval: RetrievalSettings | None = None) -> ChatPipeline:
        """The answering pipeline over ``kb`` (``kb eval``): its answers and retriever hand out passage text, so it
        needs ``read``; :meth:`stream` and :meth:`ask` answer an ``ask``-only caller without it."""
        return self._pipeline(self.knowledge_base(kb, create=False, need=Role.READ), retrieval)

    def _pipeline(self, knowledge_base: KnowledgeBase, retrieval: RetrievalSettings | None) -> ChatPipeline:
        retrieval = retrieval or self.settings.retrieval
        prompts = PromptBuilder(self.settings.prompts_dir)
        return ChatPipeline(
            retriever=self._retriever(knowledge_base, retrieval),
            model=self.model,
            prompts=prompts,
            evidence=build_evidence_check(self.settings.refusal, self.model, prompts),
            retrieval=retrieval,
            llm=self.settings.llm,
            chat=self.settings.chat,
        )

    def stream(
        self, question: str, kb: str | None = None, history: list[Message] | None = None
    ) -> Iterator[str | Waiting | Answer]:
        """:class:`Waiting` while the question waits its turn at the model, then the answer text as it is
        generated, then the :class:`Answer`. Its citations hold passage text only for a caller with ``read``
        (``ask`` gets file, page and heading)."""
        knowledge_base = self.knowledge_base(kb, create=False, need=Role.ASK)
        reads = self.policy.allows(self.user, knowledge_base.name, Role.READ)
        pipeline = self._pipeline(knowledge_base, None)
        turns = self._parts.turns
        ticket = turns.join()
        try:
            for ahead in turns.wait(ticket):
                yield Waiting(ahead)
            for item in pipeline.stream(question, history):
                if isinstance(item, Answer) and not reads:
                    blank = [replace(c, text="") for c in item.citations]
                    item = replace(item, citations=blank, uncited=[replace(c, text="") for c in item.uncited])
                yield item
        finally:
            turns.leave(ticket)

    def chat(self, question: str, conversation: str) -> Iterator[str | Waiting | Answer]:
        """:meth:`stream` inside a kept conversation: its knowledge base, its past turns as history; the turn is
        recorded once the answer is complete."""
        conversations = self.conversations
        kept = conversations.get(conversation)
        answer = None
        for item in self.stream(question, kb=kept.kb, history=conversations.history(kept.id)):
            if isinstance(item, Answer):
                answer = item
            yield item
        if answer is not None:
            conversations.record(kept.id, question, answer)

    def ask(self, question: str, kb: str | None = None, history: list[Message] | None = None) -> Answer:
        answer = None
        for item in self.stream(question, kb, history):
            if isinstance(item, Answer):
                answer = item
        assert answer is not None, "the pipeline always ends with an Answer"
        return answer
