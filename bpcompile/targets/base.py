"""What every target provides, and what the compiler checks of it.

A target renders the three programs of a spec (``predict``, ``loss``,
``value_and_grad``: ``ir/program.py``) to files.  Its printer lowers each kernel
op through a method registered with ``@lowers(op)``; the table of those methods
is checked against every kernel before anything is printed, so an op the target
lacks fails at compile time with one line naming the op and the target, never
as generated code that breaks when it runs.  Elementwise math is printed by a
SymPy printer; a function the printer cannot print fails the same way.
"""

from __future__ import annotations

import functools

import sympy as sp

from ..errors import SpecError


class Code(str):
    """Text that is target source by construction: printed from validated names,
    numbers and the generator's own words, or escaped by the filters below.

    A target's templates accept nothing else: every ``{{ field }}`` must be Code
    (or a number), so a field of spec text (the spec, its file name, an expression
    as written) cannot reach the module without going through escape.py.
    """


class UnsupportedOp(SpecError):
    """A spec uses an op the chosen target has no lowering for."""


def lowers(*ops):
    """Register a printer method as the lowering of ``ops`` (kernel op names)."""
    def mark(method):
        method.lowers = ops
        return method
    return mark


@functools.lru_cache(maxsize=None)
def lowering_table(cls) -> dict:
    """op -> method name, for a printer class whose methods carry ``@lowers`` (once
    per class: the printers dispatch every kernel through it)."""
    table = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            for op in getattr(value, "lowers", ()):
                table[op] = attr
    return table


class Target:
    """A code generation target.  Subclasses set ``name`` and ``printer`` (the class
    whose ``@lowers`` methods print kernels), and implement ``main_file`` (and
    ``entry_file`` when a loader is imported instead), ``print_expr`` (elementwise
    math in the target's SymPy printer) and ``render``."""

    name: str = ""
    printer: type = object
    # after import, the module needs nothing on disk (Compiled.load removes its
    # directory at once); else the directory lives as long as the module
    standalone: bool = True

    def main_file(self, spec_name: str) -> str:
        """The file ``Compiled.source`` holds and ``Compiled.write`` returns."""
        raise NotImplementedError

    def entry_file(self, spec_name: str) -> str:
        """The Python file a caller imports (the module itself, or a loader)."""
        return self.main_file(spec_name)

    def render(self, low, adj, programs, version: str) -> dict:
        """{filename: text} for the spec ``low`` (its programs already built)."""
        raise NotImplementedError

    def print_expr(self, expr) -> str:
        """``expr`` printed as this target's elementwise code (raises when it cannot)."""
        raise NotImplementedError

    # -- the check before printing --------------------------------------------
    def check(self, programs: dict) -> None:
        """Every kernel op has a lowering here, every function of an elementwise
        kernel a printing; else UnsupportedOp naming the op and this target."""
        table = lowering_table(self.printer)
        seen = set()
        for program in programs.values():
            for k in program.kernels:
                if k.op not in table:
                    raise UnsupportedOp(f"the {self.name} target has no lowering for the op '{k.op}'")
                if k.op != "map":
                    continue
                temps, expr = k.attrs
                for e in [expr, *(e for _, e in temps)]:
                    for fn in e.atoms(sp.Function):
                        if type(fn) in seen:
                            continue
                        seen.add(type(fn))
                        self.check_function(type(fn))

    def check_function(self, fn) -> None:
        """UnsupportedOp unless this target prints the SymPy function ``fn``."""
        try:
            self.print_expr(_sample_call(fn))
        except Exception as e:   # SymPy's PrintMethodNotImplementedError, or a printer's own
            raise UnsupportedOp(f"the {self.name} target cannot print the function "
                                f"'{fn.__name__}' ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _sample_call(fn):
    """``fn`` applied to symbols: the fewest arguments (one at least, at most three)
    that it takes and that leave it unevaluated (``Max(a)`` is ``a``).  SymPy's
    ``nargs`` is a set, the infinite Naturals0 for a function that declares none."""
    args = [sp.Symbol(f"_a{i}", real=True) for i in range(3)]
    nargs = getattr(fn, "nargs", None)
    first = None
    for k in range(1, 4):
        try:
            if nargs is not None and k not in nargs:
                continue
            e = fn(*args[:k])
        except (TypeError, ValueError):
            continue
        if isinstance(e, fn):
            return e
        first = e if first is None else first
    return first if first is not None else fn(args[0])


@functools.lru_cache(maxsize=None)
def template_environment(folder: str, finalize):
    """The Jinja2 environment of a target's templates: its own folder first, then
    ``targets/templates`` (what the Python files of every target share).  Every
    field goes through ``finalize``, which refuses text no escaping filter made.

    One environment per target and process: Jinja2 compiles each template once
    and keeps it (compiling them took a third of a small spec's compile time)."""
    from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined
    loader = ChoiceLoader([PackageLoader("bpcompile", f"targets/{folder}"),
                           PackageLoader("bpcompile", "targets/templates")])
    return Environment(loader=loader, undefined=StrictUndefined, keep_trailing_newline=True,
                       trim_blocks=True, lstrip_blocks=False, autoescape=False, finalize=finalize)
