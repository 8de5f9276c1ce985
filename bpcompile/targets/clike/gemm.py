"""The C target's GEMM: the C99 text of ``bp_sgemm`` / ``bp_dgemm`` (a small
blocked kernel of ours, or CBLAS when the file is built with ``-DBPC_CBLAS``)
and ``gemm_call``, the line a language prints per contraction that is one GEMM
(``contractions.Gemm``).

The kernel is BLIS's loop nest: op(B) is cut into panels of NR columns x KC
rows (NC columns at a time), op(A) into slivers of MR rows, and the
micro-kernel computes an MR x NR tile of C per (sliver, panel) as a sum over
the KC rows: per row p, a broadcast of each of the MR values op(a)[r, p] times
the NR values op(b)[p, :] (a few vectors).  The preprocessor picks the
micro-kernel from the vector width the compiler targets (``ISAS``):
``__AVX512F__`` or ``__FMA__`` (AVX2 machines), a micro-kernel in
``<immintrin.h>`` intrinsics whose MR * NR / width accumulators are named
vector variables (registers: no array between the FMAs), else plain C99 (a
local array per row of the tile, whose NR-wide inner loop the compiler
vectorises).  Each has its own block sizes (``BLOCKING``, macros in the C).

With intrinsics, op(a) is read where it is (rows ``ars``, columns ``acs``
apart: the four transpose cases are strides), an edge sliver (mr < MR rows)
skips the FMAs of the missing rows, and whole panels of b (not transposed) are
read in place when c has few rows (packing would not pay); other panels are
packed (transposed, or an edge padded with zeros).  Plain C packs both, the
edges with zeros: gcc vectorises its loop only over a packed sliver.  A whole
row-major tile is written from the registers; an edge, or c transposed,
through a local tile and ``_store``, the only place that looks at the edges.
Fewer rows than ``ROWS`` (a batch of one) skip the blocking: a row of c at a
time.  A narrow c (an output layer, n < NR) is computed as c^T = op(b)^T
op(a)^T when that pads the panels less.  The packed buffers live on the
stack, of fixed size (``stack_bytes``, 64 KiB and a little): no malloc,
re-entrant, thread-safe.  Summation order is fixed: the same inputs give the
same bits on every call of one build (the FMAs of the intrinsics are explicit:
the same at any -ffp-contract).

Speed needs the vector width and FMAs of the machine: ``-O3 -march=native``,
and, for plain C under gcc in ``-std=c99`` mode (which turns floating
contraction off), ``-ffp-contract=fast``; at ``-O2`` gcc 12 vectorises plain C
little (its cheap cost model).  See benchmarks/bench_c_gemm.py for what each
build gives against OpenBLAS, and ``BLOCKING`` for the figures.

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
    """The block sizes of one dtype on one instruction set: the micro-tile MR x NR
    (NR: a few vector widths), KC (rows of op(B) per packed panel) and NC (its
    columns)."""
    mr: int
    nr: int
    kc: int
    nc: int


@dataclass(frozen=True)
class VectorIsa:
    """A vector instruction set the micro-kernel is written for in intrinsics
    (``<immintrin.h>``), chosen by the preprocessor from the macro ``guard`` that
    the compiler defines when it targets it (``-march=native``, ``-mavx512f``...)."""
    name: str
    guard: str
    bits: int

    def width(self, dtype: str) -> int:
        """Lanes of one vector register."""
        return self.bits // (64 if dtype == "float64" else 32)

    def vtype(self, dtype: str) -> str:
        return f"__m{self.bits}" + ("d" if dtype == "float64" else "")

    def op(self, name: str, dtype: str) -> str:
        return f"_mm{self.bits if self.bits > 128 else ''}_{name}_" + ("pd" if dtype == "float64" else "ps")


AVX512 = VectorIsa("AVX-512", "__AVX512F__", 512)
FMA = VectorIsa("AVX2/FMA", "__FMA__", 256)
ISAS = (AVX512, FMA)      # tried in this order; neither: PORTABLE's plain C
PORTABLE = "portable"

# BLOCKING[dtype][isa name or PORTABLE].  Measured with benchmarks/bench_c_gemm.py
# on an AMD EPYC Zen 4 (2 vCPUs, shared; gcc 12.2; OpenBLAS 0.3 of NumPy 2.4, one
# thread), geomean over its 16 shapes of ours/C : blas/C, main before -> now:
#   -O3 -march=native -ffp-contract=fast (AVX-512): 1.28 -> 0.97 (mnist 128x256x784
#     float64 1.32 -> 0.97, deep thin 64^3 1.48 -> 1.07, digits 32x128x64 1.56 -> 1.05;
#     float32 1.15 -> 0.94, 1.53 -> 1.03, 1.57 -> 1.02)
#   -O3 -march=haswell -ffp-contract=fast (AVX2): 1.86 -> 1.01 against OpenBLAS's
#     AVX-512 kernels, 0.79 against its Haswell ones (OPENBLAS_CORETYPE=Haswell)
#   -O3 (plain C, SSE2): 3.08 -> 3.00 (the same kernel; within the noise per shape)
# AVX-512: 8 x 16 double / 8 x 32 float, 16 zmm accumulators (of 32).  AVX2: 6 x 8 /
# 6 x 16, 12 ymm (of 16); 4 x 8 / 4 x 16 were 5-10% slower, 4 x 12 / 4 x 24 up to
# 1.4x.  KC x NC of 256 x 32 or 64 x 128 (double) gave the same as 128 x 64 within
# the noise.  The packed B panel (KC x NC, 64 KiB) stays in L2 (1 MiB), a sliver
# of A (MR x KC) and a panel of B (KC x NR) in L1.  Plain C: today's kernel, tuned
# before (4 x 16 double, 8 x 16 float); reading A in place there made gcc's SSE2
# code 2x slower.
BLOCKING = {
    "float64": {
        AVX512.name: Blocking(mr=8, nr=16, kc=128, nc=64),
        FMA.name: Blocking(mr=6, nr=8, kc=128, nc=64),
        PORTABLE: Blocking(mr=4, nr=16, kc=128, nc=64),
    },
    "float32": {
        AVX512.name: Blocking(mr=8, nr=32, kc=128, nc=128),
        FMA.name: Blocking(mr=6, nr=16, kc=128, nc=128),
        PORTABLE: Blocking(mr=8, nr=16, kc=128, nc=128),
    },
}

_TYPES = {"float64": ("double", "d"), "float32": ("float", "s")}
ALIGN = 64      # bytes: the packed buffers start on a cache line (a vector load never splits one)


def gemm_name(dtype: str) -> str:
    """``bp_dgemm`` (float64) or ``bp_sgemm`` (float32)."""
    return f"bp_{_prefix(dtype)}gemm"


def _prefix(dtype: str) -> str:
    if dtype not in _TYPES:
        raise ValueError(f"no GEMM for dtype {dtype!r} (float32 or float64)")
    return _TYPES[dtype][1]


def stack_bytes(dtype: str) -> int:
    """The most stack the kernel's buffers take, in bytes, over the instruction sets."""
    size = 8 if dtype == "float64" else 4
    # the packed B panels (aligned), a tile, and packed A (plain C only: PACK_A)
    return max(size * (b.kc * b.nc + b.mr * b.nr + (b.mr * b.kc if isa == PORTABLE else 1)) + ALIGN
               for isa, b in BLOCKING[dtype].items())


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

