"""bpcompile: a compiler for backpropagation.

    spec (YAML) -> graph (networkx) -> adjoints (reverse mode, SymPy, CSE)
                -> program (kernels) -> source (NumPy module, via Jinja2)
"""

__version__ = "0.1.0"

from .compiler import Compiled, compile  # noqa: E402,A004
from .errors import SpecError  # noqa: E402
from .frontend.spec import Spec, load_spec, parse_spec  # noqa: E402
from .tools.verify import Report, verify  # noqa: E402

__all__ = ["Compiled", "Report", "Spec", "SpecError", "compile", "load_spec", "parse_spec", "verify",
           "__version__"]
