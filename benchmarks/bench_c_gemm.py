"""The C target's GEMM kernel (``bp_dgemm`` / ``bp_sgemm``, targets/clike/gemm.py)
against NumPy's ``@`` (OpenBLAS, one thread) on the shapes of issue 13's nets.

    python benchmarks/bench_c_gemm.py            # full run (a minute or so)
    python benchmarks/bench_c_gemm.py --quick    # smoke run (seconds)
    python benchmarks/bench_c_gemm.py --cflags=-O3 --cflags="-O3 -march=native"

Per shape and dtype, four contenders, in this process, on the same operands:

* ``numpy``: ``np.matmul(op(a), op(b), out=c)`` (transposes as views: OpenBLAS's
  own trans flags, no copy), called from Python;
* ``ours/py``: our kernel through ctypes (argtypes bound once), called from Python;
* ``ours/C`` and ``blas/C``: the per-call time of a loop in C over ``reps`` calls
  of our kernel and of the very OpenBLAS NumPy uses (its ``cblas_?gemm``, found in
  the loaded library): the kernels alone, without the interpreter or ctypes.

Each round times a block of back-to-back calls of every contender, the order
rotated every round; the table gives the minimum over rounds of the per-call
time (µs) and the ratios ours/C : blas/C (kernel against kernel) and
ours/py : numpy (as a caller from Python sees it).  Each build of our kernel
(``--cflags``, several allowed) gets its own columns.  The results are first
checked against NumPy.  Nothing here asserts on timings.
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"     # before NumPy loads OpenBLAS

import argparse  # noqa: E402
import ctypes  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from _common import _blas_libs, blas_info, set_blas_threads  # noqa: E402

from bpcompile.targets.clike.gemm import gemm_name, gemm_source  # noqa: E402

# (net, m, n, k, trans_a, trans_b): out [m x n] = op(a) [m x k] @ op(b) [k x n],
# the forward product of a layer (x @ W, W stored [in x out]) and its two backward
# products (x_bar = h_bar @ W^T, W_bar = x^T @ h_bar)
SHAPES = [
    ("seed001 b1", 1, 3, 3, False, False),
    ("digits b1", 1, 128, 64, False, False),
    ("digits b32", 32, 128, 64, False, False),
    ("digits b32 x_bar", 32, 64, 128, False, True),
    ("digits b32 W_bar", 64, 128, 32, True, False),
    ("digits b32 l2", 32, 10, 128, False, False),
    ("digits b256", 256, 128, 64, False, False),
    ("digits b256 W_bar", 64, 128, 256, True, False),
    ("deep-thin", 64, 64, 64, False, False),
    ("deep-thin x_bar", 64, 64, 64, False, True),
    ("deep-thin W_bar", 64, 64, 64, True, False),
    ("mnist b1", 1, 256, 784, False, False),
    ("mnist b128", 128, 256, 784, False, False),
    ("mnist b128 W_bar", 784, 256, 128, True, False),
    ("mnist b128 l2", 128, 128, 256, False, False),
    ("mnist b128 l2 x_bar", 128, 256, 128, False, True),
]
QUICK = {"seed001 b1", "digits b32", "deep-thin W_bar", "mnist b128"}

HARNESS = """
typedef void (*blas_{p}gemm)(int order, int ta, int tb, long long m, long long n, long long k, {t} alpha,
    const {t}* a, long long lda, const {t}* b, long long ldb, {t} beta, {t}* c, long long ldc);
void loop_ours_{p}(int reps, int ta, int tb, int m, int n, int k, const {t}* a, int lda, const {t}* b, int ldb,
    {t}* c, int ldc);
void loop_ours_{p}(int reps, int ta, int tb, int m, int n, int k, const {t}* a, int lda, const {t}* b, int ldb,
    {t}* c, int ldc)
{{
    for (int r = 0; r < reps; r++) {f}(ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c, ldc);
}}
void loop_blas_{p}(blas_{p}gemm fn, int reps, int ta, int tb, int m, int n, int k, const {t}* a, int lda,
    const {t}* b, int ldb, {t}* c, int ldc);
