"""Knowledge-base routes (``/api/kb``): list, upload, files, remove, search; each one call into the Assistant.

``{name}`` is a knowledge-base name as a person typed it (any language, percent-encoded in the URL). A crafted
name (``..%2F..``, control characters, too long) reaches the Assistant as it is and is refused there with 422:
the route takes the whole path segment up to ``/documents`` or ``/search``, so a decoded ``/`` does not turn it
into another route. ``{source}`` in ``DELETE .../documents/{source}`` may contain ``/``: a folder's files are named
by their path inside it (``policies/leave.md``), exactly as ``GET .../documents`` lists them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import Annotated, BinaryIO, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.convertors import Convertor, register_url_convertor

from kb_app.api.auth import current_assistant
from kb_app.api.errors import documented
from kb_app.assistant import Assistant
from kb_app.errors import KbError, LimitExceededError
from kb_app.settings import Settings


class _AnyText(Convertor[str]):
    """Any text, ``/`` and newlines included: the Assistant judges it (Starlette's ``path`` stops at a newline)."""

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class KnowledgeBaseNameConvertor(_AnyText):
    """Up to the first fixed part of the route after it, so ``..%2F..`` is a name the Assistant refuses (422)."""

    regex = r"[\s\S]+?"


class SourceConvertor(_AnyText):
    regex = r"[\s\S]*"


register_url_convertor("kbname", KnowledgeBaseNameConvertor())
register_url_convertor("kbsource", SourceConvertor())
# Shown in /docs (the "Authorize" button); the key itself is read by kb_app.api.auth.
bearer = HTTPBearer(auto_error=False, description="An API key from `kb keys create NAME` (when auth.enabled).")
Caller = Annotated[Assistant, Depends(current_assistant)]
router = APIRouter(prefix="/api/kb", tags=["knowledge bases"], dependencies=[Depends(bearer)])
NAME = "/{name:kbname}"
MAX_PART_HEADER_BYTES = 16 * 1024  # a part's header names a field and a file; more is not an upload


class KnowledgeBaseOut(BaseModel):
    name: str
    role: Literal["ask", "read", "write", "admin"] = Field(description="The caller's role on it.")


class KnowledgeBaseList(BaseModel):
    knowledge_bases: list[KnowledgeBaseOut]


@router.get("", response_model=KnowledgeBaseList, responses=documented(401, 503))
def list_knowledge_bases(assistant: Caller) -> KnowledgeBaseList:
    """The knowledge bases the caller holds a grant on, each with that grant."""
    names = assistant.list_knowledge_bases()
    return KnowledgeBaseList(knowledge_bases=[KnowledgeBaseOut(name=n, role=assistant.role(n).label) for n in names])


# -- upload ------------------------------------------------------------------------------------------------------


def safe_basename(raw: str) -> str:
    """The last part of a client's file name, without control characters, at most 255 bytes, never ``.``/``..``:
    ``../../evil.md`` becomes ``evil.md``. The file is saved and ingested under this name."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] not in "CZ" or ch == " ").strip()
    if name in ("", ".", ".."):
        name = "upload"
    stem, suffix = os.path.splitext(name)
    suffix = suffix if len(suffix.encode()) <= 32 else ""
    while len((stem + suffix).encode()) > 255:
        stem = stem[:-1]
    return stem + suffix


class UploadParts:
    """The parts named ``files`` of a multipart body, written straight into ``folder`` as they arrive (one
    numbered subfolder each, so equal names do not collide), refused past ``max_files`` or ``max_bytes`` a file:
    nothing is spooled elsewhere (the system temp folder), and an oversized upload stops at the limit."""

    def __init__(self, folder: Path, max_files: int, max_mb: int) -> None:
        self.folder, self.max_files, self.max_mb = folder, max_files, max_mb
        self.paths: list[Path] = []
        self._header, self._value, self._disposition = b"", b"", b""
        self._file: BinaryIO | None = None
        self._size = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._add("_header", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._open,
            "on_part_data": self._write,
            "on_part_end": self.close,
        }

    def _add(self, attribute: str, data: bytes) -> None:
        value = getattr(self, attribute) + data
        if len(value) > MAX_PART_HEADER_BYTES:
            raise KbError("a part of the upload has an oversized header", "send plain file fields named 'files'")
        setattr(self, attribute, value)

    def _begin(self) -> None:
        self._disposition, self._size = b"", 0

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _open(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != b"files":
            return
        if len(self.paths) >= self.max_files:
            raise LimitExceededError(
                f"more than {self.max_files} files in one upload",
                "upload fewer files at a time, or raise KB_UI__MAX_FILES_PER_UPLOAD",
            )
        if b"filename" not in options:
            raise KbError("a part named 'files' is not a file (it has no filename)", "send each file as a file field")
        raw = options[b"filename"].decode("utf-8", errors="replace")
        part = self.folder / str(len(self.paths))
        part.mkdir(mode=0o700)
        self.paths.append(part / safe_basename(raw))
        self._file = self.paths[-1].open("xb")

    def _write(self, data: bytes, start: int, end: int) -> None:
        if self._file is None:
            return
        self._size += end - start
        if self._size > self.max_mb * 1024 * 1024:
            raise LimitExceededError(
                f"'{self.paths[-1].name}' is over {self.max_mb} MB", "upload a smaller file, or raise KB_MAX_FILE_MB"
            )
        self._file.write(data[start:end])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def upload_folder(settings: Settings) -> Path:
    """A fresh folder (mode 0700, random name) under ``KB_HOME/uploads`` for one request's files."""
    uploads = settings.home / "uploads"
    uploads.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="upload-", dir=uploads))


