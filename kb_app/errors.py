"""Errors a user can act on: each says what went wrong (``message``) and what to do about it (``hint``).

The tree (a caller catches a family; ``kb_app.api.errors`` maps each family to one HTTP status)::

    KbError
    ├── SettingsError                 a bad value, an unknown key, an untrusted config file
    ├── StoreError                    Chroma server unreachable, collection built with another embedder
    │   └── KnowledgeBaseBusyError    another process writes to it, or `kb serve` holds the embedded store
    ├── KnowledgeBaseNameError        a name with a path separator, '..', control characters, or too long
    ├── KnowledgeBaseNotFoundError    no knowledge base of that name
    ├── ConversationNotFoundError     no conversation of that id among the caller's own
    ├── DocumentNotFoundError         no such file in the knowledge base, or no kept copy of it
    ├── LimitExceededError            a request over a limit: too many files at once, a question too long
    ├── AccessError                   users, grants and keys (auth.enabled)
    │   ├── AuthenticationError       not signed in, a wrong password, an unknown, revoked or expired key or session
    │   ├── PermissionDeniedError     signed in, but the grant held on that knowledge base does not allow it
    │   └── UnknownUserError          no user of that name
    ├── DocumentError                 one file could not be ingested (the batch goes on)
    │   ├── UnsupportedFileError
    │   └── DocumentReadError         corrupt, encrypted, empty, over a limit
    └── ModelError
        ├── ModelNotFoundError        no such file or directory, or a hub name while offline
        ├── ModelLoadError            files there but not loadable
        ├── ModelGenerationError      loaded, failed while answering
        └── ModelServerError          an OpenAI-compatible server unreachable, slow or broken off
            └── LogprobsUnavailableError   it sent no log-probabilities (the caller may fall back)

Ingestion's errors are defined in ``ingest.errors`` (``ingest`` never imports ``kb_app``) and re-exported here.
"""

from __future__ import annotations

from ingest.errors import (
    DocumentError,
    DocumentReadError,
    KbError,
    KnowledgeBaseBusyError,
    KnowledgeBaseNameError,
    ModelError,
    ModelNotFoundError,
    SettingsError,
    StoreError,
    UnsupportedFileError,
)

__all__ = [
    "AccessError",
    "AuthenticationError",
    "ConversationNotFoundError",
    "DocumentError",
    "DocumentNotFoundError",
    "DocumentReadError",
    "KbError",
    "KnowledgeBaseBusyError",
    "KnowledgeBaseNameError",
    "KnowledgeBaseNotFoundError",
    "LimitExceededError",
    "LogprobsUnavailableError",
    "ModelError",
    "ModelGenerationError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelServerError",
    "PermissionDeniedError",
    "SettingsError",
    "StoreError",
    "UnknownUserError",
    "UnsupportedFileError",
]


class KnowledgeBaseNotFoundError(KbError):
    """The named knowledge base does not exist."""


class ConversationNotFoundError(KbError):
    """No conversation of that id belongs to the caller (another user's is reported the same way)."""


class DocumentNotFoundError(KbError):
    """The knowledge base holds no file of that name, or kept no copy of it (``ingest.keep_originals``)."""


class LimitExceededError(KbError):
    """A request over one of kb's limits (``ui.max_files_per_upload``, ``ui.max_question_chars``, upload size)."""


class AccessError(KbError):
    """Who may do what: users, their grants on knowledge bases, their API keys and sessions."""


class AuthenticationError(AccessError):
    """The caller is not known: no or a wrong password, key or session (HTTP 401)."""


class PermissionDeniedError(AccessError):
    """The caller is known but holds no grant, or too small a one, on that knowledge base (HTTP 403)."""


class UnknownUserError(AccessError):
    """No user of that name (``kb users list`` shows them)."""


class ModelLoadError(ModelError):
    """The model's files are there but cannot be loaded: wrong format, a missing package, no GPU, remote code."""


class ModelGenerationError(ModelError):
    """The model was loaded but failed while generating an answer."""


class ModelServerError(ModelError):
    """An OpenAI-compatible model server is unreachable, too slow, refused the request, or broke off an answer."""


class LogprobsUnavailableError(ModelServerError):
    """A server sent no log-probabilities when asked for them: only a request tells, so callers may fall back."""
