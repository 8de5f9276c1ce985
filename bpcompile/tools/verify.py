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
  anywhere moves the directional derivative); relative tolerance 1e-6.  A sampled
  entry is sent to the child as its flat index, so the plan costs memory in
  proportion to SAMPLE plus a few full-size arrays (the point, the random
  direction, the gradient).  An instance with more than FD_ELEMENTS entries
  (params, and float inputs at N_FD) is not evaluated: the spec is checked with
  every dimension capped at the largest D that fits (a note says so), and a
  module given with ``--module`` (which cannot be resized) is refused with one
  line (exit 2).
* **The spec, for a module given with --module** (``spec`` rows).  Finite
  differences of a module's own loss() check it against itself only, so a given
  module is also compared with the spec at the finite-difference point: its
  loss() and value_and_grad's value against the loss computed by ``_Evaluator``
  (``_Expander``'s interpreter over float64 NumPy arrays at the real sizes, about
  one forward pass: no derivative rule, nothing of the compiler), and its gradient
  along each name's random direction against fourth-order differences of that
  loss; relative tolerance 1e-6.  This runs whether or not the SymPy check does
  (past SYMBOLIC_LIMIT it is skipped), so a module returning 2 L and 2 grads
  fails.  The default path (the spec compiled afresh) has no ``spec`` rows.

Relative errors are taken against ``max(|reference|, |module|, floor * scale)``,
with ``scale`` the size of the loss and of the largest gradient entry: tiny
entries are compared absolutely, at the precision the loss allows.

**The module under test runs in a child process**, never in the verifier's: the
generated module (written to a private temporary directory) or the file given
with ``--module`` is imported by a small driver (``_DRIVER``) run with
``sys.executable``, with no stdin, its stdout discarded, in a process group of
its own.  The verifier chooses every point, writes them as ``.npy`` data, and
reads the results back as data (JSON and ``.npy``, never pickle); it decides
ok or not from those numbers alone.  The child is given TIMEOUT seconds in all
(over the two or three batches of calls a check needs); a child that runs out
of time (killed, with its process group), crashes, exits before answering, or
answers with malformed data fails the check on one line of the report.  An
exception raised while importing a file given with ``--module`` is a usage
error (the file is unusable).  Everything is removed afterwards.  (A module
object given to the Python API has been imported by its caller already: the
same driver evaluates it in the caller's process, with no timeout.)

**A float32 module** is checked twice: in float64 (its ``DTYPE`` switched in the
child for each call) with the tolerances above, which checks the formulas; and
as a user runs it, params and inputs cast to float32, against float64
references computed independently (the SymPy expansion's values and
derivatives at the small sizes; at the real sizes, the float64 finite
differences of the checks above), with float32 tolerances (the ``/f32`` checks).
Every point is rounded to float32 first, so both runs see the same numbers.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy as sp

from ..compiler import compile
from ..limits import VERIFY_TIMEOUT
from ..errors import SpecError
from ..escape import terminal
from ..frontend.spec import Spec, parse_spec

SMALL = 3               # dimensions are shrunk to at most this for the expansion
N_SYMPY, N_FD = 2, 3    # batch sizes of the two checks
POINTS = 3              # random points at which the expansion's derivative is compared
SYMBOLIC_LIMIT = 100    # the most entries (symbols) an expansion may have
EXPANSION_LIMIT = 20_000   # the most operations (counted as a tree) of one graph line's expansion
                           # at SMALL before a recurrence is expanded at width 1 instead (NARROW)
NARROW = 1              # the width of the state of a recurrence expanded over its steps
SYMPY_SECONDS = 30.0    # the time budget of the SymPy expansion (it grows with the loss's nesting)
SAMPLE = 20             # entries per name checked by finite differences
FD_ELEMENTS = 50_000_000   # the most entries (params, and inputs at N_FD) the checks evaluate
STACK_BYTES, RECURSION_LIMIT = 512 << 20, 50_000   # for SymPy on deep expressions
STEP = 1e-4             # finite-difference step, relative to max(1, |entry|)
TIMEOUT = VERIFY_TIMEOUT   # seconds the module under test is given, in all, to answer (limits.py)
# check -> (relative tolerance, floor of the denominator relative to the scale).
# The /f32 checks compare a float32 module run in float32 with float64 references:
# float32 carries 7 digits (eps 1.2e-7), a gradient loses one or two of them to
# rounding in sums and products, so 1e-4 leaves a margin of ~10 over what the
# examples show while catching a float32 defect (an overflow, a catastrophic
# cancellation: errors of 1e-3 and more); the floor is 1e-2 of the scale because
# an entry near zero carries the absolute rounding error of the larger terms it
# was summed from (~1e-7 of the scale).
TOLERANCE = {"value": (1e-9, 1e-3), "sympy": (1e-9, 1e-3), "fd": (1e-6, 1e-3), "spec": (1e-6, 1e-3),
             "value/f32": (1e-4, 1e-2), "sympy/f32": (1e-4, 1e-2), "fd/f32": (1e-4, 1e-2)}
# the order of the rows of one name
CHECKS = ("run", "value", "value/f32", "sympy", "sympy/f32", "fd", "fd/f32", "spec")


@dataclass(frozen=True)
class Row:
    """One line of the report: a name, the check, and the largest errors seen."""

    name: str
    shape: tuple     # the shape checked (the instance's; inputs carry the batch axis)
    check: str       # "value" (the loss itself), "sympy", "fd"; for a float32 module also
                     # "value/f32", "sympy/f32", "fd/f32"; "run" when the module's process failed
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
                 ("ok" if r.ok else "FAIL") + (f"  {terminal(r.note)}" if r.note else ""))
                for r in self.rows]
        widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head) - 1)]
        lines = [f"verify {self.name}", *(f"  {terminal(n)}" for n in self.notes)]
        for line in [head, *body]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1])
        failed = sorted({f"{r.name} ({r.check})" for r in self.rows if not r.ok})
        lines.append("ok: every check passed" if not failed
                     else "FAILED: " + ", ".join(failed))
        return "\n".join(lines)

    __str__ = table


def verify(spec, module=None, *, seed: int = 0, timeout: float = TIMEOUT) -> Report:
    """Check the gradient of ``module`` (the path of a generated module; by
    default the spec compiled afresh) for ``spec`` (a path, Spec, dict or YAML).
    The module runs in a child process given ``timeout`` seconds in all; nothing
    the verifier creates is left behind.  A module object (imported by the
    caller already) is evaluated in this process, by the same driver."""
    if module is None or isinstance(module, (str, os.PathLike)):
        with _ForkServer.session():   # started now: it imports numpy while the spec compiles
            return _verify(spec, module, seed, timeout)
    return _verify(spec, module, seed, timeout)


def _verify(spec, module, seed, timeout) -> Report:
    compiled = compile(spec)
    spec = compiled.spec
    rng = np.random.default_rng(seed)
    notes = []
    count = _elements(spec)
    if count > FD_ELEMENTS:
        if module is not None:
            where = module if isinstance(module, (str, os.PathLike)) else spec.file
            raise SpecError(f"the spec has {count:,} entries at N={N_FD}, more than verify evaluates "
                            f"(FD_ELEMENTS, {FD_ELEMENTS:,}); a module cannot be resized: verify the "
                            "spec alone, which checks a smaller instance of it", file=str(where))
        compiled, cap = _fitting(spec)
        notes.append(f"the spec has {count:,} entries at N={N_FD}, more than verify evaluates "
                     f"(FD_ELEMENTS, {FD_ELEMENTS:,}): every dimension is capped at {cap} "
                     f"({_elements(compiled.spec):,} entries) and that instance is checked")
        spec = compiled.spec
    with tempfile.TemporaryDirectory(prefix="bpcompile_verify_") as work:
        work = Path(work)
        narrow = None
        if module is None:
            files = {"real": _write_module(work / "real", compiled)}
            shrunk = small_instance(spec, compiled)
            small_spec = spec
            if shrunk is not compiled:
                files["small"] = _write_module(work / "small", shrunk)
                small_spec = shrunk.spec
                narrow = _narrow_instance(spec, shrunk.spec)
            given = loaded = None
        elif isinstance(module, (str, os.PathLike)):
            given = Path(module)
            if not given.is_file():
                raise SpecError("no such module file", file=str(given))
            files, small_spec, loaded = {"real": given.resolve()}, spec, None
        else:   # a module object, imported already: evaluated where it is
            given = Path(str(getattr(module, "__file__", None) or getattr(module, "__name__", "module")))
            files, small_spec, loaded = {"real": given}, spec, {"real": module}
        child = _Child(work, files, spec, timeout, loaded)
        try:
            # np.errstate: points outside a log's or sqrt's domain are found by their NaNs
            with np.errstate(all="ignore"):
                rows = _Checks(spec, small_spec, child, rng, notes, given, narrow).run()
        except _ChildFailure as e:
            rows = [Row("module", (), "run", math.nan, math.nan, False, str(e))]
    names = {nm: i for i, nm in enumerate(("module", "L") + spec.wrt)}
    rows.sort(key=lambda r: (names[r.name], CHECKS.index(r.check)))
    return Report(spec.name, rows, notes)


