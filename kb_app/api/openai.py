"""OpenAI-compatible routes (``/v1``): each knowledge base is a model, and answers carry their sources.

Any OpenAI client works unchanged: ``model`` names the knowledge base, ``messages`` holds the conversation, and the
sources of an answer are in ``choices[0].message.citations`` (streamed: in the last chunk's
``choices[0].delta.citations``). Every route makes one call into the caller's Assistant, which checks the grant.
Several knowledge bases are asked at once with kb's own ``knowledge_bases`` list (``extra_body`` in OpenAI's client),
each citation naming its ``kb``.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Iterator
from itertools import chain
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_serializer
from starlette.types import Send

from kb_app.api.auth import current_assistant
from kb_app.api.errors import documented, error_body, status_of
from kb_app.assistant import Assistant
from kb_app.chat.pipeline import Answer, Citation
from kb_app.chat.turns import Waiting
from kb_app.errors import KbError, LimitExceededError
from kb_app.ingest_queue import Indexing
from kb_app.models.base import Message
from kb_app.settings import UiSettings

log = logging.getLogger(__name__)

MAX_KNOWLEDGE_BASES = 16  # in one question: each is searched (and may be re-read by the model) on its own

# Shown in /docs (the "Authorize" button); the key itself is read by kb_app.api.auth.
bearer = HTTPBearer(auto_error=False, description="An API key from `kb keys create NAME` (when auth.enabled).")
Caller = Annotated[Assistant, Depends(current_assistant)]
router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], dependencies=[Depends(bearer)])


# -- models ------------------------------------------------------------------------------------------------------


class Model(BaseModel):
    id: str = Field(description="The knowledge-base name: pass it as `model`.")
    object: Literal["model"] = "model"
    created: int = Field(0, description="Always 0: kb records no creation time for a knowledge base.")
    owned_by: Literal["kb"] = "kb"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


@router.get("/models", response_model=ModelList, responses=documented(401, 503))
def list_models(assistant: Caller) -> ModelList:
    """One model per knowledge base the caller may ask."""
    return ModelList(data=[Model(id=name) for name in assistant.list_knowledge_bases()])


# -- chat completions --------------------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """OpenAI's request; fields kb does not use (temperature, max_tokens, ...) are accepted and ignored: the
    settings decide them, so every caller of a knowledge base gets the same, calibrated behaviour."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="The knowledge base to ask (`GET /v1/models` lists them).")
    messages: list[ChatMessage] = Field(
        min_length=1,
        description="The conversation; the last message is the user's question, earlier user and assistant turns "
        "are its history. System and developer messages are ignored: a caller may not speak as kb's system prompt.",
    )
    stream: bool = Field(False, description="Server-sent chunks, the citations in the last one before [DONE].")
    knowledge_bases: list[str] | None = Field(
        None,
        min_length=1,
        max_length=MAX_KNOWLEDGE_BASES,
        description="kb's extension (an OpenAI client sends it in `extra_body`): ask several knowledge bases at once, "
        "instead of `model`. Each needs a grant; their passages are merged by score and each citation names its "
        "knowledge base.",
    )


class CitationOut(BaseModel):
    n: int = Field(description="The [n] marker in the answer.")
    source: str = Field(description="The file, as `GET /api/kb/{name}/documents` names it.")
    page: int | None = Field(description="Page number, for formats that have pages.")
    heading: str = Field(description="The section heading the passage sits under, if any.")
    text: str | None = Field(None, description="The passage; absent for a caller who holds only `ask`.")
    score: float = Field(description="Cosine similarity to the question.")
    kb: str = Field("", description="The knowledge base the passage came from.")

    @model_serializer(mode="wrap")
    def _without_absent_text(self, handler) -> dict:
        data = handler(self)
        if data.get("text") is None:
            data.pop("text", None)
        return data

    @classmethod
    def of(cls, citation: Citation) -> CitationOut:
        """The Assistant empties ``text`` for an ask-only caller: the key is left out then."""
        fields = {"n": citation.n, "source": citation.source, "page": citation.page, "heading": citation.heading}
        return cls(**fields, text=citation.text or None, score=citation.score, kb=citation.kb)


class AnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str = Field(description="The answer, with a checked [n] marker after each sentence a source supports.")
    citations: list[CitationOut] = Field(description="Its sources; empty for a refusal.")


class Choice(BaseModel):
    index: int = 0
    message: AnswerMessage
    finish_reason: Literal["stop"] = "stop"


class Usage(BaseModel):
    """Always zeros: the prompt (passages included) is built inside kb's pipeline and not counted for the API."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage = Usage()


class Delta(BaseModel):
    """What a chunk adds; only the fields it carries are sent."""

    role: Literal["assistant"] | None = None
    content: str | None = Field(
        None,
        description="Answer text as the model generates it, without the checked [n] markers the non-streamed "
        "content carries (they are placed once the answer is complete).",
    )
    citations: list[CitationOut] | None = Field(None, description="Only in the last chunk: the answer's sources.")

    @model_serializer(mode="wrap")
    def _only_what_it_carries(self, handler) -> dict:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]


STREAM_DOC = {
    "content": {
        "text/event-stream": {
            "schema": {"type": "string"},
            "description": "`data: {chat.completion.chunk}` lines, then `data: [DONE]`; an error after the first "
            'chunk arrives as `data: {"error": {...}}` and ends the stream.',
        }
    }
}


def conversation(request: ChatCompletionRequest, limits: UiSettings) -> tuple[str, list[Message]]:
    """The question (the last message, a user's) and its history (earlier user and assistant turns).

    System and developer messages are dropped: the request is untrusted, and kb's own system prompt is what keeps
    answers to the passages; a caller's "system" text would speak with that authority.
    """
    *earlier, last = request.messages
    question = last.text.strip()
    if last.role != "user" or not question:
        raise KbError("the last message must be the user's question", "end `messages` with {'role': 'user', ...}")
    if len(question) > limits.max_question_chars:
        raise LimitExceededError(
            f"the question is {len(question)} characters long; at most {limits.max_question_chars} are accepted",
            "shorten it, or raise KB_UI__MAX_QUESTION_CHARS",
        )
    history: list[Message] = []
    for message in earlier:
        if message.role in ("user", "assistant") and message.text.strip():
            if len(message.text) > limits.max_history_chars:
                raise LimitExceededError(
                    f"a {message.role} message in the history is {len(message.text)} characters long; "
                    f"at most {limits.max_history_chars} are accepted",
                    "send only the recent turns, or raise KB_UI__MAX_HISTORY_CHARS",
                )
            history.append({"role": message.role, "content": message.text})
    return question, history


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: STREAM_DOC, **documented(400, 401, 403, 404, 413, 422, 503)},
)
def chat_completions(request: ChatCompletionRequest, assistant: Caller):
    """An answer from the knowledge base `model`, with its sources; a refusal ("not in the knowledge base") is a
    normal answer with no citations. System messages are not passed to the model (see `messages`)."""
    question, history = conversation(request, assistant.settings.ui)
    completion_id, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    items = assistant.stream(question, kb=request.knowledge_bases or request.model, history=history)
    first = next(items)  # permission, name and model errors surface here, as the response's status
    if not request.stream:
        answer = next(item for item in chain([first], items) if isinstance(item, Answer))
        message = AnswerMessage(content=answer.text, citations=[CitationOut.of(c) for c in answer.citations])
        return ChatCompletion(id=completion_id, created=created, model=request.model, choices=[Choice(message=message)])

    def chunk(delta: Delta, finish: Literal["stop"] | None = None) -> str:
        body = ChatCompletionChunk(
            id=completion_id,
            created=created,
            model=request.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],
        )
        return f"data: {body.model_dump_json()}\n\n"

    def events() -> Iterator[str]:
        """The chunks; a stream the client leaves is closed, and the model it held is free for the next caller."""
        try:
            yield chunk(Delta(role="assistant", content=""))
            for item in chain([first], items):
                if isinstance(item, Waiting):  # an SSE comment: clients skip it, the connection stays alive
                    yield f": waiting for the model, {item.ahead} question(s) ahead\n\n"
                elif isinstance(item, Indexing):
                    yield f": waiting for {item.files} file(s) still being indexed\n\n"
                elif isinstance(item, Answer):
                    yield chunk(Delta(citations=[CitationOut.of(c) for c in item.citations]), "stop")
                else:
                    yield chunk(Delta(content=item))
        except KbError as error:
            yield f"data: {_stream_error(error)}\n\n"
            return
        except Exception:
            log.exception("a streamed answer failed")
            body = error_body("the answer broke off; the details are in the server log", "ServerError")
            yield f"data: {json.dumps(body)}\n\n"
            return
        finally:
            items.close()
        yield "data: [DONE]\n\n"

    return ClosingStream(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


class ClosingStream(StreamingResponse):
    """A stream that closes its generator however it ends. The model holds a lock while it generates, and a client
    that leaves mid-answer ends Starlette's loop without closing the generator: the next caller would wait for it."""

    def __init__(self, content: Iterator[str], **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._source = content

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await run_in_threadpool(self._source.close)


def _stream_error(error: KbError) -> str:
    """OpenAI's error event (the client raises it as an APIError); ``code`` is the status it would have had."""
    body = error_body(error.message, type(error).__name__, error.hint)
    body["error"]["code"] = status_of(error)
    return json.dumps(body, ensure_ascii=False)


# -- embeddings --------------------------------------------------------------------------------------------------


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="One text or a list of texts.")
    model: str | None = Field(None, description="Ignored: the embedder is the one kb is configured with.")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32.")
    input_type: Literal["passage", "query"] = Field(
        "passage",
        description="kb's embedder (e5) embeds a question differently from a passage; `query` for questions.",
    )


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    """Always zeros: the embedder's tokenizer is not exposed."""

    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str = Field(description="The embedder's name.")
    usage: EmbeddingUsage = EmbeddingUsage()


def embedding_inputs(request: EmbeddingRequest, limits: UiSettings) -> list[str]:
    texts = [request.input] if isinstance(request.input, str) else request.input
    if not texts:
        raise KbError("`input` holds no text", "send a string or a list of strings")
    if len(texts) > limits.max_embedding_inputs:
        raise LimitExceededError(
            f"{len(texts)} inputs in one request; at most {limits.max_embedding_inputs} are taken at once",
            "send fewer at a time, or raise KB_UI__MAX_EMBEDDING_INPUTS",
        )
    longest = max(len(t) for t in texts)
    if longest > limits.max_embedding_chars:
        raise LimitExceededError(
            f"an input is {longest} characters long; at most {limits.max_embedding_chars} are accepted",
            "split it, or raise KB_UI__MAX_EMBEDDING_CHARS",
        )
    return texts


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


@router.post("/embeddings", response_model=EmbeddingList, responses=documented(400, 401, 413, 422, 503))
def embeddings(request: EmbeddingRequest, assistant: Caller) -> EmbeddingList:
    """Vectors from the embedder kb indexes with (any signed-in caller: no knowledge base is opened)."""
    texts = embedding_inputs(request, assistant.settings.ui)
    embedder = assistant.embedder
    if request.input_type == "query":
        vectors = np.stack([embedder.embed_query(text) for text in texts])
    else:
        vectors = embedder.embed_passages(texts)
    data = [Embedding(index=i, embedding=_encoded(v, request.encoding_format)) for i, v in enumerate(vectors)]
    return EmbeddingList(data=data, model=embedder.name)
