"""The generated NumPy module reads as the lecture (issue 11's defects):

* each adjoint equation stands above the line that computes its node, never above
  another node's line (``h1_bar = W2^T @ z2_bar`` above ``h1_bar = z2_bar @ W2``,
  not above ``b2_bar = ones @ z2_bar``);
* a fused sequence of in-place steps says the formula it computes;
* scalar CSE residue (``t9 = 1/N; t10 = -t9; ...``) and ``t1 = L_n.sum(axis=0);
  L = t1/N`` are folded into the line that reads them: the same NumPy calls,
  never more;
* predict is batched when its output reads no input (a function of the params).
"""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest
from conftest import EXAMPLES, random_point

from bpcompile.targets.cuda import EMULATION_HEADER
import bpcompile
from bpcompile.targets.numpy import printer as codegen_numpy


def compiled(name):
    return bpcompile.compile(bpcompile.load_spec(f"examples/{name}.yaml"))


def function_lines(source, fn):
    """The lines of function ``fn`` of a generated module, stripped."""
    start = source.index(f"\ndef {fn}(")
    end = source.find("\ndef ", start + 1)
    return [line.strip() for line in source[start:end].split("\n")[1:] if line.strip()]


NOTE = re.compile(r"# ([A-Za-z_][A-Za-z0-9_]*) = .*   # ")       # an equation: '# x_bar = ...   # rule'
ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\[.*\])? (=|\+=|-=|\*=|/=) ")


def code_after(lines, i):
    """The first line of code after line i."""
    return next(line for line in lines[i + 1:] if not line.startswith("#"))


# -- (1) equations above the line computing their node ------------------------

def test_digits_mlp_equations_stand_above_their_lines():
    lines = function_lines(compiled("digits_mlp").source, "value_and_grad")
    for lhs, code in [("h1_bar", "h1_bar = np.dot(z2_bar, W2, out=ws['h1_bar'])"),
                      ("b2_bar", "b2_bar = np.dot(ones, z2_bar)"),
                      ("W2_bar", "W2_bar = np.dot(z2_bar.T, h1)"), ("b1_bar", "b1_bar = np.dot(ones, z1_bar)"),
                      ("W1_bar", "W1_bar = np.dot(z1_bar.T, x)")]:
        (i,) = [i for i, line in enumerate(lines) if line.startswith(f"# {lhs} = ")]
        assert code_after(lines, i) == code, lhs


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_no_equation_stands_above_another_nodes_line(path):
    """Between an adjoint equation and the first line assigning its name, no line
    assigns another name that has an equation of its own."""
    lines = function_lines(bpcompile.compile(bpcompile.load_spec(path)).source, "value_and_grad")
    backward = lines[next(i for i, line in enumerate(lines) if line.startswith("# backward pass")):]
    noted = {m.group(1) for line in backward if (m := NOTE.match(line))}
    for i, line in enumerate(backward):
        m = NOTE.match(line)
        if not m or not any(ASSIGN.match(x) and ASSIGN.match(x).group(1) == m.group(1) for x in backward):
            continue
        for later in backward[i + 1:]:
            a = ASSIGN.match(later)
            if later.startswith("#") or not a:
                continue
            if a.group(1) == m.group(1):
                break
            assert a.group(1) not in noted, (line, later)


def test_tanh_regression_chain_equations_stand_above_the_fused_kernel():
    """e_bar = f_bar*v is inlined into a_bar's kernel: its equation goes there, not
    above v_bar's GEMM."""
    lines = function_lines(compiled("tanh_regression").source, "value_and_grad")
    i = lines.index("# e_bar = f_bar*v   # mul")
    assert lines[i + 1].startswith("# a_bar = ")
    j = lines.index("v_bar = np.dot(e.T, g_bar)")
    assert lines[j - 1].startswith("# v_bar = ")


# -- (2) in-place sequences say what they compute ----------------------------

def test_in_place_sequence_prints_its_formula():
    lines = function_lines(compiled("tanh_regression").source, "value_and_grad")
    i = lines.index("a_bar = e  # in place: e is not read again")
    assert lines[i - 1] == "# fused, in place: a_bar = g_bar*v*(1 - e**2)"
    forward = function_lines(compiled("digits_mlp").source, "loss")
    i = forward.index("h1 = t0  # in place: t0 is not read again")
    assert forward[i - 1] == "# fused, in place: h1 = tanh(b1 + t0)"


