"""The eight elementwise ops added through the one-declaration path (issue 11):
erf, log1p, expm1, atan, leaky_relu, elu, silu, gelu.

* The generated NumPy module's erf (the ``_erf`` it embeds) against mpmath:
  max relative error <= 1e-15 in float64, <= 1e-7 in float32.
* Each op's value and gradient, in float64 and float32, for the NumPy target and
  the CUDA target (built for the host with the emulation header), against mpmath
  references of the op and of its derivative, on both sides and far out (no
  overflow, no nan: the stable forms); the gradient also against finite
  differences.
* The constant second argument of leaky_relu and elu: a number or an expression
  of numbers folds; anything else is one line naming file, line and key (exit 2).
* A module that uses erf imports numpy only, defines ``_erf`` once, passes
  pyflakes; one that does not has no ``_erf``.
* verify's own tables name exactly the ops the compiler registers; a function a
  target cannot print fails at compile time naming it and the target.
"""

from __future__ import annotations

import ast
import concurrent.futures
import importlib.util
import os
import re
import shutil

import mpmath
import numpy as np
import pytest
import sympy as sp
from conftest import compile_error_line, finite_differences, nvcc_compile_all, rel_error

import bpcompile
from bpcompile import ops, targets
from bpcompile.ir.equations import latex, show
from bpcompile.targets.cuda import EMULATION_HEADER
from bpcompile.tools import verify as verify_module

DIGITS = 40   # mpmath's working precision for the references
NEW_OPS = ("erf", "log1p", "expm1", "atan", "leaky_relu", "elu", "silu", "gelu")

# ---------------------------------------------------------------------------
# Specs: one op on a scalar input per example (x: [], the batch axis in front), so
# that predict gives the op at every point and the gradient its derivative.

SPEC = """\
name: {name}
dtype: {dtype}
reduction: sum
inputs:
  x: []
graph:
  h: {call}
loss: h
wrt: [x]
output: h
"""


def spec_text(case, dtype, call=None):
    return SPEC.format(name=f"new_{case}_{dtype}", dtype=dtype, call=call or CASES[case][0])


# mpmath references: value and derivative at an mpf point
def _leaky(a):
    return (lambda x: x if x > 0 else a * x), (lambda x: mpmath.mpf(1) if x > 0 else mpmath.mpf(a))


def _elu(a):
    return ((lambda x: x if x > 0 else a * mpmath.expm1(x)),
            (lambda x: mpmath.mpf(1) if x > 0 else a * mpmath.exp(x)))


def _sig(x):
    return 1 / (1 + mpmath.exp(-x))


def _phi(x):   # the normal distribution function
    return (1 + mpmath.erf(x / mpmath.sqrt(2))) / 2


REAL = np.concatenate([np.linspace(-5, 5, 40), [-1e-6, 1e-6, -0.1, 0.1, -30.0, 30.0, -700.0, 700.0]])
CASES = {
    # case: (call, value, derivative, points)
    "erf": ("erf(x)", mpmath.erf, lambda x: 2 / mpmath.sqrt(mpmath.pi) * mpmath.exp(-x * x), REAL),
    "log1p": ("log1p(x)", mpmath.log1p, lambda x: 1 / (1 + x),
              np.array([-0.999, -0.9, -0.5, -1e-8, 1e-8, 1e-3, 0.5, 1.0, 3.0, 30.0, 700.0, 1e6])),
    "expm1": ("expm1(x)", mpmath.expm1, mpmath.exp,
              np.concatenate([np.linspace(-5, 5, 40), [-1e-8, 1e-8, -30.0, -700.0, 30.0, 80.0]])),
    "atan": ("atan(x)", mpmath.atan, lambda x: 1 / (1 + x * x), REAL),
    "leaky_relu": ("leaky_relu(x)", *_leaky(mpmath.mpf("0.01")), REAL),
    "leaky_relu_02": ("leaky_relu(x, 0.2)", *_leaky(mpmath.mpf("0.2")), REAL),
    "leaky_relu_negative": ("leaky_relu(x, -1/2)", *_leaky(mpmath.mpf(-0.5)), REAL),
    "elu": ("elu(x)", *_elu(1), REAL),
    "elu_05": ("elu(x, 0.5)", *_elu(mpmath.mpf(0.5)), REAL),
    "elu_0": ("elu(x, 0)", *_elu(0), REAL),
    "silu": ("silu(x)", lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * (1 - _sig(x))), REAL),
    "gelu": ("gelu(x)", lambda x: x * _phi(x),
             lambda x: _phi(x) + x * mpmath.exp(-x * x / 2) / mpmath.sqrt(2 * mpmath.pi), REAL),
}
DTYPES = ("float64", "float32")
# |got - want| <= RTOL*|want| + ATOL*(1 + |x|): an absolute part, as a difference of
# nearly equal terms far out (1 + erf(x/sqrt(2)) in gelu, out + alpha in elu's
# derivative) has a small absolute error, not a small relative one
RTOL = {"float64": 1e-13, "float32": 2e-6}
ATOL = {"float64": 1e-15, "float32": 2e-7}


