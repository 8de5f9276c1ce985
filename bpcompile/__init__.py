"""bpcompile: a compiler for backpropagation.

    spec (YAML) -> graph (networkx) -> adjoints (reverse mode, SymPy, CSE)
                -> program (kernels) -> source (NumPy module, via Jinja2)
"""

__version__ = "0.1.0"

from .compiler import Compiled, compile  # noqa: E402,A004
from .errors import SpecError  # noqa: E402
from .frontend.spec import Spec, load_spec, parse_spec  # noqa: E402


def __getattr__(name):
    # verify and Report are imported on first use: compiling needs neither
    if name in ("verify", "Report"):
        from .tools import verify as module
        return getattr(module, name)
    raise AttributeError(f"module 'bpcompile' has no attribute {name!r}")

__all__ = ["Compiled", "Report", "Spec", "SpecError", "compile", "load_spec", "parse_spec", "verify",
           "__version__"]
