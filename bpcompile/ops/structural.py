"""Structural ops (contraction, reductions, indexing, gathers, ...): one record each.

A ``StructuralOp`` holds everything the compiler knows of one op of the graph that
is not elementwise: its shape rule (the graph builder in ``frontend/graph.py``
calls it), its vector-Jacobian product (VJP, ``adjoint.py`` calls it), its text in
the equations and in ``inspect``, and its label in the picture.  Its lowering for
each target is the target printer's method marked ``@lowers(name)``
(``targets/<target>/printer.py``); a target that lacks one fails at compile time,
naming the op and the target (``targets/base.py``), and tests/test_op_records.py
checks every record against every registered target.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import sympy as sp

from ..errors import SpecError
from .elementwise import OUT, arg_symbol, equal, local_derivative
from .notation import Einsum, Equals, Index, Kw, MatMul, Outer, T, call, show

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


def shape_text(shape) -> str:
    """A per-example shape as messages write it: ``[2, 3]``."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass(frozen=True)
class GemmForm:
    """How a contraction maps onto one (optionally batched) matrix product.

    ``out = op(left) @ op(right)`` with ``op`` a transpose where ``trans_*`` says,
    ``left``/``right`` naming operand 0 or 1.  ``outer`` marks a product with no
    summed index (``d_bar x^T``); ``batched`` a leading batch index: one product
    per entry of it.

    As in TTGT, each of the three index groups (``m``: rows of the output, from
    the left operand; ``n``: its columns, from the right; ``k``: summed) may be
    several indices that stand together, in the same order, wherever they occur:
    the operands are then read as matrices by a reshape, no copy
    (``ocij,cijhw->ohw`` is ``W[o, (cij)] @ X[(cij), (hw)]``).  The batch index
    ``batch`` leads every subscript that has it; it may be missing from one
    operand (``broadcast``: that operand is the same matrix in every product) or
    from the output (``summed``: the products are added up, as in a kernel's
    gradient summed over the examples).
    """

    left: int
    trans_left: bool
    trans_right: bool
    batched: bool
    outer: bool
    m: str = ""
    n: str = ""
    k: str = ""
    batch: str = ""
    broadcast: int | None = None
    summed: bool = False

    @property
    def grouped(self) -> bool:
        """Whether the operands are read as matrices through a reshape (a group of
        several indices), or the batch index is broadcast or summed over: the
        product is then printed from the groups (``ops.gemm_form``'s TTGT reading)."""
        return (any(len(g) > 1 for g in (self.m, self.n, self.k)) or self.broadcast is not None
                or self.summed)


@functools.lru_cache(maxsize=4096)   # a pure function of three strings, asked per product many times
def gemm_form(sa: str, sb: str, so: str) -> GemmForm | None:
    """Classify einsum(sa, sb -> so) as in TTGT: batch, m, n and k indices.

    A contraction is one GEMM (or one batched GEMM) when its m, n and k groups
    each stand together, in one order, in every subscript holding them; a
    leading index may be a batch index shared by all three, one missing from an
    operand (broadcast) or one missing from the output (summed).  One product
    over all the indices is preferred to a batch of products: ``nij,jk->nik`` is
    one GEMM with N*I rows.  Returns None when the contraction is no such
    product (then printers fall back to a general einsum).
    """
    form = _gemm_groups(sa, sb, so)
    if form is not None:
        return form
    p = so[:1]
    if p and (sa[:1] == p) != (sb[:1] == p) and p not in (sb if sa[:1] == p else sa):
        # the leading index of the output and of one operand: a batch over which
        # the other operand is broadcast (W @ X[n] for every example n)
        plain = _gemm_groups(sa.replace(p, ""), sb.replace(p, ""), so[1:])
        if plain is not None and not plain.outer:
            return GemmForm(plain.left, plain.trans_left, plain.trans_right, True, False, plain.m, plain.n,
                            plain.k, p, broadcast=1 if sa[:1] == p else 0)
    p = sa[:1]
    if p and sb[:1] == p and p not in so:
        # the leading index of both operands, summed over: a sum of products
        plain = _gemm_groups(sa[1:], sb[1:], so)
        if plain is not None and not plain.outer:
            return GemmForm(plain.left, plain.trans_left, plain.trans_right, True, False, plain.m, plain.n,
                            plain.k, p, summed=True)
    return None


