"""`bpcompile inspect` and `bpcompile graph` on the examples."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import bpcompile
from bpcompile.tools import draw
from bpcompile.tools import inspect as explain
from conftest import ROOT
from test_sharing import thin_chain


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "bpcompile", *args], cwd=cwd,
                          capture_output=True, text=True)


def test_inspect_seed001_shows_the_lectures_adjoints():
    r = cli("inspect", "examples/tanh_regression.yaml")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    forward, adjoint = out.split("Adjoint program")[0], out.split("Adjoint program")[1]
    assert re.search(r"d = W @ x +shape \[3\]", forward)
    assert re.search(r"g = sum\(f\) +shape \[\]", forward)
    lines = [line.strip() for line in adjoint.splitlines()]
    expected = [
        ("q1_bar = 2*L_n_bar*(y - g)", "pow"),
        ("g_bar = -q1_bar", "sub"),
        ("e_bar = f_bar*v", "mul"),
        ("a_bar = e_bar*(1 - e**2)", "tanh"),
        ("d_bar = a_bar", "add"),
        ("v_bar = e*f_bar (summed over the batch)", "mul"),
        ("b_bar = a_bar (summed over the batch)", "add"),
        ("W_bar = d_bar x^T (summed over the batch)", "matmul"),
    ]
    found = []
    for lhs_rhs, rule in expected:
        match = [k for k, line in enumerate(lines) if line.startswith(lhs_rhs + " ") and line.endswith("# " + rule)]
        assert match, (lhs_rhs, adjoint)
        found.append(match[0])
    assert found.index(found[0]) == 0 and found[:6] == sorted(found[:6])  # the order backprop runs
    assert "forward value reused" in out and "e = tanh(b + d)" in out
    assert re.search(r"^    q1 = y - g +shape \[\]", forward, flags=re.M)   # the legend line


def test_inspect_sums_over_consumers_where_paths_meet():
    out = cli("inspect", "examples/seed002_network_nonzero.yaml").stdout
    line = next(l for l in out.splitlines() if l.strip().startswith("z1_bar ="))
    assert "v12*z4_bar + v11*z3_bar" in line and "sum over consumers" in line


def test_inspect_softmax_cross_entropy_is_one_rule():
    out = cli("inspect", "examples/softmax_ce_output.yaml").stdout
    assert "a_bar = L_n_bar*(softmax(a) - onehot(label))" in out
    assert not re.search(r"\bmax\(", out.split("Adjoint program")[1].split("Shared")[0])


def test_inspect_json_and_latex():
    r = cli("inspect", "examples/tanh_regression.yaml", "--format", "json")
    data = json.loads(r.stdout)
    assert [f["lhs"] for f in data["forward"]] == ["d", "a", "e", "f", "g", "q1", "L_n", "L"]
    a_bar = next(a for a in data["adjoint"] if a["lhs"] == "a_bar")
    assert a_bar["rhs"] == "e_bar*(1 - e**2)" and a_bar["terms"] == [{"rhs": "e_bar*(1 - e**2)", "rule": "tanh"}]
    assert data["counts"]["naive_ops"] > data["counts"]["gradient_scalar_ops_small"]
    r = cli("inspect", "examples/tanh_regression.yaml", "--format", "latex")
    assert r.returncode == 0
    assert r"\overline{a} &= \overline{e} \cdot \left(1 - e^{2}\right)" in r.stdout
    assert r"\overline{W} &= \overline{d} x^{\top}" in r.stdout
    assert r"\overline{q_{1}} &= 2 \cdot \overline{L_{n}} \cdot \left(y - g\right)" in r.stdout
    assert r.stdout.count(r"\begin{align*}") == r.stdout.count(r"\end{align*}") == 2


def test_inspect_bad_spec_exit_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: m\ninputs: {x: [2]}\nloss: sum(q)\n")
    r = cli("inspect", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "bad.yaml" in r.stderr


def test_inspect_counts_grow_linearly_and_the_expansion_faster():
    depths = [2, 4, 8, 16]
    grad, naive = [], []
    for d in depths:
        counts = explain.derive(bpcompile.compile(thin_chain(d))).counts
        grad.append(counts["gradient_scalar_ops_small"])
        naive.append(counts["naive_ops"])
    g_steps = np.diff(grad) / np.diff(depths)
    n_steps = np.diff(naive) / np.diff(depths)
    assert np.allclose(g_steps, g_steps[0])                 # linear in depth
    assert all(b > 1.5 * a for a, b in zip(n_steps, n_steps[1:]))  # the expansion's per-layer cost grows
    assert naive[-1] > 100 * grad[-1]


def test_graph_dot_has_a_node_per_operation(tmp_path):
    r = cli("graph", "examples/tanh_regression.yaml", "-o", str(tmp_path / "g.dot"))
    assert r.returncode == 0, r.stderr
    dot = (tmp_path / "g.dot").read_text()
    labels = re.findall(r'label="([^"\\]*)\\n', dot)
    for name in ["x", "y", "W", "b", "v", "d", "a", "e", "f", "g", "L_n", "L"]:
        assert name in labels, (name, labels)
    nodes = re.findall(r"^  n\d+ \[label", dot, flags=re.M)
    c = bpcompile.compile("examples/tanh_regression.yaml")
    assert len(nodes) == draw.picture_graph(c).number_of_nodes() == 14
    assert 'label="1 - e**2"' in dot          # the adjoint flow carries the local derivative
    assert dot.count("[color=red") == sum(1 for _, _, d in draw.picture_graph(c).edges(data=True) if d["adjoint"])


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_graph_pictures(tmp_path, suffix):
    pytest.importorskip("matplotlib")
    out = tmp_path / f"g{suffix}"
    r = cli("graph", "examples/seed002_network.yaml", "-o", str(out))
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:2000]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_graph_rejects_unknown_format(tmp_path):
    r = cli("graph", "examples/tanh_regression.yaml", "-o", str(tmp_path / "g.gif"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "g.gif").exists()


# -- issue 11: precedence, names after nodes, width, contractions as math -----------

PRECEDENCE_SPEC = """
name: prec
inputs: {x: [3]}
params: {W: [3, 3]}
graph:
  h: exp(-(W @ x)**2)
  k: (W @ x)**2 - (-(W @ x))
