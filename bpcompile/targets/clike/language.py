"""What C-like targets share: the C99 printer of elementwise math, floating
literals of the dtype, index arithmetic over row-major arrays, identifiers and
the check of a generated C file.

The CUDA target builds on this, and so will the C target.  ``CStyle`` (at the
end) is the language a C-like target states its differences against, the way
tinygrad's ``CStyleLanguage`` serves its Clang and CUDA renderers; the kernel
lowering written against it is in this folder.
"""

from __future__ import annotations

import math
import re

import numpy as np
import sympy as sp
from sympy.codegen.ast import float32, real
from sympy.printing.c import C99CodePrinter

from ... import escape
from ...ops.notation import print_add
from ...ir.program import Value
from ..base import Code

# ---------------------------------------------------------------------------
# Elementwise math


def real_literal(value, dtype: str) -> str:
    """``value`` (a Python or SymPy number) as a floating literal of ``dtype``.

    Every number in device arithmetic is printed here: ``3.0`` / ``3.0f``, never
    the integer ``3`` (an integer argument makes ``sqrt(3)`` the constexpr host
    overload, which nvcc refuses in device code; an integer of 2**63 or more is no
    C integer at all).  The value is the one NumPy computes with: the nearest
    double, then, for float32, the nearest float (``INFINITY`` past the range).
    """
    try:
        v = float(value)
    except OverflowError:   # an integer or rational beyond the double range
        v = math.inf if value > 0 else -math.inf
    if dtype == "float32" and math.isfinite(v):
        v = float(np.float32(v)) if abs(v) <= FLT_MAX else math.copysign(math.inf, v)
    if math.isnan(v):
        return "NAN"
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    text = str(np.float32(v)) if dtype == "float32" else repr(v)
    if "e" not in text and "." not in text:
        text += ".0"
    if dtype == "float32":
        text += "f"
    return text if v >= 0 or text.startswith("-") else "-" + text


FLT_MAX = float(np.finfo(np.float32).max)


def line_comment(text: str) -> str:
    """A ``//`` comment of ``text`` (any text: escaped to one line, no splice)."""
    return "// " + escape.c_comment(text)


class CExprPrinter(C99CodePrinter):
    """SymPy -> C (C99, and CUDA C++) for ``real`` (double, or float with the f-suffixed functions).

    Numbers are floating literals of the dtype (``real_literal``), constants such as
    pi and e their values: device code holds no integer in arithmetic, no macro.
    Our functions (sigmoid, relu, ...) print themselves through ``_ccode`` (ops/elementwise.py),
    with ``fn`` and ``lit``; a function with no C printing is an error, never C that does not build."""

    def __init__(self, dtype: str, leaf_text: dict):
        settings = {"type_aliases": {real: float32}} if dtype == "float32" else {}
        super().__init__(settings)
        self.dtype = dtype
        self.f32 = dtype == "float32"
        self.leaf_text = leaf_text

    def fn(self, name: str) -> str:
        return name + "f" if self.f32 else name

    def lit(self, x) -> str:
        return real_literal(x, self.dtype)

    def _print_Integer(self, e):
        return self.lit(int(e))

    def _print_Rational(self, e):
        # p/q as it reads, when both are exact in the dtype; else its value
        exact = 2 ** (24 if self.f32 else 53)
        if abs(e.p) <= exact and e.q <= exact:
            return f"{self.lit(e.p)}/{self.lit(e.q)}"
        return self.lit(e)

    def _print_Float(self, e):
        return self.lit(e)

    def _print_NumberSymbol(self, e):   # pi, E, EulerGamma, ...
        return self.lit(e.evalf(30))

    _print_Pi = _print_Exp1 = _print_NumberSymbol

    def _print_Infinity(self, e):
        return "INFINITY"

    def _print_NegativeInfinity(self, e):
        return "(-INFINITY)"

    def _print_NaN(self, e):
        return "NAN"

    def _print_Symbol(self, e):
        return self.leaf_text.get(e.name, e.name)

    def _print_Add(self, expr, order=None):
        return print_add(self, expr)

    def _print_Pow(self, e, rational=False):
        base, exp = e.args
        b = self.parenthesize(base, 50)   # above Mul: a product in the base keeps its parentheses
        # a product is parenthesized: the Mul printer may put it after a '/'
        if exp.is_Integer and 0 < exp <= 4:
            return "(" + "*".join([b] * int(exp)) + ")" if exp > 1 else b
        if exp.is_Integer and -4 <= exp < 0:
            one = self.lit(1)
            return f"({one}/{b})" if exp == -1 else f"({one}/(" + "*".join([b] * int(-exp)) + "))"
        if exp == sp.Rational(1, 2):
            return f"{self.fn('sqrt')}({self._print(base)})"
        if exp == -sp.Rational(1, 2):
            return f"({self.lit(1)}/{self.fn('sqrt')}({self._print(base)}))"
        return f"{self.fn('pow')}({self._print(base)}, {self._print(sp.Float(exp) if exp.is_Rational else exp)})"

    def _print_not_supported(self, expr):
        raise TypeError(f"no C printing for {type(expr).__name__}")


