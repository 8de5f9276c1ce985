"""The spec language's structural functions: one ``SpecFunction`` record each.

A record says how the function is called (its arguments, float arrays or integer
class labels, and its keywords) and how a call lowers to graph nodes.  The
lowering (``frontend/graph.py``) checks a call against the record, lowers its
arguments, and hands them to the record's ``lower``; ``STRUCTURAL_FUNCTIONS`` and
``ops.FUNCTIONS`` (every function name of the spec language) come from the table.

A ``lower`` is written against the lowering ``L`` as the VJP rules are against the
graph builder: ``L.G`` is the graph builder, ``L.labels`` maps an integer input's
node (a label, or tokens) to its number of classes, ``L.err(message)`` makes a SpecError, and
``L.text(tree)`` / ``L.describe((tree, node), ...)`` quote the spec.

The softmax family is lowered stably: the row max is subtracted (a constant for
the derivative: the terms through it cancel exactly), and each function's output
node is recorded in ``G.macros``, so that the equations show its one rule and a
log or a cross-entropy of a softmax takes the stable form.  var and std are
lowered in two passes (the mean, then the mean of the squared deviations) and
recorded in ``G.macros`` too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import sympy as sp

from .. import limits
from .elementwise import arg_symbol
from .notation import Kw
from .structural import Contraction, concat_shape, normalize_axis, shape_text, window_sizes

# The kinds of a positional argument.
TENSOR = "tensor"   # a float array (an expression of the spec)
LABEL = "label"     # an integer class label input ({classes: K})
INTEGER = "integer"  # a class label, or integer tokens ({classes: V, shape: [T]})
INT = "int"         # an integer constant, written as a number (a pool size: max_pool2d(x, 2))
SHAPE = "shape"     # a list of integer constants (a shape: reshape(x, [2, 3]))

# The kinds of a keyword argument; every keyword value is a constant of the spec.
AXIS = "axis"           # an integer constant; a negative one counts from the last axis
COUNT = "count"         # an integer constant (a stride)
PADDING = "padding"     # an integer constant, or the string 'same' or 'valid'
PADDING_STRINGS = ("same", "valid")


@dataclass(frozen=True)
class CallSite:
    """A call of a spec function, its arguments lowered."""

    name: str
    args: tuple               # per argument: its node (TENSOR, LABEL, INTEGER), int (INT) or tuple of ints (SHAPE)
    trees: tuple              # the arguments as written (ast nodes, for messages)
    keywords: dict = field(default_factory=dict)   # keyword -> value (an int, or a PADDING string)


@dataclass(frozen=True)
class SpecFunction:
    """One structural function of the spec language.

    ``params``: the kind of each positional argument (TENSOR, LABEL, INTEGER, INT, SHAPE);
    ``variadic``: the last kind repeats (one or more arguments of it: concat);
    ``keywords``: keyword name -> kind (AXIS, COUNT, PADDING), each optional;
    ``vector``: its first argument needs an axis (the function works on the last
    one); ``lower(L, CallSite) -> node``.  The spec reader's whitelist reads the
    kinds too (frontend/spec.py): a constant argument is checked as written."""

    name: str
    params: tuple
    lower: Callable
    keywords: dict = field(default_factory=dict, compare=False)
    vector: bool = False
    variadic: bool = False

    @property
    def arity(self) -> int:
        return len(self.params)

    def kind(self, pos: int) -> str:
        """The kind of positional argument ``pos`` (the last kind repeats when variadic)."""
        return self.params[min(pos, len(self.params) - 1)] if self.variadic else self.params[pos]

    def arity_text(self) -> str:
        """How many arguments it takes, for messages: ``2 arguments``, ``2 or more arguments``."""
        n = self.arity
        if self.variadic:
            return f"{n} or more arguments"
        return f"{n} argument{'s' if n > 1 else ''}"

    def keyword_text(self) -> str:
        """The keywords it takes, for messages: ``axis=``, ``stride= and padding=``."""
        names = [f"{k}=" for k in self.keywords]
        return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


# -- reductions: sum, mean, max, over every axis or one (axis=k) ----------------

def _reduced_axes(L, c: CallSite, shape) -> tuple:
    """The axes a reduction's call reduces: ``axis=k`` (negative counts from the
    end, checked against the first argument's shape), or every axis."""
    axis = c.keywords.get("axis")
    if axis is None:
        return tuple(range(len(shape)))
    return (normalize_axis(axis, len(shape), lambda: f"{L.text(c.trees[0])} of shape {shape_text(shape)}"),)


