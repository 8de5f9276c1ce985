"""Stage 1: read a model spec (YAML or JSON) and check it.

Expressions are parsed by Python's ``ast`` and checked against a whitelist of
node types; nothing from the spec is ever evaluated.  Every error names the file,
the key (``graph.e``, ``params.W.init``) and, where YAML gives one, the line.
"""

from __future__ import annotations

import ast
import difflib
import io
import math
import re
import reprlib
import tokenize
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import limits
from .. import names
from ..errors import SpecError
from ..escape import char_name, forbidden_char
from ..ops import ELEMENTWISE, FUNCTIONS
from ..ops.functions import INT, PADDING, PADDING_STRINGS, SHAPE, SPEC_FUNCTIONS

TOP_KEYS = ("name", "inputs", "params", "layers", "graph", "loss", "output", "wrt",
            "reduction", "dtype", "description")
REQUIRED_KEYS = ("name", "inputs", "loss")
DTYPES = ("float64", "float32")
REDUCTIONS = ("mean", "sum")
INITS = {"zeros": 0, "ones": 0, "glorot": 0, "he": 0, "constant": 1, "normal": 1, "uniform": 1}
# the layers: shorthand's activations: the elementwise ops declared as such, and none
ACTIVATIONS = tuple(nm for nm, op in ELEMENTWISE.items() if op.activation) + ("linear",)


@dataclass(frozen=True)
class InputDecl:
    """An input: floats of ``shape`` per example; or, with ``classes``, integers in
    [0, classes): one class label (shape ``()``, ``{classes: K}``) or T tokens
    (shape ``(T,)``, ``{classes: V, shape: [T]}``)."""
    name: str
    shape: tuple
    classes: int | None = None

    @property
    def is_label(self) -> bool:
        """An integer input: a class label, or tokens (``is_tokens``).  Everything that
        holds for labels (int32 arrays, checked in range, never differentiated, never
        a float operand) holds for tokens too."""
        return self.classes is not None

    @property
    def is_tokens(self) -> bool:
        """Integer tokens, T per example (``{classes: V, shape: [T]}``)."""
        return self.classes is not None and self.shape != ()


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
    data: dict = field(default_factory=dict, repr=False)   # the spec as parsed (YAML's mapping)

    def error(self, message: str, key: str | None = None) -> SpecError:
        return SpecError(message, key=key, line=self.lines.get(key), file=self.file)


# ---------------------------------------------------------------------------
# Quoting spec values in messages: one line, and short whatever the value is


class _ShortRepr(reprlib.Repr):
    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict, self.maxtuple, self.maxset = 3, 6, 6, 6, 6
        self.maxstring, self.maxother, self.maxlong = 80, 80, 40

    def repr_int(self, x, level):
        if x.bit_length() > 128:   # decimal conversion of a huge int is slow, or refused
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_short = _ShortRepr()


def show(value) -> str:
    """``value`` quoted for a one-line message: ``repr`` (so escapes, never a newline), bounded."""
    try:
        return _short.repr(value)
    except Exception:   # a value whose repr fails (a dict spec may hold anything)
        return f"<a {type(value).__name__}>"


def _limit(name: str, what: str) -> str:
    return f"{what} exceeds the limit {name} = {getattr(limits, name)}"


# ---------------------------------------------------------------------------
# Characters: no control, format or separator characters anywhere in a spec


_PLAIN = re.compile(r"[\t\n\x20-\x7e]*\Z")   # printable ASCII, newline, tab: nothing to refuse


def _forbidden(text: str):
    """``escape.forbidden_char``, with a fast path for plain ASCII text."""
    return None if _PLAIN.match(text) else forbidden_char(text)


def _forbidden_message(ch: str, how: str = "") -> str:
    return (f"the spec contains {char_name(ch)}{how}; control, format and separator "
            "characters are not allowed in a spec (only newline and tab)")


def _check_text(text: str, file: str) -> str:
    """The spec text with CRLF line ends made LF, after refusing anything a spec may not hold."""
    text = text.replace("\r\n", "\n")
    found = _forbidden(text)
    if found:
        i, ch = found
        line = text.count("\n", 0, i) + 1
        column = i - (text.rfind("\n", 0, i) + 1) + 1
        raise SpecError(_forbidden_message(ch, f" at column {column}"), line=line, file=file)
    return text


def _check_string(value: str, key, line, file):
    found = _forbidden(value)
    if found:
        raise SpecError(_forbidden_message(found[1], " (in a string)"), key=key or None, line=line,
                        file=file)


def _check_data(data, file: str):
    """Check a spec given as Python data: every string key and value, bounded work."""
    stack = [(data, "", 0)]
    count = 0
    while stack:
        value, path, depth = stack.pop()
        count += 1
        if count > limits.MAX_YAML_NODES:
            raise SpecError(_limit("MAX_YAML_NODES", "the spec's number of values"), file=file)
        if depth > limits.MAX_YAML_DEPTH:
            raise SpecError(_limit("MAX_YAML_DEPTH", "the spec's nesting"), key=path or None, file=file)
        if isinstance(value, str):
            _check_string(value, path, None, file)
        elif isinstance(value, (dict, list, tuple)):
            # a list or dict met twice is walked twice (the count bounds a shared-object bomb,
            # the depth a list inside itself)
            if isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(k, str):
                        _check_string(k, path, None, file)
                    sub = f"{path}.{k}" if path else str(k)
                    stack.append((v, sub, depth + 1))
            else:
                for i, v in enumerate(value):
                    stack.append((v, f"{path}[{i}]", depth + 1))


# ---------------------------------------------------------------------------
# YAML: composed once, with bounded work; line numbers and duplicate keys


try:   # libyaml's event parser when PyYAML has it (several times faster); composed in Python
    from yaml._yaml import CParser as _EventParser
