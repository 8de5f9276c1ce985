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

from .compiler import Compiled
from .equations import Equation, Namer, adjoint_equations, forward_equations, show

NAIVE_MAX_ENTRIES = 400   # differentiated entries beyond which the expansion is skipped


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
    namer = Namer(low)
    forward = [{"lhs": lhs, "rhs": rhs, "shape": list(shape)} for lhs, rhs, shape in forward_equations(low)]
    adjoint = [{"lhs": eq.lhs, "terms": [{"rhs": r, "rule": rule} for r, rule in eq.terms]}
               for eq in adjoint_equations(low, adj, namer)]
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
    if k.op == "map":
        return show(k.attrs[1])
    return f"{k.op}({', '.join(a.name for a in k.args)})"


def naive_counts(compiled: Compiled) -> dict:
    """Ops of every differentiated entry's derivative written out as one expanded
    SymPy expression (no sharing), at a small instance of the spec, beside the
    scalar ops of the compiled gradient at the same instance."""
    from .verify import small_instance
    small = small_instance(compiled.spec, compiled)
    try:
        loss, wrt_symbols, sizes = expand_example(small.spec)
    except Exception as e:  # noqa: BLE001 - the count is informative, never fatal
        return {"naive_ops": None, "naive_note": f"expansion failed: {e}"}
    symbols = [s for syms in wrt_symbols.values() for s in syms]
    if len(symbols) > NAIVE_MAX_ENTRIES:
        return {"naive_ops": None, "naive_note": f"{len(symbols)} entries: too many to expand"}
    ops = sum(sp.count_ops(sp.diff(loss, s)) for s in symbols)
    program = small.programs["value_and_grad"]
    return {"naive_ops": int(ops), "naive_entries": len(symbols), "naive_sizes": sizes,
            "gradient_scalar_ops_small": scalar_op_count(program, "backward"),
            "forward_scalar_ops_small": scalar_op_count(program, "forward")}


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
        elif k.op == "contract":
            form = k.attrs[0]
            dims = dict(zip(form.a, k.args[0].shape))
            dims.update(zip(form.b, k.args[1].shape))
            total += 2 * math.prod(dims.values())
        elif k.op in ("reduce", "sum_to"):
            total += math.prod(k.args[0].shape)
        else:
            total += size
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
    labels = {nm: np.zeros(1, dtype=int) for nm, d in spec.inputs.items() if d.is_label}
    loss = sp.sympify(_Expander(spec).loss(leaves, labels, 1))
    sizes = {nm: list(s[1:]) if nm in spec.inputs else list(s) for nm, s in shapes.items()}
    return loss, {nm: symbols[nm] for nm in spec.wrt}, sizes


# -- printing -----------------------------------------------------------------

def as_text(d: Derivation) -> str:
    lines = [f"{d.name}", "", "Forward program (per example; shapes without the batch axis):", ""]
    width = max(len(f"{f['lhs']} = {f['rhs']}") for f in d.forward)
    for f in d.forward:
        lines.append(f"    {(f['lhs'] + ' = ' + f['rhs']).ljust(width)}   shape {f['shape']}")
    lines += ["", "Adjoint program, in the order it runs (x_bar = dL/dx; a sum is one term per consumer):", ""]
    equations = [Equation(a["lhs"], [(t["rhs"], t["rule"]) for t in a["terms"]], None) for a in d.adjoint]
    width = min(60, max((len(f"{e.lhs} = {e.rhs}") for e in equations), default=0))
    lines += [f"    {e.text(width)}" for e in equations]
    lines += ["", "Shared subexpressions (computed once, read by several lines):", ""]
    if d.shared:
        width = max(len(f"{s['name']} = {s['expr']}") for s in d.shared)
        for s in d.shared:
            lines.append(f"    {(s['name'] + ' = ' + s['expr']).ljust(width)}   "
                         f"{s['kind']}, used by {', '.join(s['used_by'])}")
    else:
        lines.append("    none")
    c = d.counts
    lines += ["", "Op counts (tensor operations of the generated value_and_grad):", "",
              f"    forward   {c['forward_ops']:>8}   ({c['forward_kernels']} kernels)",
              f"    gradient  {c['gradient_ops']:>8}   ({c['gradient_kernels']} kernels)",
              f"    gradient / forward = {c['ratio']}"]
    if c.get("naive_ops") is not None:
        sizes = ", ".join(f"{k} {v}" for k, v in c["naive_sizes"].items())
        lines += ["", f"  At a small instance ({sizes}), one example, in scalar operations:",
                  f"    forward                     {c['forward_scalar_ops_small']:>8}",
                  f"    gradient (reverse mode)     {c['gradient_scalar_ops_small']:>8}",
                  f"    naive expanded derivative   {c['naive_ops']:>8}   "
                  f"({c['naive_entries']} derivatives written out, no sharing: "
                  f"{c['naive_ops'] / max(1, c['gradient_scalar_ops_small']):.1f}x the reverse-mode gradient)"]
    elif "naive_note" in c:
        lines.append(f"    naive expanded derivative: not computed ({c['naive_note']})")
    return "\n".join(lines) + "\n"