def _reduction(kind: str, mean: bool = False):
    def lower(L, c: CallSite):
        x = c.args[0]
        shape = L.G.node(x)["shape"]
        axes = _reduced_axes(L, c, shape)
        if not axes:
            return x
        out = L.G.reduce(x, kind, axes)
        if mean:
            count = math.prod(shape[a] for a in axes)
            out = L.G.map(arg_symbol(0) / count, [out], rule="mean")
        return out
    return lower


# -- var, std: population variance and standard deviation, two-pass ---------------

def _spread(std: bool):
    """var(x, axis=k): the mean of the squared deviations from the mean, divided by
    the count n (the population variance, NumPy's default); std = sqrt(var).

    Two passes, as NumPy computes it: the mean first, then the mean of the squared
    deviations (no cancellation, as E[x**2] - E[x]**2 would have).  The mean is a
    constant for the derivative (``nograd``), as the row max of softmax is: its
    terms cancel exactly (d var/d mean = -2/n * sum(x - mean) = 0), so the adjoint
    is the existing rules' x_bar = 2*(x - mean)*var_bar/n, and
    x_bar = (x - mean)*std_bar/(n*std) for std, whose derivative is infinite at
    zero variance (every entry equal): there the gradient is not finite (0/0, NaN,
    as in PyTorch and JAX); sqrt(var(x) + eps) has a finite one.  Each output is
    recorded in ``G.macros`` with its reduced axes, so the equations show one rule."""
    def lower(L, c: CallSite):
        G, x = L.G, c.args[0]
        shape = G.node(x)["shape"]
        axes = _reduced_axes(L, c, shape)
        if not axes:
            # one entry: no spread (a 0 of x's shape)
            return G.map(arg_symbol(0) - arg_symbol(0), [x])
        n = math.prod(shape[a] for a in axes)
        total = G.reduce(x, "sum", axes, keepdims=True, nograd=True)
        squares = G.map((arg_symbol(0) - arg_symbol(1) / n) ** 2, [x, total], rule="var")
        var = G.map(arg_symbol(0) / n, [G.reduce(squares, "sum", axes)], rule="var")
        _macro(G, var, "var", x, axes)
        if not std:
            return var
        out = G.map(sp.sqrt(arg_symbol(0)), [var], rule="std")
        _macro(G, out, "std", x, axes)
        return out
    return lower


def _macro(G, out, kind, x, axes):
    """Record ``out`` as the function ``kind`` of ``x`` over ``axes``, unless folding
    made it something other than a node of its own (the var of a constant)."""
    if G.node(out)["op"] == "map":
        G.macros[out] = (kind, x, axes)


# -- dot, onehot ------------------------------------------------------------------

def _dot(L, c: CallSite):
    (a, b), (ta, tb) = c.args, c.trees
    sa, sb = L.G.node(a)["shape"], L.G.node(b)["shape"]
    if len(sa) != 1 or sa != sb:
        raise L.err(f"dot() takes two vectors of one length: {L.describe((ta, a), (tb, b))}")
    return L.G.contract(a, b, Contraction("i", "i", ""))


def _onehot(L, c: CallSite):
    """onehot(label): [K]; onehot(tokens): [T, V], a one-hot row per token."""
    label = c.args[0]
    return L.G.onehot(label, L.labels[label])


