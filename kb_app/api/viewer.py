"""The citation viewer's route: a cited PDF page as a PNG with the passage marked.

The page's side panel loads it as ``<img src="/api/kb/KB/documents/SOURCE/pages/N.png?chunk=ID">``: same
origin, so the session cookie authenticates it like any API call. ``SOURCE`` is the file as listed (``/``
included) and is never a path: the Assistant finds the chunk in that knowledge base, checks it lies on that page of
that file and renders the copy the ingest kept (named by its content's sha256).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from kb_app.api.errors import documented
from kb_app.api.knowledge_bases import NAME, Caller, bearer

router = APIRouter(prefix="/api/kb", tags=["citations"], dependencies=[Depends(bearer)])
MAX_PAGE = 1_000_000
PNG = {200: {"content": {"image/png": {}}, "description": "The page with the passage marked."}}


@router.get(
    # Any text as the page, checked below: "-1" or "x" is this route's 422, not the Gradio page's 404 behind it.
    NAME + "/documents/{source:kbsource}/pages/{page}.png",
    response_class=Response,
    responses={**PNG, **documented(401, 403, 404, 422, 503)},
)
def cited_page(
    name: str,
    source: str,
    page: Annotated[int, Path(ge=1, le=MAX_PAGE, description="1-based, as the citation names it.")],
    assistant: Caller,
    chunk: Annotated[str, Query(min_length=1, max_length=200, description="The cited chunk's id.")],
) -> Response:
    """Page `page` of the PDF `source` in `name`, the passage `chunk` marked (needs `read`: the image shows text)."""
    png = assistant.citation_page(name, source, page, chunk)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})