# ---------------------------------------------------------------------------
# Index arithmetic.  A flat index ``var`` runs over ``dims`` in row-major order
# (sizes; None for the batch size N, which can only be the outermost dim);
# ``strides`` says how far each dim moves in the array read.


def offset(var: str, dims: list, strides: list) -> str:
    """The C expression of the offset into an array at flat iteration index ``var``."""
    merged = [[d, s] for d, s in zip(dims, strides) if d != 1]
    i = len(merged) - 1
    while i > 0:
        (d0, s0), (d1, s1) = merged[i - 1], merged[i]
        if (s0 == 0 and s1 == 0) or (s1 != 0 and s0 == s1 * d1):
            merged[i - 1] = [None if d0 is None else d0 * d1, s1]
            del merged[i]
        i -= 1
    terms = []
    inner = 1
    for j in range(len(merged) - 1, -1, -1):
        d, s = merged[j]
        if s != 0:
            coord = var if inner == 1 else f"{var} / {inner}"
            if j > 0:
                coord = f"{coord} % {d}"
            if s != 1:
                coord = f"({coord}) * {s}" if coord != var else f"{var} * {s}"
            terms.append(coord)
        if d is not None:
            inner *= d
    return " + ".join(reversed(terms)) or "0"


def loop_nest(dims: list, strides: list) -> tuple:
    """The loops of an elementwise kernel over ``dims`` (sizes, None for the batch
    size: the outermost) that reads or writes arrays at ``strides`` (a list per
    array, one stride per dim): ``(counts, offsets)``, the merged dims outermost
    first (a size; None for the one holding N) and, per array, the C offset at the
    loop indices ``_i0``, ``_i1``, ... (``_i`` when there is one loop).

    Adjacent dims merge when every array walks them as one (both strides 0, or the
    outer stride the inner one times its size), so a broadcast row (a bias over
    the batch) is two loops, the inner one contiguous: no ``/`` or ``%`` per
    element, and a loop a compiler vectorises."""
    merged = [[d, [s[j] for s in strides]] for j, d in enumerate(dims) if d != 1]
    if not merged:
        merged = [[1, [0 for _ in strides]]]
    i = len(merged) - 1
    while i > 0:
        (d0, s0), (d1, s1) = merged[i - 1], merged[i]
        if all((a == 0 and b == 0) or (b != 0 and a == b * d1) for a, b in zip(s0, s1)):
            merged[i - 1] = [None if d0 is None else d0 * d1, s1]
            del merged[i]
        i -= 1
    names = ["_i"] if len(merged) == 1 else [f"_i{j}" for j in range(len(merged))]
    offsets = []
    for a in range(len(strides)):
        terms = [(v if st == 1 else f"{v} * {st}") for v, (_, ss) in zip(names, merged) for st in [ss[a]] if st]
        offsets.append(" + ".join(terms) or "0")
    return [d for d, _ in merged], offsets


def full_dims(v: Value) -> list:
    return ([None] if v.batched else []) + list(v.shape)


def row_strides(dims: list) -> list:
    out, acc = [], 1
    for d in reversed(dims):
        out.append(acc)
        acc *= d if d is not None else 1
    return out[::-1]


