"""OpenAI-compatible routes (``/v1``): being written for issue 13."""

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