# -- the softmax family, stable -----------------------------------------------------

def exp_sum(G, x):
    """(m, e, s): the row max (no gradient), exp(x - m), and its row sum."""
    last = len(G.node(x)["shape"]) - 1
    m = G.reduce(x, "max", (last,), keepdims=True, nograd=True)
    e = G.map(sp.exp(arg_symbol(0) - arg_symbol(1)), [x, m], rule="exp")
    s = G.reduce(e, "sum", (last,), keepdims=True)
    return m, e, s


def lse_args(G, x):
    m, _, s = exp_sum(G, x)
    return [m, s]


# over symbols [x, m, s]: logsumexp = m + log(s)
LSE = arg_symbol(1) + sp.log(arg_symbol(2))


def softmax(G, x):
    _, e, s = exp_sum(G, x)
    out = G.map(arg_symbol(0) / arg_symbol(1), [e, s], rule="softmax")
    G.macros[out] = ("softmax", x, None)
    return out


def log_softmax(G, x):
    out = G.map(arg_symbol(0) - LSE, [x, *lse_args(G, x)], rule="log_softmax")
    G.macros[out] = ("log_softmax", x, None)
    return out


def logsumexp(G, x):
    lse = G.map(LSE.xreplace({arg_symbol(1): arg_symbol(0), arg_symbol(2): arg_symbol(1)}),
                lse_args(G, x), rule="logsumexp")
    out = G.reshape(lse, G.node(x)["shape"][:-1])
    G.macros[out] = ("logsumexp", x, None)
    return out


def _cross_entropy(L, c: CallSite):
    """cross_entropy(p, label) = -log p[label]; softmax_cross_entropy(z, label) =
    logsumexp(z) - z[label], whose adjoint is y_hat - onehot(label).  A
    cross_entropy of a softmax is lowered as the softmax_cross_entropy of its input."""
    G, f = L.G, c.name
    x, label = c.args
    shape = G.node(x)["shape"]
    classes = L.labels[label]
    if shape != (classes,):
        raise L.err(f"{f}() needs a vector of {classes} class scores, but {L.text(c.trees[0])!r} "
                    f"has shape {shape_text(shape)}")
    if f == "cross_entropy" and G.macros.get(x, ("",))[0] == "softmax":
        # -log softmax(z)[label] = logsumexp(z) - z[label]: the stable rule
        f, x = "softmax_cross_entropy", G.macros[x][1]
    if f == "cross_entropy":
        picked = G.take(x, label)
        return G.map(-sp.log(arg_symbol(0)), [picked], rule="cross_entropy")
    m, s = lse_args(G, x)
    picked = G.take(x, label)
    out = G.map(arg_symbol(1) + sp.log(arg_symbol(2)) - arg_symbol(0),
                [picked, G.reshape(m, ()), G.reshape(s, ())], rule="softmax_cross_entropy")
    G.macros[out] = ("softmax_cross_entropy", x, label)
    return out


# -- convolutions and pooling: the windows of the input (im2col), then one contraction
# with the kernel (a GEMM) or a reduction over each window.  Their VJPs are those of
# the contraction, the reduction and the windows; the equations show each call as
# one rule (``G.macros``, ``ir/equations.py``).

# per-example subscripts: the kernel [O, C, *K], the windows [C, *K, *P] (P the output
# positions), the output [O, *P]  ('n' is the batch axis of the printers: never used here)
_CONV_INDICES = {1: ("i", "l"), 2: ("ij", "hw")}
_SPATIAL = {1: "L", 2: "H, W"}
_KERNEL = {1: "K", 2: "KH, KW"}


def _check_stride(L, c, f, default=1) -> int:
    stride = c.keywords.get("stride", default)
    if stride < 1:
        raise L.err(f"{f}(): stride must be at least 1, got stride={stride}")
    return stride