# ---------------------------------------------------------------------------
# The module under test, in a child process


class _ModuleFailure(Exception):
    """The module under test raised, or returned something of the wrong form."""


class _ChildFailure(Exception):
    """The module's process timed out, crashed, exited early or answered garbage."""


def _write_module(directory: Path, compiled) -> Path:
    directory.mkdir()
    path = directory / compiled.filename
    path.write_text(compiled.source, encoding="utf-8")
    return path


@dataclass(frozen=True)
class _Call:
    """One call of the module under test: ``fn(params, **inputs)`` at ``point``
    (moved by ``t * direction`` along ``name`` when ``move = (name, direction, t)``;
    a direction that is an int is the unit vector of that flat index, sent as the
    index), with DTYPE switched to float64 for the call when ``float64``."""

    module: str        # "real" or "small"
    fn: str            # "loss" or "value_and_grad"
    point: dict
    float64: bool = True
    move: tuple | None = None


@dataclass(frozen=True)
class _Result:
    value: float | None = None
    grads: dict = field(default_factory=dict)
    error: str | None = None


class _Child:
    """Runs batches of calls of the module(s) under test in a child process
    (one process per batch; files in ``work``, which the verifier owns).
    With ``loaded`` (key -> module object: a module the caller has imported
    already), the same driver runs in this process instead, with no timeout."""

    def __init__(self, work: Path, files: dict, spec: Spec, timeout: float, loaded=None):
        self.work, self.files, self.spec, self.loaded = work, files, spec, loaded
        self.timeout = self.left = float(timeout)
        self.imports = None     # module key -> {"error": ..., "constants": {...}}, from the first batch

    def evaluate(self, calls: list) -> list:
        spec = self.spec
        arrays, ids, encoded = {}, {}, []

        def key(prefix, obj):
            if id(obj) not in ids:
                ids[id(obj)] = f"{prefix}{len(ids)}"
                if isinstance(obj, dict):
                    arrays.update({f"{ids[id(obj)]}.{nm}": v for nm, v in obj.items()})
                else:
                    arrays[ids[id(obj)]] = obj
            return ids[id(obj)]

        for c in calls:
            move = None
            if c.move is not None:
                name, direction, t = c.move
                move = ([name, None, int(direction), float(t)] if _is_entry(direction)
                        else [name, key("d", direction), None, float(t)])
            encoded.append({"module": c.module, "fn": c.fn, "point": key("p", c.point),
                            "float64": c.float64, "move": move})
        job = {"modules": {k: str(p) for k, p in self.files.items()},
               "params": list(spec.params), "inputs": list(spec.inputs), "wrt": list(spec.wrt),
               "calls": encoded}
        for name in ("out.json", "out.npz"):
            (self.work / name).unlink(missing_ok=True)
        np.savez(self.work / "in.npz", **arrays)
        (self.work / "job.json").write_text(json.dumps(job), encoding="utf-8")
        self._run()
        try:
            out = json.loads((self.work / "out.json").read_text(encoding="utf-8"))
            with np.load(self.work / "out.npz", allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            imports, answers = out["imports"], out["calls"]
            if self.imports is None:
                self.imports = imports
            if len(answers) != len(calls):
                raise ValueError("not one answer per call")
            return [self._result(k, c, a, data) for k, (c, a) in enumerate(zip(calls, answers))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise _ChildFailure(f"the module's process answered with malformed results "
                                f"({type(e).__name__})") from None

    def _result(self, k, call, answer, data) -> _Result:
        if answer["error"] is not None:
            return _Result(error=str(answer["error"]))
        value = data[f"c{k}"]
        if value.dtype != np.float64 or value.shape != ():
            raise ValueError("a value is not a float64 scalar")
        grads = {}
        for nm in self.spec.wrt:
            if f"c{k}.{nm}" in data:
                grads[nm] = data[f"c{k}.{nm}"]
                if grads[nm].dtype != np.float64:
                    raise ValueError("a gradient is not float64")
        return _Result(float(value), grads)

    def _run(self) -> None:
        """Run the driver on the job in ``work``, within what is left of the time."""
        if self.loaded is not None:
            _driver()["main"](str(self.work), self.loaded)
            return
        if self.left <= 0:
            raise _ChildFailure(self._timed_out())
        started = time.monotonic()
        server = _ForkServer.current()
        # one batch at a time per server: a thread that finds it busy spawns its own
        if server is not None and server.busy.acquire(blocking=False):
            try:
                rc = server.run(self.work, self.left)
            except _ServerGone:
                rc = self._spawn()
            finally:
                server.busy.release()
        else:
            rc = self._spawn()
        self.left -= time.monotonic() - started
        if rc is None:
            raise _ChildFailure(self._timed_out())
        if rc != 0 or not (self.work / "out.json").is_file():
            if rc < 0:
                try:
                    how = f"was killed by {signal.Signals(-rc).name}"
                except ValueError:
                    how = f"was killed by signal {-rc}"
            else:
                how = f"exited with code {rc}"
            last = self._last_stderr_line()
            raise _ChildFailure(f"the module's process {how} before it answered"
                                + (f" (stderr: {last})" if last else ""))

    def _spawn(self):
        """The driver in a fresh ``python -B -c`` process: its exit code, None when timed out."""
        with open(self.work / "stderr.txt", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-B", "-c", _DRIVER + _DRIVER_MAIN, str(self.work)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    cwd=self.work, start_new_session=True, env=_child_env())
            try:
                rc = proc.wait(timeout=self.left)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                if proc.poll() is None:      # timed out, or the verifier was interrupted
                    _kill(proc)
        return rc

    def _timed_out(self) -> str:
        return (f"the module's process did not answer within {self.timeout:g} s "
                "(TIMEOUT, for all its calls) and was killed")

    def _last_stderr_line(self) -> str:
        try:
            with open(self.work / "stderr.txt", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
        return terminal(lines[-1][:300]) if lines else ""

    def check_imports(self, given: Path | None) -> None:
        """Every module imported, and (given with --module) was generated from the spec."""
        for key, found in self.imports.items():
            if found["error"] is None:
                continue
            if given is not None:
                raise SpecError(f"cannot import the module: {found['error']}", file=str(given))
            raise _ChildFailure(f"the generated module cannot be imported: {found['error']}")
        if given is not None:
            _check_matches(self.spec, self.imports["real"]["constants"], given)


# BLAS thread counts for the module's processes, unless the caller set them: their
# products are small (batches of 2 and 3), and a BLAS team of threads on small
# products, on a loaded machine, costs more than it saves (digits_cnn's verify: 6.8 s
# wall with OpenBLAS's default threads against 1.8 s with one, at load 8 on 2 cores).
_ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _child_env() -> dict:
    env = dict(os.environ)
    for name in _ONE_THREAD:
        env.setdefault(name, "1")
    return env


def _kill(proc) -> None:
    """Kill the child and everything it started (its process group), and reap it."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _check_matches(spec: Spec, constants: dict, where) -> None:
    """A module given for a spec must have been generated from it (same names and sizes)."""
    expected = {
        "PARAM_SHAPES": {nm: d.shape for nm, d in spec.params.items()},
        "INPUT_SHAPES": {nm: d.shape for nm, d in spec.inputs.items()},
        "LABEL_CLASSES": {nm: d.classes for nm, d in spec.inputs.items() if d.is_label},
        "WRT": spec.wrt,
        "REDUCTION": spec.reduction,
        "DTYPE": spec.dtype,
    }
    for key, want in expected.items():
        have = constants.get(key)
        if isinstance(have, dict):
            have = {k: tuple(v) if isinstance(v, list) else v for k, v in have.items()}
        elif isinstance(have, list):
            have = tuple(have)
        if have != want:
            raise SpecError(f"the module does not match the spec {spec.file}: {key} is {have!r} "
                            f"in the module, {want!r} in the spec", file=str(where))


# The driver: run as ``python -B -c _DRIVER WORK`` in the child.  It imports numpy
# and the module(s) under test, makes the calls of WORK/job.json on the arrays of
# WORK/in.npz, and writes WORK/out.json and WORK/out.npz (renamed into place at
# the end: a child that dies half-way leaves no answer).  No pickle either way.
_DRIVER = r'''
import importlib.util, json, os, sys
import numpy as np

CONSTANTS = ("PARAM_SHAPES", "INPUT_SHAPES", "LABEL_CLASSES", "WRT", "REDUCTION", "DTYPE")


def describe(e):
    try:
        text = f"{type(e).__name__}: {e}"
    except Exception:
        text = type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def plain(x, depth=0):
    """A JSON form of a module constant (whatever the module made of it)."""
    if depth > 4:
        return "..."
    if isinstance(x, dict):
        return {str(k): plain(v, depth + 1) for k, v in list(x.items())[:1000]}
    if isinstance(x, (list, tuple)):
        return [plain(v, depth + 1) for v in list(x)[:1000]]
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return repr(float(x))
    try:
        return np.dtype(x).name
    except Exception:
        return "<" + type(x).__name__ + ">"


def main(work, loaded=None):
    """The calls of WORK/job.json, on the modules it names (or on ``loaded``,
    key -> module object, when run in the verifier's process)."""
    with open(os.path.join(work, "job.json"), encoding="utf-8") as f:
        job = json.load(f)
    with np.load(os.path.join(work, "in.npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    modules, imports = {}, {}
    for key, path in job["modules"].items():
        try:
            if loaded is not None:
                module = loaded[key]
            else:
                spec = importlib.util.spec_from_file_location("bpcompile_verified_" + key, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
        except Exception as e:
            imports[key] = {"error": describe(e)}
            continue
        modules[key] = module
        constants = {}
        for name in CONSTANTS:
            try:
                constants[name] = plain(getattr(module, name, None))
            except Exception:
                constants[name] = None
        imports[key] = {"error": None, "constants": constants}
    out, answers = {}, []
    for k, call in enumerate(job["calls"]):
        answers.append({"error": run(k, call, job, arrays, modules, out)})
    tmp = os.path.join(work, "out.tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, os.path.join(work, "out.npz"))
    tmp = os.path.join(work, "out.tmp.json")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"imports": imports, "calls": answers}, f)
    os.replace(tmp, os.path.join(work, "out.json"))


def run(k, call, job, arrays, modules, out):
    """Make one call; its results go into ``out``; returns an error message or None."""
    module = modules.get(call["module"])
    if module is None:
        return "the module could not be imported"
    point = {nm: arrays[call["point"] + "." + nm].copy() for nm in job["params"] + job["inputs"]}
    if call["move"] is not None:
        name, direction, entry, t = call["move"]
        if direction is None:    # along one entry (its flat index): point is a copy already
            point[name].reshape(-1)[entry] += t
        else:
            point[name] = point[name] + t * arrays[direction]
    params = {nm: point[nm] for nm in job["params"]}
    inputs = {nm: point[nm] for nm in job["inputs"]}
    fn = call["fn"]
    switch = call["float64"] and hasattr(module, "DTYPE")
    saved = getattr(module, "DTYPE", None)
    try:
        if switch:
            module.DTYPE = np.float64
        result = getattr(module, fn)(params, **inputs)
    except Exception as e:
        return fn + " raised " + describe(e)
    finally:
        if switch:
            module.DTYPE = saved
    try:
        grads = {}
        if fn == "value_and_grad":
            result, grads = result
            missing = [nm for nm in job["wrt"] if nm not in grads]
            if missing:
                return "value_and_grad returned no gradient for " + ", ".join(missing)
            grads = {nm: np.asarray(grads[nm], dtype=np.float64) for nm in job["wrt"]}
        value = np.asarray(result, dtype=np.float64)
        if value.size != 1:
            return fn + " returned " + str(value.size) + " values, not one"
    except Exception:
        if fn == "value_and_grad":
            return "value_and_grad did not return (value, {name: gradient})"
        return "loss did not return a number"
    out["c" + str(k)] = value.reshape(())
    out.update({"c" + str(k) + "." + nm: g for nm, g in grads.items()})
    return None
'''
_DRIVER_MAIN = "\nmain(sys.argv[1])\n"

# The fork server: run as ``python -B -c _DRIVER + _SERVER_MAIN``, with numpy
# imported once.  For each line (a WORK directory) on its stdin it forks a child
# that is what ``python -B -c _DRIVER WORK`` would be: a session of its own,
# WORK its directory, stdin and stdout /dev/null, stderr WORK/stderr.txt, the
# server's pipes closed; it answers the child's pid, then its exit code (as
# subprocess reports one: -N for signal N) once it has reaped it.  A child is
# forked from the server, never from the verifier, whose threads and state it
# must not inherit.  At the end of its stdin (the verifier gone) the server exits.
_SERVER_MAIN = r'''
import atexit, traceback


def child(work):
    code = 1
    try:
        os.setsid()
        os.chdir(work)
        null = os.open(os.devnull, os.O_RDWR)
        err = os.open(os.path.join(work, "stderr.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err, 2)
        os.close(null)
        os.close(err)
        sys.argv = ["-c", work]
        main(work)
        atexit._run_exitfuncs()
        code = 0
    except SystemExit as e:   # as Python exits on it
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def serve():
    commands, answers = sys.stdin.buffer, sys.stdout.buffer
    while True:
        line = commands.readline()
        if not line:
            os._exit(0)   # nothing to clean up: skip the interpreter's teardown (the verifier waits for it)
        pid = os.fork()
        if pid == 0:
            child(os.fsdecode(line.rstrip(b"\n")))
        answers.write(b"%d\n" % pid)
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(b"%d\n" % os.waitstatus_to_exitcode(status))
        answers.flush()


serve()
'''


class _ServerGone(Exception):
    """The fork server is not answering (it died): a child is spawned instead."""


class _ForkServer:
    """A process that forks the module's processes (see _SERVER_MAIN): a fork costs
    a few milliseconds where a new interpreter importing numpy costs 0.1-0.2 s,
    and a check runs two or three batches.  Each fork is a fresh process (the
    server imports numpy and nothing else), so what one module does cannot reach
    the next.  ``verify`` runs one for its own checks unless one is kept for the
    whole process (``keep``: the workers of ``bpcompile verify SPEC...``)."""

    _active = None    # the server of this process, if one is running
    _users = 0
    _kept = False

    _lock = threading.Lock()   # the class's state, between threads

    def __init__(self):
        self.owner = os.getpid()
        self.busy = threading.Lock()   # held while a batch runs
        self.buffer = b""
        self.proc = subprocess.Popen([sys.executable, "-B", "-c", _DRIVER + _SERVER_MAIN],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=_child_env())

    @classmethod
    def available(cls) -> bool:
        return hasattr(os, "fork") and hasattr(os, "waitstatus_to_exitcode") and sys.platform != "win32"

    @classmethod
    def current(cls):
        server = cls._active
        if server is None or server.owner != os.getpid():   # inherited through a fork: not ours
            return None
        return server

    @classmethod
    def keep(cls) -> None:
        """Run a server from now until this process exits (it exits with it: closed
        and reaped as the process shuts down, or at the end of its stdin)."""
        with cls._lock:
            if cls.available() and cls.current() is None:
                import multiprocessing.util
                cls._active, cls._users = cls(), 0
                # run at exit by multiprocessing, in its workers too (which skip atexit)
                multiprocessing.util.Finalize(None, cls._active.close, exitpriority=0)
            cls._kept = cls.current() is not None

    @classmethod
    @contextlib.contextmanager
    def session(cls):
        """A server for the block: this process's kept one, or one of its own."""
        if not cls.available():
            yield
            return
        with cls._lock:
            if cls.current() is None:
                cls._active, cls._users, cls._kept = cls(), 0, False
            server = cls._active
            cls._users += 1
        try:
            yield
        finally:
            with cls._lock:
                cls._users -= 1
                last = cls._users == 0 and not cls._kept and cls._active is server
                if last:
                    cls._active = None
            if last:
                server.close()

    def close(self) -> None:
        if self.proc.returncode is not None or self.owner != os.getpid():
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    def _broken(self):
        if _ForkServer._active is self:
            _ForkServer._active = None
        self.proc.kill()
        self.proc.wait()
        return _ServerGone()

    def _answer(self, deadline):
        """The server's next answer (an int); None at ``deadline`` (monotonic; None: no limit)."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return None
            if not select.select([fd], [], [], wait)[0]:
                return None
            chunk = os.read(fd, 64)
            if not chunk:
                raise self._broken()
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return int(line)

    def run(self, work: Path, timeout: float):
        """The driver on WORK in a fork: its exit code; None when it ran past ``timeout``
        (then it and everything it started, its session, are killed)."""
        try:
            self.proc.stdin.write(os.fsencode(str(work)) + b"\n")
            self.proc.stdin.flush()
            pid = self._answer(time.monotonic() + 60)
        except (OSError, ValueError):
            raise self._broken() from None
        if pid is None:
            raise self._broken()
        try:
            rc = self._answer(time.monotonic() + timeout)
        except BaseException:   # the verifier interrupted: the child and the server go
            _killpg(pid)
            self._broken()
            raise
        if rc is None:   # timed out: the child and everything it started are killed
            _killpg(pid)
            try:
                reaped = self._answer(time.monotonic() + 60)   # the server reaps it
            except (OSError, ValueError):
                reaped = None
            if reaped is None:
                raise self._broken()
        return rc


def fork_server():
    """A context in which every ``verify`` of this process shares one fork server
    (started now, closed at its end): several specs checked one after another."""
    return _ForkServer.session()


def keep_fork_server() -> None:
    """Keep one fork server for every ``verify`` of this process, until it exits
    (the server exits with it): the workers of ``bpcompile verify SPEC...``."""
    _ForkServer.keep()


def _killpg(pid) -> None:
    """Kill the forked child's session, and the child itself (killed before it has
    made its session, it is not in one yet; unreaped, its pid is still its own)."""
    for kill in (getattr(os, "killpg", None), os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, TypeError):
            pass


@functools.cache
def _driver():
    """The driver's functions, for a module object evaluated in this process.
    (``_DRIVER`` is this file's own constant: no user text is executed here.)"""
    namespace = {"__name__": "bpcompile_verify_driver"}
    exec(_DRIVER, namespace)  # noqa: S102 - our own code, see above
    return namespace


# ---------------------------------------------------------------------------
# Random points


def _shapes(spec: Spec, n: int) -> dict:
    """The float leaves (params, float inputs with the batch axis) and their shapes."""
    shapes = {nm: d.shape for nm, d in spec.params.items()}
    shapes.update({nm: (n, *d.shape) for nm, d in spec.inputs.items() if not d.is_label})
    return shapes


def _labels(spec: Spec, rng, n: int) -> dict:
    """Random integer inputs: a label per example, or T tokens per example."""
    return {nm: rng.integers(0, d.classes, (n, *d.shape)) for nm, d in spec.inputs.items() if d.is_label}


def _candidates(spec, rng, n, labels, float32) -> list:
    """Two random points (values for every param and input): signed values, and
    positive ones for where the loss is not finite at the first (log or sqrt of
    a negative).  Rounded to float32 for a float32 module, so that its float64
    and its float32 run see the same numbers."""
    pair = []
    for positive in (False, True):
        point = {nm: rng.uniform(0.25, 1.25, s) if positive else rng.standard_normal(s)
                 for nm, s in _shapes(spec, n).items()}
        if float32:
            point = {nm: v.astype(np.float32).astype(np.float64) for nm, v in point.items()}
        point.update(labels)
        pair.append(point)
    return pair


def _pick(pair, results) -> dict:
    """The first candidate at which the loss is finite (else the last one)."""
    for point, result in zip(pair, results):
        if _loss(result) is not None and np.isfinite(result.value):
            return point
    return pair[-1]


def _as_float32(spec, point) -> dict:
    """The point as a user of a float32 module passes it: float arrays in float32."""
    return {nm: v.astype(np.float32) if nm in spec.params or not spec.inputs[nm].is_label else v
            for nm, v in point.items()}


def _is_entry(direction) -> bool:
    """A direction given as a flat index (the unit vector of that entry)."""
    return isinstance(direction, (int, np.integer))


def _along(g, direction) -> float:
    """The derivative along ``direction`` given the gradient ``g``."""
    if _is_entry(direction):
        return float(g.reshape(-1)[direction])
    return float(np.dot(g.reshape(-1), direction.reshape(-1)))


def _moved(point, name, direction, t) -> dict:
    """``point`` with ``name`` moved by ``t * direction`` (a copy of that one array)."""
    moved = dict(point)
    if _is_entry(direction):
        moved[name] = point[name].copy()
        moved[name].reshape(-1)[direction] += t
    else:
        moved[name] = point[name] + t * direction
    return moved


def _elements(spec: Spec) -> int:
    """The entries one evaluation at N_FD reads: every param, every float input."""
    return (sum(math.prod(d.shape) for d in spec.params.values())
            + N_FD * sum(math.prod(d.shape) for d in spec.inputs.values() if not d.is_label))


def _fitting(spec: Spec):
    """The spec with every dimension capped at the largest D (equal ones kept
    equal, as in ``_shrink``) that leaves at most FD_ELEMENTS entries, compiled."""
    data = spec.data   # parsed once, within the reader's limits (_shrink copies it)

    def parsed(cap):
        try:
            small = parse_spec(_shrink(data, cap), file=spec.file)
        except SpecError:
            return None
        return small if _elements(small) <= FD_ELEMENTS else None

    dims = [d for v in (*spec.params.values(), *spec.inputs.values())
            for d in (v.shape if not getattr(v, "is_label", False) else ())]
    lo, hi = 1, max(dims, default=1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if parsed(mid) is not None else (lo, mid - 1)
    small = parsed(lo)
    if small is None:
        raise SpecError(f"the spec has {_elements(spec):,} entries at N={N_FD}, more than verify "
                        f"evaluates (FD_ELEMENTS, {FD_ELEMENTS:,}), and no smaller instance of it "
                        "is a valid spec", file=spec.file)
    return compile(small), lo


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
    # the largest magnitude without a full-size temporary
    return max(1.0, abs(value), *(float(max(np.max(g, initial=0), -np.min(g, initial=0)))
                                  for g in grads.values()))


# ---------------------------------------------------------------------------
# The results of the module under test


def _loss(result: _Result) -> float:
    if result.error is not None:
        raise _ModuleFailure(result.error)
    return result.value


def _value_and_grad(result: _Result, point: dict, wrt) -> tuple:
    value = _loss(result)
    missing = [nm for nm in wrt if nm not in result.grads]
    if missing:
        raise _ModuleFailure(f"value_and_grad returned no gradient for {', '.join(missing)}")
    for nm in wrt:
        g = result.grads[nm]
        if g.shape != point[nm].shape:
            raise _ModuleFailure(f"the gradient of {nm} has shape {list(g.shape)}, "
                                 f"not {list(point[nm].shape)}")
    return value, result.grads


# the fourth-order central stencil: multiple of the step -> weight (over 12 h)
_STENCIL = {-2: 1.0, -1: -8.0, 1: 8.0, 2: -1.0}


@dataclass
class _Sympy:
    """The expansion check of the small instance: its points and references."""

    shapes: dict
    evaluate: object            # point -> (loss, {name: gradient}), the expansion's
    pairs: list                 # candidate points, two per point
    points: list = None         # the chosen points
    calls: list = None          # per point: the indices of (vag, loss[, vag32, loss32])
    failure: str = None         # why the points could not be chosen
    refs: dict = field(default_factory=dict)

    def reference(self, k):
        if k not in self.refs:
            self.refs[k] = self.evaluate(self.points[k])
        return self.refs[k]


class _Checks:
    """The checks of one module, in two or three batches of calls to its process:
    1. import, and the loss at each candidate point;
    2. value_and_grad and loss at the chosen points, the finite-difference stencils;
    3. (when a difference fails) the stencils again with a step 100 times smaller,
       as a step across a kink (relu, abs, max) spoils a difference."""

    def __init__(self, spec, small_spec, child, rng, notes, given, narrow=None):
        self.spec, self.small_spec, self.child = spec, small_spec, child
        self.rng, self.notes, self.given = rng, notes, given
        self.narrow = narrow    # the instance to expand when small_spec's expansion is too large
        self.small = "small" if "small" in child.files else "real"
        self.f32 = spec.dtype == "float32"
        self.entries = []       # (name, shape, check, (abs errors, rel errors))
        self.failed = []        # rows of the checks the module failed to run

    def run(self) -> list:
        spec, rng = self.spec, self.rng
        if self.f32:
            self.notes.append("the module's DTYPE is float32: it is run in float64 (DTYPE switched) "
                              "and, as a user runs it, in float32 (params and inputs cast to float32) "
                              "against float64 references (the /f32 checks)")
        sym = self._plan_sympy()
        fd_pair = _candidates(spec, rng, N_FD, _labels(spec, rng, N_FD), self.f32)

        # batch 1
        calls = [_Call(self.small, "loss", p) for pair in (sym.pairs if sym else ()) for p in pair]
        calls += [_Call("real", "loss", p) for p in fd_pair]
        results = self.child.evaluate(calls)
        self.child.check_imports(self.given)

        # batch 2
        calls = []
        if sym:
            try:
                sym.points = [_pick(pair, results[2 * k:2 * k + 2]) for k, pair in enumerate(sym.pairs)]
            except _ModuleFailure as e:
                sym.failure = str(e)
            else:
                sym.calls = [self._at(calls, self.small, p) for p in sym.points]
        try:
            fd_point, fd_failure = _pick(fd_pair, results[-2:]), None
            fd_loss = next(r for p, r in zip(fd_pair, results[-2:]) if p is fd_point)
        except _ModuleFailure as e:
            fd_point, fd_failure = None, str(e)
        del fd_pair     # the candidate not chosen is freed
        if fd_point is not None:
            fd_calls = self._at(calls, "real", fd_point, loss=False)
            plan = self._fd_plan(fd_point)
            stencils = {nm: [self._stencil(calls, fd_point, nm, d, h) for d in dirs]
                        for nm, (dirs, h) in plan.items()}
        self.notes.append(f"fd: fourth-order central differences of loss() at N={N_FD} and the spec's "
                          f"sizes, up to {SAMPLE} entries per name and one random direction through "
                          "all of them")
        if self.given is not None:
            self.notes.append("spec: the module against the spec at the fd point: its loss() and "
                              "value_and_grad's value against the spec's loss evaluated by verify's own "
                              "interpreter in float64, and its gradient along the random direction "
                              "against fourth-order differences of that loss")
        results = self.child.evaluate(calls)

        if sym:
            for f32 in (False, True)[:1 + self.f32]:
                check = "sympy/f32" if f32 else "sympy"
                if sym.failure:
                    self._fail(check, sym.failure)
                else:
                    self._guarded(check, lambda: self._sympy_entries(sym, results, f32))

        # batch 3, and the finite-difference rows
        if fd_point is None:
            for check in ("fd", "fd/f32")[:1 + self.f32]:
                self._fail(check, fd_failure)
            return self._rows()
        try:
            value, grads = _value_and_grad(results[fd_calls[0]], fd_point, spec.wrt)
            fd = {nm: self._differences(results, stencils[nm], plan[nm][1]) for nm in spec.wrt}
        except _ModuleFailure as e:
            for check in ("fd", "fd/f32")[:1 + self.f32]:
                self._fail(check, str(e))
            return self._rows()
        if not (np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads.values())):
            self.notes.append("fd: the loss or a gradient is not finite (inf or nan) at the checked point: "
                              "the spec's numbers overflow there, so finite differences cannot check it")
        scale = _scale(value, grads)
        got = {nm: np.array([_along(grads[nm], d) for d in plan[nm][0]]) for nm in spec.wrt}
        retry, calls = {}, []
        for nm in spec.wrt:
            _, rel = _compare(got[nm], fd[nm], scale, "fd")
            for j in np.flatnonzero(~(rel <= TOLERANCE["fd"][0])):
                retry[nm, j] = self._stencil(calls, fd_point, nm, plan[nm][0][j], plan[nm][1] / 100)
        if calls:
            results3 = self.child.evaluate(calls)
            for (nm, j), indices in retry.items():
                try:
                    again = self._differences(results3, [indices], plan[nm][1] / 100)[0]
                except _ModuleFailure:
                    continue
                _, r0 = _compare(got[nm][j], fd[nm][j], scale, "fd")
                _, r1 = _compare(got[nm][j], again, scale, "fd")
                if r1 < r0:
                    fd[nm][j] = again
        for nm in spec.wrt:
            self.entries.append((nm, fd_point[nm].shape, "fd", _compare(got[nm], fd[nm], scale, "fd")))
        if self.given is not None:
            self._guarded("spec", lambda: self._spec_entries(fd_point, fd_loss, value, grads, plan, scale))
        if self.f32:
            self._guarded("fd/f32", lambda: self._fd32_entries(results, fd_calls, fd_point, value,
                                                               grads, plan, fd))
        return self._rows()

    # -- the parts

    def _plan_sympy(self):
        spec, n, rng = self.small_spec, N_SYMPY, self.rng
        shapes = _shapes(spec, n)
        sizes = ", ".join(f"{nm} [{', '.join(map(str, s))}]" for nm, s in shapes.items())
        count = sum(math.prod(s) for s in shapes.values())
        if count > SYMBOLIC_LIMIT:
            self.notes.append(f"sympy: skipped: {count} entries at N={n} ({sizes}), more than "
                              f"{SYMBOLIC_LIMIT} to expand; finite differences check them")
            return None
        self.notes.append(f"sympy: the loss expanded at N={n}, {sizes}, every entry a symbol; "
                          f"{POINTS} random points")
        labels = _labels(spec, rng, n)
        limit = EXPANSION_LIMIT if self.narrow is not None else None
        try:
            evaluate = _deep(lambda: _expansion(spec, shapes, labels, n, limit), SYMPY_SECONDS)
        except _TooLarge as e:
            # an unrolled recurrence: its state, read whole at every step, multiplies the
            # expansion by its width per step; expanded again at width NARROW
            compiled, self.narrow = self.narrow, None
            self.child.files["small"] = _write_module(self.child.work / "narrow", compiled)
            self.small_spec = compiled.spec
            self.notes.pop()
            plan = self._plan_sympy()
            if plan is not None:
                self.notes[-1] += (f" (at width {NARROW}: at width {SMALL} one graph line expands to more than "
                                   f"{EXPANSION_LIMIT:,} operations, {e.key} of a recurrence over the "
                                   "token positions)")
            return plan
        except RecursionError:
            self.notes[-1] = ("sympy: skipped: the expansion nests too deeply for SymPy; "
                              "finite differences check it")
            return None
        except _OverBudget:
            self.notes[-1] = (f"sympy: skipped: expanding and differentiating the loss took more than "
                              f"{SYMPY_SECONDS:g} s; finite differences check it")
            return None
        pairs = [_candidates(spec, rng, n, labels, self.f32) for _ in range(POINTS)]
        return _Sympy(shapes, evaluate, pairs)

    def _at(self, calls, module, point, loss=True) -> list:
        """Add value_and_grad (and loss) at ``point``, in float64 and, for a float32
        module, in float32; returns their indices in ``calls``."""
        runs = [(point, True)] + ([(_as_float32(self.spec, point), False)] if self.f32 else [])
        start = len(calls)
        for p, float64 in runs:
            calls.append(_Call(module, "value_and_grad", p, float64))
            if loss:
                calls.append(_Call(module, "loss", p, float64))
        return list(range(start, len(calls)))

    def _sympy_entries(self, sym, results, f32) -> list:
        wrt, out = self.spec.wrt, []
        check_value, check = ("value/f32", "sympy/f32") if f32 else ("value", "sympy")
        for k, point in enumerate(sym.points):
            i = sym.calls[k][2 if f32 else 0]
            value, grads = _value_and_grad(results[i], point, wrt)
            loss = _loss(results[i + 1])
            ref_value, ref = sym.reference(k)
            scale = _scale(ref_value, ref if f32 else grads)
            out.append(("L", (), check_value, _compare([value, loss], ref_value, scale, check_value)))
            out += [(nm, sym.shapes[nm], check, _compare(grads[nm], ref[nm], scale, check)) for nm in wrt]
        return out

    def _fd_plan(self, point) -> dict:
        """Per name: the directions (a sample of entries, and one random direction
        through all of them: random signs, so that no entry can hide) and the step."""
        plan = {}
        for nm in self.spec.wrt:
            x = point[nm]
            directions = [int(i) for i in _sample(self.rng, x.size)]   # unit vectors, as indices
            random = self.rng.integers(0, 2, x.shape, dtype=np.int8).astype(np.float64)
            random *= 2 / math.sqrt(x.size)     # random signs, in place: one full-size array
            random -= 1 / math.sqrt(x.size)
            directions.append(random)
            plan[nm] = directions, STEP * max(1.0, float(np.max(np.abs(x), initial=0)))
        return plan

    def _stencil(self, calls, point, name, direction, h) -> list:
        """Add the loss at point + k h direction for the stencil's k; returns their indices."""
        start = len(calls)
        calls += [_Call("real", "loss", point, True, (name, direction, k * h)) for k in _STENCIL]
        return list(range(start, len(calls)))

    @staticmethod
    def _differences(results, stencils, h) -> np.ndarray:
        """d/dt loss(point + t direction) at t = 0, for each direction's stencil."""
        weights = _STENCIL.values()
        return np.array([sum(w * _loss(results[i]) for w, i in zip(weights, indices)) / (12 * h)
                         for indices in stencils])

    def _fd32_entries(self, results, indices, point, value64, grads64, plan, fd) -> list:
        """The float32 run against the float64 ones: its loss against the module's
        float64 loss, its gradient along each direction against the differences."""
        value, grads = _value_and_grad(results[indices[1]], point, self.spec.wrt)
        scale = _scale(value64, grads64)
        out = [("L", (), "value/f32", _compare(value, value64, scale, "value/f32"))]
        for nm in self.spec.wrt:
            got = [_along(grads[nm], d) for d in plan[nm][0]]
            out.append((nm, point[nm].shape, "fd/f32", _compare(got, fd[nm], scale, "fd/f32")))
        return out

    def _spec_entries(self, point, first, value, grads, plan, scale) -> list:
        """A module given for the spec, against the spec: its loss (both functions)
        against ``_Evaluator``'s, and its gradient along each name's random direction
        against the fourth-order difference of ``_Evaluator``'s loss (again with a
        step 100 times smaller when that disagrees: a kink)."""
        reference = _Evaluator(self.spec)
        out = [("L", (), "spec", _compare([value, _loss(first)], reference.loss(point), scale, "spec"))]
        for nm in self.spec.wrt:
            (*_, direction), h = plan[nm]
            got = _along(grads[nm], direction)
            errors = None
            for step in (h, h / 100):
                diff = sum(w * reference.loss(_moved(point, nm, direction, k * step))
                           for k, w in _STENCIL.items()) / (12 * step)
                found = _compare(got, diff, scale, "spec")
                if errors is None or found[1] < errors[1]:
                    errors = found
                if errors[1] <= TOLERANCE["spec"][0]:
                    break
            out.append((nm, point[nm].shape, "spec", errors))
        return out

    def _guarded(self, check, run) -> None:
        try:
            self.entries += run()
        except _ModuleFailure as e:
            self._fail(check, str(e))

    def _fail(self, check, note) -> None:
        shapes = {nm: d.shape for nm, d in {**self.spec.params, **self.spec.inputs}.items()}
        self.failed += [Row(nm, shapes[nm], check, math.nan, math.nan, False, note)
                        for nm in self.spec.wrt]

    def _rows(self) -> list:
        grouped = {}
        for name, shape, check, errors in self.entries:
            grouped.setdefault((name, check), (shape, []))[1].append(errors)
        return [_row(nm, shape, check, errors) for (nm, check), (shape, errors) in grouped.items()] \
            + self.failed


# ---------------------------------------------------------------------------
# The small instance


SMALL_TRIES = 4         # caps SMALL, SMALL + 1, ... tried for a small instance that compiles


def small_instance(spec: Spec, compiled=None):
    """The spec with every dimension shrunk to at most SMALL, compiled; or the spec
    itself (``compiled``, when given) when it is already small or no shrunk one
    compiles.  A shrunk instance may not compile where sizes must fit together
    (a convolution's or a pooling's windows larger than its shrunk input): the
    next few caps are tried before the spec itself is used.  A spec whose graph
    reads the positions of a token input by constant index (``e[5]`` of
    ``e = E[tokens]``) does not compile with fewer tokens: it is tried again with
    the token counts (and every dimension equal to one) kept, everything else shrunk."""
    data = spec.data   # parsed once, within the reader's limits (_shrink copies it)
    tries = [_shrink(data, cap) for cap in range(SMALL, SMALL + SMALL_TRIES)]
    tokens = {d.shape[0] for d in spec.inputs.values() if d.is_tokens}
    if tokens:
        tries.insert(1, _shrink(data, keep=tokens))   # the smallest instance first
    for small in tries:
        if small == data:
            break
        try:
            return compile(parse_spec(small, file=spec.file))
        except SpecError:
            continue
    return compiled if compiled is not None else compile(spec)


def _narrow_instance(spec: Spec, small: Spec):
    """For a spec whose small instance kept its token counts (its graph reads the
    positions of a sequence one by one: an unrolled recurrence, most likely), the
    instance with every other dimension NARROW (class counts 2), compiled; else None."""
    tokens = {d.shape[0] for d in spec.inputs.values() if d.is_tokens}
    if not tokens or not any(d.is_tokens and d.shape[0] in tokens for d in small.inputs.values()):
        return None
    try:
        return compile(parse_spec(_shrink(spec.data, NARROW, keep=tokens), file=spec.file))
    except SpecError:
        return None


def _shrink(data: dict, cap: int = SMALL, keep=frozenset()) -> dict:
    """Shrink every dimension d to min(d, cap), except those in ``keep``: equal
    dimensions stay equal, so shapes that matched (or broadcast) still do.  Class
    counts (and every dimension equal to one: an embedding's first axis is its
    tokens' classes) shrink to at least 2; the token counts of token inputs and the
    units and channels of ``layers:`` are dimensions too."""
    classes = {v["classes"] for v in data["inputs"].values() if isinstance(v, dict)}

    def small(d):
        return d if d in keep else min(d, max(cap, 2)) if d in classes else min(d, cap)

    def dims(shape):
        return [small(d) for d in shape]

    out = copy.deepcopy(data)
    for nm, v in out["inputs"].items():
        if isinstance(v, list):
            out["inputs"][nm] = dims(v)
        else:
            v["classes"] = small(v["classes"])
            if "shape" in v:
                v["shape"] = dims(v["shape"])
    for nm, v in (out.get("params") or {}).items():
        if isinstance(v, list):
            out["params"][nm] = dims(v)
        else:
            v["shape"] = dims(v["shape"])
    for layer in out.get("layers") or ():
        for kind in ("dense", "conv2d", "conv1d"):   # units, output channels
            if kind in layer:
                layer[kind] = small(layer[kind])
    return out


# ---------------------------------------------------------------------------
# Check 1's reference: the derivative of the full SymPy expansion


class _OverBudget(Exception):
    """The SymPy expansion took longer than its time budget."""


class _TooLarge(Exception):
    """One graph line's expansion has more than its limit of operations (``key``: the line)."""

    def __init__(self, key):
        super().__init__(key)
        self.key = key


def _tree_size(values, sizes: dict) -> int:
    """The operations of the SymPy expressions ``values`` counted as trees (each
    repeated subexpression once per occurrence: what an expansion without sharing
    would hold), memoized over distinct subexpressions in ``sizes``."""
    total = 0
    for root in values:
        stack = [root]
        while stack:
            e = stack[-1]
            if e in sizes:
                stack.pop()
                continue
            pending = [a for a in e.args if a not in sizes]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            sizes[e] = 1 + sum(sizes[a] for a in e.args)
        total += sizes[root]
    return total


def _deep(fn, seconds=None):
    """``fn()`` in a thread with a large stack and recursion limit: SymPy recurses
    once or more per level of an expression, and a deep network nests deeply.
    Raises _OverBudget when ``fn`` has not returned within ``seconds``."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            result["error"] = e

    old_stack, old_limit = threading.stack_size(STACK_BYTES), sys.getrecursionlimit()
    sys.setrecursionlimit(RECURSION_LIMIT)
    try:
        # a daemon: SymPy cannot be interrupted, so past the budget the thread is left
        # to finish (or to end with the process) and the check is skipped
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(seconds)
    finally:
        threading.stack_size(old_stack)
        sys.setrecursionlimit(old_limit)
    if worker.is_alive():
        raise _OverBudget(seconds)
    if "error" in result:
        raise result["error"]
    return result["value"]


def _diff(expr, symbols) -> list:
    """``[sp.diff(expr, s) for s in symbols]``, the chain rule applied once per distinct
    subexpression of ``expr``.

    The expansion is a tree whose repeated parts are one SymPy object: the state of
    a recurrence (``h1 = tanh(U @ h0 + ...)``, ``h2 = tanh(U @ h1 + ...)``) is read
    by every entry of the next one.  ``sp.diff`` differentiates each occurrence
    again, in time exponential in the number of steps; here each distinct
    subexpression is differentiated once per symbol (with SymPy's own derivative of
    each function: the same expressions ``sp.diff`` builds, shared)."""
    order, seen, stack = [], set(), [(expr, False)]
    while stack:   # the distinct subexpressions, each after its arguments
        e, done = stack.pop()
        if done:
            order.append(e)
        elif e not in seen:
            seen.add(e)
            stack.append((e, True))
            stack.extend((a, False) for a in e.args if a not in seen)
    free = {}
    for e in order:
        free[e] = frozenset([e]) if e.is_Symbol else frozenset().union(*(free[a] for a in e.args))
    out = []
    for s in symbols:
        d = {}
        for e in order:
            if s not in free[e]:
                d[e] = sp.S.Zero
            elif e == s:
                d[e] = sp.S.One
            elif e.is_Add:
                d[e] = sp.Add(*[d[a] for a in e.args])
            elif e.is_Mul:
                d[e] = sp.Add(*[sp.Mul(d[a], *e.args[:i], *e.args[i + 1:])
                                for i, a in enumerate(e.args) if d[a] != 0])
            else:   # f(args): the sum over its arguments of df/darg (SymPy's rule) * darg
                terms = []
                for i, a in enumerate(e.args):
                    if d[a] != 0:
                        terms.append(_partial(e.func, e.args, i).xreplace({_X: a}) * d[a])
                d[e] = sp.Add(*terms)
        out.append(d[expr])
    return out


_X = sp.Dummy("x", real=True)   # the argument a partial derivative is taken by


@functools.lru_cache(maxsize=4096)
def _partial(func, args, i):
    """d func(args) / d args[i], with ``_X`` standing for args[i] (SymPy's rule, once
    per function and position: tanh's is 1 - tanh(_X)**2 wherever tanh is read)."""
    return func(*args[:i], _X, *args[i + 1:]).diff(_X)


def _expansion(spec, shapes, labels, n, limit=None):
    """Expand the loss with a symbol for every entry of every float leaf and
    differentiate it by each entry of each WRT name.  Returns a function
    ``point -> (loss, {name: gradient})`` evaluating the result.  With ``limit``,
    raises _TooLarge as soon as one graph line expands to more operations (as a
    tree): before SymPy, whose queries walk the tree, spends exponential time on it."""
    leaves, symbols = {}, []
    for nm, shape in shapes.items():
        leaves[nm] = np.empty(shape, dtype=object)
        for idx in np.ndindex(*shape):
            # named _e0, _e1, ...: Python identifiers, so lambdify need not replace each
            # one by a Dummy in every expression (a walk of them all per symbol)
            leaves[nm][idx] = sp.Symbol(f"_e{len(symbols)}", real=True)
            symbols.append(leaves[nm][idx])
    guard = None
    if limit is not None:
        sizes: dict = {}

        def guard(key, value):
            entries = [sp.sympify(v) for v in np.asarray(value, dtype=object).reshape(-1)]
            if _tree_size(entries, sizes) > limit:
                raise _TooLarge(key)
    loss = sp.sympify(_Expander(spec).loss(leaves, labels, n, guard))
    derivatives = _diff(loss, [s for nm in spec.wrt for s in leaves[nm].reshape(-1)])
    f = sp.lambdify([symbols], [loss, *derivatives], modules="numpy", cse=True, dummify=False,
                    use_imps=False, docstring_limit=0)   # no implemented functions; no docstring

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


@dataclass(frozen=True)
class _Tokens:
    """The integer tokens of one example, and their number of classes."""

    values: tuple
    classes: int


def _onehot(lab, one, zero):
    """onehot(label): [K]; onehot(tokens): [T, K] (rows of ``one`` and ``zero``)."""
    if isinstance(lab, _Tokens):
        return [[one if k == v else zero for k in range(lab.classes)] for v in lab.values]
    return [one if k == lab.value else zero for k in range(lab.classes)]


def _obj(x) -> np.ndarray:
    return np.asarray(x, dtype=object)


def _elementwise(fn):
    """``fn`` of SymPy scalars over object arrays, broadcast as NumPy broadcasts:
    the tensor arguments (maximum's two), then the constants (leaky_relu's slope,
    clip's lo and hi), each a 0-d array of one SymPy number."""
    def apply(*args):
        return _obj(np.frompyfunc(fn, len(args), 1)(*(_obj(a) for a in args)))
    return apply


def _sum(x, axis=None, keepdims=False):
    if axis is None:
        return _obj(sp.Add(*x.reshape(-1)))
    return _obj(np.sum(x, axis=axis, keepdims=keepdims))


def _max_of(values):
    """The largest of ``values``, pairwise as max(a, b) = (a + b + |a - b|) / 2:
    exact, and far cheaper for SymPy to differentiate than a Max of many terms.
    The pairs form a balanced tree: each level doubles the expression (a and b
    stand twice in it), so its depth, log2 of the count, bounds the size (a
    chain over a pooling's 3 x 3 window nested 8 deep took SymPy minutes)."""
    values = list(values)
    while len(values) > 1:
        values = [(a + b + sp.Abs(a - b)) / 2 for a, b in zip(values[::2], values[1::2])] + \
            ([values[-1]] if len(values) % 2 else [])
    return values[0]


def _max(x, axis=None):
    if axis is None:
        return _obj(_max_of(x.reshape(-1)))
    moved = np.moveaxis(x, axis, -1)
    return _obj([_max_of(r) for r in moved.reshape(-1, moved.shape[-1])]).reshape(moved.shape[:-1])


def _logsumexp(z, keepdims=False):
    return _elementwise(sp.log)(_sum(_elementwise(sp.exp)(z), -1, keepdims))


def _pads(kernel, padding) -> list:
    """(before, after) per axis: an integer on both sides; 'same' (stride 1) the
    kernel's size less one, the extra one after, as PyTorch; 'valid' none."""
    if padding == "same":
        return [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel]
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    return [(padding, padding)] * len(kernel)


def _windows_of(x, kernel, stride, pads):
    """{position: the window of x there}, x [C, *S] zero-padded, windows [C, *kernel]
    moved by stride: the definition, one window at a time (small sizes only)."""
    padded = np.pad(x, [(0, 0), *pads])
    positions = [(s - k) // stride + 1 for s, k in zip(padded.shape[1:], kernel)]
    return {p: padded[(slice(None), *(slice(i * stride, i * stride + k) for i, k in zip(p, kernel)))]
            for p in np.ndindex(*positions)}, positions


def _conv(x, w, stride=1, padding=0):
    """conv1d / conv2d as PyTorch defines them (a cross-correlation): out[o, p] is the
    sum over c and the kernel's offsets of w[o, c, k] * x_padded[c, p*stride + k]."""
    kernel = w.shape[2:]
    windows, positions = _windows_of(x, kernel, stride, _pads(kernel, padding))
    out = np.empty((w.shape[0], *positions), dtype=x.dtype if x.dtype == object else np.float64)
    for p, window in windows.items():
        for o in range(w.shape[0]):
            out[(o, *p)] = np.sum(w[o] * window)
    return out


def _pool(reduce):
    """max_pool2d / avg_pool2d: each k x k window of each channel, moved by stride
    (default k), reduced; the windows that do not fit are dropped."""
    def pool(x, k, stride=None):
        k = int(np.asarray(k, dtype=object)[()])
        windows, positions = _windows_of(x, (k, k), stride or k, [(0, 0), (0, 0)])
        out = np.empty((x.shape[0], *positions), dtype=x.dtype if x.dtype == object else np.float64)
        for p, window in windows.items():
            for c in range(x.shape[0]):
                out[(c, *p)] = reduce(window[c].reshape(-1))
        return out
    return pool


def _var(x, axis=None):
    """The population variance as the mean of the squares less the square of the
    mean (exact in SymPy; the compiler computes it in two passes)."""
    n = sp.Integer(x.size if axis is None else x.shape[axis])
    return _obj(_sum(x * x, axis) / n - (_sum(x, axis) / n) ** 2)


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
    "erf": sp.erf,
    "log1p": lambda x: sp.log(1 + x),
    "expm1": lambda x: sp.exp(x) - 1,
    "atan": sp.atan,
    "leaky_relu": lambda x, slope=sp.Rational(1, 100): sp.Max(x, 0) + slope * sp.Min(x, 0),
    "elu": lambda x, alpha=1: sp.Max(x, 0) + alpha * (sp.exp(sp.Min(x, 0)) - 1),
    "silu": lambda x: x / (1 + sp.exp(-x)),
    "gelu": lambda x: x * (1 + sp.erf(x / sp.sqrt(2))) / 2,
    "maximum": sp.Max,   # not (a + b + |a - b|)/2: maximum(y, 2**63) would lose y in float64
    "minimum": sp.Min,
    "clip": lambda x, lo, hi: sp.Min(sp.Max(x, lo), hi),
}

_FUNCTIONS = {
    **{nm: _elementwise(fn) for nm, fn in _ELEMENTWISE.items()},
    "sum": _sum,
    "mean": lambda x, axis=None: _sum(x, axis) / sp.Integer(x.size if axis is None else x.shape[axis]),
    "max": _max,
    "var": _var,
    "std": lambda x, axis=None: _elementwise(sp.sqrt)(_var(x, axis)),
    "softmax": lambda z: _elementwise(sp.exp)(z) / _sum(_elementwise(sp.exp)(z), -1, True),
    "log_softmax": lambda z: z - _logsumexp(z, True),
    "logsumexp": _logsumexp,
    "onehot": lambda lab: _obj(_onehot(lab, sp.Integer(1), sp.Integer(0))),
    "dot": lambda a, b: _sum(a * b),
    "cross_entropy": lambda p, lab: _obj(-sp.log(p[lab.value])),
    "softmax_cross_entropy": lambda z, lab: _logsumexp(z) - z[lab.value],
    "reshape": lambda x, shape: _obj(np.reshape(x, shape)),
    "flatten": lambda x: _obj(np.ravel(x)),
    "concat": lambda *xs, axis=0: _obj(np.concatenate(xs, axis=axis)),
    "stack": lambda *xs, axis=0: _obj(np.stack(xs, axis=axis)),
    "conv1d": _conv,
    "conv2d": _conv,
    "max_pool2d": _pool(lambda v: _max_of(list(v))),
    "avg_pool2d": _pool(lambda v: sp.Add(*v) / len(v)),
}

def _integer(node) -> int:
    """An integer constant as the spec writes it: ``2`` or ``-2``."""
    return -node.operand.value if isinstance(node, ast.UnaryOp) else node.value


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

    functions, binary, wrap = _FUNCTIONS, _BINARY, staticmethod(_obj)

    def __init__(self, spec: Spec):
        self.spec = spec

    @staticmethod
    def constant(value):
        return _obj(sp.Rational(repr(value)) if isinstance(value, float) else sp.Integer(value))

    @staticmethod
    def total(per_example):
        return sp.Add(*per_example)

    def loss(self, leaves: dict, labels: dict, n: int, after_line=None):
        """The batch loss as one SymPy expression; ``after_line(key, value)`` is called
        with each graph line's value as it is made."""
        per_example = []
        for k in range(n):
            env = {nm: self.wrap(leaves[nm][k]) for nm, d in self.spec.inputs.items() if not d.is_label}
            env.update({nm: _Tokens(tuple(int(v) for v in labels[nm][k]), d.classes) if d.is_tokens
                        else _Label(int(labels[nm][k]), d.classes)
                        for nm, d in self.spec.inputs.items() if d.is_label})
            env.update({nm: leaves[nm] for nm in self.spec.params})
            for nm, expr in self.spec.graph:
                env[nm] = self.eval(expr.tree, env)
                if after_line is not None:
                    after_line(expr.key, env[nm])
            per_example.append(self.wrap(self.eval(self.spec.loss.tree, env))[()])
        total = self.total(per_example)
        return total / n if self.spec.reduction == "mean" else total

    def eval(self, t, env):
        if isinstance(t, ast.Constant):
            return self.constant(t.value)
        if isinstance(t, ast.Name):
            return env[t.id]
        if isinstance(t, ast.UnaryOp):
            v = self.eval(t.operand, env)
            return self.wrap(-v) if isinstance(t.op, ast.USub) else v
        if isinstance(t, ast.BinOp):
            return self.wrap(self.binary[type(t.op)](self.eval(t.left, env), self.eval(t.right, env)))
        if isinstance(t, ast.Attribute):   # .T, the only attribute of the language
            return self.eval(t.value, env).T
        if isinstance(t, ast.Subscript):   # v[i], v[2:5], X[:, 0:3], X[0, 1:3]; E[tokens], E[label]
            i = t.slice
            if isinstance(i, ast.Name):   # the rows of E at the example's tokens (or label)
                picked = env[i.id]
                rows = self.eval(t.value, env)
                if isinstance(picked, _Tokens):
                    return self.wrap(np.stack([rows[v] for v in picked.values]))
                return self.wrap(rows[picked.value])
            items = i.elts if isinstance(i, ast.Tuple) else [i]     # NumPy's basic indexing
            index = tuple(slice(*(None if b is None else _integer(b) for b in (e.lower, e.upper, e.step)))
                          if isinstance(e, ast.Slice) else _integer(e) for e in items)
            return self.wrap(self.eval(t.value, env)[index])
        if isinstance(t, ast.Call):
            # a list argument is a shape (reshape's); a keyword is an integer (axis=, stride=,
            # padding=) or a padding mode
            args = [tuple(_integer(e) for e in a.elts) if isinstance(a, ast.List) else self.eval(a, env)
                    for a in t.args]
            kwargs = {}
            for kw in t.keywords:
                v = kw.value
                kwargs[kw.arg] = v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) \
                    else _integer(v)
            return self.functions[t.func.id](*args, **kwargs)
        raise TypeError(f"unexpected {type(t).__name__} in a checked spec")


# The same definitions over float64 NumPy arrays, for ``_Evaluator``: written from
# the language's definition (the max subtracted in softmax and logsumexp is part
# of evaluating them in floating point), sharing nothing with the compiler.
def _nlogsumexp(z, keepdims=False):
    m = np.max(z, axis=-1, keepdims=True)
    out = m + np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))
    return out if keepdims else out[..., 0]


def _nsoftmax(z):
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


# erf in float64 for the interpreter (verify is no generated code: math.erf will do)
_nerf = np.vectorize(math.erf, otypes=[np.float64])

_NUMERIC = {
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0.0),
    "exp": np.exp,
    "log": np.log,
    "sin": np.sin,
    "cos": np.cos,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "softplus": lambda x: np.logaddexp(0.0, x),
    "square": np.square,
    "erf": _nerf,
    "log1p": np.log1p,
    "expm1": np.expm1,
    "atan": np.arctan,
    "leaky_relu": lambda x, slope=0.01: np.where(x > 0, x, slope * x),
    "elu": lambda x, alpha=1.0: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: x * (1 + _nerf(x / math.sqrt(2))) / 2,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "clip": lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
    "sum": lambda x, axis=None: np.sum(x, axis=axis),
    "mean": lambda x, axis=None: np.mean(x, axis=axis),
    "max": lambda x, axis=None: np.max(x, axis=axis),
    "var": lambda x, axis=None: np.var(x, axis=axis),
    "std": lambda x, axis=None: np.std(x, axis=axis),
    "softmax": _nsoftmax,
    "log_softmax": lambda z: z - _nlogsumexp(z, True),
    "logsumexp": _nlogsumexp,
    "onehot": lambda lab: np.array(_onehot(lab, 1.0, 0.0), dtype=np.float64),
    "dot": lambda a, b: np.sum(a * b),
    "cross_entropy": lambda p, lab: -np.log(p[lab.value]),
    "softmax_cross_entropy": lambda z, lab: _nlogsumexp(z) - z[lab.value],
    "reshape": np.reshape,
    "flatten": np.ravel,
    "concat": lambda *xs, axis=0: np.concatenate(xs, axis=axis),
    "stack": lambda *xs, axis=0: np.stack(xs, axis=axis),
    "conv1d": _conv,
    "conv2d": _conv,
    "max_pool2d": _pool(np.max),
    "avg_pool2d": _pool(np.mean),
}


def _float(x):
    return np.asarray(x, dtype=np.float64)


class _Evaluator(_Expander):
    """``_Expander``'s interpreter over float64 NumPy arrays: the loss's value at a
    point of the real sizes (no derivative of any kind), for the ``spec`` check of
    a module given with ``--module``.  It costs about one forward pass."""

    functions, binary, wrap = _NUMERIC, {**_BINARY, ast.MatMult: np.matmul}, staticmethod(_float)

    @staticmethod
    def constant(value):
        return np.float64(value)

    @staticmethod
    def total(per_example):
        return float(np.sum(per_example))

    def loss(self, point: dict) -> float:
        """The batch loss at ``point`` (params, inputs with the batch axis, labels)."""
        inputs = self.spec.inputs
        n = len(point[next(iter(inputs))])
        labels = {nm: point[nm] for nm, d in inputs.items() if d.is_label}
        return float(super().loss(point, labels, n))


