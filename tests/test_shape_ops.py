"""Shape ops (issue 12): constant slices, reshape, flatten, concat, stack.

The systematic table (tests/test_systematic.py) checks each against NumPy, finite
differences and verify on every target; here: the canonical key of a slice
against Python's own slicing, the forms the whitelist takes and refuses, one
clear line for every way a shape op can be wrong (through the command line:
exit 2, nothing written), how the equations and the generated code read them,
and that a slice and an index are one op family (v[-1] and v[2] one node).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

import bpcompile
from bpcompile import ops
from bpcompile.cli import main

# -- the key of a slice is Python's slicing, in canonical form -------------------


def _from_text(text: str, length: int) -> list:
    """The entries ``range(length)[text]`` selects, reading key_text's output
    (``2:5``, ``:3``, ``::2``, ``1:4:2``, ``3``) with no eval."""
    if ":" not in text:
        return [range(length)[int(text)]]
    parts = [int(p) if p else None for p in text.split(":")]
    return list(range(length)[slice(*parts)])


BOUNDS = [None, *range(-9, 10)]


@pytest.mark.parametrize("d", [1, 2, 5, 7])
def test_a_slice_key_selects_what_python_selects(d):
    """Every start, stop in [-9, 9] or open and every positive step: the key, its
    shape and its text select what Python selects; an empty slice and a step <= 0
    are the errors the spec gets."""
    for start, stop, step in itertools.product(BOUNDS, BOUNDS, [None, 1, 2, 3, 0, -1]):
        s = slice(start, stop, step)
        want = list(range(d))[s] if step not in (0,) else None
        if step is not None and step <= 0:
            with pytest.raises(bpcompile.SpecError, match="a slice step must be positive"):
                ops.slice_key((d,), [s], lambda: "'v'")
            continue
        if not want:
            with pytest.raises(bpcompile.SpecError, match="a slice out of range: .* is empty"):
                ops.slice_key((d,), [s], lambda: "'v'")
            continue
        key = ops.slice_key((d,), [s], lambda: "'v'")
        assert ops.sliced_shape((d,), key) == ((len(want),) if key else (d,))
        got = list(range(*key[0])) if key else list(range(d))
        assert got == want, (s, key)
        assert _from_text(ops.key_text(key, (d,)), d) == want if key else want == list(range(d))


def test_keys_are_canonical_so_equal_slices_are_one_node():
    shape = (4, 6)
    same = [[slice(None), slice(0, 6, 2)], [slice(0, 4), slice(None, None, 2)], [slice(-4, 9), slice(0, 5, 2)]]
    keys = {ops.slice_key(shape, items, str) for items in same}
    assert keys == {((0, 4, 1), (0, 5, 2))}
    assert ops.slice_key(shape, [slice(None), slice(None)], str) == ()      # X[:, :] is X
    assert ops.slice_key(shape, [-1], str) == (3,)
    assert ops.slice_key(shape, [slice(2, 3, 5)], str) == ops.slice_key(shape, [slice(2, 3)], str) == ((2, 3, 1),)
    assert ops.key_text(((0, 4, 1), (0, 5, 2)), shape) == ":, ::2"
    assert ops.key_text(((1, 4, 2),), (6,)) == "1:4:2"                         # the stop is needed
    c = bpcompile.compile(SPEC.format(expr="v[-1] * v[2] + sum(X[:, 1:] * X[0:3, -2:])"))
    G = c.lowered.graph
    slices = [n for n in G.g.nodes if G.node(n)["op"] == "slice" and n < c.lowered.forward_nodes]
    assert len(slices) == 2, [G.node(n)["attrs"] for n in slices]   # v[-1] is v[2]; X[:, 1:] is X[0:3, -2:]


# -- the whitelist ------------------------------------------------------------------

SPEC = """\
name: m
inputs:
  x: [6]
  X: [3, 3]
  c: {{classes: 3}}
params:
  v: [3]
  w: [6]
  M: [4, 2]
graph:
  h: {expr}
