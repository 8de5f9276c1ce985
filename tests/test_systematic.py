"""One row per op of the spec language, checked on every target.

In the manner of JAX's ``LAX_GRAD_OPS`` and autograd's ``test_systematic``: each
op of the spec language has a row (a small spec whose loss depends on its params
through the op, the domain its argument must stay in, and a NumPy reference of
the whole spec written here, independently of bpcompile), and every row is run
on every target through three checks:

* value: ``predict`` and ``loss`` equal the NumPy reference (float64, 1e-12);
* gradient: ``value_and_grad`` equals central finite differences of the
  module's own ``loss`` (1e-6), and on the CUDA target (built for the host with
  g++ and the emulation header, BPCOMPILE_CUDA_EMULATE=1) the NumPy module's
  gradient too (1e-12);
* ``bpcompile.verify(spec).ok`` (target-independent: run with the numpy rows).

``test_every_op_has_a_row`` keeps the table complete: the set of rows must equal
the set of ops the compiler registers (``ops.FUNCTIONS``, the binary operators
of ``ops.BINARY`` by rule name, and ``OPERATOR_FORMS``), so an op added to the
compiler without a row fails the suite, naming it.

Points: params and float inputs are drawn per row's domain ("real": normal;
"positive": every param in [0.2, 0.8] and every input in [0.5, 1.5], so that
``W @ x + b`` lies in about [0.5, 4.4]).  Rows with a kink (relu, abs, max, ...)
name the quantities that must stay away from it, and the point is drawn again
until each is at least KINK_MARGIN away (and, for elementwise kinks, lies on
both sides of it somewhere in the batch), far beyond what the finite-difference
steps move it.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import math
import os
import re
import shutil
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from conftest import finite_differences, rel_error

import bpcompile
from bpcompile.targets.cuda import EMULATION_HEADER
import bpcompile.ops

# The operator forms of the spec language that are neither functions nor binary
# arithmetic (graph.py's _Lowering.visit / binop / subscript), each with the
# syntax its row must use.  The one place they are listed.
OPERATOR_FORMS = {
    "@": r"@",               # matrix/vector products (binop, ast.MatMult)
    ".T": r"\.T\b",          # transpose (ast.Attribute)
    "index": r"\w\[-?\d+\]",  # indexing by an integer constant (ast.Subscript)
    "slice": r"\w\[[^\]]*:",   # slicing by constant ranges, v[2:5], X[:, 0:3] (ast.Subscript, ast.Slice)
    "gather": r"\w\[[A-Za-z_]\w*\]",  # rows picked by an integer input, E[tokens] (ast.Subscript)
    "neg": r"(^|[^\w\])])-\s*[\w(]",  # unary minus (ast.UnaryOp)
}

TARGETS = bpcompile.targets.names()   # every registered target: a new one joins the table
N = 3                  # examples per batch
VALUE_RTOL = 1e-12     # module against the NumPy reference
GRAD_RTOL = 1e-6       # gradient against finite differences
CUDA_RTOL = 1e-12      # CUDA (emulated) gradient against the NumPy module's
KINK_MARGIN = 0.1      # distance from a kink a drawn point keeps


def binary_ops():
    """Row name of each binary operator: its rule name ('add', 'sub', ...)."""
    return {rule for _, rule in bpcompile.ops.BINARY.values()}


def registered_ops():
    """Every op the compiler registers, under the names the rows use."""
    return set(bpcompile.ops.FUNCTIONS) | binary_ops() | set(OPERATOR_FORMS)


# ---------------------------------------------------------------------------
# NumPy references (independent of bpcompile)

erf = np.vectorize(math.erf, otypes=[float])


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softplus(z):
    return np.logaddexp(0.0, z)


def logsumexp(z):
    m = np.max(z, axis=-1, keepdims=True)
    return (m + np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True)))[..., 0]


def softmax(z):
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def log_softmax(z):
    return z - logsumexp(z)[..., None]


def leaky_relu(z, slope=0.01):
    return np.where(z > 0, z, slope * z)


def elu(z, alpha=1.0):
    return np.where(z > 0, z, alpha * np.expm1(z))


def gelu(z):
    return 0.5 * z * (1 + erf(z / math.sqrt(2)))


def top_gap(a, axis=None):
    """Largest minus second largest entry (along ``axis``): a max's distance from a tie."""
    s = np.sort(np.ravel(a) if axis is None else np.moveaxis(a, axis, -1), axis=-1)
    return s[..., -1] - s[..., -2]


# ---------------------------------------------------------------------------
# The rows


@dataclass(frozen=True)
class Row:
    """spec: the YAML of a spec without its name; ref(P, I) -> (output, loss) for
    one example (P the params, I one example's inputs); domain: "real" or
    "positive"; kinks(P, I): signed distances from the kinks, each must be at
    least KINK_MARGIN in size (two_sided: and of both signs across the batch)."""

    spec: str
    ref: Callable
    domain: str = "real"
    kinks: Callable | None = None
    two_sided: bool = False


