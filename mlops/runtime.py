"""The numeric environment a result depends on: CPU-capability dispatch, pinned before torch loads, and recorded.

The same seed, data and thread count give other weights on another CPU when torch picks other kernels: ATen's
vectorised kernels (``ATEN_CPU_CAPABILITY``), oneDNN's convolutions (``ONEDNN_MAX_CPU_ISA``) and MKL's GEMM
(``MKL_CBWR``) each choose AVX-512 or AVX2 code by what the CPU offers, and their sums round differently (measured:
docs/benchmarks.md). Pinning all three to AVX2, which every x86-64 server CPU of the last decade has (Intel Xeon
and AMD EPYC alike), makes the choice the same everywhere. ``MLOPS_CPU_DISPATCH=native`` leaves it to torch (faster
on AVX-512 machines; results then hold for that CPU family only).
"""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

#: environment variable choosing the dispatch: ``avx2`` (default, pinned) or ``native``
DISPATCH_ENV = "MLOPS_CPU_DISPATCH"
PINNED = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}, "native": {}}
#: cuBLAS needs a fixed workspace for deterministic GEMMs on a GPU (torch.use_deterministic_algorithms)
GPU_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def pin_dispatch() -> str:
    """Set the pinned variables (an explicit setting in the environment wins); returns the dispatch mode."""
    mode = os.environ.get(DISPATCH_ENV, "avx2")
    if mode not in PINNED:
        # Runs at `import mlops`: a warning with what to do, not a traceback out of every command.
        warnings.warn(f"{DISPATCH_ENV}={mode!r} is not one of {sorted(PINNED)}: using avx2", stacklevel=2)
        mode = os.environ[DISPATCH_ENV] = "avx2"
    for name, value in {**PINNED[mode], **GPU_ENV}.items():
        os.environ.setdefault(name, value)
    return mode


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_tags(prefix: str) -> dict[str, str]:
    """What decided the numbers of this process: for lineage (MLflow tags), not for DVC outputs."""
    import torch

    names = sorted({n for pins in PINNED.values() for n in pins})
    return {
        f"{prefix}runtime.torch": torch.__version__,
        f"{prefix}runtime.cpu": cpu_model(),
        f"{prefix}runtime.cpu_capability": torch.backends.cpu.get_cpu_capability(),
        f"{prefix}runtime.dispatch": os.environ.get(DISPATCH_ENV, "avx2"),
        f"{prefix}runtime.pins": " ".join(f"{n}={os.environ.get(n, '')}" for n in names),
        f"{prefix}runtime.cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
