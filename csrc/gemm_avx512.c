/* AVX-512 micro-kernels for gemm.c, each a 24 x 16 tile of C in 24 zmm accumulators.
 *
 *  - hq_gemm_ukernel_avx512_24x16: AVX-512F float32 FMA, panels as in gemm_avx2.c
 *    (a: kc x 24 floats, b: kc x 16 floats, k pairs pre-swapped by the packing), so it
 *    is bit-identical to the AVX2 kernel and the scalar reference.
 *  - hq_gemm_ukernel_avx512bf16_24x16: AVX512-BF16 `vdpbf16ps`. Panels hold bf16 pairs
 *    in 32-bit words, low half = even k, high half = odd k (a: kc/2 x 24 words, b: kc/2 x
 *    16 words). Per Intel's pseudo-code the instruction adds the odd product, then the
 *    even one, each rounded once (RNE): the order of gemm.h. It treats subnormal inputs
 *    and results as zero (DAZ/FTZ), which HiF8 operands never reach (gemm.h).
 *
 * Neither kernel could be run on the development machine (AVX2 only): both compile here
 * and are selected only when cpu.c reports AVX-512F / AVX512-BF16.
 */
#if defined(__x86_64__)
#include <stdint.h>

#include "gemm.h"

#pragma GCC push_options
#pragma GCC target("avx512f")
#include <immintrin.h>

#define MR 24

static inline __attribute__((always_inline)) void
store_tile_avx512(__m512 *acc, float *c, int64_t ldc, const hq_gemm_epilogue *ep) {
    if (ep == NULL) {
#pragma GCC unroll 24
        for (int r = 0; r < MR; r++) _mm512_storeu_ps(c + r * ldc, acc[r]);
        return;
    }
    const __m512 s = _mm512_set1_ps(ep->scale);
    if (ep->bias) {
        const __m512 bv = _mm512_loadu_ps(ep->bias);
#pragma GCC unroll 24
        for (int r = 0; r < MR; r++) acc[r] = _mm512_fmadd_ps(acc[r], s, bv);
    } else {
#pragma GCC unroll 24
        for (int r = 0; r < MR; r++) acc[r] = _mm512_mul_ps(acc[r], s);
    }
    if (ep->accumulate) {
#pragma GCC unroll 24
        for (int r = 0; r < MR; r++)
            acc[r] = _mm512_add_ps(_mm512_loadu_ps(c + r * ldc), acc[r]);
    }
#pragma GCC unroll 24
    for (int r = 0; r < MR; r++) _mm512_storeu_ps(c + r * ldc, acc[r]);
}

void hq_gemm_ukernel_avx512_24x16(int64_t kc, const void *a_panel, const void *b_panel,
                                  float *c, int64_t ldc, int first,
                                  const hq_gemm_epilogue *ep) {
    const float *ap = (const float *)a_panel;
    const float *bp = (const float *)b_panel;
    __m512 acc[MR];
#pragma GCC unroll 24
    for (int r = 0; r < MR; r++)
        acc[r] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc);
    for (int64_t k = 0; k < kc; k++) {
        const __m512 bv = _mm512_load_ps(bp);
#pragma GCC unroll 24
        for (int r = 0; r < MR; r++)
            acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(ap[r]), bv, acc[r]);
        ap += MR;
        bp += 16;
    }
    store_tile_avx512(acc, c, ldc, ep);
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bf16")

static inline __attribute__((always_inline)) void
store_tile_avx512bf16(__m512 *acc, float *c, int64_t ldc, const hq_gemm_epilogue *ep) {
    if (ep == NULL) {
#pragma GCC unroll 24
        for (int r = 0; r < MR; r++) _mm512_storeu_ps(c + r * ldc, acc[r]);
        return;
    }
    const __m512 s = _mm512_set1_ps(ep->scale);
    if (ep->bias) {
        const __m512 bv = _mm512_loadu_ps(ep->bias);
#pragma GCC unroll 24
        for (int r = 0; r < MR; r++) acc[r] = _mm512_fmadd_ps(acc[r], s, bv);
    } else {
#pragma GCC unroll 24
        for (int r = 0; r < MR; r++) acc[r] = _mm512_mul_ps(acc[r], s);
    }
    if (ep->accumulate) {
#pragma GCC unroll 24
        for (int r = 0; r < MR; r++)
            acc[r] = _mm512_add_ps(_mm512_loadu_ps(c + r * ldc), acc[r]);
    }
#pragma GCC unroll 24
    for (int r = 0; r < MR; r++) _mm512_storeu_ps(c + r * ldc, acc[r]);
}

void hq_gemm_ukernel_avx512bf16_24x16(int64_t kc, const void *a_panel, const void *b_panel,
                                      float *c, int64_t ldc, int first,
                                      const hq_gemm_epilogue *ep) {
    const uint32_t *ap = (const uint32_t *)a_panel; /* (bf16 a[2p], bf16 a[2p+1]) words */
    const uint32_t *bp = (const uint32_t *)b_panel;
    __m512 acc[MR];
#pragma GCC unroll 24
    for (int r = 0; r < MR; r++)
        acc[r] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc);
    for (int64_t p = 0; p < kc / 2; p++) {
        const __m512bh bv = (__m512bh)_mm512_load_si512((const void *)bp);
#pragma GCC unroll 24
        for (int r = 0; r < MR; r++)
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32((int)ap[r]), bv);
        ap += MR;
        bp += 16;
    }
    store_tile_avx512bf16(acc, c, ldc, ep);
}
#pragma GCC pop_options

#else
typedef int hq_gemm_avx512_unused; /* ISO C forbids an empty translation unit */
#endif