ELEMENTWISE_SPEC = """\
inputs:
  x: [3]
  u: [3]
params:
  W: [3, 3]
  b: [3]
graph:
  z: W @ x + b
  h: {call}
loss: sum(u * h)
wrt: [W, b, x]
output: h
"""


def _z(P, I):
    return P["W"] @ I["x"] + P["b"]


def elementwise(op, fn, domain="real", kink=False):
    """h = op(W @ x + b), loss sum(u * h)."""
    def ref(P, I):
        h = fn(_z(P, I))
        return h, np.sum(I["u"] * h)
    return Row(ELEMENTWISE_SPEC.format(call=f"{op}(z)"), ref, domain,
               kinks=_z if kink else None, two_sided=kink)


def elementwise_with_parameter(op, fn, value):
    """h = op(z), h2 = op(z, value): the default and a given second argument."""
    spec = ELEMENTWISE_SPEC.format(call=f"{op}(z)\n  h2: {op}(z, {value})").replace(
        "loss: sum(u * h)", "loss: sum(u * h) + sum(h2 * h2)")

    def ref(P, I):
        z = _z(P, I)
        h, h2 = fn(z), fn(z, value)
        return h, np.sum(I["u"] * h) + np.sum(h2 * h2)
    return Row(spec, ref, kinks=_z, two_sided=True)


BINARY_SPEC = """\
inputs:
  x: [3]
  u: [3]
params:
  A: [3, 3]
  B: [3, 3]
  s: []
graph:
  a: A @ x
  c: B @ x
  h: a {op} c
  k: a {op} s
  m: s {op} c
  n: a {op} {rconst}
  q: {lconst} {op} c
loss: sum(u * h) + sum(u * u * k) + sum(x * m) + sum(u * x * n) + sum(q)
wrt: [A, B, s, x]
output: h
"""


def binary(op, fn, domain="real", lconst="2", rconst="1.5"):
    """Tensor op tensor, tensor op scalar param, scalar op tensor, and number literals
    on either side."""
    def ref(P, I):
        a, c, s = P["A"] @ I["x"], P["B"] @ I["x"], P["s"]
        u = I["u"]
        h = fn(a, c)
        x = I["x"]
        weights = [u, u * u, x, u * x, 1.0]   # distinct, so that no derivative cancels
        terms = [h, fn(a, s), fn(s, c), fn(a, float(rconst)), fn(float(lconst), c)]
        return h, sum(np.sum(w * t) for w, t in zip(weights, terms))
    return Row(BINARY_SPEC.format(op=op, lconst=lconst, rconst=rconst), ref, domain)


EXTREMUM_SPEC = """\
inputs:
  x: [3]
  u: [3]
params:
  A: [3, 3]
  B: [3, 3]
  V: [2, 3]
  s: []
graph:
  a: A @ x
  c: B @ x
  h: {f}(a, c)
  k: {f}(a, s)
  m: {f}(0.25, c)
  n: {f}(V * x, a)
loss: sum(u * h) + sum(x * k) + sum(u * u * m) + sum(n * n)
wrt: [A, B, V, s, x]
output: h
"""


def extremum(f, fn):
    """maximum/minimum of two tensors, of a tensor and a scalar param, of a number
    and a tensor, and of a [2, 3] and a [3] that broadcast; the point keeps every
    pair KINK_MARGIN from a tie, with each side ahead somewhere."""
    def ref(P, I):
        x, u, s = I["x"], I["u"], P["s"]
        a, c, Vx = P["A"] @ x, P["B"] @ x, P["V"] * x
        h = fn(a, c)
        n = fn(Vx, a)
        return h, np.sum(u * h) + np.sum(x * fn(a, s)) + np.sum(u * u * fn(0.25, c)) + np.sum(n * n)

    def kinks(P, I):
        x = I["x"]
        a, c, Vx = P["A"] @ x, P["B"] @ x, P["V"] * x
        return np.concatenate([a - c, a - P["s"], 0.25 - c, np.ravel(Vx - a)])
    return Row(EXTREMUM_SPEC.format(f=f), ref, kinks=kinks, two_sided=True)


CLIP_SPEC = """\
inputs:
  x: [3]
  u: [3]
params:
  W: [3, 3]
  b: [3]
  s: []
graph:
  z: W @ x + b
  h: clip(z, -0.25, 0.5)
  h2: clip(s * z, -sqrt(2)/4, 1/4)
loss: sum(u * h) + sum(h2 * h2)
wrt: [W, b, s, x]
output: h
"""


def _clip_ref(P, I):
    z = P["W"] @ I["x"] + P["b"]
    h = np.minimum(np.maximum(z, -0.25), 0.5)
    h2 = np.minimum(np.maximum(P["s"] * z, -math.sqrt(2) / 4), 0.25)
    return h, np.sum(I["u"] * h) + np.sum(h2 * h2)


def _clip_kinks(P, I):
    z = P["W"] @ I["x"] + P["b"]
    sz = P["s"] * z
    return np.concatenate([z + 0.25, z - 0.5, sz + math.sqrt(2) / 4, sz - 0.25])


