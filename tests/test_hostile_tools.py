"""Hostile input against the tools: equation printing, inspect's naive count,
and the LaTeX, DOT and text outputs (issue 10)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import networkx as nx
import numpy as np
import pytest
import sympy as sp

import bpcompile
from bpcompile.tools import draw
from bpcompile.tools import inspect as explain
from bpcompile.ir.equations import INLINE_LIMIT, Namer, adjoint_equations, forward_equations
from conftest import ROOT


def nested_tanh(depth: int, inner: str = "h", extra: str = "") -> str:
    e = inner
    for _ in range(depth):
        e = f"tanh({e})"
    return (f"name: nest\ninputs:\n  x: []\nparams:\n  w: []\ngraph:\n  h: w * x\n{extra}"
            f"loss: {e}\n")


def deep_mlp(depth: int, width: int = 3) -> str:
    layers = "\n".join(f"  - {{dense: {width}, activation: tanh}}" for _ in range(depth))
    return (f"name: deep\ninputs:\n  x: [{width}]\n  y: []\nlayers:\n  - {{input: x}}\n{layers}\n"
            f"  - {{dense: 1}}\nloss: sum((z{depth + 1} - y)**2)\n")


# -- 1. equation printing is linear in the graph ---------------------------------

def test_thirteen_nested_tanh_compile_and_inspect_quickly():
    # before: over 120 s, in SymPy's assumptions on the printed expressions
    start = time.perf_counter()
    compiled = bpcompile.compile(nested_tanh(13))
    text = explain.render(compiled)
    assert time.perf_counter() - start < 30
    # a long anonymous value is a named sub-result, defined once in the forward program
    forward = text.split("Adjoint program")[0]
    assert re.search(r"^    u1 = tanh\(", forward, flags=re.M)
    adjoint = text.split("Adjoint program")[1].split("Shared")[0]
    assert re.search(r"^    u1_bar = ", adjoint, flags=re.M)
    assert "w_bar = h_bar*x (summed over the batch)" in adjoint


def test_nested_tanh_gradient_is_right_with_sub_results():
    module = bpcompile.compile(nested_tanh(13)).load()
    params = {"w": np.array(0.7)}
    x = np.array([0.3, -1.2, 2.0])
    _, grads = module.value_and_grad(params, x=x)
    h, dh = 0.7 * x, x
    for _ in range(13):
        h = np.tanh(h)
        dh = dh * (1 - h**2)
    assert np.isclose(grads["w"], dh.mean())


@pytest.mark.parametrize("depth", [20, 60])
def test_equation_lines_stay_short_however_deep(depth):
    compiled = bpcompile.compile(nested_tanh(depth))
    namer = Namer(compiled.lowered)
    eqs = adjoint_equations(compiled.lowered, compiled.adjoints, namer)
    assert len(eqs) == depth + 3     # L, L_n, the tanh below L_n, h, w
    # each line holds a bounded number of inline values, whatever the depth
    assert max(len(e.text()) for e in eqs) < 6 * INLINE_LIMIT
    subs = [lhs for lhs, _, _ in forward_equations(compiled.lowered, namer) if re.fullmatch(r"u\d+", lhs)]
    assert len(subs) >= depth // 8
    assert subs == [f"u{k}" for k in range(1, len(subs) + 1)]   # numbered in forward order


def test_equation_printing_time_grows_linearly():
    def seconds(depth):
        compiled = bpcompile.compile(nested_tanh(depth))
        start = time.perf_counter()
        Namer(compiled.lowered).sym(compiled.lowered.loss)
        adjoint_equations(compiled.lowered, compiled.adjoints)
        return time.perf_counter() - start
    seconds(8)   # warm SymPy's caches
    small, big = seconds(15), seconds(60)
    assert big < 12 * small + 1.0, (small, big)     # 4x the depth: not exponential


def test_sub_result_names_avoid_the_specs_names():
    spec = nested_tanh(13, extra="  u1: x + 1\n  u2: x - 1\n")
    compiled = bpcompile.compile(spec)
    forward = [lhs for lhs, _, _ in forward_equations(compiled.lowered, Namer(compiled.lowered))]
    assert forward.count("u1") == forward.count("u2") == 1 and "u3" in forward


# -- 2. inspect's naive count: dynamic programming over the DAG ---------------------

def chain_rule_tree_ops(e, s) -> int | None:
    """The model of naive_derivative_ops, for one symbol, by walking the tree
    (exponential in general: small expressions only).  None: independent of s."""
    if not e.has(s):
        return None
    if e == s:
        return 0
    args = e.args
    size = [sp.count_ops(a, visual=False) if False else _tree_ops(a) for a in args]
    d = [chain_rule_tree_ops(a, s) for a in args]
    one = [a == s for a in args]
    dep = [x is not None for x in d]
    k = sum(dep)
    n = len(args)
    if e.is_Add:
        return sum(x for x in d if x is not None) + k - 1
    if e.is_Mul:
        total = sum(size)
        return k - 1 + sum(d[i] + total - size[i] + n - 1 - one[i] for i in range(n) if dep[i])
    if e.is_Pow and not dep[1]:
        return size[0] + size[1] + 3 + d[0] - one[0]
    if e.is_Pow:
        own = _tree_ops(e)
        out = d[1] + own + size[0] + 3 - one[1]
        if dep[0]:
            out += d[0] + own + size[1] + size[0] + 4 - one[0] + 1
        return out
    out = k - 1
    for i in range(n):
        if dep[i]:
            ops, occ = explain._derivative_template(e.func, n, i)
            out += ops + sum(o * z for o, z in zip(occ, size)) + 1 + d[i] - one[i]
    return out


def _tree_ops(e) -> int:
    if not e.args:
        return 0
    own = len(e.args) - 1 if (e.is_Add or e.is_Mul) else 1
    return own + sum(_tree_ops(a) for a in e.args)


def test_naive_count_dynamic_programming_equals_the_tree_walk():
    a, b, c = sp.symbols("a b c", real=True)
    with sp.evaluate(False):
        h1 = sp.tanh(a * b + c)
        h2 = sp.exp(h1 * a) + h1
        h3 = sp.log(h2 * h2 + sp.Abs(h1 - b)) ** 2
        exprs = [h1, h2, h3, sp.Max(h3, c) / (1 + sp.exp(-h2)), h2 ** h1]
    for e in exprs:
        expected = sum(chain_rule_tree_ops(e, s) or 0 for s in (a, b, c))
        assert explain.naive_derivative_ops(e, [a, b, c])[0] == expected, e


def test_naive_count_is_exact_in_big_integers():
    # x_{k+1} = x_k * x_k: the expanded tree doubles at every level
    x = sp.Symbol("x", real=True)
    e = x
    with sp.evaluate(False):
        for _ in range(200):
            e = sp.Mul(e, e)
    ops, depth = explain.naive_derivative_ops(e, [x])
    assert depth == 200
    # S_k = 2 S_{k-1} + 1 = 2^k - 1 ops in x_k; D_k = 2 (D_{k-1} + S_{k-1} + 1) + 1
    size, d = 1, 1      # x*x: 1 op; its derivative x + x, with no factor 1 written: 1 op
    for _ in range(199):
        d, size = 2 * (d + size + 1) + 1, 2 * size + 1
    assert d > 10**60 and ops == d
    for _ in range(200):   # far past the cap: saturated, said so
        with sp.evaluate(False):
            e = sp.Mul(e, e)
    assert explain.naive_derivative_ops(e, [x])[0] == explain.NAIVE_COUNT_CAP


def test_naive_count_keeps_the_sympy_numbers_of_the_examples():
    for path, ops in [("examples/tanh_regression.yaml", 600), ("examples/deep_thin_chain.yaml", 870),
                      ("examples/seed002_network.yaml", 539)]:
        counts = explain.naive_counts(bpcompile.compile(str(ROOT / path)))
        assert (counts["naive_ops"], counts["naive_method"]) == (ops, "sympy"), path


@pytest.mark.parametrize("depth", [7, 40])
def test_naive_count_of_a_deep_wide_network_is_quick(depth):
    # before: depth 7, width 3 took 97 s; 40 layers never ended
    compiled = bpcompile.compile(deep_mlp(depth))
    start = time.perf_counter()
    counts = explain.naive_counts(compiled)
    assert time.perf_counter() - start < 20
    assert counts["naive_method"] == "dag" and isinstance(counts["naive_ops"], int)
    assert counts["naive_ops"] > 1000 * counts["gradient_scalar_ops_small"]
    if depth == 40:
        assert counts["naive_ops"] > 10**20 and counts.get("naive_exact", True)


def test_naive_count_beyond_the_cap_says_more_than():
    compiled = bpcompile.compile(deep_mlp(200))
    d = explain.derive(compiled)
    assert d.counts["naive_exact"] is False
    text = explain.as_text(d)
    assert "naive expanded derivative   more than 10^100" in text
    json.loads(d.to_json())


def test_naive_expansion_over_its_limit_is_skipped_with_a_message(monkeypatch):
    monkeypatch.setattr(explain, "MAX_NAIVE_EXPANSION_OPS", 10)
    text = explain.render(bpcompile.compile(str(ROOT / "examples/tanh_regression.yaml")))
    line = next(ln for ln in text.splitlines() if "naive expanded derivative" in ln)
    assert "not computed" in line and "MAX_NAIVE_EXPANSION_OPS = 10" in line


def test_naive_count_of_the_thin_chain_grows_faster_than_the_gradient():
    from test_sharing import thin_chain
    counts = explain.naive_counts(bpcompile.compile(thin_chain(64)))
    assert counts["naive_method"] == "dag"
    assert counts["naive_ops"] > 1000 * counts["gradient_scalar_ops_small"]


# -- 3 and 4. the outputs: LaTeX, DOT and text, with hostile text ------------------

PAYLOADS = [
    "\\input{/etc/passwd}", "$\\write18{touch /tmp/pwned}$", "% comment", "a_b^c", "{}}{",
    "#&~", "x\ny", "x\r\\", "\x1b[31mred\x1b[0m", "\u202eevil", '"];\nn9 -> n0 [label="', "\\",
    "tab\there", "caf\u00e9 \U0001f600",
]

LATEX_WORDS = {
    "text", "textbackslash", "textasciicircum", "textasciitilde", "textless", "textgreater", "textbar",
    "textquotedbl", "bar", "overline", "operatorname", "frac", "sum", "mathbb", "in", "times", "cdot",
    "quad", "top", "hat", "sqrt", "tanh", "exp", "log", "sin", "cos", "max", "begin", "end",
    "alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "sigma", "tau", "phi",
    "left", "right",
}


def check_latex(doc: str) -> None:
    """No control word but ours, no raw $ % # ~, balanced braces, one line per row."""
    for line in doc.splitlines():
        if line.startswith("% "):
            body = line[2:]
        elif line.strip() in ("\\begin{align*}", "\\end{align*}"):
            continue
        else:
            body = line
            assert body.endswith(" \\\\"), line     # one row: no line broken by spec text
            body = body[:-3]
            assert len(re.findall(r"(?<!\\)&", body)) in (2, 3), line
        words = set(re.findall(r"\\([A-Za-z]+)", body))
        assert words <= LATEX_WORDS, (words - LATEX_WORDS, line)
        plain = re.sub(r"\\[A-Za-z]+|\\.", "", body)
        assert not re.search(r"[$%#~\\]", plain), line
        depth = 0
        for ch in plain:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0, line
        assert depth == 0, line
        assert all(" " <= ch <= "~" for ch in line), line


