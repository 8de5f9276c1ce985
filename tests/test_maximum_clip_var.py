"""maximum, minimum, clip, var and std (issue 12): the rules their rows in
test_systematic.py do not reach, on every target.

* Ties: where a == b, maximum(a, b) and minimum(a, b) pass exactly half of the
  adjoint to each argument (PyTorch's and JAX's rule), also against a number and
  through broadcasting; checked for exact equality in float64 and float32, on
  every registered target (CUDA built for the host with the emulation header).
* clip's boundaries: the adjoint passes where lo <= x <= hi, both ends included
  (PyTorch's clamp), and nothing outside; exactly, on every target.
* Constant folding of numbers, and maximum(x, x) = x.
* The new ways a spec can be wrong (arity, a tensor lo or hi, lo > hi, shapes
  that do not broadcast, var's axis): one line naming file, line and key, exit 2,
  nothing written.
* How they read: the derivative forms in comments and LaTeX, var and std as one
  rule in the adjoint equations; std's derivative at zero variance (NaN, as
  documented) and the finite one of sqrt(var(x) + eps).
* nvcc compiles them warning-free in device code of both dtypes, and gcc/clang in
  C99 with -Wall -Wextra -Wpedantic -Werror.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import sympy as sp
from conftest import compile_error_line, finite_differences, nvcc_compile_all, rel_error

import bpcompile
from bpcompile import ops, targets
from bpcompile.ir.equations import latex, show
from bpcompile.targets.cuda import EMULATION_HEADER

DTYPES = ("float64", "float32")

# One function per input pair, so that each gradient isolates one rule.
TIES = """\
name: ties_{dtype}
dtype: {dtype}
reduction: sum
inputs:
  a: [5]
  b: [5]
  c: [5]
  d: [5]
  e: [5]
  f: [6]
  g: [3]
  s: []
graph:
  hi: maximum(a, b)
  lo: minimum(c, d)
  num: maximum(e, 0.25) + 2 * minimum(0.25, e)
  cl: clip(f, -0.5, 0.25)
  bc: maximum(g, s)
loss: sum(hi) + sum(lo) + sum(num) + sum(cl) + sum(bc)
wrt: [a, b, c, d, e, f, g, s]
output: cl
"""

# Two examples; ties where the values are equal.  Every number is exact in float32.
POINT = {
    "a": [[1, 2, 3, -1, 0.25], [0, 0, -2, 5, 5]],
    "b": [[1, 1, 3, 0, 0.25], [0, 1, -2, 4, 6]],
    "c": [[1, 2, 3, -1, 0.5], [-3, -3, 7, 0, 2]],
    "d": [[1, 1, 3, 0, 0.5], [-3, -4, 7, 1, 2]],
    "e": [[0.25, 1, 0, 0.25, -3], [0.25, 0.25, 2, -2, 0.25]],
    "f": [[-0.5, 0.25, 0, -1, 1, -0.25], [0.25, 0.25, -0.5, 2, -2, 0.125]],
    "g": [[1, 2, 0], [3, 3, 3]],
    "s": [1, 3],
}


def expected_gradients():
    """The tie and boundary rules, written out: 1 to the selected argument, 0 to
    the other, 1/2 each at a tie; clip's 1 inside [lo, hi] with its ends."""
    p = {k: np.array(v, np.float64) for k, v in POINT.items()}

    def above(x, y):
        return np.where(x > y, 1.0, np.where(x == y, 0.5, 0.0))
    g = above(p["g"], p["s"][:, None])
    return {
        "a": above(p["a"], p["b"]), "b": above(p["b"], p["a"]),
        "c": above(p["d"], p["c"]), "d": above(p["c"], p["d"]),
        # maximum(e, 0.25) + 2*minimum(0.25, e): 1/2 + 2*(1/2) at the tie, else 1 or 2
        "e": above(p["e"], 0.25) + 2 * above(0.25, p["e"]),
        "f": ((p["f"] >= -0.5) & (p["f"] <= 0.25)).astype(np.float64),
        "g": g,
        "s": np.sum(1.0 - g, axis=1),
    }


