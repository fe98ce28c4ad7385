"""The errors ingestion raises; ``kb_app.errors`` re-exports them and documents the whole tree.

They live here, at the bottom of the house, because ``ingest`` never imports ``kb_app``.
"""

from __future__ import annotations


class KbError(Exception):
    """Base class: ``str(error)`` is a complete message for a person, ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  → {self.hint}" if self.hint else self.message


class SettingsError(KbError):
    """A setting has a bad value, an unknown key, or comes from a file kb refuses to trust."""


class StoreError(KbError):
    """A store cannot be used: a Chroma server is unreachable, a collection was built with another embedder."""


class KnowledgeBaseBusyError(StoreError):
    """Another process is writing to the knowledge base, or a running ``kb serve`` holds its embedded store."""


class KnowledgeBaseNameError(KbError):
    """A knowledge-base name kb refuses: a path separator, ``..``, control characters, empty or too long."""


class DocumentError(KbError):
    """One document could not be ingested; the rest of the batch goes on."""


class UnsupportedFileError(DocumentError):
    """The file's format is not one kb can read."""


class DocumentReadError(DocumentError):
    """The file has a supported format but could not be read (corrupt, encrypted, empty, over a limit)."""


class ModelError(KbError):
    """A model (chat or embedding) cannot be found, loaded or run."""


class ModelNotFoundError(ModelError):
    """A configured model file or directory does not exist, or a hub name was given while offline."""
