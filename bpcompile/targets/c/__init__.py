"""The C target: ``<name>.c`` and ``<name>.h`` (standalone C99, libm only: the
kernels, the three entry points over a caller-provided workspace) and
``<name>_c.py``, a loader with the NumPy module's API that builds the .c with the
system C compiler and calls it through ctypes.

``printer.py`` is C as it differs from the C-like base (``clike/``), which lowers
each kernel; ``module.c.j2``, ``module.h.j2`` and ``loader.py.j2`` are the files
around them.
"""

from __future__ import annotations

from ..base import Target
from ..clike import FunctionPrinter
from . import printer


class CTarget(Target):
    name = "c"
    printer = FunctionPrinter
    standalone = False   # the loader builds the .c (and its .h) beside it on first use

    def main_file(self, spec_name: str) -> str:
        return f"{spec_name}.c"

    def entry_file(self, spec_name: str) -> str:
        return f"{spec_name}_c.py"

    def print_expr(self, expr) -> str:
        return printer.CExprPrinter("float64", {}).doprint(expr)

    def render(self, low, adj, programs, version: str) -> dict:
        self.check(programs)
        return printer.render(low, adj, programs, version)


TARGET = CTarget()
