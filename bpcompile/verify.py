"""Stage 7: check a generated gradient module against two independent references.

* **SymPy expansion.**  The spec's expressions are read again by a small scalar
  interpreter of their own (``_Expander``, NumPy object arrays of SymPy scalars;
  nothing of the compiler's graph or rules is used), at a small instance of the
  spec: every dimension shrunk to at most 3, a batch of 2.  The loss becomes one
  scalar expression over a symbol per param and input entry; ``sympy.diff`` gives
  each derivative, evaluated at random points and compared with the module's
  gradient (relative tolerance 1e-9).  A module given as a file keeps its own
  sizes: it is expanded at those, or, with more than SYMBOLIC_LIMIT entries,
  left to the finite differences.
* **Finite differences.**  At the spec's real sizes, the fourth-order central
  stencil on ``module.loss``, for a sample of entries of each differentiated name
  and for one random direction through all of them (so that one wrong entry
  anywhere moves the directional derivative); relative tolerance 1e-6.

Relative errors are taken against ``max(|reference|, |module|, floor * scale)``,
with ``scale`` the size of the loss and of the largest gradient entry: tiny
entries are compared absolutely, at the precision the loss allows.  A float32
module is evaluated in float64 (its ``DTYPE`` is switched for the duration).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import importlib.util
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import sympy as sp
import yaml

from .compiler import compile
from .errors import SpecError
from .spec import Spec, parse_spec

SMALL = 3               # dimensions are shrunk to at most this for the expansion
N_SYMPY, N_FD = 2, 3    # batch sizes of the two checks
POINTS = 3              # random points at which the expansion's derivative is compared
SYMBOLIC_LIMIT = 100    # the most entries (symbols) an expansion may have
SAMPLE = 20             # entries per name checked by finite differences
STACK_BYTES, RECURSION_LIMIT = 512 << 20, 50_000   # for SymPy on deep expressions
STEP = 1e-4             # finite-difference step, relative to max(1, |entry|)
# check -> (relative tolerance, floor of the denominator relative to the scale)
TOLERANCE = {"value": (1e-9, 1e-3), "sympy": (1e-9, 1e-3), "fd": (1e-6, 1e-3)}


@dataclass(frozen=True)
class Row:
    """One line of the report: a name, the check, and the largest errors seen."""

    name: str
    shape: tuple     # the shape checked (the instance's; inputs carry the batch axis)
    check: str       # "value" (the loss itself), "sympy" or "fd"
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""   # why a check could not run (the module raised, a gradient is missing)


@dataclass
class Report:
    name: str
    rows: list
    notes: list = field(default_factory=list)   # how each check was run

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        head = ("name", "shape", "check", "max abs err", "max rel err", "result")
        body = [(r.name, "[" + ", ".join(map(str, r.shape)) + "]", r.check,
                 f"{r.max_abs:.2e}", f"{r.max_rel:.2e}",
                 ("ok" if r.ok else "FAIL") + (f"  {r.note}" if r.note else ""))
                for r in self.rows]
        widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head) - 1)]
        lines = [f"verify {self.name}", *(f"  {n}" for n in self.notes)]
        for line in [head, *body]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1])
        failed = sorted({f"{r.name} ({r.check})" for r in self.rows if not r.ok})
        lines.append("ok: every check passed" if not failed
                     else "FAILED: " + ", ".join(failed))
        return "\n".join(lines)

    __str__ = table


def verify(spec, module=None, *, seed: int = 0) -> Report:
    """Check the gradient of ``module`` (a generated module or the path of one;
    by default the spec compiled afresh) for ``spec`` (a path, Spec, dict or YAML)."""
    compiled = compile(spec)
    spec = compiled.spec
    if module is None:
        real = compiled.load()
        shrunk = small_instance(spec, compiled)
        small_spec, small = (spec, real) if shrunk is compiled else (shrunk.spec, shrunk.load())
    else:
        real = _load_module(module) if isinstance(module, (str, os.PathLike)) else module
        _check_matches(spec, real)
        small_spec, small = spec, real
    rng = np.random.default_rng(seed)
    notes = []
    if real.DTYPE != np.float64:
        notes.append(f"the module's DTYPE is {np.dtype(real.DTYPE).name}; it is evaluated in float64")
    # np.errstate: points outside a log's or sqrt's domain are found by their NaNs
    with _float64(real), _float64(small), np.errstate(all="ignore"):
        rows = _guarded("sympy", spec, lambda: _sympy_rows(small_spec, small, rng, notes))
        rows += _guarded("fd", spec, lambda: _fd_rows(spec, real, rng, notes))
    order = {nm: i for i, nm in enumerate(("L",) + spec.wrt)}
    rows.sort(key=lambda r: order[r.name])   # group by name; sympy before fd
    return Report(spec.name, rows, notes)


# ---------------------------------------------------------------------------
# The module under test


class _ModuleFailure(Exception):
    """The module under test raised, or returned something of the wrong form."""


def _guarded(check, spec, run) -> list:
    """The rows of one check; failed rows for every name when the module fails it."""
    try:
        return run()
    except _ModuleFailure as e:
        shapes = {nm: d.shape for nm, d in {**spec.params, **spec.inputs}.items()}
        return [Row(nm, shapes[nm], check, math.nan, math.nan, False, str(e)) for nm in spec.wrt]


def _call(fn, point, spec):
    """``fn(params, **inputs)`` on copies of the point (an edited module may write to them)."""
    params = {nm: point[nm].copy() for nm in spec.params}
    inputs = {nm: point[nm].copy() for nm in spec.inputs}
    try:
        return fn(params, **inputs)
    except Exception as e:  # noqa: BLE001 - any error of the module under test is a failure
        raise _ModuleFailure(f"{fn.__name__} raised {type(e).__name__}: {e}") from None


def _value_and_grad(module, point, spec):
    try:
        value, grads = _call(module.value_and_grad, point, spec)
        missing = [nm for nm in spec.wrt if nm not in grads]
    except (TypeError, ValueError):
        raise _ModuleFailure("value_and_grad did not return (value, {name: gradient})") from None
    if missing:
        raise _ModuleFailure(f"value_and_grad returned no gradient for {', '.join(missing)}")
    grads = {nm: np.asarray(grads[nm], np.float64) for nm in spec.wrt}
    for nm, g in grads.items():
        if g.shape != point[nm].shape:
            raise _ModuleFailure(f"the gradient of {nm} has shape {list(g.shape)}, "
                                 f"not {list(point[nm].shape)}")
    return float(value), grads


def _load_module(path) -> ModuleType:
    """Import a generated .py file from its path (a private copy of it)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("no such module file", file=str(path))
    name = f"bpcompile_verified_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - reported as one line
        raise SpecError(f"cannot import the module: {type(e).__name__}: {e}", file=str(path)) from None
    return module