void loop_blas_{p}(blas_{p}gemm fn, int reps, int ta, int tb, int m, int n, int k, const {t}* a, int lda,
    const {t}* b, int ldb, {t}* c, int ldc)
{{
    for (int r = 0; r < reps; r++)    /* 101 row-major, 111 no transpose, 112 transpose */
        fn(101, ta ? 112 : 111, tb ? 112 : 111, m, n, k, 1, a, lda, b, ldb, 0, c, ldc);
}}
"""

CTYPE = {"float32": ctypes.c_float, "float64": ctypes.c_double}
PREFIX = {"float32": "s", "float64": "d"}


def build(cflags: str, tmp: Path, tag: int) -> ctypes.CDLL:
    text = "#include <stddef.h>\n" + gemm_source(("float32", "float64"), linkage="")
    for dtype, t in (("float32", "float"), ("float64", "double")):
        text += HARNESS.format(p=PREFIX[dtype], t=t, f=gemm_name(dtype))
    src = tmp / f"gemm{tag}.c"
    src.write_text(text)
    lib = tmp / f"gemm{tag}.so"
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", *shlex.split(cflags),
           "-fPIC", "-shared", str(src), "-o", str(lib)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_c_gemm: {' '.join(cmd)} failed:\n" + "\n".join(r.stderr.splitlines()[:20]))
    return ctypes.CDLL(str(lib))


def blas_gemm(dtype: str):
    """The address of the loaded OpenBLAS's cblas_?gemm (64-bit ints: NumPy's build), or None."""
    p = PREFIX[dtype]
    for path in _blas_libs():
        lib = ctypes.CDLL(path)
        for sym in (f"scipy_cblas_{p}gemm64_", f"cblas_{p}gemm64_"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                return ctypes.cast(fn, ctypes.c_void_p).value
    return None


def operands(dtype, m, n, k, ta, tb, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b, np.zeros((m, n), dtype)


def contenders(libs, dtype, m, n, k, ta, tb, reps):
    """{name: (callable running one block, calls per block)}."""
    a, b, c = operands(dtype, m, n, k, ta, tb)
    opa, opb = (a.T if ta else a), (b.T if tb else b)
    out = {}
    ref = opa.astype(np.float64) @ opb.astype(np.float64)
    tol = 1e-12 if dtype == "float64" else 1e-5
    scale = np.abs(opa).astype(np.float64) @ np.abs(opb).astype(np.float64)
    t, i, ptr = CTYPE[dtype], ctypes.c_int, ctypes.c_void_p
    # the C loops get raw addresses: every block holds the arrays (keep) so they outlive it
    keep = (a, b, c)
    pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data
    lda, ldb = a.shape[1], b.shape[1]

    def numpy_block():
        for _ in range(reps):
            np.matmul(opa, opb, out=c)
    out["numpy"] = numpy_block
    p = PREFIX[dtype]
    blas = blas_gemm(dtype)
    for tag, lib in libs.items():
        fn = getattr(lib, gemm_name(dtype))
        fn.argtypes = [i, i, i, i, i, t, ptr, i, ptr, i, t, ptr, i]
        fn.restype = None
        c[:] = np.nan
        fn(int(ta), int(tb), m, n, k, 1.0, pa, lda, pb, ldb, 0.0, pc, n)
        err = np.max(np.abs(c - ref) / np.maximum(scale, 1e-300))
        if not err <= tol:
            raise SystemExit(f"bench_c_gemm: {dtype} {m}x{n}x{k} ta={ta} tb={tb} [{tag}]: rel error {err:.3g}")

        def py_block(fn=fn, keep=keep):
            for _ in range(reps):
                fn(int(ta), int(tb), m, n, k, 1.0, pa, lda, pb, ldb, 0.0, pc, n)
        loop = getattr(lib, f"loop_ours_{p}")
        loop.argtypes = [i, i, i, i, i, i, ptr, i, ptr, i, ptr, i]

        def c_block(loop=loop, keep=keep):
            loop(reps, int(ta), int(tb), m, n, k, pa, lda, pb, ldb, pc, n)
        out[f"ours/py {tag}"] = py_block
        out[f"ours/C {tag}"] = c_block
        if blas is not None and "blas/C" not in out:
            bl = getattr(lib, f"loop_blas_{p}")
            bl.argtypes = [ptr, i, i, i, i, i, i, ptr, i, ptr, i, ptr, i]

            def blas_block(bl=bl, keep=keep):
                bl(blas, reps, int(ta), int(tb), m, n, k, pa, lda, pb, ldb, pc, n)
            c[:] = np.nan
            blas_block()
            if not np.max(np.abs(c - ref) / np.maximum(scale, 1e-300)) <= tol:
                raise SystemExit(f"bench_c_gemm: the OpenBLAS found ({blas:#x}) does not compute {m}x{n}x{k}")
            out["blas/C"] = blas_block
    return out


def measure(blocks: dict, reps: int, rounds: int) -> dict:
    """{name: [per-call seconds, one per round]}, the order rotated every round."""
    names = list(blocks)
    times = {nm: [] for nm in names}
    for nm in names:            # warm up
        blocks[nm]()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for nm in order:
            t0 = time.perf_counter()
            blocks[nm]()
            times[nm].append((time.perf_counter() - t0) / reps)
    return times


def reps_for(flops: float, quick: bool) -> int:
    """Calls per block: about 2 ms of work at 10 GFLOP/s, at least 5."""
    target = 2e-4 if quick else 2e-3
    return max(5, min(20000, int(target * 1e10 / max(flops, 1.0))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few shapes, few rounds (smoke run)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--cflags", action="append", default=None,
                    help="one build of the kernel per --cflags=STRING, several allowed "
                         "(default: -O2, and -O3 -march=native -ffp-contract=fast)")
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    args = ap.parse_args(argv)
    args.cflags = args.cflags or ["-O2", "-O3 -march=native -ffp-contract=fast"]
    rounds = args.rounds or (3 if args.quick else 15)
    set_blas_threads(1)
    print(f"# machine: {blas_info()}")
    print(f"# per-call µs, min over {rounds} rounds of back-to-back blocks; ratios < 1: ours is faster")
    with tempfile.TemporaryDirectory(prefix="bench_c_gemm_") as tmp:
        libs = {f"[{j}]": build(fl, Path(tmp), j) for j, fl in enumerate(args.cflags)}
        for j, fl in enumerate(args.cflags):
            print(f"# build [{j}]: cc {fl}")
        if blas_gemm("float64") is None:
            print("# no cblas_?gemm found in the loaded BLAS: blas/C column empty")
        shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK]
        ratios = {tag: {"C": [], "py": []} for tag in libs}
        for dtype in args.dtype:
            head = f"{'shape':21} {'m x n x k':>14} {'op':>3} {'numpy':>8} {'blas/C':>8}"
            for tag in libs:
                head += f" | {'ours/C' + tag:>9} {'ours/py' + tag:>10} {'GF/s':>5} {'C:blas':>6} {'py:np':>6}"
            print(f"\n## {dtype}\n{head}")
            for net, m, n, k, ta, tb in shapes:
                flops = 2.0 * m * n * k
                reps = reps_for(flops, args.quick)
                times = measure(contenders(libs, dtype, m, n, k, ta, tb, reps), reps, rounds)
                best = {nm: min(v) * 1e6 for nm, v in times.items()}
                blas_c = best.get("blas/C", math.nan)
                op = ("T" if ta else "N") + ("T" if tb else "N")
                row = f"{net:21} {f'{m}x{n}x{k}':>14} {op:>3} {best['numpy']:8.2f} {blas_c:8.2f}"
                for tag in libs:
                    oc, op_ = best[f"ours/C {tag}"], best[f"ours/py {tag}"]
                    r_c, r_py = oc / blas_c, op_ / best["numpy"]
                    ratios[tag]["C"].append(r_c)
                    ratios[tag]["py"].append(r_py)
                    row += f" | {oc:9.2f} {op_:10.2f} {flops / oc / 1e3:5.1f} {r_c:6.2f} {r_py:6.2f}"
                print(row, flush=True)
        print()
        for tag, fl in zip(libs, args.cflags):
            rc = [x for x in ratios[tag]["C"] if math.isfinite(x)]
            gm_c = statistics.geometric_mean(rc) if rc else math.nan
            gm_py = statistics.geometric_mean(ratios[tag]["py"])
            print(f"overall {tag} ({fl}): geomean ours/C : blas/C {gm_c:.2f}, ours/py : numpy {gm_py:.2f}")


if __name__ == "__main__":
    main()
