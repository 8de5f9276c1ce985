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
    if g is None:
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


RESHAPE = StructuralOp(
    "reshape", lambda args, attrs: (tuple(attrs[0]), args[0]["batched"]), _reshape_vjp,
    text=_as_arg, summary=_as_shape_summary, drawn=False)


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


# -- index: x[i], a constant index on the first axis (attrs: i)

def _index_vjp(G, n, pos, g):
    node = G.node(n)
    (i,) = node["attrs"]
    x = node["args"][0]
    return G.embed(G.materialize(g, n), G.node(x)["shape"], i)


def _index_text(G, n, a):
    (i,) = G.node(n)["attrs"]
    return Index(a[0], sp.sympify(i) if isinstance(i, int) else sp.Symbol(str(i)))


INDEX = StructuralOp(
    "index", lambda args, attrs: (args[0]["shape"][1:], args[0]["batched"]), _index_vjp,
    text=_index_text,
    term=lambda G, n, x, g, sym, rule: (g, "index", f"at [{G.node(n)['attrs'][0]}] (zero elsewhere)"))


# -- embed: zeros of a shape with g at [i] (the adjoint of index; attrs: shape, i)

def _embed_vjp(G, n, pos, g):
    (shape, i) = G.node(n)["attrs"]
    return G.index(G.materialize(g, n), i)


EMBED = StructuralOp(
    "embed", lambda args, attrs: (tuple(attrs[0]), args[0]["batched"]), _embed_vjp, rule="index")


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
    CONTRACT, REDUCE, SUM_TO, BROADCAST, RESHAPE, COPY, TAKE, SCATTER_ADD, TRANSPOSE, INDEX, EMBED,
    GATHER, SCATTER_ROWS, ZEROS, ONEHOT,
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
