"""Helpers shared by the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import sys
import timeit
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


def softmax_ce_backward_inplace(z, label, rows, N):
    """z: logits [N, K], overwritten with dL/dz.  Returns the mean loss."""
    z -= z.max(axis=1, keepdims=True)           # stable: shift by the row max
    picked = z[rows, label]                     # shifted logit of the label
    np.exp(z, out=z)                            # z <- exp(z - max)
    s = z.sum(axis=1)
    loss = (np.log(s).sum() - picked.sum()) / N
    s *= N
    np.reciprocal(s, out=s)
    z *= s[:, None]                             # z <- softmax / N
    z[rows, label] -= 1.0 / N                   # ... - onehot / N
    return loss


def calls_per_round(fn, target_s):
    """How many calls make a round last about ``target_s`` seconds."""
    n, t = 1, 0.0
    while True:
        t = timeit.timeit(fn, number=n)
        if t >= target_s / 4 or n >= 1 << 20:
            break
        n *= 2
    return max(1, int(n * target_s / max(t, 1e-9)))


def _minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_interleaved(fns, rounds, target_s, equal_blocks=False):
    """Interleaved timing of several callables, the order rotated each round.

    Each round times a block of back-to-back calls of every callable: one number
    of calls for all (the fastest callable's block lasts about ``target_s``) or,
    with ``equal_blocks``, a number per callable, so that every block lasts about
    ``target_s`` (for callables of very different speeds).

    Returns one (per-call times in seconds, minor page faults per call) pair per
    callable; the faults are counted during the timed calls themselves (fresh
    pages the kernel had to map: large temporaries that malloc got from mmap or
    had trimmed off the heap).
    """
    for _ in range(3):  # warm caches, BLAS threads, allocator
        for fn in fns:
            fn()
    numbers = [calls_per_round(fn, target_s) for fn in fns]
    if not equal_blocks:
        numbers = [max(numbers)] * len(fns)
    times = [[] for _ in fns]
    faults = [0] * len(fns)
    for r in range(rounds):
        for i in list(range(r % len(fns), len(fns))) + list(range(r % len(fns))):
            f0 = _minflt()
            times[i].append(timeit.timeit(fns[i], number=numbers[i]) / numbers[i])
            faults[i] += _minflt() - f0
    return [(t, f / (rounds * n)) for t, f, n in zip(times, faults, numbers)]
