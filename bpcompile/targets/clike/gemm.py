"""The C target's GEMM: the C99 text of ``bp_sgemm`` / ``bp_dgemm`` (a small
blocked kernel of ours, or CBLAS when the file is built with ``-DBPC_CBLAS``)
and ``gemm_call``, the line a language prints per contraction that is one GEMM
(``contractions.Gemm``).

The kernel is BLIS's loop nest written in plain C so that the compiler
vectorises it: op(B) is packed, NC columns x KC rows at a time, into panels of
NR columns; op(A), MR rows x KC at a time, into a sliver read one column (MR
values) per step; the micro-kernel keeps an MR x NR tile of C in a local array
whose inner loop (NR wide, a constant) the compiler turns into vector FMAs.
Packing makes the four transpose cases one case, pads the edges with zeros (the
micro-kernel always computes a whole tile) and the write-back alone looks at
the edges.  Fewer rows than a tile (a batch of one) skip packing: a row of c
at a time.  A narrow c (an output layer, n < NR) is computed as c^T =
op(b)^T op(a)^T when that pads the tiles less.  The packed buffers live on the
stack, of fixed size (``stack_bytes``, 64 KiB and a little): no malloc,
re-entrant, thread-safe.  Summation order is fixed: the same inputs give the
same bits on every call of one build.

Speed needs the vector width and FMAs of the machine: ``-O3 -march=native``,
and, with gcc in ``-std=c99`` mode (which turns floating contraction off),
``-ffp-contract=fast``; at ``-O2`` gcc 12 vectorises little (its cheap cost model).
See benchmarks/bench_c_gemm.py for what each build gives against OpenBLAS.

Built with ``-DBPC_CBLAS`` (and ``cblas.h`` plus a BLAS to link), the same
functions forward to ``cblas_sgemm`` / ``cblas_dgemm``; only ``#ifdef``,
``#else``, ``#endif`` and ``#include <cblas.h>`` are used, all lines that
``check_c_source`` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .contractions import Gemm
from .language import real_literal


@dataclass(frozen=True)
class Blocking:
    """The block sizes of one dtype: the micro-tile MR x NR (NR: a few vector
    widths), KC (rows of op(B) per packed panel) and NC (its columns)."""
    mr: int
    nr: int
    kc: int
    nc: int


# Tuned on an AVX-512 x86 (AMD Zen 4; benchmarks/bench_c_gemm.py, gcc 12 -O3
# -march=native -ffp-contract=fast): a tile of 8 zmm accumulators (4 x 16 double,
# 8 x 16 float; on an AVX2 machine that is 16 ymm, all its registers: smaller
# tiles may suit it better).  Measured there, slower: double 4 x 8, 6 x 8, 8 x 8,
# 6 x 16, 8 x 16; float 6 x 16 (by 10-30%), 4 x 32, 6 x 32, and 4 x 16, which gcc
# vectorised across the rows instead of the columns: 40x slower.  The packed B
# panel (KC x NC, 64 KiB) stays in L2, the A sliver (MR x KC) in L1.
BLOCKING = {
    "float64": Blocking(mr=4, nr=16, kc=128, nc=64),
    "float32": Blocking(mr=8, nr=16, kc=128, nc=128),
}

_TYPES = {"float64": ("double", "d"), "float32": ("float", "s")}


def gemm_name(dtype: str) -> str:
    """``bp_dgemm`` (float64) or ``bp_sgemm`` (float32)."""
    return f"bp_{_prefix(dtype)}gemm"


def _prefix(dtype: str) -> str:
    if dtype not in _TYPES:
        raise ValueError(f"no GEMM for dtype {dtype!r} (float32 or float64)")
    return _TYPES[dtype][1]


def stack_bytes(dtype: str) -> int:
    """The stack the kernel's packed buffers take, in bytes."""
    b = BLOCKING[dtype]
    size = 8 if dtype == "float64" else 4
    return size * (b.kc * b.nc + b.mr * b.kc + b.mr * b.nr)


_SIGNATURE = ("void {f}(int trans_a, int trans_b, int m, int n, int k, {t} alpha,\n"
              "    const {t}* restrict a, int lda, const {t}* restrict b, int ldb,\n"
              "    {t} beta, {t}* restrict c, int ldc)")

_DOC = """\
// {f}: c = alpha * op(a) @ op(b) + beta * c, {t}, row-major (CBLAS's arguments,
// row-major): op(a) [m x k] is a [m x lda] (a [k x lda] transposed when trans_a),
// op(b) [k x n] is b [k x ldb] (b [n x ldb] transposed when trans_b), c [m x ldc].
// c may not overlap a or b; when beta is 0, c is not read (a NaN there is overwritten)."""

