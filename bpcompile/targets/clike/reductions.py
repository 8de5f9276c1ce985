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

    def reduction_of(self, k: Kernel) -> tuple:
        """(the reduced full axes of k's argument, "sum" or "max", what it is, in
        words) of a ``reduce`` or ``sum_to`` kernel."""
        x = k.args[0]
        off = 1 if x.batched else 0
        if k.op == "reduce":
            kind, axes, keepdims, _ = k.attrs
            ax = ", ".join(str(a) for a in axes)
            return {a + off for a in axes}, kind, f"{kind}({self.c(x)}, axis {ax}{', keepdims' if keepdims else ''})"
        target, keep_batch = k.attrs
        lead = len(x.shape) - len(target)
        reduced = set()
        if x.batched and not keep_batch:
            reduced.add(0)
        reduced |= {off + i for i in range(lead)}
        reduced |= {off + lead + i for i, d in enumerate(target) if d == 1 and x.shape[lead + i] != 1}
        over = "the batch" if (x.batched and not keep_batch) else "broadcast axes"
        return reduced, "sum", f"{self.c(x)} summed over {over} to {shape_text(k.out)}"

    @lowers("reduce")
    def lower_reduce(self, k: Kernel):
        self.reduce_over(k, k.args[0], *self.reduction_of(k))

    @lowers("sum_to")
    def lower_sum_to(self, k: Kernel):
        self.reduce_over(k, k.args[0], *self.reduction_of(k))

    def sum_strides(self, k: Kernel) -> list:
        """The strides at which the sum ``k`` (a ``reduce`` or ``sum_to``) adds each
        element of its argument into its output, one per full axis of the
        argument: 0 along the reduced axes (for ``map_and_sum``)."""
        x = k.args[0]
        reduced, _, _ = self.reduction_of(k)
        xd = full_dims(x)
        kept = [j for j in range(len(xd)) if j not in reduced]
        ks = row_strides([xd[j] for j in kept])
        return [0 if j in reduced else ks[kept.index(j)] for j in range(len(xd))]


def fusable_sums(program, lang, host: set) -> dict:
    """{a ``map`` kernel: the sum of its output that can be computed in the same
    loop nest} (``map_and_sum``), where the language writes loop nests (C): a
    ``sum_to`` or a sum ``reduce`` whose argument is the map's output, the first of
    them per map, unless an in-place kernel (a scatter-add) runs between the two.
    The sum reads nothing else, so it may run where the map runs:
    one pass over the map's output instead of two (a bias gradient summed over the
    batch as its adjoint is made, the loss as the per-example losses are)."""
    if not lang.nested_loops:
        return {}
    maps = {}   # name -> the map kernel making it, since the last in-place kernel
    fused = {}
    for k in program.kernels:
        if k.inplace:
            # it writes into an earlier value (a scatter-add into an adjoint, maybe
            # through a reshape of it): a sum of a map made before it would miss the update
            maps.clear()
        if k.op == "map" and k.out.name not in host:
            maps[k.out.name] = k
        elif k.op == "sum_to" or (k.op == "reduce" and k.attrs[0] == "sum"):
            m = maps.get(k.args[0].name)
            if m is not None and m not in fused:
                fused[m] = k
    return fused


def fused_order(kernels: list, fused: dict) -> list:
    """``kernels`` with each fused sum moved up to just after its map."""
    sums = set(fused.values())
    order = []
    for k in kernels:
        if k in sums:
            continue
        order.append(k)
        if k in fused:
            order.append(fused[k])
    return order