def gemm_plan(sa: str, sb: str, so: str, sizes: dict):
    """The best GEMM reading of einsum(sa, sb -> so), given each index's size (None:
    the batch size): ``(form, sa, sb, so)``, the subscripts those the form reads.

    Indices of size 1 take no room in memory: read without them (a reshape), a
    contraction may be one GEMM that is otherwise a sum of per-example products
    (a kernel's gradient when the output is 1 x 1: ``nohw,ncijhw->ocij`` is
    ``no,ncij->ocij``, z_bar^T @ X).  They are dropped when that gives a better
    form: one product before a batch of them, a batch before a sum of them."""
    def rank(form):
        if form is None:
            return 0
        return 1 if form.summed else 2 if form.batched else 3

    best = (gemm_form(sa, sb, so), sa, sb, so)
    ones = {c for c, d in sizes.items() if d == 1}
    if ones & set(sa + sb + so):
        drop = [s.translate({ord(c): None for c in ones}) for s in (sa, sb, so)]
        if all(drop[:2]):
            form = gemm_form(*drop)
            if rank(form) > rank(best[0]):
                best = (form, *drop)
    return best


def _gemm_groups(sa: str, sb: str, so: str) -> GemmForm | None:
    """``gemm_form`` with any batch index shared by all three subscripts."""
    batch = [c for c in so if c in sa and c in sb]
    m = [c for c in so if c in sa and c not in sb]
    n = [c for c in so if c in sb and c not in sa]
    k = [c for c in sa if c in sb and c not in so]
    alone = [c for c in sa + sb if c not in so and not (c in sa and c in sb)]
    if alone or len(batch) > 1:
        return None
    if batch and not all(s.index(batch[0]) == 0 for s in (sa, sb, so)):
        return None
    b = "".join(batch)
    ca, cb, co = (s[len(batch):] for s in (sa, sb, so))
    m, n, k = "".join(m), "".join(n), "".join(k)
    if co == m + n:
        left, (cl, cr), (ml, nr) = 0, (ca, cb), (m, n)
    elif co == n + m:
        left, (cl, cr), (ml, nr) = 1, (cb, ca), (n, m)
    else:
        return None
    if b and (len(cl) < 2 or len(cr) < 2):
        return None  # batched matrix-vector products stay einsums: shapes stay unambiguous
    if not k:
        if b or not ml or not nr or len(ml) > 1 or len(nr) > 1:
            return None
        return GemmForm(left, False, False, False, True, ml, nr)
    kl = "".join(c for c in cl if c in k)   # the k group in the order the left operand holds it
    if cl not in (ml + kl, kl + ml) or cr not in (kl + nr, nr + kl):
        return None
    trans_left = bool(ml) and cl == kl + ml
    trans_right = bool(nr) and cr == nr + kl
    return GemmForm(left, trans_left, trans_right, bool(b), False, ml, nr, kl, b)


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


def vjp_map(G, n, pos, g):
    """The VJP of an elementwise node: SymPy's derivative of its expression."""
    node = G.node(n)
    args = list(node["args"])
    return G.map(_map_contribution(node["attrs"][0], pos, len(args)), [g, *args, n])


# ---------------------------------------------------------------------------
# The record.
#
# Signatures of its rules (``G`` the graph builder, ``n`` the node, ``pos`` an
# argument position, ``g`` the node's adjoint: of n's shape, or one that
# broadcasts to it; ``k`` a kernel of ir/program.py, whose args are Values):
#
#   shape(args, attrs) -> (shape, batched)   args: the arguments' node dicts
#   vjp(G, n, pos, g) -> the contribution to argument pos's adjoint: a node id,
#       a Scatter, or None for a zero.  None instead of a rule: nothing flows back.
#   text(G, n, a) -> the node as a display expression over its arguments' (``a``)
#   term(G, n, x, g, sym, rule) -> (expr, rule, note): n's term of x_bar as the
#       equations write it; ``g`` the Symbol of n_bar, ``sym`` node -> display
#   label(G, n, pos, atom) -> the local derivative on the picture's adjoint arrow;
#       ``atom`` node -> its text, bracketed unless atomic
#   summary(k, a) -> the kernel in inspect's list of shared values; ``a`` the
#       Symbols of its arguments' names
#   cost(k) -> scalar operations of the kernel for one example


def _default_text(G, n, a):
    return call(G.node(n)["op"], *a)


def _default_term(G, n, x, g, sym, rule):
    return g, rule, ""


def _default_label(G, n, pos, atom):
    return "1"


def _default_summary(k, a):
    return f"{k.op}({', '.join(v.name for v in k.args)})"


