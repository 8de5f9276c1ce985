"""Stage 5 (NumPy target): print programs as a standalone Python module.

The skeleton of the file is the Jinja2 template ``templates/numpy_module.py.j2``;
this printer turns each kernel into NumPy lines.  Elementwise math is printed by
a subclass of SymPy's NumPy printer; contractions become ``@`` with transposes
(BLAS GEMMs) wherever the subscripts allow, ``np.einsum`` otherwise.
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.precedence import PRECEDENCE

from .equations import print_add
from .ops import broadcast_shapes, gemm_form, sigmoid
from .program import Kernel, Program, Value


class ExprPrinter(NumPyPrinter):
    """SymPy -> NumPy source, with ``np.`` and our functions (sigmoid, relu, ...)."""

    def __init__(self, leaf_text: dict):
        super().__init__({"fully_qualified_modules": False, "inline": True,
                          "allow_unknown_functions": False})
        self.leaf_text = leaf_text

    def _module_format(self, fqn, register=True):
        if fqn.startswith("numpy."):
            return "np." + fqn[len("numpy."):]
        return super()._module_format(fqn, register)

    def _print_Symbol(self, e):
        return self.leaf_text.get(e.name, e.name)

    def _print_sigmoid(self, e):
        # 1/(1 + exp(-x)) written through tanh: exact, and no overflow for any x
        return f"(0.5 + 0.5*np.tanh(0.5*{self.parenthesize(e.args[0], PRECEDENCE['Mul'])}))"

    def _print_relu(self, e):
        return f"np.maximum({self._print(e.args[0])}, 0)"

    def _print_step(self, e):
        return f"({self._print(e.args[0])} > 0)"

    def _print_softplus(self, e):
        return f"np.logaddexp(0, {self._print(e.args[0])})"

    def _print_equal(self, e):
        return f"({self._print(e.args[0])} == {self._print(e.args[1])})"

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


# One elementwise step applied to the result in place; {o} is the result, {r} the
# other operand.
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
    "tanh": "np.tanh({o}, out={o})",
    "exp": "np.exp({o}, out={o})",
    "log": "np.log({o}, out={o})",
    "sin": "np.sin({o}, out={o})",
    "cos": "np.cos({o}, out={o})",
    "Abs": "np.abs({o}, out={o})",
    "relu": "np.maximum({o}, 0, out={o})",
    "softplus": "np.logaddexp(0, {o}, out={o})",
    "step": "np.greater({o}, 0, out={o})",
}
# sigmoid(x) = 0.5 + 0.5*tanh(0.5*x), step by step
SIGMOID_STEPS = [("mul", sp.Rational(1, 2)), ("tanh", None), ("mul", sp.Rational(1, 2)), ("add", sp.Rational(1, 2))]


def inplace_steps(expr, name: str):
    """``expr`` as a sequence of in-place steps on the one leaf called ``name``
    (which appears once): [(op, other operand)], innermost first.  None when some
    node on the way has no in-place form."""
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
        elif isinstance(node, sigmoid):
            steps.extend(reversed(SIGMOID_STEPS))
        elif node.func.__name__ in INPLACE and len(node.args) == 1:
            steps.append((node.func.__name__, None))
        else:
            return None
        node = inner
    return steps[::-1]


def batched_shape(v: Value) -> str:
    dims = (["N"] if v.batched else []) + [str(d) for d in v.shape]
    if len(dims) == 1:
        return f"({dims[0]},)"
    return "(" + ", ".join(dims) + ")"


def aligned(v: Value, rank: int) -> str:
    """``v`` indexed so it broadcasts against a batched value of the given rank."""
    if v.batched and v.rank < rank:
        return f"{v.name}[:, " + ", ".join(["None"] * (rank - v.rank)) + "]"
    return v.name


class NumpyPrinter:
    def __init__(self, dtype: str):
        self.dtype = dtype

    def kernel(self, k: Kernel) -> list:
        return getattr(self, "_" + k.op)(k, k.out.name, [a.name for a in k.args])

    # -- kernels -------------------------------------------------------------
    def _map(self, k, out, args):
        temps, expr = k.attrs
        leaf_text = {a.name: aligned(a, k.out.rank) for a in k.args}
        printer = ExprPrinter(leaf_text)
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
            lines.append(f"{out} = {printer.doprint(expr)}")
            return lines
        lines.append(f"{out} = {k.reuse.name}  # in place: {k.reuse.name} is not read again")
        for op, operand in steps:
            if op == "add" and operand.could_extract_minus_sign():
                op, operand = "subtract", -operand
            lines.append(INPLACE[op].format(o=out, r=printer.doprint(operand) if operand is not None else ""))
        return lines

    def _contract(self, k, out, args):
        form, out_batched = k.attrs
        a, b = k.args
        sa = ("n" if a.batched else "") + form.a
        sb = ("n" if b.batched else "") + form.b
        so = ("n" if out_batched else "") + form.out
        return [f"{out} = {contraction(sa, sb, so, args[0], args[1])}"]

    def _reduce(self, k, out, args):
        kind, axes, keepdims, _ = k.attrs
        off = 1 if k.args[0].batched else 0
        ax = tuple(a + off for a in axes)
        axis = str(ax[0]) if len(ax) == 1 else str(ax)
        kd = ", keepdims=True" if keepdims else ""
        return [f"{out} = {args[0]}.{kind}(axis={axis}{kd})"]

    def _sum_to(self, k, out, args):
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

    def _broadcast(self, k, out, args):
        x = k.args[0]
        if x.kind == "const":
            return [f"{out} = np.full({batched_shape(k.out)}, {ExprPrinter({}).doprint(x.literal)}, DTYPE)"]
        return [f"{out} = np.broadcast_to({aligned(x, k.out.rank)}, {batched_shape(k.out)})"]

    def _reshape(self, k, out, args):
        x = k.args[0]
        old, new = x.shape, k.out.shape
        pre = ":, " if x.batched else ""
        if tuple(d for d in new if d != 1) == tuple(d for d in old if d != 1):
            if len(new) > len(old) and new[:len(old)] == old:
                return [f"{out} = {args[0]}[{pre}" + ", ".join([":"] * len(old) + ["None"] * (len(new) - len(old))) + "]"]
            if len(new) < len(old) and old[:len(new)] == new:
                return [f"{out} = {args[0]}[{pre}" + ", ".join([":"] * len(new) + ["0"] * (len(old) - len(new))) + "]"]
        return [f"{out} = {args[0]}.reshape({batched_shape(k.out)})"]

    def _take(self, k, out, args):
        return [f"{out} = {args[0]}[rows, {args[1]}]"]

    def _scatter_add(self, k, out, args):
        base, label, value = args
        lines = [] if k.inplace else [f"{out} = np.array({base})"]
        lines.append(f"{out}[rows, {label}] += {aligned(k.args[2], 1)}")
        return lines

    def _zeros(self, k, out, args):
        return [f"{out} = np.zeros({batched_shape(k.out)}, DTYPE)"]

    def _onehot(self, k, out, args):
        (classes,) = k.attrs
        return [f"{out} = ({args[0]}[:, None] == np.arange({classes})).astype(DTYPE)"]

    def _transpose(self, k, out, args):
        if k.args[0].batched:
            return [f"{out} = {args[0]}.swapaxes(-1, -2)"]
        return [f"{out} = {args[0]}.T"]

    def _index(self, k, out, args):
        (i,) = k.attrs
        pre = ":, " if k.args[0].batched else ""
        return [f"{out} = {args[0]}[{pre}{i}]"]

    def _embed(self, k, out, args):
        shape, i = k.attrs
        pre = ":, " if k.out.batched else ""
        return [f"{out} = np.zeros({batched_shape(k.out)}, DTYPE)",
                f"{out}[{pre}{i}] = {args[0]}"]

    def _copy(self, k, out, args):
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


def _shape_text(shape) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else "(" + ", ".join(str(d) for d in shape) + ")"


def _fans(shape):
    if len(shape) >= 2:
        receptive = 1
        for d in shape[2:]:
            receptive *= d
        return shape[1] * receptive, shape[0] * receptive
    n = shape[0] if shape else 1
    return n, n


def init_line(p) -> str:
    """One line creating param ``p`` per its init rule."""
    import math
    shape = _shape_text(p.shape)
    kind = p.init[0]
    target = f"params[{p.name!r}]"
    if kind == "zeros":
        return f"{target} = np.zeros({shape}, DTYPE)"
    if kind == "ones":
        return f"{target} = np.ones({shape}, DTYPE)"
    if kind == "constant":
        return f"{target} = np.full({shape}, {p.init[1]!r}, DTYPE)"
    if kind == "normal":
        return f"{target} = rng.normal(0.0, {p.init[1]!r}, {shape}).astype(DTYPE)"
    if kind == "uniform":
        return f"{target} = rng.uniform(-{p.init[1]!r}, {p.init[1]!r}, {shape}).astype(DTYPE)"
    fan_in, fan_out = _fans(p.shape)
    if kind == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return f"{target} = rng.uniform(-{limit!r}, {limit!r}, {shape}).astype(DTYPE)  # glorot"
    std = math.sqrt(2.0 / fan_in)
    return f"{target} = rng.normal(0.0, {std!r}, {shape}).astype(DTYPE)  # he"


def function_parts(name, program: Program, printer: NumpyPrinter, all_inputs, doc, returns):
    blocks = []
    phase = None
    for k in program.kernels:
        header = None
        if k.phase != phase:
            phase = k.phase
            header = "forward pass" if phase == "forward" else \
                "backward pass: adjoints in reverse topological order (x_bar = dL/dx)"
        blocks.append({"header": header, "notes": k.notes, "lines": printer.kernel(k)})
    body = "\n".join(line for b in blocks for line in b["lines"]) + "\n" + returns
    used_inputs = {v.name for v in program.inputs}
    prologue = [f"{p.name} = params[{p.name!r}]" for p in program.params]
    for v in program.inputs:
        prologue.append(f"{v.name} = np.asarray({v.name}{', DTYPE' if v.dtype == 'float' else ''})")
    if re.search(r"\b(N|rows|ones)\b", body):
        # the batch size comes from an input, read for its shape if for nothing else
        first = program.inputs[0].name if program.inputs else (all_inputs[0] if all_inputs else None)
        if first is not None and first not in used_inputs:
            used_inputs.add(first)
            prologue.append(f"N = np.shape({first})[0]")
        else:
            prologue.append(f"N = {first}.shape[0]" if first else "N = 1")
    if re.search(r"\brows\b", body):
        prologue.append("rows = np.arange(N)")
    if re.search(r"\bones\b", body):
        prologue.append("ones = np.ones(N, DTYPE)")
    signature = ", ".join(nm if nm in used_inputs else f"{nm}=None" for nm in all_inputs)
    return {"name": name, "signature": signature, "doc": doc, "prologue": prologue,
            "blocks": blocks, "returns": returns}


def render(low, adj, programs, version: str) -> str:
    """The generated module's source."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    from .equations import Namer, docstring_lines
    spec = low.spec
    printer = NumpyPrinter(spec.dtype)
    namer = Namer(low)
    all_inputs = list(spec.inputs)
    pred, lossp, vag = programs["predict"], programs["loss"], programs["value_and_grad"]
    grads = "{" + ", ".join(f"{nm!r}: {v.name}" for nm, v in vag.grads.items()) + "}"
    functions = [
        function_parts("predict", pred, printer, all_inputs,
                       f"The output node {namer.name(low.output) or 'of the graph'}, for a batch.",
                       pred.output.name),
        function_parts("loss", lossp, printer, all_inputs,
                       f"L: the {spec.reduction} over the batch of the per-example loss.",
                       f"float({lossp.loss.name})"),
        function_parts("value_and_grad", vag, printer, all_inputs,
                       "(L, {name: dL/d(name) for name in WRT}): forward pass, then reverse mode.",
                       f"float({vag.loss.name}), {grads}"),
    ]
    vag_inputs = {v.name for v in vag.inputs}
    forward_lines, adjoint_lines = docstring_lines(low, adj, namer)

    env = Environment(loader=PackageLoader("bpcompile", "templates"), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=False)
    env.filters["pyrepr"] = repr
    text = spec.text.strip("\n").replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if not text.endswith("\n"):
        text += "\n"
    classes = {nm: d.classes for nm, d in spec.inputs.items() if d.is_label}
    source = env.get_template("numpy_module.py.j2").render(
        name=spec.name, version=version, spec_file=spec.file, spec_text=text,
        reduction=spec.reduction,
        forward_equations=forward_lines, adjoint_equations=adjoint_lines,
        dtype=spec.dtype,
        param_shapes="{" + ", ".join(f"{p!r}: {d.shape!r}" for p, d in spec.params.items()) + "}",
        input_shapes="{" + ", ".join(f"{i!r}: {d.shape!r}" for i, d in spec.inputs.items()) + "}",
        label_classes="{" + ", ".join(f"{k!r}: {v}" for k, v in classes.items()) + "}",
        wrt=repr(tuple(spec.wrt)),
        init_summary=", ".join(f"{p.name} {p.init[0]}" for p in spec.params.values()) or "none",
        init_lines=[init_line(p) for p in spec.params.values()],
        functions=functions,
        all_inputs=", ".join(nm if nm in vag_inputs else f"{nm}=None" for nm in all_inputs),
        pass_inputs=", ".join(f"{nm}={nm}" for nm in all_inputs),
        trained=tuple(nm for nm in spec.wrt if nm in spec.params),
    )
    return source
