"""The C target's GEMM kernel (targets/clike/gemm.py), compiled alone with the
system C compiler into a shared library and checked through ctypes against
NumPy: odd and edge shapes, the four transpose cases, alpha and beta, leading
dimensions wider than the rows, float32 and float64; once under
AddressSanitizer and UndefinedBehaviorSanitizer; and the ``-DBPC_CBLAS`` path
where a CBLAS (``cblas.h`` and a library) is installed."""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bpcompile.targets.clike import Gemm, check_c_source
from bpcompile.targets.clike.gemm import BLOCKING, gemm_call, gemm_name, gemm_source, stack_bytes

CC = os.environ.get("CC", "cc")
WARN = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
DTYPES = ("float32", "float64")
TOL = {"float32": 1e-5, "float64": 1e-12}
CTYPE = {"float32": ctypes.c_float, "float64": ctypes.c_double}

pytestmark = pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC})")


def compile_lib(tmp: Path, name: str, flags: list, libs: list = ()) -> Path:
    """The kernel of both dtypes, exported, compiled with ``flags`` into tmp/name.so."""
    src = tmp / f"{name}.c"
    text = gemm_source(DTYPES, linkage="")
    check_c_source(text, "gemm")
    src.write_text("#include <stddef.h>\n" + text)
    lib = tmp / f"{name}.so"
    cmd = [CC, *WARN, *flags, "-fPIC", "-shared", str(src), "-o", str(lib), *libs]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return lib


def build(tmp: Path, name: str, flags: list, libs: list = ()) -> ctypes.CDLL:
    """``compile_lib``, loaded."""
    return ctypes.CDLL(str(compile_lib(tmp, name, flags, libs)))


def bind(lib, dtype):
    fn = getattr(lib, gemm_name(dtype))
    t, p, i = CTYPE[dtype], ctypes.c_void_p, ctypes.c_int
    fn.argtypes = [i, i, i, i, i, t, p, i, p, i, t, p, i]
    fn.restype = None
    return fn


def run_gemm(fn, ta, tb, a, b, c, alpha, beta, m, n, k):
    """c = alpha op(a) op(b) + beta c in place through the kernel; a, b, c 2-D C-contiguous."""
    fn(int(ta), int(tb), m, n, k, alpha, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1],
       beta, c.ctypes.data, c.shape[1])


def operands(rng, dtype, ta, tb, m, n, k, pad=0):
    """op(a) [m x k], op(b) [k x n] stored as the flags say, c [m x n]; ``pad``
    extra columns in every array (leading dimensions wider than the rows)."""
    a = rng.standard_normal((k, m + pad) if ta else (m, k + pad)).astype(dtype)
    b = rng.standard_normal((n, k + pad) if tb else (k, n + pad)).astype(dtype)
    c = rng.standard_normal((m, n + pad)).astype(dtype)
    opa = a[:, :m].T if ta else a[:, :k]
    opb = b[:, :k].T if tb else b[:, :n]
    return a, b, c, opa, opb


def check(fn, dtype, ta, tb, m, n, k, alpha=1.0, beta=0.0, pad=0, seed=0):
    rng = np.random.default_rng(seed)
    a, b, c, opa, opb = operands(rng, dtype, ta, tb, m, n, k, pad)
    if beta == 0.0:
        c[:, :n] = np.nan   # BLAS: c is not read when beta is 0
    c0 = c.copy()
    want = alpha * (opa.astype(np.float64) @ opb.astype(np.float64))
    if beta != 0.0:
        want += beta * c0[:, :n].astype(np.float64)
    run_gemm(fn, ta, tb, a, b, c, alpha, beta, m, n, k)
    got = c[:, :n].astype(np.float64)
    # the error of a sum of k products, relative to the sum of their magnitudes
    scale = abs(alpha) * (np.abs(opa).astype(np.float64) @ np.abs(opb).astype(np.float64))
    scale += abs(beta) * np.abs(np.nan_to_num(c0[:, :n].astype(np.float64)))
    err = np.max(np.abs(got - want) / np.maximum(scale, np.finfo(np.float64).tiny), initial=0.0)
    assert np.all(np.isfinite(got)), f"{dtype} {ta=} {tb=} {m}x{n}x{k}: non-finite output"
    assert err <= TOL[dtype], f"{dtype} {ta=} {tb=} {m}x{n}x{k} alpha={alpha} beta={beta}: rel error {err:.3g}"
    if pad:   # the padding columns of c are untouched
        np.testing.assert_array_equal(c[:, n:], c0[:, n:])