def _default_cost(k):
    return math.prod(k.out.shape)


def _input_size(k):
    return math.prod(k.args[0].shape)


@dataclass(frozen=True)
class StructuralOp:
    """One structural op of the graph (see the module's docstring and the signatures above)."""

    name: str
    shape: Callable
    vjp: Callable | None
    text: Callable = _default_text
    term: Callable = _default_term
    label: Callable = _default_label
    summary: Callable = _default_summary
    cost: Callable = _default_cost
    rule: str = ""        # the rule its nodes name in comments, unless the builder says (default: name)
    symbol: str = ""      # the picture's symbol under a named node of the op (default: its rule)
    drawn: bool = True    # False: the picture reads through it to its argument


def batch_note(G, n, x) -> str:
    """What a term of x_bar says when x has no batch axis and n has: it is summed."""
    return "(summed over the batch)" if G.node(n)["batched"] and not G.node(x)["batched"] else ""


def _as_shape(args, attrs):
    """Shape and batch flag are the node's attributes (``(shape, batched, ...)``)."""
    return tuple(attrs[0]), attrs[1]


def _like_arg(args, attrs):
    return args[0]["shape"], args[0]["batched"]


def _as_arg(G, n, a):
    """Shown as its argument: the equations read through a reshape, broadcast or copy."""
    return a[0]


def _as_shape_summary(k, a):
    return f"{a[0]} as shape {list(k.out.shape)}"


# -- contract: a @ b, dot, and every adjoint of them (einsum over per-example axes)

def contraction_expr(form: Contraction, a, b) -> sp.Expr:
    """A contraction as the lectures write it: ``W @ x``, ``d_bar x^T``, ``W^T @ d_bar``;
    a scaling ``a*b``; ``dot(a, b)``; else index notation ``sum_j a[i,j]*b[j]``."""
    g = gemm_form(form.a, form.b, form.out)
    if g is None or g.grouped:
        if form.out == "" and form.a == form.b and len(form.a) == 1:
            return call("dot", a, b)
        if "" in (form.a, form.b) and set(form.a + form.b) == set(form.out) \
                or form.a == form.b == form.out:
            return a * b
        return Einsum(a, b, sp.Symbol(form.subscripts))
    left, right = (a, b) if g.left == 0 else (b, a)
    if g.outer:
        return Outer(left, T(right))
    return MatMul(T(left) if g.trans_left else left, T(right) if g.trans_right else right)


def contraction_text(form: Contraction, a: str, b: str) -> str:
    """``contraction_expr`` for operands given as text (bracketed already where needed)."""
    return show(contraction_expr(form, sp.Symbol(a), sp.Symbol(b)))


def _contract_shape(args, attrs):
    form, out_batched = attrs
    return contraction_shape(form, args[0]["shape"], args[1]["shape"]), out_batched


def _contract_vjp(G, n, pos, g):
    node = G.node(n)
    form, out_batched = node["attrs"]
    a, b = node["args"]
    g = G.materialize(g, n)
    target = node["args"][pos]
    adj_form = form.transposed_for(pos)
    other = b if pos == 0 else a
    operands = (g, other) if pos == 0 else (other, g)
    return G.contract(operands[0], operands[1], adj_form, G.node(target)["batched"])


def _contract_term(G, n, x, g, sym, rule):
    form = G.node(n)["attrs"][0]
    a, b = G.node(n)["args"]
    pos = 0 if a == x else 1
    other = sym(b if pos == 0 else a)
    adj_form = form.transposed_for(pos)
    e = contraction_expr(adj_form, g, other) if pos == 0 else contraction_expr(adj_form, other, g)
    return e, "matmul" if form.out or len(form.a) > 1 else "dot", batch_note(G, n, x)


def _contract_label(G, n, pos, atom):
    form = G.node(n)["attrs"][0]
    a, b = G.node(n)["args"]
    other = atom(b if pos == 0 else a)
    return contraction_text(form.transposed_for(pos), "·", other) if pos == 0 \
        else contraction_text(form.transposed_for(pos), other, "·")


def _contract_cost(k):
    form = k.attrs[0]
    dims = dict(zip(form.a, k.args[0].shape))
    dims.update(zip(form.b, k.args[1].shape))
    return 2 * math.prod(dims.values())     # a multiply and an add per term