REDUCTION_SPEC = """\
inputs:
  x: [3]
  u: [2]
params:
  W: [2, 3]
  v: [3]
graph:
  M: W * x
  s0: {f}(M)
  s1: {f}(M, axis=0)
  s2: {f}(M, axis=1)
  s3: {f}(M, axis=-1)
  s4: {f}(v * x)
loss: s0 * s0 + sum(x * s1) + sum(u * s2) + sum(u * u * s3) + s4
wrt: [W, v, x]
output: s1
"""


def reduction(f, fn, kink=False):
    """f over every axis, over each axis (axis=k, axis=-1), and of a vector."""
    def ref(P, I):
        x, u = I["x"], I["u"]
        M = P["W"] * x
        s1 = fn(M, axis=0)
        loss = fn(M) ** 2 + np.sum(x * s1) + np.sum(u * fn(M, axis=1)) + np.sum(u * u * fn(M, axis=-1)) \
            + fn(P["v"] * x)
        return s1, loss

    def kinks(P, I):
        M = P["W"] * I["x"]
        return np.concatenate([[top_gap(M)], top_gap(M, 0), top_gap(M, 1), [top_gap(P["v"] * I["x"])]])
    return Row(REDUCTION_SPEC.format(f=f), ref, kinks=kinks if kink else None)


SOFTMAX_SPEC = """\
inputs:
  x: [3]
  u: [3]
params:
  W: [3, 3]
  b: [3]
  V: [2, 3]
graph:
  z: W @ x + b
  p: {f}(z)
  P: {f}(V * x)
loss: sum(u * p) + sum(P * P)
wrt: [W, b, V, x]
output: p
"""


def last_axis(f, fn):
    """f of a vector and of each row of a matrix."""
    def ref(P, I):
        x, u = I["x"], I["u"]
        p = fn(P["W"] @ x + P["b"])
        Q = fn(P["V"] * x)
        return p, np.sum(u * p) + np.sum(Q * Q)
    return Row(SOFTMAX_SPEC.format(f=f), ref)


def _matmul_ref(P, I):
    W, v, V, x, X, u = P["W"], P["v"], P["V"], I["x"], I["X"], I["u"]
    a = W @ x
    c = v @ W
    M = W @ X
    Nm = M @ V
    d = x @ c
    return a, np.sum(u * a) + d * d + np.sum(Nm * M)


def _transpose_ref(P, I):
    W, v, x, X = P["W"], P["v"], I["x"], I["X"]
    E = W.T * X.T
    c = W.T @ v
    Y = X.T @ W
    return E, np.sum(E * E) + np.sum(c * x) + np.sum(Y)


def _index_ref(P, I):
    W, v, x = P["W"], P["v"], I["x"]
    a = W @ x
    h = a[0] * a[-1] + v[1]
    r = W[1]
    return h, h * h + np.sum(r * x) + x[2] + v[-2] * a[1]


def _slice_ref(P, I):
    W, v, M, x, X = P["W"], P["v"], P["M"], I["x"], I["X"]
    a = W @ x
    b = a[1:3] * v[-2:]
    c = X[:, 0:3] * M[:, 1:]
    d = X[1:, :2] + M[0, 1:3]
    e = v[::2] * x[2:5]
    f = x[3:100] * a[:-1]
    loss = np.sum(b * b) + np.sum(c * c) + np.sum(d * np.tanh(d)) + np.sum(e) + np.sum(f * f) \
        + np.sum(M[1:, ::3] * X[:2, 1::2])
    return c, loss


def _reshape_ref(P, I):
    W, V, x, X = P["W"], P["V"], I["x"], I["X"]
    A = np.reshape(W @ x, (2, 3))
    B = np.reshape(A * X, (3, 2))
    h = np.tanh(B) * V
    return h, np.sum(h * h) + np.sum(np.reshape(X, (6,)) * np.reshape(V, (6,))) + np.sum(np.reshape(W, (4, 9))[1])


def _flatten_ref(P, I):
    W, v, s, x, X = P["W"], P["v"], P["s"], I["x"], I["X"]
    h = np.tanh(np.ravel(X * W)) * v + np.ravel(s)
    return h, np.sum(h * x) + np.sum(np.ravel(W) ** 2)


def _concat_ref(P, I):
    W, v, M, x, X = P["W"], P["v"], P["M"], I["x"], I["X"]
    c = np.concatenate([W @ x, v, x])
    D = np.concatenate([X, W], axis=0)
    E = np.concatenate([X, M], axis=-1)
    F = np.concatenate([c, c])
    return c, np.sum(np.tanh(F) * P["r"]) + np.sum(D * D) + np.sum(E * np.tanh(E))


def _stack_ref(P, I):
    W, v, s, x, X = P["W"], P["v"], P["s"], I["x"], I["X"]
    a = W @ x
    S = np.stack([a, v], axis=0)
    T = np.stack([a, v, a], axis=-1)
    u = np.stack([s, np.sum(x)])
    return S, np.sum(S * S * X[:, :2]) + np.sum(np.tanh(T) * X) + np.sum(u * u)