_CBLAS = """\
{linkage}{signature}
{{
    cblas_{p}gemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}}"""

_KERNEL = """\
// op(b)[0:kc, 0:nc] (b: its first element) packed into panels of {nr} columns:
// bp[j0 * kc + p * {nr} + j] = op(b)[p, j0 + j], zeros past column nc
static void {f}_pack_b(int trans_b, int kc, int nc, const {t}* restrict b, int ldb, {t}* restrict bp)
{{
    for (int j0 = 0; j0 < nc; j0 += {nr}) {{
        const int nr = nc - j0 < {nr} ? nc - j0 : {nr};
        {t}* restrict panel = bp + (size_t)j0 * kc;
        if (trans_b) {{   // read along the rows of b
            for (int j = 0; j < nr; j++) {{
                const {t}* restrict src = b + (size_t)(j0 + j) * ldb;
                for (int p = 0; p < kc; p++) panel[(size_t)p * {nr} + j] = src[p];
            }}
            for (int j = nr; j < {nr}; j++)
                for (int p = 0; p < kc; p++) panel[(size_t)p * {nr} + j] = {zero};
            continue;
        }}
        for (int p = 0; p < kc; p++) {{
            {t}* restrict dst = panel + (size_t)p * {nr};
            const {t}* restrict src = b + (size_t)p * ldb + j0;
            if (nr == {nr}) {{
                for (int j = 0; j < {nr}; j++) dst[j] = src[j];
            }} else {{
                for (int j = 0; j < nr; j++) dst[j] = src[j];
                for (int j = nr; j < {nr}; j++) dst[j] = {zero};
            }}
        }}
    }}
}}

// op(a)[0:mr, 0:kc] (a: its first element) packed by columns: ap[p * {mr} + r] = op(a)[r, p],
// zeros past row mr
static void {f}_pack_a(int trans_a, int mr, int kc, const {t}* restrict a, int lda, {t}* restrict ap)
{{
    if (mr == {mr}) {{   // a whole sliver: loops of a constant length
        if (trans_a) {{
            for (int p = 0; p < kc; p++)
                for (int r = 0; r < {mr}; r++) ap[(size_t)p * {mr} + r] = a[(size_t)p * lda + r];
        }} else {{
            for (int r = 0; r < {mr}; r++)
                for (int p = 0; p < kc; p++) ap[(size_t)p * {mr} + r] = a[(size_t)r * lda + p];
        }}
        return;
    }}
    for (int p = 0; p < kc; p++) {{
        {t}* restrict dst = ap + (size_t)p * {mr};
        for (int r = 0; r < mr; r++) dst[r] = trans_a ? a[(size_t)p * lda + r] : a[(size_t)r * lda + p];
        for (int r = mr; r < {mr}; r++) dst[r] = {zero};
    }}
}}

// the {mr} x {nr} tile ct = ap @ bp over kc (the inner loop: {nr} lanes, one vector FMA each);
// inline: gcc 12, left to itself, clones the callers for their constant arguments and
// keeps this out of line, where it vectorises worse (deep thin: 1.6x slower)
static inline void {f}_tile(int kc, const {t}* restrict ap, const {t}* restrict bp, {t}* restrict ct)
{{
{tile_body}
}}

// c[0:mr, 0:nr] = alpha * ct + beta * c (c not read when beta is 0); c[r, j] is at
// c[r * rs + j * cs] (cs 1: c row-major; rs 1: c transposed, see {f})
static void {f}_store(int mr, int nr, {t} alpha, const {t}* restrict ct, {t} beta, {t}* restrict c,
    size_t rs, size_t cs)
{{
    for (int r = 0; r < mr; r++) {{
        {t}* restrict crow = c + r * rs;
        const {t}* restrict trow = ct + r * {nr};
        if (nr == {nr} && cs == 1) {{
            if (beta == {zero}) {{
                for (int j = 0; j < {nr}; j++) crow[j] = alpha * trow[j];
            }} else {{
                for (int j = 0; j < {nr}; j++) crow[j] = alpha * trow[j] + beta * crow[j];
            }}
        }} else {{
            for (int j = 0; j < nr; j++)
                crow[j * cs] = beta == {zero} ? alpha * trow[j] : alpha * trow[j] + beta * crow[j * cs];
        }}
    }}
}}

// the blocked product, c[i, j] at c[i * rs + j * cs]
static void {f}_blocked(int trans_a, int trans_b, int m, int n, int k, {t} alpha,
    const {t}* restrict a, int lda, const {t}* restrict b, int ldb, {t} beta, {t}* restrict c, size_t rs, size_t cs)
{{
    // stack: {stack} bytes
    {t} bp[{kc} * {nc}];
    {t} ap[{mr} * {kc}];
    {t} ct[{mr} * {nr}];
    for (int j0 = 0; j0 < n; j0 += {nc}) {{
        const int nc = n - j0 < {nc} ? n - j0 : {nc};
        for (int p0 = 0; p0 < k; p0 += {kc}) {{
            const int kc = k - p0 < {kc} ? k - p0 : {kc};
            const {t} beta_p = p0 == 0 ? beta : {one};   // later K blocks add to c
            {f}_pack_b(trans_b, kc, nc, trans_b ? b + (size_t)j0 * ldb + p0 : b + (size_t)p0 * ldb + j0, ldb, bp);
            for (int i0 = 0; i0 < m; i0 += {mr}) {{
                const int mr = m - i0 < {mr} ? m - i0 : {mr};
                {f}_pack_a(trans_a, mr, kc, trans_a ? a + (size_t)p0 * lda + i0 : a + (size_t)i0 * lda + p0, lda, ap);
                for (int jr = 0; jr < nc; jr += {nr}) {{
                    {f}_tile(kc, ap, bp + (size_t)jr * kc, ct);
                    {f}_store(mr, nc - jr < {nr} ? nc - jr : {nr}, alpha, ct, beta_p,
                              c + i0 * rs + (j0 + jr) * cs, rs, cs);
                }}
            }}
        }}
    }}
}}

// the tiles' padding when c [m x n] is cut into {mr} x {nr} tiles
static long long {f}_padded(int m, int n)
{{
    return (long long)((m + {mr} - 1) / {mr} * {mr}) * ((n + {nr} - 1) / {nr} * {nr});
}}

// fewer rows than a tile (a batch of one): no packing, one row of c at a time;
// op(b) = b: c[i, :] accumulates alpha * a[i, p] * b[p, :] over p (vector over the row);
// op(b) = b^T: c[i, j] is a dot product, in {nr} partial sums (lane q takes p = q mod {nr})
static void {f}_rows(int trans_a, int trans_b, int m, int n, int k, {t} alpha,
    const {t}* restrict a, int lda, const {t}* restrict b, int ldb, {t} beta, {t}* restrict c, int ldc)
{{
    for (int i = 0; i < m; i++) {{
        {t}* restrict crow = c + (size_t)i * ldc;
        if (!trans_b) {{
            for (int j = 0; j < n; j++) crow[j] = beta == {zero} ? {zero} : beta * crow[j];
            for (int p = 0; p < k; p++) {{
                const {t} ap = alpha * (trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]);
                const {t}* restrict brow = b + (size_t)p * ldb;
                for (int j = 0; j < n; j++) crow[j] += ap * brow[j];
            }}
            continue;
        }}
        for (int j = 0; j < n; j++) {{
            const {t}* restrict brow = b + (size_t)j * ldb;
            {t} lane[{nr}];
            for (int q = 0; q < {nr}; q++) lane[q] = {zero};
            int p = 0;
            if (!trans_a) {{
                const {t}* restrict arow = a + (size_t)i * lda;
                for (; p + {nr} <= k; p += {nr})
                    for (int q = 0; q < {nr}; q++) lane[q] += arow[p + q] * brow[p + q];
            }}
            for (; p < k; p++) lane[p % {nr}] += (trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]) * brow[p];
            {t} sum = {zero};
            for (int q = 0; q < {nr}; q++) sum += lane[q];
            crow[j] = beta == {zero} ? alpha * sum : alpha * sum + beta * crow[j];
        }}
    }}
}}

{doc}
{linkage}{signature}
{{
    if (m <= 0 || n <= 0) return;
    if (k <= 0 || alpha == {zero}) {{   // c = beta * c (BLAS: a and b are not read)
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c[(size_t)i * ldc + j] = beta == {zero} ? {zero} : beta * c[(size_t)i * ldc + j];
        return;
    }}
    if (m < {mr}) {{
        {f}_rows(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }}
    // narrow c (an output layer): c^T = op(b)^T op(a)^T wastes less of the tiles
    const int swap = n >= {mr} && {f}_padded(n, m) < {f}_padded(m, n);
    {f}_blocked(swap ? !trans_b : trans_a, swap ? !trans_a : trans_b, swap ? n : m, swap ? m : n, k, alpha,
                swap ? b : a, swap ? ldb : lda, swap ? a : b, swap ? lda : ldb, beta, c,
                swap ? 1 : (size_t)ldc, swap ? (size_t)ldc : 1);
}}"""


