"""The application object and the only door: the CLI, the page and the API call its verbs and only format.

It builds every stage from one ``Settings`` (or takes the heavy parts it is given: ``Assistant(settings,
embedder=..., model=...)``), checks every knowledge-base name before it touches a path, and checks permission
before it opens a knowledge base. ``Assistant(settings)`` acts as the machine's owner (the CLI);
``assistant.as_user(user)`` is the same assistant acting for one signed-in user (the page, the API): it shares
every heavy part and opens only the knowledge bases that user holds a grant on.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from ingest.catalog import Catalog
from ingest.embed_pool import shared_embed_pool
from ingest.embedders import Embedder, build_embedder
from ingest.kb_names import check_name
from ingest.knowledge_base import KnowledgeBase, embedded_store_lock
from ingest.loaders import LoaderRegistry
from ingest.locks import no_notice
from ingest.manifest import FileRecord
from ingest.pipeline import FileOutcome, Ingestor, IngestReport, ProgressCallback, expand_paths
from ingest.splitter import RecursiveSplitter
from ingest.sync import sync_folder, watch_folder
from ingest.vector_store import StoredChunk, make_client
from kb_app.access.accounts import Accounts
from kb_app.access.policy import Policy
from kb_app.access.roles import OWNER, Role, User
from kb_app.access.store import AccessStore
from kb_app.chat.conversations import Conversations, ConversationStore
from kb_app.chat.feedback import Feedback, FeedbackStore
from kb_app.chat.pipeline import Answer, ChatPipeline, Citation
from kb_app.chat.prompt import PromptBuilder
from kb_app.chat.refusal import build_evidence_check
from kb_app.chat.trim import build_trimmer
from kb_app.chat.turns import Turns, Waiting
from kb_app.errors import (
    DocumentNotFoundError,
    KbError,
    KnowledgeBaseBusyError,
    KnowledgeBaseNameError,
    KnowledgeBaseNotFoundError,
)
from kb_app.ingest_queue import Indexing, IngestQueue, IngestTask, QueuedFile
from kb_app.models.base import Capabilities, ChatModel, Message
from kb_app.models.bundled import DEFAULT as DEFAULT_BUNDLED
from kb_app.models.factory import backend_capabilities, build_chat_model, capabilities_of
from kb_app.retrieval.base import Hit, Retriever
from kb_app.retrieval.factory import build_retriever
from kb_app.retrieval.multi import MultiRetriever
from kb_app.settings import LlmSettings, RetrievalSettings, Settings
from kb_app.viewer.context import PassageContext, neighbours, surrounding
from kb_app.viewer.pdf_page import render_page

Names = str | Sequence[str] | None  # one knowledge base, several, or the configured default


def _no_progress(fraction: float, message: str) -> None:
    return None


def _readable(answer: Answer, readable: set[str]) -> Answer:
    """``answer`` without the passage text of citations from knowledge bases outside ``readable``."""

    def shown(citations: list[Citation]) -> list[Citation]:
        return [c if c.kb in readable else replace(c, text="") for c in citations]

    return replace(answer, citations=shown(answer.citations), uncited=shown(answer.uncited))


class _Parts:
    """The heavy, shared parts (embedder, Chroma client, model, open knowledge bases): one set per process,
    however many users the assistant acts for. Each is created on first use, unless given."""

    def __init__(self, settings: Settings, embedder: Embedder | None, model: ChatModel | None, client) -> None:
        self.settings = settings
        self.kbs: dict[str, KnowledgeBase] = {}
        self.model: ChatModel | None = model
        self.reader: ChatModel | None = None  # rerank.reader_model, when it is not the chat model
        self.lock = threading.RLock()
        self.ingest_lock = threading.Lock()  # one ingest at a time; chat is never blocked by it
        self.turns = Turns(settings.llm.concurrent_answers)  # one line at the model for every caller
        self.ingest_queue = IngestQueue()  # files ingested in the background, one at a time
        self.own_embedder = embedder is None  # built from settings, so embedding workers can build the same one
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

    @cached_property
    def feedback(self) -> FeedbackStore:
        return FeedbackStore(self.settings.feedback_db)


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

    @property
    def feedback(self) -> Feedback:
        """Ratings of answers: :attr:`user` rates their own; only an admin reads everyone's."""
        return Feedback(self._parts.feedback, self.conversations, self.user)

    def model(self) -> ChatModel:
        with self._parts.lock:
            if self._parts.model is None:
                self._parts.model = build_chat_model(self.settings.llm, self.settings.cache_dir)
            return self._parts.model

    def reader(self) -> ChatModel:
        """The model that re-reads passages (``rerank.reader_model``): the chat model unless another is named."""
        llm = self._reader_settings()
        if llm is None:
            return self.model()
        with self._parts.lock:
            if self._parts.reader is None:
                self._parts.reader = build_chat_model(llm, self.settings.cache_dir)
            return self._parts.reader

    def _reader_settings(self) -> LlmSettings | None:
        """The re-reading model's settings when it is another model than the chat model's, else None."""
        name, llm = self.settings.rerank.reader_model, self.settings.llm
        same = llm.backend == "llama_cpp" and llm.gguf_path is None and (llm.model or DEFAULT_BUNDLED) == name
        if name is None or same:
            return None
        bundled = {"backend": "llama_cpp", "model": name, "gguf_path": None, "chat_format": None, "chat_template": None}
        return llm.model_copy(update=bundled)

    def model_capabilities(self) -> Capabilities:
        """What the model can do, without loading it: the given model's, else the configured backend's."""
        model = self._parts.model
        return capabilities_of(model) if model is not None else backend_capabilities(self.settings.llm)

    def _reader_capabilities(self) -> Capabilities:
        llm = self._reader_settings()
        return self.model_capabilities() if llm is None else backend_capabilities(llm)

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
        self._parts.ingest_queue.cancel(kb.name)  # its queued files would only fail
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
            self._parts.ingest_queue.forget(kb.name)
            return deleted
        finally:
            self._parts.ingest_lock.release()

    def create_knowledge_base(self, name: str) -> str:
        """Create an empty knowledge base (its creator then holds ``admin`` on it); returns the name as kept.
        One that exists already is refused: as taken to a caller with a grant on it, else as any name without."""
        name = check_name(name)
        if self.catalog.exists(name):
            self.policy.require(self.user, name, Role.ASK)
            raise KbError(f"a knowledge base named '{name}' exists already", "pick it in the list, or another name")
        return self.knowledge_base(name, need=Role.WRITE).name

    def rename_knowledge_base(self, old: str, new: str) -> str:
        """Give knowledge base ``old`` the name ``new`` (any language); needs ``admin`` on it. Its vectors stay,
        its grants and the conversations kept over it follow. Refused while its files are being ingested, or
        when ``new`` is taken. Returns the new name as kept."""
        new = check_name(new)
        kb = self.knowledge_base(old, create=False, need=Role.ADMIN)
        if self.catalog.exists(new):
            raise KbError(f"a knowledge base named '{new}' exists already", "pick another name, or delete that one")
        if self._parts.ingest_queue.active(kb.name) or not self._parts.ingest_lock.acquire(blocking=False):
            raise KnowledgeBaseBusyError(
                "files are being ingested right now", "rename the knowledge base when the ingest has finished"
            )
        try:
            with self._writing(kb):
                with self._parts.lock:
                    self._parts.kbs.pop(kb.name, None)
                kb.close()
                self.catalog.rename(kb.name, new)
            self.access.rename_kb(kb.name, new)
            self._parts.conversations.rename_kb(kb.name, new)
            self._parts.ingest_queue.forget(kb.name)
        finally:
            self._parts.ingest_lock.release()
        return new

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
        pool = shared_embed_pool(self.settings.embedding) if self._parts.own_embedder else None
        return Ingestor(self.registry, splitter, self.embedder, knowledge_base, self.settings.ingest, pool)

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

    def queue_ingest(self, paths: Iterable[Path], kb: str | None = None, discard: bool = False) -> list[QueuedFile]:
        """Queue files (a folder: its files) to be ingested in the background and return at once; needs ``write``
        on ``kb`` (or creates it). ``discard``: the paths are uploaded copies under ``KB_HOME/uploads``, deleted
        once ingested (or cancelled); nothing outside that folder is ever deleted."""
        knowledge_base = self.knowledge_base(kb, need=Role.WRITE)
        uploads = self.settings.home / "uploads" if discard else None
        files = expand_paths(Path(p) for p in paths)
        tasks = [IngestTask(knowledge_base.name, file, self._ingest_queued, uploads) for file in files]
        return self._parts.ingest_queue.put(tasks)

    def _ingest_queued(self, task: IngestTask, progress: ProgressCallback) -> FileOutcome:
        """What the queue's worker runs for one file, as the user who queued it (their grant is checked again)."""
        knowledge_base = self.knowledge_base(task.kb, create=False, need=Role.WRITE)
        with self._parts.ingest_lock:
            report = self._ingestor(knowledge_base).ingest([task.file], progress, force=task.force)
        return report.files[0]

    def ingest_status(self, kb: str | None = None) -> list[QueuedFile]:
        """``kb``'s files queued, being indexed, or finished lately (with why one failed), oldest first."""
        return self._parts.ingest_queue.files(self.knowledge_base(kb, create=False).name)

    def cancel_ingest(self, kb: str | None = None) -> int:
        """Drop ``kb``'s queued files (the one being indexed finishes); needs ``write``. How many were dropped."""
        return self._parts.ingest_queue.cancel(self.knowledge_base(kb, create=False, need=Role.WRITE).name)

    def indexing(self, kb: str | None = None) -> int:
        """How many of ``kb``'s files are queued or being indexed (a question over it waits for them)."""
        name = check_name(kb or self.settings.kb)
        self.policy.require(self.user, name, Role.ASK)
        return self._parts.ingest_queue.active(name)

    def original(self, source: str, kb: str | None = None) -> Path:
        """The kept copy of ``source`` (``ingest.keep_originals``), to download or show: needs ``read``."""
        return self._original(self.knowledge_base(kb, create=False, need=Role.READ), source)

    def reindex(self, source: str, kb: str | None = None) -> QueuedFile:
        """Queue ``source`` to be parsed and embedded again from its kept copy (after a change of splitter, OCR
        or model); needs ``write``. The copy is read under the file's suffix (which picks the loader), from a
        fresh folder in ``KB_HOME/uploads`` that the queue deletes afterwards."""
        knowledge_base = self.knowledge_base(kb, create=False, need=Role.WRITE)
        original = self._original(knowledge_base, source)
        uploads = self.settings.home / "uploads"
        uploads.mkdir(mode=0o700, parents=True, exist_ok=True)
        named = Path(tempfile.mkdtemp(prefix="reindex-", dir=uploads)) / f"original{Path(source).suffix}"
        shutil.copyfile(original, named)
        task = IngestTask(knowledge_base.name, (named, source), self._ingest_queued, uploads, force=True)
        return self._parts.ingest_queue.put([task])[0]

    def _original(self, knowledge_base: KnowledgeBase, source: str) -> Path:
        kept = knowledge_base.originals.path(_stored(knowledge_base, source).sha256)
        if kept is None:
            raise DocumentNotFoundError(
                f"no copy of '{source}' is kept",
                "files ingested by an older kb, or with ingest.keep_originals off, have none: ingest the file again",
            )
        return kept

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
            model=self.reader,
            reading_prompt=PromptBuilder(self.settings.prompts_dir).question_likelihood,
            capabilities=self._reader_capabilities(),
        )

    def _names(self, kb: Names) -> list[str]:
        """The knowledge bases a question names, each checked and once, in the order given (none: the default)."""
        if kb is None or isinstance(kb, str):
            return [check_name(kb or self.settings.kb)]
        names = list(dict.fromkeys(check_name(name) for name in kb))
        if not names:
            raise KnowledgeBaseNameError("no knowledge base was named", "pick at least one knowledge base")
        return names

    def _open_all(self, names: list[str], need: Role) -> list[KnowledgeBase]:
        """Every one of ``names``, or a refusal before any is searched: a caller gets nothing of a refused one."""
        return [self.knowledge_base(name, create=False, need=need) for name in names]

    def _merged(self, knowledge_bases: list[KnowledgeBase], retrieval: RetrievalSettings | None) -> Retriever:
        """Each knowledge base's own retriever, merged by score, every hit tagged with its knowledge base."""
        return MultiRetriever([(kb.name, self._retriever(kb, retrieval)) for kb in knowledge_bases])

    def search(self, query: str, kb: Names = None, k: int | None = None) -> list[Hit]:
        """Passages that match ``query`` in one knowledge base or several (one top ``k``): needs ``read`` on each."""
        knowledge_bases = self._open_all(self._names(kb), Role.READ)
        return self._merged(knowledge_bases, None).retrieve(query, k or self.settings.retrieval.top_k)

    def chunks(self, source: str, kb: str | None = None) -> list[StoredChunk]:
        """Every chunk ``source`` was indexed as, in the file's order (page, then offset): needs ``read``."""
        knowledge_base = self.knowledge_base(kb, create=False, need=Role.READ)
        record = _stored(knowledge_base, source)
        return sorted(knowledge_base.vectors.get(record.chunk_ids), key=lambda c: (c.page or 0, c.start))

    def pipeline(
        self, kb: str | None = None, retrieval: RetrievalSettings | None = None, retriever: Retriever | None = None
    ) -> ChatPipeline:
        """The answering pipeline over ``kb`` (``kb eval``): its answers and retriever hand out passage text, so it
        needs ``read``; :meth:`stream` and :meth:`ask` answer an ``ask``-only caller without it. ``retriever``
        (one from :meth:`retriever`, possibly wrapped: ``kb eval --exclude-gold``) replaces the configured one."""
        return self._pipeline([self.knowledge_base(kb, create=False, need=Role.READ)], retrieval, retriever)

    def _pipeline(
        self,
        knowledge_bases: list[KnowledgeBase],
        retrieval: RetrievalSettings | None,
        retriever: Retriever | None = None,
    ) -> ChatPipeline:
        retrieval = retrieval or self.settings.retrieval
        prompts = PromptBuilder(self.settings.prompts_dir)
        return ChatPipeline(
            retriever=retriever or self._merged(knowledge_bases, retrieval),
            model=self.model,
            prompts=prompts,
            evidence=build_evidence_check(self.settings.refusal, self.model, prompts),
            retrieval=retrieval,
            llm=self.settings.llm,
            chat=self.settings.chat,
            trimmer=build_trimmer(retrieval),
        )

    def stream(
        self, question: str, kb: Names = None, history: list[Message] | None = None
    ) -> Iterator[str | Indexing | Waiting | Answer]:
        """:class:`Indexing` while files of its knowledge bases are still being ingested (see
        :meth:`_wait_for_indexing`), :class:`Waiting` while the question waits its turn at the model, then the
        answer text as it is generated, then the :class:`Answer`. ``kb`` may name several knowledge bases (``ask``
        on each; their passages merged by score, each citation naming its own). A citation holds passage text only
        from a knowledge base the caller may ``read`` (``ask`` gets file, page and heading)."""
        names = self._names(kb)
        knowledge_bases = self._open_all(names, Role.ASK)
        yield from self._wait_for_indexing([k.name for k in knowledge_bases])
        readable = {k.name for k in knowledge_bases if self.policy.allows(self.user, k.name, Role.READ)}
        pipeline = self._pipeline(knowledge_bases, None)
        turns = self._parts.turns
        ticket = turns.join()
        try:
            for ahead in turns.wait(ticket):
                yield Waiting(ahead)
            for item in pipeline.stream(question, history):
                yield _readable(item, readable) if isinstance(item, Answer) else item
        finally:
            turns.leave(ticket)

    def _wait_for_indexing(self, names: list[str]) -> Iterator[Indexing]:
        """Hold a question while files of ``names`` are queued or being indexed: answered now, it would not find
        them and be refused as "not in the knowledge base". Says so about once a second (and when the count
        changes); refused after ``ingest.question_wait_s``."""
        queue = self._parts.ingest_queue
        deadline = time.monotonic() + self.settings.ingest.question_wait_s
        shown, said_at = 0, 0.0
        while (files := sum(queue.active(name) for name in names)) > 0:
            now = time.monotonic()
            if now >= deadline:
                raise KnowledgeBaseBusyError(
                    f"{files} file(s) of this knowledge base are still being indexed",
                    "ask again once the documents screen shows them done, or raise ingest.question_wait_s",
                )
            if files != shown or now - said_at >= 1.0:
                shown, said_at = files, now
                yield Indexing(files)
            queue.wait_for_change(min(1.0, deadline - now))

    def chat(self, question: str, conversation: str) -> Iterator[str | Indexing | Waiting | Answer]:
        """:meth:`stream` inside a kept conversation: its knowledge bases, its past turns as history; the turn is
        recorded once the answer is complete (a stream closed before then records nothing)."""
        conversations = self.conversations
        kept = conversations.get(conversation)
        answer = None
        for item in self.stream(question, kb=kept.kbs, history=conversations.history(kept.id)):
            if isinstance(item, Answer):
                answer = item
            yield item
        if answer is not None:
            conversations.record(kept.id, question, answer)

    def ask(self, question: str, kb: Names = None, history: list[Message] | None = None) -> Answer:
        answer = None
        for item in self.stream(question, kb, history):
            if isinstance(item, Answer):
                answer = item
        assert answer is not None, "the pipeline always ends with an Answer"
        return answer

    # -- citations -------------------------------------------------------------------------------------------

    def passage_context(self, kb: str | None, chunk_id: str) -> PassageContext:
        """A cited passage with the text around it in its file, and whether its page can be shown: needs ``read``
        (the passage is document text)."""
        knowledge_base = self.knowledge_base(kb, create=False, need=Role.READ)
        chunk = _cited_chunk(knowledge_base, chunk_id)
        record = knowledge_base.manifest.get(chunk.source)
        before_id, after_id = neighbours(record.chunk_ids if record else [], chunk.id)
        near = {c.id: c for c in knowledge_base.vectors.get([i for i in (before_id, after_id) if i])}
        before, after = surrounding(chunk, near.get(before_id or ""), near.get(after_id or ""))
        page_image = chunk.page is not None and _kept_pdf(knowledge_base, chunk.source) is not None
        return PassageContext(chunk, before, after, page_image)

    def citation_page(self, kb: str | None, source: str, page: int, chunk_id: str) -> bytes:
        """Page ``page`` of the PDF ``source`` as a PNG with the passage ``chunk_id`` marked: needs ``read`` (the
        image shows the text). The chunk must be of ``kb`` and on that page, so the pair cannot name any other."""
        knowledge_base = self.knowledge_base(kb, create=False, need=Role.READ)
        chunk = _cited_chunk(knowledge_base, chunk_id)
        if chunk.source != source or chunk.page != page:
            raise KbError(
                f"the passage '{chunk_id[:80]}' is not on page {page} of '{source[:200]}'",
                "open the page from the citation itself",
            )
        pdf = _kept_pdf(knowledge_base, source)
        if pdf is None:
            raise KbError(
                f"there is no page image of '{source[:200]}'",
                "pages are shown for PDFs ingested by this version of kb; ingest the file again",
            )
        return render_page(pdf, page, chunk.text, self.settings.ingest.password).png


