"""The erf that generated NumPy modules embed (bpcompile/targets/numpy/erf.py).

References come from mpmath at 50 digits, held as double-doubles (hi + lo) so
that errors well below one ulp can be measured in float64.  erf is odd, so each
reference is computed once for |x| and negated for -|x|.

Relative error is |f - erf(x)| / max(|erf(x)|, smallest normal): below the
smallest normal number the format itself only has a fixed absolute spacing, so
there the bound reads as an absolute one (and a separate check asks subnormal
results to be within one unit of that spacing).  Where erf(x) < 2**-968 the
remainder lo underflows (and mpmath's float() of a subnormal rounds twice), so
those errors are measured in mpmath itself.
"""

from __future__ import annotations

import ast
import builtins
import warnings

import mpmath
import numpy as np
import pytest

from bpcompile.targets.numpy import erf as erf_module

F64_TINY = np.finfo(np.float64).tiny
F32_TINY = float(np.finfo(np.float32).tiny)
SUBNORMAL_UNIT = 5e-324  # 2**-1074, the spacing of subnormal (and least normal) floats
LO_HELD = 2.0**-968  # below, the remainder lo of a double-double reference underflows

# The interval ends of s_erf.c, the true 1/0.35 beside its rounded one, and
# about where the float32 (3.92) and float64 (5.86) results first round to 1.
BOUNDARIES = (2.0**-28, 0.84375, 1.25, 2.8571434020996094, 1 / 0.35, 6.0, 3.9, 5.9)


@pytest.fixture(scope="module")
def erf():
    return erf_module.load()


def _around(b, ulps=200, rel=1e-3, n=400):
    """Points within a few hundred ulps of b, and within rel of b."""
    steps = np.arange(-ulps, ulps + 1, dtype=np.float64)
    near = b + steps * np.spacing(b)
    wide = b * (1 + np.linspace(-rel, rel, n))
    return np.concatenate([near, wide])


def _magnitudes64():
    rng = np.random.default_rng(20240611)
    parts = [
        np.logspace(-310, np.log10(30.0), 60_000),              # every scale
        rng.uniform(0.0, 7.0, 34_000),                          # where erf bends
        np.ldexp(rng.uniform(1, 2, 2_000), rng.integers(-1074, -1021, 2_000)),  # subnormal x
        np.array([0.0, SUBNORMAL_UNIT, 2 * SUBNORMAL_UNIT, 3 * SUBNORMAL_UNIT,
                  F64_TINY, np.nextafter(F64_TINY, 0), 1e-300, 1e-20,
                  0.5, 1.0, 2.0, 3.0, 5.0, 27.0, 28.0, 1e10, 1e300,
                  np.finfo(np.float64).max]),
    ]
    parts += [_around(b) for b in BOUNDARIES]
    return np.unique(np.abs(np.concatenate(parts)))


def _magnitudes32():
    rng = np.random.default_rng(7)
    parts = [
        np.logspace(-45.5, np.log10(30.0), 20_000),
        rng.uniform(0.0, 6.0, 10_000),
        np.array([0.0, 1e-45, 1e-40, F32_TINY, 0.5, 1.0, 4.0, 10.0]),
    ]
    for b in BOUNDARIES:
        b32 = np.float32(b)
        parts.append(b32 + np.arange(-50, 51) * np.spacing(b32))
    return np.unique(np.abs(np.concatenate(parts).astype(np.float32)))


def _reference(a):
    """erf(a) for float64 magnitudes a, as a double-double (hi, lo), from mpmath."""
    hi = np.empty_like(a)
    lo = np.empty_like(a)
    with mpmath.workdps(50):
        for i, v in enumerate(a.tolist()):
            if v >= 10:  # erf(10) = 1 - 2e-45: 1 to far beyond double-double
                hi[i], lo[i] = 1.0, 0.0
                continue
            e = mpmath.erf(mpmath.mpf(v))
            hi[i] = float(e)
            lo[i] = float(e - hi[i])
    return hi, lo


def _both_signs(a, hi, lo):
    return np.concatenate([a, -a]), np.concatenate([hi, -hi]), np.concatenate([lo, -lo])


def _rel_error(f, hi, lo, tiny):
    f = np.asarray(f, dtype=np.float64)
    return np.abs((f - hi) - lo) / np.maximum(np.abs(hi), tiny)


@pytest.fixture(scope="module")
def points64():
    a = _magnitudes64()
    return _both_signs(a, *_reference(a))


@pytest.fixture(scope="module")
def points32():
    a32 = _magnitudes32()
    hi, lo = _reference(a32.astype(np.float64))
    return _both_signs(a32, hi, lo)


def test_float64_accuracy(erf, points64):
    x, hi, lo = points64
    assert len(x) >= 200_000
    f = erf(x)
    assert f.dtype == np.float64 and f.shape == x.shape
    # where lo holds the remainder of the reference, measured in float64
    held = np.abs(hi) >= LO_HELD
    err = _rel_error(f[held], hi[held], lo[held], F64_TINY)
    worst = int(np.argmax(err))
    assert err[worst] <= 1e-15, \
        f"erf({x[held][worst]!r}) = {f[held][worst]!r}, relative error {err[worst]:.3g}"
    # below, measured in mpmath; subnormal results within one unit of their spacing
    deep = np.flatnonzero(~held)
    assert len(deep) > 5000
    with mpmath.workdps(50):
        errors = [(mpmath.mpf(fi) - mpmath.erf(mpmath.mpf(xi)), fi)
                  for xi, fi in zip(x[deep].tolist(), f[deep].tolist())]
        rel = max(abs(d) / max(abs(fi), F64_TINY) for d, fi in errors)
        units = max(abs(mpmath.ldexp(d, 1074)) for d, fi in errors if abs(fi) <= F64_TINY)
    assert rel <= 1e-15, f"relative error {rel} where erf(x) < 2**-968"
    assert units <= 1, f"subnormal results off by {units} units"


