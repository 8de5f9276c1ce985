"""Stage 5 (NumPy target): print programs as a standalone Python module.

The skeleton of the file is the Jinja2 template ``module.py.j2`` (beside this file);
this printer turns each kernel into NumPy lines.  Elementwise math is printed by
a subclass of SymPy's NumPy printer; contractions become ``@`` with transposes
(BLAS GEMMs) wherever the subscripts allow, ``np.einsum`` otherwise.
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
import re
import shlex
from dataclasses import dataclass

import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.str import StrPrinter

from ... import names
from ...ops.notation import print_add
from ...escape import py_comment, py_docstring, py_str
from ...ops import broadcast_shapes, equal, gemm_form, key_text, numpy_inplace, step
from ...ops.structural import gemm_plan, window_sizes, windows_tile
from ...ir.program import Kernel, Program, Value, symbol_counts
from ..base import Code, lowering_table, lowers, template_environment
from ..python import init_line, literal


class ExprPrinter(NumPyPrinter):
    """SymPy -> NumPy source, with ``np.``.  Our functions (sigmoid, relu, ...) print
    themselves (``_numpycode`` in ops/elementwise.py); one that needs a helper
    function in the module (erf: ``_erf``) registers its source with ``helper``."""

    def __init__(self, leaf_text: dict, helpers: dict | None = None):
        super().__init__({"fully_qualified_modules": False, "inline": True,
                          "allow_unknown_functions": False})
        self.leaf_text = leaf_text
        self.helpers = helpers if helpers is not None else {}

    def helper(self, name: str, source: str) -> None:
        """The module must define ``name`` (by ``source``, Python at top level)."""
        self.helpers[name] = source

    def _module_format(self, fqn, register=True):
        if fqn.startswith("numpy."):
            return "np." + fqn[len("numpy."):]
        if "." in fqn:   # math.erf and the like: scalars only, and the module imports numpy alone
            raise TypeError(f"{fqn} is not NumPy")
        return super()._module_format(fqn, register)   # a builtin (abs)

    def _print_not_supported(self, expr):
        raise TypeError(f"no NumPy printing for {type(expr).__name__}")

    def _print_Symbol(self, e):
        return self.leaf_text.get(e.name, e.name)

    def _print_Add(self, expr, order=None):
        return print_add(self, expr)

    def _print_Rational(self, e):
        return f"{e.p}/{e.q}"

    def _print_Float(self, e):
        return repr(float(e))

    def _print_Pow(self, e, rational=False):
        base, exp = e.args
        if exp == -1:
            return f"1/{self.parenthesize(base, 100)}"
        if exp == sp.Rational(1, 2):
            return f"np.sqrt({self._print(base)})"
        if exp == -sp.Rational(1, 2):
            return f"1/np.sqrt({self._print(base)})"
        if exp.is_Integer and exp < 0:
            return f"1/{self.parenthesize(base, 100)}**{-exp}"
        return f"{self.parenthesize(base, 100)}**{self.parenthesize(exp, 100)}"


class FormulaPrinter(StrPrinter):
    """SymPy -> the math a fused kernel computes, for a comment: ``tanh(t0 + b1)``,
    with each leaf written as the code names it."""

    def __init__(self, leaf_text: dict):
        super().__init__({"order": "none"})
        self.leaf_text = leaf_text

    def _print_Symbol(self, e):
        return self.leaf_text.get(e.name, e.name)

    def _print_Add(self, expr, order=None):
        return print_add(self, expr)


FORMULA_WIDTH = 100   # a fused formula longer than this keeps its CSE temporaries' names


def fused_formula(temps, expr, leaf_text) -> str:
    """The formula of a fused kernel, its CSE temporaries substituted back while
    the text stays within FORMULA_WIDTH."""
    return _fused_formula(tuple(temps), expr, tuple(leaf_text.items()))


@functools.lru_cache(maxsize=1024)
def _fused_formula(temps, expr, leaf_text) -> str:
    # printed once: the programs share most of their forward kernels
    printer = FormulaPrinter(dict(leaf_text))
    full = expr
    for name, e in reversed(temps):
        full = full.xreplace({sp.Symbol(name, real=True): e})
    text = printer.doprint(full)
    return text if len(text) <= FORMULA_WIDTH else printer.doprint(expr)


# The arithmetic steps applied to the result in place; {o} is the result, {r} the
# other operand.  A function's own steps are NumPy templates of {o}, declared with
# the op (ops.numpy_inplace: tanh is "np.tanh({o}, out={o})").
INPLACE = {
    "add": "{o} += {r}",
    "subtract": "{o} -= {r}",
    "rsub": "np.subtract({r}, {o}, out={o})",
    "mul": "{o} *= {r}",
    "div": "{o} /= {r}",
    "neg": "np.negative({o}, out={o})",
    "square": "np.square({o}, out={o})",
    "reciprocal": "np.reciprocal({o}, out={o})",
    "sqrt": "np.sqrt({o}, out={o})",
    "pow": "{o} **= {r}",
}


def template(step: str) -> str:
    """The NumPy template of an in-place step: an arithmetic step's, or the step itself."""
    return INPLACE.get(step, step)


def inplace_steps(expr, name: str, smaller=None):
    """``expr`` as a sequence of in-place steps on the one leaf called ``name``
    (which appears once): [(step, other operand)], innermost first, a step an
    arithmetic step of INPLACE or a function's own template.  None when some node
    on the way has no in-place form.  ``smaller(e)``: whether ``e`` broadcasts from
    fewer entries than the result; a product by such a quotient is one step, the
    quotient computed at its own size (``t *= g/count``: one pass over t, not two)."""
    steps = []
    node = expr
    holds = _holder(name)
    while not (isinstance(node, sp.Symbol) and node.name == name):
        holder = [a for a in node.args if holds(a)]
        if len(holder) != 1:
            return None
        inner = holder[0]
        others = [a for a in node.args if a is not inner]
        if node.is_Add:
            rest = sp.Add(*others)
            if inner.is_Mul and inner.args[0] == -1:
                steps.append(("rsub", rest))
                inner = -inner
            else:
                steps.append(("add", rest))
        elif node.is_Mul:
            num, den = sp.fraction(sp.Mul(*others))
            if den != 1 and num not in (1, -1) and smaller is not None and smaller(num / den):
                steps.append(("mul", num / den))
            elif smaller is not None:
                # one step per factor of the result's size, each in place (``t *= a[:, None] * v``
                # would make a temporary of that size first), and the smaller factors, constants
                # and divisors together as one step computed at their own size (``t *= -2/N``)
                num_factors = [f for f in sp.Mul.make_args(num) if f != 1]
                den_factors = [f for f in sp.Mul.make_args(den) if f != 1]
                small_num, small_den = [], []   # grown while their product stays smaller
                for f in den_factors:
                    if smaller(sp.Mul(*small_den, f)):
                        small_den.append(f)
                for f in num_factors:
                    if smaller(sp.Mul(*small_num, f) / sp.Mul(*small_den)):
                        small_num.append(f)
                scale = sp.Mul(*small_num) / sp.Mul(*small_den)
                if scale == -1:
                    steps.append(("neg", None))
                elif not small_num and small_den:
                    steps.append(("div", sp.Mul(*small_den)))
                elif scale != 1:
                    steps.append(("mul", scale))
                steps.extend(("div", f) for f in reversed(den_factors) if f not in small_den)
                steps.extend(("mul", f) for f in reversed(num_factors) if f not in small_num)
            else:
                if den != 1:
                    steps.append(("div", den))
                if num == -1:
                    steps.append(("neg", None))
                elif num != 1:
                    steps.append(("mul", num))
        elif node.is_Pow:
            if inner is not node.base:
                return None
            e = node.exp
            if e == 2:
                steps.append(("square", None))
            elif e == -1:
                steps.append(("reciprocal", None))
            elif e == sp.Rational(1, 2):
                steps.append(("sqrt", None))
            elif e.is_Number:
                steps.append(("pow", e))
            else:
                return None
        elif isinstance(node, sp.Function) and len(node.args) == 1 and numpy_inplace(node.func) is not None:
            steps.extend(reversed(numpy_inplace(node.func)))
        else:
            return None
        node = inner
    return steps[::-1]