# The helpers before the micro-kernel.  {MR}, {NR}, {KC}, {NC}: the macros the
# instruction set's block defines (``_defines``).
_PACKING = """\
// op(b)[0:kc, 0:nc] (b: its first element) packed into panels of {NR} columns:
// bp[j0 * kc + p * {NR} + j] = op(b)[p, j0 + j], zeros past column nc; in_place: the edge panel only
static void {f}_pack_b(int trans_b, int in_place, int kc, int nc, const {t}* restrict b, int ldb, {t}* restrict bp)
{{
    for (int j0 = 0; j0 < nc; j0 += {NR}) {{
        const int nr = nc - j0 < {NR} ? nc - j0 : {NR};
        {t}* restrict panel = bp + (size_t)j0 * kc;
        if (in_place && nr == {NR}) continue;   // read where it is (see {f}_blocked)
        if (trans_b && nr == {NR}) {{   // a whole panel: written in order, read across {NR} rows of b
            const {t}* restrict src = b + (size_t)j0 * ldb;
            for (int p = 0; p < kc; p++)
                for (int j = 0; j < {NR}; j++) panel[(size_t)p * {NR} + j] = src[(size_t)j * ldb + p];
            continue;
        }}
        if (trans_b) {{   // read along the rows of b
            for (int j = 0; j < nr; j++) {{
                const {t}* restrict src = b + (size_t)(j0 + j) * ldb;
                for (int p = 0; p < kc; p++) panel[(size_t)p * {NR} + j] = src[p];
            }}
            for (int j = nr; j < {NR}; j++)
                for (int p = 0; p < kc; p++) panel[(size_t)p * {NR} + j] = {zero};
            continue;
        }}
        for (int p = 0; p < kc; p++) {{
            {t}* restrict dst = panel + (size_t)p * {NR};
            const {t}* restrict src = b + (size_t)p * ldb + j0;
            if (nr == {NR}) {{
                for (int j = 0; j < {NR}; j++) dst[j] = src[j];
            }} else {{
                for (int j = 0; j < nr; j++) dst[j] = src[j];
                for (int j = nr; j < {NR}; j++) dst[j] = {zero};
            }}
        }}
    }}
}}

// op(a)[0:mr, 0:kc] (a: its first element) packed by columns: ap[p * {MR} + r] = op(a)[r, p],
// zeros past row mr (for the plain-C micro-kernel only: {PACK_A})
static void {f}_pack_a(int trans_a, int mr, int kc, const {t}* restrict a, int lda, {t}* restrict ap)
{{
    if (mr == {MR}) {{   // a whole sliver: loops of a constant length
        if (trans_a) {{
            for (int p = 0; p < kc; p++)
                for (int r = 0; r < {MR}; r++) ap[(size_t)p * {MR} + r] = a[(size_t)p * lda + r];
        }} else {{
            for (int r = 0; r < {MR}; r++)
                for (int p = 0; p < kc; p++) ap[(size_t)p * {MR} + r] = a[(size_t)r * lda + p];
        }}
        return;
    }}
    for (int p = 0; p < kc; p++) {{
        {t}* restrict dst = ap + (size_t)p * {MR};
        for (int r = 0; r < mr; r++) dst[r] = trans_a ? a[(size_t)p * lda + r] : a[(size_t)r * lda + p];
        for (int r = mr; r < {MR}; r++) dst[r] = {zero};
    }}
}}

// c[0:mr, 0:nr] = alpha * ct + beta * c (c not read when beta is 0), ct a {MR} x {NR}
// tile; c[r, j] is at c[r * rs + j * cs] (cs 1: c row-major; rs 1: c transposed, see {f})
static void {f}_store(int mr, int nr, {t} alpha, const {t}* restrict ct, {t} beta, {t}* restrict c,
    size_t rs, size_t cs)
{{
    for (int r = 0; r < mr; r++) {{
        {t}* restrict crow = c + r * rs;
        const {t}* restrict trow = ct + r * {NR};
        if (nr == {NR} && cs == 1) {{
            if (beta == {zero}) {{
                for (int j = 0; j < {NR}; j++) crow[j] = alpha * trow[j];
            }} else {{
                for (int j = 0; j < {NR}; j++) crow[j] = alpha * trow[j] + beta * crow[j];
            }}
        }} else {{
            for (int j = 0; j < nr; j++)
                crow[j * cs] = beta == {zero} ? alpha * trow[j] : alpha * trow[j] + beta * crow[j * cs];
        }}
    }}
}}"""