def _check_matches(spec: Spec, module) -> None:
    """A module given for a spec must have been generated from it (same names and sizes)."""
    expected = {
        "PARAM_SHAPES": {nm: d.shape for nm, d in spec.params.items()},
        "INPUT_SHAPES": {nm: d.shape for nm, d in spec.inputs.items()},
        "LABEL_CLASSES": {nm: d.classes for nm, d in spec.inputs.items() if d.is_label},
        "WRT": spec.wrt,
        "REDUCTION": spec.reduction,
    }
    where = str(getattr(module, "__file__", None) or getattr(module, "__name__", "<module>"))
    for key, want in expected.items():
        have = getattr(module, key, None)
        if isinstance(have, dict):
            have = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in have.items()}
        elif isinstance(have, list):
            have = tuple(have)
        if have != want:
            raise SpecError(f"the module does not match the spec {spec.file}: {key} is {have!r} "
                            f"in the module, {want!r} in the spec", file=where)


@contextlib.contextmanager
def _float64(module):
    """Evaluate ``module`` in float64: generated code converts through its DTYPE."""
    saved = module.DTYPE
    module.DTYPE = np.float64
    try:
        yield
    finally:
        module.DTYPE = saved


def small_instance(spec: Spec, compiled=None):
    """The spec with every dimension shrunk to at most SMALL, compiled; or the spec
    itself (``compiled``, when given) when it is already small or the shrunk one
    does not compile."""
    data = yaml.safe_load(spec.text)
    small = _shrink(data)
    if small != data:
        try:
            return compile(parse_spec(small, file=spec.file))
        except SpecError:
            pass
    return compiled if compiled is not None else compile(spec)


