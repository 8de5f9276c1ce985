"""The derivation as the lectures write it: forward equations and bar-notation adjoints.

``x_bar`` is dL/dx.  Every adjoint is written as the sum over the consumers of x
of (consumer's adjoint times local derivative), one term per path link, each with
the rule that produced it::

    a_bar = e_bar*(1 - e**2)          tanh
    W_bar = d_bar x^T                 matmul (summed over the batch)
    h1_bar = h3 term + h4 term        sum over consumers: paths meet here

Every value is a SymPy expression: a structural operation (a contraction, a
reduction, an index) is written by its record (``ops.STRUCTURAL_OPS``) as a
display node of ``ops/notation.py``, with its own ``_sympystr`` / ``_latex``
printing and a precedence, so SymPy's printers place the brackets
(``-(W @ x)**2``, never ``-W @ x**2``).  An adjoint is named after its node
(``z2_bar``); a node the spec leaves unnamed gets a short name (``q1``) that the
forward program defines on a line of its own (the legend).

Used by the generated code's comments and docstring, and by ``bpcompile inspect``.
"""

from __future__ import annotations

import bisect

import re
from dataclasses import dataclass, field

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE, precedence

from .. import names
from ..ops.adjoint import Adjoints
from ..escape import latex_text
from ..frontend.graph import Lowered
from ..ops import OUT, STRUCTURAL_OPS, Scatter, arg_symbol, local_derivative
from ..ops.notation import Kw, _Display, call, show
from ..ops.structural import batch_note

LOSS = "L"            # the loss reduced over the batch
EXAMPLE_LOSS = "L_n"  # the per-example loss

_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "sigma", "tau", "phi"}