_TILE_HEAD = """\
static inline int {f}_tile({t}* restrict ct, int kc, const {t}* restrict a, size_t ars, size_t acs,
    const {t}* restrict bp, size_t bs, int mr, int nr, {t} alpha, {t} beta, {t}* restrict c, size_t rs, size_t cs)
{{"""

# The driver after the micro-kernel.
_DRIVER = """\
// the blocked product, c[i, j] at c[i * rs + j * cs]
static void {f}_blocked(int trans_a, int trans_b, int m, int n, int k, {t} alpha,
    const {t}* restrict a, int lda, const {t}* restrict b, int ldb, {t} beta, {t}* restrict c, size_t rs, size_t cs)
{{
    // the packed panels of op(b), on the stack, from a {align}-byte boundary
    {t} bp_space[{KC} * {NC} + {align} / sizeof({t})];
    {t}* restrict bp = bp_space + ({align} - (uintptr_t)bp_space % {align}) % {align} / sizeof({t});
    {t} ap[{PACK_A} ? {MR} * {KC} : 1];   // op(a) packed, for the plain-C micro-kernel
    {t} ct[{MR} * {NR}];   // a tile the micro-kernel leaves to {f}_store
    // few rows of c (a panel of op(b) serves few tiles): whole panels of b (not transposed) are read
    // where they are; more rows pay for the packing (a panel in a few cache sets, rows ldb apart,
    // evicts itself from L1: AVX2 build, 256 rows: 1.3x slower unpacked)
    const int in_place = !trans_b && m <= {IN_PLACE};
    for (int j0 = 0; j0 < n; j0 += {NC}) {{
        const int nc = n - j0 < {NC} ? n - j0 : {NC};
        for (int p0 = 0; p0 < k; p0 += {KC}) {{
            const int kc = k - p0 < {KC} ? k - p0 : {KC};
            const {t} beta_p = p0 == 0 ? beta : {one};   // later K blocks add to c
            {f}_pack_b(trans_b, in_place, kc, nc, trans_b ? b + (size_t)j0 * ldb + p0 : b + (size_t)p0 * ldb + j0, ldb, bp);
            for (int i0 = 0; i0 < m; i0 += {MR}) {{
                const int mr = m - i0 < {MR} ? m - i0 : {MR};
                // op(a)[i0 + r, p0 + p] = at[r * ars + p * acs], read where it is
                const {t}* at = trans_a ? a + (size_t)p0 * lda + i0 : a + (size_t)i0 * lda + p0;
                size_t ars = trans_a ? 1 : (size_t)lda, acs = trans_a ? (size_t)lda : 1;
                if ({PACK_A}) {{
                    {f}_pack_a(trans_a, mr, kc, at, lda, ap);
                    at = ap;
                    ars = 1;
                    acs = {MR};
                }}
                for (int jr = 0; jr < nc; jr += {NR}) {{
                    // op(b)[p0 + p, j0 + jr + j] = bt[p * bs + j]: packed, or a whole panel of b where it is
                    const int nr = nc - jr < {NR} ? nc - jr : {NR}, here = in_place && nr == {NR};
                    const {t}* bt = here ? b + (size_t)p0 * ldb + j0 + jr : bp + (size_t)jr * kc;
                    {t}* restrict ctile = c + i0 * rs + (j0 + jr) * cs;
                    if (!{f}_tile(ct, kc, at, ars, acs, bt, here ? (size_t)ldb : {NR}, mr, nr, alpha, beta_p, ctile, rs, cs))
                        {f}_store(mr, nr, alpha, ct, beta_p, ctile, rs, cs);
                }}
            }}
        }}
    }}
}}

// the work of c [m x n] cut into {MR} x {NR} tiles: the columns padded to whole panels
// (an edge tile's rows past the edge are skipped)
static long long {f}_padded(int m, int n)
{{
    return (long long)m * ((n + {NR} - 1) / {NR} * {NR});
}}

// fewer rows than a tile (a batch of one): no packing, one row of c at a time;
// op(b) = b: c[i, :] accumulates alpha * a[i, p] * b[p, :] over p, four p a pass (vector over the row);
// op(b) = b^T: c[i, j] is a dot product, in {LANES} partial sums (lane q takes p = q mod {LANES})
static void {f}_rows(int trans_a, int trans_b, int m, int n, int k, {t} alpha,
    const {t}* restrict a, int lda, const {t}* restrict b, int ldb, {t} beta, {t}* restrict c, int ldc)
{{
    for (int i = 0; i < m; i++) {{
        {t}* restrict crow = c + (size_t)i * ldc;
        if (!trans_b) {{
            for (int j = 0; j < n; j++) crow[j] = beta == {zero} ? {zero} : beta * crow[j];
            int p = 0;
            for (; p + 4 <= k; p += 4) {{   // four rows of b per pass over c[i, :]
                const {t}* restrict b0 = b + (size_t)p * ldb;
                const {t}* restrict b1 = b0 + ldb;
                const {t}* restrict b2 = b1 + ldb;
                const {t}* restrict b3 = b2 + ldb;
                const {t} a0 = alpha * (trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]);
                const {t} a1 = alpha * (trans_a ? a[(size_t)(p + 1) * lda + i] : a[(size_t)i * lda + p + 1]);
                const {t} a2 = alpha * (trans_a ? a[(size_t)(p + 2) * lda + i] : a[(size_t)i * lda + p + 2]);
                const {t} a3 = alpha * (trans_a ? a[(size_t)(p + 3) * lda + i] : a[(size_t)i * lda + p + 3]);
                for (int j = 0; j < n; j++) crow[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
            }}
            for (; p < k; p++) {{
                const {t} ap = alpha * (trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]);
                const {t}* restrict brow = b + (size_t)p * ldb;
                for (int j = 0; j < n; j++) crow[j] += ap * brow[j];
            }}
            continue;
        }}
        for (int j = 0; j < n; j++) {{
            const {t}* restrict brow = b + (size_t)j * ldb;
            {t} lane[{LANES}];
            for (int q = 0; q < {LANES}; q++) lane[q] = {zero};
            int p = 0;
            if (!trans_a) {{
                const {t}* restrict arow = a + (size_t)i * lda;
                for (; p + {LANES} <= k; p += {LANES})
                    for (int q = 0; q < {LANES}; q++) lane[q] += arow[p + q] * brow[p + q];
            }}
            for (; p < k; p++) lane[p % {LANES}] += (trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]) * brow[p];
            {t} sum = {zero};
            for (int q = 0; q < {LANES}; q++) sum += lane[q];
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
    if (m < {ROWS}) {{
        {f}_rows(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }}
    // narrow c (an output layer): c^T = op(b)^T op(a)^T wastes less of the tiles
    const int swap = n >= {ROWS} && {f}_padded(n, m) < {f}_padded(m, n);
    {f}_blocked(swap ? !trans_b : trans_a, swap ? !trans_a : trans_b, swap ? n : m, swap ? m : n, k, alpha,
                swap ? b : a, swap ? ldb : lda, swap ? a : b, swap ? lda : ldb, beta, c,
                swap ? 1 : (size_t)ldc, swap ? (size_t)ldc : 1);
}}"""


