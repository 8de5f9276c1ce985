"""Stage 5 (CUDA target): print programs as a CUDA source file and a Python loader.

The same programs as the NumPy printer (``program.py``), printed for a GPU:

* a fused elementwise ``map`` kernel becomes one ``__global__`` kernel, a
  grid-stride loop over the N*size elements of its output; arguments of other
  shapes broadcast by index arithmetic on the per-example shapes;
* reductions (``reduce``, ``sum_to``: softmax rows, bias gradients, the loss) and
  contractions that are not one GEMM are block reductions: one block per output
  element, a shared-memory tree between ``__syncthreads()``;
* contractions that are one GEMM (``ops.gemm_form``) go to cuBLAS; the arrays are
  row-major, cuBLAS is column-major, so ``C = op(A) op(B)`` is computed as
  ``C^T = op(B)^T op(A)^T`` by swapping the operands;
* take / scatter_add / onehot / transpose / index / embed / broadcast are small
  index kernels, copy and zeros are cudaMemcpyAsync / cudaMemsetAsync, reshape is
  an alias of the same memory.

Every temporary lives in one arena allocated by ``<name>_workspace_create(N)``;
the three functions share it (one call at a time per workspace).  Gradients and
predict's output are written straight into the caller's arrays.

The .cu builds with nvcc, or with a host C++20 compiler and
``cuda_emulation.h`` (beside this file) force-included (how the tests run it without a GPU).
"""

from __future__ import annotations

import hashlib
import re

import sympy as sp

from ... import escape
from ...ops import gemm_form
from ...ir.program import Kernel, Program, Value
from ..base import Code, lowering_table, lowers, template_environment
from ..clike import (CExprPrinter, broadcast_strides, check_c_source, count_expr, full_dims, ident, line_comment,
                     offset, row_strides, shape_text, size_of, token)
from ..python import init_line

BLOCK = 256        # threads per block of elementwise kernels
MAX_GRID = 4096    # blocks of a grid-stride launch at most

# Identifiers the generated code uses where value names are in scope (math
# functions, helpers, types, API names): a value named so is printed as v_<name>.
C_GLOBALS = frozenset(["tanh", "tanhf", "exp", "expf", "log", "logf", "log1p", "log1pf", "sin", "sinf", "cos", "cosf", "sqrt", "sqrtf", "fabs", "fabsf", "fmax", "fmaxf", "fmin", "fminf", "pow", "powf", "INFINITY", "NAN", "real", "ws", "loss_out", "kernels", "free", "calloc", "malloc", "memcpy", "memset", "std", "dim3", "LAUNCH", "CHECK_CUDA", "CHECK_CUBLAS"])
C_PREFIXES = ("cuda", "cublas", "CUBLAS", "CUDA", "bp_", "BP_")


# ---------------------------------------------------------------------------


class CudaExprPrinter(CExprPrinter):
    """CUDA device code prints elementwise math as C99 does (``clike.py``)."""


class KernelTable:
    """__global__ kernels of the module, deduplicated across the three functions."""

    def __init__(self):
        self.by_body: dict = {}
        self.names: set = set()
        self.defs: list = []

    def add(self, hint: str, comment: list, params: list, body: list) -> str:
        key = (tuple(params), tuple(body))
        if key in self.by_body:
            return self.by_body[key]
        name, k = hint, 2
        while name in self.names:
            name = f"{hint}_{k}"
            k += 1
        self.names.add(name)
        self.by_body[key] = name
        head = f"static __global__ void {name}(" + ", ".join(params) + ")"
        if len(head) > 100:
            head = f"static __global__ void {name}(\n    " + ",\n    ".join(params) + ")"
        text = "\n".join([line_comment(c) for c in comment] + [head, "{"] + [f"    {line}" if line else "" for line in body] + ["}"])
        self.defs.append(text)
        return name