CONTRACT = StructuralOp(
    "contract", _contract_shape, _contract_vjp,
    text=lambda G, n, a: contraction_expr(G.node(n)["attrs"][0], a[0], a[1]),
    term=_contract_term, label=_contract_label,
    summary=lambda k, a: show(contraction_expr(k.attrs[0], *a)),
    cost=_contract_cost, symbol="@")


# -- reduce: sum or max over some axes of the example (attrs: kind, axes, keepdims, nograd)

def _reduce_shape(args, attrs):
    kind, axes, keepdims, nograd = attrs
    return reduce_shape(args[0]["shape"], axes, keepdims), args[0]["batched"]


def _reduce_vjp(G, n, pos, g):
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


def _reduce_text(G, n, a):
    kind, axes, keepdims, _ = G.node(n)["attrs"]
    rank = len(G.node(G.node(n)["args"][0])["shape"])
    if len(axes) < rank:
        return call(kind, a[0], Kw(sp.Symbol("axis"), sp.Integer(axes[0] - rank)))
    return call(kind, a[0])


def _reduce_term(G, n, x, g, sym, rule):
    if G.node(n)["attrs"][0] == "max":
        return g * Equals(sym(x), sym(n)), "max", ""
    return g, "sum", "(broadcast back over the summed axes)"


def _reduce_summary(k, a):
    axes = k.attrs[1]
    whole = len(axes) >= len(k.args[0].shape)
    return show(call(str(k.attrs[0]), a[0])) + ("" if whole else f" over axes {list(axes)}")


REDUCE = StructuralOp(
    "reduce", _reduce_shape, _reduce_vjp, text=_reduce_text, term=_reduce_term,
    label=lambda G, n, pos, atom: "1" if G.node(n)["attrs"][0] == "sum" else "[x == max]",
    summary=_reduce_summary, cost=_input_size)


# -- sum_to: a sum down to a shape that broadcasts to the argument's (attrs: shape, batched)

def _sum_to_text(G, n, a):
    batch = not G.node(n)["attrs"][1] and G.node(G.node(n)["args"][0])["batched"]
    return call("sum_n" if batch else "sum", a[0])


def _sum_to_summary(k, a):
    if k.args[0].batched and not k.out.batched:
        return f"sum over the batch of {a[0]}"
    return f"sum({a[0]}) to shape {list(k.out.shape)}"


SUM_TO = StructuralOp(
    "sum_to", _as_shape, lambda G, n, pos, g: g,     # g broadcasts back to the argument's shape
    text=_sum_to_text, term=lambda G, n, x, g, sym, rule: (g, rule, "(broadcast over the batch)"),
    summary=_sum_to_summary, cost=_input_size, rule="sum")


# -- broadcast: an argument repeated to a shape (attrs: shape, batched)

def _broadcast_vjp(G, n, pos, g):
    x = G.node(n)["args"][0]
    return G.sum_to(g, G.node(x)["shape"], G.node(x)["batched"])


BROADCAST = StructuralOp(
    "broadcast", _as_shape, _broadcast_vjp, text=_as_arg,
    term=lambda G, n, x, g, sym, rule: (call("sum", g), "broadcast", ""),
    summary=_as_shape_summary, drawn=False)


# -- reshape: the same entries in another shape (attrs: shape)

def _reshape_vjp(G, n, pos, g):
    x = G.node(n)["args"][0]
    return G.reshape(G.materialize(g, n), G.node(x)["shape"])


def only_unit_axes(old: tuple, new: tuple) -> bool:
    """Whether a reshape from ``old`` to ``new`` only inserts or drops axes of size 1
    (the entries keep their indices, up to those axes)."""
    return tuple(d for d in old if d != 1) == tuple(d for d in new if d != 1)


def _reshape_text(G, n, a):
    """Read through a reshape that only inserts or drops axes of size 1 (the ones
    the compiler makes); a reshape that moves entries reads ``reshape(x, [2, 6])``."""
    shape = G.node(n)["shape"]
    if only_unit_axes(G.node(G.node(n)["args"][0])["shape"], shape):
        return a[0]
    return call("reshape", a[0], sp.Symbol(shape_text(shape)))


RESHAPE = StructuralOp(
    "reshape", lambda args, attrs: (tuple(attrs[0]), args[0]["batched"]), _reshape_vjp,
    text=_reshape_text, summary=_as_shape_summary, drawn=False)


# -- copy: a fresh array of the argument (of the float dtype)

COPY = StructuralOp("copy", _like_arg, lambda G, n, pos, g: g, text=_as_arg, summary=_as_shape_summary)


