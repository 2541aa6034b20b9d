/* Quantized GEMM: C (M,N) = op(A) (M,K) . op(B) (K,N), float32 accumulation, no Python.
 *
 * Operand formats (chosen per operand, any pairing):
 *   HQ_GEMM_HIF8  uint8 HiF8 codes; value = decode(code) * scale_inv
 *   HQ_GEMM_F32   float32, rounded to bfloat16 (RNE, bf16.h) before multiplying
 *
 * Arithmetic, identical on every path:
 *   sum   = float32 sum over k of a(i,k)*b(k,j), where a and b are the *unscaled*
 *           operand values (HiF8 table values or bf16-rounded floats); every product
 *           is exact in float32 (<= 16 significant bits), so each step rounds once.
 *   order = fixed per output element, independent of threads and blocking: k is taken
 *           in pairs (2p, 2p+1) and within a pair the odd element comes first,
 *             acc = fma(a[2p+1], b[2p+1], acc);  acc = fma(a[2p], b[2p], acc);
 *           which is the order of AVX512-BF16 `vdpbf16ps` (Intel's pseudo-code); an odd K
 *           is padded with a zero product first in its last pair (a no-op: acc is never -0).
 *   y     = fma(sum, scale, bias[j])   (scale = a_scale_inv * b_scale_inv, rounded to
 *           float32 by the caller; sum * scale when there is no bias)
 *   C     = y, or C + y with accumulate.
 * The scalar reference (hq_gemm_reference), the blocked scalar path, the AVX2 and the
 * AVX-512F float32 kernels are therefore bit-identical. The AVX512-BF16 kernel follows
 * the same order but the instruction treats float32/bf16 subnormals as zero (DAZ/FTZ):
 * HiF8 values (>= 2^-22), their products (>= 2^-44) and sums of those are never
 * subnormal, so codes x codes is bit-identical there too; bf16 operands with subnormal
 * values or products can differ. Products that overflow float32 (|bf16 x bf16| > 3.4e38)
 * are also only guaranteed to agree on the FMA paths.
 *
 * Threads: OpenMP over output tiles only (never over K), so results do not depend on
 * the thread count.
 */
#ifndef HIF8QAT_GEMM_H
#define HIF8QAT_GEMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { HQ_GEMM_HIF8 = 0, HQ_GEMM_F32 = 1 };

/* Return codes. */
enum { HQ_GEMM_OK = 0, HQ_GEMM_ENOMEM = -1, HQ_GEMM_ELAYOUT = -2, HQ_GEMM_EARG = -3 };

/* One operand as the product sees it, op(X): element (r, s) of op(X) sits at
 * data + r*row_stride + s*col_stride (in elements; any sign, 0 allowed). A transposed
 * operand is just its strides swapped. */
typedef struct {
    const void *data;
    int format;           /* HQ_GEMM_HIF8 or HQ_GEMM_F32 */
    int64_t row_stride;
    int64_t col_stride;
} hq_gemm_operand;

/* op(B) decoded/rounded once and laid out in the panels the current kernel reads
 * (float32 panels for scalar/AVX2/AVX-512F, bf16 pairs for AVX512-BF16). */
typedef struct hq_packed_b hq_packed_b;

/* C (M,N), row stride ldc, = op(A) . op(B) as above. Pass b = NULL and packed = a
 * pack of op(B) to reuse a pre-packed operand. bias may be NULL. scale must be the
 * float32 product of the two scale_inv. Returns HQ_GEMM_OK, HQ_GEMM_ENOMEM, or
 * HQ_GEMM_ELAYOUT when `packed` was made for a kernel other than the current one. */
int hq_gemm(int64_t M, int64_t N, int64_t K, const hq_gemm_operand *a,
            const hq_gemm_operand *b, const hq_packed_b *packed, float scale,
            const float *bias, float *c, int64_t ldc, int accumulate);

/* Plain triple loop with the same arithmetic: what the fast paths are tested against. */
void hq_gemm_reference(int64_t M, int64_t N, int64_t K, const hq_gemm_operand *a,
                       const hq_gemm_operand *b, float scale, const float *bias, float *c,
                       int64_t ldc, int accumulate);

/* Pack op(B) (K,N) for the kernel the current ISA selects. NULL when out of memory. */
hq_packed_b *hq_pack_b(int64_t K, int64_t N, const hq_gemm_operand *b);
void hq_packed_b_free(hq_packed_b *p);
int64_t hq_packed_b_k(const hq_packed_b *p);
int64_t hq_packed_b_n(const hq_packed_b *p);
int hq_packed_b_format(const hq_packed_b *p);       /* format of the source operand */
size_t hq_packed_b_nbytes(const hq_packed_b *p);
const char *hq_packed_b_kernel(const hq_packed_b *p); /* kernel it was packed for */
/* 1 when the kernel selected now reads this pack's layout. */
int hq_packed_b_usable(const hq_packed_b *p);

/* The kernel the current ISA path uses: "scalar", "avx2", "avx512f" or "avx512bf16".
 * hq_gemm_force_kernel(name) overrides the choice for tests (NULL or "auto" resets);
 * returns -1 if the name is unknown or this CPU cannot run it. "bf16emu", a scalar
 * emulation of the avx512bf16 kernel (its panels, Intel's vdpbf16ps pseudo-code with
 * DAZ/FTZ), is never chosen automatically but can be forced on any CPU. */
const char *hq_gemm_kernel_name(void);
int hq_gemm_force_kernel(const char *name);
int hq_gemm_kernel_supported(const char *name);
/* Products below this many flops (default 3.2e7; negative restores it) run on one
 * thread. Tests set 0 so small products exercise the threaded split. */
void hq_gemm_set_parallel_min_flops(double flops);

/* ---- Internal: the per-ISA micro-kernels (gemm_avx2.c, gemm_avx512.c) ---- */

/* Tile epilogue, applied on the last K block only. */
typedef struct {
    float scale;
    const float *bias;   /* bias for the tile's first column, NR entries, or NULL */
    int accumulate;      /* C = C_old + y (only used together with first) */
} hq_gemm_epilogue;

/* One MR x NR tile of C over kc (even) packed k positions. first: start the sum at 0
 * (else continue from the partial sum stored in C). ep: NULL stores the raw partial
 * sum; else stores the final value. */
typedef void (*hq_gemm_ukernel)(int64_t kc, const void *a_panel, const void *b_panel,
                                float *c, int64_t ldc, int first,
                                const hq_gemm_epilogue *ep);

#define HQ_GEMM_NR 16 /* every kernel is 16 columns wide, so float32 packs are shared */
void hq_gemm_ukernel_avx2_6x16(int64_t, const void *, const void *, float *, int64_t, int,
                               const hq_gemm_epilogue *);
void hq_gemm_ukernel_avx512_24x16(int64_t, const void *, const void *, float *, int64_t,
                                  int, const hq_gemm_epilogue *);
void hq_gemm_ukernel_avx512bf16_24x16(int64_t, const void *, const void *, float *,
                                      int64_t, int, const hq_gemm_epilogue *);

#ifdef __cplusplus
}
#endif
#endif
