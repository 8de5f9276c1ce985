"""Elementwise ops: each one declaration, and the spec language's table of them.

A declaration is a SymPy function (SymPy's own where it prints right for arrays
in every target, else a class of ours below) and one record (``Elementwise``)
registered in ``ELEMENTWISE`` by ``declare``: the spec language's name, arity and
constant parameters, the NumPy in-place form the NumPy printer may use, a line of
doc.  A class of ours carries its own printing through SymPy's print dispatch:
``_numpycode`` (the NumPy target's printer), ``_ccode`` (the C-like printer of
``targets/clike/language.py``: ``printer.fn(name)`` is the function of the dtype,
``printer.lit(x)`` a floating literal of it), and ``_sympystr`` / ``_latex``
(comments, ``inspect``) where SymPy's default is not right.  Everything that
lists elementwise ops (the spec reader, graph lowering, the printers, verify's
completeness test) reads ``ELEMENTWISE``; docs/adding-an-op.md shows the steps.

Local derivatives are never written out per use: SymPy differentiates the
expression (through ``fdiff`` for our classes) and the result is rewritten in
terms of the op's own output where that is cheaper (``1 - e**2`` for
``e = tanh(a)``, ``s*(1 - s)`` for ``s = sigmoid(a)``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p
from sympy.printing.precedence import PRECEDENCE

# ---------------------------------------------------------------------------
# The record and the table


@dataclass(frozen=True)
class Elementwise:
    """One elementwise op of the spec language.

    ``function(x, *params)`` builds its SymPy expression; ``params`` are the
    constant parameters after the ``arity`` tensor arguments, as (name, default),
    each optional in the spec (``leaky_relu(x)``, ``leaky_relu(x, 0.2)``) unless
    its default is None (``clip(x, lo, hi)``: both required; required ones come
    first).  ``check(*params)``: a problem with the parameters' values, in words
    (``"needs lo <= hi, ..."``), or None; the spec reader makes it a SpecError.
    ``inplace``: how the NumPy printer applies the op to an array in its own
    memory, as steps innermost first; a step is a NumPy template of ``{o}`` (the
    array), or (arithmetic step of the printer, constant operand): sigmoid is
    ``(("mul", 1/2), "np.tanh({o}, out={o})", ("mul", 1/2), ("add", 1/2))``.
    None: the op has no in-place form (the printer allocates).  ``activation``:
    the ``layers:`` shorthand offers it (a function of one argument, defined on
    the whole real line).  ``repeats_argument``: its printed form reads its
    argument more than once (elu's ``np.maximum(x, 0) + np.expm1(np.minimum(x, 0))``):
    the program computes a compound argument once, into a temporary, instead of
    letting the printer evaluate it twice."""

    name: str
    function: Callable
    doc: str
    arity: int = 1
    params: tuple = ()
    inplace: tuple | None = None
    activation: bool = False
    repeats_argument: bool = False
    check: Callable | None = None

    def __call__(self, *args) -> sp.Expr:
        return self.function(*args)

    @property
    def required(self) -> int:
        """The number of parameters the spec must give (those without a default)."""
        return sum(1 for _, d in self.params if d is None)

    @property
    def signature(self) -> str:
        """``leaky_relu(x, slope=0.01)``, ``clip(x, lo, hi)``: how the spec calls it."""
        tensors = ["x"] if self.arity == 1 else [f"x{i + 1}" for i in range(self.arity)]
        params = [p if d is None else f"{p}={_show(d)}" for p, d in self.params]
        return f"{self.name}({', '.join(tensors + params)})"


def _show(number) -> str:
    return repr(float(number)) if not number.is_Integer else str(number)


# name -> Elementwise: the spec language's elementwise functions
ELEMENTWISE: dict = {}
# SymPy functions the derivative rules produce that the spec language does not
# name (step, equal, where_positive): printed by the same mechanism
INTERNAL: dict = {}


def declare(name, doc, *, function=None, arity=1, params=(), inplace=None, internal=False, activation=False,
            repeats_argument=False, check=None):
    """Register an elementwise op: ``declare(name, doc, function=sp.tanh, ...)`` for
    a SymPy function, or as the decorator of a class of ours."""
    def register(fn):
        assert name not in ELEMENTWISE and name not in INTERNAL, f"elementwise op {name!r} declared twice"
        defaults = [d for _, d in params]
        assert all(d is None for d in defaults[:defaults.count(None)]), f"{name}: required params come first"
        record = Elementwise(name, fn, doc, arity, tuple(params), _steps(inplace), activation, repeats_argument,
                             check)
        (INTERNAL if internal else ELEMENTWISE)[name] = record
        if isinstance(fn, type):
            _BY_FUNCTION[fn] = record
        return fn
    return register(function) if function is not None else register


_BY_FUNCTION: dict = {}   # SymPy function class -> its record


def _steps(inplace):
    if inplace is None:
        return None
    return tuple((step, None) if isinstance(step, str) else step
                 for step in ((inplace,) if isinstance(inplace, str) else inplace))


def record_of(function) -> Elementwise | None:
    """The record of a SymPy function class (``type(expr)`` of an applied op)."""
    return _BY_FUNCTION.get(function)


def numpy_inplace(function) -> tuple | None:
    """The NumPy in-place steps of a SymPy function class, innermost first (None: none)."""
    record = record_of(function)
    return record.inplace if record is not None else None


# ---------------------------------------------------------------------------
# SymPy functions of ours


# Each ``eval`` folds the function of a number to a number (or to an expression
# of numbers SymPy evaluates): constant folding never leaves ``relu(0)`` for a
# printer to compute in integers.


class _RealFunction(sp.Function):
    """A function that is real and finite wherever its arguments are real.

    Saying so matters for speed, not only for correctness: without it SymPy cannot
    tell whether tanh(x + sigmoid(x)) is real, and asks again through as_real_imag
    at every level of a nested chain (20 nested tanh took minutes to fuse)."""

    def _eval_is_extended_real(self):
        if all(a.is_extended_real for a in self.args):
            return True
        return None

    def _eval_is_finite(self):
        if all(a.is_finite for a in self.args):
            return True
        return None


declare("tanh", "hyperbolic tangent; derivative 1 - tanh(x)**2 (reads the output)",
        function=sp.tanh, inplace="np.tanh({o}, out={o})", activation=True)


@declare("sigmoid", "1/(1 + exp(-x)); derivative s*(1 - s) with s the output",
         inplace=(("mul", sp.Rational(1, 2)), "np.tanh({o}, out={o})", ("mul", sp.Rational(1, 2)),
                  ("add", sp.Rational(1, 2))), activation=True)
class sigmoid(_RealFunction):
    """1 / (1 + exp(-x)); derivative s * (1 - s).  Printed as 0.5 + 0.5*tanh(0.5*x):
    exact, and no overflow for any x."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return 1 / (1 + sp.exp(-x)) if x >= 0 else sp.exp(x) / (1 + sp.exp(x))
        return None

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _numpycode(self, printer):
        return f"(0.5 + 0.5*np.tanh(0.5*{printer.parenthesize(self.args[0], PRECEDENCE['Mul'])}))"

    def _ccode(self, printer):
        x = printer.parenthesize(self.args[0], 50)
        h = printer.lit(0.5)
        return f"({h} + {h}*{printer.fn('tanh')}({h}*{x}))"


@declare("relu", "max(x, 0); derivative 1 where the output is positive, else 0",
         inplace="np.maximum({o}, 0, out={o})", activation=True)
class relu(_RealFunction):
    """max(x, 0); derivative step(x), written step(relu(x)) so that the rule reads
    the forward output (relu(z) > 0 exactly when z > 0) and z need not stay alive."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return x if x > 0 else sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return step(self)

    def _numpycode(self, printer):
        return f"np.maximum({printer._print(self.args[0])}, 0)"

    def _ccode(self, printer):
        return f"{printer.fn('fmax')}({printer._print(self.args[0])}, {printer.lit(0.0)})"


declare("exp", "exponential; derivative exp(x) (reads the output)",
        function=sp.exp, inplace="np.exp({o}, out={o})", activation=True)
declare("log", "natural logarithm; derivative 1/x", function=sp.log, inplace="np.log({o}, out={o})")
declare("sin", "sine; derivative cos(x)", function=sp.sin, inplace="np.sin({o}, out={o})", activation=True)
declare("cos", "cosine; derivative -sin(x)", function=sp.cos, inplace="np.cos({o}, out={o})", activation=True)
# a power (x**(1/2)): the NumPy printer's in-place steps handle powers
declare("sqrt", "square root; derivative 1/(2*sqrt(x))", function=sp.sqrt)
declare("abs", "absolute value; derivative sign(x)", function=sp.Abs, inplace="np.abs({o}, out={o})")


@declare("softplus", "log(1 + exp(x)), computed without overflow; derivative sigmoid(x)",
         inplace="np.logaddexp(0, {o}, out={o})", activation=True)
class softplus(_RealFunction):
    """log(1 + exp(x)); derivative sigmoid(x)."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return x + sp.log(1 + sp.exp(-x)) if x >= 0 else sp.log(1 + sp.exp(x))
        return None

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _numpycode(self, printer):
        return f"np.logaddexp(0, {printer._print(self.args[0])})"

    def _ccode(self, printer):
        # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow
        x = printer._print(self.args[0])
        return (f"({printer.fn('fmax')}({x}, {printer.lit(0.0)}) + "
                f"{printer.fn('log1p')}({printer.fn('exp')}(-{printer.fn('fabs')}({x}))))")


def _square(x):
    return x**2


declare("square", "x**2; derivative 2*x", function=_square, activation=True)


@declare("erf", "the error function 2/sqrt(pi) * integral of exp(-t**2) from 0 to x; "
         "derivative 2*exp(-x**2)/sqrt(pi)", activation=True)
class erf(_RealFunction):
    """erf(x).  NumPy has none: the NumPy module carries its own ``_erf``
    (``targets/numpy/erf.py``), emitted once in a module that uses it; C and CUDA
    have erf/erff.  (SymPy's erf prints as math.erf for NumPy: scalars only.)"""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return sp.erf(x)
        return None

    def fdiff(self, argindex=1):
        x = self.args[0]
        return 2 * sp.exp(-x**2) / sp.sqrt(sp.pi)

    def _numpycode(self, printer):
        from ..targets.numpy.erf import ERF_SOURCE
        printer.helper("_erf", ERF_SOURCE)
        return f"_erf({printer._print(self.args[0])})"

    def _ccode(self, printer):
        return f"{printer.fn('erf')}({printer._print(self.args[0])})"


declare("log1p", "log(1 + x), accurate for small x; derivative 1/(1 + x)",
        function=log1p, inplace="np.log1p({o}, out={o})")
declare("expm1", "exp(x) - 1, accurate for small x; derivative exp(x)",
        function=expm1, inplace="np.expm1({o}, out={o})")
declare("atan", "arctangent; derivative 1/(1 + x**2)", function=sp.atan, inplace="np.arctan({o}, out={o})", activation=True)


@declare("leaky_relu", "x where x > 0, else slope*x; derivative 1 or slope",
         params=(("slope", sp.Rational(1, 100)),), activation=True, repeats_argument=True)
class leaky_relu(_RealFunction):
    """leaky_relu(x, slope): x where x > 0, else slope*x.  Its derivative reads
    the output when slope >= 0 (then the output is positive exactly where x is)."""

    nargs = 2

    @classmethod
    def eval(cls, x, slope):
        if x.is_Number and slope.is_Number:
            return x if x > 0 else slope * x
        return None

    def fdiff(self, argindex=1):
        x, slope = self.args
        if argindex == 2:
            return where_positive(x, 0, x)
        return where_positive(self if slope.is_nonnegative else x, 1, slope)

    def _numpycode(self, printer):
        x, slope = self.args
        return f"np.where({printer._print(x)} > 0, {printer._print(x)}, {printer._print(slope * x)})"

    def _ccode(self, printer):
        x, slope = self.args
        return f"({printer._print(x)} > {printer.lit(0)} ? {printer._print(x)} : {printer._print(slope * x)})"


@declare("elu", "x where x > 0, else alpha*(exp(x) - 1); derivative 1, or output + alpha",
         params=(("alpha", sp.Integer(1)),), activation=True, repeats_argument=True)
class elu(_RealFunction):
    """elu(x, alpha): x where x > 0, else alpha*expm1(x).  On the negative side the
    derivative alpha*exp(x) is the output plus alpha (no second exponential), and
    when alpha >= 0 the output is positive exactly where x is."""

    nargs = 2

    @classmethod
    def eval(cls, x, alpha):
        if x.is_Number and alpha.is_Number:
            return x if x > 0 else alpha * (sp.exp(x) - 1)
        return None

    def fdiff(self, argindex=1):
        x, alpha = self.args
        if argindex == 2:
            return where_positive(x, 0, expm1(x))
        return where_positive(self if alpha.is_nonnegative else x, 1, self + alpha)

    def _numpycode(self, printer):
        # expm1 of min(x, 0): a large positive x, not selected, must not overflow
        x, alpha = self.args
        t = printer._print(x)
        scale = "" if alpha == 1 else printer.parenthesize(alpha, PRECEDENCE["Mul"]) + "*"
        return f"(np.maximum({t}, 0) + {scale}np.expm1(np.minimum({t}, 0)))"

    def _ccode(self, printer):
        x, alpha = self.args
        t = printer._print(x)
        return f"({t} > {printer.lit(0)} ? {t} : {printer._print(alpha * expm1(x))})"


class _Expanded(_RealFunction):
    """An op printed as the expression of other ops (``expansion``), bracketed:
    the caller's printer takes a function call for an atom (``silu(x)**2``)."""

    def expansion(self) -> sp.Expr:
        raise NotImplementedError

    def _numpycode(self, printer):
        return f"({printer._print(self.expansion())})"

    def _ccode(self, printer):
        return f"({printer._print(self.expansion())})"


@declare("silu", "x*sigmoid(x) (swish); derivative s + out*(1 - s) with s = sigmoid(x)", activation=True, repeats_argument=True)
class silu(_Expanded):
    """x*sigmoid(x).  Derivative s*(1 + x*(1 - s)) = s + out*(1 - s): one sigmoid,
    and no cancellation for large |x|."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return x * sigmoid(x)
        return None

    def expansion(self):
        x = self.args[0]
        return x * sigmoid(x)

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s + self * (1 - s)


_SQRT1_2 = 0.7071067811865476   # 1/sqrt(2), rounded to double


@declare("gelu", "x*Phi(x) = x*(1 + erf(x/sqrt(2)))/2, the exact GELU; "
         "derivative Phi(x) + x*exp(-x**2/2)/sqrt(2*pi)", activation=True, repeats_argument=True)
class gelu(_Expanded):
    """The exact GELU, x * Phi(x) with Phi the normal distribution function:
    x*(1 + erf(x/sqrt(2)))/2, through the erf of each target."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return x * (1 + sp.erf(x / sp.sqrt(2))) / 2
        return None

    def expansion(self):
        # the constants as numbers: the target multiplies by them, never computes them
        x = self.args[0]
        return sp.Float(0.5) * x * (1 + erf(sp.Float(_SQRT1_2) * x))

    def fdiff(self, argindex=1):
        x = self.args[0]
        return (1 + erf(x / sp.sqrt(2))) / 2 + x * sp.exp(-x**2 / 2) / sp.sqrt(2 * sp.pi)


class _Extremum(_RealFunction):
    """maximum(a, b) or minimum(a, b), elementwise: two tensor arguments that
    broadcast as in NumPy, either of them may be a number (``maximum(x, 0.5)``).

    The adjoint goes to the argument that is selected; at a tie (a == b) it is
    split equally, 1/2 to each, as PyTorch and JAX do: the halves add up to the
    derivative of maximum(x, x) = x, and neither argument is preferred for its
    position.  The derivative is ``greater`` (1, 1/2 or 0) of the two arguments."""

    nargs = 2
    pick = None          # sp.Max or sp.Min, for numbers
    numpy_name = c_name = latex_name = ""

    @classmethod
    def eval(cls, a, b):
        if a.is_Number and b.is_Number:
            return cls.pick(a, b)
        if a == b:
            return a
        return None

    def fdiff(self, argindex=1):
        a, b = self.args
        first = (argindex == 1) == (self.pick is sp.Max)   # d max/da and d min/db: a above b
        return greater(a, b) if first else greater(b, a)

    def _numpycode(self, printer):
        a, b = self.args
        return f"np.{self.numpy_name}({printer._print(a)}, {printer._print(b)})"

    def _ccode(self, printer):
        a, b = self.args
        return f"{printer.fn(self.c_name)}({printer._print(a)}, {printer._print(b)})"

    def _latex(self, printer, exp=None):
        a, b = self.args
        return _power(f"\\{self.latex_name}\\left({printer._print(a)}, {printer._print(b)}\\right)", exp)


@declare("maximum", "the larger of a and b, elementwise (broadcasting); derivative 1 for the larger, "
         "0 for the other, 1/2 each at a tie", arity=2)
class maximum(_Extremum):
    """maximum(a, b): the larger, elementwise; a tie splits the adjoint 1/2, 1/2."""

    pick = sp.Max
    numpy_name, c_name, latex_name = "maximum", "fmax", "max"


@declare("minimum", "the smaller of a and b, elementwise (broadcasting); derivative 1 for the smaller, "
         "0 for the other, 1/2 each at a tie", arity=2)
class minimum(_Extremum):
    """minimum(a, b): the smaller, elementwise; a tie splits the adjoint 1/2, 1/2."""

    pick = sp.Min
    numpy_name, c_name, latex_name = "minimum", "fmin", "min"


def _clip_check(lo, hi):
    if lo > hi:
        return f"needs lo <= hi, but lo = {_show(lo)} is greater than hi = {_show(hi)}"
    return None


@declare("clip", "x limited to [lo, hi] (constants, lo <= hi); derivative 1 where lo <= x <= hi "
         "(both ends included, as PyTorch's clamp), else 0",
         params=(("lo", None), ("hi", None)), check=_clip_check)
class clip(_RealFunction):
    """clip(x, lo, hi) = min(max(x, lo), hi), lo and hi constants (numbers or
    expressions of numbers, as elu's alpha) with lo <= hi.

    Its derivative is 1 where lo <= x <= hi, both ends included (PyTorch's clamp:
    at a boundary the adjoint passes through), and 0 outside.  It is written
    equal(x, output): the output is x itself exactly where x is inside, and lo or
    hi (not x) outside, so the rule needs no comparison with lo and hi."""

    nargs = 3

    @classmethod
    def eval(cls, x, lo, hi):
        if x.is_Number and lo.is_Number and hi.is_Number:
            return sp.Min(sp.Max(x, lo), hi)
        return None

    def fdiff(self, argindex=1):
        x, lo, hi = self.args
        if argindex == 2:
            return step(lo - x)
        if argindex == 3:
            return step(x - hi)
        return equal(x, self)

    def _numpycode(self, printer):
        x, lo, hi = self.args
        return f"np.clip({printer._print(x)}, {printer._print(lo)}, {printer._print(hi)})"

    def _ccode(self, printer):
        x, lo, hi = self.args
        return (f"{printer.fn('fmin')}({printer.fn('fmax')}({printer._print(x)}, {printer._print(lo)}), "
                f"{printer._print(hi)})")


# ---------------------------------------------------------------------------
# Functions the derivative rules produce (not in the spec language)


@declare("step", "1 where x > 0, else 0: the derivative of relu", internal=True,
         inplace="np.greater({o}, 0, out={o})")
class step(_RealFunction):
    """1 where x > 0, else 0 (the derivative of relu; its own is taken as 0)."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return sp.S.One if x > 0 else sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return sp.S.Zero

    def _numpycode(self, printer):
        return f"({printer._print(self.args[0])} > 0)"

    def _ccode(self, printer):
        return f"(real)({printer._print(self.args[0])} > {printer.lit(0)})"

    def _sympystr(self, printer):
        return f"({printer._print(self.args[0])} > 0)"

    def _latex(self, printer, exp=None):
        return _power(f"[{printer._print(self.args[0])} > 0]", exp)


@declare("equal", "1 where a == b, else 0: routes the adjoint of max to the maximum, and clip's to x "
         "inside [lo, hi]", arity=2, internal=True)
class equal(_RealFunction):
    """1 where a == b, else 0 (routes the adjoint of max to the maximum; clip's
    derivative is equal(x, output))."""

    @classmethod
    def eval(cls, a, b):
        if a.is_Number and b.is_Number:
            return sp.S.One if a == b else sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return sp.S.Zero

    def _numpycode(self, printer):
        return f"({printer._print(self.args[0])} == {printer._print(self.args[1])})"

    def _ccode(self, printer):
        return f"(real)({printer._print(self.args[0])} == {printer._print(self.args[1])})"

    def _sympystr(self, printer):
        return f"({printer._print(self.args[0])} == {printer._print(self.args[1])})"

    def _latex(self, printer, exp=None):
        return _power(f"[{printer._print(self.args[0])} = {printer._print(self.args[1])}]", exp)


@declare("greater", "1 where a > b, 1/2 where a == b, else 0: the derivative of maximum and minimum "
         "(a tie splits the adjoint equally)", arity=2, internal=True, repeats_argument=True)
class greater(_RealFunction):
    """greater(a, b): 1 where a > b, 1/2 where a == b, 0 where a < b.  d maximum(a, b)/da
    is greater(a, b) and d/db is greater(b, a): at a tie each argument gets half."""

    @classmethod
    def eval(cls, a, b):
        if a.is_Number and b.is_Number:
            return sp.S.One if a > b else sp.S.Zero if a < b else sp.S.Half
        if a == b:
            return sp.S.Half
        return None

    def fdiff(self, argindex=1):
        return sp.S.Zero

    def _numpycode(self, printer):
        # DTYPE(0.5): np.where of a Python float and a boolean array would be float64
        a, b = (printer._print(e) for e in self.args)
        return f"np.where({a} == {b}, DTYPE(0.5), {a} > {b})"

    def _ccode(self, printer):
        a, b = (printer._print(e) for e in self.args)
        return f"({a} > {b} ? {printer.lit(1)} : ({a} < {b} ? {printer.lit(0)} : {printer.lit(0.5)}))"

    def _sympystr(self, printer):
        a, b = (printer._print(e) for e in self.args)
        return f"(({a} > {b}) + ({a} == {b})/2)"

    def _latex(self, printer, exp=None):
        a, b = (printer._print(e) for e in self.args)
        return _power(f"\\left([{a} > {b}] + \\tfrac{{1}}{{2}}[{a} = {b}]\\right)", exp)


@declare("where_positive", "a where c > 0, else b: the derivatives of leaky_relu and elu",
         arity=3, internal=True)
class where_positive(_RealFunction):
    """where_positive(c, a, b): a where c > 0, else b."""

    @classmethod
    def eval(cls, c, a, b):
        if c.is_Number:
            return a if c > 0 else b
        if a == b:
            return a
        return None

    def fdiff(self, argindex=1):
        c = self.args[0]
        return {1: sp.S.Zero, 2: step(c), 3: 1 - step(c)}[argindex]

    def _numpycode(self, printer):
        c, a, b = self.args
        if a.is_Number and b.is_Number:
            # np.where of two Python numbers is float64: make them the module's dtype
            return f"np.where({printer._print(c)} > 0, DTYPE({printer._print(a)}), DTYPE({printer._print(b)}))"
        return f"np.where({printer._print(c)} > 0, {printer._print(a)}, {printer._print(b)})"

    def _ccode(self, printer):
        c, a, b = self.args
        return f"({printer._print(c)} > {printer.lit(0)} ? {printer._print(a)} : {printer._print(b)})"

    def _sympystr(self, printer):
        c, a, b = self.args
        return f"where({printer._print(c)} > 0, {printer._print(a)}, {printer._print(b)})"

    def _latex(self, printer, exp=None):
        c, a, b = self.args
        return _power(f"\\begin{{cases}} {printer._print(a)} & {printer._print(c)} > 0 \\\\ "
                      f"{printer._print(b)} & \\text{{otherwise}} \\end{{cases}}", exp, bracket=True)


def _power(text: str, exp, bracket=False) -> str:
    """LaTeX of ``text`` to the power ``exp`` (None: none)."""
    if exp is None:
        return text
    return f"\\left({text}\\right)^{{{exp}}}" if bracket else f"{text}^{{{exp}}}"


# Binary operators of the spec language, as SymPy on two argument symbols.
BINARY = {
    "Add": (lambda a, b: a + b, "add"),
    "Sub": (lambda a, b: a - b, "sub"),
    "Mult": (lambda a, b: a * b, "mul"),
    "Div": (lambda a, b: a / b, "div"),
    "Pow": (lambda a, b: a**b, "pow"),
}

def stable_log(u: sp.Expr):
    """``log(u)`` in a form that neither overflows nor loses the small values, for
    the common patterns; None when ``u`` is none of them.

    log(sigmoid(x)) = -softplus(-x), log(1 - sigmoid(x)) = -softplus(x),
    log(1 + exp(x)) = softplus(x), log(1/u) = -log(u) for those.  (A sigmoid is
    1 in floating point for x above about 37, so log(1 - sigmoid(x)) would be
    log(0); and it rounds small values away, so log(sigmoid(-40)) would be too.)
    """
    if isinstance(u, sigmoid):
        return -softplus(-u.args[0])
    if u.is_Pow and u.exp == -1:
        inner = stable_log(u.base)
        return -inner if inner is not None else None
    if u.is_Add and len(u.args) == 2 and sp.S.One in u.args:
        (rest,) = [a for a in u.args if a != sp.S.One]
        if isinstance(-rest, sigmoid):
            return -softplus((-rest).args[0])
        if isinstance(rest, sp.exp):
            return softplus(rest.args[0])
    return None


def arg_symbol(i: int) -> sp.Symbol:
    """The symbol for argument ``i`` of a map node's expression (made once per
    ``i``: ``sp.Symbol`` is a lookup in SymPy's bounded cache, which a large
    compile's other expressions push it out of)."""
    try:
        return _ARG_SYMBOLS[i]
    except KeyError:
        return _ARG_SYMBOLS.setdefault(i, sp.Symbol(f"_{i}", real=True))


_ARG_SYMBOLS: dict = {}


OUT = sp.Symbol("_out", real=True)


@functools.lru_cache(maxsize=4096)
def local_derivative(expr: sp.Expr, i: int) -> sp.Expr:
    """d expr / d arg_i, rewritten in terms of the output (``OUT``) where it occurs.

    ``tanh(_0)`` gives ``1 - _out**2``; ``exp(_0)`` gives ``_out``; ``_0*_1``
    gives ``_1``; ``sqrt(_0)`` gives ``1/(2*_out)`` (SymPy writes its derivative
    with ``_0**(-1/2)``, the output's reciprocal).  Replacing the output by its
    symbol is what lets the backward pass reuse the forward value instead of
    recomputing it.
    """
    d = sp.diff(expr, arg_symbol(i))
    if expr.is_Symbol or expr.is_Number:
        return d
    subs = {expr: OUT}
    if expr.is_Pow and expr.exp.is_Rational and not expr.exp.is_Integer:
        subs[sp.Pow(expr.base, -expr.exp)] = 1 / OUT
    return d.xreplace(subs)