def _check_windows(L, f, x, tree, kernel, stride, padding, what) -> None:
    """Every window fits the padded input, and the windows fit MAX_SHAPE_ELEMENTS."""
    shape = L.G.node(x)["shape"]
    spatial = shape[-len(kernel):]
    for axis, (size, k, (lo, hi)) in enumerate(zip(spatial, kernel, padding)):
        if size + lo + hi < k:
            padded = f" ({size + lo + hi} with its padding)" if lo or hi else ""
            raise L.err(f"{f}(): {what} {k} is larger than the input: {L.text(tree)!r} of shape "
                        f"{shape_text(shape)} has size {size}{padded} along axis {len(shape) - len(kernel) + axis}")
    positions = window_sizes(spatial, kernel, (stride,) * len(kernel), padding)
    count = math.prod(shape[:-len(kernel)]) * math.prod(kernel) * math.prod(positions)
    if count > limits.MAX_SHAPE_ELEMENTS:
        raise L.err(f"{f}(): the windows of {L.text(tree)!r} have {count:,} elements per example, more than "
                    f"MAX_SHAPE_ELEMENTS ({limits.MAX_SHAPE_ELEMENTS:,})")


def _conv(d: int):
    """conv1d / conv2d: x [C, *S] per example, w [O, C, *K] -> [O, *P]; PyTorch's
    conv (a cross-correlation), zero padding, stride; padding='same' keeps the
    size (stride 1 only, as PyTorch: an even kernel pads one more after than before)."""
    f = f"conv{d}d"
    k_idx, p_idx = _CONV_INDICES[d]

    def lower(L, c: CallSite):
        x, w = c.args
        tx, tw = c.trees
        sx, sw = L.G.node(x)["shape"], L.G.node(w)["shape"]
        if len(sx) != d + 1:
            raise L.err(f"{f}() takes an input of shape [C, {_SPATIAL[d]}] per example, but {L.text(tx)!r} "
                        f"has shape {shape_text(sx)}")
        if len(sw) != d + 2:
            raise L.err(f"{f}() takes a kernel of shape [O, C, {_KERNEL[d]}], but {L.text(tw)!r} "
                        f"has shape {shape_text(sw)}")
        if sw[1] != sx[0]:
            raise L.err(f"{f}(): channel mismatch: the kernel {L.text(tw)!r} of shape {shape_text(sw)} takes "
                        f"{sw[1]} input channels, but {L.text(tx)!r} of shape {shape_text(sx)} has {sx[0]}")
        stride = _check_stride(L, c, f)
        kernel = sw[2:]
        padding = c.keywords.get("padding", 0)
        if padding == "same":
            if stride != 1:
                raise L.err(f"{f}(): padding='same' needs stride=1 (as in PyTorch: with a stride the output "
                            f"cannot keep the input's size), got stride={stride}; give the padding as a number")
            pads = tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel)
        elif padding == "valid":
            pads = ((0, 0),) * d
        elif padding < 0:
            raise L.err(f"{f}(): padding must be at least 0, got padding={padding}")
        else:
            pads = ((padding, padding),) * d
        _check_windows(L, f, x, tx, kernel, stride, pads, "the kernel's size")
        X = L.G.windows(x, kernel, (stride,) * d, pads)
        out = L.G.contract(w, X, Contraction("oc" + k_idx, "c" + k_idx + p_idx, "o" + p_idx))
        L.G.macros[out] = (f, x, w)
        L.G.macro_keywords[out] = _call_keywords(stride, padding)
        return out
    return lower


