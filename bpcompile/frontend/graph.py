"""Stage 2: lower a spec to a hash-consed computational graph (networkx.DiGraph).

One node per operation, as in the lectures.  Node ids are integers in creation
order, so the ids themselves are a topological order and every walk over the
graph is deterministic.  Building a node that already exists (same op, same
arguments, same attributes) returns the existing one: identical subexpressions
are one node, in the forward pass and in the backward pass alike.

Shapes are per example; each node also records whether it carries the batch
axis (``batched``): inputs do, params do not, and an op is batched when any of
its arguments is.  Reductions over the batch are explicit nodes (``sum_to``).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

import networkx as nx
import sympy as sp

from .. import limits
from .. import ops
from ..errors import SpecError
from ..ops import Contraction, arg_symbol
from ..ops.functions import INT, INTEGER, LABEL, SHAPE, SPEC_FUNCTIONS, CallSite, log_softmax
from ..ops.structural import shape_text as _fmt
from .spec import Expr, Spec, literal

# ---------------------------------------------------------------------------
# Bounded constant folding.
#
# Every constant of the IR is a small integer (|v| < 2**31), a rational with a
# small numerator and denominator, or a finite Float representable in the spec's
# dtype: printers may print any of them as a literal of that type.  Folding
# never computes a number it cannot bound first: a power of numbers is estimated
# through logarithms before it is evaluated (``9**9**9`` is an error, at once),
# and every constant subexpression that is not exact and small (``exp(3)``,
# ``sqrt(2)``, ``2**70``) becomes a Float, checked to be real and finite.

SMALL_INT = 2**31
DTYPE_MAX = {"float64": 1.7976931348623157e308, "float32": 3.4028234663852886e38}
# below half the smallest subnormal a value rounds to 0 in the dtype
DTYPE_ZERO = {"float64": 2.4703282292062328e-324, "float32": 7.006492321624085e-46}
EXACT_BITS = 4096       # an exact power is computed only when its result has at most these bits


def _show(e) -> str:
    text = sp.sstr(e)
    return text if len(text) <= 48 else text[:45] + "..."


class FoldError(SpecError):
    """A constant that is not a finite real number of the dtype; ``reason`` says why
    (the lowering puts it after the spec's own text of the constant)."""

    def __init__(self, constant, reason: str):
        super().__init__(f"the constant {_show(constant)} {reason}")
        self.reason = reason


class Folder:
    """Constant folding for one dtype: bounded in time, and every result a finite real."""

    def __init__(self, dtype: str = "float64"):
        self.dtype = dtype
        self.max = DTYPE_MAX[dtype]
        self.zero = DTYPE_ZERO[dtype]

    def overflow(self, e) -> SpecError:
        return FoldError(e, f"is not a finite number in {self.dtype} "
                            f"(it overflows: the largest is about {self.max:.3g})")

    def number(self, v, exact=False) -> sp.Expr:
        """A constant expression (no free symbols) as an IR constant, or a SpecError.

        ``exact``: while the lowering folds numbers among themselves, integers and
        rationals stay exact up to the dtype's range ((-1)**(10**18 + 1) is -1);
        they become Floats only where they enter the graph."""
        if v.is_Integer and abs(v.p) < SMALL_INT:
            return v
        if v.is_Rational:
            if abs(v.p) < SMALL_INT and v.q < SMALL_INT:
                return v
            if exact and abs(v.p).bit_length() <= 1100 and v.q.bit_length() <= 1100 \
                    and abs(v) <= self.max:
                return v
            bits = abs(v.p).bit_length() - v.q.bit_length()
            if bits > 1030:
                raise self.overflow(v)
            value = float(v) if bits > -1100 else 0.0
        else:
            if v.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
                raise FoldError(v, "is infinite or undefined (a division by zero, "
                                   "or log or a negative power of 0)")
            if v.is_Float:
                value = float(v)
            else:
                approx = v.evalf(30)
                if not approx.is_Number:
                    re_, im = approx.as_real_imag()
                    if im != 0 and not (im.is_Number and abs(float(im)) <= 1e-25 * max(1.0, abs(float(re_)))):
                        raise FoldError(v, "is not a real number")
                    approx = re_.evalf(30)
                    if not approx.is_Number:
                        raise FoldError(v, "is not a real number")
                value = float(approx)
        if not math.isfinite(value) or abs(value) > self.max:
            raise self.overflow(v)
        if abs(value) < self.zero:
            return sp.S.Zero
        return sp.Float(value)

    def power(self, b, e, exact=False) -> sp.Expr:
        """``b**e`` for numbers, estimated through logarithms before it is computed."""
        if e.is_Float and float(e).is_integer():
            e = sp.Integer(int(float(e)))   # every float above 2**53 is an (even) integer
        if b == 0:
            if e > 0:
                return sp.S.Zero
            if e == 0:
                return sp.S.One
            raise FoldError(sp.Pow(b, e, evaluate=False),
                            "is not a finite number (a division by zero, or a negative power of 0)")
        if e == 0 or b == 1:
            return sp.S.One
        if b < 0 and not e.is_Integer:
            raise FoldError(sp.Pow(b, e, evaluate=False),
                            "is not a real number (a negative number to a fractional power)")
        if b == -1:
            return sp.S.One if e % 2 == 0 else sp.S.NegativeOne
        if b.is_Rational:
            log2b = math.log2(abs(b.p)) - math.log2(b.q)
        else:
            log2b = math.log2(abs(float(b)))
        magnitude = float(e) * log2b
        if magnitude > 1100:
            raise self.overflow(sp.Pow(b, e, evaluate=False))
        if magnitude < -1200:
            return sp.S.Zero
        if b.is_Rational and e.is_Rational and e.q <= 64 and \
                abs(e.p) * max(abs(b.p).bit_length(), b.q.bit_length()) <= EXACT_BITS:
            return self.number(b**e, exact)
        return self.number(sp.Float(b, 30)**sp.Float(e, 30), exact)

    def fold(self, expr, subs=None, exact=False):
        """``expr`` with ``subs`` substituted, folded bottom-up: every constant
        subexpression is an IR constant (``number``), every power of numbers is
        bounded (``power``) before SymPy may evaluate it."""
        return self._fold(expr, subs or {}, exact)

    def _fold(self, e, subs, exact):
        if e in subs:
            return subs[e]
        if e.is_Symbol:
            return e
        if e.is_Number or isinstance(e, sp.NumberSymbol):
            return self.number(e, exact)
        if not e.args:
            if e.free_symbols:
                return e
            return self.number(e, exact)
        args = [self._fold(a, subs, exact) for a in e.args]
        if isinstance(e, sp.Pow) and args[0].is_Number and args[1].is_Number:
            return self.power(*args, exact=exact)
        if all(a is b for a, b in zip(args, e.args)):
            r = e
        else:
            r = e.func(*args)
        if not r.free_symbols:
            try:
                return self.number(r, exact)
            except FoldError as error:
                # name the constant as written (log(0)), not as SymPy evaluated it (zoo)
                try:
                    shown = e.func(*args, evaluate=False)
                except TypeError:
                    raise error from None
                raise FoldError(shown, error.reason) from None
        if r.is_Add or r.is_Mul:
            # numbers combined by SymPy (1e200*1e200*x) are checked again
            numbers = [a for a in r.args if a.is_Number]
            fixed = [self.number(a) for a in numbers]
            if any(a is not b for a, b in zip(numbers, fixed)):
                r = r.xreplace(dict(zip(numbers, fixed)))
        return r


def check_defined(expr, display=None) -> None:
    """A SpecError when part of an elementwise expression is infinite, undefined or
    complex for every input: log of something negative or zero (``log(-exp(x))``),
    a square root of something negative (``sqrt(-1 - x**2)``), a negative number
    to a varying power, or a non-real constant."""
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise SpecError("part of the expression is infinite or undefined for every input "
                        "(a division by zero, or log or a negative power of 0)")
    if expr.has(sp.I):
        raise SpecError("part of the expression is not a real number")
    def show(e):
        return _show(e.xreplace(display or {}))

    for sub in sp.preorder_traversal(expr):
        if isinstance(sub, sp.log):
            u = sub.args[0]
            if u.is_extended_nonpositive:
                raise SpecError(f"{show(sub)} is undefined for every input: its argument is never positive")
        elif isinstance(sub, sp.Pow):
            b, e = sub.args
            if e.is_Number and not e.is_Integer and b.is_extended_negative:
                raise SpecError(f"{show(sub)} is not a real number for any input: "
                                "its base is always negative")
            if b.is_Number and b < 0 and not e.is_Number:
                raise SpecError(f"{show(sub)} is not a real number for non-integer exponents and "
                                "has no real derivative; use a positive base")


class Graph:
    """A networkx.DiGraph plus the hash-consing table and the node builders."""

    def __init__(self, dtype: str = "float64"):
        self.g = nx.DiGraph()
        self._ids: dict = {}
        # node i's attribute dict, the one self.g holds, at index i (nodes are 0, 1, ...
        # and never removed): a list index costs a tenth of self.g.nodes[i], which
        # the compiler asks some 40 times per node
        self._attrs: list = []
        # map(): (expression, constants) -> (folded, needs the composed check, the
        # argument positions it reads); (folded, renumbering) -> the node's expression
        self._maps: dict = {}
        self._renumbered: dict = {}
        self.folder = Folder(dtype)
        # the spec key whose lowering (or whose adjoint) is being built; each node
        # records the key that made it, so that late errors can name it
        self.key = None
        # out node -> (function, input node, label node or None) for the stable
        # softmax family, lowered into several nodes but one rule to a reader;
        # (function, input node, reduced axes) for var and std
        self.macros: dict = {}
        # out node -> the display arguments after the arrays of a convolution's or a
        # pooling's call (the kernel or pool size, stride=, padding=), for its rules
        self.macro_keywords: dict = {}

    def node(self, i: int) -> dict:
        """Node i's attributes (the dict the DiGraph holds: changes show in both)."""
        return self._attrs[i]

    def __len__(self):
        return self.g.number_of_nodes()

    def _add(self, op, args=(), attrs=(), *, shape=(), batched=False, dtype="float", rule=None) -> int:
        key = (op, tuple(args), attrs)
        found = self._ids.get(key)
        if found is not None:
            return found
        i = len(self._ids)
        if i >= limits.MAX_GRAPH_NODES:
            raise SpecError(f"the graph (forward and adjoint) has more than {limits.MAX_GRAPH_NODES:,} "
                            "nodes (limits.MAX_GRAPH_NODES)")
        self._ids[key] = i
        self.g.add_node(i, op=op, args=tuple(args), attrs=attrs, shape=tuple(shape),
                        batched=batched, dtype=dtype, rule=rule or op, names=[], key=self.key)
        self._attrs.append(self.g.nodes[i])
        for pos, a in enumerate(args):
            if self.g.has_edge(a, i):
                self.g.edges[a, i]["pos"] += (pos,)
            else:
                self.g.add_edge(a, i, pos=(pos,))
        return i

    # -- leaves --------------------------------------------------------------
    def input(self, name, shape, dtype="float"):
        return self._add("input", (), (name,), shape=shape, batched=True, dtype=dtype)

    def param(self, name, shape):
        return self._add("param", (), (name,), shape=shape, batched=False)

    def const(self, value):
        return self._add("const", (), (self.folder.fold(sp.sympify(value)),))

    def batch_size(self):
        return self._add("batch_size")

    # -- elementwise ---------------------------------------------------------
    def map(self, expr, args, rule="map", describe=None) -> int:
        """An elementwise node computing ``expr`` over ``args`` (symbols _0, _1, ...).

        Constants are folded into the expression, arguments are deduplicated and
        sorted, so ``a*b`` and ``b*a`` are the same node.
        """
        expr = sp.sympify(expr)
        args, widen = self._unbroadcast(expr, list(args))
        if widen is not None:
            return self.broadcast(self.map(expr, args, rule, describe), *widen)
        subs = {}
        kept = []
        for i, a in enumerate(args):
            node = self.node(a)
            if node["op"] == "const":
                subs[arg_symbol(i)] = node["attrs"][0]
            else:
                kept.append((a, i))
        # what depends on the expression and the constants alone is worked out once
        # (the reverse pass makes the same few derivative maps for every layer)
        key = (expr, tuple(subs.get(arg_symbol(i)) for i in range(len(args))))
        found = self._maps.get(key)
        if found is None:
            folded = self.folder.fold(expr, subs)
            check_defined(folded, {arg_symbol(i): sp.Symbol(self.label(a)) for i, a in enumerate(args)})
            compose = any(isinstance(e, sp.log) or (e.is_Pow and not e.exp.is_Integer)
                          for e in sp.preorder_traversal(folded))
            present = frozenset(i for i in range(len(args)) if arg_symbol(i) in folded.free_symbols)
            found = self._maps[key] = (folded, compose, present)
        expr, compose, present = found
        if compose:
            # log(-exp(x)) is two nodes: look through the arguments' own expressions
            composed, leaves = self.compose(expr, args, depth=3)
            check_defined(composed, {s: sp.Symbol(self.label(a)) for s, a in leaves.items()})
        used = sorted({a for a, i in kept if i in present})
        renumber = tuple((i, used.index(a)) for a, i in kept if i in present)
        found = self._renumbered.get((expr, renumber))
        if found is None:
            found = self._renumbered[expr, renumber] = expr.xreplace(
                {arg_symbol(i): arg_symbol(j) for i, j in renumber})
        expr = found
        # the result has the broadcast shape of every argument, also of those that
        # cancel out (x - x is a 0 of x's shape, x - (x + s) is -s at x's shape)
        shapes = [self.node(a)["shape"] for a, _ in kept]
        describe = describe or (lambda: ", ".join(f"shape {list(s)}" for s in shapes))
        full = ops.broadcast_shapes(shapes, describe)
        full_batched = any(self.node(a)["batched"] for a, _ in kept)
        if expr.is_Number:
            result = self.const(expr)
        elif expr.is_Symbol:
            result = used[int(expr.name[1:])]
        else:
            shape = ops.broadcast_shapes([self.node(a)["shape"] for a in used], describe)
            batched = any(self.node(a)["batched"] for a in used)
            result = self._add("map", used, (expr,), shape=shape, batched=batched, rule=rule)
        return self.broadcast(result, full, full_batched)

    def label(self, n) -> str:
        """A name for node ``n`` in messages: its spec name, or ``(...)``."""
        node = self.node(n)
        if node["op"] in ("input", "param"):
            return node["attrs"][0]
        return node["names"][0] if node["names"] else "(...)"

    def compose(self, expr, args, depth=2):
        """``expr`` (over arg symbols of ``args``) with the arguments that are map
        nodes replaced by their own expressions, ``depth`` levels deep.  Returns the
        expression over one symbol per leaf node, and {symbol: leaf node}."""
        leaves: dict = {}

        def walk(e, nodes, level):
            subs = {}
            for i, a in enumerate(nodes):
                node = self.node(a)
                if level > 0 and node["op"] == "map" and sp.count_ops(node["attrs"][0]) <= 16:
                    subs[arg_symbol(i)] = walk(node["attrs"][0], node["args"], level - 1)
                else:
                    sym = sp.Symbol(f"_n{a}", real=True)
                    leaves[sym] = a
                    subs[arg_symbol(i)] = sym
            return e.xreplace(subs)

        return walk(expr, list(args), depth), leaves

    def _unbroadcast(self, expr, args) -> list:
        """Read broadcast arguments through to their sources: elementwise code
        broadcasts for free.  Returns the new arguments, and the (shape, batched)
        to broadcast the result to when the sources alone give a smaller one
        (f(broadcast(x)) is broadcast(f(x)), computed on fewer elements)."""
        sources = [self.node(a)["args"][0] if self.node(a)["op"] == "broadcast" else a for a in args]
        if sources == args:   # no broadcast argument (most maps): nothing to work out
            return args, None
        free = expr.free_symbols

        def result(cands):
            live = [a for i, a in enumerate(cands) if arg_symbol(i) in free
                    and self.node(a)["op"] != "const"]
            try:
                shape = ops.broadcast_shapes([self.node(a)["shape"] for a in live], lambda: "")
            except SpecError:
                return None
            return shape, any(self.node(a)["batched"] for a in live)

        full = result(args)
        return sources, (None if result(sources) == full else full)

    # -- structural ----------------------------------------------------------
    # Each builder below normalizes (a sum to the same shape is its argument, a
    # transpose of a vector is the vector, ...) and makes the node through
    # ``structural``, which takes its shape from the op's record.
    def structural(self, op, args, attrs, rule=None) -> int:
        """The node ``op(args; attrs)``, its shape and batch flag from the op's record
        (``ops.STRUCTURAL_OPS``)."""
        record = ops.STRUCTURAL_OPS[op]
        shape, batched = record.shape([self.node(a) for a in args], attrs)
        return self._add(op, args, attrs, shape=shape, batched=batched, rule=rule or record.rule or op)

    def contract(self, a, b, form: Contraction, out_batched=None) -> int:
        if out_batched is None:
            out_batched = self.node(a)["batched"] or self.node(b)["batched"]
        return self.structural("contract", (a, b), (form, out_batched))

    def reduce(self, x, kind, axes, keepdims=False, nograd=False) -> int:
        nx_ = self.node(x)
        source = nx_["args"][0] if nx_["op"] == "broadcast" else x
        if self.node(source)["op"] == "const":
            # the max or sum of copies of one number is a number
            c = self.node(source)["attrs"][0]
            if kind == "sum":
                count = 1
                for a in axes:
                    count *= nx_["shape"][a]
                c = self.folder.fold(c * count)
            return self.broadcast(self.const(c), ops.reduce_shape(nx_["shape"], axes, keepdims), nx_["batched"])
        return self.structural("reduce", (x,), (kind, tuple(axes), keepdims, nograd), rule=kind)

    def sum_to(self, x, shape, batched) -> int:
        """Sum ``x`` down to a shape that broadcasts to ``shape`` (and to unbatched)."""
        node = self.node(x)
        xs = node["shape"]
        lead = len(xs) - len(shape)
        target = list(xs[lead:]) if lead >= 0 else list(xs)
        if lead >= 0:
            for k, d in enumerate(shape):
                if d == 1 and target[k] != 1:
                    target[k] = 1
        target = tuple(target)
        keep_batch = node["batched"] and batched
        if target == xs and keep_batch == node["batched"]:
            return x
        return self.structural("sum_to", (x,), (target, keep_batch))

    def full(self, c, shape, batched) -> int:
        """A fresh array of the constant node ``c`` (even of shape ())."""
        return self.structural("broadcast", (c,), (tuple(shape), batched))

    def broadcast(self, x, shape, batched) -> int:
        node = self.node(x)
        if node["shape"] == tuple(shape) and node["batched"] == batched:
            return x
        if node["op"] == "broadcast":
            x = node["args"][0]
        return self.structural("broadcast", (x,), (tuple(shape), batched))

    def materialize(self, g, like) -> int:
        """``g`` at exactly the shape of node ``like`` (a broadcast when it is smaller)."""
        ng, nl = self.node(g), self.node(like)
        if ng["shape"] == nl["shape"] and ng["batched"] == nl["batched"]:
            return g
        return self.broadcast(g, nl["shape"], nl["batched"])

    def reshape(self, x, shape) -> int:
        if self.node(x)["shape"] == tuple(shape):
            return x
        if self.node(x)["op"] == "const":   # a number has no memory to view: its copies
            return self.broadcast(x, shape, False)
        return self.structural("reshape", (x,), (tuple(shape),))

    def take(self, x, label) -> int:
        """``x[n, label[n]]``; an ``x`` without the batch axis is broadcast over it."""
        node = self.node(x)
        if not node["batched"]:
            x = self.broadcast(x, node["shape"], True)
        return self.structural("take", (x, label), ())

    def scatter_add(self, base, label, value) -> int:
        """``base`` plus ``value[n]`` at ``[n, label[n]]``; a value broadcast over the
        batch is read as its source (the same number for every example)."""
        if self.node(value)["op"] == "broadcast":
            value = self.node(value)["args"][0]
        return self.structural("scatter_add", (base, label, value), ())

    def zeros(self, shape, batched) -> int:
        return self.structural("zeros", (), (tuple(shape), batched))

    def onehot(self, label, classes) -> int:
        return self.structural("onehot", (label,), (classes,))

    def transpose(self, x) -> int:
        if len(self.node(x)["shape"]) < 2:
            return x
        return self.structural("transpose", (x,), ())

    def slice(self, x, key) -> int:
        """``x[key]`` (a canonical key, ``ops.slice_key``); a slice of copies of one
        number is copies of it, a key of integers alone has the rule ``index``."""
        if not key:
            return x
        node = self.node(x)
        shape = ops.sliced_shape(node["shape"], key)
        if node["op"] == "broadcast" and self.node(node["args"][0])["shape"] == ():
            return self.broadcast(node["args"][0], shape, node["batched"])
        return self.structural("slice", (x,), (tuple(key),), rule="index" if ops.is_index(key) else "slice")

    def unslice(self, g, shape, key) -> int:
        """Zeros of ``shape`` with ``g`` at ``[key]`` (the adjoint of a slice)."""
        return self.structural("unslice", (g,), (tuple(shape), tuple(key)))

    def concat(self, args, axis, rule=None) -> int:
        """``args`` joined along per-example ``axis`` (their shapes checked by the caller)."""
        if len(args) == 1:
            return args[0]
        return self.structural("concat", tuple(args), (axis,), rule=rule)

    def gather(self, x, index) -> int:
        """``x[index]``: rows of ``x`` (its first axis) picked by the integer input
        ``index``, per example; an ``x`` without the batch axis is one table for all."""
        return self.structural("gather", (x, index), ())

    def scatter_rows(self, g, index, shape, batched) -> int:
        """Zeros of ``shape`` (the gathered array's; ``batched`` its batch flag) with each
        row of ``g`` added at the row its ``index`` names: the adjoint of ``gather``."""
        return self.structural("scatter_rows", (g, index), (tuple(shape), batched))

    def copy(self, x) -> int:
        return self.structural("copy", (x,), ())

    def windows(self, x, kernel, stride, padding) -> int:
        """The sliding windows of x's last len(kernel) axes (ops/structural.py: windows);
        windows of size 1, moved by 1, with no padding are x itself, reshaped."""
        kernel, stride = tuple(kernel), tuple(stride)
        padding = tuple(tuple(p) for p in padding)
        if all(k == 1 for k in kernel) and all(s == 1 for s in stride) and all(p == (0, 0) for p in padding):
            shape = self.node(x)["shape"]
            d = len(kernel)
            return self.reshape(x, (*shape[:-d], *kernel, *shape[-d:]))
        return self.structural("windows", (x,), (kernel, stride, padding))

    def unwindow(self, g, spatial, kernel, stride, padding) -> int:
        """Windows' adjoint: each window's entries added back where they were read."""
        return self.structural("unwindow", (g,), (tuple(spatial), tuple(kernel), tuple(stride),
                                                  tuple(tuple(p) for p in padding)))


@dataclass
class Lowered:
    """The forward graph of a spec and the nodes that matter."""

    spec: Spec
    graph: Graph
    leaves: dict          # input/param name -> node
    named: dict           # every spec name -> node
    example_loss: int     # the per-example loss
    loss: int             # the loss reduced over the batch
    output: int           # what predict returns
    wrt: dict             # name -> node, in WRT order
    forward_nodes: int = 0   # how many nodes lowering made (the reverse pass adds the rest)
    # what later stages compute once from this lowering and share (ir/equations.py:
    # the display names, the adjoint equations): each program and the printer read them
    shared: dict = field(default_factory=dict, repr=False, compare=False)

    def locate(self, error: SpecError, node=None) -> SpecError:
        """``error`` located at the spec key (and line) whose lowering, or whose
        adjoint, made ``node`` (default: the key being built now)."""
        key = self.graph.node(node)["key"] if node is not None else self.graph.key
        key = key or self.graph.key
        line = None
        for _, expr in [*self.spec.graph, ("", self.spec.loss)]:
            if expr.key == key:
                line = expr.line
                break
        return error.located(file=self.spec.file, key=key, line=line)


# ---------------------------------------------------------------------------


def lower(spec: Spec) -> Lowered:
    """Build the forward graph of ``spec``; shapes are checked as nodes are made."""
    return _Lowering(spec).run()


class _Expressions:
    """Names, constants, operators, transposes and indexing: an expression of the
    spec to graph nodes (a number stays a SymPy number until it meets a node).

    A part of ``_Lowering``, as is ``_Calls``: they read its ``G``, ``scope``,
    ``labels``, ``expr`` and ``node``."""

    def err(self, message):
        return SpecError(message)

    def text(self, node):
        return ast.get_source_segment(self.expr.text, node) or self.expr.text

    def describe(self, *pairs):
        parts = []
        for tree, value in pairs:
            if isinstance(value, sp.Basic):
                continue
            parts.append(f"{self.text(tree)} has shape {_fmt(self.node(value)['shape'])}")
        return " and ".join(parts)

    def float_operand(self, tree, value, what):
        if not isinstance(value, sp.Basic) and self.node(value)["dtype"] == "int":
            if self.node(value)["shape"]:
                raise self.err(f"'{self.text(tree)}' is an integer token input and cannot be used in {what}; "
                               f"index an embedding by it, as in E[{self.text(tree)}], or use onehot()")
            raise self.err(f"'{self.text(tree)}' is an integer class label and cannot be used in {what}; "
                           "use it in onehot(), cross_entropy() or softmax_cross_entropy()")
        return value

    def visit(self, t):
        if isinstance(t, ast.Constant):
            if isinstance(t.value, float) and not math.isfinite(t.value):
                raise self.err(f"the constant {self.text(t)} is not a finite number")
            value = sp.Rational(repr(t.value)) if isinstance(t.value, float) else sp.Integer(t.value)
            return self.constant(t, lambda: self.G.folder.number(value, exact=True))
        if isinstance(t, ast.Name):
            return self.name(t.id)
        if isinstance(t, ast.UnaryOp):
            v = self.float_operand(t.operand, self.visit(t.operand), "arithmetic")
            if isinstance(t.op, ast.UAdd):
                return v
            return -v if isinstance(v, sp.Basic) else self.G.map(-arg_symbol(0), [v], rule="neg")
        if isinstance(t, ast.BinOp):
            return self.binop(t)
        if isinstance(t, ast.Attribute):
            v = self.tensor(t.value, ".T")
            if len(self.node(v)["shape"]) > 2:
                raise self.err(f"'.T' transposes a vector or a matrix, but {self.text(t.value)!r} has shape "
                               f"{_fmt(self.node(v)['shape'])}")
            return self.G.transpose(v)
        if isinstance(t, ast.Subscript):
            return self.subscript(t)
        if isinstance(t, ast.Call):
            return self.call(t)
        raise self.err(f"unsupported expression {self.text(t)!r}")  # excluded by spec.check_expression

    def name(self, nm):
        if nm in self.scope:
            return self.scope[nm]
        if nm == self.defining:
            raise self.err(f"'{nm}' is used in its own definition: the graph must not have a cycle")
        if nm in self.pending:
            raise self.err(f"'{nm}' is used before it is defined (graph nodes are evaluated in order; "
                           "a node cannot depend on itself or on a later node)")
        if nm in ops.FUNCTIONS:
            raise self.err(f"'{nm}' is a function; call it, as in {nm}(x)")
        known = ", ".join(sorted(self.scope)) or "none"
        raise self.err(f"unknown name '{nm}' (known names: {known})")

    def tensor(self, tree, what):
        v = self.visit(tree)
        if isinstance(v, sp.Basic):
            v = self.G.const(v)
        return self.float_operand(tree, v, what)

    def binop(self, t):
        what = "a matrix product" if isinstance(t.op, ast.MatMult) else "arithmetic"
        left = self.float_operand(t.left, self.visit(t.left), what)
        right = self.float_operand(t.right, self.visit(t.right), what)
        if isinstance(t.op, ast.MatMult):
            for side, v in ((t.left, left), (t.right, right)):
                if isinstance(v, sp.Basic):
                    raise self.err(f"'@' needs vectors or matrices, but {self.text(side)!r} is a number")
            return self.matmul(left, right, lambda: self.describe((t.left, left), (t.right, right)))
        fn, rule = ops.BINARY[type(t.op).__name__]
        return self.elementwise(fn, [left, right], rule,
                                lambda: self.describe((t.left, left), (t.right, right)), tree=t)

    def constant(self, tree, fold):
        """The folded constant ``fold()``, or a SpecError quoting the spec's text."""
        try:
            return fold()
        except FoldError as e:
            text = self.text(tree) if tree is not None else ""
            if len(text) > 48:
                text = text[:45] + "..."
            raise self.err(f"the constant {text} {e.reason}") from None

    def elementwise(self, fn, operands, rule, describe, tree=None):
        if all(isinstance(v, sp.Basic) for v in operands):
            symbols = [arg_symbol(i) for i in range(len(operands))]
            return self.constant(tree, lambda: self.G.folder.fold(fn(*symbols), dict(zip(symbols, operands)),
                                                                  exact=True))
        args = [self.G.const(v) if isinstance(v, sp.Basic) else v for v in operands]
        return self.G.map(fn(*[arg_symbol(i) for i in range(len(args))]), args, rule=rule,
                          describe=describe)

    def matmul(self, a, b, describe):
        # fold transposes into the contraction (x.T @ y is one product)
        sa, sb = self.node(a)["shape"], self.node(b)["shape"]
        form, _ = ops.matmul_contraction(sa, sb, describe)
        fa, fb = form.a, form.b
        if self.node(a)["op"] == "transpose":
            a, fa = self.node(a)["args"][0], fa[::-1]
        if self.node(b)["op"] == "transpose":
            b, fb = self.node(b)["args"][0], fb[::-1]
        return self.G.contract(a, b, Contraction(fa, fb, form.out))

    def subscript(self, t):
        """``v[i]``, ``v[2:5]``, ``X[:, 0:3]``, ``X[0, 1:3]``: constant indices and
        slices (the whitelist, spec._check_index, has checked their form); ``E[tokens]``:
        a gather of rows by an integer input."""
        if isinstance(t.slice, ast.Name):
            return self.gather(t)
        v = self.tensor(t.value, "indexing")
        items = t.slice.elts if isinstance(t.slice, ast.Tuple) else [t.slice]
        key = ops.slice_key(self.node(v)["shape"], [index_item(i) for i in items],
                            lambda: repr(self.text(t.value)))
        return self.G.slice(v, key)


    def gather(self, t):
        """``E[tokens]``: the rows of E (its first axis, of the input's V classes)
        picked by an integer input: tokens [T] give [T, ...], a label [] gives one row."""
        index = self.visit(t.slice)
        shown = self.text(t.slice)
        if isinstance(index, sp.Basic) or self.node(index)["dtype"] != "int":
            kind = "a number" if isinstance(index, sp.Basic) else \
                {"input": "a float input", "param": "a param"}.get(self.node(index)["op"], "a float graph node")
            raise self.err(f"an index is an integer constant, as in v[0], or an integer input, as in E[tokens] "
                           f"(declared {{classes: V, shape: [T]}}); '{shown}' is {kind}")
        v = self.tensor(t.value, "indexing")
        shape = self.node(v)["shape"]
        classes = self.labels[index]
        if not shape:
            raise self.err(f"cannot index {self.text(t.value)!r} by '{shown}': it is a scalar")
        if shape[0] != classes:
            raise self.err(f"the first axis of {self.text(t.value)!r} (shape {_fmt(shape)}) must be the "
                           f"{classes} classes of '{shown}' to be indexed by it")
        return self.G.gather(v, index)


def index_item(node):
    """One item of an index as written: an int, or a Python slice of ints and None."""
    if isinstance(node, ast.Slice):
        return slice(*(None if b is None else literal(b) for b in (node.lower, node.upper, node.step)))
    return literal(node)


class _Calls:
    """Function calls.  A structural function is lowered through its record
    (``ops/functions.py``: how it is called, and its lowering); an elementwise one
    is a map node.  Class label arguments are checked here."""

    def call(self, t):
        f = t.func.id
        function = SPEC_FUNCTIONS.get(f)
        if function is not None:
            return self.function_call(function, t)
        return self.elementwise_call(t, ops.ELEMENTWISE[f])

    def elementwise_call(self, t, op):
        """``f(x)``, ``f(x, c)``, ``maximum(a, b)``: an elementwise op (its record ``op``
        in ops.ELEMENTWISE), its tensor arguments first (broadcasting), then its
        constant parameters, each a number or an expression of numbers (folded),
        else the default (a parameter without one must be given), checked by the
        record's ``check``."""
        f = op.name
        arity = op.arity
        lo, hi = arity + op.required, arity + len(op.params)
        if not lo <= len(t.args) <= hi:
            count = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi > lo + 1 else f"{lo} or {hi}"
            usage = f", as in {op.signature}" if op.params else ""
            raise self.err(f"{f}() takes {count} argument{'s' if hi > 1 else ''}{usage}, got {len(t.args)}")
        args = [self.tensor(a, f"{f}()") for a in t.args[:arity]]
        params = [d for _, d in op.params]
        for k, tree in enumerate(t.args[arity:]):
            value = self.visit(tree)
            if not isinstance(value, sp.Basic) and self.node(value)["op"] == "const" \
                    and not self.node(value)["shape"] and not self.node(value)["batched"]:
                value = self.node(value)["attrs"][0]
            if not isinstance(value, sp.Basic):
                raise self.err(f"the {op.params[k][0]} of {f}() must be a constant (a number, or an expression "
                               f"of numbers), but {self.text(tree)!r} depends on the inputs or params")
            params[k] = value
        problem = op.check(*params) if op.check is not None else None
        if problem:
            raise self.err(f"{f}() {problem}")
        if f == "log":
            stable = self.stable_log(args[0])
            if stable is not None:
                return stable
        return self.G.map(op(*[arg_symbol(i) for i in range(arity)], *params), args, rule=f,
                          describe=lambda: self.describe(*zip(t.args, args)))

    def function_call(self, function, t):
        """A call of a structural function, checked against its record and lowered by it.

        The reader's whitelist has checked its keywords and the form of each constant
        argument and keyword value (``spec.literal`` reads them); their ranges are
        the lowering's."""
        f = function.name
        keywords = {}
        for kw in t.keywords:
            keywords[kw.arg] = literal(kw.value)
        self.check_arity(function, t)
        args = []
        for pos, tree in enumerate(t.args):
            kind = function.kind(pos)
            if kind in (LABEL, INTEGER):
                args.append(self.label_arg(tree, f, kind))
            elif kind in (INT, SHAPE):
                args.append(literal(tree))
            else:
                args.append(self.tensor(tree, f"{f}()"))
        if function.vector and not self.node(args[0])["shape"]:
            raise self.err(f"{f}() needs a vector, but {self.text(t.args[0])!r} is a scalar")
        return function.lower(self, CallSite(f, tuple(args), tuple(t.args), keywords))

    def check_arity(self, function, t):
        n = len(t.args)
        if n < function.arity or (n > function.arity and not function.variadic):
            raise self.err(f"{function.name}() takes {function.arity_text()}, got {n}")

    def label_arg(self, tree, f, kind=LABEL):
        """An integer input argument: a class label (LABEL), or also tokens (INTEGER)."""
        v = self.visit(tree)
        if isinstance(v, sp.Basic) or v not in self.labels:
            if kind == INTEGER:
                raise self.err(f"{f}() needs an integer input, a class label (declared as {{classes: K}}) "
                               f"or tokens ({{classes: V, shape: [T]}}), got {self.text(tree)!r}")
            raise self.err(f"{f}() needs an integer class label input (declared as {{classes: K}}), "
                           f"got {self.text(tree)!r}")
        if kind == LABEL and self.node(v)["shape"]:
            raise self.err(f"{f}() needs one integer class label per example (declared as {{classes: K}}), "
                           f"but {self.text(tree)!r} is a token input of shape {_fmt(self.node(v)['shape'])}")
        return v

    def stable_log(self, x):
        """log(x) through a stable rule when x is one of the patterns that lose
        precision or overflow (``ops.stable_log``; log(softmax(z)) is
        log_softmax(z)); None otherwise."""
        if self.G.macros.get(x, ("",))[0] == "softmax":
            return log_softmax(self.G, self.G.macros[x][1])
        if self.node(x)["op"] != "map":
            return None
        composed, leaves = self.G.compose(arg_symbol(0), [x], depth=2)
        rewritten = ops.stable_log(composed)
        if rewritten is None:
            return None
        used = sorted((s for s in rewritten.free_symbols), key=lambda s: leaves[s])
        expr = rewritten.xreplace({s: arg_symbol(i) for i, s in enumerate(used)})
        return self.G.map(expr, [leaves[s] for s in used], rule="stable log")


class _Lowering(_Expressions, _Calls):
    """A spec's graph: its inputs and params as leaves, then each graph line and
    the loss, in order."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.G = Graph(spec.dtype)
        self.scope: dict = {}      # name -> node id
        self.labels: dict = {}     # integer input node (a label, or tokens) -> classes
        self.pending: set = set()  # graph names not defined yet
        self.defining = None       # the graph name being lowered

    def run(self) -> Lowered:
        G, spec = self.G, self.spec
        for nm, d in spec.inputs.items():
            node = G.input(nm, d.shape, "int" if d.is_label else "float")
            if d.is_label:
                self.labels[node] = d.classes
            self.scope[nm] = node
        for nm, d in spec.params.items():
            self.scope[nm] = G.param(nm, d.shape)
        leaves = dict(self.scope)
        self.pending = {nm for nm, _ in spec.graph}
        last = None
        for nm, expr in spec.graph:
            self.defining = nm
            node = self.lower_expr(expr)
            self.pending.discard(nm)
            self.scope[nm] = node
            G.node(node)["names"].append(nm)
            last = node
        example_loss = self.lower_expr(spec.loss)
        if self.node(example_loss)["dtype"] == "int":
            raise spec.error("the loss is an integer label, not a float", "loss")
        shape = self.node(example_loss)["shape"]
        if shape != ():
            raise spec.error(f"the loss must be a per-example scalar, but it has shape {_fmt(shape)}; "
                             "reduce it, e.g. with sum(...)", "loss")
        total = G.sum_to(example_loss, (), False) if self.node(example_loss)["batched"] else example_loss
        n = G.batch_size()
        if spec.reduction == "mean":
            total = G.map(arg_symbol(0) / arg_symbol(1), [total, n], rule="mean") \
                if self.node(example_loss)["batched"] else total
        elif not self.node(example_loss)["batched"]:
            total = G.map(arg_symbol(0) * arg_symbol(1), [total, n], rule="sum")
        if spec.output is not None:
            output = self.scope[spec.output]
        else:
            output = last if last is not None else example_loss
        wrt = {nm: self.scope[nm] for nm in spec.wrt}
        return Lowered(spec, G, leaves, dict(self.scope), example_loss, total, output, wrt, len(G))

    def node(self, i):
        return self.G.node(i)

    def lower_expr(self, expr: Expr) -> int:
        self.expr = expr
        self.G.key = expr.key
        try:
            value = self.visit(expr.tree)
            if isinstance(value, sp.Basic):
                value = self.G.const(value)
        except SpecError as e:
            raise e.located(file=self.spec.file, key=expr.key, line=expr.line) from None
        return value
