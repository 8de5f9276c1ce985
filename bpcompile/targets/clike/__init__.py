"""What C-like targets share (CUDA and C): a target states its language as a
``CStyle`` (``language.py``: how it differs from plain C99, with the C99 printer
of elementwise math, floating literals, index arithmetic and the check of a
generated C file), and the lowering here prints the kernels and the three entry
points (predict, loss, value_and_grad) in it.

``FunctionPrinter`` prints one entry point and its kernels; it is made of parts,
by what they do:

* ``elementwise.py``: fused elementwise ``map`` kernels and the index kernels
  (take, scatter_add, onehot, transpose, slice, unslice, concat, broadcast), copy, zeros,
  reshape;
* ``reductions.py``: reduce and sum_to, and the reduction kernel they share with
  contractions;
* ``contractions.py``: contract, as a GEMM when it is one and the language has
  one, else as a reduction;
* ``windows.py``: windows and unwindow (im2col and col2im), one element kernel each;
* ``host.py``: storage (the caller's arrays, the workspace's buffers, aliases),
  reading a value inside a kernel, the entry point around the kernels and the
  workspace layout.

Each kernel op is lowered by the method registered for it with ``@lowers(op)``;
``Target.check`` reads that table before anything is printed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ... import escape
from ..base import Code, template_environment

from .contractions import Contractions, Gemm
from .elementwise import ElementwiseKernels
from .host import Storage, host_function, host_scalars, signature_parts, workspace_layout
from .language import (CExprPrinter, CStyle, broadcast_strides, check_c_source, count_expr, full_dims, ident,
                       line_comment, offset, real_literal, row_strides, shape_text, size_of, token)
from .module import CModule, KernelTable
from .reductions import Reductions
from .windows import WindowKernels

__all__ = ["CExprPrinter", "CModule", "CStyle", "FunctionPrinter", "Gemm", "KernelTable", "PrintedModule",
           "broadcast_strides", "check_c_source", "count_expr", "full_dims", "host_scalars", "ident", "line_comment",
           "offset", "print_module", "real_literal", "row_strides", "shape_text", "signature_parts", "size_of",
           "token"]

FUNCTIONS = ("predict", "loss", "value_and_grad")


class FunctionPrinter(ElementwiseKernels, Reductions, Contractions, WindowKernels, Storage):
    """One entry point (predict, loss or value_and_grad) and its kernels."""


@dataclass
class PrintedModule:
    """What a target's template needs of a module printed in its language."""
    mod: CModule
    functions: dict     # predict / loss / value_and_grad -> the C text of the entry point
    printers: dict      # the same -> its FunctionPrinter (storage, uses)
    structs: list       # members of <name>_workspace
    layout: list        # lines of <name>_layout

    @property
    def kernels(self) -> list:
        """The kernel definitions, in the order of first use."""
        return self.mod.kernels.defs


def print_module(low, programs: dict, lang: CStyle, printer=FunctionPrinter) -> PrintedModule:
    """The kernels, the three entry points and the workspace of a spec, in ``lang``."""
    mod = CModule(low, programs, lang)
    functions, printers = {}, {}
    for fn in FUNCTIONS:
        functions[fn], printers[fn] = host_function(mod, fn, programs[fn], printer)
    structs, layout = workspace_layout(mod, printers)
    return PrintedModule(mod, functions, printers, structs, layout)


# ---------------------------------------------------------------------------
# Templates: every field escaped by construction


def _finalize(value):
    """Jinja2 ``finalize``: a field must be ``Code`` (what an escaping filter or the
    printer made) or an int; a bare string is refused."""
    if isinstance(value, Code) or type(value) in (int, bool):
        return value
    raise TypeError(f"a template field ({type(value).__name__} {str(value)[:60]!r}) is printed without "
                    "an escaping filter (c_comment, c_str, py_docstring, py_comment, py_str)")


def environment(folder: str):
    """The Jinja2 environment of a C-like target's templates (``targets/<folder>``).

    Filters, one per place spec text can stand: ``c_comment`` (after ``//``),
    ``c_str`` (a C string literal), ``py_docstring`` (inside a docstring),
    ``py_comment`` (after ``#``), ``py_str`` (a Python string literal).  Whatever
    else a template prints must be ``Code`` or an int: ``_finalize`` refuses a bare
    string."""
    env = template_environment(folder, _finalize)
    for fn in (escape.c_comment, escape.c_str, escape.py_docstring, escape.py_comment, escape.py_str):
        env.filters[fn.__name__] = lambda text, fn=fn: Code(fn(str(text)))
    return env