def _pool(kind: str):
    """max_pool2d / avg_pool2d: x [C, H, W] per example -> the max or the mean of each
    k x k window, moved by stride (default k); the remainder is dropped (PyTorch's
    floor mode).  max's adjoint goes to each window's maximum, split equally between
    tied entries (the reduction's rule: deterministic)."""
    f = f"{kind}_pool2d"

    def lower(L, c: CallSite):
        x, k = c.args
        tx = c.trees[0]
        shape = L.G.node(x)["shape"]
        if len(shape) != 3:
            raise L.err(f"{f}() takes an input of shape [C, H, W] per example, but {L.text(tx)!r} "
                        f"has shape {shape_text(shape)}")
        if k < 1:
            raise L.err(f"{f}(): the pool size must be at least 1, got {k}")
        stride = _check_stride(L, c, f, default=k)
        pads = ((0, 0), (0, 0))
        _check_windows(L, f, x, tx, (k, k), stride, pads, "the pool size")
        X = L.G.windows(x, (k, k), (stride, stride), pads)
        out = L.G.reduce(X, "max" if kind == "max" else "sum", (1, 2))
        if kind == "avg":
            out = L.G.map(arg_symbol(0) / (k * k), [out], rule=f)
        L.G.macros[out] = (f, x, None)
        L.G.macro_keywords[out] = (sp.Integer(k),) + ((Kw(sp.Symbol("stride"), sp.Integer(stride)),)
                                                       if stride != k else ())
        return out
    return lower


def _call_keywords(stride, padding) -> tuple:
    """stride= and padding= as a call displays them, where they are not the default."""
    out = []
    if stride != 1:
        out.append(Kw(sp.Symbol("stride"), sp.Integer(stride)))
    if padding not in (0, "valid"):
        out.append(Kw(sp.Symbol("padding"), sp.Integer(padding) if isinstance(padding, int)
                      else sp.Symbol(repr(padding))))
    return tuple(out)


def _of_x(fn):
    """The lowering of a function of one array: ``fn(G, x)``."""
    return lambda L, c: fn(L.G, c.args[0])


# -- shapes: reshape, flatten, concat, stack ----------------------------------------