def hostile_derivation(payload: str) -> explain.Derivation:
    return explain.Derivation(
        name=payload,
        forward=[{"lhs": "h", "rhs": f"w * x + {payload}", "shape": [3]},
                 {"lhs": payload, "rhs": payload, "shape": []}],
        adjoint=[{"lhs": f"({payload})_bar", "terms": [{"rhs": f"h_bar*({payload})", "rule": payload},
                                                       {"rhs": payload, "rule": "tanh"}]}],
        shared=[{"name": "t0", "expr": payload, "kind": "common subexpression", "used_by": [payload]}],
        counts={"forward_ops": 1, "gradient_ops": 1, "forward_kernels": 1, "gradient_kernels": 1,
                "ratio": 1.0, "naive_ops": None, "naive_note": payload})


@pytest.mark.parametrize("payload", PAYLOADS)
def test_latex_passes_no_spec_text_raw(payload):
    doc = explain.as_latex(hostile_derivation(payload))
    check_latex(doc)
    assert "\\input" not in doc and "\\write" not in doc


@pytest.mark.parametrize("payload", PAYLOADS)
def test_text_output_has_no_control_characters_and_no_extra_lines(payload, monkeypatch):
    monkeypatch.setattr(explain, "COLUMNS", 10**6)    # no wrapping: one entry, one line
    clean = explain.as_text(hostile_derivation("name"))
    text = explain.as_text(hostile_derivation(payload))
    assert len(text.splitlines()) == len(clean.splitlines())
    assert all(ch == "\n" or (ch.isprintable() and ch not in "\u202e\x1b") for ch in text)
    monkeypatch.undo()
    wrapped = explain.as_text(hostile_derivation(payload * 40))    # wrapped at explain.COLUMNS
    assert all(ch == "\n" or (ch.isprintable() and ch not in "\u202e\x1b") for ch in wrapped)