_NOINLINE = ["#ifdef __GNUC__", "#define BP_GEMM_NOINLINE __attribute__((noinline))", "#else",
             "#define BP_GEMM_NOINLINE", "#endif"]


def _macros(f: str) -> dict:
    F = f.upper()
    return {"MR": f"{F}_MR", "NR": f"{F}_NR", "KC": f"{F}_KC", "NC": f"{F}_NC", "IN_PLACE": f"{F}_IN_PLACE",
            "PACK_A": f"{F}_PACK_A", "ROWS": f"{F}_ROWS",
            "LANES": f"{F}_LANES"}


def _ladder(blocks: list) -> list:
    """``#ifdef`` over the instruction sets, most capable first: ``blocks`` holds
    one text per entry of ISAS and a last one for the portable C."""
    lines, depth = [], 0
    for isa, text in zip(ISAS, blocks):
        lines += [f"#ifdef {isa.guard}", text, "#else"]
        depth += 1
    return lines + [blocks[-1]] + ["#endif"] * depth


def _defines(dtype: str, f: str, isa) -> str:
    """The block sizes of ``isa`` (a VectorIsa or PORTABLE) as macros."""
    name = PORTABLE if isa == PORTABLE else isa.name
    b, mac = BLOCKING[dtype][name], _macros(f)
    lines = [f"// {name}: {b.mr} x {b.nr} tiles, packed B panels of {b.kc} x {b.nc}"]
    if isa != PORTABLE:
        lines.append("#include <immintrin.h>")
    lines += [f"#define {mac['MR']} {b.mr}", f"#define {mac['NR']} {b.nr}",
              f"#define {mac['KC']} {b.kc}", f"#define {mac['NC']} {b.nc}",
              f"#define {mac['IN_PLACE']} {0 if isa == PORTABLE else 8 * b.mr}",
              f"#define {mac['PACK_A']} {int(isa == PORTABLE)}"]
    return "\n".join(lines)