def latex_name(name: str) -> str:
    r"""A name in the lectures' notation: ``z2`` as ``z_{2}``, ``z2_bar`` as
    ``\overline{z_{2}}``, ``y_hat`` as ``\hat{y}``; any other text set as text."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
        return "\\text{" + latex_text(name) + "}"
    if name.endswith("_bar") and len(name) > 4:
        return "\\overline{" + latex_name(name[:-4]) + "}"
    if name.endswith("_hat") and len(name) > 4:
        return "\\hat{" + latex_name(name[:-4]) + "}"
    m = re.fullmatch(r"([A-Za-z]+)([0-9]+)|([A-Za-z][A-Za-z0-9]*?)_([A-Za-z0-9_]+)", name)
    if m is None:
        return "\\" + name if name in _GREEK else name
    head, sub = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    head = "\\" + head if head in _GREEK else head
    return head + "_{" + sub.replace("_", "\\_") + "}"


class _LatexPrinter(LatexPrinter):
    """SymPy's LaTeX printer with the lectures' names and our functions."""

    def __init__(self):
        super().__init__({"mul_symbol": "dot"})

    def _print_Symbol(self, e, style="plain"):
        return latex_name(e.name)

    def _print_Function(self, e, exp=None):
        if isinstance(e, _Display):
            return e._latex(self, exp)
        word = type(e).__name__
        if word in ("tanh", "exp", "log", "sin", "cos", "sqrt", "Abs", "Max", "Min"):
            return super()._print_Function(e, exp)
        text = f"\\operatorname{{{word.replace('_', chr(92) + '_')}}}" \
            f"\\left({', '.join(self._print(a) for a in e.args)}\\right)"
        return f"{text}^{{{exp}}}" if exp is not None else text

    def _print_Add(self, expr, order=None):
        """Positive terms first, as the text: ``y - g``, never ``- g + y``."""
        terms = list(expr.as_ordered_terms())
        out = ""
        for t in [t for t in terms if not t.could_extract_minus_sign()] + \
                [t for t in terms if t.could_extract_minus_sign()]:
            if t.could_extract_minus_sign():
                s = self._print(-t)
                s = f"\\left({s}\\right)" if (-t).is_Add else s
                out += f" - {s}" if out else f"- {s}"
            else:
                out += f" + {self._print(t)}" if out else self._print(t)
        return out



def latex(expr) -> str:
    return _LatexPrinter().doprint(expr)


# -- equations -------------------------------------------------------------------

@dataclass
class Term:
    """One consumer's contribution: an expression, a note said in words
    (``(summed over the batch)``), and the rule that produced it."""

    expr: object          # a SymPy expression
    rule: str
    note: str = ""

    @property
    def text(self) -> str:
        return show(self.expr) + (f" {self.note}" if self.note else "")


@dataclass
class Equation:
    lhs: str
    terms: list          # [(rhs text, rule)]
    node: int            # the graph node the equation defines (adjoint or forward)
    exprs: list = field(default_factory=list)   # [Term], when made from the graph

    @property
    def rhs(self) -> str:
        """The sum over consumers: ``a + b``, ``a - b`` (a negated term), a term that
        is itself a sum in brackets."""
        if len(self.terms) == 1:
            return self.terms[0][0]
        out = ""
        for k, (r, _) in enumerate(self.terms):
            term = self.exprs[k] if k < len(self.exprs) else None
            if term is not None and not term.note and term.expr.could_extract_minus_sign():
                r, sign = show(-term.expr), " - "
                r = f"({r})" if (-term.expr).is_Add else r
            else:
                sign = " + "
                r = f"({r})" if re.search(r" [-+] ", r) and not r.startswith("(") else r
            out += (sign if out else sign.strip() if sign == " - " else "") + r
        return out

    @property
    def rule(self) -> str:
        if len(self.terms) == 1:
            return self.terms[0][1]
        rules = [rule for _, rule in self.terms]
        listed = ", ".join(rules)
        if len(listed) > 60:      # many consumers: each rule once, with its count
            count = {r: rules.count(r) for r in rules}
            listed = ", ".join(f"{r} x{k}" if k > 1 else r for r, k in count.items())
        return f"sum over consumers ({listed})"

    def text(self, width=0) -> str:
        return f"{self.lhs} = {self.rhs}".ljust(width) + f"   # {self.rule}"

    def lines(self, width=0, columns=100) -> list:
        """``text`` wrapped at ``columns``: the sum broken between its terms (a
        long term at its top-level operators), continuations under the ``=``, the
        rule on a line of its own when it does not fit."""
        return wrap_equation(f"{self.lhs} = ", self.rhs, f"# {self.rule}", width, columns)

    def latex(self) -> str:
        """The right-hand side as LaTeX, from the expressions (spec text escaped)."""
        if not self.exprs:
            return "\\text{" + latex_text(self.rhs) + "}"
        out = ""
        for k, t in enumerate(self.exprs):
            e = t.expr
            sign = " + "
            if k and not t.note and e.could_extract_minus_sign():
                e, sign = -e, " - "
            body = latex(e)
            if len(self.exprs) > 1 and e.is_Add:
                body = f"\\left({body}\\right)"
            if t.note:
                body += " \\quad\\text{" + latex_text(t.note) + "}"
            out += (sign if k else "") + body
        return out


def wrap_equation(head: str, rhs: str, comment: str, width=0, columns=100) -> list:
    for pad in (width, 0):     # aligned with the other lines, else just fitting
        one = f"{head}{rhs}".ljust(pad) + f"   {comment}"
        if len(one) <= columns:
            return [one]
    indent = " " * min(len(head), columns // 3)
    pieces = wrap_text(head + rhs, columns, indent)
    if len(pieces[-1]) + 3 + len(comment) <= columns:
        pieces[-1] += f"   {comment}"
    else:
        pieces += wrap_text(indent + comment, columns, indent + "  ")
    return pieces


def wrap_text(text: str, columns: int, indent: str) -> list:
    """``text`` broken before its shallowest operators (`` + ``, `` - ``, then
    `` @ ``, ``*`` and ``, ``) so each line fits ``columns`` where it can."""
    depth, spots = 0, []
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == " " and text[i + 1:i + 3] in ("+ ", "- ", "@ "):
            spots.append((depth, 0, i))
        elif ch == "," and text[i + 1:i + 2] == " ":
            spots.append((depth, 1, i + 1))
        elif ch == "*" and text[i + 1:i + 2] != "*" and text[i - 1:i] != "*":
            spots.append((depth, 1, i + 1))
    lines, start, limit = [], 0, columns
    at = [s[2] for s in spots]     # in increasing order: the window of each line is a bisection
    while len(text) - start > limit:
        fits = spots[bisect.bisect_right(at, start):bisect.bisect_right(at, start + limit)]
        if not fits:
            break
        best = min(fits, key=lambda s: (s[0], s[1], -s[2]))
        lines.append(text[start:best[2]].rstrip())
        start = best[2] + (1 if text[best[2]:best[2] + 1] == " " else 0)
        limit = columns - len(indent)
    lines.append(text[start:])
    return [lines[0]] + [indent + ln for ln in lines[1:]]


# An anonymous value is written inline (``W @ x``, ``tanh(b + d)``) while its
# text is at most this many characters; a longer one is a named sub-result
# (``u1``, defined on a line of its own), so every line stays short and printing
# the equations costs time linear in the graph, however deep the nesting.
INLINE_LIMIT = 32
SUBRESULT_PREFIX = "u"
# The name of an anonymous value whose adjoint the equations show (``q1_bar``),
# defined by a line of the forward program (``q1 = z3 - y``).
LEGEND_PREFIX = "q"


class Namer:
    """Display names of forward nodes: spec names, else their expression, else
    (an expression longer than INLINE_LIMIT) a sub-result name ``u1, u2, ...``.

    ``adjoint_names`` adds the legend: a name ``q1, q2, ...`` for each anonymous
    node whose adjoint an equation defines (``q1_bar``)."""

    def __init__(self, low: Lowered):
        self.low = low
        self.G = low.graph
        self.cache: dict = {}
        self.bar_alias: dict = {}   # anonymous node -> the name of the adjoint it shares
        self.subresults: dict = {}  # node -> its sub-result name
        self.definitions: dict = {}  # node -> the text its sub-result or legend name stands for
        self.legend: dict = {}      # anonymous node -> its legend name (for its adjoint)
        self._legend_done = False
        self._prepared = False
        self._calls = None
        self._counter = 0
        self._equations = None   # (adjoints, their equations), once built
        spec = low.spec
        self._taken = {*spec.inputs, *spec.params, *(nm for nm, _ in spec.graph), *low.named,
                       LOSS, EXAMPLE_LOSS, "N"}
        self._last_forward = max([low.loss, low.example_loss, low.output, *low.named.values()])

    @classmethod
    def of(cls, low: Lowered) -> "Namer":
        """The namer of ``low`` that its programs, its printer and ``inspect`` share:
        every forward node is displayed once, and the adjoint equations built once
        (``adjoint_equations``), not once per program and again for the docstring.
        What a namer computes depends on the lowering alone, so sharing one changes
        no name and no text."""
        namer = low.shared.get("namer")
        if namer is None:
            namer = low.shared["namer"] = cls(low)
        return namer

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
            macro = self.G.macros.get(n, ("",))
            if macro[0] in WINDOW_MACROS:
                out = window_call(self.G, n, self.sym)
            elif node["op"] == "map":
                out = node["attrs"][0].xreplace({arg_symbol(i): self.cache[a]
                                                 for i, a in enumerate(node["args"])})
            else:
                out = self.structural_expr(n)
            text = show(out)
            # the windows of a convolution's or a pooling's input, and a pooling's
            # reduction of them, are part of its call (its rule reads them): written
            # inline, never sub-results of their own
            if len(text) > INLINE_LIMIT and n <= self._last_forward and n not in self._inside_calls():
                name = self._fresh(SUBRESULT_PREFIX)
                self.subresults[n] = name
                self.definitions[n] = text
                out = sp.Symbol(name, real=True)
        self.cache[n] = out

    def _inside_calls(self) -> set:
        """The windows nodes, and the reductions of a pooling, that convolutions and
        poolings are made of."""
        if self._calls is None:
            G = self.G
            self._calls = {n for n in G.g if G.node(n)["op"] == "windows"}
            for m, (kind, _, _) in G.macros.items():
                if kind in WINDOW_MACROS:
                    self._calls |= {a for a in G.node(m)["args"] if G.node(a)["op"] in ("windows", "reduce")}
        return self._calls

    def _fresh(self, prefix) -> str:
        while True:
            if prefix == SUBRESULT_PREFIX:
                self._counter += 1
                k = self._counter
            else:
                self._legend_counter = getattr(self, "_legend_counter", 0) + 1
                k = self._legend_counter
            name = f"{prefix}{k}"
            if name not in self._taken and names.bar(name) not in self._taken:
                return name

    def adjoint_names(self, nodes) -> None:
        """Give each anonymous forward node in ``nodes`` (those whose adjoint an
        equation defines) a legend name, in forward order; once per Namer."""
        if self._legend_done:
            return
        self._legend_done = True
        self._prepare()
        for n in sorted(nodes):
            if n <= self._last_forward and self.name(n) is None and n not in self.bar_alias:
                self.legend[n] = self._fresh(LEGEND_PREFIX)
                self.definitions[n] = self.text(n)

    def text(self, n) -> str:
        return show(self.sym(n))

    def definition(self, n) -> sp.Expr:
        """The expression computing node n from its arguments' displays (for a named
        node, what stands right of its ``=``)."""
        node = self.G.node(n)
        if node["op"] in ("input", "param", "const", "batch_size"):
            return self.sym(n)
        if node["op"] == "map":
            return node["attrs"][0].xreplace({arg_symbol(i): self.sym(a) for i, a in enumerate(node["args"])})
        return self.structural_expr(n)

    def atom(self, n) -> str:
        """The text of n, bracketed unless it is a name, a number or a call."""
        e = self.sym(n)
        t = show(e)
        return t if precedence(e) >= PRECEDENCE["Func"] or is_atomic(t) else f"({t})"

    def structural_expr(self, n) -> sp.Expr:
        """A structural node as its record's text form, over its arguments' displays."""
        node = self.G.node(n)
        a = [self.cache[x] if x in self.cache else self.sym(x) for x in node["args"]]
        return STRUCTURAL_OPS[node["op"]].text(self.G, n, a)

    def structural(self, n) -> str:
        return show(self.structural_expr(n))


def forward_equations(low: Lowered, namer: Namer | None = None) -> list:
    """The forward program, one computation per line: [(lhs, rhs, per-example shape)].

    The spec's lines, each preceded by the sub-results (``u1 = ...``) and legend
    names (``q1 = ...``) that the equations use inside it, when a ``namer`` is given."""
    spec = low.spec
    G = low.graph
    lines = [(low.named[nm], nm, expr.text) for nm, expr in spec.graph]
    lines.append((low.example_loss, EXAMPLE_LOSS, spec.loss.text))
    subs = []
    if namer is not None:
        namer.sym(low.loss)   # names every sub-result of the forward graph
        subs = sorted({**namer.subresults, **namer.legend}.items())
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
    aligned columns, forward lines with their shapes, adjoint lines with their rules,
    each wrapped at 100 columns."""
    namer = namer or Namer.of(low)
    eqs = adjoint_equations(low, adj, namer)     # first: it names the legend
    forward = [(f"{lhs} = {rhs}", shape) for lhs, rhs, shape in forward_equations(low, namer)]
    width = min(60, max(len(t) for t, _ in forward))
    forward_lines = [ln for t, s in forward
                     for ln in wrap_equation("", t, f"shape {list(s)}", width, DOC_COLUMNS)]
    width = min(60, max((len(f"{e.lhs} = {e.rhs}") for e in eqs), default=0))
    return forward_lines, [ln for e in eqs for ln in e.lines(width, DOC_COLUMNS)]


