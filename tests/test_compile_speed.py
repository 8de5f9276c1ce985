"""The compile-time shortcuts give what the plain paths give.

``replace_unevaluated`` stands in for ``with sp.evaluate(False): expr.xreplace(subs)``
(the flag clears SymPy's cache on every flip); here it is compared with that on
every elementwise op's local derivative, structurally (srepr) and as printed.
"""

from __future__ import annotations

import pytest
import sympy as sp

from bpcompile.ir.equations import replace_unevaluated
from bpcompile.ops import BINARY, ELEMENTWISE, OUT, arg_symbol, local_derivative

y, g, w = (sp.Symbol(n, real=True) for n in ("y", "g", "w"))
# what a node's arguments display as: names, and expressions that evaluation would change
DISPLAYS = [{arg_symbol(0): y, arg_symbol(1): g, OUT: w},
            {arg_symbol(0): y - g, arg_symbol(1): 2 * g, OUT: sp.tanh(y)},
            {arg_symbol(0): sp.Integer(2), arg_symbol(1): sp.Rational(1, 2), OUT: sp.Integer(0)}]


def _expressions():
    for name, rec in ELEMENTWISE.items():
        args = [arg_symbol(i) for i in range(rec.arity)]
        # a required parameter (clip's lo and hi, default None) takes 0, 1, ...: ascending
        yield name, rec(*args, *(sp.Integer(k) if d is None else d for k, (_, d) in enumerate(rec.params)))
    for name, (fn, _) in BINARY.items():
        yield name, fn(arg_symbol(0), arg_symbol(1))
    yield "square of a difference", (arg_symbol(0) - arg_symbol(1)) ** 2 / 2


def _plain(expr, subs):
    with sp.evaluate(False):
        return expr.xreplace(subs)


@pytest.mark.parametrize("name,expr", list(_expressions()), ids=[n for n, _ in _expressions()])
def test_replace_unevaluated_is_xreplace_under_the_flag(name, expr):
    for i in range(len(expr.free_symbols - {OUT})):
        d = local_derivative(expr, i)
        for subs in DISPLAYS:
            fast, plain = replace_unevaluated(d, subs), _plain(d, subs)
            assert sp.srepr(fast) == sp.srepr(plain), (name, i, subs)
            assert str(fast) == str(plain)


def test_replace_unevaluated_leaves_the_cache_and_flag_alone():
    """No flip of the global flag: what SymPy cached survives the call."""
    calls = []
    real = sp.core.cache.clear_cache
    sp.core.parameters.clear_cache = lambda: calls.append(1) or real()
    try:
        d = local_derivative((arg_symbol(0) - arg_symbol(1)) ** 2 / 2, 0)
        subs = {arg_symbol(0): y, arg_symbol(1): g}
        out = replace_unevaluated(d, subs)
    finally:
        sp.core.parameters.clear_cache = real
    assert calls == []
    assert sp.srepr(out) == sp.srepr(_plain(d, subs))
    assert sp.core.parameters.global_parameters.evaluate is True


def test_replace_unevaluated_falls_back_for_other_kinds():
    """A node whose class reads the flag its own way (Max) is replaced under the flag."""
    expr = sp.Max(arg_symbol(0), arg_symbol(1)) + arg_symbol(0)
    subs = {arg_symbol(0): sp.Integer(1), arg_symbol(1): sp.Integer(2)}
    assert sp.srepr(replace_unevaluated(expr, subs)) == sp.srepr(_plain(expr, subs))
