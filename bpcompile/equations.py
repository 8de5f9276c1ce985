"""The derivation as the lectures write it: forward equations and bar-notation adjoints.

``x_bar`` is dL/dx.  Every adjoint is written as the sum over the consumers of x
of (consumer's adjoint times local derivative), one term per path link, each with
the rule that produced it::

    a_bar = e_bar * (1 - e**2)        tanh
    W_bar = d_bar x^T                 matmul (summed over the batch)
    h1_bar = h3 term + h4 term        sum over consumers: paths meet here

Used by the generated code's comments and docstring, and by ``bpcompile inspect``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import networkx as nx
import sympy as sp
from sympy.printing.str import StrPrinter

from . import names
from .adjoint import Adjoints
from .graph import Lowered
from .ops import OUT, Contraction, Scatter, arg_symbol, gemm_form, local_derivative

LOSS = "L"            # the loss reduced over the batch
EXAMPLE_LOSS = "L_n"  # the per-example loss


class _Printer(StrPrinter):
    """SymPy's str printer with our function names (relu, sigmoid, ...)."""

    def _print_step(self, e):
        return f"({self._print(e.args[0])} > 0)"

    def _print_Add(self, expr, order=None):
        return print_add(self, expr)

    def _print_equal(self, e):
        return f"({self._print(e.args[0])} == {self._print(e.args[1])})"


def show(expr) -> str:
    return _Printer({"order": "none"}).doprint(expr)


@dataclass
class Equation:
    lhs: str
    terms: list          # [(rhs text, rule)]
    node: int            # the graph node the equation defines (adjoint or forward)

    @property
    def rhs(self) -> str:
        """The sum over consumers; a term that is itself a sum is parenthesised."""
        if len(self.terms) == 1:
            return self.terms[0][0]
        return " + ".join(f"({r})" if " + " in r or " - " in r else r for r, _ in self.terms)

    @property
    def rule(self) -> str:
        if len(self.terms) == 1:
            return self.terms[0][1]
        return f"sum over consumers ({', '.join(rule for _, rule in self.terms)})"

    def text(self, width=0) -> str:
        return f"{self.lhs} = {self.rhs}".ljust(width) + f"   # {self.rule}"


# An anonymous value is written inline (``(W @ x)_bar``, ``tanh(b + d)``) while
# its text is at most this many characters; a longer one is a named sub-result
# (``u1``, defined on a line of its own), so every line stays short and printing
# the equations costs time linear in the graph, however deep the nesting.
INLINE_LIMIT = 32
SUBRESULT_PREFIX = "u"


