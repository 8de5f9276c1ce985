"""Stage 4: the target-neutral program: an ordered list of kernels.

The graph nodes a function needs are scheduled in id order (a topological order),
then fused: an elementwise node used by exactly one other elementwise node is
inlined into it, so a chain like ``a_bar = f_bar * v * (1 - e**2)`` is one
``map`` kernel, whose expression goes through ``sympy.cse``.  Every other node is
one kernel: a contraction (a GEMM for the printers), a reduction, an index
operation.  Nothing here knows NumPy or CUDA: values have per-example shapes and
a batch flag, kernels name ops from ``ops/``, and elementwise math stays SymPy.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass, field

import sympy as sp

from .. import names
from ..ops.adjoint import Adjoints
from .equations import EXAMPLE_LOSS, LOSS, Namer, adjoint_equations, show
from ..errors import SpecError
from ..frontend.graph import Lowered
from ..ops import arg_symbol, record_of

MAX_FUSED = 24   # most operations one fused elementwise kernel takes in
VIEW_OPS = ("reshape", "transpose", "slice", "broadcast")
# kernels whose result may share memory with their argument in some target: the views,
# and the windows of an array and their adjoint (NumPy: a reshape when the windows tile it)
ALIAS_OPS = VIEW_OPS + ("windows", "unwindow")


@dataclass(eq=False)
class Value:
    name: str
    shape: tuple        # per example
    batched: bool       # carries the leading batch axis
    dtype: str          # "float" or "int"
    kind: str           # "input", "param", "batch_size", "const" or "temp"
    literal: object = None   # the number, for kind == "const"

    @property
    def rank(self) -> int:
        return len(self.shape) + (1 if self.batched else 0)


@dataclass(eq=False)
class Kernel:
    op: str                   # an op of ops/ / frontend/graph.Graph ("map", "contract", ...)
    out: Value
    args: tuple               # Values
    attrs: tuple              # the node's attributes; for "map": (temps, expr)
    notes: list = field(default_factory=list)  # comment lines (equations and rules)
    phase: str = "forward"    # or "backward"
    inplace: bool = False     # scatter_add: update args[0] in place (out is args[0])
    reuse: Value | None = None   # map: an argument read for the last time here, whose
                                 # memory the result may take (see mark_reuse)


@dataclass
class Program:
    kernels: list
    inputs: list          # Values of the inputs the program reads
    params: list          # Values of the params the program reads
    loss: Value | None
    output: Value | None
    grads: dict           # WRT name -> Value
    values: dict          # node -> Value

    def count(self, phase=None) -> int:
        return sum(1 for k in self.kernels if phase is None or k.phase == phase)

    def op_count(self, phase=None) -> int:
        """Tensor operations: each arithmetic operation of a fused elementwise block
        (SymPy's count_ops, temporaries included), one for any other kernel."""
        total = 0
        for k in self.kernels:
            if phase is not None and k.phase != phase:
                continue
            if k.op == "map":
                temps, expr = k.attrs
                total += sum(sp.count_ops(e) for _, e in temps) + sp.count_ops(expr)
            else:
                total += 1
        return total


def mark_reuse(kernels, roots) -> None:
    """Let a kernel compute in the memory of an argument that nothing reads after
    it: a temporary of the program's own, of the result's shape, not returned,
    whose views (if any) are all read for the last time before it.  Fewer live
    arrays, no allocation.  An elementwise kernel records the argument in
    ``reuse``; a scatter_add updates its base in place (``inplace``, and the base
    takes the result's name)."""
    def aliases(k):
        # a view, or an elementwise kernel that is one of its arguments unchanged
        # (exp(log(w)) is w): the printer writes ``a = w``, so a is w's memory
        return k.op in ALIAS_OPS or (k.op == "map" and not k.attrs[0] and isinstance(k.attrs[1], sp.Symbol))

    last_read, views = {}, {}
    for i, k in enumerate(kernels):
        for a in k.args:
            last_read[a.name] = i
            if aliases(k):
                views.setdefault(a.name, []).append(k.out.name)
    owned = {k.out.name for k in kernels if not aliases(k)}

    def sharing(name):
        """The values that read ``name``'s memory: its views, their views, ..."""
        found, stack = [], list(views.get(name, ()))
        while stack:
            v = stack.pop()
            found.append(v)
            stack.extend(views.get(v, ()))
        return found

    def dead_after(a, i):
        # a view read by kernel i itself would be overwritten while it is read
        return (a.kind == "temp" and a.name in owned and a.name not in roots and last_read[a.name] == i
                and all(v not in roots and last_read.get(v, -1) < i for v in sharing(a.name)))

    for i, k in enumerate(kernels):
        if k.op == "scatter_add" and dead_after(k.args[0], i):
            k.inplace = True
            k.args[0].name = k.out.name
        if k.op != "map" or k.out.rank == 0:
            continue
        temps, expr = k.attrs
        counts = symbol_counts(expr)
        in_temps = {s.name for _, e in temps for s in e.free_symbols}
        for a in k.args:
            if (dead_after(a, i) and a.shape == k.out.shape and a.batched == k.out.batched
                    and a.dtype == "float" and counts.get(a.name) == 1 and a.name not in in_temps):
                k.reuse = a
                break


def build(low: Lowered, adj: Adjoints | None, *, loss=False, output=False, grads=False) -> Program:
    """The program computing any of: the loss, predict's output, the gradients."""
    return _Scheduler(low, adj).run(loss=loss, output=output, grads=grads)


LEAF_OPS = ("input", "param", "const", "batch_size")   # values with no kernel of their own


class _Scheduler:
    """The kernels of a program: the nodes it needs in id order (a topological
    order), single-consumer elementwise chains fused into one ``map`` kernel each."""

    def __init__(self, low: Lowered, adj: Adjoints | None):
        self.low = low
        self.adj = adj
        self.G = low.graph
        namer = Namer.of(low)
        self.names = _Names(low, adj, namer)
        self.comments = _Notes(low, adj, namer, self.is_backward)
        # node ids follow creation: the reverse pass made every node after the forward graph
        last_forward = max(max(low.named.values(), default=0), low.loss, low.output, low.example_loss)
        self.first_backward = last_forward + 1 if adj is not None else None
        self.forward_roots: set = set()   # nodes made here for the forward results (array_root)

    def is_backward(self, n) -> bool:
        return self.first_backward is not None and n >= self.first_backward \
            and n not in self.forward_roots

    def run(self, *, loss, output, grads) -> Program:
        G = self.G
        value = self.names.value
        roots = []
        loss_node, output_node = self.array_root(self.low.loss), self.array_root(self.low.output)
        if loss:
            roots.append(loss_node)
        if output:
            roots.append(output_node)
        grad_nodes = {}
        if grads:
            grad_nodes = self.gradient_nodes()
            roots += list(grad_nodes.values())
        needed = self.needed(roots)
        order = sorted(needed)
        root_set = set(roots)
        inlined = self.inlined(order, needed, root_set)
        # names first, in schedule order, so the spec's names win over temporaries
        for n in [loss_node] if loss else []:
            value(n, LOSS)
        for name, n in grad_nodes.items():
            if G.node(n)["op"] not in ("input", "param", "const"):
                value(n, names.bar(name))
        kernels = self.kernels(order, inlined, self.comments.notes(order, inlined))
        values = self.names.values
        mark_reuse(kernels, {values[r].name for r in root_set if r in values})
        inputs = [value(n) for n in sorted(self.low.leaves.values())
                  if n in needed and G.node(n)["op"] == "input"]
        params = [value(n) for n in sorted(self.low.leaves.values())
                  if n in needed and G.node(n)["op"] == "param"]
        return Program(kernels, inputs, params,
                       values.get(loss_node) if loss else None,
                       value(output_node) if output else None,
                       {name: value(n) for name, n in grad_nodes.items()},
                       values)

    def kernels(self, order, inlined, notes) -> list:
        """A kernel for each node in order that is neither a leaf nor inlined, with its comment lines."""
        G = self.G
        value = self.names.value
        kernels = []
        for n in order:
            node = G.node(n)
            if node["op"] in LEAF_OPS or n in inlined:
                continue
            out = value(n)
            phase = "backward" if self.is_backward(n) else "forward"
            if node["op"] == "map":
                args, temps, expr = self.fuse(n, inlined)
                k = Kernel("map", out, tuple(args), (temps, expr), phase=phase)
            else:
                k = Kernel(node["op"], out, tuple(value(a) for a in node["args"]),
                           node["attrs"], phase=phase)
            k.notes = notes.get(n, [])
            kernels.append(k)
        return kernels

    def needed(self, roots) -> set:
        """The roots and every node they read, directly or not."""
        needed = set(roots)
        stack = list(roots)
        while stack:
            for p in self.G.g.predecessors(stack.pop()):
                if p not in needed:
                    needed.add(p)
                    stack.append(p)
        return needed

    def inlined(self, order, needed, roots) -> set:
        """The elementwise nodes inlined into their one consumer, an elementwise node.

        A fused chain stays under MAX_FUSED operations: a deep chain of scalars stays
        a sequence of readable lines (and SymPy never sees one huge nested expression)."""
        G = self.G

        def inlinable(n):
            if n in roots:
                return False
            cs = [c for c in G.g.successors(n) if c in needed]
            return len(cs) == 1 and G.node(cs[0])["op"] == "map"

        inlined, fused = set(), {}
        for n in order:
            node = G.node(n)
            if node["op"] != "map":
                continue
            fused[n] = _count_ops(node["attrs"][0]) + sum(fused.get(a, 0) for a in node["args"]
                                                          if a in inlined)
            if inlinable(n) and fused[n] < MAX_FUSED:
                inlined.add(n)
        return inlined

    def array_root(self, n):
        """A constant the program returns is made an array of the dtype (np.full),
        never returned as the bare number."""
        if self.G.node(n)["op"] != "const":
            return n
        full = self.G.full(n, (), False)
        self.forward_roots.add(full)
        return full

    def gradient_nodes(self) -> dict:
        """For each WRT name, a node holding exactly its gradient, in a fresh array."""
        G = self.G
        out = {}
        seen = set()
        for name, w in self.low.wrt.items():
            node = G.node(w)
            g = self.adj.grads.get(name)
            if g is None:
                g = G.zeros(node["shape"], node["batched"])
            else:
                g = G.materialize(g, w)
                op = G.node(g)["op"]
                constant = g if op == "const" else G.node(g)["args"][0] if op == "broadcast" else None
                if constant is not None and G.node(constant)["op"] == "const":
                    g = G.full(constant, node["shape"], node["batched"])   # np.full: a fresh array
                elif op in ("input", "param", *VIEW_OPS) or g in seen:
                    g = G.copy(g)
            seen.add(g)
            out[name] = g
        return out

    def fuse(self, n, inlined):
        """The fused expression of map node n over its non-inlined leaves, after CSE.

        The three programs fuse many of the same nodes, through the same inlined
        nodes, over leaves of the same names (the forward pass): the folded
        expression's CSE is kept per lowering and computed once for each, its
        temporaries named afresh by each program."""
        G = self.G
        leaves: list = []
        leaf_sym: dict = {}
        through: list = []   # n and the inlined nodes expand() goes through, in its order

        def visit(m):
            """Name the leaves in the order expand() meets them."""
            through.append(m)
            for a in G.node(m)["args"]:
                if a in inlined:
                    visit(a)
                elif a not in leaf_sym:
                    v = self.names.value(a)
                    leaf_sym[a] = sp.Symbol(v.name, real=True)
                    leaves.append(v)

        def expand(m, syms):
            node = G.node(m)
            subs = {arg_symbol(i): expand(a, syms) if a in inlined else syms[a]
                    for i, a in enumerate(node["args"])}
            return node["attrs"][0].xreplace(subs)

        def fused(syms):
            """(CSE replacements, reduced expression) of n's folded expansion over
            the leaves' symbols ``syms``."""
            try:
                # numbers of the fused nodes combine (x*1e200*1e200): fold them again
                expr = self.low.graph.folder.fold(expand(n, syms))
            except SpecError as e:
                raise self.low.locate(e, n) from None
            # an op whose printed form reads its argument twice (elu, gelu, ...) gets a
            # compound argument as a temporary: listed once more, CSE extracts it
            repeated = [a for f in sp.preorder_traversal(expr) if isinstance(f, sp.Function)
                        and getattr(record_of(type(f)), "repeats_argument", False)
                        for a in f.args[:record_of(type(f)).arity] if not (a.is_Symbol or a.is_Number)]
            replacements, (reduced, *_) = _cse([expr, *repeated], self.low.shared.setdefault("cse", {}))
            return replacements, reduced

        visit(n)
        cache = self.low.shared.setdefault("fused", {})
        key = (tuple(through), tuple(leaf_sym), tuple(v.name for v in leaves))
        found = cache.get(key)
        if found is None:
            found = cache[key] = self.fused_by_shape(n, through, inlined, leaf_sym, leaves, fused)
        replacements, reduced = found
        temps = []
        rename = {}
        for sym, sub in replacements:
            new = sp.Symbol(self.names.fresh(), real=True)
            rename[sym] = new
            temps.append((new.name, sub.xreplace(rename)))
        reduced = reduced.xreplace(rename)
        # folding may cancel a leaf (2*s/(2*s) in std's adjoint through s*s): a
        # kernel reads only the leaves left in its expressions (CUDA's -Werror
        # refuses an unused parameter)
        read = reduced.free_symbols.union(*(e.free_symbols for _, e in temps))
        return [v for a, v in zip(leaf_sym, leaves) if leaf_sym[a] in read], temps, reduced


    def fused_by_shape(self, n, through, inlined, leaf_sym, leaves, fused):
        """``fused(leaf_sym)``, computed once per shape of fused expression: every
        layer of a network fuses the same nodes over other leaves (``h3_bar*(1 -
        h3**2)``, ``h4_bar*(1 - h4**2)``).  The expansion, folding and CSE run over
        stand-in names that sort as the leaves' names do (see _cse: SymPy orders
        terms by name, so the result is the one the names give), then the stand-ins
        are renamed back."""
        G = self.G
        stand_in = _stand_ins([v.name for v in leaves])
        if stand_in is None:
            return fused(leaf_sym)
        place = {m: i for i, m in enumerate(through)}
        position = {a: i for i, a in enumerate(leaf_sym)}
        shape = tuple((G.node(m)["attrs"][0],
                       tuple((0, place[a]) if a in inlined else (1, position[a]) for a in G.node(m)["args"]))
                      for m in through)
        shapes = self.low.shared.setdefault("fused shapes", {})
        found = shapes.get((shape, stand_in))
        if found is None:
            try:
                found = fused({a: sp.Symbol(nm, real=True) for a, nm in zip(leaf_sym, stand_in)})
            except SpecError:
                return fused(leaf_sym)   # the error, in the leaves' own names
            shapes[shape, stand_in] = found
        back = {sp.Symbol(nm, real=True): leaf_sym[a] for a, nm in zip(leaf_sym, stand_in)}
        replacements, reduced = found
        return [(sym, sub.xreplace(back)) for sym, sub in replacements], reduced.xreplace(back)


def _cse(exprs, cache):
    """``sp.cse(exprs, order="none")`` with temporaries ``_cse0, _cse1, ...``, computed
    once per shape of expression: every layer of a network fuses the same
    expressions over other names (``h3_bar*(1 - h3**2)``, ``h4_bar*(1 - h4**2)``).

    The symbols are renamed in an order-preserving way -- ``A000000, A000001, ...``
    for the names that sort before ``_`` (those SymPy orders before ``_cse0``),
    ``a000000, ...`` for those after -- so every comparison SymPy makes between two
    symbols (it orders terms and factors by name) comes out as it would for the
    real names; the result, in those names, is renamed back.  Any symbol outside
    that scheme (a name starting with ``_``, other assumptions) is CSE'd directly."""
    symbols = set().union(*(e.free_symbols for e in exprs))
    if any(s.name.startswith("_") or s.assumptions0 != _REAL for s in symbols):
        replacements, reduced = sp.cse(exprs, symbols=sp.numbered_symbols("_cse"), order="none")
        return replacements, reduced
    named = sorted(symbols, key=lambda s: s.name)
    before = [s for s in named if s.name < "_"]
    after = [s for s in named if s.name > "_"]
    to = {s: sp.Symbol(f"A{k:06d}", real=True) for k, s in enumerate(before)}
    to.update({s: sp.Symbol(f"a{k:06d}", real=True) for k, s in enumerate(after)})
    key = tuple(e.xreplace(to) for e in exprs)
    found = cache.get(key)
    if found is None:
        found = cache[key] = sp.cse(list(key), symbols=sp.numbered_symbols("_cse"), order="none")
    back = {v: s for s, v in to.items()}
    replacements, reduced = found
    return ([(sym, sub.xreplace(back)) for sym, sub in replacements],
            [e.xreplace(back) for e in reduced])


_REAL = sp.Symbol("x", real=True).assumptions0


def _stand_ins(names) -> tuple | None:
    """For leaf names (distinct): names ``A000000, ...`` (for those before ``_``) and
    ``a000000, ...`` (after it) in the same order as the names, by position; None
    when a name starts with ``_`` (outside the scheme, as in _cse)."""
    if any(nm.startswith("_") for nm in names) or len(set(names)) != len(names):
        return None
    before = sorted(nm for nm in names if nm < "_")
    after = sorted(nm for nm in names if nm > "_")
    to = {nm: f"A{k:06d}" for k, nm in enumerate(before)}
    to.update({nm: f"a{k:06d}" for k, nm in enumerate(after)})
    return tuple(to[nm] for nm in names)


@functools.lru_cache(maxsize=4096)
def symbol_counts(expr) -> dict:
    """How many times each symbol occurs in ``expr`` (name -> count; shared: not to
    be changed).  The three programs and the printer ask it of the same kernels."""
    counts: dict = {}
    for sym in sp.preorder_traversal(expr):
        if isinstance(sym, sp.Symbol):
            counts[sym.name] = counts.get(sym.name, 0) + 1
    return counts


@functools.lru_cache(maxsize=4096)
def _count_ops(expr) -> int:
    """sp.count_ops of a map node's expression: the same few, for every layer and program."""
    return sp.count_ops(expr)


class _Names:
    """The program's value names: the spec's names and adjoint names (``h_bar``)
    where they are free, else temporaries ``t0, t1, ...``; one Value per node."""

    def __init__(self, low: Lowered, adj: Adjoints | None, namer: Namer):
        self.G = low.graph
        self.namer = namer
        self.used: set = set()
        self.temp_count = 0
        self.values: dict = {}   # node -> Value
        # adjoint node -> the forward nodes it is the adjoint of, in the reverse pass's order
        self.bar_of: dict = {}
        for x, b in (adj.bar.items() if adj else ()):
            self.bar_of.setdefault(b, []).append(x)

    def fresh(self) -> str:
        while True:
            nm = names.temp(self.temp_count)
            self.temp_count += 1
            if nm not in self.used:
                self.used.add(nm)
                return nm

    def claim(self, nm):
        if nm and nm not in self.used:
            self.used.add(nm)
            return nm
        return None

    def value(self, n, preferred=None) -> Value:
        if n in self.values:
            return self.values[n]
        node = self.G.node(n)
        op = node["op"]
        if op in ("input", "param"):
            v = Value(node["attrs"][0], node["shape"], node["batched"], node["dtype"], op)
            self.used.add(v.name)
        elif op == "batch_size":
            v = Value("N", (), False, "int", "batch_size")
        elif op == "const":
            v = Value(str(node["attrs"][0]), (), False, "float", "const", node["attrs"][0])
        else:
            nm = self.claim(preferred) or self.claim(self.display_name(n)) or self.fresh()
            v = Value(nm, node["shape"], node["batched"], node["dtype"], "temp")
        self.values[n] = v
        return v

    def display_name(self, n):
        nm = self.namer.name(n)
        if nm is not None:
            return nm
        for x in self.bar_of.get(n, ()):
            xn = self.namer.name(x)
            if xn is not None:
                return names.bar(xn)
        return None


class _Notes:
    """The comment lines above each kernel: the forward equation of each spec line
    and the adjoint equations, each above the kernel that computes its node."""

    def __init__(self, low: Lowered, adj: Adjoints | None, namer: Namer, is_backward):
        self.low = low
        self.adj = adj
        self.G = low.graph
        self.namer = namer
        self.is_backward = is_backward   # node -> whether the reverse pass made it
        # node -> the spec text of the line it is named by
        self.line_text: dict = {}
        for nm, expr in reversed(low.spec.graph):
            n = low.named.get(nm)
            if n is not None:
                self.line_text[n] = expr.text

    def notes(self, order, inlined) -> dict:
        """Comment lines per kernel node: forward equations and adjoint equations."""
        G = self.G

        def kernel_of(n):
            while n in inlined:
                (n,) = [c for c in G.g.successors(n) if c in order_set]
            return n

        order_set = set(order)
        notes: dict = {}
        kernels = [n for n in order if n not in inlined and G.node(n)["op"] not in LEAF_OPS]

        def first_kernel(lo, hi):
            """The first kernel node in [lo, hi], else hi (kernels is sorted)."""
            i = bisect.bisect_left(kernels, lo)
            return kernels[i] if i < len(kernels) and kernels[i] <= hi else hi

        start = 0   # nodes made for a spec line have ids after the previous line's
        for n in order:
            node = G.node(n)
            if self.is_backward(n) or node["op"] in LEAF_OPS:
                continue
            nm = self.namer.name(n)
            if nm is None:
                continue
            rhs = self.forward_text(n)
            # the comment goes above the first kernel computing part of this line
            home = first_kernel(start, kernel_of(n))
            notes.setdefault(home, []).append(f"{nm} = {rhs}")
            start = n + 1
        if self.adj is not None:
            self.adjoint_notes(notes, order_set, kernel_of)
        return notes

    def adjoint_notes(self, notes, order_set, kernel_of):
        """Each adjoint equation goes above the kernels computing its node: the
        kernel that writes the node and the backward kernels feeding it that no
        earlier equation took (its helpers: a reciprocal, a reshape), the first of
        them in program order that no other equation's node is written after (the
        gradient of a weight tied across the steps of a recurrence sums a helper
        per step: its equation stands above the last run of them, not above the
        first step's).  An equation whose node needs no kernel of its own
        (``L_bar = 1``) waits for the next one that does; one whose node an
        earlier equation took joins that equation's notes."""
        G = self.G
        taken: dict = {}   # kernel node -> the kernel of the equation that took it
        placed: list = []  # (equation texts, its node's kernel, the kernels it took or None)
        waiting: list = []
        for eq in adjoint_equations(self.low, self.adj, self.namer):
            waiting.append(eq.text())
            if eq.node not in order_set or G.node(eq.node)["op"] in LEAF_OPS:
                continue
            owner = kernel_of(eq.node)
            if owner in taken:
                placed.append((waiting, taken[owner], None))
            else:
                part, stack, seen = [owner], [owner], {owner}
                while stack:
                    for p in G.g.predecessors(stack.pop()):
                        if (p in seen or p not in order_set or p in taken or not self.is_backward(p)
                                or G.node(p)["op"] in LEAF_OPS):
                            continue
                        seen.add(p)
                        part.append(p)
                        stack.append(p)
                # inlined nodes are part of a kernel, not kernels: the home is a kernel
                kernels = {kernel_of(p) for p in part}
                for k in kernels:
                    taken.setdefault(k, owner)
                placed.append((waiting, owner, kernels))
            waiting = []
        owners = sorted({owner for _, owner, kernels in placed if kernels is not None})
        home: dict = {}
        for _, owner, kernels in placed:
            if kernels is not None:
                i = bisect.bisect_left(owners, owner)
                after = owners[i - 1] if i > 0 else -1   # the last other equation's node before this one's
                home[owner] = min((k for k in kernels if k > after), default=owner)
        for texts, owner, _ in placed:
            notes.setdefault(home[owner], []).extend(texts)
        if waiting and placed:
            notes[home[placed[-1][1]]].extend(waiting)

    def forward_text(self, n):
        """The right-hand side of forward node n's equation: its spec line, else its expression."""
        node = self.G.node(n)
        expr_text = self.line_text.get(n)
        if n == self.low.example_loss and expr_text is None:
            expr_text = self.low.spec.loss.text
        if n == self.low.loss:
            expr_text = (f"mean over the batch of {EXAMPLE_LOSS}" if self.low.spec.reduction == "mean"
                         else f"sum over the batch of {EXAMPLE_LOSS}")
        if expr_text is None:
            if node["op"] == "map":
                expr_text = show(node["attrs"][0].xreplace(
                    {arg_symbol(i): self.namer.sym(a) for i, a in enumerate(node["args"])}))
            else:
                expr_text = self.namer.structural(n)
        return expr_text
