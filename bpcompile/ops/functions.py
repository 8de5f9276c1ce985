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
log or a cross-entropy of a softmax takes the stable form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import sympy as sp

from .elementwise import arg_symbol
from .structural import Contraction, normalize_axis, shape_text

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

def _reduction(kind: str, mean: bool = False):
    def lower(L, c: CallSite):
        x = c.args[0]
        shape = L.G.node(x)["shape"]
        axis = c.keywords.get("axis")
        if axis is None:
            axes = tuple(range(len(shape)))
        else:
            axes = (normalize_axis(axis, len(shape), lambda: f"{L.text(c.trees[0])} of shape {shape_text(shape)}"),)
        if not axes:
            return x
        out = L.G.reduce(x, kind, axes)
        if mean:
            count = math.prod(shape[a] for a in axes)
            out = L.G.map(arg_symbol(0) / count, [out], rule="mean")
        return out
    return lower


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


def _of_x(fn):
    """The lowering of a function of one array: ``fn(G, x)``."""
    return lambda L, c: fn(L.G, c.args[0])


# name -> record, in the order the spec language lists them
SPEC_FUNCTIONS = {f.name: f for f in (
    SpecFunction("sum", (TENSOR,), _reduction("sum"), keywords={"axis": AXIS}),
    SpecFunction("mean", (TENSOR,), _reduction("sum", mean=True), keywords={"axis": AXIS}),
    SpecFunction("max", (TENSOR,), _reduction("max"), keywords={"axis": AXIS}),
    SpecFunction("softmax", (TENSOR,), _of_x(softmax), vector=True),
    SpecFunction("log_softmax", (TENSOR,), _of_x(log_softmax), vector=True),
    SpecFunction("logsumexp", (TENSOR,), _of_x(logsumexp), vector=True),
    SpecFunction("onehot", (INTEGER,), _onehot),
    SpecFunction("dot", (TENSOR, TENSOR), _dot),
    SpecFunction("cross_entropy", (TENSOR, LABEL), _cross_entropy),
    SpecFunction("softmax_cross_entropy", (TENSOR, LABEL), _cross_entropy),
)}

# Functions of the spec language that are not elementwise.
STRUCTURAL_FUNCTIONS = tuple(SPEC_FUNCTIONS)