def edge_shapes(dtype):
    """1 x 1 x 1, odd sizes, one row, one column, k = 1, and sizes around the blocks."""
    small = [(1, 1, 1), (1, 7, 1), (7, 1, 1), (1, 1, 9), (3, 5, 7), (1, 33, 17), (19, 1, 23),
             (5, 3, 1), (1, 128, 64), (32, 1, 64), (13, 29, 31), (4, 9, 5), (5, 40, 0), (6, 17, 1)]
    shapes = small + [(40, 5, 9)]   # narrow: c^T computed
    for b in BLOCKING[dtype].values():   # the blocks of every instruction set's build
        shapes += [(b.mr + 1, b.nr + 1, 3), (b.mr - 1, b.nr - 1, b.kc + 1), (2 * b.mr + 3, b.nc + 1, b.kc - 1),
                   (b.mr, b.nr, b.kc), (b.mr * 3, b.nc * 2, b.kc * 2), (9, 2 * b.nc + 5, 2 * b.kc + 3),
                   (b.mr, b.nr, 1), (2 * b.mr, 3 * b.nr - 1, b.kc), (b.mr + 1, 2 * b.nr, 2 * b.kc - 1),
                   (33, b.mr, b.kc + 7), (2 * b.nr + 1, b.mr + 1, 2)]   # the last two: c^T computed
    return list(dict.fromkeys(shapes))


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return build(tmp_path_factory.mktemp("gemm"), "gemm_o2", ["-O2"])


def test_source_passes_the_c_check_and_names():
    text = gemm_source(("float64", "float32"))
    check_c_source(text, "gemm")
    assert "bp_dgemm(" in text and "bp_sgemm(" in text
    assert "malloc" not in text
    assert gemm_source(("float32",)).count("bp_dgemm") == 0
    assert all(stack_bytes(d) <= 80 * 1024 for d in DTYPES)   # fits a small thread stack


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="no GEMM for dtype 'float16'"):
        gemm_source(("float16",))
    with pytest.raises(ValueError, match="no dtype"):
        gemm_source(())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_edge_shapes_all_transposes(lib, dtype, ta, tb):
    fn = bind(lib, dtype)
    for i, (m, n, k) in enumerate(edge_shapes(dtype)):
        check(fn, dtype, ta, tb, m, n, k, seed=i)


@pytest.mark.parametrize("dtype", DTYPES)
def test_alpha_beta_and_leading_dimensions(lib, dtype):
    fn = bind(lib, dtype)
    for i, (alpha, beta) in enumerate([(1.0, 1.0), (-0.5, 2.0), (2.5, 0.0), (1.0, -1.0), (0.0, 0.5), (0.0, 0.0)]):
        for ta, tb in itertools.product([False, True], repeat=2):
            # (40, 5, 9), (133, 6, 150): narrow c, computed as c^T = op(b)^T op(a)^T
            for m, n, k in [(7, 21, 5), (17, 70, 131), (1, 3, 2), (40, 5, 9), (133, 6, 150)]:
                check(fn, dtype, ta, tb, m, n, k, alpha, beta, pad=3, seed=i)


@pytest.mark.parametrize("dtype", DTYPES)
def test_net_shapes(lib, dtype):
    """The shapes of the issue's nets: digits, MNIST, deep-thin, batch-1 rows."""
    fn = bind(lib, dtype)
    for m, n, k in [(32, 128, 64), (128, 256, 784), (64, 64, 64), (1, 128, 64), (256, 10, 128)]:
        for ta, tb in itertools.product([False, True], repeat=2):
            check(fn, dtype, ta, tb, m, n, k)