loss: sum(h) + sum(w * x) + sum(v)
"""


@pytest.mark.parametrize("expr", [
    "x[2:5]", "x[-3:]", "x[::2]", "x[1::2]", "x[:]", "x[:, ]", "x[0:100]", "x[-100:2]", "X[:, 0:3]", "X[1:, :2]",
    "X[0, 1:3]", "X[-1, ::1]", "X[1]", "X[0, 0]", "X[:, 0]", "X[::2, ::2]",
])
def test_slices_the_language_takes(expr):
    c = bpcompile.compile(SPEC.format(expr=expr))
    m = c.load()
    rng = np.random.default_rng(0)
    x, X = rng.standard_normal((2, 6)), rng.standard_normal((2, 3, 3))
    params = m.init_params()
    items = expr[expr.index("[") + 1:-1]
    index = tuple(slice(*[int(p) if p.strip() else None for p in i.split(":")]) if ":" in i else int(i)
                  for i in items.split(",") if i.strip())
    want = (x if expr[0] == "x" else X)[(slice(None), *index)]
    got = m.predict(params, x=x, X=X, c=np.zeros(2, int))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("expr", [
    "x[1+1:3]", "x[0:2**63]", "x[...]", "x[None]", "x[:, None]", "x[1.5:]", "x[True:]",
    "x[()]", "x[0:3:+1]", "x[len(x):]", "x[0, 0, 0, 0, 0]", "x[[0, 1]]", "x[{0}]",
])
def test_the_whitelist_refuses_other_indices(expr):
    with pytest.raises(bpcompile.SpecError) as e:
        bpcompile.parse_spec(SPEC.format(expr=expr))
    message = str(e.value)
    assert "\n" not in message and "graph.h" in message
    assert "indexing takes integer constants and slices of them" in message or "too large" in message, message


# -- one clear line for each way a shape op can be wrong -------------------------------

BAD = {
    # expression: words the message must contain
    "x[6:9]": ["a slice out of range: [6:9] of 'x' of shape [6] is empty"],
    "X[1:1, :]": ["a slice out of range: [1:1] of 'X'"],
    "x[::0]": ["a slice step must be positive: [::0] of 'x' has step 0"],
    "x[::-1]": ["a slice step must be positive", "step -1"],
    "x[6]": ["index 6 is out of range for 'x' of shape [6]"],
    "X[0, 1, 2]": ["too many indices: 3 for 'X' of shape [3, 3]"],
    "sum(x)[0:1]": ["cannot index 'sum(x)': it is a scalar"],
    "c[0:2]": ["'c' is an integer class label"],
    "reshape(x, [4])": ["reshape() cannot make 'x' of shape [6] (6 entries) into [4] (4 entries)"],
    "reshape(x, [4, -1])": ["reshape() cannot make 'x'", "6 is not a multiple of 4"],
    "reshape(x, [-1, -1])": ["at most one -1"],
    "reshape(x, [0, 6])": ["sizes of at least 1"],
    "reshape(x, w)": ["argument 2 of reshape() must be a list of at most 4 integer constants"],
    "reshape(x, [2, w])": ["a shape holds integer constants"],
    "reshape(x, [1, 1, 1, 2, 3])": ["at most 4 integer constants"],
    "reshape(x)": ["reshape() takes 2 arguments, got 1"],
    "flatten(x, x)": ["flatten() takes 1 argument, got 2"],
    "concat()": ["concat() takes 1 or more arguments, got 0"],
    "concat(x, X)": ["concat() needs arrays of one rank: x has shape [6] and X has shape [3, 3]"],
    "concat(X, M, axis=1)": ["concat() along axis 1 needs shapes equal on every other axis",
                             "X has shape [3, 3] and M has shape [4, 2]"],
    "concat(x, x, axis=1)": ["axis 1 is out of range for concat() of shapes [6], [6]"],
    "concat(x, v, axis=w)": ["axis must be an integer constant"],
    "concat(sum(x), v)": ["concat() joins arrays along an axis, but 'sum(x)' is a scalar"],
    "concat(x, c)": ["'c' is an integer class label"],
    "concat(x, x, stride=2)": ["concat() takes no stride= (it takes axis=)"],
    "stack(x, v)": ["stack() needs arrays of one shape: x has shape [6] and v has shape [3]"],
    "stack(X, X, axis=3)": ["axis 3 is out of range for stack()"],
    "stack(reshape(x, [1, 1, 2, 3]), reshape(x, [1, 1, 2, 3]))": ["stack() would make an array of 5 axes"],
}


@pytest.mark.parametrize("expr", list(BAD))
def test_a_bad_shape_op_is_one_line_and_nothing_is_written(expr, tmp_path, capsys, monkeypatch):
    (tmp_path / "bad.yaml").write_text(SPEC.format(expr=expr))
    monkeypatch.chdir(tmp_path)
    code = main(["compile", "bad.yaml", "-o", "out"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: bad.yaml:11: graph.h: "), lines[0]   # file, line and key
    for words in BAD[expr]:
        assert words in lines[0], (expr, lines[0])
    assert not (tmp_path / "out").exists()


# -- how they read --------------------------------------------------------------------

READS = """\
name: reads
inputs:
  x: [6]
  X: [3, 4]
params:
  v: [6]
  W: [3, 2]
graph:
  h: tanh(v[2:5] * x[-3:])
  c: concat(h, v[::2])
  E: concat(X[:, 0:2], W, axis=1)
  S: stack(h, h * 2)
