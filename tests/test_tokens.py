"""Integer token inputs and embeddings (issue 12): ``{classes: V, shape: [T]}``
inputs, ``E[tokens]`` (a gather of rows) and its adjoint, a scatter-add of rows.

The systematic row (tests/test_systematic.py, "gather") checks values, gradients
and verify on every target; here: the spec's errors through the command line, the
forms the NumPy printer picks for the scatter-add, the C and CUDA kernels, the
argument checks of every target's module, and verify's shrinking of token inputs."""

from __future__ import annotations

import importlib.util
import re
import shutil

import numpy as np
import pytest

import bpcompile
from bpcompile.targets.cuda import EMULATION_HEADER
from bpcompile.targets.numpy.printer import scatter_form
from bpcompile.tools.verify import _narrow_instance, _shrink, small_instance
from test_errors import run_here

BASE = """\
name: tk
inputs:
  tokens: {{classes: 5, shape: [4]}}
  x: [3]
  c: {{classes: 3}}
params:
  E: [5, 3]
  W: [3, 3]
graph:
  e: E[tokens]
  {line}
loss: {loss}
"""


def spec(line="h: e[0]", loss="sum(h)", extra=""):
    return BASE.format(line=line, loss=loss) + extra


# -- errors: one line naming file, line and key; exit 2; nothing written ----------------

ERRORS = {
    # label: (spec text, words the message must contain)
    "first axis is not V": (spec("h: W[tokens]"),
                            ["bad.yaml:11:", "graph.h", "first axis of 'W'", "[3, 3]", "5 classes of 'tokens'"]),
    "label of other classes": (spec("h: E[c]"), ["graph.h", "first axis of 'E'", "3 classes of 'c'"]),
    "float input as index": (spec("h: E[x]"), ["graph.h", "'x' is a float input", "E[tokens]"]),
    "param as index": (spec("h: E[W]"), ["graph.h", "'W' is a param"]),
    "float node as index": (spec("h: E[e]"), ["graph.h", "'e' is a float graph node"]),
    "expression as index": (spec("h: E[tokens + 1]"), ["graph.h", "indexing takes integer constants", "E[tokens]"]),
    "scalar indexed": (spec("s: sum(x)\n  h: s[tokens]"), ["graph.h", "'s'", "scalar"]),
    "tokens in arithmetic": (spec("h: tokens + 1"), ["graph.h", "'tokens' is an integer token input",
                                                       "arithmetic", "E[tokens]"]),
    "tokens in a matmul": (spec("h: W @ tokens"), ["graph.h", "token input", "a matrix product"]),
    "tokens in a function": (spec("h: tanh(tokens)"), ["graph.h", "token input", "tanh()"]),
    "tokens in a reduction": (spec("h: sum(tokens)", "h"), ["graph.h", "token input", "sum()"]),
    "tokens indexed": (spec("h: tokens[0]", "h"), ["graph.h", "token input", "indexing"]),
    "tokens as a table": (spec("h: tokens[c]", "h"), ["graph.h", "token input", "indexing"]),
    "tokens as cross_entropy's label": (spec("h: softmax(e[0])", "cross_entropy(h, tokens)"),
                                        ["bad.yaml:12:", "loss", "cross_entropy() needs one integer class label",
                                         "token input of shape [4]"]),
    "tokens as softmax_cross_entropy's label": (spec("h: e[0]", "softmax_cross_entropy(h, tokens)"),
                                                ["loss", "softmax_cross_entropy()", "token input"]),
    "onehot of a float": (spec("h: onehot(x)"), ["graph.h", "onehot() needs an integer input",
                                                 "{classes: V, shape: [T]}", "'x'"]),
    "wrt tokens": (spec(extra="wrt: [tokens]\n"), ["wrt", "'tokens'", "integer token input"]),
    "output tokens": (spec(extra="output: tokens\n"), ["output", "'tokens'", "integer token input"]),
    "tokens of two axes": (spec().replace("  c: {classes: 3}", "  c: {classes: 3, shape: [2, 2]}"),
                           ["bad.yaml:5:", "inputs.c.shape", "one axis"]),
    "unknown key": (spec().replace("{classes: 3}", "{classes: 3, shap: [2]}"),
                    ["inputs.c", "{classes: V, shape: [T]}"]),
    "bad token shape": (spec().replace("{classes: 3}", "{classes: 3, shape: 2}"),
                        ["inputs.c.shape", "a shape is a list"]),
    "tokens with one class": (spec().replace("{classes: 5, shape: [4]}", "{classes: 1, shape: [4]}"),
                              ["inputs.tokens", "classes must be an integer >= 2"]),
}