MAX_CHUNK_ID_CHARS = 200


def _stored(knowledge_base: KnowledgeBase, source: str) -> FileRecord:
    """The manifest row of a file ``knowledge_base`` holds (not one that failed); refused by name otherwise."""
    record = knowledge_base.manifest.get(source)
    if record is None or record.status == "failed":
        raise DocumentNotFoundError(
            f"'{source}' is not in the knowledge base '{knowledge_base.name}'", "`kb files` lists what is there"
        )
    return record


def _cited_chunk(knowledge_base: KnowledgeBase, chunk_id: str) -> StoredChunk:
    """The stored chunk ``chunk_id`` of ``knowledge_base``; refused when it holds none of that id."""
    found = knowledge_base.vectors.get([chunk_id]) if 0 < len(chunk_id) <= MAX_CHUNK_ID_CHARS else []
    if not found:
        raise KbError(
            f"there is no passage '{chunk_id[:80]}' in the knowledge base '{knowledge_base.name}'",
            "open the citation from an answer given over this knowledge base",
        )
    return found[0]


def _kept_pdf(knowledge_base: KnowledgeBase, source: str) -> Path | None:
    """The kept copy of ``source`` if it is a PDF (a member of a zip has no copy of its own: the zip is kept)."""
    record = knowledge_base.manifest.get(source)
    path = knowledge_base.originals.path(record.sha256) if record is not None else None
    if path is None:
        return None
    with path.open("rb") as file:
        return path if b"%PDF-" in file.read(1024) else None
