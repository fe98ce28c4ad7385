"""Model errors a user can act on (defined in ``kb_app.errors``, the one error tree; kept here for imports)."""

from __future__ import annotations

from kb_app.errors import (
    LogprobsUnavailableError,
    ModelGenerationError,
    ModelLoadError,
    ModelNotFoundError,
    ModelServerError,
)

__all__ = [
    "LogprobsUnavailableError",
    "ModelGenerationError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelServerError",
]