def _gather_ref(P, I):
    E, F, G, W, x = P["E"], P["F"], P["G"], P["W"], I["x"]
    tokens, words, c = I["tokens"], I["words"], I["c"]
    e, f, g = E[tokens], F[words], G[tokens]
    B = W * x
    b, r, q = B[tokens], B[c], E[c]
    o = np.eye(3)[tokens]
    h = np.tanh(e @ q + g)
    loss = (np.sum(h * h) + 0.5 * np.sum(f * f) + np.sum(b * b) + np.dot(r, x) + np.sum(o @ G)
            + np.sum(e[1] * e[3]))
    return h, loss


def _neg_ref(P, I):
    W, s, x, u = P["W"], P["s"], I["x"], I["u"]
    a = -(W @ x)
    h = a * -s + -x
    return h, np.sum(u * h) - np.sum(-(h * h))


def _onehot_ref(P, I):
    z = P["W"] @ I["x"] + P["b"]
    e = np.eye(3)[I["label"]]
    return e, np.sum(e * z) + np.sum(e * z * z)


def _dot_ref(P, I):
    x, v = I["x"], P["v"]
    d = np.dot(P["W"] @ x, v)
    return d, d * d + np.dot(v, x) + np.dot(x, x)


def _cross_entropy_ref(P, I):
    x, k = I["x"], I["label"]
    p = sigmoid(P["W"] @ x + P["b"])
    q = softmax(P["V"] @ x)
    ce = -np.log(p[k])
    return ce, ce + -np.log(q[k])


def _softmax_cross_entropy_ref(P, I):
    z = P["W"] @ I["x"] + P["b"]
    ce = logsumexp(z) - z[I["label"]]
    return ce, ce * (1 + I["w"])


# -- convolutions and pooling: references written from PyTorch's definitions, one
# output position at a time (a cross-correlation; zero padding; 'same' pads the
# kernel's size less one, the odd one after; windows that do not fit are dropped)