def _portable_tile(t: str, b: Blocking, zero: str, f: str) -> str:
    """The micro-kernel in plain C: one accumulator row per row of the tile, written
    out, so that the only loop left to vectorise is the one over the NR columns
    (gcc, given the rows as a loop, vectorised across them instead, 5-10x slower);
    the row of B is copied to a local first, so that it is loaded once per step
    into registers rather than once per FMA.  The tile goes out through ``ct``,
    which the caller stores (``_store`` called in here made gcc's SSE2 float code
    1.4x slower); A and B come packed (``PACK_A`` 1, ``IN_PLACE`` 0)."""
    rows = range(b.mr)
    mac = _macros(f)
    lines = ["// the tile c = alpha * ap @ bp + beta * c over kc (the inner loop: NR lanes, one vector FMA each);",
             "// inline: gcc 12, left to itself, clones the callers for their constant arguments and",
             "// keeps this out of line, where it vectorises worse (deep thin: 1.6x slower)",
             _TILE_HEAD.format(f=f, t=t),
             f"    {t} " + ", ".join(f"acc{r}[{b.nr}]" for r in rows) + ";",
             f"    for (int j = 0; j < {b.nr}; j++) {{",
             *[f"        acc{r}[j] = {zero};" for r in rows],
             "    }",
             f"    (void)ars, (void)acs, (void)bs;   // {mac['PACK_A']} 1, {mac['IN_PLACE']} 0: a and b packed",
             "    (void)mr, (void)nr, (void)alpha, (void)beta, (void)c, (void)rs, (void)cs;   // the caller stores ct",
             "    for (int p = 0; p < kc; p++) {",
             f"        const {t}* restrict brow = bp + (size_t)p * {b.nr};",
             f"        const {t}* restrict acol = a + (size_t)p * {b.mr};",
             *[f"        const {t} a{r} = acol[{r}];" for r in rows],
             f"        {t} bv[{b.nr}];",
             f"        for (int j = 0; j < {b.nr}; j++) bv[j] = brow[j];",
             f"        for (int j = 0; j < {b.nr}; j++) {{",
             *[f"            acc{r}[j] += a{r} * bv[j];" for r in rows],
             "        }",
             "    }",
             f"    for (int j = 0; j < {b.nr}; j++) {{",
             *[f"        ct[{r * b.nr} + j] = acc{r}[j];" for r in rows],
             "    }",
             "    return 0;",
             "}"]
    return "\n".join(lines)