def test_no_formula_where_the_equation_already_says_it():
    """z1_bar = h1_bar*(1 - h1**2) is the adjoint equation as written: not twice."""
    lines = function_lines(compiled("digits_mlp").source, "value_and_grad")
    i = lines.index("z1_bar = h1  # in place: h1 is not read again")
    assert lines[i - 1] == "# z1_bar = h1_bar*(1 - h1**2)   # tanh"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_multi_step_in_place_sequence_is_explained(path):
    source = bpcompile.compile(bpcompile.load_spec(path)).source
    lines = [line.strip() for line in source.split("\n")]
    for i, line in enumerate(lines):
        m = re.match(r"(\w+) = (\w+)  # in place: ", line)
        if not m:
            continue
        steps = []
        for later in lines[i + 1:]:
            o = re.escape(m.group(1))
            if not re.match(rf"{o} (\+|-|\*|/|\*\*)= |np\.\w+\(.*, out={o}\)$", later):
                break
            steps.append(later)
        if len(steps) > 1:
            above = lines[i - 1]
            assert above.startswith(f"# fused, in place: {m.group(1)} = ") or \
                above.startswith(f"# {m.group(1)} = "), (path.stem, line)   # the equation says it


# -- (2) scalar residue folded ------------------------------------------------

def test_digits_mlp_has_no_scalar_residue():
    source = compiled("digits_mlp").source
    for fn in ("loss", "value_and_grad"):
        lines = function_lines(source, fn)
        assert "L = L_n.sum(axis=0)/N" in lines
        for line in lines:
            assert not re.fullmatch(r"t\d+ = -t\d+", line), line                 # t10 = -t9
            assert not re.fullmatch(r"t\d+ = t\d+\[:, None\]", line), line       # t12 = t11[:, None]
            assert not re.fullmatch(r"L = t\d+/N", line), line                   # L = t1/N
    vag = function_lines(source, "value_and_grad")
    assert any(re.fullmatch(r"z2_bar\[rows, label\] -= t\d+", line) for line in vag)
    assert any(re.fullmatch(r"z2_bar \*= \(t\d+/t\d+\)\[:, None\]", line) for line in vag)


def _temps_read_once(source):
    """(function, line) for each temporary t<k> of a view, a negation or 1/N that
    exactly one later line of its function reads, once."""
    found = []
    for fn in ast.parse(source).body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        loads = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                loads[node.id] = loads.get(node.id, 0) + 1
        for stmt in fn.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                nm, v = stmt.targets[0].id, stmt.value
                # a negation (t10 = -t9), a view (t12 = t11[:, None], t6 = t2[:, 0]), a
                # scalar of the batch size read once (t9 = 1/N)
                residue = isinstance(v, ast.UnaryOp) \
                    or (isinstance(v, ast.Subscript) and re.fullmatch(r"\w+\[:, (None|0)\]", ast.unparse(v))) \
                    or (isinstance(v, ast.BinOp) and ast.unparse(v) in ("1 / N", "-1 / N"))
                if re.fullmatch(r"t\d+", nm) and residue and loads.get(nm) == 1:
                    found.append((fn.name, ast.unparse(stmt)))
    return found


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_no_single_use_scalar_residue(path):
    assert _temps_read_once(bpcompile.compile(bpcompile.load_spec(path)).source) == []


def _operations(source, fn):
    """Calls, binary and unary operations, augmented assignments and subscripts of
    function ``fn``: what costs time (assignments of names cost nothing)."""
    tree = next(f for f in ast.parse(source).body if isinstance(f, ast.FunctionDef) and f.name == fn)
    counts = {}
    for node in ast.walk(tree):
        kind = type(node).__name__
        if kind in ("Call", "BinOp", "UnaryOp", "AugAssign", "Subscript"):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_folding_never_adds_an_operation(path, monkeypatch):
    """The module with temporaries folded runs no more NumPy calls or operations
    than the one without, and computes the same numbers."""
    spec = bpcompile.load_spec(path)
    folded = bpcompile.compile(spec)
    monkeypatch.setattr(codegen_numpy, "fold_plan", lambda kernels, returns, absorbed=None: {})
    plain = bpcompile.compile(spec)
    monkeypatch.undo()
    for fn in ("predict", "loss", "value_and_grad"):
        a, b = _operations(folded.source, fn), _operations(plain.source, fn)
        for kind in a:
            assert a[kind] <= b.get(kind, 0), (fn, kind, a, b)
    fm, pm = folded.load(), plain.load()
    params, inputs = random_point(fm, n=5, seed=3)
    lf, gf = fm.value_and_grad({k: v.copy() for k, v in params.items()}, **inputs)
    lp, gp = pm.value_and_grad({k: v.copy() for k, v in params.items()}, **inputs)
    assert lf == lp
    for k in gp:
        np.testing.assert_array_equal(gf[k], gp[k])
    np.testing.assert_array_equal(fm.predict(params, **inputs), pm.predict(params, **inputs))


