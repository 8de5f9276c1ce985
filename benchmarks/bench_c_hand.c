// Hand-written C value_and_grad of two of bench_c.py's networks, written for speed:
// the yardstick the generated C is held to (issue 13: at most 1.3x its time).
//
//   hand_mlp_tanh_ce: D -> H tanh -> K, softmax cross-entropy, mean over the batch
//                     (digits: 64 -> 128 -> 10);
//   hand_deep_tanh:   L tanh layers of width W, loss sum((h_L - y)^2)/2, mean over
//                     the batch (deep thin: 32 x 64).
//
// Everything that can be fused is: bias and tanh in one pass over the GEMM's output,
// softmax, cross-entropy and its adjoint in one pass per row, tanh's adjoint and the
// bias gradient in one pass.  The GEMMs are either OpenBLAS's cblas_?gemm (the very
// library NumPy loaded, passed in by hand_set_blas) or, without it, the generated
// code's own bp_?gemm (bench_c.py puts its source before this file).  tanh is the
// vectorisable one the generated code uses (a libm call per element is 10x slower).
//
// Built by bench_c.py twice: as is (double) and with -DHAND_F32 (float).

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifdef HAND_F32
typedef float real;
#define BP_GEMM bp_sgemm
#else
typedef double real;
#define BP_GEMM bp_dgemm
#endif

// cblas_?gemm with 64-bit integers (NumPy's OpenBLAS build), row-major
typedef void (*blas_gemm_fn)(int order, int ta, int tb, long long m, long long n, long long k, real alpha,
    const real* a, long long lda, const real* b, long long ldb, real beta, real* c, long long ldc);

static blas_gemm_fn blas_gemm = NULL;

void hand_set_blas(blas_gemm_fn fn);
void hand_set_blas(blas_gemm_fn fn)
{
    blas_gemm = fn;
}

// c [m x n] = op(a) [m x k] @ op(b) [k x n], row-major
static void gemm(int ta, int tb, int m, int n, int k, const real* a, int lda, const real* b, int ldb, real* c,
    int ldc)
{
    if (blas_gemm != NULL)
        blas_gemm(101, ta ? 112 : 111, tb ? 112 : 111, m, n, k, 1, a, lda, b, ldb, 0, c, ldc);
    else
        BP_GEMM(ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c, ldc);
}

