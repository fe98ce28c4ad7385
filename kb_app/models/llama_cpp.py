"""In-process GGUF models through llama-cpp-python; the chat template comes from the GGUF's own metadata."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

from kb_app.errors import ModelNotFoundError
from kb_app.models.base import Message


class LlamaCppModel:
    """A GGUF file loaded once; generation is serialised because a llama.cpp context is not thread-safe."""

    def __init__(
        self, gguf_path: Path, n_ctx: int, n_threads: int | None = None, chat_format: str | None = None
    ) -> None:
        if not gguf_path.is_file():
            raise ModelNotFoundError(
                f"model file {gguf_path} does not exist",
                "set llm.gguf_path (kb.yaml) or KB_LLM__GGUF_PATH to a local .gguf file, "
                "or unset it to use the bundled default",
            )
        from llama_cpp import Llama

        self._llm = Llama(
            model_path=str(gguf_path),
            n_ctx=n_ctx,
            n_threads=n_threads or os.cpu_count() or 2,
            chat_format=chat_format,
            verbose=False,
        )
        self.name = str(self._llm.metadata.get("general.name") or gguf_path.stem)
        self.path = gguf_path
        self.context_length = self._llm.n_ctx()
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream(self, messages: list[Message], max_tokens: int, temperature: float) -> Iterator[str]:
        with self._lock:
            for part in self._llm.create_chat_completion(
                messages=list(messages),  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=temperature,
                stream=True,
            ):
                delta = part["choices"][0].get("delta", {})  # type: ignore[index]
                if text := delta.get("content"):
                    yield text