except ImportError:   # pragma: no cover - PyYAML built without libyaml
    _EventParser = None

if _EventParser is not None:
    class _SafeLoader(yaml.composer.Composer, _EventParser, yaml.constructor.SafeConstructor,
                      yaml.resolver.Resolver):
        """``yaml.CSafeLoader``, but composing with PyYAML's (overridable) Python composer."""

        def __init__(self, stream):
            _EventParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            yaml.composer.Composer.__init__(self)
else:   # pragma: no cover
    _SafeLoader = yaml.SafeLoader


class _SpecLoader(_SafeLoader):
    """PyYAML's safe loader, counting while it composes.

    ``expanded`` counts the nodes the document would have with every alias
    expanded (an alias adds the size of the subtree it names), so an alias bomb
    is refused after composing a few lines, long before anything is expanded.
    """

    def __init__(self, text, file):
        super().__init__(text)
        self.file = file
        self.aliases = 0
        self.expanded = 0
        self.depth = 0
        self.sizes = {}   # id(node) -> its expanded size, once composed

    def _refuse(self, name, what, event):
        line = event.start_mark.line + 1 if event is not None and event.start_mark else None
        raise SpecError(_limit(name, what), line=line, file=self.file)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > limits.MAX_YAML_ALIASES:
                self._refuse("MAX_YAML_ALIASES", "the number of YAML aliases (*name)", event)
            node = super().compose_node(parent, index)
            size = self.sizes.get(id(node))
            if size is None:
                raise SpecError(f"the YAML alias *{event.anchor} refers to a node that contains it",
                                line=event.start_mark.line + 1, file=self.file)
            self.expanded += size
            if self.expanded > limits.MAX_YAML_NODES:
                self._refuse("MAX_YAML_NODES", "the number of YAML nodes (aliases expanded)", event)
            return node
        self.depth += 1
        if self.depth > limits.MAX_YAML_DEPTH:
            self._refuse("MAX_YAML_DEPTH", "the nesting of YAML lists and mappings", event)
        before = self.expanded
        self.expanded += 1
        if self.expanded > limits.MAX_YAML_NODES:
            self._refuse("MAX_YAML_NODES", "the number of YAML nodes (aliases expanded)", event)
        node = super().compose_node(parent, index)
        self.sizes[id(node)] = self.expanded - before
        self.depth -= 1
        return node


def _walk_lines(root, lines, file):
    """Line numbers of every key, duplicate keys, and the characters of every string.

    Each node is visited once: a subtree reached again through an alias is not
    walked again (its keys keep the line numbers of the anchored copy's path).
    """
    seen = set()
    stack = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            _check_string(node.value, path, node.start_mark.line + 1, file)
        elif isinstance(node, yaml.MappingNode):
            keys = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = key_node.value
                    _check_string(key, path, key_node.start_mark.line + 1, file)
                else:
                    key = f"<a {key_node.id}>"
                sub = f"{path}.{key}" if path else key
                if key in keys:
                    raise SpecError(f"duplicate key {show(key)}", key=sub,
                                    line=key_node.start_mark.line + 1, file=file)
                keys.add(key)
                lines.setdefault(sub, key_node.start_mark.line + 1)
                stack.append((value_node, sub))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                lines.setdefault(sub, item.start_mark.line + 1)
                stack.append((item, sub))


def _read_yaml(text: str, file: str):
    """Parse YAML (or JSON) once: compose with counting, walk for lines, construct."""
    loader = _SpecLoader(text, file)
    lines: dict = {}
    try:
        root = loader.get_single_node()
        if root is None:
            return None, lines
        _walk_lines(root, lines, file)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join((e.problem or e.context or "syntax error").split())
        if "nesting depth" in problem:   # PyYAML >= 6.0.4 has a nesting limit of its own
            raise SpecError(_limit("MAX_YAML_DEPTH", "the nesting of YAML lists and mappings"),
                            line=line, file=file) from None
        raise SpecError(f"YAML syntax error: {problem}", line=line, file=file) from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecError(f"YAML error: {first}", file=file) from None
    except ValueError as e:   # an integer with more digits than Python converts
        first = " ".join(str(e).split())[:200]
        raise SpecError(f"YAML error: a value cannot be read: {first}", file=file) from None
    except RecursionError:
        raise SpecError(_limit("MAX_YAML_DEPTH", "the nesting of YAML lists and mappings"),
                        file=file) from None
    finally:
        loader.dispose()
    return data, lines


def _size_error(size: int, file: str) -> SpecError:
    return SpecError(_limit("MAX_SPEC_BYTES", f"the spec's size ({size} bytes or more)"), file=file)


