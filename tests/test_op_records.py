"""One record per op, and every piece of it present where it is needed.

* every structural op the graph builder can make has a record
  (``ops.STRUCTURAL_OPS``), and the builder, the reverse pass, the equations and
  the picture read that record;
* every record has a lowering in every registered target; a target that lacks one
  fails at compile time with one line naming the op and the target, before
  anything is printed, and so does one whose expression printer cannot print a
  function;
* every function name of the spec language is handled: a ``SpecFunction`` record
  (``ops.SPEC_FUNCTIONS``) or an elementwise op, and the record's signature is
  what a call is checked against.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest
import sympy as sp

import bpcompile
from bpcompile import ops, targets
from bpcompile.frontend import graph
from bpcompile.ops.functions import INT, SHAPE
from bpcompile.targets.base import UnsupportedOp, lowering_table

# A spec whose graph (forward and adjoint) makes every structural op: contract
# (@, dot, and the GEMMs of their adjoints), reduce (sum, max, with an axis),
# sum_to, broadcast, reshape (logsumexp), copy (the mask of max's adjoint), take
# and scatter_add (cross_entropy), transpose, slice and unslice (v[0], A[1:, ::2]),
# concat, gather and scatter_rows (Em[t]), zeros (a WRT param the loss ignores),
# onehot, and windows and unwindow (conv2d, and its adjoint with respect to its input).
EVERY_OP = """\
name: every_op
inputs:
  A: [3, 4]
  x: [4]
  c: {classes: 3}
  I: [2, 4, 4]
  t: {classes: 5, shape: [2]}
params:
  W: [3, 4]
  u: [4]
  Em: [5, 4]
  unused: [2]
  K: [2, 2, 3, 3]
graph:
  C: conv2d(I, K, padding=1)
  D: A.T
  E: D * W.T
  z: W @ x
  q: dot(u, x)
  m: max(A, axis=0)
  s: sum(E, axis=1)
  p: softmax(z)
  l: logsumexp(A)
  o: onehot(c)
  j: concat(A[1:, ::2], W[:, 1:3], axis=0)
  h: z[0] + m[1] * q + s[2] + sum(l) + max(z) + sum(j * j)
  k: tanh(Em[t] @ x)
loss: h**2 + cross_entropy(p, c) - sum(o * log_softmax(z)) + sum(C * C) + sum(k)
wrt: [W, u, Em, unused, A, K, I]
"""

NON_STRUCTURAL = set(ops.LEAF_OPS) | {"map"}


@pytest.fixture(scope="module")
def every_op():
    return bpcompile.compile(EVERY_OP)


# -- every op the graph makes has a record ------------------------------------------

def _builder_ops():
    """(op, method) for every node the Graph class makes: the string literal first
    argument of each ``self._add(...)`` and ``self.structural(...)`` in its source."""
    tree = ast.parse(inspect.getsource(graph.Graph))
    found = []
    for method in tree.body[0].body:
        if not isinstance(method, ast.FunctionDef):
            continue
        for call in ast.walk(method):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) \
                    and isinstance(call.func.value, ast.Name) and call.func.value.id == "self" \
                    and call.func.attr in ("_add", "structural") and call.args \
                    and isinstance(call.args[0], ast.Constant):
                found.append((call.func.attr, call.args[0].value, method.name))
    return found


def test_every_op_the_graph_builder_makes_has_a_record():
    found = _builder_ops()
    assert found, "found no node the Graph class makes: has the builder changed shape?"
    for via, op, method in found:
        if via == "_add":
            assert op in NON_STRUCTURAL, (
                f"Graph.{method} makes '{op}' nodes through _add: a structural op goes through "
                "Graph.structural, which takes its shape from its record in ops.STRUCTURAL_OPS")
        else:
            assert op in ops.STRUCTURAL_OPS, f"Graph.{method} makes '{op}' nodes, which have no record " \
                                             "in ops.STRUCTURAL_OPS (ops/structural.py)"
    made = {op for via, op, _ in found if via == "structural"}
    assert made == set(ops.STRUCTURAL_OPS), f"records no builder makes: {set(ops.STRUCTURAL_OPS) - made}"


def test_every_record_is_made_by_a_real_spec(every_op):
    """The records are not dead code: one spec's graph has a node of each (and no
    node of an op without a record)."""
    G = every_op.lowered.graph
    seen = {G.node(n)["op"] for n in G.g.nodes}
    assert seen <= NON_STRUCTURAL | set(ops.STRUCTURAL_OPS), seen
    assert set(ops.STRUCTURAL_OPS) <= seen, f"no node of {set(ops.STRUCTURAL_OPS) - seen} in EVERY_OP"


def test_records_are_whole():
    for name, record in ops.STRUCTURAL_OPS.items():
        assert record.name == name
        assert name not in NON_STRUCTURAL
        for piece in ("shape", "text", "term", "label", "summary", "cost"):
            assert callable(getattr(record, piece)), f"the record of '{name}' has no {piece} rule"
        assert record.vjp is None or callable(record.vjp)


# -- the pipeline reads the records -------------------------------------------------

SMALL = """\
name: small
inputs:
  X: [2, 3]
