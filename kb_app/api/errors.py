"""kb's error families as HTTP statuses, in one table; the body carries the same message and hint as the CLI.

The body is OpenAI's error shape (``{"error": {"message", "type", ...}}``) so the official client reads it, with
kb's ``hint`` beside the message. Anything that is not a :class:`KbError` is logged and answered with a generic 500:
no traceback, path or document text reaches a caller.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from kb_app.errors import (
    AuthenticationError,
    ConversationNotFoundError,
    DocumentNotFoundError,
    KbError,
    KnowledgeBaseBusyError,
    KnowledgeBaseNameError,
    KnowledgeBaseNotFoundError,
    LimitExceededError,
    ModelError,
    PermissionDeniedError,
    SettingsError,
    StoreError,
    UnknownUserError,
)

log = logging.getLogger(__name__)

# The most specific family a raised error belongs to decides (its class's MRO is walked); KbError itself is 422.
STATUS: dict[type[KbError], int] = {
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    KnowledgeBaseNotFoundError: 404,
    ConversationNotFoundError: 404,
    DocumentNotFoundError: 404,
    UnknownUserError: 404,
    LimitExceededError: 413,
    KnowledgeBaseNameError: 422,
    KbError: 422,
    KnowledgeBaseBusyError: 503,
    StoreError: 503,
    ModelError: 503,
    SettingsError: 503,
}


def status_of(error: KbError) -> int:
    for family in type(error).__mro__:
        if family in STATUS:
            return STATUS[family]
    return 422


# What each status means to a caller: the ``responses`` of every route's OpenAPI operation.
MEANING = {
    400: "The body could not be read as JSON.",
    401: "No key or session, or a wrong, revoked or expired one (auth.enabled).",
    403: "No grant, or too small a one, on that knowledge base; said the same way when it does not exist.",
    404: "No such knowledge base (a caller who may not see it gets 403 instead).",
    413: "Over a limit: question length, files per upload, file size, embedding inputs.",
    422: "A request kb cannot take: a bad knowledge-base name, a malformed body, a file not in the knowledge base.",
    503: "The store or the model is unavailable or busy right now; try again.",
}


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong (the CLI's message).")
    type: str = Field(description="kb's error family, e.g. PermissionDeniedError.")
    hint: str = Field(description="What to do about it: the setting, environment variable or command.")
    code: None = None
    param: None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape, with kb's hint beside the message."""

    error: ErrorDetail


def documented(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for the error statuses a route can answer, each with :class:`ErrorBody`."""
    return {status: {"model": ErrorBody, "description": MEANING[status]} for status in statuses}


def error_body(message: str, kind: str, hint: str = "") -> dict:
    return {"error": {"message": message, "type": kind, "hint": hint, "code": None, "param": None}}


def kb_error_response(error: KbError) -> JSONResponse:
    status = status_of(error)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(error.message, type(error).__name__, error.hint), status, headers=headers)


async def _kb_error(request: Request, error: KbError) -> JSONResponse:
    return kb_error_response(error)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    log.error("a request to %s failed", request.url.path, exc_info=error)
    body = error_body("something went wrong on the server; the details are in its log", "ServerError")
    return JSONResponse(body, 500)


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:5])
    return JSONResponse(error_body(f"the request is not valid: {problems}", "RequestValidationError"), 422)


async def _http(request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, a method it does not take) in the same shape as every other."""
    body = error_body(str(error.detail), "HTTPError")
    return JSONResponse(body, error.status_code, headers=error.headers)


def install(app: FastAPI) -> None:
    """Every route of ``app`` answers errors through the table above."""
    app.add_exception_handler(KbError, _kb_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