def load_spec(path) -> Spec:
    """Read and check a spec file (YAML or JSON)."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > limits.MAX_SPEC_BYTES:
            raise _size_error(path.stat().st_size, str(path))
        with open(path, "rb") as f:
            raw = f.read(limits.MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError("no such file", file=str(path)) from None
    except OSError as e:
        raise SpecError(f"cannot read the file: {e.strerror or type(e).__name__}", file=str(path)) from None
    if len(raw) > limits.MAX_SPEC_BYTES:
        raise _size_error(len(raw), str(path))
    try:
        text = raw.decode("utf-8-sig")   # a byte-order mark at the start is allowed, and dropped
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SpecError(f"the file is not UTF-8 text (byte 0x{raw[e.start]:02x})", line=line,
                        file=str(path)) from None
    return parse_spec(text, file=str(path))


def parse_spec(source, file: str = "<spec>") -> Spec:
    """Check a spec given as YAML/JSON text or as an already-loaded dict."""
    if isinstance(source, Spec):
        return source
    if isinstance(source, str):
        if len(source) > limits.MAX_SPEC_BYTES or len(source.encode("utf-8", "surrogatepass")) > \
                limits.MAX_SPEC_BYTES:
            raise _size_error(len(source), file)
        if not source.strip():
            raise SpecError("the spec is empty", file=file)
        text = _check_text(source, file)
        data, lines = _read_yaml(text, file)
    elif isinstance(source, dict):
        _check_data(source, file)
        _check_entries(source, file, {})
        data, lines = source, {}
        try:
            text = yaml.safe_dump(source, sort_keys=False, default_flow_style=None)
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            raise SpecError(f"the spec holds a value that is not YAML data: {show(str(e))}",
                            file=file) from None
        if len(text) > limits.MAX_SPEC_BYTES:
            raise _size_error(len(text), file)
    else:
        raise SpecError(f"a spec is YAML text or a dict, not {type(source).__name__}", file=file)
    if data is None:
        raise SpecError("the spec is empty", file=file)
    if not isinstance(data, dict):
        raise SpecError("the spec must be a mapping of keys (name, inputs, params, graph, loss, ...)",
                        file=file, line=1)
    return _Document(data, lines, file, text).spec()


# ---------------------------------------------------------------------------
# The checks, by what they check: _Scope (messages, declared names), _Document
# (top-level keys and their types, sections in order), _Declarations (inputs and
# params: shapes, init rules), _Layers (the layers: shorthand), read_expression


def _check_entries(data, file, lines):
    """The number of inputs, params, graph entries and layers, within MAX_SPEC_ENTRIES."""
    total = 0
    for key in ("inputs", "params", "graph", "layers"):
        section = data.get(key)
        if isinstance(section, (dict, list)):
            total += len(section)
            if total > limits.MAX_SPEC_ENTRIES:
                raise SpecError(_limit("MAX_SPEC_ENTRIES", "the number of inputs, params, graph entries "
                                       "and layers"), key=key, line=lines.get(key), file=file)


class _Scope:
    """What every check of one spec shares: where each key is (for messages), and
    the names declared so far, in spec order."""

    def __init__(self, lines, file):
        self.lines = lines
        self.file = file
        self.declared: dict[str, str] = {}   # name -> "input", "label", "param" or "node"

    def err(self, message, key=None) -> SpecError:
        return SpecError(message, key=key, line=self.lines.get(key), file=self.file)

    def reference(self, name, key):
        """A name the spec refers to (output, wrt, layers input): a string, ASCII, an identifier."""
        if not isinstance(name, str):
            raise self.err(f"expected a name, got {show(name)}", key)
        if not name.isascii() or not names.IDENTIFIER.match(name):
            raise self.err(f"{show(name)} is not a name (ASCII letters, digits and _)", key)

    def declare(self, name, kind, key):
        if not isinstance(name, str):
            raise self.err(f"{show(name)} is not a valid name", key)
        reason = names.reserved_reason(name, FUNCTIONS)
        if reason:
            raise self.err(f"the name {show(name)} {reason}", key)
        if name in self.declared:
            raise self.err(f"'{name}' is already defined as {'an' if self.declared[name] == 'input' else 'a'} "
                           f"{self.declared[name]}", key)
        self.declared[name] = kind


class _Document:
    """The spec's top-level keys and their types; the sections checked in the
    order the errors are reported: keys, name, inputs, params, layers, graph,
    loss, output, wrt, reduction, dtype."""

    def __init__(self, data, lines, file, text):
        self.data = data
        self.text = text
        self.scope = _Scope(lines, file)
        self.err = self.scope.err
        self.declarations = _Declarations(self.scope)

    def spec(self) -> Spec:
        d = self.data
        self.keys()
        name = self.name(d["name"])
        _check_entries(d, self.scope.file, self.scope.lines)
        inputs = self.declarations.inputs(d["inputs"])
        params = self.declarations.params(d.get("params") or {})
        graph = []
        if "layers" in d:
            graph += _Layers(self.scope, self.declarations).expand(d["layers"], inputs, params)
        graph += self.graph(d.get("graph") or {})
        loss = read_expression(d["loss"], "loss", self.scope)
        output = self.output(d.get("output"))
        wrt = self.wrt(d.get("wrt"), inputs, params)
        reduction = self.choice("reduction", REDUCTIONS, "mean")
        dtype = self.choice("dtype", DTYPES, "float64")
        return Spec(name=name, inputs=inputs, params=params, graph=graph, loss=loss,
                    output=output, wrt=wrt, reduction=reduction, dtype=dtype,
                    file=self.scope.file, text=self.text, lines=self.scope.lines, data=self.data)

    def keys(self):
        """No unknown top-level key (with a hint), none of the required ones missing."""
        for key in self.data:
            if key not in TOP_KEYS:
                hint = difflib.get_close_matches(str(key), TOP_KEYS, n=1) if isinstance(key, str) else []
                extra = f"; did you mean '{hint[0]}'?" if hint else f" (known keys: {', '.join(TOP_KEYS)})"
                raise self.err(f"unknown key {show(key)}{extra}", show(key) if not isinstance(key, str) else key)
        for key in REQUIRED_KEYS:
            if key not in self.data:
                raise self.err(f"missing required key '{key}'", key)

    def name(self, name) -> str:
        """The model's name: it names the generated module, so a module name."""
        if not isinstance(name, str):
            raise self.err(f"name must be an identifier (letters, digits, _), got {show(name)}", "name")
        reason = names.module_name_reason(name)
        if reason:
            raise self.err(f"the name {show(name)} {reason}", "name")
        if name.startswith("_"):
            raise self.err(f"the name {show(name)} starts with '_'", "name")
        return name

    def choice(self, key, choices, default) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or value not in choices:
            raise self.err(f"{key} must be one of {', '.join(choices)}, got {show(value)}", key)
        return value

    def graph(self, section):
        if not isinstance(section, dict):
            raise self.err("graph must map node names to expressions, in order", "graph")
        out = []
        for nm, text in section.items():
            key = f"graph.{nm}"
            self.scope.declare(nm, "node", key)
            out.append((nm, read_expression(text, key, self.scope)))
        return out

    def output(self, output):
        if output is not None:
            self.scope.reference(output, "output")
            if output not in self.scope.declared:
                raise self.err(f"output '{output}' is not a graph node, input or param", "output")
            if self.scope.declared[output] in ("label", "token input"):
                raise self.err(f"output '{output}' is an integer {self.scope.declared[output]}", "output")
        return output

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
            self.scope.reference(nm, "wrt")
            if nm in params:
                continue
            if nm in inputs:
                if inputs[nm].is_label:
                    what = "token input" if inputs[nm].is_tokens else "class label"
                    raise self.err(f"cannot differentiate with respect to '{nm}': it is an integer {what}",
                                   "wrt")
                continue
            raise self.err(f"wrt names '{nm}', which is not a param or input", "wrt")
        if len(set(value)) != len(value):
            raise self.err("wrt names something twice", "wrt")
        return tuple(value)