def _holder(name: str):
    """``holds(e)``: whether expression ``e`` holds the symbol called ``name``,
    remembered for every expression asked about and those inside it (one walk of
    the expression, not a search from each node down)."""
    known: dict = {}

    def holds(e):
        found = known.get(e)
        if found is None:
            found = isinstance(e, sp.Symbol) and e.name == name
            for a in e.args:   # every argument walked: each is remembered
                found = holds(a) or found
            known[e] = found
        return found

    return holds


def batched_shape(v: Value) -> str:
    dims = (["N"] if v.batched else []) + [str(d) for d in v.shape]
    if len(dims) == 1:
        return f"({dims[0]},)"
    return "(" + ", ".join(dims) + ")"


def aligned(v: Value, rank: int, text: str | None = None) -> str:
    """``v`` (read as ``text``, an atom; by default its name) indexed so it
    broadcasts against a batched value of the given rank."""
    text = v.name if text is None else text
    if v.batched and v.rank < rank:
        return f"{text}[:, " + ", ".join(["None"] * (rank - v.rank)) + "]"
    return text


@dataclass
class Folded:
    """A temporary written into the one line that reads it: its expression as an
    atom (parenthesised unless a name, call, subscript or attribute), and for a
    map whose value is a negation, the expression of its negative."""
    text: str
    negated: str | None = None


def atomic(text: str) -> str:
    """``text`` (a Python expression), parenthesised unless it is already an atom."""
    node = ast.parse(text, mode="eval").body
    if isinstance(node, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)) or (
            isinstance(node, ast.Constant) and not str(node.value).startswith("-")):
        return text
    return f"({text})"


