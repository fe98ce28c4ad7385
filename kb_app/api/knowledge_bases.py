"""Knowledge-base routes (``/api/kb``): being written for issue 13."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/kb", tags=["knowledge bases"])
