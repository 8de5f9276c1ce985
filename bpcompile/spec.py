"""Stage 1: read a model spec (YAML or JSON) and check it.

Expressions are parsed by Python's ``ast`` and checked against a whitelist of
node types; nothing from the spec is ever evaluated.  Every error names the file,
the key (``graph.e``, ``params.W.init``) and, where YAML gives one, the line.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import names
from .errors import SpecError
from .ops import FUNCTIONS

TOP_KEYS = ("name", "inputs", "params", "layers", "graph", "loss", "output", "wrt",
            "reduction", "dtype", "description")
REQUIRED_KEYS = ("name", "inputs", "loss")
DTYPES = ("float64", "float32")
REDUCTIONS = ("mean", "sum")
INITS = {"zeros": 0, "ones": 0, "glorot": 0, "he": 0, "constant": 1, "normal": 1, "uniform": 1}
ACTIVATIONS = ("tanh", "sigmoid", "relu", "softplus", "exp", "sin", "cos", "square",
               "linear")


@dataclass(frozen=True)
class InputDecl:
    name: str
    shape: tuple
    classes: int | None = None   # an integer class label in [0, classes)

    @property
    def is_label(self) -> bool:
        return self.classes is not None


@dataclass(frozen=True)
class ParamDecl:
    name: str
    shape: tuple
    init: tuple   # ("glorot",), ("constant", 0.5), ...


@dataclass(frozen=True)
class Expr:
    """One expression of the spec: its text, parsed tree and where it came from."""
    text: str
    tree: ast.expr
    key: str
    line: int | None


@dataclass
class Spec:
    name: str
    inputs: dict           # name -> InputDecl, in spec order
    params: dict           # name -> ParamDecl, in spec order
    graph: list            # [(node name, Expr)], in spec order
    loss: Expr
    output: str | None
    wrt: tuple
    reduction: str
    dtype: str
    file: str
    text: str              # the spec as written (goes into the module docstring)
    lines: dict = field(default_factory=dict, repr=False)

    def error(self, message: str, key: str | None = None) -> SpecError:
        return SpecError(message, key=key, line=self.lines.get(key), file=self.file)


# ---------------------------------------------------------------------------
# YAML with line numbers and duplicate-key detection


def _walk_lines(node, path, lines, file):
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            sub = f"{path}.{key}" if path else key
            if key in seen:
                raise SpecError(f"duplicate key '{key}'", key=sub,
                                line=key_node.start_mark.line + 1, file=file)
            seen.add(key)
            lines[sub] = key_node.start_mark.line + 1
            _walk_lines(value_node, sub, lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            lines[sub] = item.start_mark.line + 1
            _walk_lines(item, sub, lines, file)


def _read_yaml(text: str, file: str):
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        lines: dict = {}
        if root is not None:
            _walk_lines(root, "", lines, file)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join((e.problem or e.context or "syntax error").split())
        raise SpecError(f"YAML syntax error: {problem}", line=line, file=file) from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecError(f"YAML error: {first}", file=file) from None
    return data, lines


def load_spec(path) -> Spec:
    """Read and check a spec file (YAML or JSON)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("no such file", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read the file: {e}", file=str(path)) from None
    return parse_spec(text, file=str(path))


def parse_spec(source, file: str = "<spec>") -> Spec:
    """Check a spec given as YAML/JSON text or as an already-loaded dict."""
    if isinstance(source, Spec):
        return source
    if isinstance(source, str):
        if not source.strip():
            raise SpecError("the spec is empty", file=file)
        data, lines = _read_yaml(source, file)
        text = source
    elif isinstance(source, dict):
        data, lines = source, {}
        text = yaml.safe_dump(source, sort_keys=False, default_flow_style=None)
    else:
        raise SpecError(f"a spec is YAML text or a dict, not {type(source).__name__}", file=file)
    if data is None:
        raise SpecError("the spec is empty", file=file)
    if not isinstance(data, dict):
        raise SpecError("the spec must be a mapping of keys (name, inputs, params, graph, loss, ...)",
                        file=file, line=1)
    return _Checker(data, lines, file, text).spec()


# ---------------------------------------------------------------------------


class _Checker:
    def __init__(self, data, lines, file, text):
        self.data = data
        self.lines = lines
        self.file = file
        self.text = text

    def err(self, message, key=None):
        return SpecError(message, key=key, line=self.lines.get(key), file=self.file)

    def spec(self) -> Spec:
        d = self.data
        for key in d:
            if key not in TOP_KEYS:
                hint = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else f" (known keys: {', '.join(TOP_KEYS)})"
                raise self.err(f"unknown key '{key}'{extra}", str(key))
        for key in REQUIRED_KEYS:
            if key not in d:
                raise self.err(f"missing required key '{key}'", key)
        name = d["name"]
        if not isinstance(name, str) or not names.IDENTIFIER.match(name) or name.startswith("_"):
            raise self.err(f"name must be an identifier (letters, digits, _), got {name!r}", "name")
        reason = names.keyword_reason(name)
        if reason:
            raise self.err(f"name '{name}' {reason}", "name")

        self.declared: dict[str, str] = {}
        inputs = self.inputs(d["inputs"])
        params = self.params(d.get("params") or {})
        graph = []
        if "layers" in d:
            graph += self.layers(d["layers"], inputs, params)
        graph += self.graph(d.get("graph") or {})
        loss = self.expr(d["loss"], "loss")

        output = d.get("output")
        if output is not None:
            if not isinstance(output, str) or output not in self.declared:
                raise self.err(f"output '{output}' is not a graph node, input or param", "output")
            if self.declared[output] == "label":
                raise self.err(f"output '{output}' is an integer label", "output")

        wrt = self.wrt(d.get("wrt"), inputs, params)
        reduction = d.get("reduction", "mean")
        if reduction not in REDUCTIONS:
            raise self.err(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}",
                           "reduction")
        dtype = d.get("dtype", "float64")
        if dtype not in DTYPES:
            raise self.err(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", "dtype")
        return Spec(name=name, inputs=inputs, params=params, graph=graph, loss=loss,
                    output=output, wrt=wrt, reduction=reduction, dtype=dtype,
                    file=self.file, text=self.text, lines=self.lines)

    # -- names ---------------------------------------------------------------
    def declare(self, name, kind, key):
        if not isinstance(name, str):
            raise self.err(f"{name!r} is not a valid name", key)
        reason = names.reserved_reason(name, FUNCTIONS)
        if reason:
            raise self.err(f"the name '{name}' {reason}", key)
        if name in self.declared:
            raise self.err(f"'{name}' is already defined as {'an' if self.declared[name] == 'input' else 'a'} "
                           f"{self.declared[name]}", key)
        self.declared[name] = kind

    # -- sections ------------------------------------------------------------
    def shape(self, value, key):
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise self.err(f"a shape is a list of positive integers like [3] or [] (a scalar), got {value!r}",
                           key)
        if len(value) > 4:
            raise self.err("shapes have at most 4 axes", key)
        return tuple(value)

    def inputs(self, section):
        if not isinstance(section, dict) or not section:
            raise self.err("inputs must map each input name to a shape or {classes: K}", "inputs")
        out = {}
        for nm, v in section.items():
            key = f"inputs.{nm}"
            if isinstance(v, dict):
                if set(v) != {"classes"}:
                    raise self.err("an input is a shape list or {classes: K}", key)
                k = v["classes"]
                if not isinstance(k, int) or isinstance(k, bool) or k < 2:
                    raise self.err(f"classes must be an integer >= 2, got {k!r}", key)
                self.declare(nm, "label", key)
                out[nm] = InputDecl(nm, (), k)
            else:
                shape = self.shape(v, key)
                self.declare(nm, "input", key)
                out[nm] = InputDecl(nm, shape)
        return out

    def params(self, section):
        if not isinstance(section, dict):
            raise self.err("params must map each param name to a shape or {shape: [...], init: ...}", "params")
        out = {}
        for nm, v in section.items():
            key = f"params.{nm}"
            init = None
            if isinstance(v, dict):
                unknown = set(v) - {"shape", "init"}
                if unknown or "shape" not in v:
                    raise self.err("a param is a shape list or {shape: [...], init: ...}", key)
                shape = self.shape(v["shape"], f"{key}.shape")
                if "init" in v:
                    init = self.init(v["init"], f"{key}.init")
            else:
                shape = self.shape(v, key)
            if init is None:
                init = ("glorot",) if len(shape) >= 2 else ("zeros",)
            self.declare(nm, "param", key)
            out[nm] = ParamDecl(nm, shape, init)
        return out

    def init(self, value, key):
        text = str(value).strip()
        m = re.fullmatch(r"([a-z]+)\s*(?:\(\s*([-+0-9.eE]+)\s*\))?", text)
        if not m or m.group(1) not in INITS:
            raise self.err(f"unknown init {text!r}; use one of zeros, ones, constant(c), normal(std), "
                           "uniform(limit), glorot, he", key)
        kind, arg = m.group(1), m.group(2)
        if INITS[kind] == 1:
            if arg is None:
                raise self.err(f"init {kind} needs a number, e.g. {kind}(0.1)", key)
            try:
                number = float(arg)
            except ValueError:
                raise self.err(f"init {kind}: {arg!r} is not a number", key) from None
            if kind in ("normal", "uniform") and number < 0:
                raise self.err(f"init {kind} needs a non-negative number", key)
            return (kind, number)
        if arg is not None:
            raise self.err(f"init {kind} takes no argument", key)
        return (kind,)

    def graph(self, section):
        if not isinstance(section, dict):
            raise self.err("graph must map node names to expressions, in order", "graph")
        out = []
        for nm, text in section.items():
            key = f"graph.{nm}"
            self.declare(nm, "node", key)
            out.append((nm, self.expr(text, key)))
        return out

    def layers(self, section, inputs, params):
        """The dense-stack shorthand: W{i} @ h{i-1} + b{i}, then the activation."""
        if not isinstance(section, list) or not section:
            raise self.err("layers is a list like [{dense: 128, activation: tanh}, {dense: 10}]", "layers")
        items = list(section)
        source = None
        if isinstance(items[0], dict) and set(items[0]) == {"input"}:
            source = items.pop(0)["input"]
            if source not in inputs or inputs[source].is_label:
                raise self.err(f"layers input '{source}' is not a float input", "layers[0]")
        else:
            floats = [nm for nm, d in inputs.items() if not d.is_label]
            if len(floats) != 1:
                raise self.err("more than one float input; start the list with {input: NAME}",
                               "layers")
            source = floats[0]
        if len(inputs[source].shape) != 1:
            raise self.err(f"layers input '{source}' must be a vector, has shape {list(inputs[source].shape)}",
                           "layers")
        width = inputs[source].shape[0]
        h = source
        out = []
        for i, item in enumerate(items, start=1):
            key = f"layers[{i - 1 + (len(section) - len(items))}]"
            if not isinstance(item, dict) or "dense" not in item or set(item) - {"dense", "activation", "init"}:
                raise self.err("a layer is {dense: UNITS, activation: NAME}", key)
            units = item["dense"]
            if not isinstance(units, int) or isinstance(units, bool) or units < 1:
                raise self.err(f"dense needs a positive number of units, got {units!r}", key)
            act = item.get("activation", "linear")
            if act not in ACTIVATIONS:
                raise self.err(f"unknown activation {act!r}; use one of {', '.join(ACTIVATIONS)}", key)
            W, b, z = f"W{i}", f"b{i}", f"z{i}"
            winit = self.init(item["init"], f"{key}.init") if "init" in item else ("glorot",)
            for nm, shape, init in ((W, (units, width), winit), (b, (units,), ("zeros",))):
                self.declare(nm, "param", key)
                params[nm] = ParamDecl(nm, shape, init)
            self.declare(z, "node", key)
            out.append((z, self.expr(f"{W} @ {h} + {b}", key)))
            h = z
            if act != "linear":
                hn = f"h{i}"
                self.declare(hn, "node", key)
                out.append((hn, self.expr(f"{act}({z})", key)))
                h = hn
            width = units
        return out

    def wrt(self, value, inputs, params):
        if value is None:
            if not params:
                raise self.err("the spec has no params; say what to differentiate with wrt: [input names]", "wrt")
            return tuple(params)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.err("wrt is a list of param or input names", "wrt")
        for nm in value:
            if nm in params:
                continue
            if nm in inputs:
                if inputs[nm].is_label:
                    raise self.err(f"cannot differentiate with respect to '{nm}': it is an integer class label",
                                   "wrt")
                continue
            raise self.err(f"wrt names '{nm}', which is not a param or input", "wrt")
        if len(set(value)) != len(value):
            raise self.err("wrt names something twice", "wrt")
        return tuple(value)

    # -- expressions ---------------------------------------------------------
    def expr(self, text, key) -> Expr:
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise self.err(f"expected an expression, got {text!r}", key)
        text = str(text).strip()
        if not text:
            raise self.err("empty expression", key)
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as e:
            raise self.err(f"syntax error in {text!r} at column {e.offset or 0}: {e.msg}", key) from None
        check_expression(tree.body, text, lambda m: self.err(m, key))
        return Expr(text, tree.body, key, self.lines.get(key))


# The whitelist.  Anything not listed is refused.
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.MatMult)
_UNARY = (ast.USub, ast.UAdd)