class NumpyPrinter:
    def __init__(self, dtype: str):
        self.dtype = dtype
        self.folded: dict = {}   # temporary name -> Folded, for the function being printed
        self.helpers: dict = {}  # name -> source of a helper the printed code calls (_erf)
        self.buffers: dict = {}  # id(kernel) -> key of its array in the workspace (see workspace_plan)
        self.absorbed: dict = {}  # id(sum kernel) -> the map kernel it computes too (see absorb_plan)
        self.grad_buffers: dict = {}  # id(kernel) -> WRT name of the gradient array it computes into (grad_plan)
        self.printed_maps: dict = {}  # lower_map's lines by what they are made of (see there)

    def ref(self, v: Value) -> str:
        """How a line reads value ``v``: its name, or its folded expression."""
        f = self.folded.get(v.name)
        return f.text if f is not None else v.name

    def aligned(self, v: Value, rank: int) -> str:
        return aligned(v, rank, self.ref(v))

    def kernel(self, k: Kernel) -> list:
        return getattr(self, lowering_table(type(self))[k.op])(k, k.out.name, [self.ref(a) for a in k.args])

    # -- kernels -------------------------------------------------------------
    @lowers("map")
    def lower_map(self, k, out, args):
        """The lines of an elementwise kernel.  They depend on its expressions, its
        result and arguments (names, shapes, how the line reads them), the argument
        it may overwrite and its notes alone: the three functions compute the same
        forward kernels, printed once (SymPy's printing is most of the cost)."""
        temps, expr = k.attrs
        key = (tuple(temps), expr, (k.out.name, k.out.shape, k.out.batched, k.out.dtype),
               tuple((a.name, a.shape, a.batched, a.dtype, a.kind, a.literal, text) for a, text in zip(k.args, args)),
               k.reuse.name if k.reuse is not None else None, tuple(k.notes))
        lines = self.printed_maps.get(key)
        if lines is None:
            lines = self.printed_maps[key] = self._lower_map(k, out)
        return list(lines)

    def _lower_map(self, k, out):
        temps, expr = k.attrs
        leaf_text = {a.name: self.aligned(a, k.out.rank) for a in k.args}
        printer = ExprPrinter(leaf_text, self.helpers)
        lines = [f"{name} = {printer.doprint(e)}" for name, e in temps]
        steps = inplace_steps(expr, k.reuse.name, self.smaller_than(k)) if k.reuse is not None else None
        present = {sym.name for e in [expr, *(e for _, e in temps)] for sym in e.free_symbols}
        read = [a for a in k.args if a.name in present]
        if (broadcast_shapes([a.shape for a in read], str), any(a.batched for a in read)) \
                != (k.out.shape, k.out.batched):
            # the arguments that set the shape cancelled out (x - (x + s) is -s)
            return lines + [f"{out} = np.empty({batched_shape(k.out)}, DTYPE)",
                            f"{out}[...] = {printer.doprint(expr)}"]
        if steps is None:
            text = printer.doprint(expr)
            if isinstance(expr, (equal, step)):
                # a comparison alone is a boolean array in NumPy (clip's derivative
                # (x == h) times an adjoint of 1): the result is of the dtype
                text = f"{text}.astype(DTYPE)"
            lines.append(f"{out} = {text}")
            return lines
        plain = len(steps) == 1 and template(steps[0][0]).startswith("{o} ")   # out += b says it all
        if not plain:
            formula = f"{out} = {fused_formula(temps, expr, {a.name: self.ref(a) for a in k.args})}"
            if not any(note == formula or note.startswith(formula + "   #") for note in k.notes):
                # the steps below compute this; the equation above does not already say it
                lines.append("# " + py_comment(f"fused, in place: {formula}"))
        lines.append(f"{out} = {k.reuse.name}  # in place: {k.reuse.name} is not read again")
        for op, operand in steps:
            if op == "add" and operand.could_extract_minus_sign():
                op, operand = "subtract", -operand
            lines.append(template(op).format(o=out, r=printer.doprint(operand) if operand is not None else ""))
        return lines

    @staticmethod
    def smaller_than(k: Kernel):
        """For a map kernel: whether an expression of its arguments broadcasts from
        fewer entries than the kernel's result (a batch axis counted as more)."""
        values = {a.name: a for a in k.args}

        def smaller(e) -> bool:
            leaves = [values[sym.name] for sym in e.free_symbols if sym.name in values]
            shape = broadcast_shapes([a.shape for a in leaves], str)
            batched = any(a.batched for a in leaves)
            return (batched, math.prod(shape)) < (k.out.batched, math.prod(k.out.shape)) and \
                (not batched or math.prod(shape) < math.prod(k.out.shape))
        return smaller

    @lowers("contract")
    def lower_contract(self, k, out, args):
        form, out_batched = k.attrs
        a, b = k.args
        sa = ("n" if a.batched else "") + form.a
        sb = ("n" if b.batched else "") + form.b
        so = ("n" if out_batched else "") + form.out
        sizes = {"n": None, **dict(zip(form.a, a.shape)), **dict(zip(form.b, b.shape))}
        return [f"{out} = {self.into(k, contraction(sa, sb, so, args[0], args[1], sizes))}"]

    def into(self, k: Kernel, call: str) -> str:
        """``call`` (an ``np.dot(...)``) writing into the workspace's array for ``k``
        when the function's workspace plan gives it one."""
        if not call.startswith("np.dot(") or not call.endswith(")"):
            return call
        key = self.grad_buffers.get(id(k))
        if key is not None:
            return f"{call[:-1]}, out=_gs[{py_str(key)}])"
        key = self.buffers.get(id(k))
        if key is None:
            return call
        return f"{call[:-1]}, out=ws[{py_str(key)}])"

    @lowers("windows")
    def lower_windows(self, k, out, args):
        """im2col: x [.., *S] -> [.., *kernel, *positions].  Windows that tile the input
        (stride = kernel, no padding) are a reshape of it, a view; any others are
        NumPy's sliding windows of the padded input, copied once into a contiguous
        array (the convolution's GEMM reads it as a matrix, twice: forward and for
        the kernel's gradient)."""
        kernel, stride, padding = k.attrs
        x = k.args[0]
        d = len(kernel)
        lead = x.rank - d                      # the axes before the windowed ones (batch included)
        spatial = x.shape[-d:]
        positions = window_sizes(spatial, kernel, stride, padding)
        keep = [":"] * lead
        if windows_tile(spatial, kernel, stride, padding):
            used = [o * kk for o, kk in zip(positions, kernel)]
            src = args[0]
            if tuple(used) != tuple(spatial):   # the remainder is dropped (floor mode)
                src = f"{src}[{', '.join(keep + [f':{u}' for u in used])}]"
            split = [f"{o}, {kk}" for o, kk in zip(positions, kernel)]
            order = [*range(lead), *(lead + 2 * i + 1 for i in range(d)), *(lead + 2 * i for i in range(d))]
            return [f"# the {' x '.join(map(str, kernel))} windows tile {args[0]}: a reshape, no copy",
                    f"{out} = {src}.reshape({self.dims(x, lead)}{', '.join(split)})"
                    f".transpose({', '.join(map(str, order))})"]
        lines = [f"# the {' x '.join(map(str, kernel))} windows of {args[0]}"
                 + (f", moved by {', '.join(map(str, stride))}" if any(st != 1 for st in stride) else "")
                 + (f", padded by {_padding_text(padding)}" if any(p != (0, 0) for p in padding) else "")
                 + ", one column per output position (im2col)"]
        src = args[0]
        if any(p != (0, 0) for p in padding):
            pads = ", ".join(["(0, 0)"] * lead + [f"({lo}, {hi})" for lo, hi in padding])
            lines.append(f"{out} = np.pad({src}, ({pads}))")
            src = out
        view = f"np.lib.stride_tricks.sliding_window_view({src}, {_tuple(kernel)}, axis={_tuple(range(lead, lead + d))})"
        if any(st != 1 for st in stride):
            view += "[" + ", ".join(keep + [f"::{st}" for st in stride]) + "]"
        order = [*range(lead), *(lead + d + i for i in range(d)), *(lead + i for i in range(d))]
        lines.append(f"{out} = {view}.transpose({', '.join(map(str, order))}).copy()")
        return lines

    @lowers("unwindow")
    def lower_unwindow(self, k, out, args):
        """col2im: g [.., *kernel, *positions] added back onto [.., *S].  Windows that
        tile the input are undone by a reshape; any others by a loop over the kernel's
        offsets, each a strided slice-add of every window's entry at that offset (no
        loop over examples, channels or positions), the padding cropped at the end."""
        spatial, kernel, stride, padding = k.attrs
        g = k.args[0]
        d = len(kernel)
        lead = g.rank - 2 * d
        positions = window_sizes(spatial, kernel, stride, padding)
        keep = [":"] * lead
        if windows_tile(spatial, kernel, stride, padding):
            used = [o * kk for o, kk in zip(positions, kernel)]
            order = [*range(lead), *(j for i in range(d) for j in (lead + d + i, lead + i))]
            tiled = (f"{args[0]}.transpose({', '.join(map(str, order))})"
                     f".reshape({self.dims(g, lead)}{', '.join(map(str, used))})")
            if tuple(used) == tuple(spatial):
                return ["# the windows tiled the input: a reshape back", f"{out} = {tiled}"]
            return ["# the windows tiled the input but for its last rows or columns, which get zeros",
                    f"{out} = np.zeros({batched_shape(k.out)}, DTYPE)",
                    f"{out}[{', '.join(keep + [f':{u}' for u in used])}] = {tiled}"]
        padded = [s + lo + hi for s, (lo, hi) in zip(spatial, padding)]
        full = "(" + self.dims(g, lead) + ", ".join(map(str, padded)) + ")"
        crop = any(p != (0, 0) for p in padding)
        acc = "_acc" if crop else out
        offsets = [f"_k{i}" for i in range(d)]
        target = ", ".join(keep + [f"{o}:{o} + {p * st if st != 1 else p}" + (f":{st}" if st != 1 else "")
                                   for o, p, st in zip(offsets, positions, stride)])
        lines = [f"# each window's entries added back where they were read (col2im): a loop over the "
                 f"{' x '.join(map(str, kernel))} offsets",
                 f"{acc} = np.zeros({full}, DTYPE)"]
        indent = ""
        for o, kk in zip(offsets, kernel):
            lines.append(f"{indent}for {o} in range({kk}):")
            indent += "    "
        lines.append(f"{indent}{acc}[{target}] += {args[0]}[{', '.join(keep + offsets)}]")
        if crop:
            window = ", ".join(keep + [f"{lo}:{lo + s}" for s, (lo, _) in zip(spatial, padding)])
            lines.append(f"{out} = {acc}[{window}]   # the padding cropped")
        return lines

    @staticmethod
    def dims(v: Value, lead: int) -> str:
        """The first ``lead`` dims of ``v`` (N for the batch), each followed by ', '."""
        dims = (["N"] if v.batched else []) + [str(d) for d in v.shape]
        return "".join(f"{d}, " for d in dims[:lead])

    def absorbing(self, k: Kernel, out: str):
        """The line of a sum that computes its argument's map too (absorb_plan), or None."""
        m = self.absorbed.get(id(k))
        if m is None:
            return None
        form, a, b = absorbed_form(m, k)
        if form == "vdot":
            s = self.ref(a)
            scale = "" if b == 1 else f"{atomic(ExprPrinter({}, self.helpers).doprint(b))}*"
            return [f"{out} = {scale}np.vdot({s}, {s})"]
        return [f"{out} = np.dot({self.ref(a)}, {self.ref(b)})"]

    @lowers("reduce")
    def lower_reduce(self, k, out, args):
        absorbing = self.absorbing(k, out)
        if absorbing:
            return absorbing
        kind, axes, keepdims, _ = k.attrs
        off = 1 if k.args[0].batched else 0
        ax = tuple(a + off for a in axes)
        x = k.args[0]
        count = math.prod(x.shape[a] for a in axes)
        if 1 < count <= UNROLL_REDUCE and max(axes) < len(x.shape) - 1:
            return self.unrolled_reduce(k, out, args[0], ax, count)
        axis = str(ax[0]) if len(ax) == 1 else str(ax)
        kd = ", keepdims=True" if keepdims else ""
        return [f"{out} = {args[0]}.{kind}(axis={axis}{kd})"]

    def unrolled_reduce(self, k, out, x, ax, count):
        """A reduction over a few entries along inner axes (a pooling's window): one
        elementwise step per entry, over slices.  NumPy reduces a short inner axis
        one element at a time (``.max(axis=(2, 3))`` of a 2 x 2 window is some 80
        times slower than three ``np.maximum`` of slices)."""
        kind, axes, keepdims, _ = k.attrs
        shape = (["N"] if k.args[0].batched else []) + list(k.args[0].shape)
        entries = []
        for idx in itertools.product(*(range(int(shape[a])) for a in ax)):
            at = dict(zip(ax, idx))
            parts = [str(at[a]) if a in at else ":" for a in range(max(ax) + 1)]
            entries.append(f"{x}[{', '.join(parts)}]")
        lines = [f"# the {kind} over the {count} entries of axes {', '.join(map(str, ax))}, one slice at a time"]
        if kind == "max":
            lines.append(f"{out} = np.maximum({entries[0]}, {entries[1]})")
            lines += [f"np.maximum({out}, {e}, out={out})" for e in entries[2:]]
        else:
            lines.append(f"{out} = {entries[0]} + {entries[1]}")
            lines += [f"{out} += {e}" for e in entries[2:]]
        if keepdims:
            parts = ["None" if a in ax else ":" for a in range(max(ax) + 1)]
            lines.append(f"{out} = {out}[{', '.join(parts)}]")
        return lines

    @lowers("sum_to")
    def lower_sum_to(self, k, out, args):
        absorbing = self.absorbing(k, out)
        if absorbing:
            return absorbing
        target, keep_batch = k.attrs
        x = k.args[0]
        axes = []
        if x.batched and not keep_batch:
            axes.append(0)
        off = 1 if x.batched else 0
        lead = len(x.shape) - len(target)
        axes += [off + i for i in range(lead)]
        keep = [off + lead + i for i, d in enumerate(target) if d == 1 and x.shape[lead + i] != 1]
        axes += keep
        if axes == [0] and x.batched and x.rank == 2:
            # a sum over the batch of a matrix is a GEMV with a ones vector: BLAS speed
            return [f"{out} = {self.into(k, f'np.dot(ones, {args[0]})')}"]
        axis = str(axes[0]) if len(axes) == 1 else str(tuple(axes))
        line = f"{out} = {args[0]}.sum(axis={axis})"
        if keep:
            line += f".reshape({batched_shape(k.out)})"
        return [line]

    @lowers("broadcast")
    def lower_broadcast(self, k, out, args):
        x = k.args[0]
        if x.kind == "const":
            return [f"{out} = np.full({batched_shape(k.out)}, {ExprPrinter({}, self.helpers).doprint(x.literal)}, DTYPE)"]
        return [f"{out} = np.broadcast_to({self.aligned(x, k.out.rank)}, {batched_shape(k.out)})"]

    @lowers("reshape")
    def lower_reshape(self, k, out, args):
        x = k.args[0]
        old, new = x.shape, k.out.shape
        pre = ":, " if x.batched else ""
        if tuple(d for d in new if d != 1) == tuple(d for d in old if d != 1):
            if len(new) > len(old) and new[:len(old)] == old:
                return [f"{out} = {args[0]}[{pre}" + ", ".join([":"] * len(old) + ["None"] * (len(new) - len(old))) + "]"]
            if len(new) < len(old) and old[:len(new)] == new:
                return [f"{out} = {args[0]}[{pre}" + ", ".join([":"] * len(new) + ["0"] * (len(old) - len(new))) + "]"]
        return [f"{out} = {args[0]}.reshape({batched_shape(k.out)})"]

    @lowers("take")
    def lower_take(self, k, out, args):
        return [f"{out} = {args[0]}[rows, {args[1]}]"]

    @lowers("scatter_add")
    def lower_scatter_add(self, k, out, args):
        base, label, value = args
        lines = [] if k.inplace else [f"{out} = np.array({base})"]
        f = self.folded.get(k.args[2].name)
        if f is not None and f.negated is not None:
            lines.append(f"{out}[rows, {label}] -= {aligned(k.args[2], 1, f.negated)}")
        else:
            lines.append(f"{out}[rows, {label}] += {self.aligned(k.args[2], 1)}")
        return lines

    @lowers("gather")
    def lower_gather(self, k, out, args):
        x, index = k.args
        if not x.batched:   # one table for every example: np.take (about twice fancy indexing's speed)
            return [f"{out} = np.take({args[0]}, {args[1]}, axis=0)"]
        return [f"{out} = {args[0]}[{'rows[:, None]' if index.shape else 'rows'}, {args[1]}]"]

    @lowers("scatter_rows")
    def lower_scatter_rows(self, k, out, args):
        g, index = k.args
        shape, batched = k.attrs
        V, D = shape[0], math.prod(shape[1:])
        gt, it = args
        if batched and not index.shape:
            # one row per example, at its label: no two additions meet
            return [f"{out} = np.zeros({batched_shape(k.out)}, DTYPE)", f"{out}[rows, {it}] = {gt}"]
        if scatter_form(V, D, self.dtype) == "onehot":
            # a one-hot matrix of the tokens times the rows: one GEMM (small V)
            product = (f"(np.arange({V})[:, None] == {it}.reshape(-1)).astype(DTYPE) @ "
                       f"{gt}.reshape(-1{f', {D}' if shape[1:] else ''})" if not batched else
                       f"(np.arange({V})[:, None] == {it}[:, None, :]).astype(DTYPE) @ "
                       f"{gt}.reshape(N, {math.prod(index.shape)}, {D})")
            if batched and len(shape) != 2 or not batched and len(shape) > 2:
                product = f"({product}).reshape({batched_shape(k.out)})"
            return [f"# {g.name} added into {out} at {index.name}: onehot({index.name}).T @ {g.name}, one GEMM",
                    f"{out} = {product}"]
        # one bincount over the flat index (row * D + column): no Python loop, float64 sums
        row = f"(rows[:, None]*{V} + {it})" if batched else it
        flat = f"{row}.reshape(-1)" if D == 1 else f"({row}[..., None]*{D} + np.arange({D})).reshape(-1)"
        size = f"N*{V * D}" if batched else f"{V * D}"
        reshape = f".reshape({batched_shape(k.out)})" if batched or len(shape) > 1 else ""
        cast = ".astype(DTYPE)" if self.dtype != "float64" else ""
        return [f"# {g.name} added into {out} at {index.name}: one bincount over the flat index "
                + (f"{index.name}*{D} + column" if D > 1 else index.name),
                f"{out} = np.bincount({flat}, weights={gt}.reshape(-1), minlength={size}){reshape}{cast}"]

    @lowers("zeros")
    def lower_zeros(self, k, out, args):
        return [f"{out} = np.zeros({batched_shape(k.out)}, DTYPE)"]

    @lowers("onehot")
    def lower_onehot(self, k, out, args):
        (classes,) = k.attrs
        axis = "[..., None]" if k.args[0].shape else "[:, None]"
        return [f"{out} = ({args[0]}{axis} == np.arange({classes})).astype(DTYPE)"]

    @lowers("transpose")
    def lower_transpose(self, k, out, args):
        if k.args[0].batched:
            return [f"{out} = {args[0]}.swapaxes(-1, -2)"]
        return [f"{out} = {args[0]}.T"]

    @lowers("slice")
    def lower_slice(self, k, out, args):
        (key,) = k.attrs
        pre = ":, " if k.args[0].batched else ""
        return [f"{out} = {args[0]}[{pre}{key_text(key, k.args[0].shape)}]"]

    @lowers("unslice")
    def lower_unslice(self, k, out, args):
        shape, key = k.attrs
        pre = ":, " if k.out.batched else ""
        return [f"{out} = np.zeros({batched_shape(k.out)}, DTYPE)",
                f"{out}[{pre}{key_text(key, shape)}] = {args[0]}"]

    @lowers("concat")
    def lower_concat(self, k, out, args):
        (axis,) = k.attrs
        parts = []
        for a, text in zip(k.args, args):
            if k.out.batched and not a.batched:   # the same for every example
                text = f"np.broadcast_to({text}, {batched_shape(Value(a.name, a.shape, True, a.dtype, a.kind))})"
            parts.append(text)
        return [f"{out} = np.concatenate([{', '.join(parts)}], axis={axis + k.out.batched})"]

    def fold(self, k: Kernel) -> Folded | None:
        """``k``'s value as an expression for the line that reads it, or None when
        ``k`` is not one plain assignment ``out = expr``."""
        lines = self.kernel(k)
        head = f"{k.out.name} = "
        if len(lines) != 1 or not lines[0].startswith(head) or "#" in lines[0]:
            return None
        text = atomic(lines[0][len(head):])
        if len(text) > FOLD_WIDTH:
            return None
        negated = None
        if k.op == "map" and not k.attrs[0] and k.reuse is None:
            expr = k.attrs[1]
            if expr.could_extract_minus_sign():
                leaf_text = {a.name: self.aligned(a, k.out.rank) for a in k.args}
                negated = atomic(ExprPrinter(leaf_text, self.helpers).doprint(-expr))
        return Folded(text, negated)

    @lowers("copy")
    def lower_copy(self, k, out, args):
        return [f"{out} = np.array({args[0]}, DTYPE)"]