_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "sigma", "tau", "phi"}


def _latex_name(name: str) -> str:
    base, bar = (name[:-4], True) if name.endswith("_bar") else (name, False)
    m = re.fullmatch(r"([A-Za-z]+)_?(\w*)", base)
    if m:
        head, sub = m.groups()
        head = "\\" + head if head in _GREEK else head
        if head == "y_hat" or base.endswith("_hat"):
            head, sub = "\\hat{" + base[:-4] + "}", ""
        text = head + (f"_{{{sub}}}" if sub else "")
    else:
        text = base
    return f"\\bar{{{text}}}" if bar else text


def latex_expr(text: str) -> str:
    """An equation's text (Python-like, bar notation) as LaTeX."""
    out = text
    out = re.sub(r"^(mean|sum) over the batch of (\w+)$",
                 lambda m: ("\\frac{1}{N}" if m.group(1) == "mean" else "") + "\\sum_n " + m.group(2), out)
    out = re.sub(r"\(([^()]*(?:\([^()]*\)[^()]*)*)\)_bar", r"\\overline{(\1)}", out)
    out = re.sub(r"\(summed over the batch\)", r"\\quad\\text{(summed over the batch)}", out)
    out = re.sub(r"\(broadcast back over the summed axes\)", r"\\quad\\text{(broadcast)}", out)
    out = re.sub(r"\bat \[([^\]]*)\] \(zero elsewhere\)", r"\\,e_{\1}", out)
    out = re.sub(r"\b([A-Za-z]\w*)\^T\b", lambda m: _latex_name(m.group(1)) + "^{\\top}", out)
    out = re.sub(r"\*\*(\d+)", r"^{\1}", out)
    out = re.sub(r"\b(tanh|exp|log|sin|cos|max)\(", r"\\\1(", out)
    out = re.sub(r"\b(sqrt)\(([^()]*)\)", r"\\sqrt{\2}", out)
    out = re.sub(r"\b(softmax_cross_entropy|cross_entropy|log_softmax|logsumexp|softmax|sigmoid|relu"
                 r"|softplus|onehot|sum|mean|sign|dot)\(",
                 lambda m: "\\operatorname{" + m.group(1).replace("_", "\\_") + "}(", out)
    out = re.sub(r"(?<![\\\w{])([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*)\b",
                 lambda m: _latex_name(m.group(1)) if not m.group(1).startswith(("text", "quad"))
                 else m.group(1), out)
    out = out.replace(" @ ", " ").replace("*", " \\cdot ").replace("==", "=")
    return out


def as_latex(d: Derivation) -> str:
    lines = [f"% {d.name}: generated by bpcompile inspect --format latex", "% forward program",
             "\\begin{align*}"]
    for f in d.forward:
        dims = r" \times ".join(map(str, f["shape"]))
        space = f"\\mathbb{{R}}^{{{dims}}}" if dims else "\\mathbb{R}"
        lines.append(f"  {_latex_name(f['lhs'])} &= {latex_expr(f['rhs'])} && \\in {space} \\\\")
    lines += ["\\end{align*}", "% adjoint program, in the order it runs", "\\begin{align*}"]
    for a in d.adjoint:
        rhs = " + ".join(latex_expr(t["rhs"]) for t in a["terms"])
        rules = ", ".join(t["rule"] for t in a["terms"])
        lines.append(f"  {latex_expr(a['lhs'])} "
                     f"&= {rhs} && \\text{{{_latex_escape(rules)}}} \\\\")
    lines.append("\\end{align*}")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return re.sub(r"([_&%#$])", r"\\\1", text)


def render(compiled: Compiled, fmt: str = "text") -> str:
    d = derive(compiled)
    if fmt == "json":
        return d.to_json() + "\n"
    if fmt == "latex":
        return as_latex(d)
    return as_text(d)