DOC_COLUMNS = 92    # a docstring line is indented by 4 and stays within 100 columns


# How a reader sees the adjoint of a softmax-family function's argument z, given
# the function's value y and its adjoint g = y_bar (the rules the lowering
# implements over several nodes, with the row max subtracted for stability).
def _macro_rule(kind, y, g, z, label):
    if kind == "softmax":
        return y * (g - call("sum", g * y)), "softmax"
    if kind == "log_softmax":
        return g - call("softmax", z) * call("sum", g), "log_softmax"
    if kind == "logsumexp":
        return g * call("softmax", z), "logsumexp"
    return (g * (call("softmax", z) - call("onehot", label)),
            "softmax + cross-entropy: y_hat - onehot")


MACRO_RULES = ("softmax", "log_softmax", "logsumexp", "softmax_cross_entropy")
# Convolutions and poolings (ops/functions.py): the windows of their input, then a
# contraction or a reduction, read as one call and one rule per argument.
WINDOW_MACROS = ("conv1d", "conv2d", "max_pool2d", "avg_pool2d")


def window_call(G, m, sym) -> sp.Expr:
    """The call a convolution or pooling node ``m`` was made by: ``conv2d(x, W, stride=2)``."""
    kind, x, other = G.macros[m]
    args = (sym(x),) if other is None else (sym(x), sym(other))
    return call(kind, *args, *G.macro_keywords.get(m, ()))