# The scatter-add of a gather's adjoint (E_bar[v] = the sum of the rows of e_bar at
# the tokens equal to v), by the sizes known at compile time (V rows of D entries;
# the number of tokens N*T is known only at run time).  Measured in
# benchmarks/bench_scatter_add.py against np.add.at (3-5 times slower than
# bincount), a bincount per column and sorting + np.add.reduceat: a one-hot GEMM
# (V*N*T*D multiply-adds, in BLAS) wins for a small table, one bincount over flat
# indices (about 3 ns per entry added, in float64) everywhere else.  Where they
# cross, V grows about as the square root of D, up to a cap: (cap, factor) by dtype.
ONEHOT_ROWS = {"float64": (32, 4), "float32": (64, 8)}


def scatter_form(V: int, D: int, dtype: str) -> str:
    """``"onehot"`` or ``"bincount"``: the NumPy form of a scatter-add of rows of D
    entries into V rows."""
    cap, factor = ONEHOT_ROWS[dtype]
    return "onehot" if V <= min(cap, factor * math.sqrt(D)) else "bincount"


def contraction(sa: str, sb: str, so: str, a: str, b: str, sizes: dict | None = None) -> str:
    """NumPy for einsum(sa,sb->so): ``@`` with transposes when it is one GEMM, else einsum.

    A GEMM over groups of indices (``ops.gemm_form``: a convolution's ``W[o, (cij)] @
    X[n, (cij), (hw)]``) reads each operand as a matrix (a stack of them along the
    batch index) through a reshape, and its result back; ``sizes`` gives each
    index's size (None: the batch size N)."""
    form, ra, rb, ro = gemm_plan(sa, sb, so, sizes) if sizes is not None else (gemm_form(sa, sb, so), sa, sb, so)
    if form is None:
        return f"np.einsum('{sa},{sb}->{so}', {a}, {b})"
    left, right = (a, b) if form.left == 0 else (b, a)
    if form.outer and (ra, rb) == (sa, sb):
        return f"np.outer({left}, {right})"
    if not form.grouped and (ra, rb, ro) == (sa, sb, so):
        t = ".swapaxes(-1, -2)" if form.batched else ".T"
        if not form.batched and len(sa) <= 2 and len(sb) <= 2:
            # matrices and vectors: np.dot goes to BLAS as directly as it can (``@`` takes
            # 10-14 us for a product of one row, np.dot 2-3 us), and it can write into
            # an array of the workspace (``out=``)
            return f"np.dot({left}{'.T' if form.trans_left else ''}, {right}{'.T' if form.trans_right else ''})"
        return f"{left}{t if form.trans_left else ''} @ {right}{t if form.trans_right else ''}"
    # the operands as matrices by reshapes (TTGT), read by their original subscripts
    sl, sr = (sa, sb) if form.left == 0 else (sb, sa)

    def size(group):
        ints = math.prod(sizes[c] for c in group if sizes[c] is not None)
        if any(sizes[c] is None for c in group):
            return "N" if ints == 1 else f"N * {ints}"
        return str(ints)

    def matrix(text, subs, rows, cols, trans):
        """An operand as a matrix [rows x cols] (stored [cols x rows] when ``trans``),
        one per entry of the batch index when it has it."""
        stored = (cols, rows) if trans else (rows, cols)
        dims = ([size(form.batch)] if form.batch in subs and form.batch else []) + [size(g) for g in stored]
        if dims != [size(c) for c in subs]:
            text = f"{text}.reshape({', '.join(dims)})"
        if trans:
            text += ".swapaxes(-1, -2)" if len(dims) == 3 else ".T"
        return text

    product = (f"{matrix(left, sl, form.m, form.k, form.trans_left)} @ "
               f"{matrix(right, sr, form.k, form.n, form.trans_right)}")
    result = [size(form.batch)] if form.batch and not form.summed else []
    result += [size(form.m), size(form.n)]
    if form.summed:
        product = f"({product}).sum(axis=0)"
    if result != [size(c) for c in so]:
        product = product if form.summed else f"({product})"
        product += f".reshape({', '.join(size(c) for c in so)}{',' if len(so) == 1 else ''})" if so else ".reshape(())"
    return product


