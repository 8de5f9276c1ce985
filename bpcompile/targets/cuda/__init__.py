"""The CUDA target: ``<name>.cu`` (kernels, cuBLAS GEMMs, one workspace) and
``<name>_cuda.py``, a loader with the NumPy module's API that builds the .cu with
nvcc (or, for tests without a GPU, with a host compiler and ``cuda_emulation.h``).

``printer.py`` is CUDA as it differs from the C-like base (``clike/``), which
lowers each kernel; ``module.cu.j2`` and ``loader.py.j2``
are the files around them.
"""

from __future__ import annotations

from pathlib import Path

from ..base import Target
from ..clike import FunctionPrinter
from . import printer

EMULATION_HEADER = Path(__file__).resolve().parent / "cuda_emulation.h"


class CudaTarget(Target):
    name = "cuda"
    printer = FunctionPrinter
    standalone = False   # the loader builds the .cu beside it on first use

    def main_file(self, spec_name: str) -> str:
        return f"{spec_name}.cu"

    def entry_file(self, spec_name: str) -> str:
        return f"{spec_name}_cuda.py"

    def print_expr(self, expr) -> str:
        return printer.CudaExprPrinter("float64", {}).doprint(expr)

    def render(self, low, adj, programs, version: str) -> dict:
        self.check(programs)
        return printer.render(low, adj, programs, version)


TARGET = CudaTarget()