def _import(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tie_modules(tmp_path_factory):
    """{(target, dtype): module}: the NumPy modules, and the native targets' loaders
    built in parallel (CUDA with the emulation header), as test_systematic builds them."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    mp.setenv("BPCOMPILE_CXXFLAGS", "-DBP_MAX_GRID=2 -Wall -Wextra -Werror")
    out = tmp_path_factory.mktemp("ties")
    shutil.copy(EMULATION_HEADER, out / "cuda_emulation.h")
    modules, loaders = {}, {}
    for target in targets.names():
        for dtype in DTYPES:
            text = TIES.format(dtype=dtype)
            if target == "numpy":
                modules[target, dtype] = bpcompile.compile(text).load()
                continue
            compiler = os.environ.get("CXX", "g++") if target == "cuda" else os.environ.get("CC", "cc")
            if shutil.which(compiler) is None:
                modules[target, dtype] = pytest.skip.Exception(f"no {compiler} to build the {target} target")
                continue
            bpcompile.compile(text, target=target).write(out)
            entry = targets.get(target).entry_file(f"ties_{dtype}")
            loaders[target, dtype] = _import(out / entry, f"bp_ties_{target}_{dtype}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for key, f in {k: pool.submit(m._load) for k, m in loaders.items()}.items():
            f.result()   # a compiler error fails here
            modules[key] = loaders[key]
    yield modules
    mp.undo()


CASES = [pytest.param(t, d, id=f"{t}-{d}") for t in targets.names() for d in DTYPES]


def _get(tie_modules, target, dtype):
    m = tie_modules[target, dtype]
    if isinstance(m, pytest.skip.Exception):
        pytest.skip(str(m))
    return m


@pytest.mark.parametrize("target, dtype", CASES)
def test_ties_split_the_adjoint_equally_and_clip_includes_its_ends(target, dtype, tie_modules):
    m = _get(tie_modules, target, dtype)
    inputs = {k: np.array(v, dtype) for k, v in POINT.items()}
    value, grads = m.value_and_grad({}, **{k: v.copy() for k, v in inputs.items()})
    for name, want in expected_gradients().items():
        got = np.asarray(grads[name])
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, want, err_msg=f"{target} {dtype}: d/d{name}")
    f = inputs["f"].astype(np.float64)
    np.testing.assert_array_equal(np.asarray(m.predict({}, **inputs), np.float64), np.clip(f, -0.5, 0.25))
    p = {k: v.astype(np.float64) for k, v in inputs.items()}
    want = sum(np.sum(t) for t in (np.maximum(p["a"], p["b"]), np.minimum(p["c"], p["d"]),
                                   np.maximum(p["e"], 0.25), 2 * np.minimum(0.25, p["e"]), np.clip(f, -0.5, 0.25),
                                   np.maximum(p["g"], p["s"][:, None])))
    assert value == want   # small exact numbers: every target's sum is exact


def test_the_tie_rule_is_the_derivative_of_max_of_x_and_x():
    """Half to each argument adds up to 1: d maximum(z, z)/dz, folded to z, is 1 too."""
    m = bpcompile.compile("""\
name: same
inputs: {x: [3]}
params: {W: [3, 3]}
graph:
  z: W @ x
  h: maximum(z, z) + minimum(z, 1 * z)
loss: sum(h * h)
""")
    rules = {m.lowered.graph.node(n).get("rule") for n in m.lowered.graph.g.nodes}
    assert not rules & {"maximum", "minimum"}, rules
    module = m.load()
    rng = np.random.default_rng(0)
    params, x = {"W": rng.normal(size=(3, 3))}, rng.normal(size=(4, 3))
    _, grads = module.value_and_grad(params, x=x)
    assert rel_error(grads["W"], finite_differences(module, params, {"x": x}, "W")) < 1e-8


# ---------------------------------------------------------------------------
# Folding and the SymPy functions


def test_numbers_fold():
    F = ops.ELEMENTWISE
    assert F["maximum"](sp.Integer(2), sp.Float(0.5)) == 2
    assert F["minimum"](sp.Rational(1, 3), sp.Integer(1)) == sp.Rational(1, 3)
    assert F["clip"](sp.Integer(5), sp.Integer(0), sp.Rational(1, 2)) == sp.Rational(1, 2)
    assert F["clip"](sp.Integer(-5), sp.Integer(0), sp.Integer(1)) == 0
    assert F["clip"](sp.Float(0.25), sp.Integer(0), sp.Integer(1)) == sp.Float(0.25)
    greater = ops.INTERNAL["greater"].function
    assert (greater(sp.Integer(1), sp.Float(1.0)), greater(2, 1), greater(1, 2)) == (sp.S.Half, 1, 0)
    x = sp.Symbol("x", real=True)
    assert F["maximum"](x, x) == x and greater(x, x) == sp.S.Half
    assert sp.diff(F["maximum"](x, sp.Float(0.5)), x) == greater(x, sp.Float(0.5))
    assert sp.diff(F["minimum"](x, sp.Float(0.5)), x) == greater(sp.Float(0.5), x)


@pytest.mark.parametrize("expr, value", [
    ("maximum(2, 3)", 3.0), ("minimum(2, -1/2)", -0.5), ("maximum(0, 0)", 0.0), ("clip(7, -1, sqrt(4))", 2.0),
    ("clip(-7, -1, 1) * minimum(1, 1)", -1.0), ("var(2)", 0.0), ("std(3)", 0.0),
])
def test_constant_calls_fold_to_numbers(expr, value):
    """A call of numbers is a number of the graph (never an integer computed by a
    printer): the module predicts value * x."""
    c = bpcompile.compile(f"""\
name: folded
inputs: {{x: [2]}}
params: {{w: [2]}}
graph:
  h: x * ({expr})
loss: sum(w * h)
output: h
""")
    rules = {c.lowered.graph.node(n).get("rule") for n in c.lowered.graph.g.nodes}
    assert not rules & {"maximum", "minimum", "clip", "var", "std"}, rules
    x = np.array([[1.0, -2.0]])
    np.testing.assert_array_equal(c.load().predict({"w": np.ones(2)}, x=x), value * x)


# ---------------------------------------------------------------------------
# Errors: one line, file, line and key; exit 2; nothing written

GOOD = """\
name: m
inputs:
  x: [3]
  u: [3]
  c: {classes: 3}
params:
  W: [3, 3]
  M: [2, 2]
  s: []
graph:
  z: W @ x
  h: CALL
loss: sum(u * h)
"""


@pytest.mark.parametrize("call, words", [
    ("maximum(z)", ["maximum() takes 2 arguments, got 1"]),
    ("minimum(z, u, 0.5)", ["minimum() takes 2 arguments, got 3"]),
    ("maximum(z, u, axis=0)", ["maximum() takes no axis="]),
    ("maximum(z, M)", ["shape mismatch", "z has shape [3] and M has shape [2, 2]", "broadcast"]),
    ("minimum(z, c)", ["'c' is an integer class label"]),
    ("clip(z, 0.5)", ["clip() takes 3 arguments, as in clip(x, lo, hi), got 2"]),
    ("clip(z)", ["clip() takes 3 arguments", "got 1"]),
    ("clip(z, 0, 1, 2)", ["clip() takes 3 arguments", "got 4"]),
    ("clip(z, s, 1)", ["the lo of clip() must be a constant", "'s'"]),
    ("clip(z, -1, u)", ["the hi of clip() must be a constant", "'u'"]),
    ("clip(z, 0, sum(u))", ["the hi of clip() must be a constant"]),
    ("clip(z, 1, 0)", ["clip() needs lo <= hi, but lo = 1 is greater than hi = 0"]),
    ("clip(z, sqrt(2), 1.25)", ["clip() needs lo <= hi", "lo = 1.414", "hi = 1.25"]),
    ("clip(z, 1/0, 2)", ["division by zero"]),
    ("var(z, u)", ["var() takes 1 argument, got 2"]),
    ("std()", ["std() takes 1 argument, got 0"]),
    ("var(z, axis=1)", ["axis 1 is out of range for z of shape [3]"]),
    ("std(c)", ["'c' is an integer class label"]),
])
def test_bad_call_is_one_line(call, words, tmp_path, capsys, monkeypatch):
    line = compile_error_line(GOOD.replace("CALL", call), tmp_path, capsys, monkeypatch)
    assert re.search(r"bad\.yaml:12: graph\.h: ", line), line   # file, line, key
    for w in words:
        assert w in line, (w, line)


def test_signatures():
    assert ops.ELEMENTWISE["clip"].signature == "clip(x, lo, hi)"
    assert ops.ELEMENTWISE["maximum"].signature == "maximum(x1, x2)"
    assert ops.ELEMENTWISE["clip"].required == 2 and ops.ELEMENTWISE["elu"].required == 0


# ---------------------------------------------------------------------------
# How they read


def test_display_of_the_derivative_forms():
    a, b = sp.symbols("a b", real=True)
    greater = ops.INTERNAL["greater"].function
    assert show(greater(a, b)) == "((a > b) + (a == b)/2)"
    assert latex(greater(a, b)) == "\\left([a > b] + \\tfrac{1}{2}[a = b]\\right)"
    assert latex(ops.ELEMENTWISE["maximum"](a, b)) == "\\max\\left(a, b\\right)"
    assert latex(ops.ELEMENTWISE["minimum"](a, b)) == "\\min\\left(a, b\\right)"
    assert show(ops.ELEMENTWISE["clip"](a, sp.Rational(-1, 2), 1)) == "clip(a, -1/2, 1)"


SPREAD = """\
name: spread
inputs:
  x: [3]
  u: [2]
params:
  W: [2, 3]
graph:
  M: W * x
  v: var(M, axis=0)
  s: std(M)
  t: std(M, axis=-1)
  h: maximum(M, 0.5) + clip(M, -1, 1)
loss: sum(v * x) + s * s + sum(u * t) + sum(h)
"""


def test_generated_comments_read_as_one_rule():
    source = bpcompile.compile(SPREAD).source
    doc = source[source.index("Adjoint equations"):source.index("Every function that takes")]
    assert "v_bar*(M - mean(M, axis=-2)) (broadcast back over the averaged axis)" in doc, doc
    assert "s_bar*(M - mean(M))/(6*s)" in doc, doc
    assert "t_bar*(M - mean(M, axis=-1))/(3*t)" in doc, doc
    assert "# sum over consumers (clip, maximum, std, std, var)" in re.sub(r"\s+", " ", doc), doc
    assert "((M > 1/2) + (M == 1/2)/2)" in doc and "(M == clip(M, -1, 1))" in doc, doc
    # the two-pass interior (the sums, the squared deviations) is not shown node by node
    assert "u1_bar" not in doc and "q" not in re.findall(r"\b[a-z]\d*_bar", doc)


def test_var_and_std_in_one_graph_share_the_variance():
    """std(M) over var(M)'s own node: var's rule shows, std's adjoint flows into it."""
    source = bpcompile.compile("""\
name: both
inputs: {x: [3]}
params: {W: [2, 3]}
graph:
  M: W * x
  v: var(M)
  s: std(M)
loss: v + 3 * s
""").source
    doc = source[source.index("Adjoint equations"):source.index("Every function that takes")]
    assert "v_bar = L_n_bar + s_bar/(2*s)" in doc, doc   # sqrt's derivative reads its output
    assert "M_bar = v_bar*(M - mean(M))/3" in doc, doc


def test_std_at_zero_variance_is_nan_as_documented():
    """Every entry equal: std's derivative is infinite, the gradient 0/0 (NaN, as in
    PyTorch and JAX); sqrt(var(x) + eps), the README's advice, has a finite one."""
    text = """\
name: flat
inputs: {{x: [3]}}
params: {{w: [3]}}
graph:
  h: {f}
loss: h * sum(w)
"""
    x = np.full((2, 3), 0.5)
    w = {"w": np.ones(3)}
    m = bpcompile.compile(text.format(f="std(w * x)")).load()
    with np.errstate(all="ignore"):
        _, grads = m.value_and_grad(w, x=x)
    assert np.all(np.isnan(grads["w"]))
    m = bpcompile.compile(text.format(f="sqrt(var(w * x) + 1e-5)")).load()
    _, grads = m.value_and_grad(w, x=x)
    assert np.all(np.isfinite(grads["w"]))
    np.testing.assert_allclose(m.predict(w, x=x), np.sqrt(1e-5) * np.ones(2))


ALL = """\
name: {name}
dtype: {dtype}
inputs:
  x: [3]
  y: [3]
params:
  W: [3, 3]
  V: [2, 3]
graph:
  z: W @ x
  a: maximum(z, y) + minimum(0.5, z) + clip(z, -1/3, 0.75) + maximum(V * x, z)[1]
  c: var(V * z, axis=0) + std(V * z, axis=1)[0] + std(z)
loss: sum(a * c)
"""


def test_nvcc_compiles_them(tmp_path, cublas_include):
    """Forward and backward, in device code of both dtypes: nvcc -Werror all-warnings."""
    sources = []
    for dtype in DTYPES:
        name = f"extremes_{dtype}"
        bpcompile.compile(ALL.format(name=name, dtype=dtype), target="cuda").write(tmp_path)
        sources.append(tmp_path / f"{name}.cu")
    for src, (rc, out) in nvcc_compile_all(sources, cublas_include).items():
        assert rc == 0, out
        assert "warning" not in out.lower().split("\n", 1)[1], out


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_c_compiles_them_without_warnings(compiler, tmp_path):
    """Forward and backward in C of both dtypes: -std=c99 -Wall -Wextra -Wpedantic -Werror."""
    path = shutil.which(compiler)
    if path is None:
        pytest.skip(f"{compiler} is not installed")
    for dtype in DTYPES:
        name = f"extremes_{dtype}"
        bpcompile.compile(ALL.format(name=name, dtype=dtype), target="c").write(tmp_path)
        r = subprocess.run([path, "-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-O2", "-c",
                            str(tmp_path / f"{name}.c"), "-o", str(tmp_path / f"{name}.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0 and not r.stderr, f"{compiler} {name}.c:\n{r.stderr[:3000]}"


def test_a_kernel_reads_only_what_its_expression_keeps():
    """std(M)**2: the adjoint of the variance is 2*s*L_n_bar/(2*s), and s cancels.
    A fused kernel's arguments are the leaves left after folding (CUDA built with
    -Werror refuses an unused parameter)."""
    c = bpcompile.compile("""\
name: cancels
inputs: {x: [3]}
params: {W: [2, 3]}
graph:
  M: W * x
  s: std(M)
loss: s * s
""")
    kernels = [k for k in c.programs["value_and_grad"].kernels if k.op == "map"]
    assert kernels
    for k in kernels:
        temps, expr = k.attrs
        read = {str(s) for e in [expr, *(e for _, e in temps)] for s in e.free_symbols}
        assert {a.name for a in k.args} <= read, (k.out.name, [a.name for a in k.args], expr)
