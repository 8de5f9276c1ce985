"""The NumPy target: one standalone Python module, ``<name>.py``, importing numpy only.

``printer.py`` lowers each kernel to NumPy lines; ``module.py.j2`` is the file
around them (with ``targets/templates``: the argument checks and optimizer steps
every Python file shares).
"""

from __future__ import annotations

from ..base import Target
from . import printer


class NumpyTarget(Target):
    name = "numpy"
    printer = printer.NumpyPrinter
    standalone = True

    def main_file(self, spec_name: str) -> str:
        return f"{spec_name}.py"

    def print_expr(self, expr) -> str:
        return printer.ExprPrinter({}).doprint(expr)

    def render(self, low, adj, programs, version: str) -> dict:
        self.check(programs)
        return {self.main_file(low.spec.name): printer.render(low, adj, programs, version)}


TARGET = NumpyTarget()