def _window_rule(G, namer, m, x) -> Term:
    """The term of ``x_bar`` (x the input or the kernel) from the convolution or
    pooling ``m``, as a call: the input's adjoint of a convolution is the transposed
    convolution of ``m_bar`` with the kernel, the kernel's the correlation of the
    input with ``m_bar`` (PyTorch's conv2d_weight); a max pooling's adjoint goes
    to each window's maximum (ties split equally), an average's is spread evenly
    over each window."""
    kind, z, other = G.macros[m]
    g = sp.Symbol(bar_name(namer, m), real=True)
    kws = G.macro_keywords.get(m, ())
    if kind.startswith("conv"):
        if x == z:
            return Term(call(f"conv_transpose{kind[4:]}", g, namer.sym(other), *kws), kind)
        return Term(call(f"{kind}_weight", namer.sym(z), g, *kws), kind, batch_note(G, m, other))
    if kind == "max_pool2d":
        return Term(call("max_unpool2d", g, namer.sym(z), *kws), kind)
    return Term(call("avg_unpool2d", g, *kws), kind)


def _spread_rule(kind, y, g, z, shape, axes) -> Term:
    """The adjoint of z through y = var(z) or std(z) over ``axes`` of its ``shape``,
    with n entries averaged: 2*(z - mean(z))*y_bar/n, and (z - mean(z))*y_bar/(n*y)
    for std (the two-pass lowering's nodes, one rule to a reader)."""
    n = 1
    for a in axes:
        n *= shape[a]
    whole = len(axes) == len(shape)
    mean = call("mean", z) if whole else call("mean", z, Kw(sp.Symbol("axis"), sp.Integer(axes[0] - len(shape))))
    expr = 2 * g * (z - mean) / n if kind == "var" else g * (z - mean) / (n * y)
    return Term(expr, kind, "" if whole else "(broadcast back over the averaged axis)")