class _Declarations:
    """inputs: and params:, each declared with its shape; a param's init rule."""

    def __init__(self, scope: _Scope):
        self.scope = scope
        self.err = scope.err

    def shape(self, value, key):
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise self.err(f"a shape is a list of positive integers like [3] or [] (a scalar), got {show(value)}",
                           key)
        if len(value) > limits.MAX_SHAPE_AXES:
            raise self.err(f"shapes have at most {limits.MAX_SHAPE_AXES} axes", key)
        self.elements(value, key)
        return tuple(value)

    def elements(self, shape, key):
        n = 1
        for v in shape:
            n *= v
            if n > limits.MAX_SHAPE_ELEMENTS:
                raise self.err(_limit("MAX_SHAPE_ELEMENTS", "the number of elements of a shape"), key)
        return n

    def inputs(self, section):
        if not isinstance(section, dict) or not section:
            raise self.err("inputs must map each input name to a shape or {classes: K}", "inputs")
        out = {}
        for nm, v in section.items():
            key = f"inputs.{nm}"
            if isinstance(v, dict):
                if "classes" not in v or set(v) - {"classes", "shape"}:
                    raise self.err("an input is a shape list, {classes: K} (a class label) or "
                                   "{classes: V, shape: [T]} (T tokens)", key)
                k = v["classes"]
                if not isinstance(k, int) or isinstance(k, bool) or k < 2:
                    raise self.err(f"classes must be an integer >= 2, got {show(k)}", key)
                if k > limits.MAX_CLASSES:
                    raise self.err(_limit("MAX_CLASSES", "the number of classes"), key)
                shape = self.shape(v["shape"], f"{key}.shape") if "shape" in v else ()
                if len(shape) > 1:
                    raise self.err(f"tokens have one axis, as in {{classes: {k}, shape: [T]}}; "
                                   f"got shape {list(shape)}", f"{key}.shape")
                self.scope.declare(nm, "token input" if shape else "label", key)
                out[nm] = InputDecl(nm, shape, k)
            else:
                shape = self.shape(v, key)
                self.scope.declare(nm, "input", key)
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
            self.scope.declare(nm, "param", key)
            out[nm] = ParamDecl(nm, shape, init)
        return out

    def init(self, value, key):
        usage = "use one of zeros, ones, constant(c), normal(std), uniform(limit), glorot, he"
        if not isinstance(value, str):
            raise self.err(f"init is a string such as glorot or normal(0.1), got {show(value)}; {usage}", key)
        text = value.strip()
        m = re.fullmatch(r"([a-z]+)[ \t]*(?:\([ \t]*([-+0-9.eE]+)[ \t]*\))?", text)
        if not m or m.group(1) not in INITS:
            raise self.err(f"unknown init {show(text)}; {usage}", key)
        kind, arg = m.group(1), m.group(2)
        if INITS[kind] == 1:
            if arg is None:
                raise self.err(f"init {kind} needs a number, e.g. {kind}(0.1)", key)
            try:
                number = float(arg)
            except ValueError:
                raise self.err(f"init {kind}: {show(arg)} is not a number", key) from None
            if not math.isfinite(number):
                raise self.err(f"init {kind}: {show(arg)} is not finite (a float is at most about 1.8e308)", key)
            if abs(number) > limits.MAX_INIT_MAGNITUDE:
                raise self.err(_limit("MAX_INIT_MAGNITUDE", f"init {kind}: the size of {show(arg)}"), key)
            if kind in ("normal", "uniform") and number < 0:
                raise self.err(f"init {kind} needs a non-negative number", key)
            # + 0.0 makes -0.0 plain 0.0: uniform(-0) printed rng.uniform(--0.0, -0.0), which NumPy refuses
            return (kind, number + 0.0)
        if arg is not None:
            raise self.err(f"init {kind} takes no argument", key)
        return (kind,)


# The layers: shorthand's kinds of item: the key that names the kind -> every key
# such an item may have.
LAYER_KEYS = {
    "dense": ("dense", "activation", "init"),
    "conv2d": ("conv2d", "kernel", "stride", "padding", "activation", "init"),
    "conv1d": ("conv1d", "kernel", "stride", "padding", "activation", "init"),
    "max_pool2d": ("max_pool2d", "stride"),
    "avg_pool2d": ("avg_pool2d", "stride"),
    "flatten": ("flatten",),
}
# what the value of each integer key is, for messages
LAYER_VALUES = {"dense": "the number of units", "conv2d": "the number of output channels",
                "conv1d": "the number of output channels", "max_pool2d": "the window size",
                "avg_pool2d": "the window size", "kernel": "the kernel size", "stride": "the step between windows",
                "padding": "the zeros added on each side"}
# how many axes the input of each kind has, and what they are called (for messages)
LAYER_INPUTS = {"dense": (1, "a vector"), "conv2d": (3, "a [C, H, W] input"), "conv1d": (2, "a [C, L] input"),
                "max_pool2d": (3, "a [C, H, W] input"), "avg_pool2d": (3, "a [C, H, W] input")}


