"""The dynamic programming is real: the backward pass of a deep chain grows
linearly with depth (the expanded derivative grows quadratically), identical
subexpressions are one node, and compile time does not grow with layer widths."""

from __future__ import annotations

import numpy as np
import sympy as sp

import bpcompile


def thin_chain(depth: int, activation: str = "sigmoid") -> str:
    params = "\n".join(f"  w{i}: {{shape: [], init: normal(1.0)}}\n  b{i}: []"
                       for i in range(1, depth + 1))
    graph, h = [], "x"
    for i in range(1, depth + 1):
        graph.append(f"  a{i}: w{i} * {h} + b{i}")
        graph.append(f"  h{i}: {activation}(a{i})")
        h = f"h{i}"
    return (f"name: chain{depth}\ninputs:\n  x: []\n  y: []\nparams:\n{params}\n"
            f"graph:\n" + "\n".join(graph) + f"\nloss: (y - {h})**2 / 2\n")


def naive_op_count(depth: int) -> int:
    """Every parameter's derivative as one expanded SymPy expression, no sharing."""
    x, y = sp.symbols("x y")
    w = sp.symbols(f"w1:{depth + 1}")
    b = sp.symbols(f"b1:{depth + 1}")
    h = x
    for i in range(depth):
        h = 1 / (1 + sp.exp(-(w[i] * h + b[i])))
    loss = (y - h) ** 2 / 2
    return sum(sp.count_ops(sp.diff(loss, p)) for p in (*w, *b))


def test_backward_ops_grow_linearly_with_depth():
    depths = [2, 4, 8, 16, 32]
    ops = []
    for d in depths:
        p = bpcompile.compile(thin_chain(d)).programs["value_and_grad"]
        ops.append(p.op_count("backward"))
        # the cheap-gradient principle: a small constant times the forward pass
        assert p.op_count("backward") <= 3 * p.op_count("forward")
    steps = np.diff(ops) / np.diff(depths)
    assert np.allclose(steps, steps[-1]), (depths, ops)   # exactly linear: a fixed cost per layer
    naive = [naive_op_count(d) for d in depths[:3]]
    # the expanded derivative: per-layer cost grows with depth (quadratic total)
    naive_steps = np.diff(naive) / np.diff(depths[:3])
    assert naive_steps[1] > 1.5 * naive_steps[0], naive
    assert naive[-1] > 3 * ops[2]


def test_identical_subexpressions_are_one_node():
    spec = """
name: shared
inputs: {x: [3]}
params: {W: [3, 3]}
graph:
  p: tanh(W @ x)
  q: tanh(W @ x)
loss: sum(p * q)
"""
    c = bpcompile.compile(spec)
    G = c.lowered.graph
    assert c.lowered.named["p"] == c.lowered.named["q"]
    forward = [n for n in G.g.nodes if G.node(n)["op"] == "contract"
               and n <= c.lowered.loss]
    assert len(forward) == 1
    source = c.source
    assert source.count("np.tanh(") == 3  # predict, loss, value_and_grad: once each


def test_forward_values_are_reused_by_the_backward_pass():
    source = bpcompile.compile("examples/tanh_regression.yaml").source
    body = source.split("def value_and_grad")[1].split("def gradient")[0]
    assert body.count("np.tanh(") == 1        # e is computed once ...
    assert "(1 - e**2)" in body               # ... and the tanh rule reads it


def mlp(width: int) -> str:
    return (f"name: mlp{width}\ninputs:\n  x: [{width}]\n  label: {{classes: 10}}\n"
            f"layers:\n  - {{input: x}}\n  - {{dense: {width}, activation: tanh}}\n"
            f"  - {{dense: {width}, activation: relu}}\n  - {{dense: 10}}\n"
            f"loss: softmax_cross_entropy(z3, label)\n")


def test_compiled_work_does_not_depend_on_width():
    """Widths are attributes of tensor nodes, never loops of the compiler: the graph,
    the adjoints and the program are the same at width 4 and 4096 (the compile
    times themselves are measured in benchmarks/bench_compile_width.py)."""
    small, large = bpcompile.compile(mlp(4)), bpcompile.compile(mlp(4096))
    assert small.stats() == large.stats()
    for phase in ("forward", "backward"):
        assert (small.programs["value_and_grad"].op_count(phase)
                == large.programs["value_and_grad"].op_count(phase))
    # the same lines at every width, but for the optimizer steps' gradient store, a fixed
    # block printed once the gradients take 64 KiB (mlp1024 and mlp4096 both have it)
    middle = bpcompile.compile(mlp(1024))
    assert len(middle.source.splitlines()) == len(large.source.splitlines())
    assert 0 <= len(large.source.splitlines()) - len(small.source.splitlines()) <= 40