def _reshape(L, c: CallSite):
    """reshape(x, [d1, d2, ...]): the entries of x, in row-major order, in a new
    per-example shape; one size may be -1 (the one that makes the sizes match)."""
    x, wanted = c.args
    shape = L.G.node(x)["shape"]
    size = math.prod(shape)
    what = f"{L.text(c.trees[0])!r} of shape {shape_text(shape)} ({size} entries)"
    if wanted.count(-1) > 1:
        raise L.err(f"reshape() takes at most one -1 in a shape, got {shape_text(wanted)}")
    if any(d < 1 and d != -1 for d in wanted):
        raise L.err(f"reshape() needs sizes of at least 1 (or one -1), got {shape_text(wanted)}")
    if -1 in wanted:
        known = math.prod(d for d in wanted if d != -1)
        if size % known:
            raise L.err(f"reshape() cannot make {what} into {shape_text(wanted)}: {size} is not a multiple of {known}")
        wanted = tuple(size // known if d == -1 else d for d in wanted)
    if math.prod(wanted) != size:
        raise L.err(f"reshape() cannot make {what} into {shape_text(wanted)} ({math.prod(wanted)} entries)")
    return L.G.reshape(x, wanted)


def _flatten(L, c: CallSite):
    """flatten(x): the entries of x in one axis (row-major; a scalar is one entry)."""
    x = c.args[0]
    return L.G.reshape(x, (math.prod(L.G.node(x)["shape"]),))


def _joined(L, c: CallSite, stacked: bool):
    """concat(a, b, ..., axis=0): arrays of one rank joined along an axis, their shapes
    equal on the others; stack(a, b, ..., axis=0): arrays of one shape joined along
    a new axis (the concat of each with a 1 inserted at the axis).  The axis
    counts the per-example axes, from the last when negative; NumPy's default 0."""
    f, G = c.name, L.G
    shapes = [G.node(a)["shape"] for a in c.args]
    pairs = list(zip(c.trees, c.args))
    for tree, shape in zip(c.trees, shapes):
        if not shape and not stacked:
            raise L.err(f"concat() joins arrays along an axis, but {L.text(tree)!r} is a scalar; "
                        "stack() joins scalars into a vector")
    if stacked and len(set(shapes)) > 1:
        raise L.err(f"stack() needs arrays of one shape: {L.describe(*pairs)}")
    if not stacked and len({len(s) for s in shapes}) > 1:
        raise L.err(f"concat() needs arrays of one rank: {L.describe(*pairs)}")
    rank = len(shapes[0]) + stacked
    if rank > limits.MAX_SHAPE_AXES:
        raise L.err(f"{f}() would make an array of {rank} axes; shapes have at most {limits.MAX_SHAPE_AXES}")
    axis = normalize_axis(c.keywords.get("axis", 0), rank,
                          lambda: f"{f}() of {'shapes' if len(shapes) > 1 else 'shape'} "
                                  f"{', '.join(shape_text(s) for s in shapes)}")
    args = list(c.args)
    if stacked:
        args = [G.reshape(a, s[:axis] + (1,) + s[axis:]) for a, s in zip(args, shapes)]
        shapes = [G.node(a)["shape"] for a in args]
    elif len({s[:axis] + s[axis + 1:] for s in shapes}) > 1:
        raise L.err(f"concat() along axis {axis} needs shapes equal on every other axis: {L.describe(*pairs)}")
    out = concat_shape(shapes, axis)
    if math.prod(out) > limits.MAX_SHAPE_ELEMENTS:
        raise L.err(f"{f}() would make an array of {math.prod(out):,} entries per example, more than "
                    f"limits.MAX_SHAPE_ELEMENTS ({limits.MAX_SHAPE_ELEMENTS:,})")
    return G.concat(args, axis, rule=f)


# name -> record, in the order the spec language lists them
SPEC_FUNCTIONS = {f.name: f for f in (
    SpecFunction("sum", (TENSOR,), _reduction("sum"), keywords={"axis": AXIS}),
    SpecFunction("mean", (TENSOR,), _reduction("sum", mean=True), keywords={"axis": AXIS}),
    SpecFunction("max", (TENSOR,), _reduction("max"), keywords={"axis": AXIS}),
    SpecFunction("var", (TENSOR,), _spread(std=False), keywords={"axis": AXIS}),
    SpecFunction("std", (TENSOR,), _spread(std=True), keywords={"axis": AXIS}),
    SpecFunction("softmax", (TENSOR,), _of_x(softmax), vector=True),
    SpecFunction("log_softmax", (TENSOR,), _of_x(log_softmax), vector=True),
    SpecFunction("logsumexp", (TENSOR,), _of_x(logsumexp), vector=True),
    SpecFunction("onehot", (INTEGER,), _onehot),
    SpecFunction("dot", (TENSOR, TENSOR), _dot),
    SpecFunction("cross_entropy", (TENSOR, LABEL), _cross_entropy),
    SpecFunction("softmax_cross_entropy", (TENSOR, LABEL), _cross_entropy),
    SpecFunction("reshape", (TENSOR, SHAPE), _reshape),
    SpecFunction("flatten", (TENSOR,), _flatten),
    SpecFunction("concat", (TENSOR,), lambda L, c: _joined(L, c, False), keywords={"axis": AXIS}, variadic=True),
    SpecFunction("stack", (TENSOR,), lambda L, c: _joined(L, c, True), keywords={"axis": AXIS}, variadic=True),
    SpecFunction("conv1d", (TENSOR, TENSOR), _conv(1), keywords={"stride": COUNT, "padding": PADDING}),
    SpecFunction("conv2d", (TENSOR, TENSOR), _conv(2), keywords={"stride": COUNT, "padding": PADDING}),
    SpecFunction("max_pool2d", (TENSOR, INT), _pool("max"), keywords={"stride": COUNT}),
    SpecFunction("avg_pool2d", (TENSOR, INT), _pool("avg"), keywords={"stride": COUNT}),
)}

# Functions of the spec language that are not elementwise.
STRUCTURAL_FUNCTIONS = tuple(SPEC_FUNCTIONS)
