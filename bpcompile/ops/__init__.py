"""The operations: what each op computes, its shape rule, its derivative; and
reverse mode over them (``adjoint.py``).

* ``elementwise.py``: each elementwise op one declaration (a SymPy function with
  its printing, and its record in ``ELEMENTWISE``);
* ``structural.py``: contraction, reductions, indexing: one record each (shape
  rule, VJP, text and picture forms), with ``notation.py``, how they read;
* ``functions.py``: the spec language's structural functions, one record each.
"""

from .elementwise import (
    BINARY, ELEMENTWISE, INTERNAL, OUT, Elementwise, arg_symbol, equal, local_derivative, numpy_inplace,
    record_of, relu, sigmoid, softplus, stable_log, step,
)
from .functions import INTEGER, LABEL, SPEC_FUNCTIONS, STRUCTURAL_FUNCTIONS, TENSOR, CallSite, SpecFunction
from .structural import (
    LEAF_OPS, STRUCTURAL_OPS, Contraction, GemmForm, Scatter, StructuralOp, broadcast_shapes,
    contraction_shape, gemm_form, is_index, key_text, matmul_contraction, normalize_axis, reduce_shape, shape_text,
    slice_key, sliced_shape, vjp_rule,
)

# Every function name of the spec language: the elementwise ones, then the structural.
FUNCTIONS = tuple(ELEMENTWISE) + STRUCTURAL_FUNCTIONS

__all__ = ["BINARY", "ELEMENTWISE", "Elementwise", "FUNCTIONS", "INTEGER", "INTERNAL", "LABEL", "LEAF_OPS", "OUT", "SPEC_FUNCTIONS",
           "STRUCTURAL_FUNCTIONS", "STRUCTURAL_OPS", "TENSOR", "CallSite", "Contraction", "GemmForm", "Scatter",
           "SpecFunction", "StructuralOp", "arg_symbol", "broadcast_shapes", "contraction_shape", "equal", "gemm_form",
           "is_index", "key_text", "local_derivative", "matmul_contraction", "normalize_axis", "numpy_inplace",
           "record_of", "reduce_shape", "relu", "shape_text", "sigmoid", "slice_key", "sliced_shape", "softplus",
           "stable_log", "step", "vjp_rule"]
