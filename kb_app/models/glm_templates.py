"""Chat templates for the ChatGLM family, for GGUFs and checkpoints that carry none or a broken one.

Without a template llama-cpp-python falls back to the llama-2 format, and a GLM model prompted that way answers
badly: GLM needs the ``[gMASK]<sop>`` prefix and its role tokens (``<|system|>``, ``<|user|>``,
``<|assistant|>``), and ends its turn by emitting ``<|user|>`` or ``<|observation|>``, not only the eos token.

The two templates are the ones the models' own tokenizers ship (chatglm3-6b and glm-4-9b-chat
``tokenizer_config.json``), less the tool-calling branch kb never takes; tests check them token by token
against ``apply_chat_template`` and against llama.cpp's built-in formatter.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

GlmFamily = Literal["chatglm3", "glm4"]

# chatglm3-6b: sentencepiece tokenizer; "[gMASK]" and "sop" are special pieces; content follows "\n ".
CHATGLM3_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n {{ message['content'] }}"
    "{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# glm-4-9b-chat (and the -hf checkpoints): byte-level BPE; "[gMASK]<sop>" once, each turn "<|role|>\n" + content;
# empty messages are skipped, as the official template does. The model itself writes the "\n" after <|assistant|>.
GLM4_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}{% if message['content'] %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TEMPLATES: dict[str, str] = {"chatglm3": CHATGLM3_TEMPLATE, "glm4": GLM4_TEMPLATE}

# Tokens that end a GLM assistant turn: eos, the next user turn, a tool result.
GLM_STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")

_PROBE = [
    {"role": "system", "content": "S-probe"},
    {"role": "user", "content": "U-probe"},
    {"role": "assistant", "content": "A-probe"},
    {"role": "user", "content": "Q-probe"},
]


def glm_family(architecture: str | None, tokenizer_model: str | None = None) -> GlmFamily | None:
    """Which GLM template a GGUF needs, from ``general.architecture`` and ``tokenizer.ggml.model``.

    llama.cpp's ``chatglm`` architecture holds ChatGLM3 (sentencepiece, ``llama`` tokenizer) and GLM-4-9B-chat
    (byte-level BPE, ``gpt2``); ``glm4`` holds GLM-4-0414. Anything else is not a GLM: ``None``.
    """
    if architecture == "chatglm":
        return "chatglm3" if tokenizer_model == "llama" else "glm4"
    if architecture in ("glm4", "glmedge"):
        return "glm4"
    return None


def family_from_tokens(has_token) -> GlmFamily | None:
    """GLM family of a tokenizer by its special tokens: GLM-4 has ``<sop>``, ChatGLM3 has ``sop``."""
    if not (has_token("[gMASK]") and has_token("<|user|>")):
        return None
    return "glm4" if has_token("<sop>") else "chatglm3"


@cache
def _environment():
    """The Jinja environment transformers and llama-cpp-python render chat templates in."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])


def render(template: str, messages: list[dict], add_generation_prompt: bool = True, **extra: object) -> str:
    def raise_exception(message: str) -> None:
        raise ValueError(message)

    return (
        _environment()
        .from_string(template)
        .render(
            messages=messages, add_generation_prompt=add_generation_prompt, raise_exception=raise_exception, **extra
        )
    )


def compiles(template: str) -> bool:
    """True when ``template`` is valid Jinja (it may still fail or be wrong when rendered)."""
    from jinja2 import TemplateSyntaxError

    try:
        _environment().from_string(template)
    except TemplateSyntaxError:
        return False
    return True


def is_usable_glm_template(template: str | None) -> bool:
    """True when ``template`` renders a GLM conversation: the prefix, every turn, and the assistant cue at the end."""
    if not template:
        return False
    try:
        text = render(template, _PROBE, bos_token="", eos_token="")
    except Exception:  # any syntax or runtime error in a template from a file makes it unusable
        return False
    turns_ok = all(m["content"] in text for m in _PROBE) and "<|user|>" in text and "<|system|>" in text
    return "[gMASK]" in text and turns_ok and text.rstrip("\n").endswith("<|assistant|>")


def resolve_template_setting(value: str | None) -> str | None:
    """``llm.chat_template``: a shipped name ('chatglm3', 'glm4') or a Jinja template string."""
    if value is None:
        return None
    return TEMPLATES.get(value.strip().lower(), value)


def choose_template(
    override: str | None, family: GlmFamily | None, model_template: str | None
) -> tuple[str | None, str]:
    """The template to use and where it came from: the setting, the model's own, or kb's GLM fallback.

    ``(None, "model")`` means: leave it to the runtime (the model's own template, or its default).
    """
    if override:
        return resolve_template_setting(override), "llm.chat_template"
    if family is None:
        return None, "model"
    if is_usable_glm_template(model_template):
        return model_template, "model"
    return TEMPLATES[family], f"kb's {family} template (the model's own is {'broken' if model_template else 'missing'})"