def _shrink(data: dict) -> dict:
    """Shrink every dimension d to min(d, SMALL): equal dimensions stay equal, so
    shapes that matched (or broadcast) still do.  Class counts and the units of
    ``layers:`` are dimensions too."""
    def dims(shape):
        return [min(d, SMALL) for d in shape]

    out = copy.deepcopy(data)
    for nm, v in out["inputs"].items():
        if isinstance(v, list):
            out["inputs"][nm] = dims(v)
        else:
            v["classes"] = min(v["classes"], SMALL)
    for nm, v in (out.get("params") or {}).items():
        if isinstance(v, list):
            out["params"][nm] = dims(v)
        else:
            v["shape"] = dims(v["shape"])
    for layer in out.get("layers") or ():
        if "dense" in layer:
            layer["dense"] = min(layer["dense"], SMALL)
    return out


# ---------------------------------------------------------------------------
# Random points


def _shapes(spec: Spec, n: int) -> dict:
    """The float leaves (params, float inputs with the batch axis) and their shapes."""
    shapes = {nm: d.shape for nm, d in spec.params.items()}
    shapes.update({nm: (n, *d.shape) for nm, d in spec.inputs.items() if not d.is_label})
    return shapes


def _point(spec, module, rng, n, labels=None) -> dict:
    """Random values for every param and input.  Signed values first; where the
    loss is not finite there (log or sqrt of a negative), positive ones."""
    if labels is None:
        labels = {nm: rng.integers(0, d.classes, n) for nm, d in spec.inputs.items() if d.is_label}
    for positive in (False, True):
        point = {nm: rng.uniform(0.25, 1.25, s) if positive else rng.standard_normal(s)
                 for nm, s in _shapes(spec, n).items()}
        point.update(labels)
        if np.isfinite(_call(module.loss, point, spec)):
            break
    return point


def _sample(rng, size: int) -> np.ndarray:
    """Up to SAMPLE flat indices, in order."""
    return np.arange(size) if size <= SAMPLE else np.sort(rng.choice(size, SAMPLE, replace=False))


def _compare(got, ref, scale, check):
    """Absolute and relative errors; the relative ones against a floored magnitude."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    err = np.abs(got - ref)
    floor = TOLERANCE[check][1] * scale
    return err, err / np.maximum(np.maximum(np.abs(got), np.abs(ref)), floor)


def _row(name, shape, check, errors) -> Row:
    """The row for the (abs, rel) error arrays gathered for one name and check."""
    err = np.concatenate([np.ravel(a) for a, _ in errors])
    rel = np.concatenate([np.ravel(r) for _, r in errors])
    max_rel = float(np.max(rel))
    return Row(name, tuple(shape), check, float(np.max(err)), max_rel,
               bool(max_rel <= TOLERANCE[check][0]))


def _scale(value, grads) -> float:
    return max(1.0, abs(value), *(float(np.max(np.abs(g), initial=0)) for g in grads.values()))


# ---------------------------------------------------------------------------
# Check 1: the derivative of the full SymPy expansion


def _sympy_rows(spec, module, rng, notes) -> list:
    n = N_SYMPY
    shapes = _shapes(spec, n)
    sizes = ", ".join(f"{nm} [{', '.join(map(str, s))}]" for nm, s in shapes.items())
    count = sum(math.prod(s) for s in shapes.values())
    if count > SYMBOLIC_LIMIT:
        notes.append(f"sympy: skipped: {count} entries at N={n} ({sizes}), more than {SYMBOLIC_LIMIT} "
                     "to expand; finite differences check them")
        return []
    notes.append(f"sympy: the loss expanded at N={n}, {sizes}, every entry a symbol; "
                 f"{POINTS} random points")
    labels = {nm: rng.integers(0, d.classes, n) for nm, d in spec.inputs.items() if d.is_label}
    try:
        evaluate = _deep(lambda: _expansion(spec, shapes, labels, n))
    except RecursionError:
        notes[-1] = "sympy: skipped: the expansion nests too deeply for SymPy; finite differences check it"
        return []
    errors = {nm: [] for nm in ("L", *spec.wrt)}
    for _ in range(POINTS):
        point = _point(spec, module, rng, n, labels)
        value, grads = _value_and_grad(module, point, spec)
        ref_value, ref = evaluate(point)
        scale = _scale(ref_value, grads)
        errors["L"].append(_compare([value, _call(module.loss, point, spec)], ref_value, scale, "value"))
        for nm in spec.wrt:
            errors[nm].append(_compare(grads[nm], ref[nm], scale, "sympy"))
    rows = [_row("L", (), "value", errors["L"])]
    return rows + [_row(nm, shapes[nm], "sympy", errors[nm]) for nm in spec.wrt]


def _deep(fn):
    """``fn()`` in a thread with a large stack and recursion limit: SymPy recurses
    once or more per level of an expression, and a deep network nests deeply."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            result["error"] = e

    old_stack, old_limit = threading.stack_size(STACK_BYTES), sys.getrecursionlimit()
    sys.setrecursionlimit(RECURSION_LIMIT)
    try:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    finally:
        threading.stack_size(old_stack)
        sys.setrecursionlimit(old_limit)
    if "error" in result:
        raise result["error"]
    return result["value"]