params:
  v: [2]
graph:
  h: tanh(X.T @ v)
loss: sum(h)
"""


def _replace(monkeypatch, op, **pieces):
    """Put a changed copy of op's record in the registry for one test."""
    record = dataclasses.replace(ops.STRUCTURAL_OPS[op], **pieces)
    monkeypatch.setitem(ops.STRUCTURAL_OPS, op, record)
    return record


def test_the_builder_takes_shapes_from_the_record(monkeypatch):
    calls = []
    shape = ops.STRUCTURAL_OPS["contract"].shape

    def spy(args, attrs):
        calls.append(attrs[0].subscripts)
        return shape(args, attrs)

    _replace(monkeypatch, "contract", shape=spy)
    bpcompile.compile(SMALL)
    assert "ji,j->i" in calls     # X.T @ v, the transpose folded into the contraction


def test_the_reverse_pass_takes_the_vjp_from_the_record(monkeypatch):
    calls = []
    vjp = ops.STRUCTURAL_OPS["contract"].vjp

    def spy(G, n, pos, g):
        calls.append(pos)
        return vjp(G, n, pos, g)

    _replace(monkeypatch, "contract", vjp=spy)
    c = bpcompile.compile(SMALL)
    assert calls == [1]           # d/dv only: X is an input, not differentiated
    assert c.adjoints.grads["v"] is not None


def test_the_equations_and_the_picture_read_the_record(monkeypatch):
    from bpcompile.ops.notation import call
    from bpcompile.tools import draw, inspect as explain
    _replace(monkeypatch, "reduce", text=lambda G, n, a: call("total", *a),
             term=lambda G, n, x, g, sym, rule: (g, "spread", "(everywhere)"),
             label=lambda G, n, pos, atom: "ones",
             summary=lambda k, a: f"total of {a[0]}")
    c = bpcompile.compile("""\
name: r
inputs:
  x: [3]
params:
  W: [3, 3]
graph:
  h: tanh(W @ x)
loss: sum(h)**2
""")
    text = explain.as_text(explain.derive(c, naive=False))
    lines = [line.strip() for line in text.splitlines()]
    assert any(line.startswith("q2 = total(h)") for line in lines), text            # text
    assert any(line.startswith("h_bar = q2_bar (everywhere)") and line.endswith("# spread")
               for line in lines), text                                            # term
    assert any(line.startswith("t1 = total of h") for line in lines), text         # summary
    P = draw.picture_graph(c)
    assert "total(h)" in {P.nodes[n]["label"] for n in P.nodes}
    assert "ones" in {e["derivative"] for _, _, e in P.edges(data=True)}


# -- every record has a lowering in every target --------------------------------------

@pytest.mark.parametrize("target", targets.names())
@pytest.mark.parametrize("op", ["map", *ops.STRUCTURAL_OPS])
def test_every_op_has_a_lowering_in_every_target(target, op):
    printer = targets.get(target).printer
    assert op in lowering_table(printer), (
        f"the {target} target has no lowering for the op '{op}': add a method marked "
        f"@lowers({op!r}) to {printer.__module__}.{printer.__qualname__}")