# -- take: x[n, label[n]], the entry of each example's label

def _take_vjp(G, n, pos, g):
    if pos == 1:
        return None  # integer label
    x, label = G.node(n)["args"]
    return Scatter(label, g, G.node(x)["shape"][-1])


TAKE = StructuralOp(
    "take", lambda args, attrs: (args[0]["shape"][:-1], True), _take_vjp,
    text=lambda G, n, a: Index(a[0], a[1]),
    label=lambda G, n, pos, atom: "onehot", symbol="[label]")


# -- scatter_add: base plus value[n] at [n, label[n]] (the adjoint of take)

def _scatter_add_vjp(G, n, pos, g):
    base, label, value = G.node(n)["args"]
    if pos == 0:
        return g
    if pos == 2:
        return G.take(G.materialize(g, n), label)
    return None


SCATTER_ADD = StructuralOp(
    "scatter_add", lambda args, attrs: (args[0]["shape"], True), _scatter_add_vjp, rule="take")


# -- transpose: a matrix's axes reversed

TRANSPOSE = StructuralOp(
    "transpose", lambda args, attrs: (args[0]["shape"][::-1], args[0]["batched"]),
    lambda G, n, pos, g: G.transpose(G.materialize(g, n)),
    text=lambda G, n, a: T(a[0]), term=lambda G, n, x, g, sym, rule: (T(g), "transpose", ""),
    summary=lambda k, a: f"{a[0]}^T")


# -- slice: constant indices and ranges, x[2:5], X[:, 0:3], X[0, 1:3] (attrs: key)
#
# A key has one entry per leading axis it indexes (the axes after it are whole):
# an int i picks entry i and drops the axis (v[0]); a triple (start, stop, step)
# keeps the axis, entries start, start + step, ... below stop.  Keys are
# canonical (ops.slice_key): 0 <= i < d, a triple non-empty with step >= 1 (1
# when it takes one entry) and stop one past its last entry, no trailing whole
# axis; so v[-1] and v[2] of a vector of 3 are one node, and so are v[::2] and
# v[0:5:2] of a vector of 6.

def slice_key(shape: tuple, items, describe) -> tuple:
    """The canonical key of ``x[items]`` for x of per-example ``shape``: each item an
    int or a Python ``slice`` of ints (or None), clipped as Python clips; a SpecError
    naming ``describe()`` for an index out of range, a step <= 0 or an empty slice."""
    if not shape:
        raise SpecError(f"cannot index {describe()}: it is a scalar")
    if len(items) > len(shape):
        raise SpecError(f"too many indices: {len(items)} for {describe()} of shape {shape_text(shape)}")
    key = []
    for item, d in zip(items, shape):
        if isinstance(item, slice):
            if item.step is not None and item.step <= 0:
                raise SpecError(f"a slice step must be positive: [{_slice_text(item)}] of {describe()} "
                                f"has step {item.step}")
            r = range(d)[item]
            if not r:
                raise SpecError(f"a slice out of range: [{_slice_text(item)}] of {describe()} of shape "
                                f"{shape_text(shape)} is empty")
            step = r.step if len(r) > 1 else 1     # one entry: any step takes it
            key.append((r.start, r.start + (len(r) - 1) * step + 1, step))
        else:
            if not -d <= item < d:
                raise SpecError(f"index {item} is out of range for {describe()} of shape {shape_text(shape)}")
            key.append(item % d)
    while key and key[-1] == (0, shape[len(key) - 1], 1):
        key.pop()
    return tuple(key)


def _slice_text(item: slice) -> str:
    parts = ["" if v is None else str(v) for v in (item.start, item.stop, item.step)]
    return ":".join(parts if item.step is not None else parts[:2])


def sliced_shape(shape: tuple, key: tuple) -> tuple:
    """The per-example shape of ``x[key]`` for x of ``shape``."""
    out = [len(range(*k)) for k in key if isinstance(k, tuple)]
    return tuple(out) + tuple(shape[len(key):])


def key_text(key: tuple, shape: tuple) -> str:
    """A key as NumPy writes it, shortest form: ``2:5``, ``:, 0:3``, ``0, 1:``, ``::2``."""
    parts = []
    for k, d in zip(key, shape):
        if not isinstance(k, tuple):
            parts.append(str(k))
            continue
        start, stop, step = k
        count = len(range(start, stop, step))
        text = (str(start) if start else "") + ":"
        if start + count * step < d:     # the stop matters: an open slice would take more
            text += str(stop)
        if step != 1:
            text += f":{step}"
        parts.append(text)
    return ", ".join(parts)


