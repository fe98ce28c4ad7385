"""A local Hugging Face checkpoint through transformers, optionally quantized; streams with TextIteratorStreamer.

GLM-4 ``*-hf`` checkpoints (``GlmForCausalLM``) load natively. ChatGLM3 and the older GLM-4 repositories ship
their own Python code, which runs only with ``llm.trust_remote_code: true`` (off by default: it executes code
from the model directory). Quantization:

- ``int8``: on a CPU, int8 weights with torch's dynamic quantization (every Linear layer, per output channel;
  about a quarter of fp32's memory). The model is read in bf16 and converted one layer at a time, so loading
  never holds an fp32 copy of the whole model. (torchao would do the same, but merely installing it makes every
  transformers load in the process import it: seconds, and warnings.)
- ``4bit`` / ``8bit``: bitsandbytes NF4 / LLM.int8(), CUDA GPUs only (``pip install bitsandbytes accelerate``).

Files are only ever read from the local directory (``local_files_only``): nothing waits on the network.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kb_app.models.base import Message
from kb_app.models.choices import choice_logprobs, first_token_ids, mean_token_logprob
from kb_app.models.errors import ModelGenerationError, ModelLoadError, ModelNotFoundError
from kb_app.models.glm_templates import GLM_STOP_TOKENS, TEMPLATES, family_from_tokens, resolve_template_setting
from kb_app.models.special_tokens import Neutraliser, hf_special_tokens

# model_type values that transformers has no class for: such checkpoints run only on their own code
_REMOTE_CODE_ONLY = {"chatglm"}
_REMOTE_CODE_HINT = (
    "set llm.trust_remote_code: true (KB_LLM__TRUST_REMOTE_CODE=1) only if you trust the .py files in {path}; "
    "or use a GLM-4 *-hf checkpoint (native in transformers), or convert to GGUF for llama.cpp (docs/glm.md)"
)


_INCOMPLETE_HINT = (
    "check that {path} holds a complete checkpoint (config.json, the *.safetensors files, the tokenizer files), "
    "or use a GGUF with the llama_cpp backend (docs/glm.md)"
)


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory (no transformers import: ``kb models list`` stays fast)."""
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"{path} has no readable config.json, so it is not a Hugging Face model directory",
            "set llm.hf_path to the folder that holds config.json, the *.safetensors files and the tokenizer files",
        ) from exc


def trained_context(config: dict[str, Any]) -> int | None:
    """The window the model was trained for: ``max_position_embeddings`` or ChatGLM's ``seq_length``."""
    for key in ("max_position_embeddings", "seq_length", "max_sequence_length", "n_positions"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def needs_remote_code(config: dict[str, Any]) -> bool:
    """True for checkpoints known to run only on the Python files shipped with them (ChatGLM3, original GLM-4).

    Decided from config.json alone, so the refusal is instant; any other model that needs its own code is
    refused by transformers itself, and the error carries the same hint.
    """
    return bool(config.get("auto_map")) and config.get("model_type") in _REMOTE_CODE_ONLY


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("llm.device is 'cuda' but torch sees no CUDA GPU", "set llm.device: cpu (or auto)")
    return device


def quantization_config(quantization: str, device: str) -> Any | None:
    """The ``quantization_config`` for ``from_pretrained``: bitsandbytes 4/8-bit, or None (``int8`` is applied
    after loading, see ``quantize_int8_dynamic``).

    Each quantization runs on one kind of device; a mismatch fails here, with a hint, before anything is loaded.
    """
    if quantization == "none":
        return None
    if quantization == "int8":
        if device != "cpu":
            raise ModelLoadError(
                "llm.quantization 'int8' is CPU int8 (torch dynamic quantization) and this runs on a GPU",
                "on a GPU use llm.quantization: 8bit or 4bit (bitsandbytes)",
            )
        return None
    if device != "cuda":
        raise ModelLoadError(
            f"llm.quantization '{quantization}' uses bitsandbytes, which needs a CUDA GPU, and this runs on {device}",
            "on a CPU use llm.quantization: int8, or a q4 GGUF with the llama_cpp backend (docs/glm.md)",
        )
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",  # NF4 + double quantization: ~0.5 byte/weight, the QLoRA recipe
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def quantize_int8_dynamic(model: Any) -> Any:
    """Replace every ``nn.Linear`` by an int8 dynamically quantized one (per-channel weights), layer by layer.

    Each layer is converted to fp32 only while it is quantized, so a bf16-loaded model never needs fp32 memory
    as a whole. What is left (embeddings, norms) becomes fp32, which the quantized layers compute in.
    """
    import warnings

    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao marks this API as deprecated; it is what runs int8 on a CPU
        for name, module in list(model.named_modules()):
            if not isinstance(module, torch.nn.Linear):
                continue
            fp32 = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            fp32.load_state_dict({k: v.float() for k, v in module.state_dict().items()})
            fp32.qconfig = per_channel_dynamic_qconfig
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, DynamicInt8Linear.from_float(fp32))
    return model.float()


