"""Reductions: ``reduce`` (sum or max over axes) and ``sum_to`` (an adjoint summed
back to the shape of what was broadcast: bias gradients, the loss).  Each is one
reduction kernel over (output element, reduced index); the language writes it
(``CStyle.reduction``: a loop per output in C, a block per output on a GPU)."""

from __future__ import annotations

from ...ir.program import Kernel, Value
from ..base import lowers
from .language import count_expr, full_dims, offset, row_strides, shape_text


class Reductions:
    """The lowerings of reductions, and the reduction kernel contractions share."""

    def reduction(self, k: Kernel, hint, comment, kind, out_dims, red_dims, element, inputs, leading=False):
        """out[_o] = the ``kind`` ("sum" or "max") over _r of ``element`` (C text of
        _o and _r), for the output elements ``out_dims`` and the reduced ``red_dims``
        (None for the batch size); ``leading``: the reduced axes all come before
        the kept ones (``CStyle.reduction``)."""
        out = k.out
        self.need(out)
        n_out = count_expr(out_dims)
        n_red = count_expr(red_dims)
        body = self.lang.reduction(kind, element, self.c(out), red_dims, leading)
        params = [self.out_param(out)] + [p for p, _ in inputs] + ["long long _n_out", "long long _n_red"]
        name = self.mod.kernels.add(hint, comment, params, body)
        self.lines.append(self.lang.launch_reduction(name, n_out, [self.c(out)] + [a for _, a in inputs]
                                                     + [n_out, n_red], red_dims))

    def reduce_over(self, k: Kernel, x: Value, reduced: set, kind: str, what: str):
        """Reduce the full axes ``reduced`` of x (axis 0 is the batch axis when batched)."""
        xd = full_dims(x)
        xs = row_strides(xd)
        kept = [j for j in range(len(xd)) if j not in reduced]
        red = [j for j in range(len(xd)) if j in reduced]
        inputs: list = []
        idx = " + ".join(t for t in (offset("_o", [xd[j] for j in kept], [xs[j] for j in kept]),
                                     offset("_r", [xd[j] for j in red], [xs[j] for j in red])) if t != "0") or "0"
        element = self.read(x, idx, inputs)
        comment = [f"{self.c(k.out)} = {what}, {self.lang.reduction_note}"]
        leading = bool(kept) and bool(red) and max(red) < min(kept)
        self.reduction(k, self.c(k.out), comment, kind, [xd[j] for j in kept], [xd[j] for j in red],
                       element, inputs, leading)

    @lowers("reduce")
    def lower_reduce(self, k: Kernel):
        kind, axes, keepdims, _ = k.attrs
        x = k.args[0]
        off = 1 if x.batched else 0
        ax = ", ".join(str(a) for a in axes)
        self.reduce_over(k, x, {a + off for a in axes}, kind,
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
        self.reduce_over(k, x, reduced, "sum", f"{self.c(x)} summed over {over} to {shape_text(k.out)}")