def is_index(key: tuple) -> bool:
    """A key of integer indices only (v[0], X[1, 2]): its rule is ``index``."""
    return all(not isinstance(k, tuple) for k in key)


def axis_window(shape: tuple, axis: int, start: int, stop: int) -> tuple:
    """The key of entries [start, stop) on ``axis`` (the other axes whole)."""
    return tuple((0, d, 1) for d in shape[:axis]) + ((start, stop, 1),)


def _key_symbol(G, n, key_pos=0):
    node = G.node(n)
    key = node["attrs"][key_pos]
    shape = node["attrs"][0] if node["op"] == "unslice" else G.node(node["args"][0])["shape"]
    return sp.Symbol(key_text(key, shape))


def _slice_vjp(G, n, pos, g):
    node = G.node(n)
    (key,) = node["attrs"]
    x = node["args"][0]
    return G.unslice(G.materialize(g, n), G.node(x)["shape"], key)


def _slice_term(G, n, x, g, sym, rule):
    return g, rule, f"at [{_key_symbol(G, n).name}] (zero elsewhere)"


SLICE = StructuralOp(
    "slice", lambda args, attrs: (sliced_shape(args[0]["shape"], attrs[0]), args[0]["batched"]), _slice_vjp,
    text=lambda G, n, a: Index(a[0], _key_symbol(G, n)), term=_slice_term,
    label=lambda G, n, pos, atom: f"at [{_key_symbol(G, n).name}]",
    summary=lambda k, a: show(Index(a[0], sp.Symbol(key_text(k.attrs[0], k.args[0].shape)))))


# -- unslice: zeros of a shape with g at [key] (the adjoint of slice; attrs: shape, key)

def _unslice_vjp(G, n, pos, g):
    (shape, key) = G.node(n)["attrs"]
    return G.slice(G.materialize(g, n), key)


def _unslice_summary(k, a):
    return f"zeros {shape_text(k.out.shape)} with [{key_text(k.attrs[1], k.attrs[0])}] = {a[0]}"


UNSLICE = StructuralOp(
    "unslice", lambda args, attrs: (tuple(attrs[0]), args[0]["batched"]), _unslice_vjp,
    text=lambda G, n, a: call("unslice", a[0], _key_symbol(G, n, 1)),
    term=lambda G, n, x, g, sym, rule: (Index(g, _key_symbol(G, n, 1)), rule, ""),
    summary=_unslice_summary, rule="slice")


# -- concat: arrays joined along an axis (attrs: axis); an argument without the
#    batch axis is repeated over it

def concat_shape(shapes, axis: int) -> tuple:
    """The shape of the arrays of ``shapes`` (one rank; equal off ``axis``) joined on ``axis``."""
    first = shapes[0]
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]


def concat_windows(G, n):
    """Per argument position, the key of its entries in the output."""
    node = G.node(n)
    (axis,) = node["attrs"]
    keys, start = [], 0
    for a in node["args"]:
        d = G.node(a)["shape"][axis]
        keys.append(axis_window(node["shape"], axis, start, start + d))
        start += d
    return keys


def _concat_vjp(G, n, pos, g):
    """The slice of g where the argument sits; an argument joined more than once
    (concat(h, h)) gets the sum of its slices, all from its first position."""
    args = G.node(n)["args"]
    if args.index(args[pos]) != pos:
        return None       # the first position's contribution holds this one
    g = G.materialize(g, n)
    parts = [G.slice(g, key) for a, key in zip(args, concat_windows(G, n)) if a == args[pos]]
    if len(parts) == 1:
        return parts[0]
    return G.map(sp.Add(*[arg_symbol(i) for i in range(len(parts))]), parts, rule="concat")


def _stacked(G, n) -> bool:
    """Whether a concat is a stack: each argument its source with a 1 inserted at the axis."""
    (axis,) = G.node(n)["attrs"]
    for x in G.node(n)["args"]:
        node = G.node(x)
        shape = node["shape"]
        if node["op"] != "reshape" or shape[axis] != 1 or \
                G.node(node["args"][0])["shape"] != shape[:axis] + shape[axis + 1:]:
            return False
    return True


def _concat_text(G, n, a):
    """``concat(a, b, axis=1)``; ``stack(a, b)`` for the concat a stack lowers to."""
    (axis,) = G.node(n)["attrs"]
    return call("stack" if _stacked(G, n) else "concat", *a,
                *([Kw(sp.Symbol("axis"), sp.Integer(axis))] if axis else []))


