"""Conversation routes (``/api/conversations``): a kept conversation as a Markdown file, for the page's export link
and for scripts. Only the caller's own conversations: another user's answers 404, exactly like a missing one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from kb_app.api.auth import current_assistant
from kb_app.api.errors import ErrorBody, documented
from kb_app.api.knowledge_bases import bearer
from kb_app.assistant import Assistant

Caller = Annotated[Assistant, Depends(current_assistant)]
router = APIRouter(prefix="/api/conversations", tags=["conversations"], dependencies=[Depends(bearer)])


MISSING = {"model": ErrorBody, "description": "None of the caller's conversations has that id."}


# ``kbsource``: any text up to the last ``.md``, ``/`` included, so every id reaches the store and is answered alike.
@router.get(
    "/{conversation_id:kbsource}.md",
    response_class=Response,
    responses={
        200: {"content": {"text/markdown": {}}, "description": "The conversation."},
        **documented(401),
        404: MISSING,
    },
)
def conversation_markdown(conversation_id: str, assistant: Caller) -> Response:
    """One of the caller's conversations as Markdown: each question, its answer and every cited source (file,
    page, heading, knowledge base, the passage quoted), as a file to save."""
    text = assistant.conversations.export_markdown(conversation_id)
    return Response(
        text,
        media_type="text/markdown; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="conversation-{conversation_id}.md"'},
    )
