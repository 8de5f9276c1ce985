// cuda_emulation.h: run a bpcompile-generated .cu on the host, with no GPU.
//
// Shipped with bpcompile for testing.  Force-include it when compiling the .cu
// as C++20 with a host compiler:
//
//     g++ -std=c++20 -O1 -x c++ -include cuda_emulation.h -shared -fPIC -o libm.so m.cu
//
// It maps the small part of CUDA and cuBLAS that generated code uses onto host
// code, faithfully enough that a wrong index, a missing __syncthreads() or a
// wrong GEMM leading dimension shows up as a wrong result or an error:
//
// * A kernel launch runs the grid one block at a time.  Each thread of a block
//   is a fiber (ucontext) with its own stack, so its locals are its own;
//   __shared__ variables are function statics, so the threads of a block share
//   them.  A fiber runs until it reaches __syncthreads() or returns; the barrier
//   opens when every thread of the block has reached it.  Threads are resumed in
//   a different order in successive rounds (ascending, then descending), so a
//   read of shared memory that is not separated by a barrier from the write it
//   needs sees a stale value in one of the rounds.  atomicAdd (float, double) is a
//   plain add: one fiber runs at a time.  A barrier that some threads
//   of the block never reach (they returned) is a divergence: reported, and the
//   process aborts, since on a GPU it is undefined behaviour.
// * "Device" memory is host memory.  cudaMalloc fills fresh memory with 0xFF
//   bytes (a NaN in float and double), so a read of memory no kernel wrote
//   yields NaN instead of a plausible stale number.
// * cuBLAS gemm is a reference triple loop with cuBLAS's column-major semantics,
//   its argument checks (leading dimensions, sizes) and beta == 0 never reading C.
//
// Only one launch runs at a time per host thread; state is thread_local.
#pragma once
#define BP_CUDA_EMULATION 1

#include <cmath>
#include <math.h>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>
#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace bp_emu {

constexpr std::size_t kStackBytes = 64 * 1024;
enum State { RUNNABLE, AT_BARRIER, DONE };

struct Fiber {
    ucontext_t ctx;
    State state;
};

struct Launch {
    ucontext_t scheduler;
    std::vector<Fiber> fibers;
    std::vector<char> stacks;
    int current = -1;
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
};

inline thread_local Launch* active = nullptr;

inline void fiber_main() {
    Launch* L = active;
    L->body(L->body_arg);
    L->fibers[L->current].state = DONE;
    // returning resumes uc_link: the scheduler
}

inline void syncthreads() {
    Launch* L = active;
    if (L == nullptr || L->current < 0) {
        std::fprintf(stderr, "cuda_emulation: __syncthreads() outside a kernel\n");
        std::abort();
    }
    Fiber& f = L->fibers[L->current];
    f.state = AT_BARRIER;
    swapcontext(&f.ctx, &L->scheduler);
}

// A fresh fiber for thread t, to run body from the start.
[[gnu::noinline]] inline void start(Launch& L, unsigned t) {
    Fiber& f = L.fibers[t];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = L.stacks.data() + static_cast<std::size_t>(t) * kStackBytes;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &L.scheduler;
    makecontext(&f.ctx, fiber_main, 0);
    f.state = RUNNABLE;
}

// Switch to fiber t until it reaches a barrier or returns.  Kept out of launch():
// getcontext/swapcontext "return twice", which would make launch_impl()'s locals suspect.
[[gnu::noinline]] inline void resume(Launch& L, unsigned t, const dim3& block) {
    threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
    L.current = static_cast<int>(t);
    swapcontext(&L.scheduler, &L.fibers[t].ctx);
    L.current = -1;
}

template <class F>
void trampoline(void* p) { (*static_cast<F*>(p))(); }

// Run body(arg) as every thread of every block of the grid (see the top of the file).
inline void launch_impl(dim3 grid, dim3 block, void (*body)(void*), void* arg) {
    const unsigned nthreads = block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
        std::fprintf(stderr, "cuda_emulation: invalid launch configuration\n");
        std::abort();
    }
    Launch L;
    L.fibers.resize(nthreads);
    L.stacks.resize(static_cast<std::size_t>(nthreads) * kStackBytes);
    L.body = body;
    L.body_arg = arg;
    Launch* saved = active;
    active = &L;
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        for (unsigned t = 0; t < nthreads; ++t) start(L, t);
        for (unsigned round = 0;; ++round) {
            for (unsigned j = 0; j < nthreads; ++j) {
                const unsigned t = (round % 2 == 0) ? j : nthreads - 1 - j;
                if (L.fibers[t].state == RUNNABLE) resume(L, t, block);
            }
            unsigned waiting = 0, done = 0;
            for (const Fiber& f : L.fibers) {
                waiting += f.state == AT_BARRIER;
                done += f.state == DONE;
            }
            if (done == nthreads) break;
            if (done != 0) {
                std::fprintf(stderr, "cuda_emulation: __syncthreads() divergence: %u threads of block "
                             "(%u,%u,%u) wait at a barrier that %u threads never reach\n",
                             waiting, bx, by, bz, done);
                std::abort();
            }
            for (Fiber& f : L.fibers) f.state = RUNNABLE;
        }
    }
    active = saved;
}