@dataclass(frozen=True)
class _Line:
    """One graph line the shorthand writes: its node, its expression text, the item's key."""
    name: str
    text: str
    key: str


class _Layers:
    """The layers: shorthand: a stack of layers on one float input, written out as
    params and graph lines.  Item i (1-based, every item counted, a leading
    ``{input: NAME}`` not) declares:

    * ``{dense: U, activation: A}``: ``W{i}: [U, n]``, ``b{i}: [U]``, the lines
      ``z{i} = W{i} @ h + b{i}`` and ``h{i} = A(z{i})`` (no h{i} when A is linear);
    * ``{conv2d: O, kernel: K, stride: S, padding: P, activation: A}`` on a
      [C, H, W] input: ``W{i}: [O, C, K, K]``, ``b{i}: [O]``, the lines
      ``z{i} = conv2d(h, W{i}, stride=S, padding=P) + reshape(b{i}, [O, 1, 1])``
      (the bias broadcast over each channel's pixels) and ``h{i} = A(z{i})``;
      ``conv1d`` alike on a [C, L] input, with ``W{i}: [O, C, K]``;
    * ``{max_pool2d: K, stride: S}`` (stride K unless given), ``avg_pool2d`` alike:
      ``h{i} = max_pool2d(h, K)``;
    * ``{flatten: true}``: ``h{i} = flatten(h)``.

    The weights' init is glorot unless ``init:`` says otherwise (a convolution's fans
    are C*K*K and O*K*K); biases start at zero.  The stack tracks the shape of what
    each item makes (convolution output sizes with stride and padding, pooling
    rounded down, flatten's product) to declare the weights' shapes, and every item
    is checked before any line is read: a wrong item is one error naming
    ``layers[i]`` (its position in the list as written), never a confusing one from
    a line it would have written.
    """

    def __init__(self, scope: _Scope, declarations: _Declarations):
        self.scope = scope
        self.err = scope.err
        self.declarations = declarations

    def expand(self, section, inputs, params):
        """The graph lines of the stack, in order; its params are added to ``params``."""
        if not isinstance(section, list) or not section:
            raise self.err("layers is a list like [{dense: 128, activation: tanh}, {dense: 10}]", "layers")
        items = list(section)
        skipped = 0
        if isinstance(items[0], dict) and set(items[0]) == {"input"}:
            source = self.named_source(items.pop(0)["input"], inputs)
            skipped = 1
        else:
            source = self.only_float_input(inputs)
        if not inputs[source].shape:
            raise self.err(f"layers input '{source}' is a scalar; it must be a vector, [C, L] or [C, H, W]",
                           "layers")
        h, shape = source, inputs[source].shape
        lines = []
        for i, item in enumerate(items, start=1):
            key = f"layers[{i - 1 + skipped}]"
            kind = self.kind(item, key)   # each kind is a method below, of the same arguments
            h, shape = getattr(self, kind)(i, item, h, shape, key, params, lines)
        return [(ln.name, read_expression(ln.text, ln.key, self.scope)) for ln in lines]

    def named_source(self, source, inputs):
        """The input of a stack that starts with {input: NAME}."""
        self.scope.reference(source, "layers[0]")
        if source not in inputs or inputs[source].is_label:
            raise self.err(f"layers input '{source}' is not a float input", "layers[0]")
        return source

    def only_float_input(self, inputs):
        """The input of a stack that names none: the spec's one float input."""
        floats = [nm for nm, d in inputs.items() if not d.is_label]
        if len(floats) != 1:
            raise self.err("more than one float input; start the list with {input: NAME}",
                           "layers")
        return floats[0]

    # -- one item: its kind and keys, its values, its input's shape

    def kind(self, item, key) -> str:
        """The kind of an item (the one key of LAYER_KEYS it has); its keys checked."""
        usage = ("a layer is one of {dense: UNITS}, {conv2d: CHANNELS, kernel: K}, {conv1d: CHANNELS, kernel: K}, "
                 "{max_pool2d: K}, {avg_pool2d: K}, {flatten: true}, each with activation: NAME where it has weights")
        if not isinstance(item, dict):
            raise self.err(f"{usage}; got {show(item)}", key)
        kinds = [k for k in item if k in LAYER_KEYS]
        if not kinds:
            if "input" in item:
                raise self.err("{input: NAME} is the first item of layers, and alone in its mapping", key)
            raise self.err(usage, key)
        if len(kinds) > 1:
            raise self.err(f"a layer is one kind of layer, this one has {' and '.join(kinds)}", key)
        kind = kinds[0]
        for k in item:
            if k not in LAYER_KEYS[kind]:
                hint = difflib.get_close_matches(k, LAYER_KEYS[kind], n=1) if isinstance(k, str) else []
                extra = f"; did you mean '{hint[0]}'?" if hint else f" (it takes {', '.join(LAYER_KEYS[kind])})"
                raise self.err(f"unknown key {show(k)} in a {kind} layer{extra}", key)
        return kind

    def count(self, item, name, key, default=None) -> int:
        """The positive integer ``item[name]``, or ``default`` when absent (required when None)."""
        if name not in item:
            if default is None:
                raise self.err(f"this layer needs {name}: {LAYER_VALUES[name]}, a positive integer", key)
            return default
        return self.integer(item[name], name, 1, f"{key}.{name}")

    def integer(self, value, name, smallest, key) -> int:
        """An integer >= ``smallest`` (0 or 1) of an item, bounded like a shape's size."""
        if not isinstance(value, int) or isinstance(value, bool) or value < smallest:
            what = "a positive integer" if smallest else "an integer >= 0"
            raise self.err(f"{name} ({LAYER_VALUES[name]}) must be {what}, got {show(value)}", key)
        if value > limits.MAX_SHAPE_ELEMENTS:
            raise self.err(_limit("MAX_SHAPE_ELEMENTS", f"{LAYER_VALUES[name]} ({show(value)})"), key)
        return value

    def activation(self, item, key) -> str:
        act = item.get("activation", "linear")
        if not isinstance(act, str) or act not in ACTIVATIONS:
            raise self.err(f"unknown activation {show(act)}; use one of {', '.join(ACTIVATIONS)}",
                           f"{key}.activation" if "activation" in item else key)
        return act

    def needs(self, kind, h, shape, key):
        """Refuse an input of the wrong number of axes for ``kind``."""
        axes, what = LAYER_INPUTS[kind]
        if len(shape) != axes:
            hint = "; put {flatten: true} before it" if kind == "dense" and len(shape) > 1 else ""
            raise self.err(f"{kind} needs {what}, but its input '{h}' has shape {list(shape)}{hint}", key)

    def out_shape(self, shape, key):
        """``shape``, once its number of elements is known to be within the limit."""
        self.declarations.elements(shape, key)
        return tuple(shape)

    # -- the kinds: each declares its params, appends its lines, returns (node, shape)

    def weights(self, i, shape, init, params, key):
        """Declare W{i} (``init``) and b{i} (zeros, ``[shape[0]]``)."""
        self.declarations.elements(shape, key)
        for nm, sh, rule in ((f"W{i}", shape, init), (f"b{i}", shape[:1], ("zeros",))):
            self.scope.declare(nm, "param", key)
            params[nm] = ParamDecl(nm, tuple(sh), rule)

    def line(self, lines, name, text, key):
        self.scope.declare(name, "node", key)
        lines.append(_Line(name, text, key))
        return name

    def activate(self, i, z, act, lines, key):
        """h{i} = act(z{i}), or z{i} itself when the activation is linear."""
        return z if act == "linear" else self.line(lines, f"h{i}", f"{act}({z})", key)

    def dense(self, i, item, h, shape, key, params, lines):
        units = self.count(item, "dense", key)
        self.needs("dense", h, shape, key)
        act = self.activation(item, key)
        init = self.declarations.init(item["init"], f"{key}.init") if "init" in item else ("glorot",)
        self.weights(i, (units, shape[0]), init, params, key)
        z = self.line(lines, f"z{i}", f"W{i} @ {h} + b{i}", key)
        return self.activate(i, z, act, lines, key), (units,)

    def conv2d(self, i, item, h, shape, key, params, lines, kind="conv2d"):
        channels = self.count(item, kind, key)
        K = self.count(item, "kernel", key)
        stride = self.count(item, "stride", key, default=1)
        padding = self.padding(item, stride, key)
        self.needs(kind, h, shape, key)
        act = self.activation(item, key)
        init = self.declarations.init(item["init"], f"{key}.init") if "init" in item else ("glorot",)
        C, sizes = shape[0], shape[1:]
        out = []
        for n in sizes:
            if padding == "same":
                out.append(n)
                continue
            p = 0 if padding == "valid" else padding
            if K > n + 2 * p:
                padded = f" padded by {p} on each side" if p else ""
                raise self.err(f"the kernel ({K}) is larger than its input '{h}' of shape {list(shape)}{padded}",
                               key)
            out.append((n + 2 * p - K) // stride + 1)
        out = self.out_shape((channels, *out), key)
        self.weights(i, (channels, C) + (K,) * len(sizes), init, params, key)
        keywords = "".join(f", {k}={v!r}" for k, v in (("stride", stride), ("padding", padding))
                           if k in item)
        ones = ", 1" * len(sizes)
        z = self.line(lines, f"z{i}", f"{kind}({h}, W{i}{keywords}) + reshape(b{i}, [{channels}{ones}])", key)
        return self.activate(i, z, act, lines, key), out

    def conv1d(self, i, item, h, shape, key, params, lines):
        return self.conv2d(i, item, h, shape, key, params, lines, kind="conv1d")

    def padding(self, item, stride, key):
        """padding: a non-negative integer, 'same' (stride 1 only) or 'valid'; 0 if absent."""
        if "padding" not in item:
            return 0
        value = item["padding"]
        if isinstance(value, str) and value in PADDING_STRINGS:
            if value == "same" and stride != 1:
                raise self.err(f"padding 'same' needs stride 1, this layer has stride {stride}", f"{key}.padding")
            return value
        if isinstance(value, str):
            raise self.err(f"padding must be an integer >= 0 or one of {', '.join(map(repr, PADDING_STRINGS))}, "
                           f"got {show(value)}", f"{key}.padding")
        return self.integer(value, "padding", 0, f"{key}.padding")

    def max_pool2d(self, i, item, h, shape, key, params, lines, kind="max_pool2d"):
        K = self.count(item, kind, key)
        stride = self.count(item, "stride", key, default=K)
        self.needs(kind, h, shape, key)
        if any(K > n for n in shape[1:]):
            raise self.err(f"the pooling window ({K}) is larger than its input '{h}' of shape {list(shape)}", key)
        out = self.out_shape((shape[0], *((n - K) // stride + 1 for n in shape[1:])), key)
        keywords = f", stride={stride}" if "stride" in item else ""
        return self.line(lines, f"h{i}", f"{kind}({h}, {K}{keywords})", key), out

    def avg_pool2d(self, i, item, h, shape, key, params, lines):
        return self.max_pool2d(i, item, h, shape, key, params, lines, kind="avg_pool2d")

    def flatten(self, i, item, h, shape, key, params, lines):
        if item["flatten"] is not True:
            raise self.err(f"flatten takes the value true, got {show(item['flatten'])}", f"{key}.flatten")
        return self.line(lines, f"h{i}", f"flatten({h})", key), (math.prod(shape),)


# ---------------------------------------------------------------------------
# One expression of the spec: read as data, bounded, checked against the whitelist


def read_expression(text, key, scope: _Scope) -> Expr:
    """The expression under ``key`` (a string, or a number of YAML), parsed and checked."""
    err = lambda m: scope.err(m, key)   # noqa: E731
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise err(f"expected an expression, got {show(text)}")
    if not isinstance(text, str):
        problem = number_problem(text)
        if problem:
            raise err(problem)
        text = repr(text)
    if len(text) > limits.MAX_EXPRESSION_CHARS:
        raise err(_limit("MAX_EXPRESSION_CHARS", f"the expression's length ({len(text)} characters)"))
    found = _forbidden(text)
    if found:
        raise err(_forbidden_message(found[1], " (in an expression)"))
    text = one_line(text, err)
    if not text:
        raise err("empty expression")
    try:
        with warnings.catch_warnings():   # no "SyntaxWarning: invalid decimal literal" on stderr
            warnings.simplefilter("ignore")
            tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        if "too many nested parentheses" in str(e.msg):
            raise err(_limit("MAX_EXPRESSION_DEPTH", "the expression's nesting")) from None
        raise err(f"syntax error in {show(text)} at column {e.offset or 0}: {show(str(e.msg))[1:-1]}") \
            from None
    except (RecursionError, MemoryError):   # the parser's own stack: far too deep
        raise err(_limit("MAX_EXPRESSION_DEPTH", "the expression's nesting")) from None
    depth = tree_depth(tree.body)
    if depth > limits.MAX_EXPRESSION_DEPTH:
        raise err(_limit("MAX_EXPRESSION_DEPTH", f"the expression's nesting ({depth})"))
    check_expression(tree.body, text, err)
    return Expr(text, tree.body, key, scope.lines.get(key))


# ---------------------------------------------------------------------------
# Expression text as data: one line, no comments, bounded

_OPENING, _CLOSING = "([{", ")]}"
_SKIPPED = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER)
INT_LIMIT = 2**63


def _too_large(shown: str) -> str:
    return (f"the integer {shown} is too large: integer constants must be below 2**63 "
            "(write a float such as 1e19 if a large value is meant)")


def number_problem(value, shown: str | None = None) -> str | None:
    """Why a number of the spec cannot be used (None if it can); ``shown``: the number as written."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if abs(value) >= INT_LIMIT:
            return _too_large(f"of {value.bit_length()} bits" if value.bit_length() > 128 else _short_number(str(value)))
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"the number {shown or show(value)} is not finite (a float is at most about 1.8e308)"
    return None


def _short_number(s: str) -> str:
    return s if len(s) <= 24 else f"{s[:10]}...{s[-4:]} ({len(s)} characters)"


def _number_token(s: str) -> str | None:
    """Why the number literal ``s`` cannot be used (None if it can, or if Python refuses it)."""
    t = s.replace("_", "").lower()
    if t.endswith("j"):
        return f"complex numbers are not allowed: {show(s)}"
    if t.startswith(("0x", "0o", "0b")) or not any(c in t for c in ".e"):
        if len(t) > 80:   # far beyond 2**63 whatever the base; never converted
            return _too_large(_short_number(s))
        try:
            value = int(t, 0)
        except ValueError:
            return None   # Python's own syntax error follows
        return _too_large(_short_number(s)) if value >= INT_LIMIT else None
    try:
        return number_problem(float(t), _short_number(s))
    except (ValueError, OverflowError):
        return None


def one_line(text: str, err) -> str:
    """The expression rebuilt from its tokens: one line, no comments, the user's spacing.

    Comments, line breaks and backslash continuations go; tokens on one line keep
    the spacing between them; a line break between tokens becomes one space, or
    nothing next to a bracket or before a comma.  Bracket nesting, numbers and
    non-ASCII characters are checked on the way (before ``ast.parse`` sees them).
    """
    out = []
    prev = None
    depth = 0
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text.strip()).readline))
    except (tokenize.TokenError, SyntaxError) as e:
        message = e.args[0] if e.args else "syntax error"
        if "multi-line" in str(message):
            message = "unbalanced brackets"
        raise err(f"syntax error in {show(text.strip())}: {show(str(message))[1:-1]}") from None
    rows = text.strip().split("\n")
    ended = False
    for tok in tokens:
        if tok.type == tokenize.NEWLINE:
            ended = True
        if tok.type in _SKIPPED:
            continue
        if ended:
            raise err(f"an expression is one line (wrap a long one in parentheses), in {show(text.strip())}")
        if not tok.string.isascii():
            ch = next(c for c in tok.string if not c.isascii())
            raise err(f"{char_name(ch)} in an expression: names and operators are ASCII")
        if tok.type == tokenize.STRING and (tok.string[:1] not in "'\"" or tok.string[1:-1] not in PADDING_STRINGS):
            # the one string of the language is a padding mode ('same'), as a keyword's value
            raise err(f"strings are not allowed in an expression, except the padding modes "
                      f"{' and '.join(map(repr, PADDING_STRINGS))}: {show(tok.string)}")
        if tok.type == tokenize.NUMBER:
            problem = _number_token(tok.string)
            if problem:
                raise err(problem)
        if tok.type == tokenize.OP and tok.string in _OPENING:
            depth += 1
            if depth > limits.MAX_EXPRESSION_DEPTH:
                raise err(_limit("MAX_EXPRESSION_DEPTH", "the expression's nesting of brackets"))
        elif tok.type == tokenize.OP and tok.string in _CLOSING:
            depth -= 1
        if prev is not None:
            if prev.end[0] == tok.start[0]:
                gap = rows[tok.start[0] - 1][prev.end[1]:tok.start[1]]
                out.append(" " * len(gap) if gap.strip() == "" else " ")
            elif not (prev.string in _OPENING or tok.string in _CLOSING or tok.string == ","):
                out.append(" ")
        out.append(tok.string)
        prev = tok
    return "".join(out)


def tree_depth(node) -> int:
    """The nesting depth of an expression's syntax tree, measured without recursion."""
    deepest = 0
    stack = [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        for child in ast.iter_child_nodes(n):
            if not isinstance(child, (ast.expr_context, ast.operator, ast.unaryop)):
                stack.append((child, d + 1))
    return deepest


# The whitelist.  Anything not listed is refused.
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.MatMult)
_UNARY = (ast.USub, ast.UAdd)


def _check_literal(node, kinds, message, err):
    """Refuse ``node`` unless it is a constant of one of ``kinds`` as written: an
    integer (``2``, ``-1``: bounded) or, when ``str`` is a kind, one of PADDING_STRINGS."""
    neg = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
    c = node.operand if neg else node
    if isinstance(c, ast.Constant) and int in kinds and isinstance(c.value, int) \
            and not isinstance(c.value, bool):
        problem = number_problem(c.value)
        if problem:
            raise err(problem)
        return
    if not neg and isinstance(c, ast.Constant) and str in kinds and c.value in PADDING_STRINGS:
        return
    raise err(message)


def literal(node):
    """The value of a constant argument the whitelist accepted (``_check_literal``):
    an int, a PADDING string, or a tuple of ints for a list."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return tuple(literal(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp):
        return -node.operand.value
    return node.value


_INDEX_FORMS = "v[0], v[2:5], v[-3:], v[::2], X[:, 0:3] or X[0, 1:3], or an integer input, as in E[tokens]"


def _check_index(index, seg, err):
    """Refuse an index that is not integer constants and slices of them, as written:
    ``v[0]``, ``v[2:5]``, ``v[::2]``, ``X[:, 0:3]``, ``X[0, 1:3]`` (their ranges are
    the lowering's: graph.py), or a name: ``E[tokens]``, a gather of rows by an
    integer input (graph.py checks that the name is one)."""
    if isinstance(index, ast.Name):
        return

    def problem():
        return f"indexing takes integer constants and slices of them, as in {_INDEX_FORMS}: {show(seg())}"

    items = index.elts if isinstance(index, ast.Tuple) else [index]
    if not items or len(items) > limits.MAX_SHAPE_AXES:
        raise err(problem())
    for item in items:
        if isinstance(item, ast.Slice):
            for bound in (item.lower, item.upper, item.step):
                if bound is not None:
                    _check_literal(bound, (int,), problem(), err)
        else:
            _check_literal(item, (int,), problem(), err)


def check_expression(node, text, err):
    """Refuse every ``ast`` node outside the spec language."""
    def seg():
        return ast.get_source_segment(text, node) or text

    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise err(f"only numbers are allowed as constants, got {show(node.value)}")
        problem = number_problem(node.value)
        if problem:
            raise err(problem)
        return
    if isinstance(node, ast.Name):
        return
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, _BINOPS):
            raise err(f"operator not allowed in {show(seg())} (allowed: + - * / ** @)")
        check_expression(node.left, text, err)
        check_expression(node.right, text, err)
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, _UNARY):
            raise err(f"operator not allowed in {show(seg())}")
        check_expression(node.operand, text, err)
        return
    if isinstance(node, ast.Attribute):
        if node.attr != "T":
            raise err(f"attribute '.{node.attr}' not allowed in {show(seg())}; only .T (transpose) is")
        check_expression(node.value, text, err)
        return
    if isinstance(node, ast.Subscript):
        _check_index(node.slice, seg, err)
        check_expression(node.value, text, err)
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise err(f"only the functions of the spec language can be called: {show(seg())}")
        if node.func.id not in FUNCTIONS:
            hint = difflib.get_close_matches(node.func.id, FUNCTIONS, n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else ""
            raise err(f"unknown function '{node.func.id}'{extra}")
        function = SPEC_FUNCTIONS.get(node.func.id)   # None: an elementwise function
        for pos, a in enumerate(node.args):
            if isinstance(a, ast.Starred):
                raise err(f"*args not allowed in {show(seg())}")
            kind = function.kind(pos) if function is not None and \
                (pos < function.arity or function.variadic) else None
            if kind == INT:
                _check_literal(a, (int,), f"argument {pos + 1} of {node.func.id}() must be an integer constant, "
                               f"as in {node.func.id}(x, 2)", err)
            elif kind == SHAPE:
                if not isinstance(a, (ast.List, ast.Tuple)) or len(a.elts) > limits.MAX_SHAPE_AXES:
                    raise err(f"argument {pos + 1} of {node.func.id}() must be a list of at most "
                              f"{limits.MAX_SHAPE_AXES} integer constants, as in [2, 3]: {show(seg())}")
                for e in a.elts:
                    _check_literal(e, (int,), f"a shape holds integer constants, as in [2, 3]: {show(seg())}", err)
            else:
                check_expression(a, text, err)
        keywords = function.keywords if function is not None else {}
        for kw in node.keywords:
            if kw.arg is None:
                raise err(f"**kwargs not allowed in {show(seg())}")
            kind = keywords.get(kw.arg)
            if kind is None:
                if keywords:
                    takes = f"it takes {function.keyword_text()}"
                else:
                    takes = "it is elementwise" if function is None else \
                        "it works on the last axis" if function.vector else "it takes no keywords"
                raise err(f"{node.func.id}() takes no {kw.arg}= ({takes})")
            if kind == PADDING:
                _check_literal(kw.value, (int, str), f"padding must be an integer constant or one of "
                               f"{', '.join(map(repr, PADDING_STRINGS))}, in {show(seg())}", err)
            else:
                _check_literal(kw.value, (int,), f"{kw.arg} must be an integer constant, in {show(seg())}", err)
        return
    raise err(f"{type(node).__name__} is not allowed in an expression: {show(seg())}")