def check_expression(node, text, err):
    """Refuse every ``ast`` node outside the spec language."""
    def seg():
        return ast.get_source_segment(text, node) or text

    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise err(f"only numbers are allowed as constants, got {node.value!r}")
        return
    if isinstance(node, ast.Name):
        return
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, _BINOPS):
            raise err(f"operator not allowed in {seg()!r} (allowed: + - * / ** @)")
        check_expression(node.left, text, err)
        check_expression(node.right, text, err)
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, _UNARY):
            raise err(f"operator not allowed in {seg()!r}")
        check_expression(node.operand, text, err)
        return
    if isinstance(node, ast.Attribute):
        if node.attr != "T":
            raise err(f"attribute '.{node.attr}' not allowed in {seg()!r}; only .T (transpose) is")
        check_expression(node.value, text, err)
        return
    if isinstance(node, ast.Subscript):
        index = node.slice
        if isinstance(index, ast.UnaryOp) and isinstance(index.op, ast.USub) and \
                isinstance(index.operand, ast.Constant):
            ok = isinstance(index.operand.value, int) and not isinstance(index.operand.value, bool)
        else:
            ok = isinstance(index, ast.Constant) and isinstance(index.value, int) and \
                not isinstance(index.value, bool)
        if not ok:
            raise err(f"indexing must use one integer constant, as in v[0]: {seg()!r}")
        check_expression(node.value, text, err)
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise err(f"only the functions of the spec language can be called: {seg()!r}")
        if node.func.id not in FUNCTIONS:
            hint = difflib.get_close_matches(node.func.id, FUNCTIONS, n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else ""
            raise err(f"unknown function '{node.func.id}'{extra}")
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise err(f"*args not allowed in {seg()!r}")
            check_expression(a, text, err)
        for kw in node.keywords:
            if kw.arg != "axis":
                raise err(f"only the keyword axis= is allowed, in {seg()!r}")
            v = kw.value
            neg = isinstance(v, ast.UnaryOp) and isinstance(v.op, ast.USub)
            c = v.operand if neg else v
            if not (isinstance(c, ast.Constant) and isinstance(c.value, int) and not isinstance(c.value, bool)):
                raise err(f"axis must be an integer constant, in {seg()!r}")
        return
    raise err(f"{type(node).__name__} is not allowed in an expression: {seg()!r}")
