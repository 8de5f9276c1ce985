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


# ---------------------------------------------------------------------------
# compile() pauses the cyclic collector (bpcompile/compiler.py, _collector_paused)

def test_compile_leaves_the_collector_as_it_found_it():
    import gc

    import bpcompile
    from conftest import ROOT
    spec = ROOT / "examples" / "tanh_regression.yaml"
    assert gc.isenabled()
    bpcompile.compile(spec)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        bpcompile.compile(spec)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(bpcompile.SpecError):
        bpcompile.compile("name: x\n")
    assert gc.isenabled()


def test_compile_keeps_what_the_caller_froze_frozen():
    """A caller's gc.freeze() (before forking workers, say) is not undone."""
    import gc

    import bpcompile
    from conftest import ROOT
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        bpcompile.compile(ROOT / "examples" / "tanh_regression.yaml")
        # not unfrozen (a few frozen objects may be freed meanwhile, by reference counting)
        assert frozen // 2 < gc.get_freeze_count() <= frozen and gc.isenabled()
    finally:
        gc.unfreeze()


def test_garbage_cycles_made_during_a_compile_are_still_collected():
    """The compile's objects join the oldest generation; a full collection frees
    the cycles among them once nothing refers to them."""
    import gc
    import weakref

    import bpcompile
    from conftest import ROOT
    compiled = bpcompile.compile(ROOT / "examples" / "tanh_regression.yaml")

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    compiled.cycle = a
    alive = weakref.ref(a)
    del a, b, compiled
    gc.collect()
    assert alive() is None