async def receive_files(request: Request, settings: Settings, folder: Path) -> list[Path]:
    """The uploaded files, saved in ``folder`` under safe names; the limits are checked while they arrive."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise KbError("an upload is a multipart/form-data body", "send the files as form fields named 'files'")
    parts = UploadParts(folder, settings.ui.max_files_per_upload, settings.max_file_mb)
    parser = MultipartParser(options[b"boundary"], parts.callbacks())
    try:
        async for chunk in request.stream():
            await run_in_threadpool(parser.write, chunk)
        parser.finalize()
    except FormParserError:
        raise KbError("the multipart body is malformed", "send the files as form fields named 'files'") from None
    finally:
        parts.close()
    if not parts.paths:
        raise KbError("the upload holds no files", "send the files as form fields named 'files'")
    return parts.paths


class FileOutcomeOut(BaseModel):
    source: str = Field(description="The file's name in the knowledge base (its safe basename).")
    status: str = Field(description="added, replaced, renamed, unchanged, removed or failed.")
    chunks: int
    reason: str = Field(description="Why it failed; notes for the other statuses, if any.")


class IngestReportOut(BaseModel):
    files: list[FileOutcomeOut]
    summary: str = Field(description="The counts per status, as the page and the CLI show them.")
    chunks_added: int
    seconds: float


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}


@router.post(
    NAME + "/documents",
    response_model=IngestReportOut,
    responses=documented(401, 403, 413, 422, 503),
    openapi_extra=UPLOAD_BODY,
)
async def upload_documents(name: str, request: Request, assistant: Caller) -> IngestReportOut:
    """Ingest the uploaded `files` into `name` (created if new; needs `write`). Each file is saved under
    KB_HOME/uploads with its safe basename and deleted once ingested; a file that cannot be read is reported by
    name with the reason, and the rest of the batch lands."""
    folder = upload_folder(assistant.settings)
    try:
        paths = await receive_files(request, assistant.settings, folder)
        report = await run_in_threadpool(assistant.ingest, paths, name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    files = [FileOutcomeOut(source=f.source, status=f.status, chunks=f.chunks, reason=f.reason) for f in report.files]
    return IngestReportOut(
        files=files, summary=report.summary(), chunks_added=report.chunks_added, seconds=round(report.seconds, 3)
    )


# -- files -------------------------------------------------------------------------------------------------------


class DocumentOut(BaseModel):
    source: str
    size: int = Field(description="Bytes.")
    chunks: int
    status: str
    error: str = Field(description="Why it could not be read, for a failed file.")


class DocumentList(BaseModel):
    documents: list[DocumentOut]


@router.get(NAME + "/documents", response_model=DocumentList, responses=documented(401, 403, 404, 422, 503))
def list_documents(
    name: str,
    assistant: Caller,
    failed: Annotated[bool, Query(description="List the files that could not be read instead, each with why.")] = False,
) -> DocumentList:
    """The files in `name` (needs `ask`), as `kb files` lists them; `?failed=true` as `kb files --failed` does."""
    records = assistant.failures(name) if failed else assistant.files(name)
    return DocumentList(
        documents=[
            DocumentOut(source=r.source, size=r.size, chunks=len(r.chunk_ids), status=r.status, error=r.error)
            for r in records
        ]
    )


class Removed(BaseModel):
    source: str
    removed: bool = True


@router.delete(
    NAME + "/documents/{source:kbsource}", response_model=Removed, responses=documented(401, 403, 404, 422, 503)
)
def remove_document(name: str, source: str, assistant: Caller) -> Removed:
    """Remove one file and its chunks from `name` (needs `write`); `source` as listed, `/` included."""
    assistant.remove_file(source, kb=name)
    return Removed(source=source)


@router.get(
    NAME + "/documents/{source:kbsource}/original",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **documented(401, 403, 404, 422, 503)},
)
def download_original(name: str, source: str, assistant: Caller) -> FileResponse:
    """The file `source` of `name` as it was ingested (the copy kb keeps; needs `read`), as a download: always
    `application/octet-stream` with `Content-Disposition: attachment`, so a browser never renders it."""
    path = assistant.original(source, kb=name)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=safe_basename(source),
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


# -- search ------------------------------------------------------------------------------------------------------


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, description="Up to ui.max_question_chars characters.")
    k: int | None = Field(None, ge=1, le=50, description="How many passages; default retrieval.top_k.")


class SearchHit(BaseModel):
    source: str
    page: int | None
    heading: str
    text: str
    score: float = Field(description="Cosine similarity to the query (the retriever's score without one).")


class SearchResult(BaseModel):
    hits: list[SearchHit]


@router.post(NAME + "/search", response_model=SearchResult, responses=documented(400, 401, 403, 404, 413, 422, 503))
def search(name: str, request: SearchRequest, assistant: Caller) -> SearchResult:
    """The passages of `name` that best match `query`, without the model (needs `read`)."""
    limit = assistant.settings.ui.max_question_chars
    if len(request.query) > limit:
        raise LimitExceededError(
            f"the query is {len(request.query)} characters long; at most {limit} are accepted",
            "shorten it, or raise KB_UI__MAX_QUESTION_CHARS",
        )
    hits = assistant.search(request.query, kb=name, k=request.k)
    return SearchResult(
        hits=[
            SearchHit(
                source=h.chunk.source,
                page=h.chunk.page,
                heading=h.chunk.heading,
                text=h.chunk.text,
                score=round(h.dense_score if h.dense_score is not None else h.score, 4),
            )
            for h in hits
        ]
    )