loss: sum(h) + sum(k)
"""


def test_inspect_prints_structural_nodes_with_their_precedence():
    # before: "(W @ x)_bar = -(-W @ x)_bar + 2*W @ x*h_bar" and "exp(-W @ x**2)":
    # a structural node was one atomic Symbol("W @ x")
    d = explain.derive(bpcompile.compile(PRECEDENCE_SPEC), naive=False)
    text = explain.as_text(d)
    assert "-W @ x" not in text and "W @ x**2" not in text and "*W @ x" not in text
    forward = {f["lhs"]: f["rhs"] for f in d.forward}
    assert forward["q2"] == "(W @ x)**2" and forward["q3"] == "-(W @ x)**2" and forward["q4"] == "-(W @ x)"
    adjoint = {a["lhs"]: a["rhs"] for a in d.adjoint}
    assert adjoint["q1_bar"] == "-q4_bar + 2*q2_bar*(W @ x)"
    assert adjoint["q2_bar"] == "k_bar - q3_bar"
    tex = explain.as_latex(d)
    assert r"h &= e^{- \left(W x\right)^{2}}" in tex
    assert r"\overline{q_{1}} &= - \overline{q_{4}} + 2 \cdot \overline{q_{2}} \cdot \left(W x\right)" in tex


def test_equation_printers_bracket_by_precedence():
    import sympy as sp
    from bpcompile.ir.equations import call, latex, show
    from bpcompile.ops.notation import MatMul, Outer, T
    W, x, g = sp.symbols("W x g", real=True)
    assert show(-MatMul(W, x) ** 2) == "-(W @ x)**2"
    assert show(sp.exp(-MatMul(W, x) ** 2)) == "exp(-(W @ x)**2)"
    assert show(2 * MatMul(W, x) * g) == "2*g*(W @ x)"
    assert show(MatMul(T(W), g)) == "W^T @ g" and show(Outer(g, T(x))) == "g x^T"
    assert show(T(W + x)) == "(W + x)^T" and show(MatMul(W, MatMul(W, x))) == "W @ (W @ x)"
    assert show(call("sum", (x - g) ** 2)) == "sum((x - g)**2)"
    assert latex(MatMul(T(W), sp.Symbol("z2_bar"))) == r"W^{\top} \overline{z_{2}}"


def test_inspect_names_adjoints_after_their_nodes_on_the_largest_examples():
    # before: "(sum(((z3 - y)**2)))_bar = L_n_bar/2" and 110-column lines
    for path in ["examples/digits_mlp.yaml", "examples/mlp_regression.yaml"]:
        out = cli("inspect", path).stdout
        assert max(len(line) for line in out.splitlines()) <= 100, path
        adjoint = out.split("Adjoint program")[1].split("Shared")[0]
        lhs = [line.split(" = ")[0].strip() for line in adjoint.splitlines()
               if re.match(r"    \S", line) and " = " in line]
        assert all(re.fullmatch(r"[A-Za-z]\w*_bar", name) for name in lhs), lhs
        assert "einsum" not in out and "contract(" not in out and "reduce(" not in out
    out = cli("inspect", "examples/mlp_regression.yaml").stdout
    for line in ["q1 = z3 - y", "q2 = (z3 - y)**2", "q3 = sum((z3 - y)**2)"]:
        assert re.search(rf"^    {re.escape(line)} +shape", out, flags=re.M), line
    for line in ["q3_bar = L_n_bar/2", "q1_bar = 2*q2_bar*(z3 - y)", "z3_bar = q1_bar",
                 "h2_bar = W3^T @ z3_bar", "W3_bar = z3_bar h2^T (summed over the batch)"]:
        assert re.search(rf"^    {re.escape(line)} +# ", out, flags=re.M), line
    digits = cli("inspect", "examples/digits_mlp.yaml").stdout
    assert re.search(r"^    z2_bar = L_n_bar\*\(softmax\(z2\) - onehot\(label\)\) +# softmax", digits, flags=re.M)
    assert re.search(r"^    h1_bar = W2\^T @ z2_bar +# matmul", digits, flags=re.M)
    assert re.search(r"^    t2 = max\(z2\) ", digits, flags=re.M)      # a shared value as math


def test_latex_bars_the_nodes_symbol():
    # before: \overline{(\operatorname{sum}(((z_{3} - y)^{2})))}
    tex = cli("inspect", "examples/mlp_regression.yaml", "--format", "latex").stdout
    assert r"\overline{q_{3}} &= \frac{\overline{L_{n}}}{2}" in tex
    assert r"\overline{z_{2}} &= " in tex and r"\overline{h_{2}} &= W_{3}^{\top} \overline{z_{3}}" in tex
    assert "_bar" not in tex and r"\operatorname{sum}(\left(" not in tex.split("adjoint")[1]


def test_long_equations_wrap_at_100_columns():
    from bpcompile.ir.equations import Equation
    terms = [(f"v{k}*z{k}_bar", "mul") for k in range(20)]
    lines = Equation("h_bar", terms, 0).lines()
    assert len(lines) > 1 and all(len(line) <= 100 for line in lines)
    assert "# sum over consumers (mul x20)" in lines[-1]
    assert " ".join(line.strip() for line in lines).startswith("h_bar = v0*z0_bar + v1*z1_bar")
