"""`bpcompile inspect` and `bpcompile graph` on the examples."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import bpcompile
from bpcompile import draw, explain
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
        ("g_bar = -(y - g)_bar", "sub"),
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
    assert found.index(found[0]) == 0 and found[:5] == sorted(found[:5])  # the order backprop runs
    assert "forward value reused" in out and "e = tanh(b + d)" in out


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
    assert [f["lhs"] for f in data["forward"]] == ["d", "a", "e", "f", "g", "L_n", "L"]
    assert {"lhs": "a_bar", "terms": [{"rhs": "e_bar*(1 - e**2)", "rule": "tanh"}]} in data["adjoint"]
    assert data["counts"]["naive_ops"] > data["counts"]["gradient_scalar_ops_small"]
    r = cli("inspect", "examples/tanh_regression.yaml", "--format", "latex")
    assert r.returncode == 0
    assert r"\bar{a} &= \bar{e} \cdot (1 - e^{2})" in r.stdout
    assert r"\bar{W} &= \bar{d} x^{\top}" in r.stdout
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