class Namer:
    """Display names of forward nodes: spec names, else their expression, else
    (an expression longer than INLINE_LIMIT) a sub-result name ``u1, u2, ...``."""

    def __init__(self, low: Lowered):
        self.low = low
        self.G = low.graph
        self.cache: dict = {}
        self.bar_alias: dict = {}   # anonymous node -> the name of the adjoint it shares
        self.subresults: dict = {}  # node -> its sub-result name
        self.definitions: dict = {}  # node -> the text its sub-result name stands for
        self._prepared = False
        self._counter = 0
        spec = low.spec
        self._taken = {*spec.inputs, *spec.params, *(nm for nm, _ in spec.graph), *low.named,
                       LOSS, EXAMPLE_LOSS, "N"}
        self._last_forward = max([low.loss, low.example_loss, low.output, *low.named.values()])

    def name(self, n) -> str | None:
        node = self.G.node(n)
        if node["op"] in ("input", "param"):
            return node["attrs"][0]
        if node["names"]:
            return node["names"][0]
        if n == self.low.loss:
            return LOSS
        if n == self.low.example_loss:
            return EXAMPLE_LOSS
        if node["op"] == "batch_size":
            return "N"
        if n <= self._last_forward:
            self._prepare()
            return self.subresults.get(n)
        return None

    def sym(self, n) -> sp.Expr:
        """A SymPy expression that displays node n."""
        if n not in self.cache:
            self._prepare()
            if n not in self.cache:
                self._compute(n)
        return self.cache[n]

    def _prepare(self):
        """Display every forward node once, in id order (args before their users), so
        the sub-results are numbered in the order the forward pass computes them."""
        if self._prepared:
            return
        self._prepared = True
        for n in range(self._last_forward + 1):
            if n in self.G.g and n not in self.cache:
                self._display(n)

    def _compute(self, n):
        """Display n and the anonymous nodes it is written in terms of (no recursion:
        a deep chain meets no recursion limit)."""
        need, stack = set(), [n]
        while stack:
            m = stack.pop()
            if m in need or m in self.cache:
                continue
            need.add(m)
            if self._fixed_name(m) is None:
                stack.extend(self.G.node(m)["args"])
        for m in sorted(need):
            self._display(m)

    def _fixed_name(self, n):
        node = self.G.node(n)
        if node["op"] in ("input", "param") or node["names"] or node["op"] == "batch_size" \
                or n in (self.low.loss, self.low.example_loss):
            return self.name(n)
        return None

    def _display(self, n):
        nm = self._fixed_name(n)
        node = self.G.node(n)
        if nm is not None:
            out = sp.Symbol(nm, real=True)
        elif node["op"] == "const":
            out = node["attrs"][0]
        else:
            if node["op"] == "map":
                out = node["attrs"][0].xreplace({arg_symbol(i): self.cache[a]
                                                 for i, a in enumerate(node["args"])})
                text = show(out)
            else:
                text = self.structural(n)
                out = sp.Symbol(text, real=True)
            if len(text) > INLINE_LIMIT and n <= self._last_forward:
                name = self._fresh()
                self.subresults[n] = name
                self.definitions[n] = text
                out = sp.Symbol(name, real=True)
        self.cache[n] = out

    def _fresh(self) -> str:
        while True:
            self._counter += 1
            name = f"{SUBRESULT_PREFIX}{self._counter}"
            if name not in self._taken and names.bar(name) not in self._taken:
                return name

    def text(self, n) -> str:
        return show(self.sym(n))

    def atom(self, n) -> str:
        t = self.text(n)
        return t if is_atomic(t) else f"({t})"

    def structural(self, n) -> str:
        node = self.G.node(n)
        op, args, attrs = node["op"], node["args"], node["attrs"]
        a = [self.atom(x) for x in args]
        if op == "contract":
            return contraction_text(attrs[0], a[0], a[1])
        if op == "reduce":
            kind, axes, keepdims, _ = attrs
            return f"{kind}({a[0]}" + (f", axis={axes[0] - len(self.G.node(args[0])['shape'])}"
                                       if len(axes) < len(self.G.node(args[0])["shape"]) else "") + ")"
        if op == "sum_to":
            return f"sum_n({a[0]})" if not attrs[1] and self.G.node(args[0])["batched"] else f"sum({a[0]})"
        if op == "take":
            return f"{a[0]}[{a[1]}]"
        if op == "onehot":
            return f"onehot({a[0]})"
        if op == "transpose":
            return f"{a[0]}.T"
        if op == "index":
            return f"{a[0]}[{attrs[0]}]"
        if op in ("reshape", "broadcast", "copy"):
            return a[0]
        return f"{op}({', '.join(a)})"


def contraction_text(form: Contraction, a: str, b: str) -> str:
    """A contraction as the lectures write it: ``W @ x``, ``d_bar x^T``, ``W^T @ d_bar``."""
    g = gemm_form(form.a, form.b, form.out)
    if g is None:
        if form.out == "" and form.a == form.b:
            return f"{a} . {b}"
        return f"einsum('{form.subscripts}', {a}, {b})"
    left, right = (a, b) if g.left == 0 else (b, a)
    if g.outer:
        return f"{left} {right}^T"
    return f"{left}{'^T' if g.trans_left else ''} @ {right}{'^T' if g.trans_right else ''}"


def print_add(printer, expr) -> str:
    """Print a sum with its positive terms first: ``z - m`` rather than ``-m + z``."""
    terms = list(expr.as_ordered_terms())
    pos = [t for t in terms if not t.could_extract_minus_sign()]
    neg = [t for t in terms if t.could_extract_minus_sign()]
    out = ""
    for t in pos + neg:
        if t in neg:
            s = printer.parenthesize(-t, 40) if (-t).is_Add else printer._print(-t)
            out += f" - {s}" if out else f"-{s}"
        else:
            s = printer._print(t)
            out += f" + {s}" if out else s
    return out