SPREAD_RULES = ("var", "std")


def adjoint_equations(low: Lowered, adj: Adjoints, namer: Namer | None = None) -> list:
    """One equation per adjoint, in the order the reverse pass computes them.

    Read as the lectures write them: the nodes inside a softmax-family function
    are one rule, an anonymous node whose adjoint is a named one's (``W @ x`` in
    ``z = W @ x + b``) takes that name, the batch reduction is ``L_bar / N``, and
    every other anonymous node's adjoint is named by the legend (``q1_bar``).
    Built once per namer and reverse pass: the list is shared, not to be changed.
    """
    namer = namer or Namer.of(low)
    if namer._equations is not None and namer._equations[0] is adj:
        return namer._equations[1]
    out = _adjoint_equations(low, adj, namer)
    namer._equations = (adj, out)
    return out


def _adjoint_equations(low: Lowered, adj: Adjoints, namer: Namer) -> list:
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
    shown = [x for x in adj.order
             if not ((x == total and x != low.loss and G.node(x)["op"] == "sum_to") or x in hidden
                     or x in alias)]
    namer.adjoint_names(shown)
    for x in shown:
        lhs = bar_name(namer, x)
        rendered = []
        macro_done = set()
        for consumer, rule, contribution in adj.terms[x]:
            if consumer is None:
                rendered.append(Term(sp.Integer(1), "seed: dL/dL = 1"))
            elif consumer == total and x == low.example_loss:
                mean = low.spec.reduction == "mean"
                rendered.append(Term(_bar(LOSS) / sp.Symbol("N", positive=True) if mean else _bar(LOSS),
                                     "mean over the batch" if mean else "sum over the batch"))
            elif (x, consumer) in collapsed.get(x, {}):
                for m in collapsed[x][(x, consumer)]:
                    if m in macro_done:
                        continue
                    macro_done.add(m)
                    kind, z, extra = G.macros[m]
                    if kind in WINDOW_MACROS:
                        rendered.append(_window_rule(G, namer, m, x))
                        continue
                    g = sp.Symbol(bar_name(namer, m), real=True)
                    if kind in SPREAD_RULES:
                        rendered.append(_spread_rule(kind, namer.sym(m), g, namer.sym(z), G.node(z)["shape"], extra))
                        continue
                    expr, why = _macro_rule(kind, namer.sym(m), g, namer.sym(z),
                                            namer.sym(extra) if extra is not None else None)
                    rendered.append(Term(expr, why))
            else:
                rendered.append(term_expr(G, namer, x, consumer, rule, contribution))
        out.append(Equation(lhs, [(t.text, t.rule) for t in rendered], adj.bar[x], rendered))
    return out


