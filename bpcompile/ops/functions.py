"""The spec language's structural functions: one ``SpecFunction`` record each.

A record says how the function is called (its arguments, float arrays or integer
class labels, and its keywords) and how a call lowers to graph nodes.  The
lowering (``frontend/graph.py``) checks a call against the record, lowers its
arguments, and hands them to the record's ``lower``; ``STRUCTURAL_FUNCTIONS`` and
``ops.FUNCTIONS`` (every function name of the spec language) come from the table.

A ``lower`` is written against the lowering ``L`` as the VJP rules are against the
graph builder: ``L.G`` is the graph builder, ``L.labels`` maps a label input's
node to its number of classes, ``L.err(message)`` makes a SpecError, and
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

from .elementwise import arg_symbol
from .structural import Contraction, normalize_axis, shape_text

TENSOR = "tensor"   # an argument that is a float array
LABEL = "label"     # an argument that is an integer class label input ({classes: K})


@dataclass(frozen=True)
class CallSite:
    """A call of a spec function, its arguments lowered."""

    name: str
    args: tuple               # the arguments' nodes, in order
    trees: tuple              # the arguments as written (ast nodes, for messages)
    keywords: dict = field(default_factory=dict)   # keyword -> value (axis=k)


@dataclass(frozen=True)
class SpecFunction:
    """One structural function of the spec language.

    ``params``: per positional argument, TENSOR or LABEL; ``keywords``: the
    keyword arguments it takes; ``vector``: its first argument needs an axis (the
    function works on the last one); ``lower(L, CallSite) -> node``."""

    name: str
    params: tuple
    lower: Callable
    keywords: tuple = ()
    vector: bool = False

    @property
    def arity(self) -> int:
        return len(self.params)


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
        axis = c.keywords.get("axis")
        if axis is None:
            axes = tuple(range(len(shape)))
        else:
            axes = (normalize_axis(axis, len(shape), lambda: f"{L.text(c.trees[0])} of shape {shape_text(shape)}"),)
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
    SpecFunction("sum", (TENSOR,), _reduction("sum"), keywords=("axis",)),
    SpecFunction("mean", (TENSOR,), _reduction("sum", mean=True), keywords=("axis",)),
    SpecFunction("max", (TENSOR,), _reduction("max"), keywords=("axis",)),
    SpecFunction("var", (TENSOR,), _spread(std=False), keywords=("axis",)),
    SpecFunction("std", (TENSOR,), _spread(std=True), keywords=("axis",)),
    SpecFunction("softmax", (TENSOR,), _of_x(softmax), vector=True),
    SpecFunction("log_softmax", (TENSOR,), _of_x(log_softmax), vector=True),
    SpecFunction("logsumexp", (TENSOR,), _of_x(logsumexp), vector=True),
    SpecFunction("onehot", (LABEL,), _onehot),
    SpecFunction("dot", (TENSOR, TENSOR), _dot),
    SpecFunction("cross_entropy", (TENSOR, LABEL), _cross_entropy),
    SpecFunction("softmax_cross_entropy", (TENSOR, LABEL), _cross_entropy),
)}

# Functions of the spec language that are not elementwise.
STRUCTURAL_FUNCTIONS = tuple(SPEC_FUNCTIONS)
