"""Elementwise and index kernels: one loop over the elements of the output.

A fused elementwise ``map`` reads its arguments at the output's flat index
(broadcasting by index arithmetic on the per-example shapes); take / gather /
onehot / transpose / slice / broadcast read one element each; unslice and concat
write each element of their arguments into its place; scatter_add loops over the
examples, scatter_rows over the elements of the adjoint it adds up
(``CStyle.accumulate``: atomically where the language runs in parallel); copy and
zeros are the language's memory operations and reshape is an alias of the same
memory.
"""

from __future__ import annotations

import sympy as sp

from ...ir.program import Kernel, Value
from ..base import lowers
from ...ops.structural import axis_window, key_text
from .language import (broadcast_strides, count_expr, full_dims, line_comment, loop_nest, offset, row_strides,
                       shape_text, size_of)


class ElementwiseKernels:
    """The lowerings of kernels that compute each output element on its own."""

    def elementwise(self, k: Kernel, hint, comment, inputs, body, out=None, counts=None, before=(), sizes=()):
        """A kernel running ``body`` for each element ``_i`` of ``out`` (default
        k.out), and its launch; or, given ``counts`` (``loop_nest``'s), for each
        ``_i0``, ``_i1``, ... of a loop nest.  inputs: [(C parameter declaration,
        host argument)]; ``before``: lines ahead of the loops; ``sizes``: more
        long long parameters after ``_n``, [(name, host argument)]."""
        out = out or k.out
        self.need(out)
        n = count_expr(full_dims(out))
        params = [self.out_param(out)] + [p for p, _ in inputs] + ["long long _n"] + [f"long long {s}" for s, _ in sizes]
        loops = self.lang.nest("_n", counts, body) if counts else self.lang.loop("_i", "_n", body)
        name = self.mod.kernels.add(hint, comment, params, list(before) + loops)
        self.lines.append(self.lang.launch(name, n, [self.c(out)] + [a for _, a in inputs] + [n]
                                           + [a for _, a in sizes], out))

    @lowers("map")
    def lower_map(self, k: Kernel):
        self.map_and_sum(k, None)

    def map_and_sum(self, k: Kernel, total: Kernel | None):
        """The map ``k``; and given ``total``, a sum of k's output (``fusable_sums``),
        added up in the same loop nest as each element is made: the sum's output
        zeroed first, then ``total[at] += value`` at strides that are 0 along the
        reduced axes.  The loop nest walks the elements in row-major order, so each
        sum adds its terms in the order the reduction kernel would: the same bits,
        unless the compiler contracts the map's last multiply into the add (an FMA,
        under -ffp-contract=fast)."""
        temps, expr = k.attrs
        if k.out.name in self.host:
            # a scalar of N and constants only: computed on the host, passed by value
            p = self.printer({a.name: "(real)N" if a.kind == "batch_size" else self.c(a) for a in k.args})
            self.lines += [f"const real {name} = {p.doprint(e)};" for name, e in temps]
            self.lines.append(f"const real {self.c(k.out)} = {p.doprint(expr)};")
            return
        inputs: list = []
        leaf = {}
        counts, at = self.indexing(k.out, k.args, self.sum_strides(total) if total is not None else None)
        for a in k.args:
            leaf[a.name] = self.read(a, at[a.name], inputs)
        p = self.printer(leaf)
        body = [f"const real {name} = {p.doprint(e)};" for name, e in temps]
        shown = self.printer({a.name: self.c(a) for a in k.args})
        whole = expr.xreplace({sp.Symbol(n, real=True): e for n, e in reversed(temps)})
        comment = [f"{self.c(k.out)} = {shown.doprint(whole)}  (elementwise over {shape_text(k.out)})"]
        if len(comment[0]) > 110:
            comment = [f"{self.c(k.out)}: elementwise over {shape_text(k.out)}"]
        if total is None:
            body.append(f"{self.c(k.out)}[{at[None]}] = {p.doprint(expr)};")
            self.elementwise(k, self.c(k.out), comment, inputs, body, counts=counts)
            return
        out, red = self.c(k.out), self.c(total.out)
        self.need(total.out)
        body += [f"const real _v = {p.doprint(expr)};", f"{out}[{at[None]}] = _v;", f"{red}[{at['sum()']}] += _v;"]
        comment.append(f"and {red} = {self.reduction_of(total)[2]}, added up in the same loop")
        inputs.append((self.out_param(total.out), red))
        self.elementwise(k, out, comment, inputs, body, counts=counts,
                         before=self.lang.loop("_o", "_n_red", [f"{red}[_o] = 0;"]),
                         sizes=[("_n_red", count_expr(full_dims(total.out)))])

    def indexing(self, out: Value, args, sum_strides=None) -> tuple:
        """(counts, {arg name: offset; None: the output's}) of an elementwise kernel
        writing ``out`` and reading ``args`` broadcast to its shape: a loop nest's
        (``loop_nest``) where the language runs one, else counts None and offsets
        of the flat index ``_i``.  ``sum_strides``: those of a sum made in the same
        loop nest (``map_and_sum``; loop nests only), its offset under "sum()"."""
        dims = full_dims(out)
        arrays = [a for a in args if a.kind not in ("const", "batch_size")]
        if not self.lang.nested_loops:
            at = {a.name: offset("_i", dims, broadcast_strides(a, out)) for a in arrays}
            at[None] = "_i"
            return None, {**{a.name: "0" for a in args}, **at}
        extra = [sum_strides] if sum_strides is not None else []
        counts, offs = loop_nest(dims, [row_strides(dims)] + [broadcast_strides(a, out) for a in arrays] + extra)
        at = {a.name: "0" for a in args}
        at.update({a.name: o for a, o in zip(arrays, offs[1:])})
        at[None] = offs[0]
        if extra:
            at["sum()"] = offs[-1]   # not a value's name: those are identifiers
        return counts, at

    @lowers("broadcast")
    def lower_broadcast(self, k: Kernel):
        x = k.args[0]
        if x.kind == "const" or x.name in self.host:
            self.need(k.out)
            self.lines.append(self.lang.fill(self.c(k.out), f"(real){self.c(x)}", count_expr(full_dims(k.out))))
            return
        inputs: list = []
        counts, at = self.indexing(k.out, [x])
        body = [f"{self.c(k.out)}[{at[None]}] = {self.read(x, at[x.name], inputs)};"]
        self.elementwise(k, self.c(k.out), [f"{self.c(k.out)} = {self.c(x)} broadcast to {shape_text(k.out)}"],
                         inputs, body, counts=counts)

    @lowers("reshape")
    def lower_reshape(self, k: Kernel):
        x = k.args[0]
        self.alias[k.out.name] = x.name
        self.lines.append(line_comment(f"{self.c(k.out)} is {self.c(x)} reshaped to {shape_text(k.out)}: "
                                       "the same memory"))

    @lowers("take")
    def lower_take(self, k: Kernel):
        x, label = k.args
        if len(x.shape) != 1:
            raise NotImplementedError(f"{self.lang.name} take: only rows of per-example vectors")
        K = x.shape[0]
        inputs: list = []
        xi = self.read(x, f"_i * {K} + _l" if x.batched else "_l", inputs)
        li = self.read(label, "_i", inputs)
        body = [f"const int _l = {li};",
                f"{self.c(k.out)}[_i] = (0 <= _l && _l < {K}) ? {xi} : NAN;  // NaN for a label out of range"]
        self.elementwise(k, self.c(k.out), [f"{self.c(k.out)}[n] = {self.c(x)}[n, {self.c(label)}[n]]"],
                         inputs, body)

    @lowers("scatter_add")
    def lower_scatter_add(self, k: Kernel):
        base, label, value = k.args
        out = k.out
        self.need(out)
        if len(out.shape) != 1 or not out.batched:
            raise NotImplementedError(f"{self.lang.name} scatter_add: only rows of batched per-example vectors")
        K = out.shape[0]
        if not k.inplace:
            self.lines.append(self.lang.copy(self.c(out), self.c(base), f"(size_t)N * {K}"))
        inputs: list = []
        li = self.read(label, "_i", inputs)
        vi = self.read(value, "_i" if value.batched else "0", inputs)
        body = [f"const int _l = {li};",
                f"if (0 <= _l && _l < {K}) {self.c(out)}[_i * {K} + _l] += {vi};"]
        # one iteration per example: each writes its own row (no atomics in parallel)
        params = [self.out_param(out)] + [p for p, _ in inputs] + ["long long _n"]
        name = self.mod.kernels.add(
            f"{self.c(out)}_scatter",
            [f"{self.c(out)}[n, {self.c(label)}[n]] += {self.c(value)}[n], {self.lang.scatter_note}"], params,
            self.lang.loop("_i", "_n", body))
        self.lines.append(self.lang.launch(name, "(long long)N", [self.c(out)] + [a for _, a in inputs]
                                           + ["(long long)N"], out))

    @lowers("gather")
    def lower_gather(self, k: Kernel):
        x, index = k.args
        V, R, T = x.shape[0], size_of(x.shape[1:]), size_of(index.shape)
        inputs: list = []
        # _i runs over [N, T, ...rest]: position _i / R (an example's token), column _i % R
        li = self.read(index, "_i" if R == 1 else f"_i / {R}", inputs)
        at = " + ".join(t for t in (f"(_i / {T * R}) * {V * R}" if x.batched else "",
                                    "_l" if R == 1 else f"_l * {R}", f"_i % {R}" if R != 1 else "") if t)
        xi = self.read(x, at, inputs)
        body = [f"const int _l = {li};",
                f"{self.c(k.out)}[_i] = (0 <= _l && _l < {V}) ? {xi} : NAN;  // NaN for a token out of range"]
        self.elementwise(k, self.c(k.out), [f"{self.c(k.out)} = {self.c(x)}[{self.c(index)}]: rows picked by "
                                            f"{self.c(index)}, per example"], inputs, body)

    @lowers("scatter_rows")
    def lower_scatter_rows(self, k: Kernel):
        g, index = k.args
        shape, batched = k.attrs
        out = k.out
        V, R, T = shape[0], size_of(shape[1:]), size_of(index.shape)
        self.need(out)
        self.lines.append(self.lang.zero(self.c(out), f"(size_t)({count_expr(full_dims(out))})"))
        inputs: list = []
        # _i runs over g [N, T, ...rest]: position _i / R adds its column _i % R at row tokens[position]
        li = self.read(index, "_i" if R == 1 else f"_i / {R}", inputs)
        gi = self.read(g, "_i", inputs)
        at = " + ".join(t for t in (f"(_i / {T * R}) * {V * R}" if batched else "",
                                    "_l" if R == 1 else f"_l * {R}", f"_i % {R}" if R != 1 else "") if t)
        body = [f"const int _l = {li};",
                f"if (0 <= _l && _l < {V}) " + self.lang.accumulate(f"{self.c(out)}[{at}]", gi)]
        n = count_expr(full_dims(g))
        params = [self.out_param(out)] + [p for p, _ in inputs] + ["long long _n"]
        name = self.mod.kernels.add(
            f"{self.c(out)}_scatter",
            [f"{self.c(out)} = zeros {shape_text(out)}, each row of {self.c(g)} added at row "
             f"{self.c(index)}[{'n, t' if index.shape else 'n'}]" + (" (summed over the batch)" if not batched else ""),
             *self.lang.scatter_rows_note], params,
            self.lang.loop("_i", "_n", body))
        self.lines.append(self.lang.launch(name, n, [self.c(out)] + [a for _, a in inputs] + [n], g))

    @lowers("zeros")
    def lower_zeros(self, k: Kernel):
        self.need(k.out)
        n = count_expr(full_dims(k.out))
        self.lines.append(self.lang.zero(self.c(k.out), f"(size_t)({n})"))

    @lowers("copy")
    def lower_copy(self, k: Kernel):
        x = k.args[0]
        self.need(k.out)
        n = count_expr(full_dims(k.out))
        self.lines.append(self.lang.copy(self.c(k.out), self.c(x), f"(size_t)({n})"))

    @lowers("onehot")
    def lower_onehot(self, k: Kernel):
        (classes,) = k.attrs
        label = k.args[0]
        inputs: list = []
        li = self.read(label, f"_i / {classes}", inputs)
        body = [f"{self.c(k.out)}[_i] = (real)({li} == _i % {classes});"]
        self.elementwise(k, self.c(k.out), [f"{self.c(k.out)} = onehot({self.c(label)}, {classes})"], inputs, body)

    @lowers("transpose")
    def lower_transpose(self, k: Kernel):
        x = k.args[0]
        st = row_strides(list(x.shape))[::-1]
        strides = ([size_of(x.shape)] if x.batched else []) + st
        inputs: list = []
        body = [f"{self.c(k.out)}[_i] = {self.read(x, offset('_i', full_dims(k.out), strides), inputs)};"]
        self.elementwise(k, self.c(k.out), [f"{self.c(k.out)} = {self.c(x)}^T"], inputs, body)

    @lowers("slice")
    def lower_slice(self, k: Kernel):
        (key,) = k.attrs
        x = k.args[0]
        strides, base = window(x, key)
        inputs: list = []
        body = [f"{self.c(k.out)}[_i] = {self.read(x, plus(offset('_i', full_dims(k.out), strides), base), inputs)};"]
        self.elementwise(k, self.c(k.out), [f"{self.c(k.out)} = {self.c(x)}[{key_text(key, x.shape)}]"],
                         inputs, body)

    @lowers("unslice")
    def lower_unslice(self, k: Kernel):
        shape, key = k.attrs
        self.need(k.out)
        self.lines.append(self.lang.zero(self.c(k.out), f"(size_t)({count_expr(full_dims(k.out))})"))
        self.place(k.out, k.args[0], key, f"{self.c(k.out)} = zeros {shape_text(k.out)} with "
                                          f"[{key_text(key, shape)}] = {self.c(k.args[0])}")

    @lowers("concat")
    def lower_concat(self, k: Kernel):
        (axis,) = k.attrs
        self.need(k.out)
        start = 0
        for a in k.args:
            stop = start + a.shape[axis]
            key = axis_window(k.out.shape, axis, start, stop)
            self.place(k.out, a, key, f"{self.c(k.out)}[{key_text(key, k.out.shape)}] = {self.c(a)}"
                                      f"{'' if a.batched or not k.out.batched else ' (for every example)'}")
            start = stop

    def place(self, out: Value, src: Value, key: tuple, comment: str):
        """A kernel writing ``src`` into ``out[key]``, one thread per element of src
        (for every example of out when src has no batch axis): distinct elements
        of out, so no two threads write one place."""
        dims = ([None] if out.batched else []) + list(src.shape)
        strides, base = window(out, key)
        src_strides = ([size_of(src.shape) if src.batched else 0] if out.batched else []) + row_strides(list(src.shape))
        inputs: list = []
        body = [f"{self.c(out)}[{plus(offset('_i', dims, strides), base)}] = "
                f"{self.read(src, offset('_i', dims, src_strides), inputs)};"]
        n = count_expr(dims)
        params = [self.out_param(out)] + [p for p, _ in inputs] + ["long long _n"]
        name = self.mod.kernels.add(f"{self.c(out)}_place", [comment], params, self.lang.loop("_i", "_n", body))
        extent = src if src.batched == out.batched else out
        self.lines.append(self.lang.launch(name, n, [self.c(out)] + [a for _, a in inputs] + [n], extent))


def window(big: Value, key: tuple) -> tuple:
    """(The strides in ``big``, batch axis first when it has one, of the axes of
    ``big[key]``; the offset of its first element): reading big[key] at flat index
    _i of the window is ``offset('_i', dims, strides) + base``."""
    st = row_strides(list(big.shape))
    strides, base = ([size_of(big.shape)] if big.batched else []), 0
    for j, d in enumerate(big.shape):
        k = key[j] if j < len(key) else (0, d, 1)
        if isinstance(k, tuple):
            strides.append(k[2] * st[j])
            base += k[0] * st[j]
        else:
            base += k * st[j]
    return strides, base


def plus(idx: str, base: int) -> str:
    """``idx + base`` as C, without a ``+ 0`` or a ``0 +``."""
    if not base:
        return idx
    return str(base) if idx == "0" else f"{idx} + {base}"