@pytest.mark.parametrize("b", BOUNDARIES)
def test_float64_each_boundary(erf, b):
    a = _around(b, ulps=1000, n=2000)
    hi, lo = _reference(a)
    err = _rel_error(erf(a), hi, lo, F64_TINY)
    assert err.max() <= 1e-15


def test_float32_accuracy(erf, points32):
    x, hi, lo = points32
    f = erf(x)
    assert f.dtype == np.float32 and f.shape == x.shape
    err = _rel_error(f, hi, lo, F32_TINY)
    worst = int(np.argmax(err))
    assert err[worst] <= 1e-7, f"erf({x[worst]!r}) = {f[worst]!r}, relative error {err[worst]:.3g}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_special_values(erf, dtype):
    big = np.finfo(dtype).max
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 6.0, -6.0,
                  28.0, -28.0, 1e30, -1e30, big, -big], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        f = erf(x)
    assert f.dtype == dtype
    assert f[0] == 0 and not np.signbit(f[0])
    assert f[1] == 0 and np.signbit(f[1])
    assert np.isnan(f[4]) and np.isnan(f[5])
    assert np.array_equal(f[[2, 6, 8, 10, 12]], np.ones(5, dtype))
    assert np.array_equal(f[[3, 7, 9, 11, 13]], -np.ones(5, dtype))


def test_odd_exactly(erf, points64):
    x = points64[0]
    a = x[x >= 0]
    assert np.array_equal(erf(-a), -erf(a))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_no_warnings_on_any_input(erf, dtype, points64):
    x = np.concatenate([points64[0],
                        [np.inf, -np.inf, np.nan, 0.0, -0.0, 5e-324, -5e-324, 1e308]])
    with np.errstate(over="ignore"):  # 1e308 becomes inf in float32: that is the setup, not erf
        x = x.astype(dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        erf(x)
        erf(x[:1].reshape(()))
        erf(x[:0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_shape_and_dtype(erf, dtype):
    v = dtype(0.5)
    expect = dtype(0.5204998778130465)
    # 0-d: a NumPy scalar out, as a ufunc gives
    for x in (v, np.array(v)):
        f = erf(x)
        assert np.shape(f) == () and f.dtype == dtype
        assert f == expect
    for shape in [(0,), (7,), (3, 4), (2, 3, 4)]:
        x = np.full(shape, v)
        before = x.copy()
        f = erf(x)
        assert isinstance(f, np.ndarray) and f.shape == shape and f.dtype == dtype
        assert np.all(f == expect)
        assert np.array_equal(x, before)  # the input is left alone
    # a strided, non-contiguous view, with values in every interval
    base = np.linspace(-8, 8, 400, dtype=dtype).reshape(20, 20)[:, ::3].T
    f = erf(base)
    assert f.shape == base.shape and f.dtype == dtype
    assert np.array_equal(f, erf(np.ascontiguousarray(base)))
    assert np.array_equal(f.ravel(), erf(base.ravel()))


def test_python_float_gives_float64(erf):
    f = erf(0.5)
    assert f.dtype == np.float64 and f == 0.5204998778130465


def _names(tree):
    """(names the source binds, names it loads)."""
    bound, loaded = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound, loaded


def test_source_uses_only_np_and_builtins():
    tree = ast.parse(erf_module.ERF_SOURCE)
    assert not any(isinstance(n, (ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal))
                   for n in ast.walk(tree))
    bound, loaded = _names(tree)
    stray = loaded - bound - set(dir(builtins)) - {"np"}
    assert not stray, f"names that are neither defined, builtins nor np: {sorted(stray)}"
    # the attributes it takes from np all exist
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "np":
            assert hasattr(np, node.attr), node.attr


def test_source_top_level_is_erf_and_its_constants():
    tree = ast.parse(erf_module.ERF_SOURCE)
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert functions == ["_erf"]
    assert [a.arg for a in tree.body[-1].args.args] == ["x"]
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            continue
        assert isinstance(node, ast.Assign), ast.dump(node)
        for target in node.targets:
            assert isinstance(target, ast.Name) and target.id.startswith("_ERF_")


def test_source_is_a_plain_literal_with_the_notice():
    tree = ast.parse(open(erf_module.__file__, encoding="utf-8").read())
    [value] = [n.value for n in tree.body if isinstance(n, ast.Assign)
               and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["ERF_SOURCE"]]
    assert isinstance(value, ast.Constant) and value.value == erf_module.ERF_SOURCE
    assert "Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved." in value.value
    assert "is preserved." in value.value


def test_source_runs_in_a_module_with_only_numpy(tmp_path):
    """Pasted verbatim after ``import numpy as np``, as a generated module has it."""
    path = tmp_path / "generated_erf.py"
    path.write_text("import numpy as np\n\n\n" + erf_module.ERF_SOURCE, encoding="utf-8")
    namespace = {"__name__": "generated_erf"}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    assert namespace["_erf"](np.array([1.0]))[0] == 0.8427007929497149