def _vector_tile(dtype: str, isa: VectorIsa, f: str) -> str:
    """The micro-kernel in ``isa``'s intrinsics: the MR x NR tile in MR * NR / width
    named vector variables (registers: no array between the FMAs; objdump shows the
    loop as loads, broadcasts and FMAs only), per step of k one load per vector of
    the row of the B panel and one broadcast per row of the sliver of op(a) (read
    where it is); a whole row-major tile is stored from the registers, an edge (or
    c transposed) goes to ``ct`` for the caller's ``_store``; an edge sliver
    (``_tile_edge``) skips the rows past the edge.  The FMAs are explicit: the
    summation order is the same at any -ffp-contract."""
    t = _TYPES[dtype][0]
    b = BLOCKING[dtype][isa.name]
    w, V = isa.width(dtype), isa.vtype(dtype)
    nv = b.nr // w
    assert nv * w == b.nr, (dtype, isa, b)

    def op(name):
        return isa.op(name, dtype)

    def acc(r, v):
        return f"c{r}_{v}"

    def at(base, r, v):
        row = "" if r == 0 else (" + rs" if r == 1 else f" + {r} * rs")
        col = "" if v == 0 else f" + {v * w}"
        return f"{base}{row}{col}"

    zero = real_literal(0, dtype)

    def row(r):
        return "0" if r == 0 else ("ars" if r == 1 else f"{r} * ars")

    def body(edge):
        """Zeroed accumulators and the loop over k; on an edge, rows from mr on skipped."""
        out = [f"    {V} " + ", ".join(f"{acc(r, v)} = {op('setzero')}()" for v in range(nv)) + ";"
               for r in range(b.mr)]
        out += [f"    for (int p = 0; p < kc; p++, a += acs, bp += bs) {{",
                f"        const {V} " + ", ".join(f"b{v} = {op('loadu')}(bp{'' if v == 0 else f' + {v * w}'})"
                                               for v in range(nv)) + ";",
                f"        {V} av;"]
        for r in range(b.mr - 1 if edge else b.mr):   # an edge has at most MR - 1 rows
            fmas = "".join(f" {acc(r, v)} = {op('fmadd')}(av, b{v}, {acc(r, v)});" for v in range(nv))
            if edge and r > 0:
                out.append(f"        if (mr > {r}) {{ av = {op('set1')}(a[{row(r)}]);{fmas} }}")
            else:
                out.append(f"        av = {op('set1')}(a[{row(r)}]);{fmas}")
        return out + ["    }"]

    def through_ct():
        out = []
        for r in range(b.mr):
            out.append("   " + "".join(f" {op('storeu')}(ct + {r * b.nr + v * w}, {acc(r, v)});" for v in range(nv)))
        return out + ["    return 0;"]

    head = "BP_GEMM_NOINLINE " + _TILE_HEAD.format(f=f, t=t).replace("static inline", "static")
    lines = [f"// an edge tile, mr < {b.mr} rows, into ct: as {f}_tile, the FMAs of the rows from mr on skipped",
             f"BP_GEMM_NOINLINE static int {f}_tile_edge({t}* restrict ct, int kc, const {t}* restrict a, "
             "size_t ars, size_t acs,",
             f"    const {t}* restrict bp, size_t bs, int mr)",
             "{", *body(True), *through_ct(), "}", "",
             f"// the {b.mr} x {b.nr} tile c = alpha * op(a) @ bp + beta * c over kc, {isa.name}: "
             f"{b.mr * nv} accumulators;",
             "// out of line: gcc 12, inlining it into the loop nest, kept the B vectors on the stack",
             "// and read them back for every FMA (1.5-1.9x slower)",
             head,
             f"    if (mr < {b.mr}) return {f}_tile_edge(ct, kc, a, ars, acs, bp, bs, mr);",
             *body(False),
             f"    const {V} va = {op('set1')}(alpha);",
             f"    if (nr == {b.nr} && cs == 1) {{   // a whole tile of c, row-major: from the registers",
             f"        if (beta == {zero}) {{"]
    for r in range(b.mr):
        lines.append("           " + "".join(f" {op('storeu')}({at('c', r, v)}, {op('mul')}(va, {acc(r, v)}));"
                                             for v in range(nv)))
    lines += ["        } else {", f"            const {V} vb = {op('set1')}(beta);"]
    for r in range(b.mr):
        for v in range(nv):
            lines.append(f"            {op('storeu')}({at('c', r, v)}, "
                         f"{op('fmadd')}(vb, {op('loadu')}({at('c', r, v)}), {op('mul')}(va, {acc(r, v)})));")
    lines += ["        }", "        return 1;", "    }", *through_ct(), "}"]
    return "\n".join(lines)