def _cpu_flags():
    """The instruction-set flags of this CPU (Linux), or an empty set."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))


def _takes(flags):
    r = subprocess.run([CC, *flags, "-x", "c", "-c", "-", "-o", os.devnull], input="int x;\n",
                       capture_output=True, text=True)
    return r.returncode == 0


# The builds that pick each of the kernel's micro-kernels (gemm.ISAS, then plain C):
# (flags, the CPU flags the machine needs to run them)
BUILDS = {
    "native": (["-O3", "-march=native", "-ffp-contract=fast"], set()),
    "avx512": (["-O3", "-mavx512f", "-mfma", "-ffp-contract=fast"], {"avx512f", "fma"}),
    "avx2": (["-O3", "-mavx2", "-mfma", "-ffp-contract=fast"], {"avx2", "fma"}),
    "portable": (["-O3", "-march=x86-64"] if os.uname().machine == "x86_64" else ["-O3"], set()),
}


@pytest.mark.parametrize("build_name", list(BUILDS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_build(tmp_path, dtype, build_name):
    """The fast builds (as bench_c_gemm.py measures them; each instruction set's
    micro-kernel where this CPU runs it): the same results."""
    flags, needs = BUILDS[build_name]
    if not _takes(flags):
        pytest.skip(f"the compiler takes no {' '.join(flags)}")
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(needs - _cpu_flags())}")
    fn = bind(build(tmp_path, f"gemm_{build_name}", flags), dtype)
    for ta, tb in itertools.product([False, True], repeat=2):
        for i, (m, n, k) in enumerate(edge_shapes(dtype) + [(32, 128, 64), (128, 256, 784)]):
            check(fn, dtype, ta, tb, m, n, k, alpha=1.0 if i % 2 else -0.75, beta=0.0 if i % 3 else 0.5,
                  pad=i % 2, seed=i)


def test_benchmark_quick():
    """benchmarks/bench_c_gemm.py --quick runs and prints its rows (no timing asserted)."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_c_gemm.py"), "--quick", "--rounds", "1"],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for dtype in DTYPES:
        assert f"## {dtype}" in r.stdout, r.stdout
    assert r.stdout.count("digits b32 ") == 2 and r.stdout.count("mnist b128 ") == 2, r.stdout
    assert "overall [0] (-O2): geomean" in r.stdout, r.stdout


def test_deterministic(lib):
    fn = bind(lib, "float64")
    rng = np.random.default_rng(3)
    a, b, c, _, _ = operands(rng, "float64", False, True, 45, 77, 300)
    outs = []
    for _ in range(3):
        c[:] = 0
        run_gemm(fn, False, True, a, b, c, 1.0, 0.0, 45, 77, 300)
        outs.append(c.copy())
    assert all(np.array_equal(outs[0], o) for o in outs)


def test_k_zero_scales_c(lib):
    fn = bind(lib, "float64")
    c = np.full((3, 4), 2.0)
    a = np.zeros((3, 1))
    b = np.zeros((1, 4))
    fn(0, 0, 3, 4, 0, 1.0, a.ctypes.data, 1, b.ctypes.data, 4, 3.0, c.ctypes.data, 4)
    np.testing.assert_array_equal(c, 6.0)
    fn(0, 0, 3, 4, 0, 1.0, a.ctypes.data, 1, b.ctypes.data, 4, 0.0, c.ctypes.data, 4)
    np.testing.assert_array_equal(c, 0.0)