def size_of(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def broadcast_strides(arg: Value, out: Value) -> list:
    """Strides of ``arg`` read at the indices of ``out`` (NumPy broadcasting)."""
    st = row_strides(list(arg.shape))
    lead = len(out.shape) - len(arg.shape)
    per = []
    for j, d in enumerate(out.shape):
        k = j - lead
        per.append(0 if k < 0 or arg.shape[k] == 1 else st[k])
    if out.batched:
        return [size_of(arg.shape) if arg.batched else 0] + per
    return per


def count_expr(dims: list) -> str:
    """The number of elements of ``dims``, as a long long C expression."""
    n = size_of([d for d in dims if d is not None])
    if None in dims:
        return "(long long)N" if n == 1 else f"(long long)N * {n}"
    return f"{n}"


def shape_text(v: Value) -> str:
    dims = (["N"] if v.batched else []) + [str(d) for d in v.shape]
    return "[" + ", ".join(dims) + "]"


# ---------------------------------------------------------------------------
# Identifiers and the check of a generated file

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z", re.ASCII)
_TOKEN = re.compile(r"[A-Za-z0-9_.+\-]+\Z", re.ASCII)


def ident(name: str) -> Code:
    """``name``, checked to be an ASCII identifier (a spec name, a C type, a dtype)."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"not an identifier: {name!r}")
    return Code(name)


def token(text: str) -> Code:
    """``text``, checked to be letters, digits and ``_.+-`` only (a version)."""
    if not isinstance(text, str) or not _TOKEN.match(text):
        raise ValueError(f"not a plain token: {text!r}")
    return Code(text)


# Preprocessor lines the .cu may hold: those of module.cu.j2, none with spec text.
_DIRECTIVE = re.compile(r"#(?:include <[a-z_0-9]+\.h>|ifn?def [A-Z_][A-Z_0-9]*|endif|else|"
                        r"define [A-Z_][A-Z_0-9]*(?:\([A-Za-z_, .]*\))?(?: .*)?)\Z")


def check_c_source(text: str, what: str) -> None:
    """Assert what escaping guarantees of a generated C/CUDA file: printable ASCII
    and newlines only (no carriage return, no trigraph), every preprocessor line one
    of the template's, and a line ends in a backslash only inside a ``#define``
    (so no comment splices the next line).  Raises AssertionError: a bug here, not
    in the spec."""
    bad = next((ch for ch in text if not (" " <= ch <= "~" or ch == "\n")), None)
    if bad is not None:
        raise AssertionError(f"{what}: character {bad!r} in generated C")
    if "??" in text:
        raise AssertionError(f"{what}: '??' (a trigraph) in generated C")
    continued = False
    for no, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if stripped.startswith("#") and not continued and not _DIRECTIVE.match(stripped):
            raise AssertionError(f"{what}:{no}: unexpected preprocessor line {line!r}")
        if line.endswith("\\") and not (continued or stripped.startswith("#define ")):
            raise AssertionError(f"{what}:{no}: a line spliced into the next {line!r}")
        continued = line.endswith("\\")


# ---------------------------------------------------------------------------
# The language a C-like target states its differences against


class CStyle:
    """How a C-like language writes what the shared lowering (this folder)
    produces: kernels and their launches, the per-element loop, reductions, GEMMs,
    copies, and the entry points around them.

    A target subclasses this and overrides only what differs (CUDA:
    ``targets/cuda/printer.py``).  The defaults are plain C99 on one CPU thread:
    a kernel is a ``static void`` function called from the host function, a loop
    over its elements or its outputs; a reduction is a loop per output; a
    contraction that is one GEMM is, by default, lowered as any other
    contraction (``gemm`` returns None), so a target adds its own GEMM, a blocked
    kernel or a BLAS call, by overriding one method.

    What the generated text relies on from the file around it (the target's
    template): ``real`` (the dtype), ``bp_max(a, b)`` (NumPy's max, NaN-propagating),
    ``BP_ERROR_NULL_POINTER``, and ``<name>_workspace``, a struct with the batch
    size ``N`` and, per function, the buffers the lowering asked for (laid out by
    ``bp_carve``: ``host.workspace_layout``).
    """

    name = "C"
    expr_printer = CExprPrinter
    kernel_prefix = "static"      # before ``void <kernel>(...)``
    # Kernels are named after the value they compute: in a namespace of their own
    # (referred to as ``<namespace>::<kernel>``), or, without one, with a suffix
    # and never a value's name (a local of the host function would hide them).
    kernel_namespace = None
    kernel_suffix = "_kernel"
    restrict = "restrict"         # on every array parameter of a kernel
    host_prefix = ""              # before ``int <name>_<fn>(...)``, an entry point
    # Identifiers the generated code uses where value names are in scope (math
    # functions, helpers, types, locals of the host function): a value named so,
    # or starting with a reserved prefix, is printed as v_<name>.
    reserved = frozenset([
        "tanh", "tanhf", "exp", "expf", "log", "logf", "log1p", "log1pf", "sin", "sinf", "cos", "cosf",
        "sqrt", "sqrtf", "fabs", "fabsf", "fmax", "fmaxf", "fmin", "fminf", "pow", "powf", "INFINITY",
        "NAN", "real", "ws", "loss_out", "free", "calloc", "malloc", "memcpy", "memset"])
    reserved_prefixes = ("bp_", "BP_")
    # how the comment above a kernel says it is run
    reduction_note = "a loop per output element"
    scatter_note = "one iteration per example"
    # how a scatter-add of rows (an embedding's gradient) adds up: comment lines
    scatter_rows_note = ("one loop in order of position: the sums are deterministic",)

    def expr(self, dtype: str, leaf_text: dict) -> CExprPrinter:
        """The printer of elementwise math, leaves printed as ``leaf_text`` says."""
        return self.expr_printer(dtype, leaf_text)

    # -- kernels ---------------------------------------------------------------
    def kernel_text(self, name: str, comment: list, params: list, body: list) -> str:
        """The definition of a kernel: its comment lines, head and indented body."""
        head = f"{self.kernel_prefix} void {name}(" + ", ".join(params) + ")"
        if len(head) > 100:
            head = f"{self.kernel_prefix} void {name}(\n    " + ",\n    ".join(params) + ")"
        return "\n".join([line_comment(c) for c in comment] + [head, "{"]
                         + [f"    {line}" if line else "" for line in body] + ["}"])

    def loop(self, var: str, count: str, body: list) -> list:
        """The per-element loop of a kernel: ``body`` for each ``var`` in [0, count)."""
        return [f"for (long long {var} = 0; {var} < {count}; {var}++) {{"] + [f"    {x}" for x in body] + ["}"]

    # Whether an elementwise kernel is a loop nest (``loop_nest``: one loop per
    # merged dim, an array's offset a sum of index times stride) or one flat loop
    # whose offsets divide the flat index (``offset``): a GPU thread has one flat
    # index; a CPU loop nest has no division per element and vectorises.
    nested_loops = False
    # Whether a workspace buffer whose value is dead is reused for a later value
    # of its size (host.share_buffers): kernels run in program order, one at a time.
    reuse_buffers = False

    def nest(self, count: str, counts: list, body: list) -> list:
        """The loops of ``loop_nest``'s ``counts`` around ``body``: ``count`` (all
        the elements, a kernel parameter) over the constant inner sizes is the
        outermost loop's count, so the kernel takes the same parameters as a flat one."""
        if len(counts) == 1:
            return self.loop("_i", count, body)
        inner = size_of(counts[1:])
        for j in range(len(counts) - 1, -1, -1):
            var = f"_i{j}"
            n = f"{count} / {inner}" if j == 0 else str(counts[j])
            body = [f"for (long long {var} = 0; {var} < {n}; {var}++) {{"] + [f"    {x}" for x in body] + ["}"]
        return body

    def launch(self, kernel: str, count: str, args: list, out) -> str:
        """The host line running an elementwise kernel over ``count`` elements of
        ``out`` (a Value: its shape may choose the launch)."""
        return f"{kernel}(" + ", ".join(args) + ");"

    def reduction(self, kind: str, element: str, out: str, red_dims: list, leading: bool = False) -> list:
        """The body of a reduction kernel: ``out[_o]`` = the ``kind`` ("sum" or
        "max") of ``element`` over ``_r`` in [0, _n_red), for each ``_o`` in
        [0, _n_out) (``red_dims``: the reduced dims, None for the batch).

        ``leading``: the reduced axes come before the kept ones (a bias gradient,
        summed over the batch), so consecutive outputs are adjacent in memory: then
        the loop over the outputs is the inner one, adding a row of the argument at
        a time to the output (contiguous, vectorised), in the same order per output
        as the loop per output, so the same sums."""
        init = "0" if kind == "sum" else "-INFINITY"
        if leading:
            add = f"{out}[_o] += {{x}};" if kind == "sum" else f"{out}[_o] = bp_max({out}[_o], {{x}});"
            return [f"for (long long _o = 0; _o < _n_out; _o++) {out}[_o] = {init};",
                    "for (long long _r = 0; _r < _n_red; _r++)",
                    "    for (long long _o = 0; _o < _n_out; _o++)",
                    "        " + add.format(x=element)]
        acc = "_acc += {x};" if kind == "sum" else "_acc = bp_max(_acc, {x});"
        return ["for (long long _o = 0; _o < _n_out; _o++) {",
                f"    real _acc = {'0' if kind == 'sum' else '-INFINITY'};",
                "    for (long long _r = 0; _r < _n_red; _r++)",
                "        " + acc.format(x=element),
                f"    {out}[_o] = _acc;",
                "}"]

    def launch_reduction(self, kernel: str, count: str, args: list, red_dims: list) -> str:
        """The host line running a reduction kernel over ``count`` outputs."""
        return f"{kernel}(" + ", ".join(args) + ");"

    def accumulate(self, target: str, value: str) -> str:
        """``target += value`` inside a per-element loop whose iterations may add into
        one ``target`` (a scatter-add): plain in a serial loop, atomic in a parallel one."""
        return f"{target} += {value};"

    def gemm(self, g) -> list | None:
        """The host lines of the row-major GEMM ``g`` (``contractions.Gemm``), or
        None: then the contraction is lowered as one that is no GEMM."""
        return None

    # -- memory ----------------------------------------------------------------
    def fill(self, dst: str, value: str, count: str) -> str:
        """``dst[0 .. count)`` = ``value`` (a real), one host line."""
        return f"for (long long _i = 0; _i < {count}; _i++) {dst}[_i] = {value};"

    def copy(self, dst: str, src: str, size: str) -> str:
        """Copy ``size`` (a size_t expression) reals from ``src`` to ``dst``."""
        return f"memcpy({dst}, {src}, sizeof(real) * {size});"

    def zero(self, dst: str, size: str) -> str:
        """Set ``size`` (a size_t expression) reals of ``dst`` to zero."""
        return f"memset({dst}, 0, sizeof(real) * {size});"

    # -- the entry points ------------------------------------------------------
    batch_size = "ws->N"          # the batch size N, inside an entry point

    def entry_params(self, module: str) -> list:
        """[(declaration, comment)] of an entry point's parameters before the arrays."""
        return [(f"{module}_workspace* ws", "workspace of batch size N")]

    def entry_head(self, module: str, fn: str, params: list, outputs: list) -> list:
        """The lines opening entry point ``fn``: its signature, one parameter a line
        with its comment (``params``: [(declaration, comment)], all of them), and the
        checks of the workspace and the ``outputs`` (parameter names) for NULL."""
        width = max(len(d) for d, _ in params) + 1
        lines = [f"{self.host_prefix}int {module}_{fn}("]
        for i, (decl, comment) in enumerate(params):
            sep = "," if i < len(params) - 1 else ")"
            lines.append(f"    {(decl + sep).ljust(width)}  {line_comment(comment)}")
        return lines + ["{", "    if (ws == NULL) return BP_ERROR_NULL_POINTER;",
                        "    if (" + " || ".join(f"{p} == NULL" for p in outputs) + ") return BP_ERROR_NULL_POINTER;"]

    def function_prologue(self, uses: set) -> list:
        """Declarations an entry point needs for what its kernels ``uses`` ("gemm")."""
        return []

    def loss_to_host(self, value: str, const: bool) -> list:
        """The lines ending loss and value_and_grad: the scalar loss ``value`` (a
        literal when ``const``) to ``*loss_out``, a double."""
        return ["", f"*loss_out = (double){value};" if const else f"*loss_out = (double){value}[0];"]