def _tile_body(t: str, b: Blocking, zero: str) -> str:
    """The micro-kernel's body: one accumulator row per row of the tile, written
    out, so that the only loop left to vectorise is the one over the NR columns
    (gcc, given the rows as a loop, vectorised across them instead, 5-10x slower);
    the row of B is copied to a local first, so that it is loaded once per step
    into registers rather than once per FMA."""
    rows = range(b.mr)
    lines = [f"    {t} " + ", ".join(f"acc{r}[{b.nr}]" for r in rows) + ";",
             f"    for (int j = 0; j < {b.nr}; j++) {{",
             *[f"        acc{r}[j] = {zero};" for r in rows],
             "    }",
             "    for (int p = 0; p < kc; p++) {",
             f"        const {t}* restrict brow = bp + (size_t)p * {b.nr};",
             f"        const {t}* restrict acol = ap + (size_t)p * {b.mr};",
             *[f"        const {t} a{r} = acol[{r}];" for r in rows],
             f"        {t} bv[{b.nr}];",
             f"        for (int j = 0; j < {b.nr}; j++) bv[j] = brow[j];",
             f"        for (int j = 0; j < {b.nr}; j++) {{",
             *[f"            acc{r}[j] += a{r} * bv[j];" for r in rows],
             "        }",
             "    }",
             f"    for (int j = 0; j < {b.nr}; j++) {{",
             *[f"        ct[{r * b.nr} + j] = acc{r}[j];" for r in rows],
             "    }"]
    return "\n".join(lines)


