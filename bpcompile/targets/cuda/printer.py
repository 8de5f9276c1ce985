"""Stage 5 (CUDA target): print programs as a CUDA source file and a Python loader.

The same programs as the NumPy printer (``program.py``), lowered by the kernel
printer C-like targets share (``clike/``) in the language ``Cuda``
below, which states how CUDA differs from C99 (``clike.CStyle``):

* a fused elementwise ``map`` kernel becomes one ``__global__`` kernel, a
  grid-stride loop over the N*size elements of its output; arguments of other
  shapes broadcast by index arithmetic on the per-example shapes;
* reductions (``reduce``, ``sum_to``: softmax rows, bias gradients, the loss) and
  contractions that are not one GEMM are block reductions: one block per output
  element, a shared-memory tree between ``__syncthreads()``;
* contractions that are one GEMM (``ops.gemm_plan``) go to cuBLAS (a strided
  batched GEMM per example, stride 0 for an operand the examples share; a sum of
  per-example products, a convolution kernel's gradient, as one GEMM per example
  accumulating into the output); the arrays are row-major, cuBLAS is column-major,
  so ``C = op(A) op(B)`` is computed as ``C^T = op(B)^T op(A)^T`` by swapping the
  operands;
* windows and unwindow (im2col and col2im of a convolution) are element kernels
  (``clike/windows.py``);
* take / scatter_add / gather / onehot / transpose / slice / unslice / concat /
  broadcast are small index kernels, scatter_rows (an embedding's gradient) one
  thread per element adding with atomicAdd, copy and zeros are cudaMemcpyAsync /
  cudaMemsetAsync, reshape is an alias of the same memory.

Every temporary lives in one arena allocated by ``<name>_workspace_create(N)``;
the three functions share it (one call at a time per workspace).  Gradients and
predict's output are written straight into the caller's arrays.

The .cu builds with nvcc, or with a host C++20 compiler and
``cuda_emulation.h`` (beside this file) force-included (how the tests run it without a GPU).
"""

from __future__ import annotations

import hashlib

from ..base import Code
from ..clike import environment as clike_environment
from ..clike import CExprPrinter, CStyle, check_c_source, ident, line_comment, print_module, size_of, token
from ..python import loader_fields

BLOCK = 256        # threads per block of elementwise kernels
MAX_GRID = 4096    # blocks of a grid-stride launch at most


class CudaExprPrinter(CExprPrinter):
    """CUDA device code prints elementwise math as C99 does (``clike/language.py``)."""