def _tuple(values) -> str:
    """A tuple of ints as Python writes it: ``(5, 5)``, ``(3,)``."""
    values = list(values)
    return f"({values[0]},)" if len(values) == 1 else "(" + ", ".join(map(str, values)) + ")"


def _padding_text(padding) -> str:
    """``1`` (every side), or ``(0, 1), (0, 1)`` (before and after, per axis)."""
    sides = {p for pair in padding for p in pair}
    return str(sides.pop()) if len(sides) == 1 else ", ".join(f"({lo}, {hi})" for lo, hi in padding)


# ---------------------------------------------------------------------------
# The whole module


def _only_code(value):
    """Jinja2 ``finalize``: refuse a plain string that no escaping filter has seen."""
    if isinstance(value, Code) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"targets/numpy/module.py.j2: a field of type {type(value).__name__} ({str(value)[:60]!r}) "
                    "reached the module unescaped; pass it through | docstring, | comment or "
                    "| literal, or build it as Code")


def docstring_filter(text) -> Code:
    return Code(py_docstring(text))


def comment_filter(text) -> Code:
    return Code(py_comment(text))


def _inputs_dict(names) -> str:
    """``{'x': x, 'label': label}``: what a function passes to ``_check``."""
    return "{" + ", ".join(f"{py_str(nm)}: {nm}" for nm in names) + "}"


