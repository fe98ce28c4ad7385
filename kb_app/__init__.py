"""kb: a private, local knowledge-base assistant.

Importing the package switches off every hub lookup and telemetry channel of the libraries kb uses, before any
of them is imported (huggingface_hub and Gradio read these variables once, at import).
"""

import os

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_DATASETS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "GRADIO_ANALYTICS_ENABLED": "False",
}.items():
    os.environ.setdefault(_name, _value)

__version__ = "0.2.0"

__all__ = ["Answer", "Assistant", "Citation", "KbError", "Settings", "load_settings"]

_EXPORTS = {
    "Answer": "kb_app.chat.pipeline",
    "Assistant": "kb_app.assistant",
    "Citation": "kb_app.chat.pipeline",
    "KbError": "kb_app.errors",
    "Settings": "kb_app.settings",
    "load_settings": "kb_app.settings",
}


def __getattr__(name: str):
    """The public surface, imported on first use so ``kb --help`` stays fast: ``kb_app.Assistant(...)``."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kb_app' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
