"""Errors a user can act on: each says what went wrong and what to do about it."""

from __future__ import annotations


class KbError(Exception):
    """Base class: ``str(error)`` is a complete message for a person, ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  → {self.hint}" if self.hint else self.message


class ModelNotFoundError(KbError):
    """A configured model file or directory does not exist, or a hub name was given while offline."""


class UnsupportedFileError(KbError):
    """The file's format is not one kb can read."""


class DocumentReadError(KbError):
    """The file has a supported format but could not be read (corrupt, encrypted, empty)."""


class KnowledgeBaseNotFoundError(KbError):
    """The named knowledge base does not exist."""
