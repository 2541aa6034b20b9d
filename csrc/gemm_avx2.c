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

/* The whole k loop is inline assembly with fixed registers: 12 accumulators (ymm0-11,
 * row r in ymm(2r), ymm(2r+1)), 2 B vectors (ymm12-13), 2 broadcast temporaries
 * (ymm14-15) use all 16 ymm registers, and gcc's allocation of the same loop written
 * with intrinsics moved registers around and spilled. */
#define BCAST_FMA(off, t, r0, r1)                                                \
    "vbroadcastss " #off "(%[a]), %%ymm" #t "\n\t"                               \
    "vfmadd231ps %%ymm12, %%ymm" #t ", %%ymm" #r0 "\n\t"                         \
    "vfmadd231ps %%ymm13, %%ymm" #t ", %%ymm" #r1 "\n\t"
#define KSTEP(boff0, boff1, a0, a1, a2, a3, a4, a5)                              \
    "vmovaps " #boff0 "(%[b]), %%ymm12\n\t"                                      \
    "vmovaps " #boff1 "(%[b]), %%ymm13\n\t"                                      \
    BCAST_FMA(a0, 14, 0, 1) BCAST_FMA(a1, 15, 2, 3) BCAST_FMA(a2, 14, 4, 5)      \
    BCAST_FMA(a3, 15, 6, 7) BCAST_FMA(a4, 14, 8, 9) BCAST_FMA(a5, 15, 10, 11)
#define ACC_MOVE(op, r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11)             \
    op(0, r0) op(32, r1) op(64, r2) op(96, r3) op(128, r4) op(160, r5)           \
    op(192, r6) op(224, r7) op(256, r8) op(288, r9) op(320, r10) op(352, r11)
#define LOAD_ACC(off, r) "vmovaps " #off "(%[acc]), %%ymm" #r "\n\t"
#define STORE_ACC(off, r) "vmovaps %%ymm" #r ", " #off "(%[acc])\n\t"

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
    /* The driver walks tiles down the rows: start fetching the next tile's C (the
     * partial sums it continues from) while this one computes. */
    for (int r = 6; r < 12; r++) {
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc + 15), _MM_HINT_T0);
    }
    /* acc: the tile's sums, row r at acc[16r .. 16r+15] (stored by the assembly) */
    float acc[6 * 16] __attribute__((aligned(32)));
    if (!first)
        for (int r = 0; r < 6; r++) {
            _mm256_store_ps(acc + 16 * r, _mm256_loadu_ps(c + r * ldc));
            _mm256_store_ps(acc + 16 * r + 8, _mm256_loadu_ps(c + r * ldc + 8));
        }
    int64_t n4 = kc / 4, n1 = kc % 4;
    __asm__ volatile(
        "testl %[first], %[first]\n\t"
        "jz 5f\n\t"
        "vxorps %%ymm0, %%ymm0, %%ymm0\n\t"
        "vxorps %%ymm1, %%ymm1, %%ymm1\n\t"
        "vxorps %%ymm2, %%ymm2, %%ymm2\n\t"
        "vxorps %%ymm3, %%ymm3, %%ymm3\n\t"
        "vxorps %%ymm4, %%ymm4, %%ymm4\n\t"
        "vxorps %%ymm5, %%ymm5, %%ymm5\n\t"
        "vxorps %%ymm6, %%ymm6, %%ymm6\n\t"
        "vxorps %%ymm7, %%ymm7, %%ymm7\n\t"
        "vxorps %%ymm8, %%ymm8, %%ymm8\n\t"
        "vxorps %%ymm9, %%ymm9, %%ymm9\n\t"
        "vxorps %%ymm10, %%ymm10, %%ymm10\n\t"
        "vxorps %%ymm11, %%ymm11, %%ymm11\n\t"
        "jmp 6f\n\t"
        "5:\n\t"
        ACC_MOVE(LOAD_ACC, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
        "6:\n\t"
        "testq %[n4], %[n4]\n\t"
        "jz 2f\n\t"
        "1:\n\t"
        KSTEP(0, 32, 0, 4, 8, 12, 16, 20)
        KSTEP(64, 96, 24, 28, 32, 36, 40, 44)
        KSTEP(128, 160, 48, 52, 56, 60, 64, 68)
        KSTEP(192, 224, 72, 76, 80, 84, 88, 92)
        "addq $96, %[a]\n\t"
        "addq $256, %[b]\n\t"
        "decq %[n4]\n\t"
        "jnz 1b\n\t"
        "2:\n\t"
        "testq %[n1], %[n1]\n\t"
        "jz 4f\n\t"
        "3:\n\t"
        KSTEP(0, 32, 0, 4, 8, 12, 16, 20)
        "addq $24, %[a]\n\t"
        "addq $64, %[b]\n\t"
        "decq %[n1]\n\t"
        "jnz 3b\n\t"
        "4:\n\t"
        ACC_MOVE(STORE_ACC, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
        "vzeroupper\n\t"
        : [a] "+r"(ap), [b] "+r"(bp), [n4] "+r"(n4), [n1] "+r"(n1)
        : [acc] "r"(acc), [first] "r"(first)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
    if (ep == NULL) {
        for (int r = 0; r < 6; r++) {
            _mm256_storeu_ps(c + r * ldc, _mm256_load_ps(acc + 16 * r));
            _mm256_storeu_ps(c + r * ldc + 8, _mm256_load_ps(acc + 16 * r + 8));
        }
        return;
    }
    const __m256 s = _mm256_set1_ps(ep->scale);
    const float *bias = ep->bias;
    const float *bias8 = bias ? bias + 8 : NULL;
    for (int r = 0; r < 6; r++) {
        float *cr = c + r * ldc;
        __m256 y0 = finish(_mm256_load_ps(acc + 16 * r), s, bias, ep->accumulate, cr);
        __m256 y1 = finish(_mm256_load_ps(acc + 16 * r + 8), s, bias8, ep->accumulate, cr + 8);
        _mm256_storeu_ps(cr, y0);
        _mm256_storeu_ps(cr + 8, y1);
    }
}

#else
typedef int hq_gemm_avx2_unused; /* ISO C forbids an empty translation unit */
#endif
