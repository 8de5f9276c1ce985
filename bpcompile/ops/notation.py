"""How the ops read: structural operations as SymPy display nodes, and the text printer.

A structural operation (a contraction, a reduction, an index) shown in an equation
is a SymPy function below that carries its own ``_sympystr`` / ``_latex`` printing
and a precedence, so SymPy's printers place the brackets (``-(W @ x)**2``, never
``-W @ x**2``), as an elementwise op carries its own.  Each structural op's record
(``structural.STRUCTURAL_OPS``) builds its text form from these; the equations
(``ir/equations.py``), ``inspect`` and ``graph`` print them with ``show``.
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from ..escape import latex_text

# A matrix product binds less tightly than ``*`` (so ``2*(W @ x)*h``, never the
# ``2*W @ x*h`` that reads as a product of W) and more than ``+``.
PREC_MATMUL = PRECEDENCE["Mul"] - 1
PREC_POSTFIX = PRECEDENCE["Func"]


# -- display nodes: structural operations as SymPy expressions ------------------

class _Display(sp.Function):
    """A structural operation shown in an equation (printing only, never evaluated)."""

    is_commutative = True

    @classmethod
    def eval(cls, *args):
        return None

    def _eval_derivative(self, s):   # never differentiated: the adjoint pass did that
        raise TypeError("a display node is not differentiated")

    def _latex(self, p, exp=None):
        body = self._tex(p)
        if exp is None:
            return body
        if self.precedence < PRECEDENCE["Func"]:
            body = f"\\left({body}\\right)"
        return f"{body}^{{{exp}}}"


class MatMul(_Display):
    """``a @ b``; ``sep`` ' ' for the lectures' outer product ``d_bar x^T``."""

    nargs = 2
    precedence = PREC_MATMUL
    sep = " @ "
    latex_sep = " "

    def _sympystr(self, p):
        a, b = self.args
        return _operand(p, a) + self.sep + _operand(p, b)

    def _tex(self, p):
        a, b = self.args
        return _operand(p, a) + self.latex_sep + _operand(p, b)


class Outer(MatMul):
    sep = " "


class T(_Display):
    """The transpose ``a^T``."""

    nargs = 1
    precedence = PRECEDENCE["Pow"]

    def _sympystr(self, p):
        return p.parenthesize(self.args[0], PREC_POSTFIX, strict=True) + "^T"

    def _tex(self, p):
        return p.parenthesize(self.args[0], PREC_POSTFIX, strict=True) + "^{\\top}"


class Index(_Display):
    """``a[i]``: an index by a constant or by a label."""

    nargs = 2
    precedence = PRECEDENCE["Func"]

    def _sympystr(self, p):
        return p.parenthesize(self.args[0], PREC_POSTFIX, strict=True) + f"[{p._print(self.args[1])}]"

    def _tex(self, p):
        return p.parenthesize(self.args[0], PREC_POSTFIX, strict=True) + f"_{{[{p._print(self.args[1])}]}}"


class Call(_Display):
    """``name(args...)``: a named function of the spec language (sum, max, softmax, ...).

    The first argument is the function's name as a Symbol; an argument ``Kw``
    prints as ``key=value``."""

    precedence = PRECEDENCE["Func"]

    def _sympystr(self, p):
        name, *args = self.args
        return f"{name.name}({', '.join(p._print(a) for a in args)})"

    def _tex(self, p):
        name, *args = self.args
        word = name.name.replace("_", "\\_")
        return f"\\operatorname{{{word}}}({', '.join(p._print(a) for a in args)})"


class Kw(_Display):
    """``key=value`` inside a Call."""

    nargs = 2

    def _sympystr(self, p):
        return f"{self.args[0].name}={p._print(self.args[1])}"

    def _tex(self, p):
        return f"\\text{{{latex_text(self.args[0].name)}}}={p._print(self.args[1])}"


class Einsum(_Display):
    """A contraction that is no matrix product, in index notation:
    ``sum_j a[i,j]*b[j]`` (the indices summed over under ``sum``)."""

    nargs = 3
    precedence = PREC_MATMUL

    def _parts(self):
        a, b, subs = self.args
        sa, rest = subs.name.split(",")
        sb, so = rest.split("->")
        summed = "".join(dict.fromkeys(c for c in sa + sb if c not in so))
        return a, b, sa, sb, summed

    def _sympystr(self, p):
        a, b, sa, sb, summed = self._parts()
        ia = p.parenthesize(a, PREC_POSTFIX, strict=True) + (f"[{','.join(sa)}]" if sa else "")
        ib = p.parenthesize(b, PREC_POSTFIX, strict=True) + (f"[{','.join(sb)}]" if sb else "")
        return (f"sum_{summed} " if summed else "") + f"{ia}*{ib}"

    def _tex(self, p):
        a, b, sa, sb, summed = self._parts()
        ia = p.parenthesize(a, PREC_POSTFIX, strict=True) + (f"_{{{sa}}}" if sa else "")
        ib = p.parenthesize(b, PREC_POSTFIX, strict=True) + (f"_{{{sb}}}" if sb else "")
        return (f"\\sum_{{{summed}}} " if summed else "") + f"{ia} {ib}"


def _operand(p, e) -> str:
    """An operand of ``@``: bracketed unless it is a name, a call, a power or a transpose."""
    return p.parenthesize(e, PRECEDENCE["Pow"], strict=True)


def call(name: str, *args) -> sp.Expr:
    return Call(sp.Symbol(name), *args)


class Equals(_Display):
    """``(a == b)``: 1 where a equals b (the argmax mask of max)."""

    nargs = 2
    precedence = PRECEDENCE["Atom"]

    def _sympystr(self, p):
        return f"({p._print(self.args[0])} == {p._print(self.args[1])})"

    def _tex(self, p):
        return f"[{p._print(self.args[0])} = {p._print(self.args[1])}]"


# -- printers --------------------------------------------------------------------

class _Printer(StrPrinter):
    """SymPy's str printer with our function names (relu, sigmoid, ...)."""

    def _print_Add(self, expr, order=None):
        return print_add(self, expr)


def show(expr) -> str:
    return _Printer({"order": "none"}).doprint(expr)


def print_add(printer, expr) -> str:
    """Print a sum with its positive terms first: ``z - m`` rather than ``-m + z``."""
    out = ""
    for t, negated in _signed_terms(expr):
        if negated is not None:
            s = printer.parenthesize(negated, 40) if negated.is_Add else printer._print(negated)
            out += f" - {s}" if out else f"-{s}"
        else:
            s = printer._print(t)
            out += f" + {s}" if out else s
    return out


@functools.lru_cache(maxsize=4096)
def _signed_terms(expr) -> tuple:
    """The terms of a sum in print order, positive ones first: (term, None) or
    (term, -term).  The same sums are printed many times over (each program, the
    comments, the equations), and SymPy's term ordering is the costly part."""
    terms = list(expr.as_ordered_terms())
    minus = [t.could_extract_minus_sign() for t in terms]
    return tuple([(t, None) for t, m in zip(terms, minus) if not m] +
                 [(t, -t) for t, m in zip(terms, minus) if m])

