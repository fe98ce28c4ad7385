"""What a GGUF file is, read from its header alone: architecture, name, quantization, context, chat template.

``kb models`` shows this without loading the model, and the llama.cpp backend caps ``n_ctx`` by it. The
``gguf`` package's reader parses every tensor and token (seconds on a large vocabulary); this reads only the
key-value header and skips arrays, so it takes milliseconds.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from kb_app.models.errors import ModelLoadError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# llama.cpp's enum llama_ftype, for general.file_type (names as llama-quantize prints them).
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}


@dataclass(frozen=True)
class GgufInfo:
    path: Path
    size_bytes: int
    architecture: str
    name: str
    file_type: str  # quantization, e.g. "Q4_K_M"
    context_length: int | None  # what the model was trained for
    tokenizer_model: str | None  # "gpt2" (BPE) or "llama" (sentencepiece)
    chat_template: str | None
    kv_bytes_per_token: int | None = None  # f16 K and V cache, all layers; None when the header lacks a shape

    def kv_cache_bytes(self, n_ctx: int) -> int | None:
        """What llama.cpp's K/V cache takes for ``n_ctx`` tokens (its default f16 cache)."""
        return None if self.kv_bytes_per_token is None else self.kv_bytes_per_token * n_ctx


class _Header:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        value = self.buf[self.pos : self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return value

    def skip_string(self) -> None:
        self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.take("<I"), self.take("<Q")
            if item == _STRING:
                for _ in range(count):
                    self.skip_string()
            elif item in _SCALARS:
                self.pos += count * struct.calcsize(_SCALARS[item])
            else:
                raise ValueError(f"nested GGUF array type {item}")
            return None
        raise ValueError(f"unknown GGUF value type {kind}")


def read_gguf_info(path: Path) -> GgufInfo:
    """Header facts of ``path``; raises ``ModelLoadError`` if it is not a GGUF file."""
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise ValueError("no GGUF magic number")
            header = _Header(buf)
            header.pos = 4
            version = header.take("<I")
            if version < 2:
                raise ValueError(f"GGUF version {version} is too old")
            header.take("<Q")  # tensor count
            kv_count = header.take("<Q")
            meta: dict[str, object] = {}
            for _ in range(kv_count):
                key = header.string()
                meta[key] = header.value(header.take("<I"))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelLoadError(
            f"{path} is not a readable GGUF file ({exc})",
            "point llm.gguf_path at a .gguf made by llama.cpp's convert_hf_to_gguf.py (see docs/glm.md)",
        ) from exc
    arch = str(meta.get("general.architecture") or "unknown")
    file_type = meta.get("general.file_type")
    ctx = meta.get(f"{arch}.context_length")
    return GgufInfo(
        path=path,
        size_bytes=path.stat().st_size,
        architecture=arch,
        name=str(meta.get("general.name") or path.stem),
        file_type=FILE_TYPES.get(file_type, f"type {file_type}") if isinstance(file_type, int) else "unknown",
        context_length=int(ctx) if isinstance(ctx, int) else None,
        tokenizer_model=str(meta["tokenizer.ggml.model"]) if "tokenizer.ggml.model" in meta else None,
        chat_template=str(meta["tokenizer.chat_template"]) if "tokenizer.chat_template" in meta else None,
        kv_bytes_per_token=_kv_bytes_per_token(meta, arch),
    )


def _kv_bytes_per_token(meta: dict[str, object], arch: str) -> int | None:
    """2 bytes (f16) per K and V value, per layer, per KV head: the cache's size per token of context."""

    def number(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    layers, heads, width = number("block_count"), number("attention.head_count"), number("embedding_length")
    kv_heads = number("attention.head_count_kv") or heads
    head_dim = width // heads if width and heads else None
    key, value = number("attention.key_length") or head_dim, number("attention.value_length") or head_dim
    if not (layers and kv_heads and key and value):
        return None
    return 2 * layers * kv_heads * (key + value)