def dot_statements(dot: str) -> list:
    """The statements of a DOT file with its quoted strings taken out (checked to be
    well formed: a quote opens and closes on one line, escapes are \\\\ \\" \\n)."""
    out = []
    for line in dot.splitlines():
        strings = re.findall(r'"((?:[^"\\\n]|\\[\\"n])*)"', line)
        assert all("\n" not in s for s in strings)
        out.append(re.sub(r'"(?:[^"\\\n]|\\[\\"n])*"', "S", line))
    return out


@pytest.mark.parametrize("payload", PAYLOADS)
def test_dot_quotes_every_label(payload):
    P = nx.DiGraph()
    P.add_node(0, label=payload, kind="input", shape="3")
    P.add_node(1, label=f"{payload}\n{payload}", kind="op", shape="scalar")
    P.add_edge(0, 1, adjoint=True, derivative=payload)
    dot = draw.to_dot(payload, P)
    statements = dot_statements(dot)
    allowed = [r"digraph S \{", r"  rankdir=LR;", r"  node \[fontname=S, style=filled\];",
               r"  edge \[fontname=S, fontsize=10\];", r"  n\d+ \[label=S, shape=(box|ellipse), fillcolor=S\];",
               r"  n\d+ -> n\d+;",
               r"  n\d+ -> n\d+ \[color=red, fontcolor=red, style=dashed, constraint=false, label=S\];", r"\}"]
    assert len(statements) == 9      # 4 settings, 2 nodes, 2 edges, the end
    for st in statements:
        assert any(re.fullmatch(p, st) for p in allowed), st
    assert all(" " <= ch <= "~" for ch in dot.replace("\n", ""))