def reference(case, x):
    _, value, derivative, _ = CASES[case]
    with mpmath.workdps(DIGITS):
        points = [mpmath.mpf(float(v)) for v in x]
        return (np.array([float(value(p)) for p in points]), np.array([float(derivative(p)) for p in points]))


def points(case, dtype):
    x = CASES[case][3].astype(dtype)
    if dtype == "float32" and case == "expm1":
        x = x[x < 80]   # expm1(80) is beyond float32
    return x


def assert_close(got, want, x, dtype, what):
    got = np.asarray(got, np.float64)
    bound = RTOL[dtype] * np.abs(want) + ATOL[dtype] * (1 + np.abs(np.asarray(x, np.float64)))
    bad = ~(np.abs(got - want) <= bound)
    assert not bad.any(), f"{what}: at x = {x[bad][:4]} got {got[bad][:4]}, want {want[bad][:4]}"


# ---------------------------------------------------------------------------
# The modules: NumPy compiled per (case, dtype); CUDA built once for all, in parallel


def _import(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def numpy_modules():
    return {(case, dtype): bpcompile.compile(spec_text(case, dtype)).load() for case in CASES for dtype in DTYPES}


@pytest.fixture(scope="module")
def cuda_modules(tmp_path_factory):
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no host C++ compiler (g++) to build the CUDA target with its emulation header")
    out = tmp_path_factory.mktemp("new_ops_cuda")
    shutil.copy(EMULATION_HEADER, out / "cuda_emulation.h")
    mp = pytest.MonkeyPatch()
    mp.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    mp.setenv("BPCOMPILE_CXXFLAGS", "-DBP_MAX_GRID=2 -Wall -Wextra -Werror")
    loaders = {}
    for case in CASES:
        for dtype in DTYPES:
            bpcompile.compile(spec_text(case, dtype), target="cuda").write(out)
            name = f"new_{case}_{dtype}"
            loaders[case, dtype] = _import(out / f"{name}_cuda.py", f"bp_test_{name}_cuda")
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for f in [pool.submit(m._load) for m in loaders.values()]:
            f.result()   # a g++ error fails here
    yield loaders
    mp.undo()


def value_and_derivative(module, x):
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        h = np.asarray(module.predict({}, x=x.copy()))
        _, grads = module.value_and_grad({}, x=x.copy())
    return h, np.asarray(grads["x"])


CASE_IDS = [pytest.param(case, dtype, id=f"{case}-{dtype}") for case in CASES for dtype in DTYPES]


@pytest.mark.parametrize("case, dtype", CASE_IDS)
def test_numpy_value_and_derivative(case, dtype, numpy_modules):
    m = numpy_modules[case, dtype]
    x = points(case, dtype)
    h, g = value_and_derivative(m, x)
    assert h.dtype == g.dtype == np.dtype(dtype) and h.shape == g.shape == x.shape
    want_h, want_g = reference(case, x)
    assert_close(h, want_h, x, dtype, f"{case} value")
    assert_close(g, want_g, x, dtype, f"{case} derivative")


@pytest.mark.parametrize("case, dtype", CASE_IDS)
def test_cuda_value_and_derivative(case, dtype, cuda_modules, numpy_modules):
    m, ref = cuda_modules[case, dtype], numpy_modules[case, dtype]
    x = points(case, dtype)
    h, g = value_and_derivative(m, x)
    assert h.dtype == g.dtype == np.dtype(dtype) and h.shape == g.shape == x.shape
    want_h, want_g = reference(case, x)
    assert_close(h, want_h, x, dtype, f"{case} value (CUDA)")
    assert_close(g, want_g, x, dtype, f"{case} derivative (CUDA)")
    ref_h, ref_g = value_and_derivative(ref, x)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert rel_error(ref_h, h) < tol and rel_error(ref_g, g) < tol


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_matches_finite_differences(case, numpy_modules):
    m = numpy_modules[case, "float64"]
    rng = np.random.default_rng(7)
    x = rng.uniform(-0.4, 1.5, 6) if case == "log1p" else rng.uniform(-2, 2, 6)
    x = np.where(np.abs(x) < 0.1, 0.1 + np.abs(x), x)   # a step never crosses the kink at 0
    fd = finite_differences(m, {}, {"x": x}, "x")
    _, g = value_and_derivative(m, x)
    assert rel_error(fd, g) < 1e-8, (case, fd, g)


ALL_NEW = """\
name: {name}
dtype: {dtype}
inputs:
  x: [3]
params:
  W: [3, 3]
graph:
  z: W @ x
  a: erf(z) + log1p(z * z) + expm1(z) + atan(z) + silu(z) + gelu(z)
  c: leaky_relu(z) + leaky_relu(z, 0.2) + elu(z) + elu(z, 0.5) + elu(z, -1/3) + leaky_relu(z, -2)
loss: sum(a * c)
"""


def test_nvcc_compiles_the_new_ops(tmp_path, cublas_include):
    """Every new op, forward and backward, in device code of both dtypes: nvcc -Werror all-warnings."""
    sources = []
    for dtype in DTYPES:
        name = f"all_new_{dtype}"
        bpcompile.compile(ALL_NEW.format(name=name, dtype=dtype), target="cuda").write(tmp_path)
        sources.append(tmp_path / f"{name}.cu")
    for src, (rc, out) in nvcc_compile_all(sources, cublas_include).items():
        assert rc == 0, out
        assert "warning" not in out.lower().split("\n", 1)[1], out


# ---------------------------------------------------------------------------
# erf: the module's own, against mpmath


def _erf_points(dtype):
    rng = np.random.default_rng(11)
    smallest = -300 if dtype == "float64" else -37
    a = np.concatenate([np.logspace(smallest, np.log10(30.0), 6000), rng.uniform(0, 7, 6000),
                        [0.84375, 1.25, 2.8571434020996094, 1 / 0.35, 6.0, 3.9, 5.9]])
    bounds = np.array([2.0**-28, 0.84375, 1.25, 2.8571434020996094, 6.0])
    a = np.concatenate([a, (bounds[:, None] + np.arange(-20, 21) * np.spacing(bounds)[:, None]).ravel()])
    a = a.astype(dtype)
    return np.concatenate([a, -a])


@pytest.mark.parametrize("dtype, bound", [("float64", 1e-15), ("float32", 1e-7)])
def test_module_erf_against_mpmath(dtype, bound):
    m = bpcompile.compile(spec_text("erf", dtype)).load()
    x = _erf_points(dtype)
    with np.errstate(all="raise"):
        got = np.asarray(m.predict({}, x=x))
    assert got.dtype == np.dtype(dtype)
    worst, at = 0, None
    with mpmath.workdps(DIGITS):
        tiny = mpmath.mpf(float(np.finfo(dtype).tiny))
        for xi, fi in zip(x.tolist(), got.tolist()):
            want = mpmath.erf(mpmath.mpf(xi))
            err = abs(mpmath.mpf(fi) - want) / max(abs(want), tiny)
            if err > worst:
                worst, at = err, xi
    assert worst <= bound, f"max relative error {float(worst):.3g} at x = {at!r} ({dtype})"


def _imports(tree):
    return [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_module_with_erf_imports_numpy_only_and_defines_erf_once():
    pyflakes_api = pytest.importorskip("pyflakes.api", reason="pyflakes (the test extra) lints generated code")
    from pyflakes.reporter import Reporter
    import io
    text = SPEC.format(name="erf_twice", dtype="float32", call="erf(x) + gelu(2 * x) + erf(x * x)")
    source = bpcompile.compile(text).source
    tree = ast.parse(source)
    assert _imports(tree) == ["import numpy as np"]
    defined = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert defined.count("_erf") == 1
    assert source.count("_erf(") >= 3
    out, err = io.StringIO(), io.StringIO()
    assert pyflakes_api.check(source, "erf_twice.py", Reporter(out, err)) == 0, out.getvalue() + err.getvalue()
    plain = bpcompile.compile(SPEC.format(name="plain", dtype="float64", call="silu(x)")).source
    assert "_erf" not in plain and _imports(ast.parse(plain)) == ["import numpy as np"]


# ---------------------------------------------------------------------------
# The constant argument


def _rule_exprs(text, rule):
    g = bpcompile.compile(text).lowered.graph
    return [g.node(n)["attrs"][0] for n in g.g.nodes if g.node(n)["op"] == "map" and g.node(n).get("rule") == rule]


@pytest.mark.parametrize("call, same_as", [
    ("leaky_relu(x, 1/5)", "leaky_relu(x, 0.2)"),
    ("leaky_relu(x, 2 * 0.1)", "leaky_relu(x, 0.2)"),
    ("leaky_relu(x, 0.01)", "leaky_relu(x)"),
    ("elu(x, sqrt(4) / 4)", "elu(x, 0.5)"),
    ("elu(x, 1.0)", "elu(x)"),
    ("leaky_relu(x, tanh(0))", "leaky_relu(x, 0)"),
])
def test_constant_argument_folds(call, same_as):
    rule = call[:call.index("(")]
    got = _rule_exprs(SPEC.format(name="m", dtype="float64", call=call), rule)
    want = _rule_exprs(SPEC.format(name="m", dtype="float64", call=same_as), rule)
    assert got == want and len(got) == 1


GOOD = """\
name: m
inputs:
  x: [3]
  u: [3]
  c: {classes: 3}
params:
  W: [3, 3]
  s: []
graph:
  z: W @ x
  h: CALL
loss: sum(u * h)
"""


@pytest.mark.parametrize("call, words", [
    ("leaky_relu(z, u)", ["slope", "leaky_relu()", "constant", "'u'"]),
    ("elu(z, s)", ["alpha", "elu()", "constant", "'s'"]),
    ("elu(z, s * 2)", ["alpha", "constant", "'s * 2'"]),
    ("leaky_relu(z, c)", ["slope", "constant", "'c'"]),
    ("leaky_relu(z, sum(u))", ["slope", "constant"]),
    ("leaky_relu(z, 0.1, 2)", ["leaky_relu() takes 1 or 2 arguments", "leaky_relu(x, slope=0.01)", "got 3"]),
    ("elu()", ["elu() takes 1 or 2 arguments", "got 0"]),
    ("gelu(z, 0.5)", ["gelu() takes 1 argument, got 2"]),
    ("silu(z, axis=0)", ["silu() takes no axis="]),
    ("leaky_relu(z, 1/0)", ["division by zero"]),
    ("elu(z, log(0))", ["undefined"]),
])
def test_bad_constant_argument_is_one_line(call, words, tmp_path, capsys, monkeypatch):
    line = compile_error_line(GOOD.replace("CALL", call), tmp_path, capsys, monkeypatch)
    assert re.search(r"bad\.yaml:11: graph\.h: ", line), line   # file, line, key
    for w in words:
        assert w in line, (w, line)


# ---------------------------------------------------------------------------
# One table: printing, in-place forms, verify


def test_new_ops_are_registered():
    assert set(NEW_OPS) <= set(ops.ELEMENTWISE) and set(ops.ELEMENTWISE) <= set(ops.FUNCTIONS)
    assert ops.ELEMENTWISE["leaky_relu"].signature == "leaky_relu(x, slope=0.01)"
    assert ops.ELEMENTWISE["elu"].signature == "elu(x, alpha=1)"


def test_verify_tables_name_exactly_the_registered_ops():
    """verify shares no rule with the compiler, but it knows every op it does, and no other."""
    registered = set(ops.FUNCTIONS)
    for table in ("_FUNCTIONS", "_NUMERIC"):
        names = set(getattr(verify_module, table))
        missing, extra = sorted(registered - names), sorted(names - registered)
        assert not missing, f"ops the compiler registers that verify.{table} lacks: {missing}"
        assert not extra, f"verify.{table} names ops the compiler does not register: {extra}"
    assert set(verify_module._ELEMENTWISE) == set(ops.ELEMENTWISE)


@pytest.mark.parametrize("target", targets.names())
def test_a_function_with_no_printing_fails_at_compile_time(target):
    class mystery(sp.Function):
        nargs = 1
    t = targets.get(target)
    with pytest.raises(targets.UnsupportedOp, match=rf"{target}.*'mystery'"):
        t.check_function(mystery)
    for record in (*ops.ELEMENTWISE.values(), *ops.INTERNAL.values()):
        if isinstance(record.function, type):
            t.check_function(record.function)   # every declared op prints here


def test_numpy_does_not_print_sympys_scalar_erf():
    """SymPy's own erf prints as math.erf (scalars only): refused, not printed."""
    with pytest.raises(targets.UnsupportedOp, match="math.erf"):
        targets.get("numpy").check_function(sp.erf)


@pytest.mark.parametrize("op, form", [("log1p", "np.log1p(z, out=z)"), ("expm1", "np.expm1(z, out=z)"),
                                      ("atan", "np.arctan(z, out=z)")])
def test_inplace_forms(op, form):
    text = f"""\
name: m
inputs:
  x: [3]
params:
  W: [3, 3]
graph:
  z: {op}(W @ x)
loss: sum(z)
"""
    c = bpcompile.compile(text)
    assert form.replace("z", "t0") in c.source or form in c.source, c.source
    m = c.load()
    params = {"W": np.random.default_rng(0).uniform(0.1, 0.5, (3, 3))}
    x = np.random.default_rng(1).uniform(0.1, 1, (4, 3))
    fn = {"log1p": np.log1p, "expm1": np.expm1, "atan": np.arctan}[op]
    assert np.allclose(m.predict(params, x=x), fn(x @ params["W"].T), rtol=1e-14, atol=0)


def test_display_of_the_derivative_forms():
    h = sp.Symbol("h", real=True)
    where = ops.elementwise.where_positive(h, 1, sp.Rational(1, 5))
    assert show(where) == "where(h > 0, 1, 1/5)"
    assert "\\begin{cases}" in latex(where) and "\\text{otherwise}" in latex(where)
    assert show(ops.step(h)) == "(h > 0)" and latex(ops.step(h)) == "[h > 0]"
    assert show(ops.equal(h, 2 * h)) == "(h == 2*h)"
    assert show(ops.ELEMENTWISE["leaky_relu"](h, sp.Rational(1, 5))) == "leaky_relu(h, 1/5)"


# ---------------------------------------------------------------------------
# The docs say what the code does


def test_readme_lists_the_functions_of_the_spec_language():
    from conftest import ROOT
    readme = (ROOT / "README.md").read_text()
    paragraph = re.search(r"The functions of the spec language:(.*?)\n\n", readme, re.S).group(1)
    listed = set(re.findall(r"`([a-z_0-9]+)(?:\(|`)", paragraph))
    assert listed == set(ops.FUNCTIONS), (sorted(set(ops.FUNCTIONS) - listed), sorted(listed - set(ops.FUNCTIONS)))
    for name in ("leaky_relu", "elu"):
        assert ops.ELEMENTWISE[name].signature in paragraph


def test_the_worked_example_is_the_declaration():
    """docs/adding-an-op.md quotes elu's declaration (its docstring left out) as it is."""
    from conftest import ROOT
    doc = (ROOT / "docs" / "adding-an-op.md").read_text()
    block = re.search(r"```python\n(@declare\(\"elu\".*?)```", doc, re.S).group(1).splitlines()
    source = (ROOT / "bpcompile" / "ops" / "elementwise.py").read_text().splitlines()
    start = source.index(block[0])
    rest = iter(source[start:])
    for line in block:
        assert any(line == s for s in rest), f"docs/adding-an-op.md: {line!r} is not in elu's declaration"


@pytest.mark.parametrize("act", [nm for nm, op in ops.ELEMENTWISE.items() if op.activation])
def test_every_declared_activation_works_in_the_layers_shorthand(act):
    """The layers: shorthand offers exactly the ops declared activation=True (no
    list of its own), and each gives the layer's activation: the module's
    predict equals act(W2 @ act(W1 @ x + b1) + b2) with act evaluated by SymPy at
    each number (the record's function folds numbers), and the gradient matches
    finite differences."""
    from bpcompile.frontend.spec import ACTIVATIONS
    assert set(ACTIVATIONS) == {nm for nm, op in ops.ELEMENTWISE.items() if op.activation} | {"linear"}
    spec = bpcompile.parse_spec(f"""
name: layers_{act}
inputs: {{x: [3], y: [2]}}
layers:
  - {{input: x}}
  - {{dense: 4, activation: {act}}}
  - {{dense: 2, activation: {act}}}
loss: sum((h2 - y)**2)
""")
    module = bpcompile.compile(spec).load()
    rng = np.random.default_rng(5)
    params = module.init_params(np.random.default_rng(1))
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    record = ops.ELEMENTWISE[act]
    defaults = [value for _, value in record.params]
    fa = np.vectorize(lambda v: float(sp.N(record(sp.Float(float(v), 30), *defaults), 30)))
    h1 = fa(x @ params["W1"].T + params["b1"])
    want = fa(h1 @ params["W2"].T + params["b2"])
    np.testing.assert_allclose(module.predict(params, x=x), want, rtol=1e-12, atol=1e-14)
    _, grads = module.value_and_grad(params, x=x, y=y)
    for name in params:
        fd = finite_differences(module, params, {"x": x, "y": y}, name)
        assert rel_error(grads[name], fd) < 1e-6, (act, name)


@pytest.mark.parametrize("act", [nm for nm, op in ops.ELEMENTWISE.items() if op.repeats_argument])
def test_an_op_that_reads_its_argument_twice_gets_it_computed_once(act):
    """elu prints as np.maximum(x, 0) + np.expm1(np.minimum(x, 0)): applied to
    W @ h + b (fused into its kernel), the sum is a temporary of its own, not
    computed twice in the line; the values are those of the plain form."""
    text = f"""
name: twice_{act}
inputs: {{x: [3]}}
params: {{W: [2, 3], b: [2]}}
graph:
  h: {act}(W @ x + b)
loss: sum(h**2)
"""
    compiled = bpcompile.compile(text)
    line = next(ln for ln in compiled.source.splitlines() if ln.strip().startswith("h = ") and "shape [" not in ln)
    assert "b" not in re.findall(r"[A-Za-z_]\w*", line), line   # W @ x + b is computed above it
    module = compiled.load()
    rng = np.random.default_rng(3)
    params = {"W": rng.normal(size=(2, 3)), "b": rng.normal(size=2)}
    x = rng.normal(size=(4, 3))
    z = x @ params["W"].T + params["b"]
    record = ops.ELEMENTWISE[act]
    defaults = [value for _, value in record.params]
    want = np.vectorize(lambda v: float(sp.N(record(sp.Float(float(v), 30), *defaults), 30)))(z)
    np.testing.assert_allclose(module.predict(params, x=x), want, rtol=1e-12, atol=1e-15)