def _expansion(spec, shapes, labels, n):
    """Expand the loss with a symbol for every entry of every float leaf and
    differentiate it by each entry of each WRT name.  Returns a function
    ``point -> (loss, {name: gradient})`` evaluating the result."""
    leaves = {}
    for nm, shape in shapes.items():
        leaves[nm] = np.empty(shape, dtype=object)
        for idx in np.ndindex(*shape):
            leaves[nm][idx] = sp.Symbol(nm + (f"[{','.join(map(str, idx))}]" if idx else ""), real=True)
    symbols = [s for nm in shapes for s in leaves[nm].reshape(-1)]
    loss = sp.sympify(_Expander(spec).loss(leaves, labels, n))
    derivatives = [sp.diff(loss, s) for nm in spec.wrt for s in leaves[nm].reshape(-1)]
    f = sp.lambdify([symbols], [loss, *derivatives], modules="numpy", cse=True, dummify=True)

    def evaluate(point):
        value, *flat = f([v for nm in shapes for v in point[nm].reshape(-1)])
        flat = np.array(flat, dtype=np.float64)
        grads, start = {}, 0
        for nm in spec.wrt:
            size = math.prod(shapes[nm])
            grads[nm] = flat[start:start + size].reshape(shapes[nm])
            start += size
        return float(value), grads

    return evaluate


@dataclass(frozen=True)
class _Label:
    """An integer class label of one example, and its number of classes."""

    value: int
    classes: int


def _obj(x) -> np.ndarray:
    return np.asarray(x, dtype=object)


def _elementwise(fn):
    ufunc = np.frompyfunc(fn, 1, 1)
    return lambda x: _obj(ufunc(x))


def _sum(x, axis=None, keepdims=False):
    if axis is None:
        return _obj(sp.Add(*x.reshape(-1)))
    return _obj(np.sum(x, axis=axis, keepdims=keepdims))


def _max_of(values):
    """The largest of ``values``, pairwise as max(a, b) = (a + b + |a - b|) / 2:
    exact, and far cheaper for SymPy to differentiate than a Max of many terms."""
    return functools.reduce(lambda a, b: (a + b + sp.Abs(a - b)) / 2, values)


def _max(x, axis=None):
    if axis is None:
        return _obj(_max_of(x.reshape(-1)))
    moved = np.moveaxis(x, axis, -1)
    return _obj([_max_of(r) for r in moved.reshape(-1, moved.shape[-1])]).reshape(moved.shape[:-1])


def _logsumexp(z, keepdims=False):
    return _elementwise(sp.log)(_sum(_elementwise(sp.exp)(z), -1, keepdims))


_ELEMENTWISE = {
    "tanh": sp.tanh,
    "sigmoid": lambda x: 1 / (1 + sp.exp(-x)),
    "relu": lambda x: sp.Max(x, 0),
    "exp": sp.exp,
    "log": sp.log,
    "sin": sp.sin,
    "cos": sp.cos,
    "sqrt": sp.sqrt,
    "abs": sp.Abs,
    "softplus": lambda x: sp.log(1 + sp.exp(x)),
    "square": lambda x: x**2,
}

_FUNCTIONS = {
    **{nm: _elementwise(fn) for nm, fn in _ELEMENTWISE.items()},
    "sum": _sum,
    "mean": lambda x, axis=None: _sum(x, axis) / sp.Integer(x.size if axis is None else x.shape[axis]),
    "max": _max,
    "softmax": lambda z: _elementwise(sp.exp)(z) / _sum(_elementwise(sp.exp)(z), -1, True),
    "log_softmax": lambda z: z - _logsumexp(z, True),
    "logsumexp": _logsumexp,
    "onehot": lambda lab: _obj([sp.Integer(int(k == lab.value)) for k in range(lab.classes)]),
    "dot": lambda a, b: _sum(a * b),
    "cross_entropy": lambda p, lab: _obj(-sp.log(p[lab.value])),
    "softmax_cross_entropy": lambda z, lab: _logsumexp(z) - z[lab.value],
}

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
    ast.MatMult: np.matmul,
}


