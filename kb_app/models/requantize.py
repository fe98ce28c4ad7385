"""Re-quantizing a bundled GGUF once, on this machine, to a format llama.cpp's CPU kernels run faster.

The bundled files are Q4_K_M. llama.cpp repacks IQ4_NL and Q4_0 weights into its interleaved CPU layout at load
time, so on this project's 2-core x86 machine such a copy of the 0.5B model reads a prompt about 1.5x faster and
decodes 1.45x faster than the Q4_K_M it is made from; IQ4_NL's non-linear 4-bit codebook kept the dev sets'
answers where Q4_0 lost some (bench/README.md, session 8). ``llm.requantize`` chooses the format; the copy is
written beside the assembled file by llama.cpp's own quantizer in a child process (its log stays out of the
terminal, and a crash there cannot take the app down), to a temporary name first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kb_app.errors import ModelLoadError

# llama.h's llama_ftype values for the formats ``llm.requantize`` offers
FTYPES = {"iq4_nl": 25, "q4_0": 2}


def requantize(source: Path, target: Path, fmt: str) -> Path:
    """Write ``source`` re-quantized to ``fmt`` at ``target`` (atomically) and return ``target``."""
    if fmt not in FTYPES:
        raise ModelLoadError(f"llm.requantize {fmt!r} is not a format kb offers", f"use one of {', '.join(FTYPES)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
    done = subprocess.run(
        [sys.executable, "-m", "kb_app.models.requantize", str(source), str(tmp), str(FTYPES[fmt])],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise ModelLoadError(
            f"llama.cpp could not re-quantize {source.name} to {fmt}: {detail[0]}",
            "set llm.requantize: none to run the file as shipped",
        )
    tmp.replace(target)
    return target


def _main(source: str, target: str, ftype: str) -> int:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    return int(llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)))


if __name__ == "__main__":
    raise SystemExit(_main(*sys.argv[1:4]))