def _signature(*parts) -> str:
    """``params, *, x, label=None, check=True``: the parts that are not empty."""
    return ", ".join(p for p in parts if p)


# Kernels whose value can be written into the line that reads it (a temporary read
# once): elementwise maps, views and reductions; a GEMM keeps a line of its own.
FOLDABLE = ("map", "reshape", "slice", "transpose", "reduce", "sum_to")
FOLD_WIDTH = 40   # the longest expression folded into another line
UNROLL_REDUCE = 16   # a reduction over at most this many entries of inner axes is unrolled over slices


def reads(k: Kernel) -> dict:
    """How many times the printed lines of ``k`` read each value, by name."""
    counts: dict = {}
    if k.op == "map":
        temps, expr = k.attrs
        for e in [expr, *(e for _, e in temps)]:
            for nm, c in symbol_counts(e).items():
                counts[nm] = counts.get(nm, 0) + c
        if k.reuse is not None:
            counts[k.reuse.name] = counts.get(k.reuse.name, 0) + 1
        return counts
    for i, a in enumerate(k.args):
        if k.op == "scatter_add" and i == 0 and k.inplace:
            continue
        counts[a.name] = counts.get(a.name, 0) + 1
    return counts


def writes_in_place(k: Kernel) -> set:
    """The arrays whose memory ``k`` overwrites."""
    out = {k.reuse.name} if k.reuse is not None else set()
    if k.op == "scatter_add" and k.inplace:
        out.add(k.out.name)
    return out


def absorb_plan(kernels, returns: str) -> dict:
    """Kernel index -> index of the sum that computes it along with its own value,
    in one BLAS call: a square summed over everything (``L = sum of L_n``, ``L_n =
    t0**2``: ``np.vdot(t0, t0)``), or a product by a vector summed over the last
    axis (``g = sum(f)``, ``f = e*v``: ``np.dot(e, v)``, a GEMV).  Only a map that
    no other line reads, whose arguments nothing overwrites on the way."""
    uses: dict = {}
    for i, k in enumerate(kernels):
        for nm in reads(k):
            uses.setdefault(nm, []).append(i)
    returned = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", returns))
    producer = {}
    plan: dict = {}
    for i, k in enumerate(kernels):
        if k.op in ("reduce", "sum_to") and k.args[0].name in producer:
            j = producer[k.args[0].name]
            m = kernels[j]
            if (absorbed_form(m, k) is not None and uses.get(m.out.name) == [i] and m.out.name not in returned
                    and m.phase == k.phase
                    and not any(writes_in_place(kernels[x]) & {a.name for a in m.args} for x in range(j + 1, i))):
                plan[j] = i
        producer[k.out.name] = i
    return plan


def absorbed_form(m: Kernel, k: Kernel):
    """``("vdot", s, c)`` or ``("gemv", a, v)`` when the sum ``k`` of map ``m``'s value
    is one of the forms of absorb_plan (see there), else None."""
    if m.op != "map" or m.reuse is not None or m.attrs[0]:
        return None
    expr = m.attrs[1]
    values = {a.name: a for a in m.args}
    same = [a for a in m.args if (a.shape, a.batched) == (m.out.shape, m.out.batched)]
    if k.op == "sum_to":
        c, rest = expr.as_coeff_Mul()
        if k.attrs == ((), False) and rest.is_Pow and rest.exp == 2 and isinstance(rest.base, sp.Symbol) \
                and values.get(rest.base.name) in same:
            return ("vdot", values[rest.base.name], c)
        return None
    if k.op == "reduce" and expr.is_Mul and len(expr.args) == 2 and all(isinstance(f, sp.Symbol) for f in expr.args):
        kind, axes, keepdims, _ = k.attrs
        a, v = (values.get(f.name) for f in expr.args)
        if a not in same:
            a, v = v, a
        if (kind == "sum" and not keepdims and axes == (len(m.out.shape) - 1,) and a in same and v is not None
                and not v.batched and v.shape == m.out.shape[-1:] and a.rank == 2):
            return ("gemv", a, v)
    return None


def fold_plan(kernels, returns: str, absorbed=None) -> dict:
    """Kernel index -> index of the kernel whose line takes in its value: each
    temporary (``t7``) of a foldable kernel that exactly one later line reads,
    once, in the same phase, into memory that no kernel on the way overwrites.
    The same operations run, in the same number of NumPy calls; a line fewer.
    ``absorbed`` (absorb_plan): kernels computed by a later sum; none of them
    folds, nor anything into them, and the sum reads their arguments."""
    absorbed = absorbed or {}
    uses: dict = {}      # name -> [(kernel index, count)]
    written: dict = {}   # name -> how many kernels write it
    for i, k in enumerate(kernels):
        written[k.out.name] = written.get(k.out.name, 0) + 1
        for nm, c in reads(k).items():
            uses.setdefault(nm, []).append((i, c))
    returned = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", returns))
    plan: dict = {}
    read_by: dict = {}   # kernel index -> names its (folded) text reads
    for i, k in enumerate(kernels):
        read_by[i] = {a.name for a in k.args}
        for j, c in [*plan.items(), *absorbed.items()]:
            if c == i:
                read_by[i] |= read_by[j]
        nm = k.out.name
        if i in absorbed:
            continue
        if (k.op not in FOLDABLE or not names.TEMP_NAME.match(nm) or nm in returned
                or written[nm] != 1 or len(uses.get(nm, ())) != 1 or uses[nm][0][1] != 1):
            continue
        c = uses[nm][0][0]
        consumer = kernels[c]
        if c <= i or c in absorbed or consumer.phase != k.phase or (consumer.reuse is not None and consumer.reuse.name == nm) \
                or (consumer.op == "scatter_add" and consumer.inplace and consumer.args[0].name == nm):
            continue
        if any(writes_in_place(kernels[j]) & read_by[i] for j in range(i + 1, c + 1)):
            continue
        if k.op == "map" and k.reuse is not None and writes_in_place(k):
            continue
        plan[i] = c
    return plan


# Kernels whose result is a fresh array (not a view of, nor the memory of, an argument).
FRESH = ("contract", "reduce", "sum_to", "zeros", "onehot", "take", "gather", "scatter_rows", "concat",
         "copy", "unslice")