loss: sum(c * c) + sum(flatten(E)) + sum(reshape(X, [2, -1])[1]) + sum(S)
"""


def test_the_equations_say_where_the_adjoint_goes():
    from bpcompile.tools import inspect as explain
    c = bpcompile.compile(READS)
    text = explain.as_text(explain.derive(c, naive=False))
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "q1 = v[2:5] shape [3]" in lines, text                     # a slice reads as NumPy writes it
    assert "h = tanh(v[2:5] * x[-3:]) shape [3]" in lines               # a named node as the spec writes it
    assert any(line.startswith("h_bar = ") and "c_bar[:3]" in line and line.endswith("(reshape, mul, concat)")
               for line in lines), text                                   # concat's adjoint: a slice of c_bar
    assert "q6_bar = S_bar[1:] # stack" in lines, text
    assert any("at [::2] (zero elsewhere)" in line and "at [2:5] (zero elsewhere)" in line for line in lines), text
    assert any(line.startswith("W_bar = E_bar[:, 2:] (summed over the batch)") for line in lines), text
    assert "q8 = reshape(E, [12]) shape [12]" in lines, text          # a reshape that moves entries says so


def test_the_generated_numpy_slices_and_concatenates_at_tensor_level():
    source = bpcompile.compile(READS).source
    assert "v[2:5]" in source and "x[:, 3:]" in source and "v[::2]" in source
    assert "np.concatenate([h, np.broadcast_to(v[::2], (N, 3))], axis=1)" in source
    assert "np.concatenate([X[:, :, :2], np.broadcast_to(W, (N, 3, 2))], axis=2)" in source
    body = source.split("def value_and_grad")[1].split("\ndef ")[0]
    assert not re.search(r"^\s*(for|while) ", body, re.M)            # no Python loop


@pytest.mark.parametrize("target", ["c", "cuda"])
def test_the_c_like_kernels_say_what_they_copy(target):
    text = bpcompile.compile(READS, target=target).source
    assert "// c[:3] = h" in text and "// c[3:] = t" in text, text           # concat: each part in its place
    assert "= zeros [6] with [::2] =" in text or "= zeros [6] with [2:5] =" in text   # unslice
    assert "= v[2:5]" in text                                             # slice


def test_the_picture_draws_slices_and_concat():
    from bpcompile.tools import draw
    P = draw.picture_graph(bpcompile.compile(READS))
    labels = {P.nodes[n]["label"].split("\n")[0] for n in P.nodes}
    assert {"v[2:5]", "x[3:]", "v[::2]", "X[:, :2]"} <= labels, labels
    derivatives = {e["derivative"] for _, _, e in P.edges(data=True)}
    assert {"at [2:5]", "·[:3]"} <= derivatives, derivatives
    assert "reshape(X, [2, 6])[1]" in labels, labels                   # a reshape that moves entries says so


# -- the adjoint of many slices of one array: one array, not one per slice ------------

STEPS = """\
name: steps
inputs:
  e: [6, 3]
params:
  U: [3, 3]
  v: [6]
graph:
  h0: tanh(U @ e[0])
  h1: tanh(U @ h0 + e[1])
  h2: tanh(U @ h1 + e[2] + e[2] * h0)
  r: sin(v[3:5])
loss: sum(h2 * h2) + sum(e[4:6] * e[4:6]) + sum(r) + v[0] * v[4]
wrt: [U, v, e]
"""


def test_the_adjoints_of_slices_are_joined_into_one_array():
    """e_bar from e[0], e[1], e[2] (twice), e[4:6]: one concatenate of the parts with
    zeros only in the gap at [3], instead of a zero-filled [N, 6, 3] per consumer
    (quadratic in an unrolled sequence's length); v's overlapping runs [3:5] and
    [4] stay a plain sum.  The gradient is checked against finite differences."""
    c = bpcompile.compile(STEPS)
    body = c.source.split("def value_and_grad")[1].split("\ndef ")[0]
    assert body.count("np.zeros((N, 6, 3)") == 0, body
    assert len(re.findall(r"e_bar = np\.concatenate\(\[", body)) == 1, body
    assert "np.zeros((N, 1, 3), DTYPE)" in body, body          # the gap at [3]
    module = c.load()
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(v.shape) * 0.5 for k, v in module.init_params(seed=0).items()}
    e = rng.standard_normal((4, 6, 3))
    _, grads = module.value_and_grad(params, e=e)
    h = 1e-6
    for name, point in [("U", params["U"]), ("v", params["v"]), ("e", e)]:
        fd = np.zeros_like(point)
        for i in np.ndindex(point.shape):
            old = point[i]
            point[i] = old + h
            up = module.loss(params, e=e)
            point[i] = old - h
            down = module.loss(params, e=e)
            point[i] = old
            fd[i] = (up - down) / (2 * h)
        assert np.allclose(grads[name], fd, rtol=1e-6, atol=1e-8), name