@pytest.mark.parametrize("label", list(ERRORS))
def test_token_spec_errors_are_one_clear_line(label, tmp_path, capsys, monkeypatch):
    text, words = ERRORS[label]
    (tmp_path / "bad.yaml").write_text(text)
    r = run_here("compile", "bad.yaml", "-o", "out", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert r.returncode == 2, (label, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.yaml:"), r.stderr
    for w in words:
        assert w in r.stderr, (label, w, r.stderr)
    assert not (tmp_path / "out").exists() and r.stdout == ""


def test_onehot_of_tokens_is_a_row_per_token():
    m = bpcompile.compile(spec("h: onehot(tokens)", "sum(h @ E)", "output: h\n")).load()
    tokens = np.array([[0, 4, 4, 2], [1, 1, 3, 0]])
    out = m.predict(m.init_params(0), tokens=tokens, x=np.zeros((2, 3)), c=np.zeros(2, int))
    assert out.shape == (2, 4, 5) and np.array_equal(out, np.eye(5)[tokens])


# -- the NumPy forms ---------------------------------------------------------------

TABLES = """\
name: tables
dtype: {dtype}
inputs:
  tokens: {{classes: {V}, shape: [6]}}
  c: {{classes: {V}}}
  X: [{V}, {D}]
params:
  E: [{V}, {D}]
  F: [{V}]
  G: [{V}, 2, {D}]
graph:
  e: E[tokens]
  f: F[tokens]
  g: G[tokens]
  B: X * E
  b: B[tokens]
  r: B[c]
  q: E[c]
loss: sum(e * e) + sum(f * f) + sum(g * g) + sum(b * b) + sum(r * r) + sum(q * q)
wrt: [E, F, G, X]
"""


def _scatter_add(tokens, rows, V):
    """The adjoint of E[tokens] with NumPy's np.add.at: the reference."""
    out = np.zeros((V, *rows.shape[tokens.ndim:]))
    np.add.at(out, tokens, rows)
    return out


@pytest.mark.parametrize("V, D", [(3, 4), (12, 1), (12, 4), (40, 3)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_scatter_add_forms_agree_with_add_at(V, D, dtype):
    source = bpcompile.compile(TABLES.format(V=V, D=D, dtype=dtype)).source
    body = source[source.index("def value_and_grad"):]
    form = scatter_form(V, D, dtype)
    assert ("np.bincount(" in body) == (form == "bincount" or scatter_form(V, 1, dtype) == "bincount")
    assert "np.add.at" not in source
    assert "e = np.take(E, tokens, axis=0)" in body and "b = B[rows[:, None], tokens]" in body
    assert "r = B[rows, c]" in body
    m = bpcompile.compile(TABLES.format(V=V, D=D, dtype=dtype)).load()
    rng = np.random.default_rng(0)
    N = 7
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in m.PARAM_SHAPES.items()}
    tokens, c, X = rng.integers(0, V, (N, 6)), rng.integers(0, V, N), rng.standard_normal((N, V, D))
    _, grads = m.value_and_grad(params, tokens=tokens, c=c, X=X)
    E, F, G = (params[k].astype(np.float64) for k in "EFG")
    B = X * E
    B_bar = 2 * (_batched_scatter(tokens, B) + _batched_scatter(c, B))   # of sum(b * b) + sum(r * r)
    want = {"E": 2 * _scatter_add(tokens, E[tokens], V) + 2 * _scatter_add(c, E[c], V)
            + np.einsum("nvd,nvd->vd", X, B_bar),
            "F": 2 * _scatter_add(tokens, F[tokens], V), "G": 2 * _scatter_add(tokens, G[tokens], V),
            "X": E * B_bar}
    tol = 1e-4 if dtype == "float32" else 1e-12
    for k, w in want.items():   # the loss is the mean over the batch
        assert grads[k].dtype == np.dtype(dtype)
        np.testing.assert_allclose(grads[k], w / N, rtol=tol, atol=tol * np.abs(w / N).max())


def _batched_scatter(index, B):
    """Per example n: zeros [V, ...] with B[n, index[n]] added at index[n]."""
    out = np.zeros_like(B)
    for n in range(len(B)):
        np.add.at(out[n], index[n], B[n][index[n]])
    return out


def test_scatter_form_by_size():
    """Where the one-hot GEMM and the bincount cross (benchmarks/bench_scatter_add.py)."""
    assert scatter_form(3, 16, "float64") == "onehot" and scatter_form(16, 16, "float64") == "onehot"
    assert scatter_form(17, 16, "float64") == "bincount" and scatter_form(32, 16, "float32") == "onehot"
    assert scatter_form(30, 256, "float64") == "onehot" and scatter_form(33, 256, "float64") == "bincount"
    assert scatter_form(4, 1, "float64") == "onehot" and scatter_form(5, 1, "float64") == "bincount"
    assert scatter_form(64, 256, "float32") == "onehot" and scatter_form(65, 256, "float32") == "bincount"
    assert scatter_form(30000, 256, "float32") == "bincount"


# -- C and CUDA ------------------------------------------------------------------

def test_cuda_scatter_adds_atomically_and_says_it_is_not_deterministic():
    cu = bpcompile.compile(spec("h: tanh(e @ x)", "sum(h)"), target="cuda").source
    kernel = cu[cu.index("// E_bar = zeros [5, 3]"):]
    kernel = kernel[:kernel.index("\n}\n")]
    assert "atomicAdd(&E_bar[_l * 3 + _i % 3], e_bar[_i]);" in kernel
    assert "Not deterministic" in kernel and "compute capability 6.0" in kernel
    assert "if (0 <= _l && _l < 5)" in kernel
    c = bpcompile.compile(spec("h: tanh(e @ x)", "sum(h)"), target="c").source
    assert "E_bar[_l * 3 + _i % 3] += e_bar[_i];" in c and "the sums are deterministic" in c
    assert "atomicAdd" not in c
    assert "const int* tokens," in c and "tokens [N, 4], int32 tokens in [0, 5)" in c
    assert "e[_i] = (0 <= _l && _l < 5) ? E[_l * 3 + _i % 3] : NAN;" in c


def _loaders(tmp_path, monkeypatch, text):
    """The module of ``text`` for every target (CUDA emulated on the host)."""
    monkeypatch.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    out = {"numpy": bpcompile.compile(text).load()}
    for target in ("c", "cuda"):
        if shutil.which("cc" if target == "c" else "g++") is None:
            continue
        d = tmp_path / target
        d.mkdir()
        if target == "cuda":
            shutil.copy(EMULATION_HEADER, d / "cuda_emulation.h")
        bpcompile.compile(text, target=target).write(d)
        entry = bpcompile.targets.get(target).entry_file("tk")
        s = importlib.util.spec_from_file_location(f"tk_{target}", d / entry)
        out[target] = importlib.util.module_from_spec(s)
        s.loader.exec_module(out[target])
    return out


def test_token_inputs_are_checked_by_every_target(tmp_path, monkeypatch):
    text = spec("h: tanh(e @ x)", "sum(h) + softmax_cross_entropy(W @ x, c)")
    modules = _loaders(tmp_path, monkeypatch, text)
    rng = np.random.default_rng(0)
    params = modules["numpy"].init_params(0)
    good = {"tokens": rng.integers(0, 5, (6, 4)), "x": rng.standard_normal((6, 3)), "c": rng.integers(0, 3, 6)}
    good["tokens"][0] = [0, 4, 1, 2]
    want = modules["numpy"].value_and_grad(params, **good)
    bad = {
        "tokens has shape (6,); expected (N, 4)": dict(good, tokens=good["tokens"][:, 0]),
        "tokens has shape (6, 5); expected (N, 4)": dict(good, tokens=np.zeros((6, 5), int)),
        "tokens has dtype float64; expected an integer dtype (class labels in [0, 5))":
            dict(good, tokens=good["tokens"].astype(float)),
        "tokens has values in [-1, 3]; expected class labels in [0, 5)": dict(good, tokens=good["tokens"] - 1),
        "tokens has values in [1, 5]; expected class labels in [0, 5)": dict(good, tokens=good["tokens"] + 1),
        "x has batch size 6; expected 5, the batch size of tokens": dict(good, tokens=good["tokens"][:5]),
    }
    for target, m in modules.items():
        value, grads = m.value_and_grad(params, **dict(good, tokens=good["tokens"].astype(np.int32)))
        assert value == pytest.approx(want[0], rel=1e-12), target
        for k in grads:
            np.testing.assert_allclose(grads[k], want[1][k], rtol=1e-11, atol=1e-13)
        for message, inputs in bad.items():
            with pytest.raises(ValueError, match=re.escape(f"value_and_grad: {message}")):
                m.value_and_grad(params, **inputs)


# -- verify: token inputs shrink -------------------------------------------------

def test_shrink_shrinks_classes_and_token_counts_and_keeps_the_table_matched():
    data = bpcompile.parse_spec(spec("h: tanh(e @ x)", "sum(h)")).data
    small = _shrink(data)
    assert small["inputs"]["tokens"] == {"classes": 3, "shape": [3]}
    assert small["params"]["E"] == [3, 3] and small["inputs"]["c"] == {"classes": 3}
    narrow = _shrink(data, 1, keep={4})
    assert narrow["inputs"]["tokens"] == {"classes": 2, "shape": [4]}   # classes at least 2, T kept
    # 3 is c's class count too: every 3 becomes 2 (equal dimensions stay equal)
    assert narrow["params"]["E"] == [2, 2] and narrow["params"]["W"] == [2, 2]
    assert narrow["inputs"]["x"] == [2] and narrow["inputs"]["c"] == {"classes": 2}
    assert bpcompile.parse_spec(narrow) is not None


def test_small_instance_keeps_the_positions_a_graph_reads():
    s = bpcompile.parse_spec(spec("h: tanh(e[3] @ x)", "sum(h)"))
    small = small_instance(s)
    assert small.spec.inputs["tokens"].shape == (4,) and small.spec.inputs["tokens"].classes <= 4
    assert small.spec.params["E"].shape == (3, 3)
    narrow = _narrow_instance(s, small.spec)
    assert narrow.spec.params["E"].shape == (2, 2) and narrow.spec.inputs["tokens"].shape == (4,)
    # a graph that reads no position by constant shrinks the token count too, and has no narrow instance
    s2 = bpcompile.parse_spec(spec("h: tanh(e @ x)", "sum(h)"))
    assert small_instance(s2).spec.inputs["tokens"].shape == (3,)
    assert _narrow_instance(s2, small_instance(s2).spec) is None


def test_verify_checks_a_given_module_with_tokens_against_the_spec(tmp_path):
    text = spec("h: tanh(e @ x)", "sum(h) + sum(onehot(tokens) @ E)")
    c = bpcompile.compile(text)
    c.write(tmp_path)
    report = bpcompile.verify(text, module=tmp_path / "tk.py")
    assert report.ok, report.table()
    assert {r.check for r in report.rows} >= {"sympy", "fd", "spec"}
    # the same module with the embedding's gradient doubled fails
    source = (tmp_path / "tk.py").read_text()
    assert source.count("return float(L), {'E': E_bar") == 1
    (tmp_path / "tk.py").write_text(source.replace("return float(L), {'E': E_bar", "return float(L), {'E': 2 * E_bar"))
    report = bpcompile.verify(text, module=tmp_path / "tk.py")
    assert not report.ok and {r.name for r in report.rows if not r.ok} == {"E"}


def test_inspect_and_graph_read_the_gather(tmp_path, capsys, monkeypatch):
    (tmp_path / "tk.yaml").write_text(spec("h: tanh(e @ x)", "sum(h)"))
    r = run_here("inspect", "tk.yaml", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert r.returncode == 0, r.stderr
    assert "e = E[tokens]" in r.stdout
    assert "E_bar = e_bar added at rows [tokens] (summed over the batch and where tokens repeat" in r.stdout
    assert "naive expanded derivative" in r.stdout
    r = run_here("graph", "tk.yaml", "-o", "g.dot", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert r.returncode == 0, r.stderr
    assert "rows [tokens]" in (tmp_path / "g.dot").read_text()
