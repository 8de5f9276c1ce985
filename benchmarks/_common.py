"""Helpers shared by the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPECS = HERE / "specs"

if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def _blas_libs():
    try:
        with open("/proc/self/maps") as f:
            return sorted({line.split()[-1] for line in f
                           if "blas" in line.lower() and ".so" in line})
    except OSError:
        return []


def set_blas_threads(n: int) -> bool:
    """Set the BLAS thread count at run time (OpenBLAS via ctypes); True if it worked."""
    for path in _blas_libs():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                    "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                return True
    return False


def blas_info() -> str:
    """One line: CPU count, BLAS library and how many threads it uses (best effort)."""
    threads = "?"
    name = "?"
    try:
        for path in _blas_libs():
            lib = ctypes.CDLL(path)
            for sym in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                        "openblas_get_num_threads", "MKL_Get_Max_Threads"):
                fn = getattr(lib, sym, None)
                if fn is not None:
                    threads = str(fn())
                    name = os.path.basename(path)
                    break
            if threads != "?":
                break
    except OSError:
        pass
    env = {k: v for k, v in os.environ.items()
           if k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return (f"numpy {np.__version__}, python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"BLAS {name} threads={threads}" + (f", env {env}" if env else ""))


def random_batch(module, n, seed=0):
    """A batch of random inputs (standard normal features, uniform labels) for ``module``."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for k, s in module.INPUT_SHAPES.items():
        if k in module.LABEL_CLASSES:   # labels [N], tokens [N, T]
            inputs[k] = rng.integers(0, module.LABEL_CLASSES[k], (n, *s))
        else:
            inputs[k] = rng.standard_normal((n, *s)).astype(module.DTYPE)
    return inputs