def gemm_source(dtypes=("float64",), *, linkage: str = "static ") -> str:
    """The C99 text of the GEMM of each dtype in ``dtypes`` (``bp_dgemm`` and/or
    ``bp_sgemm``, see ``gemm_call``): ours, or CBLAS's under ``-DBPC_CBLAS``.

    Print it once per file, and only when a function calls it (``"gemm" in uses``):
    a ``static`` function never called is a warning.  ``linkage`` is what stands
    before the two entry functions (``"static "``, or ``""`` to export them, as
    the tests do); the helpers are always static."""
    dtypes = list(dict.fromkeys(dtypes))
    if not dtypes:
        raise ValueError("gemm_source: no dtype")
    ours, cblas = [], []
    for dtype in dtypes:
        _prefix(dtype)   # checks it
        t, p = _TYPES[dtype]
        b = BLOCKING[dtype]
        f = gemm_name(dtype)
        signature = _SIGNATURE.format(f=f, t=t)
        cblas.append(_CBLAS.format(linkage=linkage, signature=signature, p=p))
        ours.append(_KERNEL.format(
            f=f, t=t, mr=b.mr, nr=b.nr, kc=b.kc, nc=b.nc, linkage=linkage, signature=signature,
            doc=_DOC.format(f=f, t=t), stack=stack_bytes(dtype), tile_body=_tile_body(t, b, real_literal(0, dtype)),
            zero=real_literal(0, dtype), one=real_literal(1, dtype)))
    return "\n".join(["#ifdef BPC_CBLAS", "#include <cblas.h>", "", "\n\n".join(cblas), "#else", "",
                      "\n\n".join(ours), "#endif", ""])


def gemm_call(g: Gemm, out: str | None = None, left: str | None = None, right: str | None = None) -> str:
    """The C line computing the row-major GEMM ``g``, out = op(left) @ op(right)
    (alpha 1, beta 0), in a loop over the batch (``g.count`` products) when
    ``g.batched``; accumulated into one output, beta 1 after the first product,
    when ``g.accumulate``.  The operand names are ``g``'s unless given."""
    out, left, right = out or g.out, left or g.left, right or g.right
    one, zero = real_literal(1, g.dtype), real_literal(0, g.dtype)
    f = gemm_name(g.dtype)
    tl, tr = int(g.trans_left), int(g.trans_right)
    if not g.batched:
        return (f"{f}({tl}, {tr}, {g.m}, {g.n}, {g.k}, {one}, {left}, {g.ld_left}, {right}, {g.ld_right}, "
                f"{zero}, {out}, {g.n});")

    def at(name, stride):
        return f"{name} + (size_t)_ex * {stride}" if stride else name

    beta = f"_ex ? {one} : {zero}" if g.accumulate else zero
    return (f"for (int _ex = 0; _ex < {g.count}; _ex++) "
            f"{f}({tl}, {tr}, {g.m}, {g.n}, {g.k}, {one}, {at(left, g.stride_left)}, {g.ld_left}, "
            f"{at(right, g.stride_right)}, {g.ld_right}, {beta}, {at(out, g.stride_out)}, {g.n});")