def _require_bitsandbytes() -> None:
    import importlib.util

    missing = [m for m in ("bitsandbytes", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelLoadError(
            f"4-bit/8-bit loading needs {' and '.join(missing)}, which kb does not install on CPU machines",
            "on the GPU machine: pip install bitsandbytes==0.50.2 accelerate==1.15.0",
        )


class TransformersModel:
    """A checkpoint loaded once; ``generate`` runs in a thread and streams text through TextIteratorStreamer.

    The tokenizer's special and added tokens are neutralised in message content (``special_tokens``).
    """

    scores_replies = True
    reads_first_token_logprobs = True

    def __init__(
        self,
        path: Path,
        n_ctx: int = 4096,
        quantization: str = "none",
        device: str = "auto",
        trust_remote_code: bool = False,
        chat_template: str | None = None,
        n_threads: int | None = None,
    ) -> None:
        config = read_config(path)
        if needs_remote_code(config) and not trust_remote_code:
            raise ModelLoadError(
                f"{path.name} (model_type {config.get('model_type')!r}) needs the Python code shipped with it",
                _REMOTE_CODE_HINT.format(path=path),
            )
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if n_threads:
            torch.set_num_threads(n_threads)
        self.device = resolve_device(device)
        qconfig = quantization_config(quantization, self.device)
        if quantization in ("4bit", "8bit"):
            _require_bitsandbytes()
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": True}
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            self._model = AutoModelForCausalLM.from_pretrained(
                path,
                quantization_config=qconfig,
                dtype=self._load_dtype(quantization),
                device_map={"": 0} if quantization in ("4bit", "8bit") else None,
                **kwargs,
            )
        except (OSError, ValueError, ImportError, RuntimeError) as exc:
            remote = config.get("auto_map") and not trust_remote_code
            hint = _REMOTE_CODE_HINT if remote else _INCOMPLETE_HINT
            raise ModelLoadError(f"transformers could not load {path}: {exc}", hint.format(path=path)) from exc
        if quantization == "int8":
            self._model = quantize_int8_dynamic(self._model)
        elif qconfig is None:
            self._model.to(self.device)
        self._model.eval()
        self.path = path
        self.name = path.name
        self.quantization = quantization
        trained = trained_context(config) or n_ctx or 4096
        self.context_length = min(n_ctx, trained) if n_ctx else trained
        self._template, self.template_source = self._choose_template(chat_template)
        self.neutralise = Neutraliser(hf_special_tokens(self._tokenizer))
        self._eos_ids = self._stop_ids()
        self._lock = threading.Lock()

    def _load_dtype(self, quantization: str) -> Any:
        """bf16 when int8 follows (half the memory while loading); fp32 on a CPU otherwise (bf16 matmuls are slow
        on most CPUs); the checkpoint's own dtype on a GPU."""
        import torch

        if quantization == "int8":
            return torch.bfloat16
        return torch.float32 if self.device == "cpu" else "auto"

    def _has_token(self, text: str) -> bool:
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        return len(ids) == 1 and self._tokenizer.convert_ids_to_tokens(ids[0]) == text

    def _choose_template(self, override: str | None) -> tuple[str | None, str]:
        """The configured template, else the tokenizer's own, else kb's GLM template, else an error."""
        if override:
            return resolve_template_setting(override), "llm.chat_template"
        if getattr(self._tokenizer, "chat_template", None):
            return None, "model"
        family = family_from_tokens(self._has_token)
        if family is not None:
            return TEMPLATES[family], f"kb's {family} template (the model's own is missing)"
        raise ModelLoadError(
            f"the tokenizer in {self.path} has no chat template", "set llm.chat_template to a Jinja chat template"
        )

    def _stop_ids(self) -> list[int]:
        """eos from generation_config (GLM lists <|user|> and <|observation|> there), plus GLM's turn ends."""
        eos = self._model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tokenizer.eos_token_id is not None:
            ids.add(self._tokenizer.eos_token_id)
        if family_from_tokens(self._has_token):
            ids |= {self._tokenizer.convert_tokens_to_ids(t) for t in GLM_STOP_TOKENS if self._has_token(t)}
        return sorted(ids)

    def prompt(self, messages: list[Message]) -> str:
        return self._tokenizer.apply_chat_template(
            self.neutralise.messages(messages), chat_template=self._template, add_generation_prompt=True, tokenize=False
        )

    def count_tokens(self, text: str) -> int:
        """Counted as it will be evaluated: neutralised, so a special-token string counts as the text it becomes."""
        return len(self._tokenizer.encode(self.neutralise(text), add_special_tokens=False))

    def reply_start_logprobs(self, messages: list[Message], choices: Sequence[Sequence[str]]) -> list[float]:
        """One forward pass over the prompt; the last position's logits give the first reply token."""
        import torch

        encoded = self._tokenizer(self.prompt(messages), add_special_tokens=False, return_tensors="pt")
        groups = [
            first_token_ids(words, lambda w: self._tokenizer.encode(w, add_special_tokens=False)) for words in choices
        ]
        with self._lock, torch.inference_mode():
            try:
                logits = self._model(**encoded.to(self.device)).logits[0, -1]
            except RuntimeError as exc:
                raise ModelGenerationError(
                    f"transformers failed while reading the reply's first token: {exc}",
                    "see the log; try a shorter question",
                ) from exc
        return choice_logprobs(logits.float().cpu().numpy(), groups)

    def reply_logprob(self, messages: list[Message], reply: str) -> float:
        """One forward pass over prompt and reply; the reply's positions give its tokens' probabilities."""
        import torch

        head = self._tokenizer.encode(self.prompt(messages), add_special_tokens=False)
        tail = self._tokenizer.encode(self.neutralise(reply), add_special_tokens=False)
        if not tail:
            raise ModelGenerationError("cannot score an empty reply", "pass a reply with at least one token")
        ids = torch.tensor([head + tail], device=self.device)
        with self._lock, torch.inference_mode():
            logits = self._model(input_ids=ids).logits[0, len(head) - 1 : -1]
        return mean_token_logprob(logits.float().cpu().numpy(), tail)

    def stream(self, messages: list[Message], max_tokens: int, temperature: float) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class Cancelled(StoppingCriteria):
            """Stops generate() when the reader goes away (the user stopped the answer)."""

            def __init__(self, event: threading.Event) -> None:
                self.event = event

            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> bool:
                return self.event.is_set()

        encoded = self._tokenizer(self.prompt(messages), add_special_tokens=False, return_tensors="pt")
        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        failure: list[BaseException] = []
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else self._eos_ids[0]

        def generate() -> None:
            try:
                with torch.inference_mode():
                    self._model.generate(
                        **encoded.to(self.device),
                        max_new_tokens=max_tokens,
                        eos_token_id=self._eos_ids,
                        pad_token_id=pad,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([Cancelled(cancel)]),
                        **sampling,
                    )
            except BaseException as exc:  # re-raised in the reading thread
                failure.append(exc)
                streamer.end()

        with self._lock:
            worker = threading.Thread(target=generate, name="kb-transformers-generate", daemon=True)
            worker.start()
            try:
                for text in streamer:
                    if text:
                        yield text
            finally:
                cancel.set()
                worker.join()
        if failure:
            raise ModelGenerationError(
                f"transformers failed while generating: {failure[0]}", "see the log; try a shorter question"
            ) from failure[0]
