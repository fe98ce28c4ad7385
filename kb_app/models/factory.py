"""Builds the configured chat model."""

from __future__ import annotations

from pathlib import Path

from kb_app.errors import ModelNotFoundError
from kb_app.models.base import ChatModel
from kb_app.models.bundled import bundled_gguf
from kb_app.settings import LlmSettings


def resolve_gguf(settings: LlmSettings, cache_dir: Path) -> Path:
    """The GGUF to load: the configured local path, or the bundled default. Hub names fail at once."""
    if settings.gguf_path is None:
        return bundled_gguf(cache_dir)
    path = Path(settings.gguf_path).expanduser()
    if not path.exists() and "/" in str(settings.gguf_path) and not str(settings.gguf_path).startswith(("/", ".")):
        raise ModelNotFoundError(
            f"llm.gguf_path {str(settings.gguf_path)!r} looks like a model-hub name, and kb never downloads",
            "download the .gguf on a connected machine, copy it here and set llm.gguf_path to the file",
        )
    return path


def build_chat_model(settings: LlmSettings, cache_dir: Path) -> ChatModel:
    from kb_app.models.llama_cpp import LlamaCppModel

    return LlamaCppModel(resolve_gguf(settings, cache_dir), settings.n_ctx, settings.n_threads, settings.chat_format)