class Cuda(CStyle):
    """CUDA C++ as it differs from C99 (``CStyle``): kernels are ``__global__``,
    launched by ``LAUNCH`` (``module.cu.j2``) on grids of blocks; a per-element
    loop is a grid-stride loop; a reduction is one block per output element, a
    tree in shared memory between barriers; a GEMM is cuBLAS's; memory is copied
    and cleared on the device, and the loss read back to the host."""

    name = "CUDA"
    expr_printer = CudaExprPrinter
    kernel_prefix = "static __global__"
    kernel_namespace = "kernels"     # module.cu.j2 defines the kernels in it
    kernel_suffix = ""
    restrict = "__restrict__"
    host_prefix = 'extern "C" '
    reserved = CStyle.reserved | {"kernels", "std", "dim3", "LAUNCH", "CHECK_CUDA", "CHECK_CUBLAS"}
    reserved_prefixes = ("cuda", "cublas", "CUBLAS", "CUDA") + CStyle.reserved_prefixes
    reduction_note = "one block per output element"
    scatter_note = "one thread per example"
    scatter_rows_note = ("one thread per element, atomicAdd (on double: compute capability 6.0). Not "
                         "deterministic:",
                         "where tokens repeat, the order of the additions varies, and so may the sums' "
                         "last bits, run to run")
    shared = "__shared__"            # a block's shared memory
    barrier = "__syncthreads();"     # every thread of the block waits here

    # -- kernels and launches -------------------------------------------------
    def loop(self, var, count, body):
        return ["const long long _stride = (long long)gridDim.x * blockDim.x;",
                f"for (long long {var} = (long long)blockIdx.x * blockDim.x + threadIdx.x; {var} < {count}; "
                f"{var} += _stride) {{"] + [f"    {x}" for x in body] + ["}"]

    def _launch(self, kernel, grid, block, args):
        return f"LAUNCH({self.kernel_namespace}::{kernel}, {grid}, {block}, 0, " + ", ".join(args) + ");"

    def launch(self, kernel, count, args, out):
        # a small unbatched output: one block of whole warps, enough for its elements
        block = BLOCK if out.batched else min(BLOCK, max(32, -(-size_of(out.shape) // 32) * 32))
        return self._launch(kernel, f"bp_grid({count})" if block == BLOCK else "1", block, args)

    @staticmethod
    def reduction_block(red_dims) -> int:
        """Threads of a reduction's block: BLOCK over the batch, else the power of
        two (at least a warp) covering the reduced elements, BLOCK at most."""
        if None in red_dims:
            return BLOCK
        block = 32
        while block < min(size_of(red_dims), BLOCK):
            block *= 2
        return block

    def reduction(self, kind, element, out, red_dims, leading=False):
        # one block per output whatever the order of the axes (``leading`` is for loops)
        block = self.reduction_block(red_dims)
        op = "_acc += {x};" if kind == "sum" else "_acc = bp_max(_acc, {x});"
        tree = "_s[threadIdx.x] += _s[threadIdx.x + _w];" if kind == "sum" else \
            "_s[threadIdx.x] = bp_max(_s[threadIdx.x], _s[threadIdx.x + _w]);"
        init = "0" if kind == "sum" else "-INFINITY"
        return [
            f"{self.shared} real _s[{block}];",
            "for (long long _o = blockIdx.x; _o < _n_out; _o += gridDim.x) {",
            f"    real _acc = {init};",
            f"    for (long long _r = threadIdx.x; _r < _n_red; _r += {block})",
            "        " + op.format(x=element),
            "    _s[threadIdx.x] = _acc;",
            f"    {self.barrier}",
            f"    for (unsigned _w = {block // 2}; _w > 0; _w /= 2) {{",
            "        if (threadIdx.x < _w)",
            f"            {tree}",
            f"        {self.barrier}",
            "    }",
            f"    if (threadIdx.x == 0) {out}[_o] = _s[0];",
            f"    {self.barrier}  // _s is reused for the next output",
            "}",
        ]

    def accumulate(self, target, value):
        return f"atomicAdd(&{target}, {value});"

    def launch_reduction(self, kernel, count, args, red_dims):
        return self._launch(kernel, f"bp_blocks({count})", self.reduction_block(red_dims), args)

    def gemm(self, g):
        # cuBLAS is column-major: the row-major C = op(A) op(B) is C^T = op(B)^T op(A)^T
        t = "D" if g.dtype == "float64" else "S"
        op_l = "CUBLAS_OP_T" if g.trans_left else "CUBLAS_OP_N"
        op_r = "CUBLAS_OP_T" if g.trans_right else "CUBLAS_OP_N"
        lines = [line_comment(f"cuBLAS is column-major: it computes {g.out}^T = "
                              f"{g.right}{'^T' if not g.trans_right else ''} @ "
                              f"{g.left}{'^T' if not g.trans_left else ''}")]
        if g.accumulate:
            # a sum of products into one output: one GEMM per product, beta 1 after the first
            lines.append(
                f"for (int _ex = 0; _ex < {g.count}; _ex++) "
                f"CHECK_CUBLAS(cublas{t}gemm(ws->blas, {op_r}, {op_l}, {g.n}, {g.m}, {g.k}, &_one, "
                f"{_at(g.right, g.stride_right)}, {g.ld_right}, "
                f"{_at(g.left, g.stride_left)}, {g.ld_left}, _ex ? &_one : &_zero, "
                f"{g.out}, {g.n}));")
        elif g.batched:
            lines.append(
                f"CHECK_CUBLAS(cublas{t}gemmStridedBatched(ws->blas, {op_r}, {op_l}, {g.n}, {g.m}, {g.k}, &_one, "
                f"{g.right}, {g.ld_right}, {g.stride_right}, {g.left}, {g.ld_left}, {g.stride_left}, &_zero, "
                f"{g.out}, {g.n}, {g.stride_out}, {g.count}));")
        else:
            lines.append(
                f"CHECK_CUBLAS(cublas{t}gemm(ws->blas, {op_r}, {op_l}, {g.n}, {g.m}, {g.k}, &_one, "
                f"{g.right}, {g.ld_right}, {g.left}, {g.ld_left}, &_zero, {g.out}, {g.n}));")
        return lines

    # -- memory and the entry points -------------------------------------------
    def fill(self, dst, value, count):
        return self._launch("bp_fill", f"bp_grid({count})", BLOCK, [dst, value, count])

    def copy(self, dst, src, size):
        return f"CHECK_CUDA(cudaMemcpyAsync({dst}, {src}, sizeof(real) * {size}, cudaMemcpyDeviceToDevice));"

    def zero(self, dst, size):
        return f"CHECK_CUDA(cudaMemsetAsync({dst}, 0, sizeof(real) * {size}));"

    def function_prologue(self, uses):
        return ["const real _one = 1, _zero = 0;"] if "gemm" in uses else []   # cuBLAS's alpha and beta

    def loss_to_host(self, value, const):
        lines = ["", line_comment(f"{value} to the host (this waits for the kernels above)")]
        if const:
            return lines + [f"*loss_out = (double){value};"]
        return lines + ["real _loss;",
                        f"CHECK_CUDA(cudaMemcpy(&_loss, {value}, sizeof(real), cudaMemcpyDeviceToHost));",
                        "*loss_out = (double)_loss;"]


CUDA = Cuda()


def _at(name: str, stride: int) -> str:
    """The operand of the ``_ex``-th product of a batch (the same one when stride is 0)."""
    return f"{name} + (size_t)_ex * {stride}" if stride else name


def environment():
    """The Jinja2 environment of the CUDA target's templates (``clike.environment``: one
    escaping filter per place spec text can stand, a bare string refused)."""
    return clike_environment("cuda")


def render(low, adj, programs, version: str) -> dict:
    """{filename: text}: the .cu source and the Python loader.

    The loader carries the sha256 of the .cu it goes with and refuses to build any
    other (a pair torn apart, half of it from another compile, would run wrong)."""
    from ...ir.equations import docstring_lines
    spec = low.spec
    if spec.dtype not in ("float32", "float64") or spec.reduction not in ("mean", "sum"):
        raise ValueError(f"CUDA target: dtype {spec.dtype!r}, reduction {spec.reduction!r}")
    printed = print_module(low, programs, CUDA)
    functions = printed.functions
    uses_blas = any("gemm" in fp.uses for fp in printed.printers.values())

    forward_lines, adjoint_lines = docstring_lines(low, adj)
    env = environment()
    spec_text = spec.text.strip("\n")
    used = "\n".join(printed.kernels) + "\n".join(functions.values())
    helpers = {"grid": "bp_grid(" in used, "blocks": "bp_blocks(" in used, "max": "bp_max(" in used,
               "fill": "kernels::bp_fill" in used}
    name = ident(spec.name)
    code = lambda lines: [Code(x) for x in lines]   # noqa: E731 - printed by this module
    cu = env.get_template("module.cu.j2").render(
        helpers=helpers,
        name=name, version=token(version), spec_file=spec.file or "", spec_lines=spec_text.splitlines(),
        reduction=ident(spec.reduction), forward_equations=forward_lines, adjoint_equations=adjoint_lines,
        real=ident("float" if spec.dtype == "float32" else "double"), dtype=ident(spec.dtype),
        uses_blas=uses_blas, kernels=code(printed.kernels), structs=code(printed.structs),
        layout=code(printed.layout), functions=code(functions.values()),
        block=BLOCK, max_grid=MAX_GRID,
    )
    check_c_source(cu, f"{spec.name}.cu")
    for nm in list(spec.inputs) + list(spec.params) + list(spec.wrt):
        ident(nm)

    loader = env.get_template("loader.py.j2").render(
        name=name, version=token(version), spec_file=spec.file or "", dtype=ident(spec.dtype),
        uses_blas=uses_blas, reduction=ident(spec.reduction),
        source_sha256=Code(hashlib.sha256(cu.encode("utf-8")).hexdigest()), **loader_fields(spec, programs),
    )
    return {f"{spec.name}.cu": cu, f"{spec.name}_cuda.py": loader}
