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

__all__ = ["DEFAULT", "Target", "UnsupportedOp", "get", "names", "summary"]

# name -> (module defining ``TARGET``, what it writes), in the order the command
# line lists them; the summary is here so that ``--help`` imports no printer
_REGISTRY = {
    "numpy": ("bpcompile.targets.numpy", "a standalone NumPy module"),
    "cuda": ("bpcompile.targets.cuda", "a CUDA source file and a Python loader"),
    "c": ("bpcompile.targets.c", "standalone C99 source, header and a Python loader"),
}
DEFAULT = "numpy"


def names() -> tuple:
    """The registered targets' names."""
    return tuple(_REGISTRY)


def summary(name: str) -> str:
    """What the target called ``name`` writes, in a few words."""
    return _entry(name)[1]


def get(name: str) -> Target:
    """The target called ``name``; ValueError naming the choices for any other."""
    target = importlib.import_module(_entry(name)[0]).TARGET
    assert target.name == name, f"targets/__init__.py registers {target.name!r} as {name!r}"
    return target


def _entry(name):
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(_REGISTRY)}")
    return entry