def _kernel(dtype: str, linkage: str, signature: str) -> str:
    """Our GEMM of one dtype: the block sizes and micro-kernel the preprocessor
    picks, and the driver around them."""
    t = _TYPES[dtype][0]
    f = gemm_name(dtype)
    zero, one = real_literal(0, dtype), real_literal(1, dtype)
    mac = _macros(f)
    lanes = BLOCKING[dtype][PORTABLE].nr
    defines = _ladder([_defines(dtype, f, isa) for isa in (*ISAS, PORTABLE)])
    common = [f"// fewer rows than this: {f}_rows; partial sums of a dot product there",
              f"#define {mac['ROWS']} 4", f"#define {mac['LANES']} {lanes}"]
    tiles = _ladder([_vector_tile(dtype, isa, f) for isa in ISAS]
                    + [_portable_tile(t, BLOCKING[dtype][PORTABLE], zero, f)])
    fmt = dict(mac, f=f, t=t, zero=zero, one=one, align=ALIGN, linkage=linkage, signature=signature,
               doc=_DOC.format(f=f, t=t))
    return "\n".join([*defines, *common, "", _PACKING.format(**fmt), "", *tiles, "", _DRIVER.format(**fmt)])


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
        signature = _SIGNATURE.format(f=gemm_name(dtype), t=t)
        cblas.append(_CBLAS.format(linkage=linkage, signature=signature, p=p))
        ours.append(_kernel(dtype, linkage, signature))
    return "\n".join(["#ifdef BPC_CBLAS", "#include <cblas.h>", "", "\n\n".join(cblas), "#else",
                      "#include <stdint.h>", *_NOINLINE, "", "\n\n".join(ours), "#endif", ""])


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