template <class F>
void launch(dim3 grid, dim3 block, std::size_t /*shared_bytes*/, F&& body) {
    using Fn = typename std::remove_reference<F>::type;
    launch_impl(grid, block, &trampoline<Fn>, const_cast<void*>(static_cast<const void*>(&body)));
}

}  // namespace bp_emu

inline void __syncthreads() { bp_emu::syncthreads(); }

// atomicAdd: a fiber runs until a barrier or its end, never interrupted between the
// read and the write, so a plain read-modify-write is atomic here (a race a GPU would
// have without atomicAdd is not visible under the emulation: review such code).
inline float atomicAdd(float* p, float v) { const float old = *p; *p = old + v; return old; }
inline double atomicAdd(double* p, double v) { const double old = *p; *p = old + v; return old; }

// ---------------------------------------------------------------------------
// CUDA runtime

typedef int cudaError_t;
enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorNoDevice = 100,
    cudaErrorIllegalAddress = 700,
};
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
typedef struct bp_emu_stream* cudaStream_t;

inline cudaError_t cudaMalloc(void** p, std::size_t bytes) {
    if (p == nullptr) return cudaErrorInvalidValue;
    *p = nullptr;
    if (bytes == 0) return cudaSuccess;
    void* q = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (q == nullptr) return cudaErrorMemoryAllocation;
    std::memset(q, 0xFF, bytes);  // NaN: reading memory nothing wrote is visible
    *p = q;
    return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) { std::free(p); return cudaSuccess; }
inline cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind) {
    if (bytes && (dst == nullptr || src == nullptr)) return cudaErrorInvalidValue;
    if (bytes) std::memmove(dst, src, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t = nullptr) {
    return cudaMemcpy(dst, src, bytes, kind);
}
inline cudaError_t cudaMemset(void* p, int value, std::size_t bytes) {
    if (bytes && p == nullptr) return cudaErrorInvalidValue;
    if (bytes) std::memset(p, value, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int value, std::size_t bytes, cudaStream_t = nullptr) {
    return cudaMemset(p, value, bytes);
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    default: return "unrecognized error code";
    }
}

// ---------------------------------------------------------------------------
// cuBLAS

struct bp_emu_blas { int magic; };
typedef bp_emu_blas* cublasHandle_t;
typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;

inline cublasStatus_t cublasCreate(cublasHandle_t* h) {
    if (h == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
    *h = new bp_emu_blas{0x6c626173};
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t h) {
    if (h == nullptr || h->magic != 0x6c626173) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->magic = 0;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

namespace bp_emu {

// C = alpha op(A) op(B) + beta C, column-major, as cublas<t>gemm (strided batched).
template <class T>
cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                    const T* alpha, const T* A, int lda, long long sa, const T* B, int ldb, long long sb,
                    const T* beta, T* C, int ldc, long long sc, int batch) {
    if (h == nullptr || h->magic != 0x6c626173) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int rows_a = ta == CUBLAS_OP_N ? m : k;
    const int rows_b = tb == CUBLAS_OP_N ? k : n;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < (rows_a > 1 ? rows_a : 1) ||
        ldb < (rows_b > 1 ? rows_b : 1) || ldc < (m > 1 ? m : 1) || alpha == nullptr || beta == nullptr)
        return CUBLAS_STATUS_INVALID_VALUE;
    for (int p = 0; p < batch; ++p) {
        const T* a = A + p * sa;
        const T* b = B + p * sb;
        T* c = C + p * sc;
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) {
                T acc = 0;
                for (int l = 0; l < k; ++l) {
                    const T x = ta == CUBLAS_OP_N ? a[i + (long long)l * lda] : a[l + (long long)i * lda];
                    const T y = tb == CUBLAS_OP_N ? b[l + (long long)j * ldb] : b[j + (long long)l * ldb];
                    acc += x * y;
                }
                T& out = c[i + (long long)j * ldc];
                out = *beta == T(0) ? *alpha * acc : *alpha * acc + *beta * out;
            }
    }
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace bp_emu

inline cublasStatus_t cublasDgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                  int k, const double* alpha, const double* A, int lda, const double* B,
                                  int ldb, const double* beta, double* C, int ldc) {
    return bp_emu::gemm<double>(h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}
inline cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                  int k, const float* alpha, const float* A, int lda, const float* B,
                                  int ldb, const float* beta, float* C, int ldc) {
    return bp_emu::gemm<float>(h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}
inline cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                                int m, int n, int k, const double* alpha, const double* A,
                                                int lda, long long sa, const double* B, int ldb, long long sb,
                                                const double* beta, double* C, int ldc, long long sc, int batch) {
    return bp_emu::gemm<double>(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}
inline cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                                int m, int n, int k, const float* alpha, const float* A,
                                                int lda, long long sa, const float* B, int ldb, long long sb,
                                                const float* beta, float* C, int ldc, long long sc, int batch) {
    return bp_emu::gemm<float>(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}
