"""Contractions (``contract``: an einsum of two arrays).  One that is a GEMM
(``ops.gemm_plan``: index groups read as the matrices' dimensions, size-1 indices
read away) is described as a row-major ``Gemm`` and printed by the language
(cuBLAS on a GPU; a blocked kernel or CBLAS in C), once, once per example (an
operand shared by the examples has stride 0) or as a sum of per-example products
(a kernel's gradient); any other, or one the language has no GEMM for, is a
reduction kernel over the summed indices."""

from __future__ import annotations

from dataclasses import dataclass

from ...ir.program import Kernel
from ...ops.structural import gemm_plan
from ..base import lowers
from .language import line_comment, offset, row_strides


@dataclass(frozen=True)
class Gemm:
    """out = op(left) @ op(right), row-major arrays, once or per entry of a batch.

    ``m``, ``n``, ``k``: the sizes (an int, or a C expression of the batch size N)
    of out [m x n] and of the summed index; op is a transpose where ``trans_left`` /
    ``trans_right``; ``ld_*`` the row lengths as stored (left [m x k], or [k x m]
    transposed; right [k x n], or [n x k]; out [m x n]).  When ``batched``, the
    product is made ``count`` times (N, or a size), each operand and the output
    moved by its ``stride_*`` elements from one to the next: a stride of 0 is an
    operand the same for every product (a kernel shared by the examples); with
    ``accumulate``, the products are added into one output (stride_out 0): a
    kernel's gradient summed over the examples."""
    out: str
    left: str
    right: str
    m: int | str
    n: int | str
    k: int | str
    trans_left: bool
    trans_right: bool
    ld_left: int | str
    ld_right: int | str
    batched: bool
    stride_left: int
    stride_right: int
    stride_out: int
    dtype: str          # float32 or float64
    count: int | str = "N"
    accumulate: bool = False

    def describe(self) -> str:
        """What it computes, as the comment above it says."""
        tl = "^T" if self.trans_left else ""
        tr = "^T" if self.trans_right else ""
        shape_l = f"{self.k} x {self.m}" if self.trans_left else f"{self.m} x {self.k}"
        shape_r = f"{self.n} x {self.k}" if self.trans_right else f"{self.k} x {self.n}"
        per = ""
        if self.batched:
            per = " per example" if self.count == "N" else f" for each of {self.count}"
            if self.accumulate:
                per += ", summed"
        return (f"GEMM{per}: {self.out} [{self.m} x {self.n}] = {self.left}{tl} @ {self.right}{tr}, "
                f"{self.left} [{shape_l}], {self.right} [{shape_r}], row-major;")


class Contractions:
    """The lowering of ``contract``."""

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
        g, ra, rb, ro = gemm_plan(sa, sb, so, sizes)
        if g is not None:
            gemm = self.gemm_of(k, g, ra, rb, ro, sizes)
            lines = self.lang.gemm(gemm)
            if lines is not None:
                self.need(k.out)
                self.uses.add("gemm")
                self.lines += [line_comment(gemm.describe())] + lines
                return
        # not one GEMM: each output element is a reduction over the summed indices
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
            reads.append(self.read(v, idx, inputs))
        comment = [f"{self.c(k.out)} = einsum('{sa},{sb}->{so}', {self.c(a)}, {self.c(b)}), "
                   f"{self.lang.reduction_note}"]
        self.reduction(k, self.c(k.out), comment, "sum", out_dims, red_dims, f"{reads[0]} * {reads[1]}", inputs)

    def gemm_of(self, k: Kernel, g, sa, sb, so, sizes) -> Gemm:
        """The row-major GEMM of a contraction whose ``gemm_form`` is ``g``: each
        index group (TTGT) one dimension of the product."""
        a, b = k.args
        L, R = (a, b) if g.left == 0 else (b, a)
        sL, sR = (sa, sb) if g.left == 0 else (sb, sa)

        def dim(cs):
            n = 1
            for c in cs:
                n *= sizes[c] if sizes[c] is not None else 1
            if any(sizes[c] is None for c in cs):
                return "N" if n == 1 else f"N * {n}"
            return n

        def stride(s):
            """Elements from one entry of the batch index to the next (0: not in s)."""
            if not g.batched or g.batch not in s:
                return 0
            n = 1
            for c in s:
                if c != g.batch:
                    n *= sizes[c]
            return n

        M, Nn, K = dim(g.m), dim(g.n), dim(g.k)
        return Gemm(out=self.c(k.out), left=self.c(L), right=self.c(R), m=M, n=Nn, k=K,
                    trans_left=g.trans_left, trans_right=g.trans_right,
                    ld_left=M if g.trans_left else K, ld_right=K if g.trans_right else Nn,
                    batched=g.batched, stride_left=stride(sL), stride_right=stride(sR),
                    stride_out=0 if g.summed else stride(so), dtype=self.mod.dtype,
                    count=dim(g.batch) if g.batched else "N", accumulate=g.summed)
