"""``bpcompile inspect``: the derivation as the lectures write it.

The forward program with shapes, the adjoint program in bar notation in the
order it runs (each line with its rule; sums over consumers written as sums),
the shared subexpressions and where each is reused, and op counts: forward,
gradient, their ratio, and the naive expanded derivative at a small instance of
the spec (every parameter's derivative as one SymPy expression, no sharing), so
the savings of reverse mode are a measured number.  Printed as text, LaTeX or
JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

import sympy as sp

from ..compiler import Compiled
from ..ir.equations import (EXAMPLE_LOSS, LOSS, Equation, Namer, adjoint_equations, forward_equations, latex,
                             latex_name, show, wrap_equation)
from ..escape import latex_text, terminal
from ..ops import STRUCTURAL_OPS

from ..limits import MAX_NAIVE_EXPANSION_OPS, MAX_NAIVE_SYMPY_DEPTH, MAX_NAIVE_SYMPY_OPS, NAIVE_COUNT_DIGITS

NAIVE_MAX_ENTRIES = 400   # differentiated entries beyond which SymPy does not differentiate
NAIVE_COUNT_CAP = 10**NAIVE_COUNT_DIGITS
MAX_LATEX_CHARS = 20_000  # of one equation's text set as LaTeX; the rest is elided, said so


@dataclass
class Derivation:
    name: str
    forward: list            # [{lhs, rhs, shape}]
    adjoint: list            # [{lhs, terms: [{rhs, rule}]}]
    shared: list             # [{name, expr, kind, used_by}]
    counts: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def derive(compiled: Compiled, naive: bool = True) -> Derivation:
    low, adj = compiled.lowered, compiled.adjoints
    namer = Namer.of(low)   # the one the compile named the legend with: built already
    equations = adjoint_equations(low, adj, namer)    # first: it names the legend (q1, ...)
    nodes = {**{nm: n for nm, n in low.named.items()}, EXAMPLE_LOSS: low.example_loss,
             **{nm: n for n, nm in {**namer.subresults, **namer.legend}.items()}}
    forward = []
    for lhs, rhs, shape in forward_equations(low, namer):
        if lhs == LOSS:
            tex = ("\\frac{1}{N}" if low.spec.reduction == "mean" else "") + "\\sum_{n} L_{n}"
        else:
            tex = latex(namer.definition(nodes[lhs]))
        forward.append({"lhs": lhs, "rhs": rhs, "shape": list(shape), "latex": tex})
    adjoint = [{"lhs": eq.lhs, "rhs": eq.rhs, "terms": [{"rhs": r, "rule": rule} for r, rule in eq.terms],
                "latex": eq.latex()} for eq in equations]
    program = compiled.programs["value_and_grad"]
    counts = {
        "forward_ops": program.op_count("forward"),
        "gradient_ops": program.op_count("backward"),
        "forward_kernels": program.count("forward"),
        "gradient_kernels": program.count("backward"),
    }
    counts["ratio"] = round(counts["gradient_ops"] / max(1, counts["forward_ops"]), 2)
    if naive:
        counts.update(naive_counts(compiled))
    return Derivation(compiled.spec.name, forward, adjoint, shared_subexpressions(program), counts)


def shared_subexpressions(program) -> list:
    """Values computed once and read more than once: CSE temporaries (``t3``) and
    forward values the backward pass reads instead of recomputing them."""
    readers: dict = {}
    for k in program.kernels:
        for a in dict.fromkeys(k.args):
            readers.setdefault(a.name, []).append(k)
    out = []
    for k in program.kernels:
        if k.op == "map":
            for name, expr in k.attrs[0]:
                out.append({"name": name, "expr": show(expr), "kind": "common subexpression",
                            "used_by": [k.out.name]})
        users = readers.get(k.out.name, [])
        if not users:
            continue
        if re.fullmatch(r"t\d+", k.out.name) and len(users) > 1:
            out.append({"name": k.out.name, "expr": _kernel_text(k), "kind": "common subexpression",
                        "used_by": [u.out.name for u in users]})
        elif k.phase == "forward" and any(u.phase == "backward" for u in users):
            out.append({"name": k.out.name, "expr": _kernel_text(k), "kind": "forward value reused",
                        "used_by": [u.out.name for u in users if u.phase == "backward"]})
    return out


def _kernel_text(k) -> str:
    """A kernel as math over the names of its arguments: ``W1 @ x``, ``max(z2)``."""
    if k.op == "map":
        return show(k.attrs[1])
    return STRUCTURAL_OPS[k.op].summary(k, [sp.Symbol(a.name) for a in k.args])


def naive_counts(compiled: Compiled) -> dict:
    """Ops of every differentiated entry's derivative written out as one expanded
    expression (no sharing), at a small instance of the spec, beside the scalar
    ops of the compiled gradient at the same instance.

    Counted by dynamic programming over the expression DAG (``naive_derivative_ops``:
    linear in its nodes, exact in big integers up to NAIVE_COUNT_CAP); where that
    count is small (at most MAX_NAIVE_SYMPY_OPS), SymPy differentiates for real
    and its ``count_ops`` is the number reported.  The expansion itself is skipped,
    with a note, when the small instance has more than MAX_NAIVE_EXPANSION_OPS
    scalar operations."""
    from .verify import small_instance
    small = small_instance(compiled.spec, compiled)
    program = small.programs["value_and_grad"]
    scalar = {"gradient_scalar_ops_small": scalar_op_count(program, "backward"),
              "forward_scalar_ops_small": scalar_op_count(program, "forward")}
    forward = scalar["forward_scalar_ops_small"]
    if forward > MAX_NAIVE_EXPANSION_OPS:
        return {"naive_ops": None, **scalar,
                "naive_note": f"the small instance has {forward} forward scalar operations, over the limit "
                              f"MAX_NAIVE_EXPANSION_OPS = {MAX_NAIVE_EXPANSION_OPS}: not expanded"}
    try:
        # written out as the spec says, with no simplification (SymPy's automatic
        # evaluation asks questions of deep expressions that take exponential time)
        with sp.evaluate(False):
            written, wrt_symbols, sizes = expand_example(small.spec)
        symbols = [s for syms in wrt_symbols.values() for s in syms]
        ops, depth = naive_derivative_ops(written, symbols)
        method = "dag"
        if ops <= MAX_NAIVE_SYMPY_OPS and depth <= MAX_NAIVE_SYMPY_DEPTH and len(symbols) <= NAIVE_MAX_ENTRIES:
            # small enough for SymPy to differentiate for real
            loss, wrt_symbols, _ = expand_example(small.spec)
            symbols = [s for syms in wrt_symbols.values() for s in syms]
            ops, method = sum(sp.count_ops(sp.diff(loss, s)) for s in symbols), "sympy"
    except Exception as e:  # noqa: BLE001 - the count is informative, never fatal
        return {"naive_ops": None, **scalar, "naive_note": f"expansion failed: {type(e).__name__}"}
    out = {"naive_ops": int(ops), "naive_entries": len(symbols), "naive_sizes": sizes,
           "naive_method": method, **scalar}
    if ops >= NAIVE_COUNT_CAP:   # saturated: a lower bound, not the count
        out["naive_exact"] = False
        out["naive_note"] = f"more than 10^{NAIVE_COUNT_DIGITS} operations (NAIVE_COUNT_DIGITS)"
    return out


# d f(x_0, ..., x_k) / d x_i for a SymPy function class: (ops of the derivative,
# how many times each argument occurs in it), so that the size of f'(a_0, ...)
# is ops + sum(occurrences_j * size(a_j)) without building it.
_TEMPLATES: dict = {}


def _derivative_template(func, nargs: int, i: int) -> tuple:
    key = (func, nargs, i)
    if key not in _TEMPLATES:
        xs = [sp.Dummy(f"x{j}", real=True) for j in range(nargs)]
        try:
            d = sp.diff(func(*xs), xs[i])
            if d.has(sp.Derivative, sp.Subs):
                raise ValueError("no closed form")
            occurrences = [0] * nargs
            where = {x: j for j, x in enumerate(xs)}
            for node in sp.preorder_traversal(d):
                if node in where:
                    occurrences[where[node]] += 1
            _TEMPLATES[key] = (int(sp.count_ops(d)), tuple(occurrences))
        except Exception:  # noqa: BLE001 - any function: f'(a) taken as big as f(a)
            _TEMPLATES[key] = (1, (1,) * nargs)
    return _TEMPLATES[key]


def naive_derivative_ops(expr, symbols) -> tuple:
    """(ops, depth): the ops of d expr / d s written out by the chain rule as one
    expression tree with no sharing, summed over ``symbols`` s, and the depth of
    ``expr``'s DAG.

    Dynamic programming over the DAG of ``expr`` (SymPy shares equal
    subexpressions): per node, the size S of its own expanded tree, the set of
    symbols it depends on (a bitset), and A, the sum over those symbols of the
    size of its derivative's tree, from its arguments' S, sets and A alone -- so
    time is linear in the DAG however large the trees are.  The rules: a sum's
    derivative is the sum of its arguments' (``d(u+v) = du + dv``), a product's
    one term per factor (``d(uv) = du v + u dv``), ``d f(u) = f'(u) du`` with
    f' as SymPy writes it, ``d u**c = c*u**(c-1) du``; a term whose argument
    does not depend on s is left out, as is a factor ``ds/ds = 1``.  Counts are
    exact big integers, saturated at NAIVE_COUNT_CAP so that arithmetic stays cheap.
    """
    cap = NAIVE_COUNT_CAP
    bit = {s: 1 << k for k, s in enumerate(symbols)}
    memo: dict = {}     # node -> (S, bits, A, depth)
    stack = [(expr, False)]
    while stack:
        e, ready = stack.pop()
        if e in memo:
            continue
        args = e.args
        if not ready and args:
            stack.append((e, True))
            stack.extend((a, False) for a in args if a not in memo)
            continue
        if not args:
            memo[e] = (0, bit.get(e, 0), 0, 0)
            continue
        sub = [memo[a] for a in args]
        sizes = [m[0] for m in sub]
        total = sum(sizes)
        n = len(args)
        size = total + (n - 1 if (e.is_Add or e.is_Mul) else 1)
        bits = 0
        for m in sub:
            bits |= m[1]
        depth = 1 + max(m[3] for m in sub)
        deps = [m[1].bit_count() for m in sub]
        count = bits.bit_count()
        # a factor ds/ds = 1 is not written: one op fewer, for each symbol argument
        ones = [1 if a in bit else 0 for a in args]
        joins = sum(deps) - count     # '+' between the terms of one symbol's derivative
        if not bits:
            a_total = 0
        elif e.is_Add:
            a_total = sum(m[2] for m in sub) + joins
        elif e.is_Mul:
            a_total = joins + sum(m[2] + c * (total - s + n - 1) - o
                                  for m, c, s, o in zip(sub, deps, sizes, ones))
        elif e.is_Pow and not sub[1][1]:
            # d b**c = c*b**(c - 1)*db
            b, c = sub[0], sub[1]
            a_total = deps[0] * (b[0] + c[0] + 3) + b[2] - ones[0]
        elif e.is_Pow:
            # d b**x = b**x*(log(b)*dx + x*db/b)
            b, x = sub
            a_total = (deps[1] * (size + b[0] + 3) + x[2] - ones[1]
                       + deps[0] * (size + x[0] + b[0] + 4) + b[2] - ones[0] + joins)
        else:
            a_total = joins
            for i, (m, c, o) in enumerate(zip(sub, deps, ones)):
                if c:
                    ops, occurrences = _derivative_template(e.func, n, i)
                    fprime = ops + sum(k * s for k, s in zip(occurrences, sizes))
                    a_total += c * (fprime + 1) + m[2] - o
        memo[e] = (min(size, cap), bits, min(a_total, cap), depth)
    _, _, ops, depth = memo[expr]
    return ops, depth


def scalar_op_count(program, phase) -> int:
    """Scalar operations of one example (N = 1): a fused block's ops times its
    elements, 2 per multiply-add of a contraction, one per element otherwise."""
    import math
    total = 0
    for k in program.kernels:
        if k.phase != phase:
            continue
        size = math.prod(k.out.shape)
        if k.op == "map":
            temps, expr = k.attrs
            total += size * (sum(sp.count_ops(e) for _, e in temps) + sp.count_ops(expr))
        else:
            total += STRUCTURAL_OPS[k.op].cost(k)
    return int(total)


def expand_example(spec):
    """The loss of one example of ``spec`` as one SymPy expression over a symbol
    per entry of every param and float input.

    Returns (loss, {wrt name: [symbols]}, {leaf name: shape})."""
    import numpy as np

    from .verify import _Expander
    shapes = {nm: d.shape for nm, d in spec.params.items()}
    shapes.update({nm: (1, *d.shape) for nm, d in spec.inputs.items() if not d.is_label})
    leaves, symbols = {}, {}
    for nm, shape in shapes.items():
        entries = [sp.Symbol(f"{nm}{i}", real=True) for i in range(int(np.prod(shape, dtype=int)))]
        leaves[nm] = np.array(entries, dtype=object).reshape(shape)
        symbols[nm] = entries
    labels = {nm: np.zeros((1, *d.shape), dtype=int) for nm, d in spec.inputs.items() if d.is_label}
    loss = sp.sympify(_Expander(spec).loss(leaves, labels, 1))
    sizes = {nm: list(s[1:]) if nm in spec.inputs else list(s) for nm, s in shapes.items()}
    return loss, {nm: symbols[nm] for nm in spec.wrt}, sizes


# -- printing -----------------------------------------------------------------

def as_text(d: Derivation) -> str:
    legend = any(re.fullmatch(r"q\d+", f["lhs"]) for f in d.forward)
    lines = [f"{d.name}", "", "Forward program (per example; shapes without the batch axis"
             + (";" if legend else "):")]
    lines += [f"{LEGEND_NOTE}):", ""] if legend else [""]
    width = min(60, max(len(f"{f['lhs']} = {f['rhs']}") for f in d.forward))
    for f in d.forward:
        lines += _indented(wrap_equation("", f"{f['lhs']} = {f['rhs']}", f"shape {f['shape']}", width, COLUMNS - 4))
    lines += ["", "Adjoint program, in the order it runs (x_bar = dL/dx; a sum is one term per consumer):", ""]
    rows = [(a["lhs"], a.get("rhs") or Equation(a["lhs"], [(t["rhs"], t["rule"]) for t in a["terms"]], None).rhs,
             Equation(a["lhs"], [(t["rhs"], t["rule"]) for t in a["terms"]], None).rule) for a in d.adjoint]
    width = min(60, max((len(f"{lhs} = {rhs}") for lhs, rhs, _ in rows), default=0))
    for lhs, rhs, rule in rows:
        lines += _indented(wrap_equation(f"{lhs} = ", rhs, f"# {rule}", width, COLUMNS - 4))
    lines += ["", "Shared subexpressions (computed once, read by several lines):", ""]
    if d.shared:
        width = min(40, max(len(f"{s['name']} = {s['expr']}") for s in d.shared))
        for s in d.shared:
            lines += _indented(wrap_equation(f"{s['name']} = ", s["expr"],
                                             f"{s['kind']}, used by {', '.join(s['used_by'])}", width, COLUMNS - 4))
    else:
        lines.append("    none")
    c = d.counts
    lines += ["", "Op counts (tensor operations of the generated value_and_grad):", "",
              f"    forward   {c['forward_ops']:>8}   ({c['forward_kernels']} kernels)",
              f"    gradient  {c['gradient_ops']:>8}   ({c['gradient_kernels']} kernels)",
              f"    gradient / forward = {c['ratio']}"]
    if c.get("naive_ops") is not None:
        shown = list(c["naive_sizes"].items())
        sizes = ", ".join(f"{k} {v}" for k, v in shown[:12]) + (f", ... ({len(shown) - 12} more)"
                                                                   if len(shown) > 12 else "")
        ratio = c["naive_ops"] / max(1, c["gradient_scalar_ops_small"])
        how = ("no sharing" if c.get("naive_method") == "sympy" else
               "no sharing; counted over the expression DAG, too big for SymPy to write out")
        lines += ["", f"  At a small instance ({sizes}),", "  one example, in scalar operations:",
                  f"    forward                     {c['forward_scalar_ops_small']:>8}",
                  f"    gradient (reverse mode)     {c['gradient_scalar_ops_small']:>8}",
                  f"    naive expanded derivative   {_big(c['naive_ops']):>8}   "
                  f"({c['naive_entries']} derivatives written out,",
                  f"{'':44}{how}: "
                  f"{'more than ' if c.get('naive_exact') is False else ''}{_ratio(ratio)} "
                  "the reverse-mode gradient)"]
    elif "naive_note" in c:
        lines.append(f"    naive expanded derivative: not computed ({c['naive_note']})")
    # each entry is one line: spec text in it (an expression as written) cannot
    # start another line or reach the terminal as a control character
    return "\n".join(terminal(line) for line in lines) + "\n"


COLUMNS = 100   # the text output wraps at this width
LEGEND_NOTE = "q1, q2, ...: the values the spec leaves unnamed whose adjoints are shown"


def _indented(lines) -> list:
    return [f"    {ln}" for ln in lines]


def _big(n: int) -> str:
    """A count for the text output: exact below 10^15, else its order of magnitude."""
    if n >= NAIVE_COUNT_CAP:
        return f"more than 10^{NAIVE_COUNT_DIGITS}"
    if n < 10**15:
        return str(n)
    digits = str(n)
    return f"{digits[0]}.{digits[1:3]}e{len(digits) - 1}"


def _ratio(r: float) -> str:
    return f"{r:.1f}x" if r < 1e6 else f"{r:.2e}x"


def _latex_rhs(entry: dict) -> str:
    """An equation's right-hand side as LaTeX: printed from its SymPy expression by
    ``derive``; an entry without one (text only) is set as escaped text."""
    tex = entry.get("latex")
    if tex is None:
        tex = "\\text{" + latex_text(entry.get("rhs") or " + ".join(t["rhs"] for t in entry.get("terms", ()))) + "}"
    if len(tex) > MAX_LATEX_CHARS:
        tex = "\\text{" + latex_text(f"(an equation of {len(tex)} characters of LaTeX, over "
                                      f"MAX_LATEX_CHARS = {MAX_LATEX_CHARS}: see the text output)") + "}"
    return tex


def as_latex(d: Derivation) -> str:
    lines = [f"% {latex_text(d.name)}: generated by bpcompile inspect --format latex", "% forward program",
             "\\begin{align*}"]
    for f in d.forward:
        dims = r" \times ".join(str(int(k)) for k in f["shape"])
        space = f"\\mathbb{{R}}^{{{dims}}}" if dims else "\\mathbb{R}"
        lines.append(f"  {latex_name(f['lhs'])} &= {_latex_rhs(f)} && \\in {space} \\\\")
    lines += ["\\end{align*}", "% adjoint program, in the order it runs", "\\begin{align*}"]
    for a in d.adjoint:
        rules = ", ".join(t["rule"] for t in a["terms"])
        lhs = a["lhs"]
        lhs = latex_name(lhs) if re.fullmatch(r"[A-Za-z]\w*", lhs) else "\\text{" + latex_text(lhs) + "}"
        lines.append(f"  {lhs} &= {_latex_rhs(a)} && \\text{{{latex_text(rules)}}} \\\\")
    lines.append("\\end{align*}")
    return "\n".join(lines) + "\n"


def render(compiled: Compiled, fmt: str = "text") -> str:
    d = derive(compiled)
    if fmt == "json":
        return d.to_json() + "\n"
    if fmt == "latex":
        return as_latex(d)
    return as_text(d)
