"""Elementwise ops: each one SymPy function, and the spec language's table of them.

Their local derivatives are never written by hand: SymPy differentiates the
expression and the result is rewritten in terms of the op's own output where that
is cheaper (``1 - e**2`` for ``e = tanh(a)``, ``s*(1 - s)`` for ``s = sigmoid(a)``).
"""

from __future__ import annotations

import functools

import sympy as sp

# ---------------------------------------------------------------------------
# SymPy functions that SymPy does not have, each with its derivative.


# Each ``eval`` folds the function of a number to a number (or to an expression
# of numbers SymPy evaluates): constant folding never leaves ``relu(0)`` for a
# printer to compute in integers.


class _RealFunction(sp.Function):
    """A function that is real and finite wherever its arguments are real.

    Saying so matters for speed, not only for correctness: without it SymPy cannot
    tell whether tanh(x + sigmoid(x)) is real, and asks again through as_real_imag
    at every level of a nested chain (20 nested tanh took minutes to fuse)."""

    def _eval_is_extended_real(self):
        if all(a.is_extended_real for a in self.args):
            return True
        return None

    def _eval_is_finite(self):
        if all(a.is_finite for a in self.args):
            return True
        return None


class sigmoid(_RealFunction):
    """1 / (1 + exp(-x)); derivative s * (1 - s)."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return 1 / (1 + sp.exp(-x)) if x >= 0 else sp.exp(x) / (1 + sp.exp(x))
        return None

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)


class softplus(_RealFunction):
    """log(1 + exp(x)); derivative sigmoid(x)."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return x + sp.log(1 + sp.exp(-x)) if x >= 0 else sp.log(1 + sp.exp(x))
        return None

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class step(_RealFunction):
    """1 where x > 0, else 0 (the derivative of relu; its own is taken as 0)."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return sp.S.One if x > 0 else sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return sp.S.Zero


class relu(_RealFunction):
    """max(x, 0); derivative step(x), written step(relu(x)) so that the rule reads
    the forward output (relu(z) > 0 exactly when z > 0) and z need not stay alive."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return x if x > 0 else sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return step(self)


class equal(_RealFunction):
    """1 where a == b, else 0 (routes the adjoint of max to the maximum)."""

    @classmethod
    def eval(cls, a, b):
        if a.is_Number and b.is_Number:
            return sp.S.One if a == b else sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return sp.S.Zero


def _square(x):
    return x**2


# name -> SymPy function of one argument.  The rule name in comments is the key.
ELEMENTWISE = {
    "tanh": sp.tanh,
    "sigmoid": sigmoid,
    "relu": relu,
    "exp": sp.exp,
    "log": sp.log,
    "sin": sp.sin,
    "cos": sp.cos,
    "sqrt": sp.sqrt,
    "abs": sp.Abs,
    "softplus": softplus,
    "square": _square,
}

# Binary operators of the spec language, as SymPy on two argument symbols.
BINARY = {
    "Add": (lambda a, b: a + b, "add"),
    "Sub": (lambda a, b: a - b, "sub"),
    "Mult": (lambda a, b: a * b, "mul"),
    "Div": (lambda a, b: a / b, "div"),
    "Pow": (lambda a, b: a**b, "pow"),
}

# Functions of the spec language that are not elementwise (see graph.Lowering).
STRUCTURAL_FUNCTIONS = (
    "sum", "mean", "max", "softmax", "log_softmax", "logsumexp", "onehot", "dot",
    "cross_entropy", "softmax_cross_entropy",
)
FUNCTIONS = tuple(ELEMENTWISE) + STRUCTURAL_FUNCTIONS


def stable_log(u: sp.Expr):
    """``log(u)`` in a form that neither overflows nor loses the small values, for
    the common patterns; None when ``u`` is none of them.

    log(sigmoid(x)) = -softplus(-x), log(1 - sigmoid(x)) = -softplus(x),
    log(1 + exp(x)) = softplus(x), log(1/u) = -log(u) for those.  (A sigmoid is
    1 in floating point for x above about 37, so log(1 - sigmoid(x)) would be
    log(0); and it rounds small values away, so log(sigmoid(-40)) would be too.)
    """
    if isinstance(u, sigmoid):
        return -softplus(-u.args[0])
    if u.is_Pow and u.exp == -1:
        inner = stable_log(u.base)
        return -inner if inner is not None else None
    if u.is_Add and len(u.args) == 2 and sp.S.One in u.args:
        (rest,) = [a for a in u.args if a != sp.S.One]
        if isinstance(-rest, sigmoid):
            return -softplus((-rest).args[0])
        if isinstance(rest, sp.exp):
            return softplus(rest.args[0])
    return None


def arg_symbol(i: int) -> sp.Symbol:
    """The symbol for argument ``i`` of a map node's expression."""
    return sp.Symbol(f"_{i}", real=True)


OUT = sp.Symbol("_out", real=True)


@functools.lru_cache(maxsize=4096)
def local_derivative(expr: sp.Expr, i: int) -> sp.Expr:
    """d expr / d arg_i, rewritten in terms of the output (``OUT``) where it occurs.

    ``tanh(_0)`` gives ``1 - _out**2``; ``exp(_0)`` gives ``_out``; ``_0*_1``
    gives ``_1``.  Replacing the output by its symbol is what lets the backward
    pass reuse the forward value instead of recomputing it.
    """
    d = sp.diff(expr, arg_symbol(i))
    if expr.is_Symbol or expr.is_Number:
        return d
    return d.xreplace({expr: OUT})