def _without(printer: type, op: str) -> type:
    """A copy of a printer class (its whole MRO flattened) without the lowering of ``op``."""
    method = lowering_table(printer)[op]
    namespace = {}
    for klass in reversed(printer.__mro__[:-1]):
        namespace.update({k: v for k, v in vars(klass).items() if k not in ("__dict__", "__weakref__")})
    del namespace[method]
    return type(printer.__name__, (object,), namespace)


def _spy_on_lowerings(monkeypatch, printer: type) -> list:
    """Record every call of a lowering method of the real printer class."""
    called = []
    for op, method in lowering_table(printer).items():
        real = getattr(printer, method)

        def spy(self, *args, _real=real, _op=op, **kwargs):
            called.append(_op)
            return _real(self, *args, **kwargs)
        spy.lowers = real.lowers
        monkeypatch.setattr(printer, method, spy)
    return called


@pytest.mark.parametrize("target", targets.names())
def test_the_spies_see_printing(target, monkeypatch):
    """(The spies below do see a lowering run, when one runs.)  sum(u) reads a
    contraction: a reduce kernel on every target (the C target makes sum(h), the
    sum of a map, in the map's loop)."""
    called = _spy_on_lowerings(monkeypatch, targets.get(target).printer)
    bpcompile.compile(SMALL.replace("  h: tanh(X.T @ v)\nloss: sum(h)",
                                    "  u: X.T @ v\n  h: tanh(u)\nloss: sum(u) * sum(h)"), target=target)
    assert {"map", "contract", "reduce"} <= set(called)


@pytest.mark.parametrize("target", targets.names())
@pytest.mark.parametrize("op", ["contract", "reduce", "take", "scatter_add", "transpose", "slice", "unslice",
                                "concat", "windows", "unwindow"])
def test_a_missing_lowering_fails_at_compile_time(target, op, monkeypatch):
    t = targets.get(target)
    real = t.printer
    monkeypatch.setattr(t, "printer", _without(real, op))
    called = _spy_on_lowerings(monkeypatch, real)
    with pytest.raises(UnsupportedOp) as e:
        bpcompile.compile(EVERY_OP, target=target)
    message = str(e.value)
    assert f"the {target} target has no lowering for the op '{op}'" in message
    assert "\n" not in message
    assert called == [], f"{called[:3]} were printed before the missing lowering was found"


