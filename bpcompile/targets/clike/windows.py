"""The windows of an array (``windows``: im2col) and their adjoint (``unwindow``:
col2im), one element kernel each.

``windows`` writes each entry of the windows [.., *kernel, *positions] from the
input entry it reads (zero in the padding); a convolution then reads them as a
matrix in one GEMM.  ``unwindow`` computes each entry of the input's adjoint as
the sum, over the kernel's offsets, of the windows' entries that read it: a
gather, so that every output element is written by one thread (no atomics, and
the sum's order is fixed: deterministic).
"""

from __future__ import annotations

from ...ir.program import Kernel
from ...ops.structural import window_sizes
from ..base import lowers
from .language import shape_text


def _decode(dims, names) -> list:
    """Lines splitting ``_r`` (a flat index, row-major over ``dims`` and the axes
    before them) into ``names``, innermost first; ``_r`` keeps the leading index."""
    lines = []
    for d, name in reversed(list(zip(dims, names))):
        lines += [f"const long long {name} = _r % {d};", f"_r /= {d};"]
    return lines


class WindowKernels:
    """The lowerings of windows and unwindow."""

    @lowers("windows")
    def lower_windows(self, k: Kernel):
        kernel, stride, padding = k.attrs
        x = k.args[0]
        d = len(kernel)
        spatial = x.shape[-d:]
        positions = window_sizes(spatial, kernel, stride, padding)
        inputs: list = []
        body = ["long long _r = _i;"]
        body += _decode(positions, [f"_p{a}" for a in range(d)])
        body += _decode(kernel, [f"_k{a}" for a in range(d)])
        # the input coordinate read along each axis (negative or past the end: the padding)
        for a in range(d):
            lo = padding[a][0]
            body.append(f"const long long _s{a} = _p{a}" + (f" * {stride[a]}" if stride[a] != 1 else "")
                        + f" + _k{a}" + (f" - {lo}" if lo else "") + ";")
        idx = "_r"
        for a in range(d):
            idx = f"({idx}) * {spatial[a]} + _s{a}"
        idx = idx.replace("(_r)", "_r")
        read = self.read(x, idx, inputs)
        inside = [f"0 <= _s{a} && _s{a} < {spatial[a]}" for a in range(d) if any(padding[a])]
        value = f"({' && '.join(inside)}) ? {read} : 0" if inside else read
        body.append(f"{self.c(k.out)}[_i] = {value};")
        comment = [f"{self.c(k.out)} = the {' x '.join(map(str, kernel))} windows of {self.c(x)}"
                   f"{_moves(stride, padding)} (im2col): {shape_text(x)} -> {shape_text(k.out)}"]
        self.elementwise(k, self.c(k.out), comment, inputs, body)

    @lowers("unwindow")
    def lower_unwindow(self, k: Kernel):
        spatial, kernel, stride, padding = k.attrs
        g = k.args[0]
        d = len(kernel)
        positions = window_sizes(spatial, kernel, stride, padding)
        inputs: list = []
        body = ["long long _r = _i;"]
        body += _decode(spatial, [f"_s{a}" for a in range(d)])
        body.append("real _acc = 0;")
        idx = "_r"
        for a in range(d):
            idx = f"({idx}) * {kernel[a]} + _k{a}"
        for a in range(d):
            idx = f"({idx}) * {positions[a]} + _t{a}" + (f" / {stride[a]}" if stride[a] != 1 else "")
        idx = idx.replace("(_r)", "_r")
        loops, indent = [], ""
        for a in range(d):
            lo = padding[a][0]
            # _t = p * stride: the window position p whose offset _k reads this entry, if any
            skip = [f"_t{a} < 0"] + ([f"_t{a} % {stride[a]} != 0"] if stride[a] != 1 else []) \
                + [f"_t{a}" + (f" / {stride[a]}" if stride[a] != 1 else "") + f" >= {positions[a]}"]
            loops += [f"{indent}for (long long _k{a} = 0; _k{a} < {kernel[a]}; _k{a}++) {{",
                      f"{indent}    const long long _t{a} = _s{a}" + (f" + {lo}" if lo else "") + f" - _k{a};",
                      f"{indent}    if ({' || '.join(skip)}) continue;"]
            indent += "    "
        loops.append(f"{indent}_acc += {self.read(g, idx, inputs)};")
        for a in reversed(range(d)):
            loops.append(" " * (4 * a) + "}")
        body += loops
        body.append(f"{self.c(k.out)}[_i] = _acc;")
        comment = [f"{self.c(k.out)} = the {' x '.join(map(str, kernel))} windows {self.c(g)} added back onto "
                   f"{shape_text(k.out)}{_moves(stride, padding)} (col2im), each entry gathering the "
                   "window entries that read it"]
        self.elementwise(k, self.c(k.out), comment, inputs, body)


def _moves(stride, padding) -> str:
    parts = []
    if any(s != 1 for s in stride):
        parts.append(f"stride {', '.join(map(str, stride))}")
    if any(p != (0, 0) for p in padding):
        parts.append("padding " + ", ".join(f"({lo}, {hi})" for lo, hi in padding))
    return (", " + ", ".join(parts)) if parts else ""