def test_dot_labels_read_back_as_written():
    P = nx.DiGraph()
    P.add_node(0, label='a"b\\c', kind="input", shape="3")
    dot = draw.to_dot("m", P)
    (label,) = re.findall(r'label="((?:[^"\\]|\\.)*)"', dot)
    parts = label.split("\\n")
    assert [re.sub(r"\\(.)", r"\1", p) for p in parts] == ['a"b\\c', "[3]"]


HOSTILE_NAME = 'evil\n"quote\\ \\input{x} $%_{}'


@pytest.fixture
def hostile_spec(tmp_path):
    folder = tmp_path / HOSTILE_NAME
    folder.mkdir()
    path = folder / "spec \\input{passwd}.yaml"
    path.write_text(
        "name: m\n"
        "description: '\\input{/etc/passwd} $x$ % _ { } \\\\'\n"
        "inputs: {x: [3], y: []}\n"
        "params: {w: [3]}\n"
        "graph:\n"
        "  h: \"tanh(w * x)  # \\\\input{/etc/passwd} $ % _ { }\"\n"
        "loss: (sum(h) - y)**2\n")
    return path


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "bpcompile", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


def test_cli_latex_and_dot_of_a_hostile_spec(hostile_spec, tmp_path):
    r = cli("inspect", hostile_spec, "--format", "latex")
    if r.returncode == 2:      # refused as a bad spec: one line, no traceback
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        return
    assert r.returncode == 0, r.stderr
    check_latex(r.stdout)
    assert "\\input" not in r.stdout
    out = tmp_path / "g.dot"
    r = cli("graph", hostile_spec, "-o", out)
    assert r.returncode == 0, r.stderr
    for st in dot_statements(out.read_text()):
        assert "input" not in st and "$" not in st
    r = cli("inspect", hostile_spec)
    assert r.returncode == 0 and "\x1b" not in r.stdout
    assert json.loads(cli("inspect", hostile_spec, "--format", "json").stdout)["name"] == "m"