def forward_equations(low: Lowered, namer: Namer | None = None) -> list:
    """The forward program, one computation per line: [(lhs, rhs, per-example shape)].

    The spec's lines, each preceded by the sub-results (``u1 = ...``) that the
    equations name inside it, when a ``namer`` is given."""
    spec = low.spec
    G = low.graph
    lines = [(low.named[nm], nm, expr.text) for nm, expr in spec.graph]
    lines.append((low.example_loss, EXAMPLE_LOSS, spec.loss.text))
    subs = []
    if namer is not None:
        namer.sym(low.loss)   # names every sub-result of the forward graph
        subs = sorted(namer.subresults.items())
    out, k = [], 0
    for node, lhs, rhs in lines:
        # a sub-result is made before the first spec line whose node comes after it
        while k < len(subs) and subs[k][0] < node:
            n, sub = subs[k]
            out.append((sub, namer.definitions[n], G.node(n)["shape"]))
            k += 1
        out.append((lhs, rhs, G.node(node)["shape"]))
    for n, sub in subs[k:]:
        out.append((sub, namer.definitions[n], G.node(n)["shape"]))
    out.append((LOSS, f"{spec.reduction} over the batch of {EXAMPLE_LOSS}", ()))
    return out


def docstring_lines(low: Lowered, adj: Adjoints, namer: Namer | None = None) -> tuple:
    """The forward and adjoint equations as the generated files' headers print them:
    aligned columns, forward lines with their shapes, adjoint lines with their rules."""
    namer = namer or Namer(low)
    forward = [(f"{lhs} = {rhs}", shape) for lhs, rhs, shape in forward_equations(low, namer)]
    width = max(len(t) for t, _ in forward)
    forward_lines = [f"{t.ljust(width)}   shape {list(s)}" for t, s in forward]
    eqs = adjoint_equations(low, adj, namer)
    width = min(60, max((len(f"{e.lhs} = {e.rhs}") for e in eqs), default=0))
    return forward_lines, [e.text(width) for e in eqs]


# How a reader sees the adjoint of a softmax-family function's argument z, given
# the function's value y and its adjoint y_bar (the rules the lowering implements
# over several nodes, with the row max subtracted for stability).
MACRO_RULES = {
    "softmax": ("{y}*({g} - sum({g}*{y}))", "softmax"),
    "log_softmax": ("{g} - softmax({z})*sum({g})", "log_softmax"),
    "logsumexp": ("{g}*softmax({z})", "logsumexp"),
    "softmax_cross_entropy": ("{g}*(softmax({z}) - onehot({label}))",
                              "softmax + cross-entropy: y_hat - onehot(label)"),
}


def adjoint_equations(low: Lowered, adj: Adjoints, namer: Namer | None = None) -> list:
    """One equation per adjoint, in the order the reverse pass computes them.

    Read as the lectures write them: the nodes inside a softmax-family function
    are one rule, an anonymous node whose adjoint is a named one's (``W @ x`` in
    ``z = W @ x + b``) takes that name, and the batch reduction is ``L_bar / N``.
    """
    namer = namer or Namer(low)
    G = low.graph
    out = []
    # the batch reduction L = sum_n(L_n) [/ N] reads as one equation: L_n_bar = L_bar / N
    total = G.node(low.loss)["args"][0] if G.node(low.loss)["op"] == "map" else low.loss
    hidden, collapsed = _macro_interiors(G, adj)
    alias = namer.bar_alias
    named_bar = {}
    for x in adj.order:
        if namer.name(x) is not None:
            named_bar.setdefault(adj.bar[x], bar_name(namer, x))
        elif adj.bar[x] in named_bar and x not in collapsed:
            alias[x] = named_bar[adj.bar[x]]
    for x in adj.order:
        if (x == total and x != low.loss and G.node(x)["op"] == "sum_to") or x in hidden or x in alias:
            continue
        terms = adj.terms[x]
        lhs = bar_name(namer, x)
        rendered = []
        macro_done = set()
        for consumer, rule, contribution in terms:
            if consumer is None:
                rendered.append(("1", "seed: dL/dL = 1"))
            elif consumer == total and x == low.example_loss:
                rendered.append(("L_bar/N", "mean over the batch") if low.spec.reduction == "mean"
                                else ("L_bar", "sum over the batch"))
            elif (x, consumer) in collapsed.get(x, {}):
                m = collapsed[x][(x, consumer)]
                if m in macro_done:
                    continue
                macro_done.add(m)
                kind, z, label = G.macros[m]
                template, why = MACRO_RULES[kind]
                rendered.append((template.format(y=namer.atom(m), g=bar_name(namer, m), z=namer.text(z),
                                                 label=namer.text(label) if label is not None else ""),
                                 why))
            else:
                rendered.append(term_text(G, namer, x, consumer, rule, contribution))
        out.append(Equation(lhs, rendered, adj.bar[x]))
    return out