def test_folding_respects_in_place_writes():
    """A temporary is not folded past a line that overwrites memory it reads."""
    from bpcompile.ir.program import Kernel, Value
    import sympy as sp

    a = Value("a", (3,), True, "float", "temp")
    t0 = Value("t0", (3,), True, "float", "temp")
    b = Value("b", (3,), True, "float", "temp")
    c = Value("c", (3,), True, "float", "temp")
    A, T = sp.Symbol("a", real=True), sp.Symbol("t0", real=True)
    k0 = Kernel("map", t0, (a,), ([], -A))                    # t0 = -a
    k1 = Kernel("map", b, (a,), ([], sp.tanh(A)), reuse=a)    # b = tanh(a), in a's memory
    k2 = Kernel("map", c, (t0, b), ([], T * sp.Symbol("b", real=True)))
    assert codegen_numpy.fold_plan([k0, k1, k2], "c") == {}
    k1.reuse = None
    assert codegen_numpy.fold_plan([k0, k1, k2], "c") == {0: 2}


# -- (4) predict batched when the output reads no input ------------------------

PARAM_OUTPUT = """
name: param_output
dtype: {dtype}
inputs:
  x: [3]
  y: []
params:
  W: [3, 3]
  v: {{shape: [3], init: normal(0.5)}}
graph:
  p: tanh(v) * 2
  s: sum(v * v)
  g: sum(p * (W @ x))
loss: (y - g)**2
output: {output}
"""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("output,shape", [("p", (3,)), ("s", ())])
def test_predict_of_params_alone_is_batched(dtype, output, shape):
    m = bpcompile.compile(bpcompile.parse_spec(PARAM_OUTPUT.format(dtype=dtype, output=output))).load()
    params = m.init_params()
    want = 2 * np.tanh(params["v"]) if output == "p" else np.sum(params["v"] ** 2)
    for given in ({"x": np.ones((5, 3))}, {"y": np.ones(5)}, {"x": np.ones((5, 3)), "y": np.ones(5)}):
        got = m.predict(params, **given)
        assert got.shape == (5, *shape) and got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-6)
        got[...] = 7   # a fresh array: writing to it changes no param
        assert not np.any(params["v"] == 7)
    assert m.predict(params, x=np.ones((0, 3))).shape == (0, *shape)
    with pytest.raises(ValueError, match="batch size N"):
        m.predict(params)


def test_cuda_loader_predict_of_params_alone_is_batched(tmp_path, monkeypatch):
    """The CUDA loader, its .cu built for the host (cuda_emulation.h), agrees."""
    import importlib.util
    import shutil

    if shutil.which("g++") is None and not __import__("os").environ.get("CXX"):
        pytest.skip("no host C++ compiler (g++)")
    spec = bpcompile.parse_spec(PARAM_OUTPUT.format(dtype="float64", output="p"))
    bpcompile.compile(spec, target="cuda").write(tmp_path)
    shutil.copy(EMULATION_HEADER, tmp_path)
    monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    loader_spec = importlib.util.spec_from_file_location("bp_test_param_output_cuda",
                                                         tmp_path / "param_output_cuda.py")
    cuda = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(cuda)
    ref = bpcompile.compile(spec).load()
    params = ref.init_params()
    for given in ({"x": np.ones((5, 3))}, {"y": np.ones(5)}):
        got = cuda.predict(params, **given)
        assert got.shape == (5, 3)
        np.testing.assert_allclose(got, ref.predict(params, **given), rtol=1e-12)
    with pytest.raises(ValueError, match="batch size N"):
        cuda.predict(params)