def test_latex_of_every_example_is_well_formed():
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        check_latex(explain.as_latex(explain.derive(bpcompile.compile(str(path)), naive=False)))


def test_latex_bars_the_symbol_and_sets_other_text_as_text():
    # before: \overline{(\operatorname{sum}(((z_{3} - y)^{2})))}, a regex over the text
    from bpcompile.ir.equations import latex_name
    assert latex_name("z2_bar") == r"\overline{z_{2}}" and latex_name("L_n_bar") == r"\overline{L_{n}}"
    assert latex_name("y_hat") == r"\hat{y}" and latex_name("alpha_bar") == r"\overline{\alpha}"
    assert latex_name("(sum(x))_bar") == r"\text{(sum(x))\_bar}"
    d = hostile_derivation("x")
    d.adjoint[0]["latex"] = "x" * (explain.MAX_LATEX_CHARS + 1)
    doc = explain.as_latex(d)
    check_latex(doc)
    assert r"MAX\_LATEX\_CHARS" in doc and "x" * 1000 not in doc


def _softmax_chain(n):
    lines = ["name: sm", "inputs: {x: [3], y: []}", "params: {w: [3]}", "graph:", "  a0: w * x"]
    lines += [f"  a{i}: softmax(a{i - 1}) * x" for i in range(1, n)]
    return "\n".join(lines + [f"  s: sum(a{n - 1})", "loss: (y - s)**2"]) + "\n"


def test_softmax_interiors_are_found_in_work_linear_in_the_graph():
    """A chain of softmaxes: each function's interior is found by a search bounded by
    the function itself (nx.ancestors walked the whole graph behind each: quadratic)."""
    import networkx as nx

    from bpcompile.ir import equations

    def visits(n):
        compiled = bpcompile.compile(_softmax_chain(n))
        G, count = compiled.lowered.graph, [0]

        class Counting(nx.DiGraph):
            def predecessors(self, v):
                count[0] += 1
                return super().predecessors(v)

            def successors(self, v):
                count[0] += 1
                return super().successors(v)
        g = Counting(G.g)
        for m, (kind, z, label) in G.macros.items():
            got = equations._between(g, z, m)
            assert got == (nx.ancestors(G.g, m) & nx.descendants(G.g, z)) - {z}
        return count[0]
    small, big = visits(10), visits(40)
    assert big < 5 * small, (small, big)    # 4x the chain: linear is 4x, quadratic 16x