def _pads(k, padding):
    if padding == "same":
        return ((k - 1) // 2, k - 1 - (k - 1) // 2)
    if padding == "valid":
        return (0, 0)
    return (padding, padding)


def conv_ref(x, w, stride=1, padding=0):
    """conv1d / conv2d of one example: x [C, *S], w [O, C, *K] -> [O, *P]."""
    kernel = w.shape[2:]
    xp = np.pad(x, [(0, 0)] + [_pads(k, padding) for k in kernel])
    positions = [(s - k) // stride + 1 for s, k in zip(xp.shape[1:], kernel)]
    out = np.zeros((w.shape[0], *positions))
    for p in np.ndindex(*positions):
        window = xp[(slice(None), *(slice(i * stride, i * stride + k) for i, k in zip(p, kernel)))]
        out[(slice(None), *p)] = np.tensordot(w, window, axes=len(kernel) + 1)
    return out


def pool_windows(x, k, stride=None):
    """The k x k windows of x [C, H, W] moved by stride (default k): [C, P, Q, k*k]."""
    stride = stride or k
    P, Q = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    return np.array([[[x[c, i * stride:i * stride + k, j * stride:j * stride + k].ravel() for j in range(Q)]
                      for i in range(P)] for c in range(x.shape[0])])


def _conv2d_ref(P, I):
    x, W, V, b = I["x"], P["W"], P["V"], P["b"]
    z0 = conv_ref(x, W) + b
    z1, z2 = conv_ref(x, W, 2), conv_ref(x, W, padding=1)
    z3, z4 = conv_ref(x, W, padding="same"), conv_ref(x, W, 2, 1)
    h = conv_ref(np.tanh(z0), V)
    return z4, np.sum(z1 * z1) + np.sum(np.sin(z2)) + np.sum(z3 * z3) + np.sum(np.cos(z4)) + np.sum(h * h)


def _conv1d_ref(P, I):
    s, K, c, Q = I["s"], P["K"], P["c"], P["Q"]
    y0 = conv_ref(s, K) + c
    y1, y2 = conv_ref(s, K, 2, 1), conv_ref(s, K, padding="same")
    y3 = conv_ref(np.tanh(y2), Q, padding="valid")
    return y1, np.sum(y0 * y0) + np.sum(np.sin(y1)) + np.sum(np.cos(y2)) + np.sum(y3 * y3)


def _max_pool_a(P, I):
    return 10 * (P["W"] * I["x"])


def _max_pool2d_ref(P, I):
    a = _max_pool_a(P, I)
    p0, p1 = pool_windows(a, 2).max(-1), pool_windows(a, 3, 1).max(-1)
    p2 = pool_windows(-a, 3).max(-1)
    return p1, np.sum(p0 * p0) / 100 + np.sum(np.sin(p1)) + np.sum(p2)


def _max_pool2d_kinks(P, I):
    """Each window's largest entry minus its second largest: a max's distance from a tie."""
    a = _max_pool_a(P, I)
    return np.concatenate([top_gap(w, -1).ravel() for w in
                           (pool_windows(a, 2), pool_windows(a, 3, 1), pool_windows(-a, 3))])


def _avg_pool2d_ref(P, I):
    a = P["W"] * I["x"]
    p0, p1 = pool_windows(a, 2).mean(-1), pool_windows(a, 3, 2).mean(-1)
    p2 = pool_windows(np.tanh(a), 2, 1).mean(-1)
    return p1, np.sum(p0 * p0) + np.sum(np.sin(p1)) + np.sum(p2 * p2)


LABEL_SPEC = """\
inputs:
  x: [3]
  label: {{classes: 3}}
{inputs}params:
  W: [3, 3]
  b: [3]
{params}graph:
{graph}loss: {loss}
wrt: [{wrt}]
output: {output}
"""


ROWS = {
    # elementwise (ops.ELEMENTWISE)
    "tanh": elementwise("tanh", np.tanh),
    "sigmoid": elementwise("sigmoid", sigmoid),
    "relu": elementwise("relu", lambda z: np.maximum(z, 0.0), kink=True),
    "exp": elementwise("exp", np.exp),
    "log": elementwise("log", np.log, domain="positive"),
    "sin": elementwise("sin", np.sin),
    "cos": elementwise("cos", np.cos),
    "sqrt": elementwise("sqrt", np.sqrt, domain="positive"),
    "abs": elementwise("abs", np.abs, kink=True),
    "softplus": elementwise("softplus", softplus),
    "square": elementwise("square", np.square),
    # binary operators (ops.BINARY), by rule name
    "add": binary("+", np.add),
    "sub": binary("-", np.subtract),
    "mul": binary("*", np.multiply),
    "div": binary("/", np.divide, domain="positive"),
    "pow": binary("**", np.power, domain="positive", rconst="-1.5"),
    # operator forms (OPERATOR_FORMS)
    "@": Row("""\
inputs:
  x: [3]
  X: [3, 2]
  u: [2]
params:
  W: [2, 3]
  v: [2]
  V: [2, 2]
graph:
  a: W @ x
  c: v @ W
  M: W @ X
  Nm: M @ V
  d: x @ c
loss: sum(u * a) + d * d + sum(Nm * M)
wrt: [W, v, V, x, X]
output: a
""", _matmul_ref),
    ".T": Row("""\
inputs:
  x: [3]
  X: [2, 3]
params:
  W: [2, 3]
  v: [2]
graph:
  Wt: W.T
  E: Wt * X.T
  c: W.T @ v
  d: x.T
  Y: X.T @ W
loss: sum(E * E) + sum(c * d) + sum(Y)
wrt: [W, v, x, X]
output: E
""", _transpose_ref),
    "index": Row("""\
inputs:
  x: [3]
params:
  W: [2, 3]
  v: [3]
graph:
  a: W @ x
  h: a[0] * a[-1] + v[1]
  r: W[1]
loss: h * h + sum(r * x) + x[2] + v[-2] * a[1]
wrt: [W, v, x]
output: h
""", _index_ref),
    # tables of V = 3 (NumPy's adjoint: a one-hot GEMM) and V = 20 (a bincount), of
    # one, two and three axes, one table per example (B: batched), by tokens and by a label
    "gather": Row("""\
inputs:
  x: [3]
  tokens: {classes: 3, shape: [4]}
  words: {classes: 20, shape: [5]}
  c: {classes: 3}
params:
  E: [3, 2]
  F: [20, 2, 2]
  G: [3]
  W: [3, 3]
graph:
  e: E[tokens]
  f: F[words]
  g: G[tokens]
  B: W * x
  b: B[tokens]
  r: B[c]
  q: E[c]
  o: onehot(tokens)
  h: tanh(e @ q + g)
loss: sum(h * h) + sum(f * f) * 0.5 + sum(b * b) + dot(r, x) + sum(o @ G) + sum(e[1] * e[3])
wrt: [E, F, G, W, x]
output: h
""", _gather_ref),
    "neg": Row("""\
inputs:
  x: [3]
  u: [3]
params:
  W: [3, 3]
  s: []
graph:
  a: -(W @ x)
  h: a * -s + -x
loss: sum(u * h) - sum(-(h * h))
wrt: [W, s, x]
output: h
""", _neg_ref),
    # reductions, with and without axis=
    "sum": reduction("sum", np.sum),
    "mean": reduction("mean", np.mean),
    "max": reduction("max", np.max, kink=True),
    "var": reduction("var", np.var),
    "std": reduction("std", np.std),
    # last-axis functions, of a vector and of a matrix's rows
    "softmax": last_axis("softmax", softmax),
    "log_softmax": last_axis("log_softmax", log_softmax),
    "logsumexp": last_axis("logsumexp", logsumexp),
    # labels and products
    "onehot": Row(LABEL_SPEC.format(inputs="", params="", graph="  z: W @ x + b\n  e: onehot(label)\n",
                                    loss="sum(e * z) + sum(e * z * z)", wrt="W, b, x", output="e"),
                  _onehot_ref),
    "dot": Row("""\
inputs:
  x: [3]
params:
  W: [3, 3]
  v: [3]
graph:
  d: dot(W @ x, v)
loss: d * d + dot(v, x) + dot(x, x)
wrt: [W, v, x]
output: d
""", _dot_ref),
    # cross_entropy of a non-softmax, and of a softmax (compiled through the stable rule)
    "cross_entropy": Row(LABEL_SPEC.format(
        inputs="", params="  V: [3, 3]\n",
        graph="  p: sigmoid(W @ x + b)\n  q: softmax(V @ x)\n  ce: cross_entropy(p, label)\n",
        loss="ce + cross_entropy(q, label)", wrt="W, b, V, x", output="ce"), _cross_entropy_ref),
    "softmax_cross_entropy": Row(LABEL_SPEC.format(
        inputs="  w: []\n", params="", graph="  ce: softmax_cross_entropy(W @ x + b, label)\n",
        loss="ce * (1 + w)", wrt="W, b, x", output="ce"), _softmax_cross_entropy_ref),
    # shapes: slices (an operator form), reshape, flatten, concat, stack
    "slice": Row("""\
inputs:
  x: [6]
  X: [3, 4]
params:
  W: [4, 6]
  v: [5]
  M: [3, 4]
graph:
  a: W @ x
  b: a[1:3] * v[-2:]
  c: X[:, 0:3] * M[:, 1:]
  d: X[1:, :2] + M[0, 1:3]
  e: v[::2] * x[2:5]
  f: x[3:100] * a[:-1]
loss: sum(b * b) + sum(c * c) + sum(d * tanh(d)) + sum(e) + sum(f * f) + sum(M[1:, ::3] * X[:2, 1::2])
wrt: [W, v, M, x, X]
output: c
""", _slice_ref),
    "reshape": Row("""\
inputs:
  x: [6]
  X: [2, 3]
params:
  W: [6, 6]
  V: [3, 2]
graph:
  A: reshape(W @ x, [2, 3])
  B: reshape(A * X, [3, -1])
  h: tanh(B) * V
loss: sum(h * h) + sum(reshape(X, [6]) * reshape(V, [-1])) + sum(reshape(W, [4, 9])[1])
wrt: [W, V, x, X]
output: h
""", _reshape_ref),
    "flatten": Row("""\
inputs:
  x: [6]
  X: [2, 3]
params:
  W: [2, 3]
  v: [6]
  s: []
graph:
  h: tanh(flatten(X * W)) * v + flatten(s)
loss: sum(h * x) + sum(flatten(W) ** 2)
wrt: [W, v, s, x, X]
output: h
""", _flatten_ref),
    "concat": Row("""\
inputs:
  x: [3]
  X: [2, 3]
params:
  W: [2, 3]
  v: [2]
  M: [2, 2]
  r: [14]
graph:
  c: concat(W @ x, v, x)
  D: concat(X, W, axis=0)
  E: concat(X, M, axis=-1)
  F: concat(c, c)
loss: sum(tanh(F) * r) + sum(D * D) + sum(E * tanh(E))
wrt: [W, v, M, x, X]
output: c
""", _concat_ref),
    "stack": Row("""\
inputs:
  x: [3]
  X: [2, 3]
params:
  W: [2, 3]
  v: [2]
  s: []
graph:
  a: W @ x
  S: stack(a, v, axis=0)
  T: stack(a, v, a, axis=-1)
  u: stack(s, sum(x))
loss: sum(S * S * X[:, :2]) + sum(tanh(T) * X) + sum(u * u)
wrt: [W, v, s, x, X]
output: S
""", _stack_ref),
    "erf": elementwise("erf", erf),
    "log1p": elementwise("log1p", np.log1p, domain="positive"),
    "expm1": elementwise("expm1", np.expm1),
    "atan": elementwise("atan", np.arctan),
    "leaky_relu": elementwise_with_parameter("leaky_relu", leaky_relu, 0.2),
    "elu": elementwise_with_parameter("elu", elu, 0.5),
    "silu": elementwise("silu", lambda z: z * sigmoid(z)),
    "gelu": elementwise("gelu", gelu),
    # convolutions (stride 1 and 2, padding 0, 1 and 'same', an even kernel) and
    # pooling (tiling windows, overlapping ones, and a remainder dropped)
    "conv2d": Row("""\
inputs:
  x: [2, 5, 5]
params:
  W: [3, 2, 2, 2]
  V: [2, 3, 2, 2]
  b: [3, 1, 1]
graph:
  z0: conv2d(x, W) + b
  z1: conv2d(x, W, stride=2)
  z2: conv2d(x, W, padding=1)
  z3: conv2d(x, W, padding='same')
  z4: conv2d(x, W, stride=2, padding=1)
  h: conv2d(tanh(z0), V)
loss: sum(z1 * z1) + sum(sin(z2)) + sum(z3 * z3) + sum(cos(z4)) + sum(h * h)
wrt: [W, V, b, x]
output: z4
""", _conv2d_ref),
    "conv1d": Row("""\
inputs:
  s: [2, 7]
params:
  K: [3, 2, 3]
  Q: [2, 3, 2]
  c: [3, 1]
graph:
  y0: conv1d(s, K) + c
  y1: conv1d(s, K, stride=2, padding=1)
  y2: conv1d(s, K, padding='same')
  y3: conv1d(tanh(y2), Q, padding='valid')
loss: sum(y0 * y0) + sum(sin(y1)) + sum(cos(y2)) + sum(y3 * y3)
wrt: [K, Q, c, s]
output: y1
""", _conv1d_ref),
    "max_pool2d": Row("""\
inputs:
  x: [2, 4, 4]
params:
  W: [2, 4, 4]
graph:
  a: 10 * (W * x)
  p0: max_pool2d(a, 2)
  p1: max_pool2d(a, 3, stride=1)
  p2: max_pool2d(-a, 3)
loss: sum(p0 * p0) / 100 + sum(sin(p1)) + sum(p2)
wrt: [W, x]
output: p1
""", _max_pool2d_ref, kinks=_max_pool2d_kinks),
    "avg_pool2d": Row("""\
inputs:
  x: [2, 5, 5]
params:
  W: [2, 5, 5]
graph:
  a: W * x
  p0: avg_pool2d(a, 2)
  p1: avg_pool2d(a, 3, stride=2)
  p2: avg_pool2d(tanh(a), 2, stride=1)
loss: sum(p0 * p0) + sum(sin(p1)) + sum(p2 * p2)
wrt: [W, x]
output: p1
""", _avg_pool2d_ref),
    "maximum": extremum("maximum", np.maximum),
    "minimum": extremum("minimum", np.minimum),
    "clip": Row(CLIP_SPEC, _clip_ref, kinks=_clip_kinks, two_sided=True),
}

ALL_ROWS = ROWS


def module_name(op):
    safe = {"@": "matmul", ".T": "transpose"}.get(op, op)
    return f"sys_{safe}"


def spec_text(op):
    return f"name: {module_name(op)}\n" + ALL_ROWS[op].spec


# ---------------------------------------------------------------------------
# Points and references


def draw_point(module, row, seed=0, n=N):
    """Params and a batch of inputs in the row's domain, away from its kinks."""
    for attempt in range(200):
        rng = np.random.default_rng([seed, attempt])
        if row.domain == "positive":
            params = {k: rng.uniform(0.2, 0.8, s) for k, s in module.PARAM_SHAPES.items()}
        else:
            params = {k: 0.5 * rng.standard_normal(s) for k, s in module.PARAM_SHAPES.items()}
        inputs = {}
        for k, s in module.INPUT_SHAPES.items():
            if k in module.LABEL_CLASSES:
                inputs[k] = rng.integers(0, module.LABEL_CLASSES[k], (n, *s))
            elif row.domain == "positive":
                inputs[k] = rng.uniform(0.5, 1.5, (n, *s))
            else:
                inputs[k] = rng.standard_normal((n, *s))
        params = {k: np.asarray(v, np.float64) for k, v in params.items()}
        if row.kinks is None:
            return params, inputs
        d = np.concatenate([np.ravel(row.kinks(params, one_example(inputs, i))) for i in range(n)])
        if np.min(np.abs(d)) >= KINK_MARGIN and (not row.two_sided or (np.any(d > 0) and np.any(d < 0))):
            return params, inputs
    raise AssertionError("no point away from the kinks in 200 draws")


def one_example(inputs, i):
    return {k: v[i] for k, v in inputs.items()}


def reference(row, params, inputs):
    """(predict, loss) of the row's NumPy reference on a batch (mean reduction)."""
    n = len(next(iter(inputs.values())))
    outs, losses = zip(*(row.ref(params, one_example(inputs, i)) for i in range(n)))
    return np.stack([np.asarray(o, np.float64) for o in outs]), float(np.mean(losses))


def call(fn, params, inputs):
    """fn(params, **inputs) on copies (a module must not see another call's arrays)."""
    return fn({k: v.copy() for k, v in params.items()}, **{k: v.copy() for k, v in inputs.items()})


# ---------------------------------------------------------------------------
# Compiled modules: each (row, target) compiled once; the CUDA rows built in parallel


def _import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Modules:
    def __init__(self, directory):
        self.directory = directory
        self.cache = {}

    def get(self, op, target):
        if (op, target) not in self.cache:
            if target == "numpy":
                try:
                    self.cache[op, target] = bpcompile.compile(spec_text(op)).load()
                except Exception as e:   # noqa: BLE001 - reported by the row's test
                    self.cache[op, target] = e
            else:
                self.build(target)
        got = self.cache[op, target]
        if isinstance(got, Exception):
            raise got
        return got

    def build(self, target):
        """Every row for a target whose loader builds native code (CUDA: with g++
        and the emulation header force-included; C: with cc): compiled, written,
        and built in a thread pool; a failure is kept for its row."""
        if target == "cuda" and shutil.which(os.environ.get("CXX", "g++")) is None:
            pytest.skip("no host C++ compiler (g++) to build the CUDA target with its emulation header")
        if target == "c" and shutil.which(os.environ.get("CC", "cc")) is None:
            pytest.skip("no C compiler (cc) to build the C target")
        directory = self.directory / target
        directory.mkdir(exist_ok=True)
        if target == "cuda":
            shutil.copy(EMULATION_HEADER, directory / "cuda_emulation.h")
        entry = bpcompile.targets.get(target).entry_file
        loaders = {}
        for op in ALL_ROWS:
            try:
                bpcompile.compile(spec_text(op), target=target).write(directory)
                loaders[op] = _import_file(directory / entry(module_name(op)),
                                           f"bp_systematic_{module_name(op)}_{target}")
            except Exception as e:   # noqa: BLE001 - reported by the row's test
                self.cache[op, target] = e

        def build(op):
            try:
                loaders[op]._load()
                return loaders[op]
            except Exception as e:   # noqa: BLE001 - reported by the row's test
                return e
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for op, result in zip(loaders, pool.map(build, loaders)):
                self.cache[op, target] = result


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("BPCOMPILE_CUDA_EMULATE", "1")
    # grids of 2 blocks at most: every grid-stride loop wraps
    mp.setenv("BPCOMPILE_CXXFLAGS", "-DBP_MAX_GRID=2 -Wall -Wextra -Werror")
    yield Modules(tmp_path_factory.mktemp("systematic"))
    mp.undo()


CASES = [pytest.param(op, target, id=f"{op}-{target}") for op in ALL_ROWS for target in TARGETS]


# ---------------------------------------------------------------------------
# The table is complete


def test_every_op_has_a_row():
    rows = set(ROWS)
    registered = registered_ops()
    missing, extra = sorted(registered - rows), sorted(rows - registered)
    assert not missing, f"ops the compiler registers without a row in tests/test_systematic.py: {missing}"
    assert not extra, f"rows of tests/test_systematic.py for ops the compiler does not register: {extra}"


@pytest.mark.parametrize("op", list(ALL_ROWS))
def test_row_uses_its_op(op):
    """A row's spec contains its op: a call for a function, the node rule for a
    binary operator, the syntax for an operator form."""
    text = ALL_ROWS[op].spec
    body = text[text.index("graph:"):]
    if op in OPERATOR_FORMS:
        assert re.search(OPERATOR_FORMS[op], body, re.M), f"the {op!r} row does not use {op!r}"
    elif op in binary_ops():
        g = bpcompile.compile(spec_text(op)).lowered.graph
        rules = {g.node(n).get("rule") for n in g.g.nodes if g.node(n)["op"] == "map"}
        assert op in rules, f"the {op!r} row has no {op!r} node"
    else:
        assert re.search(rf"\b{re.escape(op)}\(", body), f"the {op!r} row does not call {op}()"


# ---------------------------------------------------------------------------
# The three checks


@pytest.mark.parametrize("op, target", CASES)
def test_value(op, target, modules):
    row, m = ALL_ROWS[op], modules.get(op, target)
    params, inputs = draw_point(modules.get(op, "numpy"), row, seed=1)
    want_out, want_loss = reference(row, params, inputs)
    got_out = np.asarray(call(m.predict, params, inputs))
    assert got_out.shape == want_out.shape, f"{op} {target}: predict shape {got_out.shape}, want {want_out.shape}"
    err = rel_error(got_out, want_out)
    assert err <= VALUE_RTOL, f"{op} {target}: predict differs from NumPy by {err:.3g} (relative)"
    got_loss = call(m.loss, params, inputs)
    assert got_loss == pytest.approx(want_loss, rel=VALUE_RTOL, abs=1e-14), f"{op} {target}: loss"
    value, _ = call(m.value_and_grad, params, inputs)
    assert value == pytest.approx(want_loss, rel=VALUE_RTOL, abs=1e-14), f"{op} {target}: value_and_grad value"


@pytest.mark.parametrize("op, target", CASES)
def test_gradient(op, target, modules):
    row, m = ALL_ROWS[op], modules.get(op, target)
    ref = modules.get(op, "numpy")
    params, inputs = draw_point(ref, row, seed=2)
    _, grads = call(m.value_and_grad, params, inputs)
    assert sorted(grads) == sorted(ref.WRT)
    for name, g in grads.items():
        g = np.asarray(g)
        fd = finite_differences(m, params, inputs, name)
        assert g.shape == fd.shape, f"{op} {target}: d/d{name} has shape {g.shape}, want {fd.shape}"
        err = rel_error(g, fd)
        assert err <= GRAD_RTOL, f"{op} {target}: d/d{name} differs from finite differences by {err:.3g}"
    if target != "numpy":
        _, want = call(ref.value_and_grad, params, inputs)
        for name in want:
            err = rel_error(np.asarray(grads[name]), want[name])
            assert err <= CUDA_RTOL, f"{op} {target}: d/d{name} differs from the numpy target's by {err:.3g}"


@pytest.mark.parametrize("op", list(ALL_ROWS))
def test_verify(op):
    report = bpcompile.verify(spec_text(op))
    ok, bad = report.ok, [r for r in report.rows if not r.ok]
    assert ok, f"{op}: verify failed: {bad or report.rows} {report.notes}"
