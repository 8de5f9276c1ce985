"""Stage 5 (NumPy target): print programs as a standalone Python module.

The skeleton of the file is the Jinja2 template ``module.py.j2`` (beside this file);
this printer turns each kernel into NumPy lines.  Elementwise math is printed by
a subclass of SymPy's NumPy printer; contractions become ``@`` with transposes
(BLAS GEMMs) wherever the subscripts allow, ``np.einsum`` otherwise.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass

import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.str import StrPrinter

from ... import names
from ...ops.notation import print_add
from ...escape import py_comment, py_docstring, py_str
from ...ops import broadcast_shapes, equal, gemm_form, numpy_inplace, step
from ...ir.program import Kernel, Program, Value
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
    printer = FormulaPrinter(leaf_text)
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


def inplace_steps(expr, name: str):
    """``expr`` as a sequence of in-place steps on the one leaf called ``name``
    (which appears once): [(step, other operand)], innermost first, a step an
    arithmetic step of INPLACE or a function's own template.  None when some node
    on the way has no in-place form."""
    steps = []
    node = expr
    while not (isinstance(node, sp.Symbol) and node.name == name):
        holder = [a for a in node.args if any(isinstance(s, sp.Symbol) and s.name == name
                                                  for s in sp.preorder_traversal(a))]
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
        temps, expr = k.attrs
        leaf_text = {a.name: self.aligned(a, k.out.rank) for a in k.args}
        printer = ExprPrinter(leaf_text, self.helpers)
        lines = [f"{name} = {printer.doprint(e)}" for name, e in temps]
        steps = inplace_steps(expr, k.reuse.name) if k.reuse is not None else None
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
        formula = f"{out} = {fused_formula(temps, expr, {a.name: self.ref(a) for a in k.args})}"
        plain = len(steps) == 1 and template(steps[0][0]).startswith("{o} ")   # out += b says it all
        if not plain and not any(note == formula or note.startswith(formula + "   #") for note in k.notes):
            # the steps below compute this; the equation above does not already say it
            lines.append("# " + py_comment(f"fused, in place: {formula}"))
        lines.append(f"{out} = {k.reuse.name}  # in place: {k.reuse.name} is not read again")
        for op, operand in steps:
            if op == "add" and operand.could_extract_minus_sign():
                op, operand = "subtract", -operand
            lines.append(template(op).format(o=out, r=printer.doprint(operand) if operand is not None else ""))
        return lines

    @lowers("contract")
    def lower_contract(self, k, out, args):
        form, out_batched = k.attrs
        a, b = k.args
        sa = ("n" if a.batched else "") + form.a
        sb = ("n" if b.batched else "") + form.b
        so = ("n" if out_batched else "") + form.out
        return [f"{out} = {contraction(sa, sb, so, args[0], args[1])}"]

    @lowers("reduce")
    def lower_reduce(self, k, out, args):
        kind, axes, keepdims, _ = k.attrs
        off = 1 if k.args[0].batched else 0
        ax = tuple(a + off for a in axes)
        axis = str(ax[0]) if len(ax) == 1 else str(ax)
        kd = ", keepdims=True" if keepdims else ""
        return [f"{out} = {args[0]}.{kind}(axis={axis}{kd})"]

    @lowers("sum_to")
    def lower_sum_to(self, k, out, args):
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
            return [f"{out} = ones @ {args[0]}"]
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

    @lowers("zeros")
    def lower_zeros(self, k, out, args):
        return [f"{out} = np.zeros({batched_shape(k.out)}, DTYPE)"]

    @lowers("onehot")
    def lower_onehot(self, k, out, args):
        (classes,) = k.attrs
        return [f"{out} = ({args[0]}[:, None] == np.arange({classes})).astype(DTYPE)"]

    @lowers("transpose")
    def lower_transpose(self, k, out, args):
        if k.args[0].batched:
            return [f"{out} = {args[0]}.swapaxes(-1, -2)"]
        return [f"{out} = {args[0]}.T"]

    @lowers("index")
    def lower_index(self, k, out, args):
        (i,) = k.attrs
        pre = ":, " if k.args[0].batched else ""
        return [f"{out} = {args[0]}[{pre}{i}]"]

    @lowers("embed")
    def lower_embed(self, k, out, args):
        shape, i = k.attrs
        pre = ":, " if k.out.batched else ""
        return [f"{out} = np.zeros({batched_shape(k.out)}, DTYPE)",
                f"{out}[{pre}{i}] = {args[0]}"]

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


def contraction(sa: str, sb: str, so: str, a: str, b: str) -> str:
    """NumPy for einsum(sa,sb->so): ``@`` with transposes when it is one GEMM, else einsum."""
    form = gemm_form(sa, sb, so)
    if form is None:
        return f"np.einsum('{sa},{sb}->{so}', {a}, {b})"
    left, right = (a, b) if form.left == 0 else (b, a)
    if form.outer:
        return f"np.outer({left}, {right})"
    t = ".swapaxes(-1, -2)" if form.batched else ".T"
    return f"{left}{t if form.trans_left else ''} @ {right}{t if form.trans_right else ''}"


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
FOLDABLE = ("map", "reshape", "index", "transpose", "reduce", "sum_to")
FOLD_WIDTH = 40   # the longest expression folded into another line


def reads(k: Kernel) -> dict:
    """How many times the printed lines of ``k`` read each value, by name."""
    counts: dict = {}
    if k.op == "map":
        temps, expr = k.attrs
        for e in [expr, *(e for _, e in temps)]:
            for sym in sp.preorder_traversal(e):
                if isinstance(sym, sp.Symbol):
                    counts[sym.name] = counts.get(sym.name, 0) + 1
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


def fold_plan(kernels, returns: str) -> dict:
    """Kernel index -> index of the kernel whose line takes in its value: each
    temporary (``t7``) of a foldable kernel that exactly one later line reads,
    once, in the same phase, into memory that no kernel on the way overwrites.
    The same operations run, in the same number of NumPy calls; a line fewer."""
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
        for j, c in plan.items():
            if c == i:
                read_by[i] |= read_by[j]
        nm = k.out.name
        if (k.op not in FOLDABLE or not names.TEMP_NAME.match(nm) or nm in returned
                or written[nm] != 1 or len(uses.get(nm, ())) != 1 or uses[nm][0][1] != 1):
            continue
        c = uses[nm][0][0]
        consumer = kernels[c]
        if c <= i or consumer.phase != k.phase or (consumer.reuse is not None and consumer.reuse.name == nm) \
                or (consumer.op == "scatter_add" and consumer.inplace and consumer.args[0].name == nm):
            continue
        if any(writes_in_place(kernels[j]) & read_by[i] for j in range(i + 1, c + 1)):
            continue
        if k.op == "map" and k.reuse is not None and writes_in_place(k):
            continue
        plan[i] = c
    return plan


def function_parts(name, program: Program, printer: NumpyPrinter, all_inputs, doc, returns):
    blocks = []
    phase = None
    kernels = program.kernels
    plan = fold_plan(kernels, returns)
    printer.folded = {}
    moved: dict = {}   # kernel index -> notes of the folded kernels it takes in
    for i, k in enumerate(kernels):
        notes = moved.pop(i, []) + list(k.notes)
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
    body = "\n".join(line for b in blocks for line in b["lines"]) + "\n" + returns
    used_inputs = {v.name for v in program.inputs}
    prologue = [f"{p.name} = params[{py_str(p.name)}]" for p in program.params]
    for v in program.inputs:
        prologue.append(f"{v.name} = np.asarray({v.name}{', DTYPE' if v.dtype == 'float' else ''})")
    if re.search(r"\b(N|rows|ones)\b", body):
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
        prologue.append("rows = np.arange(N)")
    if re.search(r"\bones\b", body):
        prologue.append("ones = np.ones(N, DTYPE)")
    inputs = ", ".join(nm if nm in used_inputs else f"{nm}=None" for nm in all_inputs)
    return {"name": Code(name), "signature": Code(_signature("params", "*", inputs, "check=True")),
            "check": Code(f"_check({py_str(name)}, params, {_inputs_dict(all_inputs)})"),
            "doc": doc, "prologue": [Code(line) for line in prologue],
            "blocks": blocks, "returns": Code(returns)}


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
    namer = Namer(low)
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
                       f"float({vag.loss.name}), {grads}"),
    ]
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
        helpers=[Code(source.rstrip("\n")) for _, source in sorted(printer.helpers.items())],
    )
    return source


def np_dtype(dtype: str) -> str:
    """``float64`` -> ``float64`` (checked: the module writes ``np.<dtype>``)."""
    if dtype not in ("float64", "float32"):
        raise ValueError(f"unknown dtype {dtype!r}")
    return dtype