@pytest.mark.parametrize("target", targets.names())
def test_the_command_line_reports_a_missing_lowering(target, tmp_path, capsys, monkeypatch):
    from bpcompile.cli import main
    t = targets.get(target)
    monkeypatch.setattr(t, "printer", _without(t.printer, "take"))
    (tmp_path / "every_op.yaml").write_text(EVERY_OP)
    monkeypatch.chdir(tmp_path)
    code = main(["compile", "every_op.yaml", "--target", target, "-o", "out"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "every_op.yaml" in lines[0] and f"the {target} target" in lines[0] and "'take'" in lines[0]
    assert not (tmp_path / "out").exists()


# -- an expression printer that cannot print a function --------------------------------

class mystery(sp.Function):
    """A SymPy function no target prints (and which declares no number of arguments)."""


@pytest.mark.parametrize("target", targets.names())
def test_a_function_the_printer_cannot_print_is_named(target):
    with pytest.raises(UnsupportedOp) as e:
        targets.get(target).check_function(mystery)
    assert f"the {target} target cannot print the function 'mystery'" in str(e.value)


@pytest.mark.parametrize("target", targets.names())
def test_a_kernel_with_such_a_function_fails_before_printing(target, monkeypatch):
    """A map kernel whose expression holds a function the target cannot print:
    the compile-time check names it, and no lowering runs."""
    c = bpcompile.compile(SMALL, target=target)
    t = targets.get(target)
    programs = c.programs
    k = next(k for k in programs["value_and_grad"].kernels if k.op == "map")
    temps, expr = k.attrs
    k.attrs = (temps, mystery(expr))
    called = _spy_on_lowerings(monkeypatch, t.printer)
    with pytest.raises(UnsupportedOp) as e:
        t.render(c.lowered, c.adjoints, programs, bpcompile.__version__)
    assert f"the {target} target cannot print the function 'mystery'" in str(e.value)
    assert called == []


@pytest.mark.parametrize("target", targets.names())
def test_compile_names_a_function_the_printer_cannot_print(target, monkeypatch, tmp_path, capsys):
    """Through compile and the command line: a target whose expression printer
    lacks tanh (simulated) fails with one line naming tanh and the target."""
    t = targets.get(target)
    real = type(t).print_expr

    def without_tanh(self, expr):
        if expr.has(sp.tanh):
            raise NotImplementedError("no tanh here")
        return real(self, expr)

    monkeypatch.setattr(type(t), "print_expr", without_tanh)
    with pytest.raises(UnsupportedOp) as e:
        bpcompile.compile(SMALL, target=target)
    assert f"the {target} target cannot print the function 'tanh'" in str(e.value)
    from bpcompile.cli import main
    (tmp_path / "small.yaml").write_text(SMALL)
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "small.yaml", "--target", target, "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'tanh'" in err and target in err
    assert not (tmp_path / "out").exists()


# -- the spec language's functions ------------------------------------------------------

def test_every_function_name_is_handled():
    assert len(set(ops.FUNCTIONS)) == len(ops.FUNCTIONS), "a function name twice in ops.FUNCTIONS"
    for name in ops.FUNCTIONS:
        assert name in ops.SPEC_FUNCTIONS or name in ops.ELEMENTWISE, (
            f"'{name}' is in ops.FUNCTIONS but is neither a SpecFunction record (ops/functions.py) "
            "nor an elementwise op (ops/elementwise.py)")
    assert not set(ops.SPEC_FUNCTIONS) & set(ops.ELEMENTWISE), "a name is both structural and elementwise"
    assert ops.STRUCTURAL_FUNCTIONS == tuple(ops.SPEC_FUNCTIONS)
    assert set(ops.SPEC_FUNCTIONS) <= set(ops.FUNCTIONS)
    for name, f in ops.SPEC_FUNCTIONS.items():
        assert f.name == name and callable(f.lower) and f.arity >= 1
        assert set(f.params) <= {ops.TENSOR, ops.LABEL, ops.INTEGER, INT, SHAPE}


def _spec_calling(expr: str) -> str:
    return f"""\
name: m
inputs:
  x: [3]
  M: [2, 3]
  c: {{classes: 3}}
  I: [2, 4, 4]
params:
  w: [3]
  K: [3, 2, 3, 3]
  k: [3, 2, 2]
graph:
  h: {expr}
loss: sum(x * w)
"""


# the float arguments of the functions that need arrays of particular ranks
# (an image [C, H, W] or a sequence [C, L], and a kernel of matching channels)
_SAMPLE_TENSORS = {"conv1d": ["M", "k"], "conv2d": ["I", "K"], "max_pool2d": ["I"], "avg_pool2d": ["I"]}
# a sample argument of each other kind
SAMPLE = {ops.LABEL: "c", ops.INTEGER: "c", INT: "2", SHAPE: "[1, 3]"}


def _sample_args(f) -> list:
    """A call's arguments: one of each kind it takes (arrays of the ranks it needs),
    and for a variadic record one more of its last kind (concat(x, x): more than
    one is what it is for)."""
    tensors = iter(_SAMPLE_TENSORS.get(f.name, []))
    args = [SAMPLE[kind] if kind in SAMPLE else next(tensors, "x") for kind in f.params]
    return args + args[-1:] if f.variadic else args


@pytest.mark.parametrize("name", list(ops.SPEC_FUNCTIONS))
def test_every_spec_function_lowers(name):
    f = ops.SPEC_FUNCTIONS[name]
    c = bpcompile.compile(_spec_calling(f"{name}({', '.join(_sample_args(f))})"))
    assert c.lowered.named["h"] is not None
    if "axis" in f.keywords:
        bpcompile.compile(_spec_calling(f"{name}(M, axis=-1)"))


@pytest.mark.parametrize("name", list(ops.SPEC_FUNCTIONS))
def test_calls_are_checked_against_the_record(name):
    """Arity and keywords come from the record, with the messages the language
    has always given."""
    f = ops.SPEC_FUNCTIONS[name]
    args = _sample_args(f)
    least = args[:len(f.params)]
    wrong = least[:-1] if f.variadic else least + ["x"]
    with pytest.raises(bpcompile.SpecError) as e:
        bpcompile.compile(_spec_calling(f"{name}({', '.join(wrong)})"))
    assert f"graph.h: {name}() takes {f.arity_text()}, got {len(wrong)}" in str(e.value)
    if "axis" not in f.keywords:
        with pytest.raises(bpcompile.SpecError) as e:
            bpcompile.compile(_spec_calling(f"{name}({', '.join(args)}, axis=0)"))
        reason = f"it takes {f.keyword_text()}" if f.keywords else \
            "it works on the last axis" if f.vector else "it takes no keywords"
        assert f"graph.h: {name}() takes no axis= ({reason})" in str(e.value)
    if ops.LABEL in f.params:
        with pytest.raises(bpcompile.SpecError) as e:      # a float array where the label goes
            bpcompile.compile(_spec_calling(f"{name}({', '.join(['x'] * f.arity)})"))
        assert f"{name}() needs an integer class label input (declared as {{classes: K}}), got 'x'" \
            in str(e.value)
    if ops.INTEGER in f.params:
        with pytest.raises(bpcompile.SpecError) as e:      # a float array where the label or tokens go
            bpcompile.compile(_spec_calling(f"{name}({', '.join(['x'] * f.arity)})"))
        assert (f"{name}() needs an integer input, a class label (declared as {{classes: K}}) or tokens "
                "({classes: V, shape: [T]}), got 'x'") in str(e.value)
    if f.vector:
        with pytest.raises(bpcompile.SpecError) as e:
            bpcompile.compile(_spec_calling(f"{name}(sum(x))"))
        assert f"{name}() needs a vector, but 'sum(x)' is a scalar" in str(e.value)


def test_a_new_spec_function_needs_only_its_record(monkeypatch):
    """A record added to the table is a function of the spec language: the lowering
    checks calls against it and hands them to its ``lower``."""
    from bpcompile.frontend import spec as spec_module

    def lower(L, c):
        x, = c.args
        return L.G.reduce(x, "sum", (0,))

    record = ops.SpecFunction("total", (ops.TENSOR,), lower)
    monkeypatch.setitem(ops.SPEC_FUNCTIONS, "total", record)
    monkeypatch.setattr(spec_module, "FUNCTIONS", (*ops.FUNCTIONS, "total"))
    c = bpcompile.compile(_spec_calling("total(x) * 2"))
    m = c.load()
    import numpy as np
    params = {"w": np.ones(3), "K": np.ones((3, 2, 3, 3)), "k": np.ones((3, 2, 2))}
    assert np.isclose(m.loss(params, x=np.ones((2, 3)), M=np.ones((2, 2, 3)), c=np.zeros(2, int),
                             I=np.ones((2, 2, 4, 4))), 3.0)
    with pytest.raises(bpcompile.SpecError, match=r"total\(\) takes 1 argument, got 2"):
        bpcompile.compile(_spec_calling("total(x, x)"))


@pytest.mark.parametrize("expr, message", [
    ("sum(x, stride=2)", "sum() takes no stride= (it takes axis=)"),
    ("tanh(x, padding=1)", "tanh() takes no padding= (it is elementwise)"),
    ("sum(x, axis=w)", "axis must be an integer constant"),
    ("sum(x, axis='same')", "axis must be an integer constant"),
    ("sum(x, axis=2**70)", "axis must be an integer constant"),
    ("sum(x, axis=99999999999999999999)", "too large"),
    ("sum(x, **w)", "**kwargs not allowed"),
    ("sum('x')", "strings are not allowed in an expression, except the padding modes"),
    ("sum('same')", "only numbers are allowed as constants, got 'same'"),
    ("sum([1, 2])", "List is not allowed"),
])
def test_keyword_and_constant_arguments_are_whitelisted(expr, message):
    """Keyword names come from the record; every keyword value and constant
    argument is checked as written, before anything is lowered."""
    with pytest.raises(bpcompile.SpecError) as e:
        bpcompile.parse_spec(_spec_calling(expr))
    assert message in str(e.value)
    assert "\n" not in str(e.value)