class FunctionPrinter:
    """One host function (predict, loss or value_and_grad) and its kernels."""

    def __init__(self, mod: CudaModule, fn: str, program: Program, bound: dict):
        self.mod = mod
        self.fn = fn
        self.program = program
        self.bound = bound          # value name -> C parameter it is written to
        self.storage: dict = {}     # value name -> size expression (elements) in the workspace
        self.alias: dict = {}       # value name -> name of the value it shares memory with
        self.lines: list = []
        self.gemm = False
        self.host = host_scalars(program, bound)   # names of scalars computed on the host

    # -- names ---------------------------------------------------------------
    def c(self, v: Value) -> str:
        if v.kind == "const":
            return CudaExprPrinter(self.mod.dtype, {}).doprint(v.literal)
        if v.kind == "batch_size":
            return "N"
        return self.mod.cname(v.name)

    def printer(self, leaf_text=None) -> CudaExprPrinter:
        return CudaExprPrinter(self.mod.dtype, leaf_text or {})

    def need(self, v: Value):
        """Storage for kernel output ``v`` (unless it is the caller's array)."""
        if v.name in self.bound or v.name in self.alias:
            return
        n = size_of(v.shape)
        self.storage.setdefault(v.name, (f"N * {n}" if n != 1 else "N") if v.batched else f"{n}")

    def launch(self, kernel: str, count: str, args: list, block=BLOCK, per_block=False):
        if per_block:
            grid = f"bp_blocks({count})"
        elif block == BLOCK:
            grid = f"bp_grid({count})"
        else:
            grid = "1"
        self.lines.append(f"LAUNCH(kernels::{kernel}, {grid}, {block}, 0, " + ", ".join(args) + ");")

    # -- kernels -------------------------------------------------------------
    def kernel(self, k: Kernel):
        getattr(self, LOWERINGS[k.op])(k)

    def _elementwise(self, k: Kernel, hint, comment, inputs, body, out=None):
        """A grid-stride kernel over the elements of ``out`` (default k.out).

        inputs: [(C parameter declaration, host argument)]."""
        out = out or k.out
        self.need(out)
        dims = full_dims(out)
        n = count_expr(dims)
        block = BLOCK if out.batched else min(BLOCK, max(32, -(-size_of(out.shape) // 32) * 32))
        params = [f"real* __restrict__ {self.c(out)}"] + [p for p, _ in inputs] + ["long long _n"]
        loop = ["const long long _stride = (long long)gridDim.x * blockDim.x;",
                "for (long long _i = (long long)blockIdx.x * blockDim.x + threadIdx.x; _i < _n; "
                "_i += _stride) {"]
        loop += [f"    {line}" for line in body] + ["}"]
        name = self.mod.kernels.add(hint, comment, params, loop)
        self.launch(name, n, [self.c(out)] + [a for _, a in inputs] + [n], block=block)

    def _read(self, v: Value, idx: str, inputs: list) -> str:
        """The C text reading ``v`` at offset ``idx``, adding its kernel parameter."""
        if v.kind == "const":
            return self.c(v)
        if v.name in self.host:
            if (f"const real {self.c(v)}", self.c(v)) not in inputs:
                inputs.append((f"const real {self.c(v)}", self.c(v)))
            return self.c(v)
        if v.kind == "batch_size":
            if ("const real N", "(real)N") not in inputs:
                inputs.append(("const real N", "(real)N"))
            return "N"
        decl = (f"const int* __restrict__ {self.c(v)}" if v.dtype == "int"
                else f"const real* __restrict__ {self.c(v)}")
        if (decl, self.c(v)) not in inputs:
            inputs.append((decl, self.c(v)))
        return f"{self.c(v)}[{idx}]"

    @lowers("map")
    def lower_map(self, k: Kernel):
        temps, expr = k.attrs
        if k.out.name in self.host:
            # a scalar of N and constants only: computed on the host, passed by value
            p = self.printer({a.name: "(real)N" if a.kind == "batch_size" else self.c(a) for a in k.args})
            self.lines += [f"const real {name} = {p.doprint(e)};" for name, e in temps]
            self.lines.append(f"const real {self.c(k.out)} = {p.doprint(expr)};")
            return
        inputs: list = []
        leaf = {}
        dims = full_dims(k.out)
        for a in k.args:
            idx = "0" if a.kind in ("const", "batch_size") else offset("_i", dims, broadcast_strides(a, k.out))
            leaf[a.name] = self._read(a, idx, inputs)
        p = self.printer(leaf)
        body = [f"const real {name} = {p.doprint(e)};" for name, e in temps]
        body.append(f"{self.c(k.out)}[_i] = {p.doprint(expr)};")
        shown = CudaExprPrinter(self.mod.dtype, {a.name: self.c(a) for a in k.args})
        comment = [f"{self.c(k.out)} = {shown.doprint(expr.xreplace({sp.Symbol(n, real=True): e for n, e in reversed(temps)}))}"
                   f"  (elementwise over {shape_text(k.out)})"]
        if len(comment[0]) > 110:
            comment = [f"{self.c(k.out)}: elementwise over {shape_text(k.out)}"]
        self._elementwise(k, self.c(k.out), comment, inputs, body)

    def _block_reduce(self, k: Kernel, hint, comment, kind, out_dims, red_dims, element, inputs):
        """out[_o] = reduce over _r of element(_o, _r): one block per output element,
        a tree in shared memory."""
        out = k.out
        self.need(out)
        n_out = count_expr(out_dims)
        n_red = count_expr(red_dims)
        if None in red_dims:
            block = BLOCK
        else:
            block = 32
            while block < min(size_of(red_dims), BLOCK):
                block *= 2
        op = "_acc += {x};" if kind == "sum" else "_acc = bp_max(_acc, {x});"
        tree = "_s[threadIdx.x] += _s[threadIdx.x + _w];" if kind == "sum" else \
            "_s[threadIdx.x] = bp_max(_s[threadIdx.x], _s[threadIdx.x + _w]);"
        init = "0" if kind == "sum" else "-INFINITY"
        body = [
            f"__shared__ real _s[{block}];",
            "for (long long _o = blockIdx.x; _o < _n_out; _o += gridDim.x) {",
            f"    real _acc = {init};",
            f"    for (long long _r = threadIdx.x; _r < _n_red; _r += {block})",
            "        " + op.format(x=element),
            "    _s[threadIdx.x] = _acc;",
            "    __syncthreads();",
            f"    for (unsigned _w = {block // 2}; _w > 0; _w /= 2) {{",
            "        if (threadIdx.x < _w)",
            f"            {tree}",
            "        __syncthreads();",
            "    }",
            f"    if (threadIdx.x == 0) {self.c(out)}[_o] = _s[0];",
            "    __syncthreads();  // _s is reused for the next output",
            "}",
        ]
        params = [f"real* __restrict__ {self.c(out)}"] + [p for p, _ in inputs] + ["long long _n_out", "long long _n_red"]
        name = self.mod.kernels.add(hint, comment, params, body)
        self.launch(name, n_out, [self.c(out)] + [a for _, a in inputs] + [n_out, n_red], block=block,
                    per_block=True)

    def _reduce_over(self, k: Kernel, x: Value, reduced: set, kind: str, what: str):
        """Reduce the full axes ``reduced`` of x (axis 0 is the batch axis when batched)."""
        xd = full_dims(x)
        xs = row_strides(xd)
        kept = [j for j in range(len(xd)) if j not in reduced]
        red = [j for j in range(len(xd)) if j in reduced]
        inputs: list = []
        idx = " + ".join(t for t in (offset("_o", [xd[j] for j in kept], [xs[j] for j in kept]),
                                     offset("_r", [xd[j] for j in red], [xs[j] for j in red])) if t != "0") or "0"
        element = self._read(x, idx, inputs)
        comment = [f"{self.c(k.out)} = {what}, one block per output element"]
        self._block_reduce(k, self.c(k.out), comment, kind, [xd[j] for j in kept], [xd[j] for j in red],
                           element, inputs)

    @lowers("reduce")
    def lower_reduce(self, k: Kernel):
        kind, axes, keepdims, _ = k.attrs
        x = k.args[0]
        off = 1 if x.batched else 0
        ax = ", ".join(str(a) for a in axes)
        self._reduce_over(k, x, {a + off for a in axes}, kind,
                          f"{kind}({self.c(x)}, axis {ax}{', keepdims' if keepdims else ''})")

    @lowers("sum_to")
    def lower_sum_to(self, k: Kernel):
        target, keep_batch = k.attrs
        x = k.args[0]
        off = 1 if x.batched else 0
        lead = len(x.shape) - len(target)
        reduced = set()
        if x.batched and not keep_batch:
            reduced.add(0)
        reduced |= {off + i for i in range(lead)}
        reduced |= {off + lead + i for i, d in enumerate(target) if d == 1 and x.shape[lead + i] != 1}
        over = "the batch" if (x.batched and not keep_batch) else "broadcast axes"
        self._reduce_over(k, x, reduced, "sum", f"{self.c(x)} summed over {over} to {shape_text(k.out)}")

    @lowers("contract")
    def lower_contract(self, k: Kernel):
        form, out_batched = k.attrs
        a, b = k.args
        sa = ("n" if a.batched else "") + form.a
        sb = ("n" if b.batched else "") + form.b
        so = ("n" if out_batched else "") + form.out
        sizes = {"n": None}
        sizes.update(zip(form.a, a.shape))
        sizes.update(zip(form.b, b.shape))
        g = gemm_form(sa, sb, so)
        if g is not None:
            return self._gemm(k, g, sa, sb, so, sizes)
        # not one GEMM: each output element is a block reduction over the summed indices
        summed = [c for c in dict.fromkeys(sa + sb) if c not in so]
        summed.sort(key=lambda c: c != "n")
        out_dims = [sizes[c] for c in so]
        red_dims = [sizes[c] for c in summed]
        inputs: list = []
        reads = []
        for v, s in ((a, sa), (b, sb)):
            st = dict(zip(s, row_strides([sizes[c] for c in s])))
            idx = " + ".join(t for t in (offset("_o", out_dims, [st.get(c, 0) for c in so]),
                                         offset("_r", red_dims, [st.get(c, 0) for c in summed])) if t != "0") or "0"
            reads.append(self._read(v, idx, inputs))
        comment = [f"{self.c(k.out)} = einsum('{sa},{sb}->{so}', {self.c(a)}, {self.c(b)}), "
                   "one block per output element"]
        self._block_reduce(k, self.c(k.out), comment, "sum", out_dims, red_dims, f"{reads[0]} * {reads[1]}", inputs)

    def _gemm(self, k, g, sa, sb, so, sizes):
        a, b = k.args
        self.need(k.out)
        self.gemm = True
        batch = "n" if g.batched else ""
        L, R = (a, b) if g.left == 0 else (b, a)
        sL, sR = (sa, sb) if g.left == 0 else (sb, sa)
        sL, sR, sO = (s.replace(batch, "") if batch else s for s in (sL, sR, so))
        m = [c for c in sO if c in sL]
        n = [c for c in sO if c in sR]
        kk = [c for c in sL if c in sR and c not in sO]

        def dim(cs):
            if not cs:
                return 1
            return sizes[cs[0]] if sizes[cs[0]] is not None else "N"

        M, Nn, K = dim(m), dim(n), dim(kk)
        ldL = M if g.trans_left else K
        ldR = K if g.trans_right else Nn
        t = "D" if self.mod.dtype == "float64" else "S"
        opL = "CUBLAS_OP_T" if g.trans_left else "CUBLAS_OP_N"
        opR = "CUBLAS_OP_T" if g.trans_right else "CUBLAS_OP_N"
        tl = "^T" if g.trans_left else ""
        tr = "^T" if g.trans_right else ""
        rows = lambda x, y: f"{x} x {y}"
        shapeL = rows(K, M) if g.trans_left else rows(M, K)
        shapeR = rows(Nn, K) if g.trans_right else rows(K, Nn)
        per = " per example" if batch else ""
        self.lines.append(line_comment(f"GEMM{per}: {self.c(k.out)} [{M} x {Nn}] = {self.c(L)}{tl} @ {self.c(R)}{tr}, "
                                       f"{self.c(L)} [{shapeL}], {self.c(R)} [{shapeR}], row-major;"))
        self.lines.append(line_comment(f"cuBLAS is column-major: it computes {self.c(k.out)}^T = "
                                       f"{self.c(R)}{'' if tr else '^T'} @ {self.c(L)}{'' if tl else '^T'}"))
        if batch:
            strides = [size_of(v.shape) for v in (R, L, k.out)]
            self.lines.append(
                f"CHECK_CUBLAS(cublas{t}gemmStridedBatched(ws->blas, {opR}, {opL}, {Nn}, {M}, {K}, &_one, "
                f"{self.c(R)}, {ldR}, {strides[0]}, {self.c(L)}, {ldL}, {strides[1]}, &_zero, "
                f"{self.c(k.out)}, {Nn}, {strides[2]}, N));")
        else:
            self.lines.append(
                f"CHECK_CUBLAS(cublas{t}gemm(ws->blas, {opR}, {opL}, {Nn}, {M}, {K}, &_one, "
                f"{self.c(R)}, {ldR}, {self.c(L)}, {ldL}, &_zero, {self.c(k.out)}, {Nn}));")

    @lowers("broadcast")
    def lower_broadcast(self, k: Kernel):
        x = k.args[0]
        if x.kind == "const" or x.name in self.host:
            self.need(k.out)
            n = count_expr(full_dims(k.out))
            self.launch("bp_fill", n, [self.c(k.out), f"(real){self.c(x)}", n])
            return
        inputs: list = []
        body = [f"{self.c(k.out)}[_i] = "
                f"{self._read(x, offset('_i', full_dims(k.out), broadcast_strides(x, k.out)), inputs)};"]
        self._elementwise(k, self.c(k.out), [f"{self.c(k.out)} = {self.c(x)} broadcast to {shape_text(k.out)}"],
                          inputs, body)

    @lowers("reshape")
    def lower_reshape(self, k: Kernel):
        x = k.args[0]
        self.alias[k.out.name] = x.name
        self.lines.append(line_comment(f"{self.c(k.out)} is {self.c(x)} reshaped to {shape_text(k.out)}: the same memory"))

    @lowers("take")
    def lower_take(self, k: Kernel):
        x, label = k.args
        if len(x.shape) != 1:
            raise NotImplementedError("CUDA take: only rows of per-example vectors")
        K = x.shape[0]
        inputs: list = []
        xi = self._read(x, f"_i * {K} + _l" if x.batched else "_l", inputs)
        li = self._read(label, "_i", inputs)
        body = [f"const int _l = {li};",
                f"{self.c(k.out)}[_i] = (0 <= _l && _l < {K}) ? {xi} : NAN;  // NaN for a label out of range"]
        self._elementwise(k, self.c(k.out), [f"{self.c(k.out)}[n] = {self.c(x)}[n, {self.c(label)}[n]]"],
                          inputs, body)

    @lowers("scatter_add")
    def lower_scatter_add(self, k: Kernel):
        base, label, value = k.args
        out = k.out
        self.need(out)
        if len(out.shape) != 1 or not out.batched:
            raise NotImplementedError("CUDA scatter_add: only rows of batched per-example vectors")
        K = out.shape[0]
        if not k.inplace:
            self.lines.append(f"CHECK_CUDA(cudaMemcpyAsync({self.c(out)}, {self.c(base)}, "
                              f"sizeof(real) * (size_t)N * {K}, cudaMemcpyDeviceToDevice));")
        inputs: list = []
        li = self._read(label, "_i", inputs)
        vi = self._read(value, "_i" if value.batched else "0", inputs)
        body = [f"const int _l = {li};",
                f"if (0 <= _l && _l < {K}) {self.c(out)}[_i * {K} + _l] += {vi};"]
        # one thread per example: each writes its own row, no atomics
        params = [f"real* __restrict__ {self.c(out)}"] + [p for p, _ in inputs] + ["long long _n"]
        loop = ["const long long _stride = (long long)gridDim.x * blockDim.x;",
                "for (long long _i = (long long)blockIdx.x * blockDim.x + threadIdx.x; _i < _n; "
                "_i += _stride) {"] + [f"    {line}" for line in body] + ["}"]
        name = self.mod.kernels.add(
            f"{self.c(out)}_scatter",
            [f"{self.c(out)}[n, {self.c(label)}[n]] += {self.c(value)}[n], one thread per example"], params, loop)
        self.launch(name, "(long long)N", [self.c(out)] + [a for _, a in inputs] + ["(long long)N"])

    @lowers("zeros")
    def lower_zeros(self, k: Kernel):
        self.need(k.out)
        n = count_expr(full_dims(k.out))
        self.lines.append(f"CHECK_CUDA(cudaMemsetAsync({self.c(k.out)}, 0, sizeof(real) * (size_t)({n})));")

    @lowers("onehot")
    def lower_onehot(self, k: Kernel):
        (classes,) = k.attrs
        label = k.args[0]
        inputs: list = []
        li = self._read(label, f"_i / {classes}", inputs)
        body = [f"{self.c(k.out)}[_i] = (real)({li} == _i % {classes});"]
        self._elementwise(k, self.c(k.out), [f"{self.c(k.out)} = onehot({self.c(label)}, {classes})"], inputs, body)

    @lowers("transpose")
    def lower_transpose(self, k: Kernel):
        x = k.args[0]
        st = row_strides(list(x.shape))[::-1]
        strides = ([size_of(x.shape)] if x.batched else []) + st
        inputs: list = []
        body = [f"{self.c(k.out)}[_i] = {self._read(x, offset('_i', full_dims(k.out), strides), inputs)};"]
        self._elementwise(k, self.c(k.out), [f"{self.c(k.out)} = {self.c(x)}^T"], inputs, body)

    @lowers("index")
    def lower_index(self, k: Kernel):
        (i,) = k.attrs
        x = k.args[0]
        st = row_strides(list(x.shape))
        strides = ([size_of(x.shape)] if x.batched else []) + st[1:]
        idx = offset("_i", full_dims(k.out), strides)
        if i:
            idx = f"{idx} + {i * st[0]}" if idx != "0" else f"{i * st[0]}"
        inputs: list = []
        body = [f"{self.c(k.out)}[_i] = {self._read(x, idx, inputs)};"]
        self._elementwise(k, self.c(k.out), [f"{self.c(k.out)} = {self.c(x)}[{i}]"], inputs, body)

    @lowers("embed")
    def lower_embed(self, k: Kernel):
        _, i = k.attrs
        g = k.args[0]
        out = k.out
        dims = full_dims(out)
        st = row_strides(list(g.shape))
        gstrides = ([size_of(g.shape)] if g.batched else []) + [0] + st
        inner = size_of(out.shape[1:])
        coord = "_i" if inner == 1 else f"_i / {inner}"
        if out.batched:
            coord = f"{coord} % {out.shape[0]}"
        inputs: list = []
        gi = self._read(g, offset("_i", dims, gstrides), inputs)
        body = [f"{self.c(out)}[_i] = ({coord} == {i}) ? {gi} : 0;"]
        self._elementwise(k, self.c(out), [f"{self.c(out)} = zeros {shape_text(out)} with [{i}] = {self.c(g)}"],
                          inputs, body)

    @lowers("copy")
    def lower_copy(self, k: Kernel):
        x = k.args[0]
        self.need(k.out)
        n = count_expr(full_dims(k.out))
        self.lines.append(f"CHECK_CUDA(cudaMemcpyAsync({self.c(k.out)}, {self.c(x)}, sizeof(real) * (size_t)({n}), "
                          "cudaMemcpyDeviceToDevice));")


LOWERINGS = lowering_table(FunctionPrinter)   # kernel op -> method


def host_scalars(program: Program, bound: dict) -> set:
    """Names of the unbatched scalars that depend on the batch size and constants
    only (1/N, -1/N): the host computes them and passes them to kernels by value,
    instead of launching a one-thread kernel.  Not those read through a pointer
    (a GEMM, a copy, a reshape) or returned."""
    host: set = set()
    for k in program.kernels:
        if k.op == "map" and not k.out.batched and k.out.shape == () and k.out.name not in bound \
                and all(a.kind in ("batch_size", "const") or a.name in host for a in k.args):
            host.add(k.out.name)
    by_pointer = {a.name for k in program.kernels if k.op in ("contract", "copy", "reshape") for a in k.args}
    returned = {v.name for v in (program.loss, program.output) if v is not None}
    changed = True
    while changed:
        # a scalar computed on the host cannot come from a kernel's output
        changed = False
        for k in program.kernels:
            if k.out.name in host and (k.out.name in by_pointer or k.out.name in returned or
                                       any(a.kind not in ("batch_size", "const") and a.name not in host
                                           for a in k.args)):
                host.discard(k.out.name)
                changed = True
    return host


class CudaModule:
    def __init__(self, low, programs):
        self.low = low
        self.spec = low.spec
        self.name = low.spec.name
        self.dtype = low.spec.dtype
        self.programs = programs
        self.kernels = KernelTable()
        all_names = set()
        for p in programs.values():
            all_names |= {v.name for v in p.values.values()}
            for k in p.kernels:
                all_names |= {k.out.name, *(a.name for a in k.args)}
        self.cnames = {}
        for nm in sorted(all_names):
            c = nm
            if c in C_GLOBALS or c.startswith(C_PREFIXES) or c.startswith(self.name + "_"):
                c = "v_" + nm
                while c in all_names or c in self.cnames.values():
                    c = "v_" + c
            self.cnames[nm] = c

    def cname(self, nm: str) -> str:
        return self.cnames.get(nm, nm)


def _signature_parts(mod: CudaModule):
    spec = mod.spec
    params = [(f"const real* {mod.cname(p)}", f"{p} {list(d.shape)}") for p, d in spec.params.items()]
    inputs = []
    for nm, d in spec.inputs.items():
        if d.is_label:
            inputs.append((f"const int* {mod.cname(nm)}", f"{nm} [N], int32 labels in [0, {d.classes})"))
        else:
            inputs.append((f"const real* {mod.cname(nm)}", f"{nm} [N{''.join(', ' + str(x) for x in d.shape)}]"))
    return params, inputs


def _function(mod: CudaModule, fn: str, program: Program):
    """The C text of one extern "C" host function."""
    params, inputs = _signature_parts(mod)
    bound = {}
    extra = []
    made = {k.out.name: k for k in program.kernels}
    out_param = None
    if fn == "predict":
        v = program.output
        k = made.get(v.name)
        if v.kind == "temp" and k is not None and k.op != "reshape":
            out_param = mod.cname(v.name)
            bound[v.name] = out_param
        else:
            out_param = "_out"
        extra.append((f"real* {out_param}", f"output: {v.name} {shape_text(v)}"))
    else:
        extra.append(("double* loss_out", "host: L"))
    if fn == "value_and_grad":
        for nm, v in program.grads.items():
            bound[v.name] = mod.cname(v.name)
            extra.append((f"real* {mod.cname(v.name)}", f"dL/d{nm} {shape_text(v)}"))
    fp = FunctionPrinter(mod, fn, program, bound)
    phase = None
    for k in program.kernels:
        if k.phase != phase:
            phase = k.phase
            fp.lines.append("")
            fp.lines.append("// forward pass" if phase == "forward" else
                            "// backward pass: adjoints in reverse topological order (x_bar = dL/dx)")
        fp.lines += [line_comment(n) for n in k.notes]
        fp.kernel(k)
    tail = []
    if fn == "predict":
        v = program.output
        if out_param == "_out":
            n = count_expr(full_dims(v))
            if v.kind == "const":
                tail.append(f"LAUNCH(kernels::bp_fill, bp_grid({n}), {BLOCK}, 0, _out, (real){fp.c(v)}, {n});")
            else:
                tail.append(f"CHECK_CUDA(cudaMemcpyAsync(_out, {fp.c(v)}, sizeof(real) * (size_t)({n}), "
                            "cudaMemcpyDeviceToDevice));")
    else:
        v = program.loss
        tail.append("")
        tail.append(line_comment(f"{fp.c(v)} to the host (this waits for the kernels above)"))
        if v.kind == "const":
            tail.append(f"*loss_out = (double){fp.c(v)};")
        else:
            tail += ["real _loss;",
                     f"CHECK_CUDA(cudaMemcpy(&_loss, {fp.c(v)}, sizeof(real), cudaMemcpyDeviceToHost));",
                     "*loss_out = (double)_loss;"]
    body = fp.lines + tail
    # declarations: the workspace's buffers, then aliases in program order
    decls = []
    for nm in fp.storage:
        decls.append(f"real* const {mod.cname(nm)} = ws->{fn}.{mod.cname(nm)};")
    for nm, src in fp.alias.items():
        decls.append(f"const real* const {mod.cname(nm)} = {mod.cname(src)};")
    text = "\n".join(body)
    used_n = re.search(r"\bN\b", text + "\n".join(decls)) is not None
    pre = []
    if used_n:
        pre.append("const int N = ws->N;")
    if fp.gemm:
        pre.append("const real _one = 1, _zero = 0;")
    # unused arguments, so that no compiler warns
    all_args = params + inputs
    for decl, _ in all_args:
        pname = decl.split("*")[-1].strip()
        if not re.search(rf"\b{re.escape(pname)}\b", text + "\n".join(decls)):
            pre.append(f"(void){pname};")
    checks = ["if (ws == NULL) return BP_ERROR_NULL_POINTER;"]
    ptrs = [d.split("*")[-1].strip() for d, _ in extra]
    checks.append("if (" + " || ".join(f"{p} == NULL" for p in ptrs) + ") return BP_ERROR_NULL_POINTER;")
    sig_items = [f"{mod.name}_workspace* ws"] + [d for d, _ in params + inputs + extra]
    sig_comments = ["workspace of batch size N"] + [c for _, c in params + inputs + extra]
    width = max(len(s) for s in sig_items) + 1
    sig = []
    for i, (s, cm) in enumerate(zip(sig_items, sig_comments)):
        sep = "," if i < len(sig_items) - 1 else ")"
        sig.append(f"    {(s + sep).ljust(width)}  {line_comment(cm)}")
    lines = [f'extern "C" int {mod.name}_{fn}('] + sig + ["{"]
    lines += [f"    {x}" for x in checks + pre + decls]
    lines += [f"    {x}" if x else "" for x in body]
    lines += ["    return 0;", "}"]
    return "\n".join(lines), fp


# ---------------------------------------------------------------------------
# Templates: every field escaped by construction


def _finalize(value):
    if isinstance(value, Code) or type(value) in (int, bool):
        return value
    raise TypeError(f"a template field ({type(value).__name__} {str(value)[:60]!r}) is printed without "
                    "an escaping filter (c_comment, c_str, py_docstring, py_comment, py_str)")


def environment():
    """The Jinja2 environment of the CUDA target's templates.

    Filters, one per place spec text can stand: ``c_comment`` (after ``//``),
    ``c_str`` (a C string literal), ``py_docstring`` (inside a docstring),
    ``py_comment`` (after ``#``), ``py_str`` (a Python string literal).  Whatever
    else a template prints must be ``Code`` or an int: ``_finalize`` refuses a bare
    string.
    """
    env = template_environment("cuda", _finalize)
    for fn in (escape.c_comment, escape.c_str, escape.py_docstring, escape.py_comment, escape.py_str):
        env.filters[fn.__name__] = lambda text, fn=fn: Code(fn(str(text)))
    return env


def render(low, adj, programs, version: str) -> dict:
    """{filename: text}: the .cu source and the Python loader.

    The loader carries the sha256 of the .cu it goes with and refuses to build any
    other (a pair torn apart, half of it from another compile, would run wrong)."""
    from ...ir.equations import docstring_lines
    spec = low.spec
    if spec.dtype not in ("float32", "float64") or spec.reduction not in ("mean", "sum"):
        raise ValueError(f"CUDA target: dtype {spec.dtype!r}, reduction {spec.reduction!r}")
    mod = CudaModule(low, programs)
    functions = {}
    printers = {}
    for fn in ("predict", "loss", "value_and_grad"):
        functions[fn], printers[fn] = _function(mod, fn, programs[fn])
    uses_blas = any(p.gemm for p in printers.values())
    layout = []
    for fn in ("predict", "loss", "value_and_grad"):
        fp = printers[fn]
        if not fp.storage:
            continue
        layout.append(f"off = 0;  {line_comment(fn)}")
        for nm, size in fp.storage.items():
            layout.append(f"ws->{fn}.{mod.cname(nm)} = bp_carve(base, &off, {size});")
        layout.append("if (off > top) top = off;")
    structs = []
    for fn in ("predict", "loss", "value_and_grad"):
        fp = printers[fn]
        if fp.storage:
            structs.append("struct { real " + ", ".join(f"*{mod.cname(n)}" for n in fp.storage) + f"; }} {fn};")

    forward_lines, adjoint_lines = docstring_lines(low, adj)
    env = environment()
    spec_text = spec.text.strip("\n")
    vag = programs["value_and_grad"]
    pred = programs["predict"]
    classes = {nm: d.classes for nm, d in spec.inputs.items() if d.is_label}
    used = "\n".join(mod.kernels.defs) + "\n".join(functions.values())
    helpers = {"grid": "bp_grid(" in used, "blocks": "bp_blocks(" in used, "max": "bp_max(" in used,
               "fill": "kernels::bp_fill" in used}
    name = ident(spec.name)
    code = lambda lines: [Code(x) for x in lines]   # noqa: E731 - printed by this module
    cu = env.get_template("module.cu.j2").render(
        helpers=helpers,
        name=name, version=token(version), spec_file=spec.file or "", spec_lines=spec_text.splitlines(),
        reduction=ident(spec.reduction), forward_equations=forward_lines, adjoint_equations=adjoint_lines,
        real=ident("float" if spec.dtype == "float32" else "double"), dtype=ident(spec.dtype),
        uses_blas=uses_blas, kernels=code(mod.kernels.defs), structs=code(structs), layout=code(layout),
        functions=code(functions[f] for f in ("predict", "loss", "value_and_grad")),
        block=BLOCK, max_grid=MAX_GRID,
    )
    check_c_source(cu, f"{spec.name}.cu")
    out = pred.output
    for nm in list(spec.inputs) + list(spec.params) + list(spec.wrt):
        ident(nm)

    def signature(p):
        """``*, x, label=None, check=True``: as the NumPy module's functions."""
        used = {v.name for v in p.inputs}
        return Code(", ".join(["*", *(nm if nm in used else f"{nm}=None" for nm in spec.inputs), "check=True"]))

    loader = env.get_template("loader.py.j2").render(
        name=name, version=token(version), spec_file=spec.file or "", dtype=ident(spec.dtype),
        uses_blas=uses_blas, reduction=ident(spec.reduction),
        source_sha256=Code(hashlib.sha256(cu.encode("utf-8")).hexdigest()),
        param_shapes=Code("{" + ", ".join(f"{p!r}: {d.shape!r}" for p, d in spec.params.items()) + "}"),
        input_shapes=Code("{" + ", ".join(f"{i!r}: {d.shape!r}" for i, d in spec.inputs.items()) + "}"),
        label_classes=Code("{" + ", ".join(f"{k!r}: {int(v)}" for k, v in classes.items()) + "}"),
        wrt=Code(repr(tuple(spec.wrt))),
        grad_shapes=Code("{" + ", ".join(f"{nm!r}: ({v.batched!r}, {tuple(v.shape)!r})"
                                         for nm, v in vag.grads.items()) + "}"),
        output_shape=Code(f"({out.batched!r}, {tuple(out.shape)!r})"),
        init_summary=", ".join(f"{p.name} {p.init[0]}" for p in spec.params.values()) or "none",
        init_lines=code(init_line(p) for p in spec.params.values()),
        all_inputs=signature(vag),
        predict_signature=signature(pred),
        loss_signature=signature(programs["loss"]),
        pass_dict=Code("{" + ", ".join(f"{nm!r}: {nm}" for nm in spec.inputs) + "}"),
        pass_inputs=Code(", ".join([*(f"{nm}={nm}" for nm in spec.inputs), "check=False"])),
        trained=Code(repr(tuple(nm for nm in spec.wrt if nm in spec.params))),
    )
    return {f"{spec.name}.cu": cu, f"{spec.name}_cuda.py": loader}
