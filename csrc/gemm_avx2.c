/* AVX2+FMA float32 micro-kernel for gemm.c: a 6 x 16 tile of C in 12 ymm accumulators.
 *
 * a_panel: kc x 6 floats (k-major), b_panel: kc x 16 floats (k-major), both 32-byte
 * aligned and already in the summation order of gemm.h (each k pair swapped by the
 * packing), so this is a plain sequential FMA loop: one rounding per product, exact
 * products, same order as the scalar reference. Compiled for AVX2 only in this file;
 * gemm.c calls it only when cpu.c says the CPU has AVX2+FMA.
 */
#if defined(__x86_64__)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "gemm.h"

#define ROW(r)                                                                   \
    do {                                                                         \
        __m256 av = _mm256_broadcast_ss(a + (r));                                \
        c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);                              \
        c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);                              \
    } while (0)

#define STEP(koff)                                                               \
    do {                                                                         \
        const float *a = ap + 6 * (koff);                                        \
        __m256 b0 = _mm256_load_ps(bp + 16 * (koff));                            \
        __m256 b1 = _mm256_load_ps(bp + 16 * (koff) + 8);                        \
        ROW(0); ROW(1); ROW(2); ROW(3); ROW(4); ROW(5);                          \
    } while (0)

static inline __m256 finish(__m256 acc, __m256 scale, const float *bias, int accumulate,
                            const float *cold) {
    /* y = fma(sum, scale, bias) or sum*scale; C_old + y with accumulate (gemm.h) */
    __m256 y = bias ? _mm256_fmadd_ps(acc, scale, _mm256_loadu_ps(bias))
                    : _mm256_mul_ps(acc, scale);
    return accumulate ? _mm256_add_ps(_mm256_loadu_ps(cold), y) : y;
}

void hq_gemm_ukernel_avx2_6x16(int64_t kc, const void *a_panel, const void *b_panel,
                               float *c, int64_t ldc, int first,
                               const hq_gemm_epilogue *ep) {
    const float *ap = (const float *)a_panel;
    const float *bp = (const float *)b_panel;
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (first) {
        c00 = c01 = c10 = c11 = c20 = c21 = _mm256_setzero_ps();
        c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
    } else {
        c00 = _mm256_loadu_ps(c + 0 * ldc); c01 = _mm256_loadu_ps(c + 0 * ldc + 8);
        c10 = _mm256_loadu_ps(c + 1 * ldc); c11 = _mm256_loadu_ps(c + 1 * ldc + 8);
        c20 = _mm256_loadu_ps(c + 2 * ldc); c21 = _mm256_loadu_ps(c + 2 * ldc + 8);
        c30 = _mm256_loadu_ps(c + 3 * ldc); c31 = _mm256_loadu_ps(c + 3 * ldc + 8);
        c40 = _mm256_loadu_ps(c + 4 * ldc); c41 = _mm256_loadu_ps(c + 4 * ldc + 8);
        c50 = _mm256_loadu_ps(c + 5 * ldc); c51 = _mm256_loadu_ps(c + 5 * ldc + 8);
    }
    int64_t k = 0;
    for (; k + 4 <= kc; k += 4) {
        _mm_prefetch((const char *)(ap + 6 * 16), _MM_HINT_T0);
        STEP(0); STEP(1); STEP(2); STEP(3);
        ap += 24;
        bp += 64;
    }
    for (; k < kc; k++) {
        STEP(0);
        ap += 6;
        bp += 16;
    }
    if (ep == NULL) {
        _mm256_storeu_ps(c + 0 * ldc, c00); _mm256_storeu_ps(c + 0 * ldc + 8, c01);
        _mm256_storeu_ps(c + 1 * ldc, c10); _mm256_storeu_ps(c + 1 * ldc + 8, c11);
        _mm256_storeu_ps(c + 2 * ldc, c20); _mm256_storeu_ps(c + 2 * ldc + 8, c21);
        _mm256_storeu_ps(c + 3 * ldc, c30); _mm256_storeu_ps(c + 3 * ldc + 8, c31);
        _mm256_storeu_ps(c + 4 * ldc, c40); _mm256_storeu_ps(c + 4 * ldc + 8, c41);
        _mm256_storeu_ps(c + 5 * ldc, c50); _mm256_storeu_ps(c + 5 * ldc + 8, c51);
        return;
    }
    const __m256 s = _mm256_set1_ps(ep->scale);
    const float *b = ep->bias;
    const float *b8 = b ? b + 8 : NULL;
    const int acc = ep->accumulate;
#define FIN(r)                                                                        \
    do {                                                                              \
        float *cr = c + (r) * ldc;                                                    \
        __m256 y0 = finish(c##r##0, s, b, acc, cr);                                   \
        __m256 y1 = finish(c##r##1, s, b8, acc, cr + 8);                              \
        _mm256_storeu_ps(cr, y0);                                                     \
        _mm256_storeu_ps(cr + 8, y1);                                                 \
    } while (0)
    FIN(0); FIN(1); FIN(2); FIN(3); FIN(4); FIN(5);
#undef FIN
}

#else
typedef int hq_gemm_avx2_unused; /* ISO C forbids an empty translation unit */
#endif
