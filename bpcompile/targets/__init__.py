"""Code generation targets: one renderer each, registered in one table.

A target is a ``Target`` (``base.py``): ``render(low, adj, programs, version)``
returns ``{filename: text}``; it says which file is its main output and which
Python file a caller imports.  The compiler, the command line and ``Compiled``
know targets only through ``get(name)`` and ``names()``: adding one is a folder
here (its printer and its templates) and one line in ``_REGISTRY``.

Each target's module is imported on first use, so a NumPy compile never loads
the CUDA printer.
"""

from __future__ import annotations

import importlib

from .base import Target, UnsupportedOp

__all__ = ["DEFAULT", "Target", "UnsupportedOp", "get", "names"]

# name -> module defining ``TARGET``, in the order the command line lists them
_REGISTRY = {
    "numpy": "bpcompile.targets.numpy",
    "cuda": "bpcompile.targets.cuda",
}
DEFAULT = "numpy"


def names() -> tuple:
    """The registered targets' names."""
    return tuple(_REGISTRY)


def get(name: str) -> Target:
    """The target called ``name``; ValueError naming the choices for any other."""
    module = _REGISTRY.get(name) if isinstance(name, str) else None
    if module is None:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(_REGISTRY)}")
    return importlib.import_module(module).TARGET