def _macro_interiors(G, adj):
    """The nodes inside each softmax-family function on the loss path, to be shown
    as the function's one rule; a function whose interior is also read from
    outside it is shown node by node."""
    hidden, collapsed = set(), {}
    for m, (kind, z, label) in G.macros.items():
        if m not in adj.bar or z not in adj.bar:
            continue
        interior = (nx.ancestors(G.g, m) & nx.descendants(G.g, z)) - {z}
        inside = interior | {m}
        if any(c not in inside and c in adj.bar for n in interior for c in G.g.successors(n)):
            continue
        hidden |= {n for n in interior if n in adj.bar}
        collapsed.setdefault(z, {}).update({(z, c): m for c in G.g.successors(z) if c in inside})
    return hidden, collapsed


def bar_name(namer: Namer, x) -> str:
    if x in namer.bar_alias:
        return namer.bar_alias[x]
    nm = namer.name(x)
    if nm is None:
        return f"({namer.text(x)})_bar"
    return names.bar(nm)


def is_atomic(text: str) -> bool:
    """True for a name, a number, or one call/index like ``max(z)`` or ``z[label]``."""
    if text.isidentifier() or text.replace(".", "").replace("/", "").isdigit():
        return True
    m = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*([(\[])(.*)([)\]])", text)
    if not m:
        return False
    depth = 0
    for ch in m.group(1) + m.group(2):
        depth += ch in "([" 
        depth -= ch in ")]"
        if depth == 0:
            return False
    return True


def term_text(G, namer, x, consumer, rule, contribution):
    """consumer_bar times d consumer / d x, in the lectures' notation."""
    node = G.node(consumer)
    gbar = bar_name(namer, consumer)
    op = node["op"]
    batch_sum = " (summed over the batch)" if node["batched"] and not G.node(x)["batched"] else ""
    if isinstance(contribution, Scatter):
        return (f"{gbar} at [{namer.text(contribution.label)}] (zero elsewhere)", rule)
    if op == "map":
        expr = node["attrs"][0]
        parts = []
        for pos, a in enumerate(node["args"]):
            if a != x:
                continue
            d = local_derivative(expr, pos)
            subs = {arg_symbol(i): namer.sym(arg) for i, arg in enumerate(node["args"])}
            subs[OUT] = namer.sym(consumer)
            d = d.xreplace(subs)
            g = sp.Symbol(gbar, real=True)
            parts.append(show(g * d) if d != 1 else gbar)
        return (" + ".join(parts) + batch_sum, rule)
    if op == "contract":
        form = node["attrs"][0]
        a, b = node["args"]
        pos = 0 if a == x else 1
        other = namer.atom(b if pos == 0 else a)
        adj_form = form.transposed_for(pos)
        text = contraction_text(adj_form, gbar, other) if pos == 0 else contraction_text(adj_form, other, gbar)
        return (text + batch_sum, "matmul" if form.out or len(form.a) > 1 else "dot")
    if op == "reduce":
        kind = node["attrs"][0]
        if kind == "max":
            return (f"{gbar} * ({namer.atom(x)} == {namer.atom(consumer)})", "max")
        return (f"{gbar} (broadcast back over the summed axes)", "sum")
    if op == "sum_to":
        return (f"{gbar} (broadcast over the batch)", rule)
    if op == "broadcast":
        return (f"sum({gbar})", "broadcast")
    if op == "transpose":
        return (f"{gbar}.T", "transpose")
    if op == "index":
        return (f"{gbar} at [{node['attrs'][0]}] (zero elsewhere)", "index")
    return (gbar, rule)