def _concat_term(G, n, x, g, sym, rule):
    shape = G.node(n)["shape"]
    parts = [Index(g, sp.Symbol(key_text(key, shape)))
             for a, key in zip(G.node(n)["args"], concat_windows(G, n)) if a == x]
    return sp.Add(*parts), rule, batch_note(G, n, x)


def _concat_label(G, n, pos, atom):
    return f"·[{key_text(concat_windows(G, n)[pos], G.node(n)['shape'])}]"


def _concat_summary(k, a):
    (axis,) = k.attrs
    return f"concat({', '.join(map(str, a))}{f', axis={axis}' if axis else ''})"


CONCAT = StructuralOp(
    "concat", lambda args, attrs: (concat_shape([a["shape"] for a in args], attrs[0]),
                                   any(a["batched"] for a in args)),
    _concat_vjp, text=_concat_text, term=_concat_term, label=_concat_label, summary=_concat_summary,
    symbol="concat")


# -- windows: the sliding windows of an array (im2col) and their adjoint, unwindow (col2im)
#
# windows(x; kernel, stride, padding) reads the last d = len(kernel) axes of x,
# zero-padded by padding[a] = (before, after) on axis a, through a window of size
# kernel moved by stride: per example [*lead, *S] -> [*lead, *kernel, *O] with
# O[a] = (S[a] + before + after - kernel[a]) // stride[a] + 1 (the remainder is
# dropped, as PyTorch's floor mode).  Entry [..., *k, *o] is x_padded[..., o*stride + k].
# A convolution is a contraction of the windows with the kernel (one GEMM), and a
# pooling a reduction over the window's axes.  unwindow(g; shape, kernel, stride,
# padding) is its adjoint: each window's entries added back onto the positions
# they were read from (positions in the padding dropped), of per-example shape
# [*lead, *S]; the adjoint of unwindow is windows.


