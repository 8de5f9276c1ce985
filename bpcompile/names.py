"""Every naming convention of the generated code, in one place.

The lectures write ``a_bar`` for dL/da; generated code does the same.  Anonymous
values are ``t0, t1, ...``.  Spec names that would collide with any of these, with
a keyword of Python, C or CUDA, or with a name the generated code uses, are
rejected when the spec is read.
"""

from __future__ import annotations

import builtins
import keyword
import re

BAR_SUFFIX = "_bar"
TEMP_PREFIX = "t"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
TEMP_NAME = re.compile(r"t[0-9]+\Z")


def bar(name: str) -> str:
    """The adjoint's name: ``bar("a") == "a_bar"`` (dL/da)."""
    return name + BAR_SUFFIX


def temp(k: int) -> str:
    return f"{TEMP_PREFIX}{k}"


# Names the generated modules (NumPy, CUDA loader) define or use themselves.
GENERATED_NAMES = frozenset("""
    np N rows ones params lr seed rng inputs grads state loss_value value
    momentum beta1 beta2 eps
    NAME DTYPE PARAM_SHAPES INPUT_SHAPES LABEL_CLASSES WRT OUTPUT REDUCTION TRAINED
    init_params predict loss value_and_grad gradient sgd_step momentum_step adam_step
    L L_n L_bar
""".split())

C_KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for
    goto if inline int long register restrict return short signed sizeof static struct
    switch typedef union unsigned void volatile while bool true false
    _Bool _Complex _Imaginary alignas alignof asm catch class constexpr const_cast
    decltype delete dynamic_cast explicit export friend mutable namespace new noexcept
    nullptr operator private protected public reinterpret_cast static_assert
    static_cast template this thread_local throw try typeid typename using virtual
    wchar_t size_t NULL main
""".split())

CUDA_KEYWORDS = frozenset("""
    __global__ __device__ __host__ __shared__ __constant__ __restrict__
    threadIdx blockIdx blockDim gridDim warpSize dim3 half float2 float4 double2
    cudaStream_t cublasHandle_t
""".split())


def keyword_reason(name: str) -> str | None:
    """Why ``name`` cannot be an identifier of the generated Python, C and CUDA."""
    if not IDENTIFIER.match(name):
        return "is not an identifier"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return "is a Python keyword"
    if name in C_KEYWORDS:
        return "is a C/C++ keyword"
    if name in CUDA_KEYWORDS:
        return "is a CUDA keyword"
    return None


def reserved_reason(name: str, function_names=()) -> str | None:
    """Why ``name`` cannot name an input, param or graph node (None if it can)."""
    reason = keyword_reason(name)
    if reason:
        return reason
    if name in GENERATED_NAMES:
        return "collides with a name the generated code uses"
    if name.endswith(BAR_SUFFIX):
        return f"ends in '{BAR_SUFFIX}', which generated code reserves for adjoints"
    if TEMP_NAME.match(name):
        return "collides with the generated temporaries t0, t1, ..."
    if name.startswith("_"):
        return "starts with '_', which generated code reserves"
    if name in function_names:
        return "is the name of a function of the spec language"
    if hasattr(builtins, name):
        return "shadows a Python builtin"
    return None