class _Expander:
    """The spec's expressions, per example, over NumPy object arrays of SymPy scalars.

    Written from the spec language's definition alone (NumPy semantics on the
    per-example shapes), so that it shares no code and no rule with the compiler.
    """

    def __init__(self, spec: Spec):
        self.spec = spec

    def loss(self, leaves: dict, labels: dict, n: int):
        """The batch loss as one SymPy expression."""
        per_example = []
        for k in range(n):
            env = {nm: _obj(leaves[nm][k]) for nm, d in self.spec.inputs.items() if not d.is_label}
            env.update({nm: _Label(int(labels[nm][k]), d.classes)
                        for nm, d in self.spec.inputs.items() if d.is_label})
            env.update({nm: leaves[nm] for nm in self.spec.params})
            for nm, expr in self.spec.graph:
                env[nm] = self.eval(expr.tree, env)
            per_example.append(_obj(self.eval(self.spec.loss.tree, env))[()])
        total = sp.Add(*per_example)
        return total / n if self.spec.reduction == "mean" else total

    def eval(self, t, env):
        if isinstance(t, ast.Constant):
            return _obj(sp.Rational(repr(t.value)) if isinstance(t.value, float) else sp.Integer(t.value))
        if isinstance(t, ast.Name):
            return env[t.id]
        if isinstance(t, ast.UnaryOp):
            v = self.eval(t.operand, env)
            return _obj(-v) if isinstance(t.op, ast.USub) else v
        if isinstance(t, ast.BinOp):
            return _obj(_BINARY[type(t.op)](self.eval(t.left, env), self.eval(t.right, env)))
        if isinstance(t, ast.Attribute):   # .T, the only attribute of the language
            return self.eval(t.value, env).T
        if isinstance(t, ast.Subscript):   # v[i], one integer constant
            i = t.slice
            index = -i.operand.value if isinstance(i, ast.UnaryOp) else i.value
            return _obj(self.eval(t.value, env)[index])
        if isinstance(t, ast.Call):
            args = [self.eval(a, env) for a in t.args]
            kwargs = {}
            for kw in t.keywords:   # axis=k, the only keyword of the language
                v = kw.value
                kwargs["axis"] = -v.operand.value if isinstance(v, ast.UnaryOp) else v.value
            return _FUNCTIONS[t.func.id](*args, **kwargs)
        raise TypeError(f"unexpected {type(t).__name__} in a checked spec")


# ---------------------------------------------------------------------------
# Check 2: central finite differences at the real sizes


def _fd_rows(spec, module, rng, notes) -> list:
    n = N_FD
    point = _point(spec, module, rng, n)
    value, grads = _value_and_grad(module, point, spec)
    scale = _scale(value, grads)
    notes.append(f"fd: fourth-order central differences of loss() at N={n} and the spec's sizes, "
                 f"up to {SAMPLE} entries per name and one random direction through all of them")
    rows = []
    for nm in spec.wrt:
        x = point[nm]
        picked = _sample(rng, x.size)
        directions = [np.eye(1, x.size, i).reshape(x.shape) for i in picked]
        # random signs: every entry weighs 1/sqrt(size), so none can hide
        directions.append(rng.choice([-1.0, 1.0], x.shape) / math.sqrt(x.size))
        got = [float(np.sum(grads[nm] * d)) for d in directions]
        step = STEP * max(1.0, float(np.max(np.abs(x), initial=0)))
        ref = [_directional(module, point, spec, nm, d, step) for d in directions]
        err, rel = _compare(got, ref, scale, "fd")
        # a step across a kink (relu, abs, max) spoils a difference: retry those smaller
        for k in np.flatnonzero(~(rel <= TOLERANCE["fd"][0])):
            again = _directional(module, point, spec, nm, directions[k], step / 100)
            e, r = _compare(got[k], again, scale, "fd")
            if r < rel[k]:
                err[k], rel[k] = e, r
        rows.append(_row(nm, x.shape, "fd", [(err, rel)]))
    return rows


def _directional(module, point, spec, name, direction, h) -> float:
    """d/dt loss(point + t * direction) at t = 0, by the stencil (-2, -1, 1, 2)."""
    f = {}
    for k in (-2, -1, 1, 2):
        moved = dict(point)
        moved[name] = point[name] + k * h * direction
        f[k] = float(_call(module.loss, moved, spec))
    return (f[-2] - 8 * f[-1] + 8 * f[1] - f[2]) / (12 * h)