def window_sizes(spatial, kernel, stride, padding) -> tuple:
    """The number of window positions along each axis: O in the note above."""
    return tuple((s + lo + hi - k) // st + 1 for s, k, st, (lo, hi) in zip(spatial, kernel, stride, padding))


def windows_tile(spatial, kernel, stride, padding) -> bool:
    """Whether the windows tile the input, side by side: no padding, and along each
    axis a stride equal to the window's size (or a single window).  They are then a
    reshape of the input (its remainder dropped), and unwindow the reshape back."""
    return all(p == (0, 0) for p in padding) and all(
        st == k or o == 1 for k, st, o in zip(kernel, stride, window_sizes(spatial, kernel, stride, padding)))


def _windows_shape(args, attrs):
    kernel, stride, padding = attrs
    shape = args[0]["shape"]
    d = len(kernel)
    return (*shape[:-d], *kernel, *window_sizes(shape[-d:], kernel, stride, padding)), args[0]["batched"]


def _unwindow_shape(args, attrs):
    spatial, kernel, stride, padding = attrs
    d = len(kernel)
    return (*args[0]["shape"][:-2 * d], *spatial), args[0]["batched"]


def window_keywords(kernel, stride, padding) -> list:
    """The display arguments after the array: the kernel, and stride= and padding=
    where they are not 1 and 0 (``windows(x, [5, 5], stride=2)``)."""
    def value(v):
        return sp.Integer(v[0]) if len(set(v)) == 1 else sp.Symbol("[" + ", ".join(map(str, v)) + "]")

    out = [sp.Symbol("[" + ", ".join(map(str, kernel)) + "]")]
    if any(s != 1 for s in stride):
        out.append(Kw(sp.Symbol("stride"), value(stride)))
    if any(p != (0, 0) for p in padding):
        symmetric = all(lo == hi for lo, hi in padding)
        out.append(Kw(sp.Symbol("padding"), value([lo for lo, _ in padding]) if symmetric else
                      sp.Symbol("[" + ", ".join(f"({lo}, {hi})" for lo, hi in padding) + "]")))
    return out


def _window_summary(what):
    def summary(k, a):
        kernel, stride, padding = k.attrs[-3:]
        return show(call(what, a[0], *window_keywords(kernel, stride, padding)))
    return summary


def _windows_vjp(G, n, pos, g):
    kernel, stride, padding = G.node(n)["attrs"]
    spatial = G.node(G.node(n)["args"][0])["shape"][-len(kernel):]
    return G.unwindow(G.materialize(g, n), spatial, kernel, stride, padding)


def _unwindow_vjp(G, n, pos, g):
    _, kernel, stride, padding = G.node(n)["attrs"]
    return G.windows(G.materialize(g, n), kernel, stride, padding)


WINDOWS = StructuralOp(
    "windows", _windows_shape, _windows_vjp,
    text=lambda G, n, a: call("windows", a[0], *window_keywords(*G.node(n)["attrs"])),
    term=lambda G, n, x, g, sym, rule: (call("unwindow", g, *window_keywords(*G.node(n)["attrs"])), rule, ""),
    label=lambda G, n, pos, atom: "unwindow", summary=_window_summary("windows"), symbol="windows")


UNWINDOW = StructuralOp(
    "unwindow", _unwindow_shape, _unwindow_vjp,
    text=lambda G, n, a: call("unwindow", a[0], *window_keywords(*G.node(n)["attrs"][1:])),
    term=lambda G, n, x, g, sym, rule: (call("windows", g, *window_keywords(*G.node(n)["attrs"][1:])), rule, ""),
    label=lambda G, n, pos, atom: "windows", summary=_window_summary("unwindow"), cost=_input_size,
    rule="windows")


# -- gather: x[tokens], the rows of x (its first axis) picked per example by an
#    integer input: tokens [T] give [T, ...], a label [] one row (attrs: none)

def _gather_shape(args, attrs):
    x, index = args
    return index["shape"] + x["shape"][1:], True


def _gather_vjp(G, n, pos, g):
    if pos == 1:
        return None  # integer tokens
    x, index = G.node(n)["args"]
    return G.scatter_rows(G.materialize(g, n), index, G.node(x)["shape"], G.node(x)["batched"])


def _gather_term(G, n, x, g, sym, rule):
    index = G.node(n)["args"][1]
    summed = "over the batch and where tokens repeat" if not G.node(x)["batched"] else "where tokens repeat"
    return g, "gather", f"added at rows [{sym(index)}] (summed {summed}; zero elsewhere)"


def _gather_summary(k, a):
    return f"{a[0]}[{a[1]}] (rows picked by {a[1]})"


GATHER = StructuralOp(
    "gather", _gather_shape, _gather_vjp,
    text=lambda G, n, a: Index(a[0], a[1]), term=_gather_term,
    label=lambda G, n, pos, atom: f"rows [{atom(G.node(n)['args'][1])}]",
    summary=_gather_summary, symbol="[tokens]")


# -- scatter_rows: zeros of the gathered array's shape, each row of g added at the row
#    its token names, summed where tokens repeat (and over the batch for an array
#    without one): the adjoint of gather (attrs: shape, batched)

def _scatter_rows_vjp(G, n, pos, g):
    if pos == 1:
        return None
    return G.gather(G.materialize(g, n), G.node(n)["args"][1])


def _scatter_rows_summary(k, a):
    over = " and the batch" if k.args[0].batched and not k.out.batched else ""
    return f"{a[0]} added at rows [{a[1]}] of zeros of shape {list(k.out.shape)} (summed over repeats{over})"


SCATTER_ROWS = StructuralOp(
    "scatter_rows", _as_shape, _scatter_rows_vjp,
    summary=_scatter_rows_summary, cost=_input_size, rule="gather")


# -- zeros and onehot: no argument to differentiate (onehot of tokens [T]: [T, K])

ZEROS = StructuralOp("zeros", _as_shape, None)
ONEHOT = StructuralOp("onehot", lambda args, attrs: (args[0]["shape"] + (attrs[0],), True), None)


# name -> record, for every op of the graph that is not elementwise and not a leaf
STRUCTURAL_OPS = {op.name: op for op in (
    CONTRACT, REDUCE, SUM_TO, BROADCAST, RESHAPE, COPY, TAKE, SCATTER_ADD, TRANSPOSE, SLICE, UNSLICE,
    CONCAT, WINDOWS, UNWINDOW, GATHER, SCATTER_ROWS, ZEROS, ONEHOT,
)}
# the leaves and the elementwise map: every other op of the graph
LEAF_OPS = ("input", "param", "const", "batch_size")


def vjp_rule(op: str):
    """The VJP rule of a graph op: SymPy's derivative for ``map``, the record's for a
    structural op; None for a leaf and for an op nothing flows back through."""
    if op == "map":
        return vjp_map
    record = STRUCTURAL_OPS.get(op)
    return record.vjp if record is not None else None
