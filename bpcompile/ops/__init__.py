"""The operations: what each op computes, its shape rule, its derivative; and
reverse mode over them (``adjoint.py``).

* ``elementwise.py``: each elementwise op one SymPy function;
* ``structural.py``: contraction, reductions, indexing: shape and VJP rules.
"""

from .elementwise import (
    BINARY, ELEMENTWISE, FUNCTIONS, OUT, STRUCTURAL_FUNCTIONS, arg_symbol, equal, local_derivative, relu,
    sigmoid, softplus, stable_log, step,
)
from .structural import (
    VJP, Contraction, GemmForm, Scatter, broadcast_shapes, contraction_shape, gemm_form,
    matmul_contraction, normalize_axis, reduce_shape,
)

__all__ = ["BINARY", "ELEMENTWISE", "FUNCTIONS", "OUT", "STRUCTURAL_FUNCTIONS", "VJP", "Contraction", "GemmForm",
           "Scatter", "arg_symbol", "broadcast_shapes", "contraction_shape", "equal", "gemm_form",
           "local_derivative", "matmul_contraction", "normalize_axis", "reduce_shape", "relu", "sigmoid",
           "softplus", "stable_log", "step"]
