"""Model errors a user can act on; each carries a hint naming the setting or command that fixes it."""

from __future__ import annotations

from kb_app.errors import KbError, ModelNotFoundError

__all__ = ["ModelGenerationError", "ModelLoadError", "ModelNotFoundError", "ModelServerError"]


class ModelLoadError(KbError):
    """The model's files are there but cannot be loaded: wrong format, a missing package, no GPU, remote code."""


class ModelGenerationError(KbError):
    """The model was loaded but failed while generating an answer."""


class ModelServerError(KbError):
    """An OpenAI-compatible model server is unreachable, too slow, refused the request, or broke off an answer."""