def workspace_plan(kernels, returns: str, folded) -> dict:
    """id(kernel) -> key of the array of the workspace it computes into: each product
    (``contract``, a sum over the batch by ``ones``) whose memory the function does
    not hand back.  A value's memory is handed back when the return expression
    names it or a value sharing its memory: one computed in place in it (``h1 =
    t0  # in place``), or a view of it (a reshape, a slice, a transpose).  Any
    kernel not known to make a fresh array is taken to share its arguments'
    memory.  ``folded``: indices of kernels written into another line (none of
    them gets an array)."""
    parent: dict = {}

    def find(nm):
        while parent.get(nm, nm) != nm:
            nm = parent[nm]
        return nm

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb

    for k in kernels:
        if k.op == "map":
            if k.reuse is not None:
                union(k.out.name, k.reuse.name)
            elif isinstance(k.attrs[1], sp.Symbol):   # a value under another name
                for a in k.args:
                    union(k.out.name, a.name)
        elif k.op == "scatter_add" and k.inplace:
            union(k.out.name, k.args[0].name)
        elif k.op not in FRESH:
            for a in k.args:
                union(k.out.name, a.name)
    returned = {find(nm) for nm in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", returns)}
    plan: dict = {}
    keys: set = set()
    for i, k in enumerate(kernels):
        if k.op not in ("contract", "sum_to") or i in folded or not k.out.rank \
                or find(k.out.name) in returned or any(a.dtype != "float" for a in k.args):
            continue
        key = k.out.name if k.out.name not in keys else f"{k.out.name}_{i}"
        keys.add(key)
        plan[id(k)] = key
    return plan


# A workspace is kept only when its arrays take at least this many bytes: below
# that, malloc's small blocks cost less than taking and giving back a workspace
# (about a microsecond a call), and no page is mapped afresh.
WORKSPACE_BYTES = 1 << 16


def workspace_threshold(values, dtype: str) -> int | None:
    """The least batch size at which arrays for ``values`` take WORKSPACE_BYTES;
    None when they never do."""
    entries = WORKSPACE_BYTES // (8 if dtype == "float64" else 4)
    per_example = sum(math.prod(v.shape) for v in values if v.batched)
    fixed = sum(math.prod(v.shape) for v in values if not v.batched)
    if fixed >= entries:
        return 0
    if not per_example:
        return None
    return -(-(entries - fixed) // per_example)


def grad_plan(program: Program, skip, dtype: str) -> dict:
    """id(kernel) -> WRT name, for the optimizer steps: each product that computes a
    gradient itself (its value is the gradient returned), into an array the steps
    give back once they have used it (``_keep_grads=True``: the gradients live in
    the store until the next step; no page of them is mapped afresh each step).
    Only where no gradient has a batch axis and they take WORKSPACE_BYTES or more
    (so small modules, the lectures' examples among them, read as before).
    ``skip``: indices of kernels folded or absorbed."""
    names: dict = {}
    for wrt, v in program.grads.items():
        names.setdefault(v.name, []).append(wrt)
    if any(v.batched for v in program.grads.values()):
        return {}
    plan = {id(k): names[k.out.name][0] for i, k in enumerate(program.kernels)
            if k.op in ("contract", "sum_to") and i not in skip and len(names.get(k.out.name, ())) == 1
            and all(a.dtype == "float" for a in k.args) and k.out.rank}
    values = [k.out for k in program.kernels if id(k) in plan]
    return plan if workspace_threshold(values, dtype) == 0 else {}


def function_parts(name, program: Program, printer: NumpyPrinter, all_inputs, doc, returns, keep_grads=False):
    blocks = []
    phase = None
    kernels = program.kernels
    absorbed = absorb_plan(kernels, returns)
    plan = fold_plan(kernels, returns, absorbed)
    printer.absorbed = {id(kernels[i]): kernels[j] for j, i in absorbed.items()}
    printer.grad_buffers = grad_plan(program, set(plan) | set(absorbed), printer.dtype) if keep_grads else {}
    grad_shapes = {id(k): batched_shape(k.out) for k in kernels if id(k) in printer.grad_buffers}
    printer.buffers = workspace_plan(kernels, returns, set(plan))
    outs = {id(k): k.out for k in kernels if id(k) in printer.buffers}
    shapes = {kid: batched_shape(v) for kid, v in outs.items()}
    printer.folded = {}
    moved: dict = {}   # kernel index -> notes of the folded kernels it takes in
    for i, k in enumerate(kernels):
        notes = moved.pop(i, []) + list(k.notes)
        if i in absorbed:
            moved.setdefault(absorbed[i], []).extend(notes)
            continue
        if i in plan:
            f = printer.fold(k)
            if f is not None:
                printer.folded[k.out.name] = f
                moved.setdefault(plan[i], []).extend(notes)
                continue
        header = None
        if k.phase != phase:
            phase = k.phase
            header = "forward pass" if phase == "forward" else \
                "backward pass: adjoints in reverse topological order (x_bar = dL/dx)"
        blocks.append({"header": Code(header) if header else None,
                       "notes": notes,
                       "lines": [Code(line) for line in printer.kernel(k)]})
    printer.folded = {}
    printer.absorbed = {}
    body = "\n".join(line for b in blocks for line in b["lines"]) + "\n" + returns
    # the arrays the lines write into (some planned products print no np.dot: an einsum)
    # (one pass over the body for all of them: a search per buffer was quadratic in depth)
    written = set(re.findall(r"\bout=(ws|_gs)\[([^\]]*)\]", body))
    used = [kid for kid, key in printer.buffers.items() if ("ws", py_str(key)) in written]
    buffers = [(printer.buffers[kid], shapes[kid]) for kid in used]
    threshold = workspace_threshold([outs[kid] for kid in used], printer.dtype)
    grad_arrays = [(key, grad_shapes[kid]) for kid, key in printer.grad_buffers.items()
                   if ("_gs", py_str(key)) in written]
    printer.buffers = {}
    printer.grad_buffers = {}
    used_inputs = {v.name for v in program.inputs}
    prologue = [f"{p.name} = params[{py_str(p.name)}]" for p in program.params]
    for v in program.inputs:
        prologue.append(f"{v.name} = np.asarray({v.name}{', DTYPE' if v.dtype == 'float' else ''})")
    if buffers or re.search(r"\b(N|rows|ones)\b", body):
        if program.inputs:
            prologue.append(f"N = {program.inputs[0].name}.shape[0]")
        else:
            # nothing read has a batch axis: the batch size is that of the inputs given
            given = "(" + ", ".join(all_inputs) + ("," if len(all_inputs) == 1 else "") + ")"
            missing = (f"{name}: no input given to take the batch size N from; "
                       f"pass at least one of {', '.join(all_inputs)}")
            prologue += [f"N = next((np.shape(a)[0] for a in {given} if a is not None), None)",
                         "if N is None:",
                         f"    raise ValueError({py_str(missing)})"]
    if re.search(r"\brows\b", body):
        prologue.append("rows = _arange(N)")
    if re.search(r"\bones\b", body):
        prologue.append("ones = _ones(N)")
    epilogue = []
    if buffers:
        params = ", ".join(p.name for p in program.params) + ("," if len(program.params) == 1 else "")
        take = f"_take_workspace({py_str(name)}, N, _{name}_arrays, ({params}))"
        # the same lines at every size (only the threshold differs): the code does not grow with widths
        if threshold is None:
            prologue += ["# the products' arrays are too small (under 64 KiB) to keep between calls",
                         "ws = _NO_WORKSPACE"]
        elif threshold == 0:
            prologue += ["# products computed into arrays kept for the next call at this batch size",
                         f"ws = {take}"]
        else:
            prologue += [f"# products computed into arrays kept for the next call at this batch size, from "
                         f"N = {threshold} (64 KiB)",
                         f"ws = {take} if N >= {threshold} else _NO_WORKSPACE"]
        epilogue += ["if ws:", f"    _give_back_workspace({py_str(name)}, N, ws)"]
    if grad_arrays:
        params = ", ".join(p.name for p in program.params) + ("," if len(program.params) == 1 else "")
        prologue += ["# for the optimizer steps (_keep_grads=True): the gradients computed into arrays",
                     "# the step gives back when it has used them (_give_back_grads)",
                     f"_gs = _take_workspace('grads', 0, _grads_arrays, ({params})) if _keep_grads else _NO_WORKSPACE"]
    inputs = ", ".join(nm if nm in used_inputs else f"{nm}=None" for nm in all_inputs)
    keep = "_keep_grads=False" if grad_arrays else ""
    return {"name": Code(name), "signature": Code(_signature("params", "*", inputs, "check=True", keep)),
            "grad_arrays": [Code(f"{py_str(key)}: np.empty({shape}, DTYPE),") for key, shape in grad_arrays],
            "kept_grads": literal(tuple(key for key, _ in grad_arrays)),
            "check": Code(f"_check({py_str(name)}, params, {_inputs_dict(all_inputs)})"),
            "doc": doc, "prologue": [Code(line) for line in prologue],
            "blocks": blocks, "epilogue": [Code(line) for line in epilogue], "returns": Code(returns),
            "arrays": [Code(f"{py_str(key)}: np.empty({shape}, DTYPE),") for key, shape in buffers]}


def predict_returns(out: Value) -> str:
    """What predict returns: the output, with the batch axis in front; an output
    that reads no input (a function of the params alone) is the same for every
    example, repeated N times in a fresh array."""
    if out.batched:
        return out.name
    dims = ", ".join(["N", *(str(d) for d in out.shape)])
    return f"np.full(({dims}{',' if not out.shape else ''}), {out.name}, DTYPE)"


def module_docstring(spec, version, forward_lines, adjoint_lines) -> str:
    """The generated module's docstring as its ``__doc__`` reads: plain text, which
    the template escapes once (``| docstring``).  Spec text appears verbatim, each
    line indented by four spaces."""

    def indented(lines):
        return ["    " + line if line else "" for line in lines]

    return "\n".join([
        f"{spec.name}: gradient module generated by bpcompile {version} from {spec.file}.",
        "",
        "Do not edit by hand: recompile with",
        f"    bpcompile compile {shlex.quote(spec.file)}",
        "",
        "The spec:",
        "",
        *indented(spec.text.strip("\n").split("\n")),
        "",
        "Notation (as in the lectures): x_bar is dL/dx, the derivative of the loss L with",
        "respect to x.  Inputs carry a leading batch axis of size N; L is the "
        f"{spec.reduction}",
        "over the batch of the per-example loss L_n.",
        "",
        "Forward equations:",
        "",
        *indented(forward_lines),
        "",
        "Adjoint equations, in the order the backward pass computes them (each adjoint is",
        "the sum over the consumers of its node of consumer_bar * local derivative):",
        "",
        *indented(adjoint_lines),
        "",
        "Every function that takes inputs checks its arguments first: params holds each",
        "name of PARAM_SHAPES as a floating array of exactly that shape; each input has a",
        "leading batch axis and then its INPUT_SHAPES shape, all the same batch size, of",
        "a real numeric dtype; labels (LABEL_CLASSES) are integers in [0, classes).  A",
        "mismatch raises ValueError naming the argument, the expected and the given.",
        "check=False skips the checks (for hot loops; the optimizer steps check once).",
        "",
        "From a batch size at which they take 64 KiB, matrix products are computed into",
        "arrays kept between calls (a workspace per function and batch size, taken out",
        "for the call and put back after: threads never share one); nothing returned",
        "lives in them.  reset_workspace() frees them.",
        "",
    ])


def environment():
    """The Jinja2 environment of the module template: every field must be Code,
    and the filters ``literal``, ``docstring`` and ``comment`` make Code of values
    and of text through escape.py."""
    env = template_environment("numpy", _only_code)
    env.filters["literal"] = literal
    env.filters["docstring"] = docstring_filter
    env.filters["comment"] = comment_filter
    return env


def render(low, adj, programs, version: str) -> str:
    """The generated module's source."""
    from ...ir.equations import Namer, docstring_lines
    spec = low.spec
    printer = NumpyPrinter(spec.dtype)
    namer = Namer.of(low)   # the programs' own: the equations are built already
    all_inputs = list(spec.inputs)
    pred, lossp, vag = programs["predict"], programs["loss"], programs["value_and_grad"]
    # a reduction to a scalar is a NumPy scalar, not an array: a 0-d gradient is made
    # one (the optimizer steps update gradients in place, and callers may too)
    grads = "{" + ", ".join(f"{py_str(nm)}: {v.name if v.rank else f'np.asarray({v.name})'}"
                            for nm, v in vag.grads.items()) + "}"
    functions = [
        function_parts("predict", pred, printer, all_inputs,
                       f"The output node {namer.name(low.output) or 'of the graph'}, for a batch.",
                       predict_returns(pred.output)),
        function_parts("loss", lossp, printer, all_inputs,
                       f"L: the {spec.reduction} over the batch of the per-example loss.",
                       f"float({lossp.loss.name})"),
        function_parts("value_and_grad", vag, printer, all_inputs,
                       "(L, {name: dL/d(name) for name in WRT}): forward pass, then reverse mode.",
                       f"float({vag.loss.name}), {grads}", keep_grads=True),
    ]
    keep_grads = bool(functions[-1]["grad_arrays"])
    vag_inputs = {v.name for v in vag.inputs}
    forward_lines, adjoint_lines = docstring_lines(low, adj, namer)

    env = environment()
    classes = {nm: d.classes for nm, d in spec.inputs.items() if d.is_label}
    init_lines = [init_line(p) for p in spec.params.values()]
    step_inputs = ", ".join(nm if nm in vag_inputs else f"{nm}=None" for nm in all_inputs)
    source = env.get_template("module.py.j2").render(
        docstring=module_docstring(spec, version, forward_lines, adjoint_lines),
        name=spec.name, dtype=Code(np_dtype(spec.dtype)), reduction=spec.reduction,
        param_shapes=literal({p: tuple(d.shape) for p, d in spec.params.items()}),
        input_shapes=literal({i: tuple(d.shape) for i, d in spec.inputs.items()}),
        label_classes=literal(classes),
        wrt=literal(tuple(spec.wrt)),
        trained=literal(tuple(nm for nm in spec.wrt if nm in spec.params)),
        init_summary=", ".join(f"{p.name} {p.init[0]}" for p in spec.params.values()) or "none",
        init_lines=[Code(line) for line in init_lines],
        uses_rng=any(re.search(r"\brng\b", line) for line in init_lines),
        functions=functions,
        step_signature=Code(_signature("*", step_inputs, "check=True")),
        check_inputs=Code(_inputs_dict(all_inputs)),
        pass_inputs=Code(_signature(*(f"{nm}={nm}" for nm in all_inputs), "check=False")),
        step_pass_inputs=Code(_signature(*(f"{nm}={nm}" for nm in all_inputs), "check=False",
                                         "_keep_grads=True" if keep_grads else "")),
        step_done=Code("_give_back_grads(grads)" if keep_grads else ""),
        grad_arrays=functions[-1]["grad_arrays"], kept_grads=functions[-1]["kept_grads"],
        helpers=[Code(source.rstrip("\n")) for _, source in sorted(printer.helpers.items())],
    )
    return source


def np_dtype(dtype: str) -> str:
    """``float64`` -> ``float64`` (checked: the module writes ``np.<dtype>``)."""
    if dtype not in ("float64", "float32"):
        raise ValueError(f"unknown dtype {dtype!r}")
    return dtype