#ifdef HAND_F32
static inline float tanh_v(float x)
{
    union { float d; uint32_t u; } k, s, t;
    float a = fabsf(x);
    a = a > 10.0f ? 10.0f : a;
    const float y = 2.0f * a;
    k.d = y * 1.44269504f + 12582912.0f;
    const float n = k.d - 12582912.0f;
    const float r = (y - n * 0.693145752f) - n * 1.42860677e-06f;
    float p = 1.0f / 40320.0f;
    p = p * r + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = r + r * r * p;
    s.u = (k.u + 127u) << 23;
    const float e = s.d * p + (s.d - 1.0f);
    t.d = e / (e + 2.0f);
    k.d = x;
    t.u |= k.u & 0x80000000u;
    return t.d;
}
#define EXP expf
#define LOG logf
#else
static inline double tanh_v(double x)
{
    union { double d; uint64_t u; } k, s, t;
    double a = fabs(x);
    a = a > 20.0 ? 20.0 : a;
    const double y = 2.0 * a;
    k.d = y * 1.4426950408889634 + 6755399441055744.0;
    const double n = k.d - 6755399441055744.0;
    const double r = (y - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = r + r * r * p;
    s.u = (k.u + 1023u) << 52;
    const double e = s.d * p + (s.d - 1.0);
    t.d = e / (e + 2.0);
    k.d = x;
    t.u |= k.u & 0x8000000000000000u;
    return t.d;
}
#define EXP exp
#define LOG log
#endif

// h[n, j] = tanh(h[n, j] + b[j])
static void bias_tanh(int N, int W, real* restrict h, const real* restrict b)
{
    for (int n = 0; n < N; n++) {
        real* restrict row = h + (size_t)n * W;
        for (int j = 0; j < W; j++) row[j] = tanh_v(row[j] + b[j]);
    }
}

// d[n, j] = e[n, j] (1 - h[n, j]^2); gb[j] = sum over n of d[n, j]
static void tanh_back(int N, int W, real* restrict d, const real* restrict e, const real* restrict h,
    real* restrict gb)
{
    for (int j = 0; j < W; j++) gb[j] = 0;
    for (int n = 0; n < N; n++) {
        real* restrict row = d + (size_t)n * W;
        const real* restrict erow = e + (size_t)n * W;
        const real* restrict hrow = h + (size_t)n * W;
        for (int j = 0; j < W; j++) {
            row[j] = erow[j] * (1 - hrow[j] * hrow[j]);
            gb[j] += row[j];
        }
    }
}

size_t hand_mlp_tanh_ce_workspace(int N, int H, int K);
size_t hand_mlp_tanh_ce_workspace(int N, int H, int K)
{
    return sizeof(real) * (size_t)N * (3 * (size_t)H + (size_t)K);
}

int hand_mlp_tanh_ce(int N, int D, int H, int K, const real* W1, const real* b1, const real* W2,
    const real* b2, const real* x, const int* label, double* loss, real* gW1, real* gb1, real* gW2, real* gb2,
    real* ws);
int hand_mlp_tanh_ce(int N, int D, int H, int K, const real* W1, const real* b1, const real* W2,
    const real* b2, const real* x, const int* label, double* loss, real* gW1, real* gb1, real* gW2, real* gb2,
    real* ws)
{
    real* h = ws;                       // [N, H]
    real* g = h + (size_t)N * H;        // [N, K]: logits, then dL/dlogits
    real* e = g + (size_t)N * K;        // [N, H]: dL/dh
    real* d = e + (size_t)N * H;        // [N, H]: dL/dz1
    const real inv_n = (real)1 / (real)N;
    gemm(0, 1, N, H, D, x, D, W1, D, h, H);
    bias_tanh(N, H, h, b1);
    gemm(0, 1, N, K, H, h, H, W2, H, g, K);
    double total = 0;
    for (int j = 0; j < K; j++) gb2[j] = 0;
    for (int n = 0; n < N; n++) {       // softmax, cross-entropy and its adjoint, one row at a time
        real* restrict z = g + (size_t)n * K;
        real m = -INFINITY;
        for (int j = 0; j < K; j++) {
            z[j] += b2[j];
            m = z[j] > m ? z[j] : m;
        }
        const int l = label[n];
        const real picked = z[l];
        real s = 0;
        for (int j = 0; j < K; j++) {
            z[j] = EXP(z[j] - m);
            s += z[j];
        }
        total += (double)(m + LOG(s) - picked);
        const real scale = inv_n / s;
        for (int j = 0; j < K; j++) z[j] *= scale;
        z[l] -= inv_n;
        for (int j = 0; j < K; j++) gb2[j] += z[j];
    }
    *loss = total / N;
    gemm(1, 0, K, H, N, g, K, h, H, gW2, H);
    gemm(0, 0, N, H, K, g, K, W2, H, e, H);
    tanh_back(N, H, d, e, h, gb1);
    gemm(1, 0, H, D, N, d, H, x, D, gW1, D);
    return 0;
}

size_t hand_deep_tanh_workspace(int N, int L, int W);
size_t hand_deep_tanh_workspace(int N, int L, int W)
{
    return sizeof(real) * (size_t)N * W * ((size_t)L + 2);
}

// W[i], b[i], gW[i], gb[i]: layer i + 1's weight [W x W] and bias [W]
int hand_deep_tanh(int N, int L, int Wd, const real* const* W, const real* const* b, const real* x,
    const real* y, double* loss, real* const* gW, real* const* gb, real* ws);
int hand_deep_tanh(int N, int L, int Wd, const real* const* W, const real* const* b, const real* x,
    const real* y, double* loss, real* const* gW, real* const* gb, real* ws)
{
    const size_t NW = (size_t)N * Wd;
    real* e = ws;                       // [N, W]: dL/dh of the layer at hand
    real* d = e + NW;                   // [N, W]: dL/dz
    real* h = d + NW;                   // h[i] = h + i * NW: layer i + 1's output
    const real* in = x;
    for (int i = 0; i < L; i++) {
        real* out = h + (size_t)i * NW;
        gemm(0, 1, N, Wd, Wd, in, Wd, W[i], Wd, out, Wd);
        bias_tanh(N, Wd, out, b[i]);
        in = out;
    }
    const real inv_n = (real)1 / (real)N;
    double total = 0;
    for (size_t t = 0; t < NW; t++) {
        const real r = in[t] - y[t];
        total += (double)(r * r);
        e[t] = r * inv_n;
    }
    *loss = total / 2 / N;
    for (int i = L - 1; i >= 0; i--) {
        const real* hi = h + (size_t)i * NW;
        const real* prev = i > 0 ? h + (size_t)(i - 1) * NW : x;
        tanh_back(N, Wd, d, e, hi, gb[i]);
        gemm(1, 0, Wd, Wd, N, d, Wd, prev, Wd, gW[i], Wd);
        if (i > 0) gemm(0, 0, N, Wd, Wd, d, Wd, W[i], Wd, e, Wd);
    }
    return 0;
}