def test_gemm_call_lines():
    g = Gemm(out="h", left="x", right="W", m="N", n=128, k=64, trans_left=False, trans_right=True,
             ld_left=64, ld_right=64, batched=False, stride_left=64, stride_right=8192, stride_out=128,
             dtype="float64")
    assert gemm_call(g) == "bp_dgemm(0, 1, N, 128, 64, 1.0, x, 64, W, 64, 0.0, h, 128);"
    assert gemm_call(g, out="o", left="l", right="r").startswith("bp_dgemm(0, 1, N, 128, 64, 1.0, l, 64, r,")
    gb = Gemm(out="y", left="A", right="x", m=3, n=5, k=4, trans_left=True, trans_right=False,
              ld_left=3, ld_right=5, batched=True, stride_left=12, stride_right=20, stride_out=15, dtype="float32")
    assert gemm_call(gb) == ("for (int _ex = 0; _ex < N; _ex++) bp_sgemm(1, 0, 3, 5, 4, 1.0f, A + (size_t)_ex * 12, 3, "
                             "x + (size_t)_ex * 20, 5, 0.0f, y + (size_t)_ex * 15, 5);")


def test_gemm_call_compiles_and_computes(tmp_path):
    """The lines gemm_call prints, in a C function beside the kernel, compute a
    batched and a plain product (the batch size a local N, as in an entry point)."""
    gb = Gemm(out="y", left="A", right="x", m=3, n=5, k=4, trans_left=True, trans_right=False,
              ld_left=3, ld_right=5, batched=True, stride_left=12, stride_right=20, stride_out=15, dtype="float64")
    g = Gemm(out="z", left="y", right="B", m="N", n=2, k=15, trans_left=False, trans_right=True,
             ld_left=15, ld_right=15, batched=False, stride_left=15, stride_right=30, stride_out=2, dtype="float64")
    src = tmp_path / "call.c"
    src.write_text("#include <stddef.h>\n" + gemm_source(("float64",)) + "\n"
                   "void run(int n_batch, const double* A, const double* x, const double* B, double* y, double* z);\n"
                   "void run(int n_batch, const double* A, const double* x, const double* B, double* y, double* z)\n"
                   "{\n    const int N = n_batch;\n    " + gemm_call(gb) + "\n    " + gemm_call(g) + "\n}\n")
    out = tmp_path / "call.so"
    r = subprocess.run([CC, *WARN, "-O2", "-fPIC", "-shared", str(src), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run = ctypes.CDLL(str(out)).run
    rng = np.random.default_rng(5)
    N = 6
    A, x, B = rng.standard_normal((N, 4, 3)), rng.standard_normal((N, 4, 5)), rng.standard_normal((2, 15))
    y, z = np.empty((N, 3, 5)), np.empty((N, 2))
    run(ctypes.c_int(N), *(ctypes.c_void_p(v.ctypes.data) for v in (A, x, B, y, z)))
    np.testing.assert_allclose(y, np.swapaxes(A, 1, 2) @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(z, y.reshape(N, 15) @ B.T, rtol=1e-12, atol=1e-12)


def _sanitizer_runtime():
    """The libasan to preload into Python, or None (a sanitized library loaded into
    an unsanitized Python needs the runtime first)."""
    r = subprocess.run([CC, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = r.stdout.strip()
    return path if r.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


SANITIZED_CHECK = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import test_c_gemm as t
from pathlib import Path
lib = t.ctypes.CDLL({lib!r})
for dtype in t.DTYPES:
    fn = t.bind(lib, dtype)
    for ta in (False, True):
        for tb in (False, True):
            for i, (m, n, k) in enumerate(t.edge_shapes(dtype)):
                t.check(fn, dtype, ta, tb, m, n, k, alpha=1.5, beta=0.5 if i % 2 else 0.0, pad=i % 3, seed=i)
print("sanitized ok")
"""


@pytest.mark.parametrize("build_name", ["portable", "native"])
def test_under_address_and_undefined_sanitizers(tmp_path, build_name):
    """Plain C, and the micro-kernel in intrinsics of this machine (-march=native)."""
    runtime = _sanitizer_runtime()
    if runtime is None:
        pytest.skip("no AddressSanitizer runtime for this compiler")
    arch = BUILDS[build_name][0][1:]
    if not _takes(arch):
        pytest.skip(f"the compiler takes no {' '.join(arch)}")
    flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
             *arch]
    compile_lib(tmp_path, "gemm_san", flags)   # not loaded here: the ASan runtime must come first
    script = SANITIZED_CHECK.format(root=str(Path(__file__).resolve().parents[1]),
                                    tests=str(Path(__file__).resolve().parent), lib=str(tmp_path / "gemm_san.so"))
    env = dict(os.environ, LD_PRELOAD=runtime, ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "sanitized ok" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
    assert "runtime error" not in r.stderr, r.stderr[-4000:]


def _cblas():
    """(compile flags, link flags) of an installed CBLAS, or None."""
    r = subprocess.run([CC, "-E", "-x", "c", "-", "-o", os.devnull], input="#include <cblas.h>\n",
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    for lib in ("openblas", "cblas", "blas"):
        probe = subprocess.run([CC, "-x", "c", "-", "-o", os.devnull, f"-l{lib}"],
                               input="#include <cblas.h>\nint main(void) { return (int)cblas_ddot(0, 0, 1, 0, 1); }\n",
                               capture_output=True, text=True)
        if probe.returncode == 0:
            return ["-DBPC_CBLAS"], [f"-l{lib}"]
    return None


@pytest.mark.skipif(_cblas() is None, reason="no CBLAS installed (cblas.h and a libopenblas/libcblas/libblas)")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cblas_path(tmp_path, dtype):
    cflags, libs = _cblas()
    fn = bind(build(tmp_path, "gemm_cblas", ["-O2", *cflags], libs), dtype)
    for ta, tb in itertools.product([False, True], repeat=2):
        for i, (m, n, k) in enumerate(edge_shapes(dtype)[:8]):
            check(fn, dtype, ta, tb, m, n, k, alpha=0.5, beta=1.5 if i % 2 else 0.0, pad=1, seed=i)


# NumPy's wheel bundles an OpenBLAS with 64-bit integers, its symbols renamed
# (scipy_cblas_dgemm64_) and no header: a cblas.h of a few lines, written here,
# forwards CBLAS's names to it, so the -DBPC_CBLAS path runs against a real BLAS
# even where none is installed.
SHIM = """\
enum CBLAS_ORDER {{ CblasRowMajor = 101, CblasColMajor = 102 }};
enum CBLAS_TRANSPOSE {{ CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 }};
{decls}
"""
SHIM_ONE = """\
void scipy_cblas_{p}gemm64_(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, long long, long long,
    long long, {t}, const {t}*, long long, const {t}*, long long, {t}, {t}*, long long);
static inline void cblas_{p}gemm(enum CBLAS_ORDER o, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int m, int n,
    int k, {t} alpha, const {t}* a, int lda, const {t}* b, int ldb, {t} beta, {t}* c, int ldc)
{{
    scipy_cblas_{p}gemm64_(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}}
"""


def _numpy_openblas():
    """The OpenBLAS bundled with NumPy (its .so), or None."""
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    found = sorted(libs.glob("libscipy_openblas64_*.so")) if libs.is_dir() else []
    return found[0] if found else None


@pytest.mark.skipif(_numpy_openblas() is None, reason="NumPy bundles no scipy-openblas here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cblas_path_with_numpys_openblas(tmp_path, dtype):
    so = _numpy_openblas()
    decls = "".join(SHIM_ONE.format(p=p, t=t) for p, t in (("s", "float"), ("d", "double")))
    (tmp_path / "cblas.h").write_text(SHIM.format(decls=decls))
    lib = compile_lib(tmp_path, "gemm_npblas", ["-O2", "-DBPC_CBLAS", f"-I{tmp_path}"],
                      [str(so), f"-Wl,-rpath,{so.parent}"])
    fn = bind(ctypes.CDLL(str(lib)), dtype)
    for ta, tb in itertools.product([False, True], repeat=2):
        for i, (m, n, k) in enumerate(edge_shapes(dtype)):
            check(fn, dtype, ta, tb, m, n, k, alpha=0.5, beta=1.5 if i % 2 else 0.0, pad=i % 2, seed=i)
