"""bpcompile: a compiler for backpropagation.

    spec (YAML) -> graph (networkx) -> adjoints (reverse mode, SymPy, CSE)
                -> program (kernels) -> source (NumPy module, via Jinja2)
"""

__version__ = "0.1.0"

from .errors import SpecError  # noqa: E402

# The compiler (SymPy, NetworkX, Jinja2: ~0.5 s and ~50 MB) is imported on first
# use, not by ``import bpcompile``: a Dask worker that runs bpcompile.dask's tasks
# imports the package but never compiles.  verify and Report likewise: compiling
# needs neither.
_LAZY = {"Compiled": ".compiler", "compile": ".compiler", "Spec": ".frontend.spec",
         "load_spec": ".frontend.spec", "parse_spec": ".frontend.spec",
         "verify": ".tools.verify", "Report": ".tools.verify"}


def __getattr__(name):
    import importlib
    import importlib.util
    where = _LAZY.get(name)
    if where is None:
        # a submodule (bpcompile.ops, bpcompile.targets, ...), as when the compiler was imported eagerly
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'bpcompile' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    if where != ".tools.verify":     # bpcompile.verify stays a function, not the submodule
        globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Compiled", "Report", "Spec", "SpecError", "compile", "load_spec", "parse_spec", "verify",
           "__version__"]
