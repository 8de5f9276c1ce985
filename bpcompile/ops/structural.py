"""Structural ops (contraction, reductions, indexing, ...): shape rules and
vector-Jacobian product (VJP) rules of a line or two, written against the graph
builder in ``frontend/graph.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from ..errors import SpecError
from .elementwise import OUT, arg_symbol, equal, local_derivative

# ---------------------------------------------------------------------------
# Shape rules (per-example shapes; the batch axis is tracked separately).


def broadcast_shapes(shapes, describe) -> tuple:
    """NumPy broadcasting of per-example shapes; ``describe()`` names operands on error."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(-ndim, 0):
        dims = {s[axis] for s in shapes if len(s) >= -axis and s[axis] != 1}
        if len(dims) > 1:
            raise SpecError(f"shape mismatch: {describe()} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


@dataclass(frozen=True)
class Contraction:
    """A two-operand contraction in einsum notation over per-example axes.

    ``a @ b`` for matrix/vector operands, ``dot``, and every adjoint of them.  The
    batch axis is not in ``subscripts``: an operand that is batched carries it in
    front, and ``out_batched`` says whether the result keeps it (when it does not,
    it is summed over: that is how ``W_bar = sum_n d_bar x^T`` comes out).
    """

    a: str
    b: str
    out: str

    @property
    def subscripts(self) -> str:
        return f"{self.a},{self.b}->{self.out}"

    def transposed_for(self, pos: int) -> "Contraction":
        """The contraction giving the adjoint of operand ``pos`` from the output's."""
        return Contraction(self.out, self.b, self.a) if pos == 0 else Contraction(self.a, self.out, self.b)


def matmul_contraction(sa: tuple, sb: tuple, describe) -> tuple[Contraction, tuple]:
    """The contraction and output shape of ``a @ b`` (NumPy's matmul on 1-D and 2-D)."""
    forms = {
        (2, 1): Contraction("ij", "j", "i"),
        (1, 2): Contraction("j", "ji", "i"),
        (2, 2): Contraction("ij", "jk", "ik"),
        (1, 1): Contraction("i", "i", ""),
    }
    form = forms.get((len(sa), len(sb)))
    if form is None:
        raise SpecError(f"'@' takes vectors and matrices: {describe()}")
    k_a = sa[-1]
    k_b = sb[0]
    if k_a != k_b:
        raise SpecError(f"shape mismatch in matrix product: {describe()}")
    return form, contraction_shape(form, sa, sb)


def contraction_shape(form: Contraction, sa: tuple, sb: tuple) -> tuple:
    size = dict(zip(form.a, sa))
    size.update(zip(form.b, sb))
    return tuple(size[c] for c in form.out)


def reduce_shape(shape: tuple, axes: tuple, keepdims: bool) -> tuple:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def normalize_axis(axis: int, ndim: int, describe) -> int:
    if not -ndim <= axis < ndim:
        raise SpecError(f"axis {axis} is out of range for {describe()}")
    return axis % ndim


# ---------------------------------------------------------------------------
# VJP rules.  ``G`` is the graph builder, ``n`` the node, ``pos`` the argument
# position, ``g`` the node's adjoint (of n's shape, or one that broadcasts to it).
# Each returns the contribution to the argument's adjoint: a node id, a Scatter,
# or None for a zero.  Rule names (the dict keys) appear in generated comments.


@dataclass(frozen=True)
class Scatter:
    """A contribution that is zero except at ``[n, label[n]]``, where it is ``value``."""

    label: int
    value: int
    classes: int


@functools.lru_cache(maxsize=4096)
def _map_contribution(expr: sp.Expr, pos: int, nargs: int) -> sp.Expr:
    """g * d expr / d arg_pos, over the symbols [g, args..., out] (the same for
    every layer of a deep stack: derived once)."""
    d = local_derivative(expr, pos)
    subs = {arg_symbol(i): arg_symbol(i + 1) for i in range(nargs)}
    subs[OUT] = arg_symbol(nargs + 1)
    return arg_symbol(0) * d.xreplace(subs)


def _vjp_map(G, n, pos, g):
    node = G.node(n)
    args = list(node["args"])
    return G.map(_map_contribution(node["attrs"][0], pos, len(args)), [g, *args, n])


def _vjp_contract(G, n, pos, g):
    node = G.node(n)
    form, out_batched = node["attrs"]
    a, b = node["args"]
    g = G.materialize(g, n)
    target = node["args"][pos]
    adj_form = form.transposed_for(pos)
    other = b if pos == 0 else a
    operands = (g, other) if pos == 0 else (other, g)
    return G.contract(operands[0], operands[1], adj_form, G.node(target)["batched"])


def _vjp_reduce(G, n, pos, g):
    node = G.node(n)
    kind, axes, keepdims, nograd = node["attrs"]
    if nograd:
        return None
    x = node["args"][0]
    m = n
    if not keepdims and node["shape"] != ():
        # put the reduced axes back as 1s so g (and n, for max) broadcast against x
        kept = reduce_shape(G.node(x)["shape"], axes, True)
        if G.node(g)["shape"] != ():
            g = G.reshape(G.materialize(g, n), kept)
        if kind == "max":
            m = G.reshape(n, kept)
    if kind == "sum":
        return g
    # max: the adjoint flows to the entries equal to the maximum, split equally
    # between tied entries (as PyTorch's amax): g * mask / count(mask)
    mask = G.map(equal(arg_symbol(0), arg_symbol(1)), [x, m], rule="max")
    # the copy makes the mask an array of the dtype in every target (a comparison
    # alone is a boolean array in NumPy, and its sum an integer one)
    mask = G.copy(mask)
    count = G.reduce(mask, "sum", axes, keepdims=True, nograd=True)
    return G.map(arg_symbol(0) * arg_symbol(1) / arg_symbol(2), [g, mask, count], rule="max")


def _vjp_sum_to(G, n, pos, g):
    return g  # broadcasts back to the argument's shape


def _vjp_broadcast(G, n, pos, g):
    x = G.node(n)["args"][0]
    return G.sum_to(g, G.node(x)["shape"], G.node(x)["batched"])


def _vjp_reshape(G, n, pos, g):
    x = G.node(n)["args"][0]
    return G.reshape(G.materialize(g, n), G.node(x)["shape"])


def _vjp_take(G, n, pos, g):
    if pos == 1:
        return None  # integer label
    x, label = G.node(n)["args"]
    return Scatter(label, g, G.node(x)["shape"][-1])


def _vjp_scatter_add(G, n, pos, g):
    base, label, value = G.node(n)["args"]
    if pos == 0:
        return g
    if pos == 2:
        return G.take(G.materialize(g, n), label)
    return None


def _vjp_transpose(G, n, pos, g):
    return G.transpose(G.materialize(g, n))


def _vjp_index(G, n, pos, g):
    node = G.node(n)
    (i,) = node["attrs"]
    x = node["args"][0]
    return G.embed(G.materialize(g, n), G.node(x)["shape"], i)


def _vjp_embed(G, n, pos, g):
    (shape, i) = G.node(n)["attrs"]
    return G.index(G.materialize(g, n), i)


def _vjp_copy(G, n, pos, g):
    return g


VJP = {
    "map": _vjp_map,
    "contract": _vjp_contract,
    "reduce": _vjp_reduce,
    "sum_to": _vjp_sum_to,
    "broadcast": _vjp_broadcast,
    "reshape": _vjp_reshape,
    "take": _vjp_take,
    "scatter_add": _vjp_scatter_add,
    "transpose": _vjp_transpose,
    "index": _vjp_index,
    "embed": _vjp_embed,
    "copy": _vjp_copy,
}

@dataclass(frozen=True)
class GemmForm:
    """How a contraction maps onto one (optionally batched) matrix product.

    ``out = op(left) @ op(right)`` with ``op`` a transpose where ``trans_*`` says,
    ``left``/``right`` naming operand 0 or 1.  ``outer`` marks a product with no
    summed index (``d_bar x^T``); ``batched`` a leading batch index shared by all.
    """

    left: int
    trans_left: bool
    trans_right: bool
    batched: bool
    outer: bool


def gemm_form(sa: str, sb: str, so: str) -> GemmForm | None:
    """Classify einsum(sa, sb -> so) as in TTGT: batch, m, n and k indices.

    Returns None when the contraction is not a single GEMM (then printers fall
    back to a general einsum).
    """
    batch = [c for c in so if c in sa and c in sb]
    m = [c for c in so if c in sa and c not in sb]
    n = [c for c in so if c in sb and c not in sa]
    k = [c for c in sa if c in sb and c not in so]
    alone = [c for c in sa + sb if c not in so and not (c in sa and c in sb)]
    if alone or len(batch) > 1 or len(m) > 1 or len(n) > 1 or len(k) > 1:
        return None
    if batch and not all(s.index(batch[0]) == 0 for s in (sa, sb, so)):
        return None
    ca, cb, co = (s[len(batch):] for s in (sa, sb, so))
    if co == "".join(m + n):
        left, (cl, cr), (ml, nr) = 0, (ca, cb), (m, n)
    elif co == "".join(n + m):
        left, (cl, cr), (ml, nr) = 1, (cb, ca), (n, m)
    else:
        return None
    if batch and (len(cl) < 2 or len(cr) < 2):
        return None  # batched matrix-vector products stay einsums: shapes stay unambiguous
    if not k:
        if batch or not ml or not nr:
            return None
        return GemmForm(left, False, False, False, True)
    trans_left = len(cl) == 2 and cl == "".join(k + ml)
    trans_right = len(cr) == 2 and cr == "".join(nr + k)
    return GemmForm(left, trans_left, trans_right, bool(batch), False)
