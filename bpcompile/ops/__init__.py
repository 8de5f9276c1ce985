"""The operations: what each op computes, its shape rule, its derivative; and
reverse mode over them (``adjoint.py``).

* ``elementwise.py``: each elementwise op one declaration (a SymPy function with
  its printing, and its record in ``ELEMENTWISE``);
* ``structural.py``: contraction, reductions, indexing: shape and VJP rules.
"""

from .elementwise import (
    BINARY, ELEMENTWISE, FUNCTIONS, INTERNAL, OUT, STRUCTURAL_FUNCTIONS, Elementwise, arg_symbol, equal,
    local_derivative, numpy_inplace, record_of, relu, sigmoid, softplus, stable_log, step,
)
from .structural import (
    VJP, Contraction, GemmForm, Scatter, broadcast_shapes, contraction_shape, gemm_form,
    matmul_contraction, normalize_axis, reduce_shape,
)

__all__ = ["BINARY", "ELEMENTWISE", "FUNCTIONS", "INTERNAL", "OUT", "STRUCTURAL_FUNCTIONS", "VJP", "Contraction",
           "Elementwise", "GemmForm", "Scatter", "arg_symbol", "broadcast_shapes", "contraction_shape", "equal",
           "gemm_form", "local_derivative", "matmul_contraction", "normalize_axis", "numpy_inplace", "record_of",
           "reduce_shape", "relu", "sigmoid", "softplus", "stable_log", "step"]