def _bar(name: str) -> sp.Symbol:
    return sp.Symbol(names.bar(name), real=True)


def _between(g, z, m) -> set:
    """The nodes on paths from z to m, both excluded (and m's ancestors that z
    reaches).  Node ids grow in creation order and every edge points from an older
    node to a newer one, so the search never leaves the ids between z and m: its
    cost is the function's own size, not the graph's (nx.ancestors walked the whole
    graph behind every softmax: quadratic in a chain of them)."""
    behind, stack = set(), [m]
    while stack:
        for p in g.predecessors(stack.pop()):
            if p > z and p not in behind:
                behind.add(p)
                stack.append(p)
    inside, stack = set(), [z]
    while stack:
        for s in g.successors(stack.pop()):
            if s in behind and s not in inside:
                inside.add(s)
                stack.append(s)
    return inside


def _macro_interiors(G, adj):
    """The nodes inside each softmax-family function, convolution and pooling on the
    loss path, to be shown as the function's one rule; a function whose interior is
    also read from outside it is shown node by node.  Returns the hidden nodes and
    {x: {(x, consumer): [functions whose rule stands for that term of x_bar]}}.

    The windows of an input are one node for every convolution and pooling of it
    with the same window sizes, stride and padding: each of them is a term of the
    input's adjoint, its own rule."""
    hidden, collapsed = set(), {}
    windowed = {}
    for m, (kind, z, label) in G.macros.items():
        if m not in adj.bar:
            continue
        if kind in WINDOW_MACROS:
            windowed[m] = _between(G.g, z, m)
            continue
        if z not in adj.bar:
            continue
        interior = _between(G.g, z, m)
        inside = interior | {m}
        if any(c not in inside and c in adj.bar for n in interior for c in G.g.successors(n)):
            continue
        hidden |= {n for n in interior if n in adj.bar}
        for c in G.g.successors(z):
            if c in inside:
                collapsed.setdefault(z, {})[(z, c)] = [m]
    around = set(windowed).union(*windowed.values())
    for m, interior in windowed.items():
        kind, z, other = G.macros[m]
        if any(c not in around and c in adj.bar for n in interior for c in G.g.successors(n)):
            continue
        if z in adj.bar:
            hidden |= {n for n in interior if n in adj.bar}
            for c in G.g.successors(z):
                if c in interior or c == m:
                    collapsed.setdefault(z, {}).setdefault((z, c), []).append(m)
        if other is not None and other in adj.bar:
            collapsed.setdefault(other, {}).setdefault((other, m), []).append(m)
    return hidden, collapsed


def bar_name(namer: Namer, x) -> str:
    """``z2_bar``: the adjoint of x named after x (its spec name, its sub-result or
    legend name); an anonymous node not in the legend as ``(expression)_bar``."""
    if x in namer.bar_alias:
        return namer.bar_alias[x]
    nm = namer.name(x) or namer.legend.get(x)
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
    """consumer_bar times d consumer / d x, as (text, rule)."""
    t = term_expr(G, namer, x, consumer, rule, contribution)
    return t.text, t.rule


def term_expr(G, namer, x, consumer, rule, contribution) -> Term:
    """consumer_bar times d consumer / d x, in the lectures' notation."""
    node = G.node(consumer)
    gname = bar_name(namer, consumer)
    g = sp.Symbol(gname, real=True)
    if isinstance(contribution, Scatter):
        return Term(g, rule, f"at [{namer.text(contribution.label)}] (zero elsewhere)")
    if node["op"] != "map":
        return Term(*STRUCTURAL_OPS[node["op"]].term(G, consumer, x, g, namer.sym, rule))
    expr = node["attrs"][0]
    total = sp.Integer(0)
    for pos, a in enumerate(node["args"]):
        if a != x:
            continue
        d = local_derivative(expr, pos)
        subs = {arg_symbol(i): namer.sym(arg) for i, arg in enumerate(node["args"])}
        subs[OUT] = namer.sym(consumer)
        d = replace_unevaluated(d, subs)    # 2*(y - g) as the chain rule gives it, not 2*y - 2*g
        total += g * d
    return Term(total, rule, batch_note(G, consumer, x))


def _keeps_unevaluated(func) -> bool:
    """Whether ``func(*args, evaluate=False)`` builds what ``func(*args)`` builds under
    ``sp.evaluate(False)``: true of Add, Mul, Pow and of functions that keep
    SymPy's own constructor (some classes, Max and Min among them, read the flag
    differently or take no ``evaluate``)."""
    if func in (sp.Add, sp.Mul, sp.Pow):
        return True
    return (isinstance(func, type) and issubclass(func, sp.Function)
            and func.__new__ in _FUNCTION_NEW and func._new_.__func__ is sp.Function._new_.__func__)


# the constructors of SymPy's functions (tanh, exp, cos, erf, ...) that read ``evaluate`` as the flag
_FUNCTION_NEW = (sp.Function.__new__, sp.core.function.DefinedFunction.__new__)


def replace_unevaluated(expr: sp.Expr, subs: dict) -> sp.Expr:
    """``expr.xreplace(subs)`` with each rebuilt node left unevaluated, as under
    ``with sp.evaluate(False)``, but without flipping SymPy's global flag: each flip
    clears SymPy's whole cache, and a compile that flipped it once per adjoint term
    spent 40% of its time recomputing what the cache had held.  An expression with
    a node of another kind is replaced under the flag, as before."""
    done: dict = {}
    stack = [expr]
    while stack:   # post-order without recursion: every rebuilt node's args are done first
        e = stack[-1]
        if e in done:
            stack.pop()
            continue
        if e in subs:
            done[e] = subs[e]
            stack.pop()
            continue
        if not isinstance(e, sp.Basic) or type(e)._xreplace is not sp.Basic._xreplace:
            break
        pending = [a for a in e.args if a not in done]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        args = tuple(done[a] for a in e.args)
        if args == e.args and all(x is y for x, y in zip(args, e.args)):
            done[e] = e
        elif _keeps_unevaluated(e.func):
            done[e] = e.func(*args, evaluate=False)
        else:
            break
    else:
        return done[expr]
    with sp.evaluate(False):
        return expr.xreplace(subs)
