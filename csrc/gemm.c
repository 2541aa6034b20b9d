/* Quantized GEMM: the reference kernel, packing, cache blocking, OpenMP and kernel
 * dispatch. The arithmetic contract (formats, summation order, epilogue) is in gemm.h.
 *
 * Blocking (GotoBLAS/BLIS style): for each NC-wide column block of C and each KC-deep
 * slice of K, op(B) is packed once into NR=16-column panels (shared by all threads),
 * then the threads take (MC-row block, column chunk) items; each packs its MC x KC block
 * of op(A) into MR-row panels and runs the MR x 16 micro-kernel over the chunk. Packing
 * decodes HiF8 codes through the 256-entry table (or rounds float32 to bf16), so every
 * operand element is converted once per panel, and lays each k pair out odd-first so the
 * micro-kernels are plain sequential loops in the order of gemm.h.
 *
 * Determinism: a K slice continues from the partial sums the previous slice stored in C
 * (float32 stores and loads are exact), so the sum over K of every output element is one
 * sequential chain whatever KC, MC, NC or the thread count; threads split output tiles
 * only. With accumulate and more than one K slice, the result is built in a scratch
 * matrix and added to C at the end (C itself holds the partial sums otherwise).
 */
#include "gemm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "bf16.h"
#include "cpu.h"
#include "hif8.h"

#define NR HQ_GEMM_NR
#define KC 256 /* even: K slices start on pair boundaries */
#define MR_MAX 24
#define ALIGN 64

enum { LAYOUT_F32 = 0, LAYOUT_BF16 = 1 };
enum { KID_SCALAR = 0, KID_AVX2, KID_AVX512F, KID_AVX512BF16, KID_COUNT };

static void ukernel_scalar_4x16(int64_t, const void *, const void *, float *, int64_t, int,
                                const hq_gemm_epilogue *);

typedef struct {
    const char *name;
    int mr;        /* rows of the micro-kernel tile */
    int mc;        /* rows of a packed A block (multiple of mr): fits in L2 with KC */
    int nc;        /* columns of a packed B block (multiple of NR): fits in L3 */
    int layout;    /* LAYOUT_F32 panels or LAYOUT_BF16 pair panels */
    hq_gemm_ukernel fn;
} kernel_info;

static const kernel_info kernels[KID_COUNT] = {
    {"scalar", 4, 128, 4096, LAYOUT_F32, ukernel_scalar_4x16},
#if defined(__x86_64__)
    {"avx2", 6, 144, 4096, LAYOUT_F32, hq_gemm_ukernel_avx2_6x16},
    {"avx512f", 24, 192, 4096, LAYOUT_F32, hq_gemm_ukernel_avx512_24x16},
    {"avx512bf16", 24, 192, 4096, LAYOUT_BF16, hq_gemm_ukernel_avx512bf16_24x16},
#else
    {"avx2", 6, 144, 4096, LAYOUT_F32, NULL},
    {"avx512f", 24, 192, 4096, LAYOUT_F32, NULL},
    {"avx512bf16", 24, 192, 4096, LAYOUT_BF16, NULL},
#endif
};

static int forced_kernel = -1;

static int kernel_supported(int kid) {
    if (kernels[kid].fn == NULL) return 0;
    switch (kid) {
    case KID_SCALAR: return 1;
    case KID_AVX2: return hq_cpu_has_avx2();
    case KID_AVX512F: return hq_cpu_has_avx512();
    case KID_AVX512BF16: return hq_cpu_has_avx512() && hq_cpu_has_avx512bf16();
    default: return 0;
    }
}

static int select_kernel(void) {
    if (forced_kernel >= 0) return forced_kernel;
    switch (hq_get_isa()) {
    case HQ_ISA_AVX512:
        if (kernel_supported(KID_AVX512BF16)) return KID_AVX512BF16;
        if (kernel_supported(KID_AVX512F)) return KID_AVX512F;
        /* fall through */
    case HQ_ISA_AVX2:
        if (kernel_supported(KID_AVX2)) return KID_AVX2;
        /* fall through */
    default: return KID_SCALAR;
    }
}

static int kernel_by_name(const char *name) {
    for (int k = 0; k < KID_COUNT; k++)
        if (strcmp(kernels[k].name, name) == 0) return k;
    return -1;
}

const char *hq_gemm_kernel_name(void) { return kernels[select_kernel()].name; }

int hq_gemm_kernel_supported(const char *name) {
    int k = name ? kernel_by_name(name) : -1;
    return k >= 0 && kernel_supported(k);
}

int hq_gemm_force_kernel(const char *name) {
    if (name == NULL || strcmp(name, "auto") == 0) {
        forced_kernel = -1;
        return 0;
    }
    int k = kernel_by_name(name);
    if (k < 0 || !kernel_supported(k)) return -1;
    forced_kernel = k;
    return 0;
}

/* ---- operand values ---- */

/* The unscaled value of element (r, s) of op(X): HiF8 table value or bf16-rounded. */
static inline float operand_value(const hq_gemm_operand *x, int64_t r, int64_t s) {
    int64_t off = r * x->row_stride + s * x->col_stride;
    if (x->format == HQ_GEMM_HIF8) return hif8_decode_table_f32[((const uint8_t *)x->data)[off]];
    return round_bf16_f32(((const float *)x->data)[off]);
}

static inline uint16_t operand_bf16(const hq_gemm_operand *x, int64_t r, int64_t s) {
    int64_t off = r * x->row_stride + s * x->col_stride;
    if (x->format == HQ_GEMM_HIF8) /* every HiF8 value is exact in bf16 */
        return bf16_bits_from_f32(hif8_decode_table_f32[((const uint8_t *)x->data)[off]]);
    return bf16_bits_from_f32(((const float *)x->data)[off]);
}

/* ---- the reference ---- */

static inline float epilogue_value(float sum, float scale, const float *bias, int64_t j) {
    return bias ? fmaf(sum, scale, bias[j]) : sum * scale;
}

void hq_gemm_reference(int64_t M, int64_t N, int64_t K, const hq_gemm_operand *a,
                       const hq_gemm_operand *b, float scale, const float *bias, float *c,
                       int64_t ldc, int accumulate) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k += 2) {
                /* odd element of the pair first (gemm.h); an odd K pads with 0 x 0 */
                float a1 = k + 1 < K ? operand_value(a, i, k + 1) : 0.0f;
                float b1 = k + 1 < K ? operand_value(b, k + 1, j) : 0.0f;
                acc = fmaf(a1, b1, acc);
                acc = fmaf(operand_value(a, i, k), operand_value(b, k, j), acc);
            }
            float y = epilogue_value(acc, scale, bias, j);
            c[i * ldc + j] = accumulate ? c[i * ldc + j] + y : y;
        }
}

/* ---- the portable micro-kernel (ISA "scalar") ---- */

static void ukernel_scalar_4x16(int64_t kc, const void *a_panel, const void *b_panel,
                                float *c, int64_t ldc, int first,
                                const hq_gemm_epilogue *ep) {
    const float *ap = (const float *)a_panel;
    const float *bp = (const float *)b_panel;
    float acc[4][NR];
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < NR; j++) acc[r][j] = first ? 0.0f : c[r * ldc + j];
    for (int64_t k = 0; k < kc; k++, ap += 4, bp += NR)
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < NR; j++) acc[r][j] = fmaf(ap[r], bp[j], acc[r][j]);
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < NR; j++) {
            float v = acc[r][j];
            if (ep) {
                v = epilogue_value(v, ep->scale, ep->bias, j);
                if (ep->accumulate) v = c[r * ldc + j] + v;
            }
            c[r * ldc + j] = v;
        }
}

/* ---- packing ---- */

static size_t layout_esize(int layout) { return layout == LAYOUT_F32 ? 4 : 2; }
static int64_t even_up(int64_t k) { return k + (k & 1); }

/* op(A) rows i0..i0+rows-1 (rows <= mr), k0..k0+kc-1, into one mr-row panel.
 * F32: dst[kk*mr + r] with k position kk holding k = kk^1 (pairs swapped).
 * BF16: 32-bit word dst[p*mr + r] = bf16(a[2p]) | bf16(a[2p+1]) << 16. */
static void pack_a_panel(const hq_gemm_operand *a, int64_t i0, int rows, int mr, int64_t k0,
                         int64_t kc, int layout, void *dst) {
    const int64_t np = even_up(kc) / 2;
    if (layout == LAYOUT_F32) {
        float *d = (float *)dst;
        for (int r = 0; r < mr; r++) {
            if (r >= rows) {
                for (int64_t p = 0; p < np; p++) d[(2 * p) * mr + r] = d[(2 * p + 1) * mr + r] = 0.0f;
                continue;
            }
            for (int64_t p = 0; p < np; p++) {
                int64_t k = 2 * p;
                d[(2 * p) * mr + r] = k + 1 < kc ? operand_value(a, i0 + r, k0 + k + 1) : 0.0f;
                d[(2 * p + 1) * mr + r] = operand_value(a, i0 + r, k0 + k);
            }
        }
    } else {
        uint32_t *d = (uint32_t *)dst;
        for (int r = 0; r < mr; r++)
            for (int64_t p = 0; p < np; p++) {
                int64_t k = 2 * p;
                uint32_t lo = r < rows ? operand_bf16(a, i0 + r, k0 + k) : 0;
                uint32_t hi = r < rows && k + 1 < kc ? operand_bf16(a, i0 + r, k0 + k + 1) : 0;
                d[p * mr + r] = lo | hi << 16;
            }
    }
}

/* op(B) rows k0..k0+kc-1, columns j0..j0+cols-1 (cols <= NR), into one 16-column panel,
 * laid out like pack_a_panel with NR in place of mr. */
static void pack_b_panel(const hq_gemm_operand *b, int64_t k0, int64_t kc, int64_t j0,
                         int cols, int layout, void *dst) {
    const int64_t np = even_up(kc) / 2;
    if (layout == LAYOUT_F32) {
        float *d = (float *)dst;
        for (int j = 0; j < NR; j++) {
            if (j >= cols) {
                for (int64_t p = 0; p < np; p++) d[(2 * p) * NR + j] = d[(2 * p + 1) * NR + j] = 0.0f;
                continue;
            }
            for (int64_t p = 0; p < np; p++) {
                int64_t k = 2 * p;
                d[(2 * p) * NR + j] = k + 1 < kc ? operand_value(b, k0 + k + 1, j0 + j) : 0.0f;
                d[(2 * p + 1) * NR + j] = operand_value(b, k0 + k, j0 + j);
            }
        }
    } else {
        uint32_t *d = (uint32_t *)dst;
        for (int j = 0; j < NR; j++)
            for (int64_t p = 0; p < np; p++) {
                int64_t k = 2 * p;
                uint32_t lo = j < cols ? operand_bf16(b, k0 + k, j0 + j) : 0;
                uint32_t hi = j < cols && k + 1 < kc ? operand_bf16(b, k0 + k + 1, j0 + j) : 0;
                d[p * NR + j] = lo | hi << 16;
            }
    }
}

static void *aligned_buffer(size_t nbytes) {
    size_t n = (nbytes + ALIGN - 1) / ALIGN * ALIGN;
    return aligned_alloc(ALIGN, n ? n : ALIGN);
}

/* ---- pre-packed op(B) ---- */

struct hq_packed_b {
    int64_t K, N;
    int kc;           /* K slice depth used by the packing */
    int kid;          /* kernel it was packed for */
    int layout;
    int format;
    size_t nbytes;
    void *data;       /* slices one after another; in each, ceil(N/16) panels */
};

/* Byte offset of K slice `slice` (all earlier slices are full), panel `panel`. */
static size_t packed_offset(const hq_packed_b *p, int64_t slice, int64_t panel) {
    int64_t npan = (p->N + NR - 1) / NR;
    int64_t kcp = even_up(p->K - slice * p->kc < p->kc ? p->K - slice * p->kc : p->kc);
    return ((size_t)slice * p->kc * npan * NR + (size_t)panel * kcp * NR) * layout_esize(p->layout);
}

hq_packed_b *hq_pack_b(int64_t K, int64_t N, const hq_gemm_operand *b) {
    hq_packed_b *p = (hq_packed_b *)calloc(1, sizeof(*p));
    if (p == NULL) return NULL;
    p->K = K;
    p->N = N;
    p->kc = KC;
    p->kid = select_kernel();
    p->layout = kernels[p->kid].layout;
    p->format = b->format;
    int64_t npan = (N + NR - 1) / NR;
    p->nbytes = (size_t)even_up(K) * npan * NR * layout_esize(p->layout);
    p->data = aligned_buffer(p->nbytes);
    if (p->data == NULL) {
        free(p);
        return NULL;
    }
    int64_t nslice = (K + KC - 1) / KC;
    int64_t items = nslice * npan;
    int nt = items * KC * NR < (1 << 16) ? 1 : hq_get_num_threads();
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t it = 0; it < items; it++) {
        int64_t s = it / npan, jp = it % npan;
        int64_t k0 = s * KC, kc = K - k0 < KC ? K - k0 : KC;
        int cols = N - jp * NR < NR ? (int)(N - jp * NR) : NR;
        pack_b_panel(b, k0, kc, jp * NR, cols, p->layout, (char *)p->data + packed_offset(p, s, jp));
    }
    return p;
}

void hq_packed_b_free(hq_packed_b *p) {
    if (p == NULL) return;
    free(p->data);
    free(p);
}
int64_t hq_packed_b_k(const hq_packed_b *p) { return p->K; }
int64_t hq_packed_b_n(const hq_packed_b *p) { return p->N; }
int hq_packed_b_format(const hq_packed_b *p) { return p->format; }
size_t hq_packed_b_nbytes(const hq_packed_b *p) { return p->nbytes; }
const char *hq_packed_b_kernel(const hq_packed_b *p) { return kernels[p->kid].name; }
int hq_packed_b_usable(const hq_packed_b *p) {
    return kernels[select_kernel()].layout == p->layout;
}

/* ---- the blocked driver ---- */

/* One tile; partial tiles go through a zero-padded NR-wide scratch tile. */
static void run_tile(const kernel_info *ki, int64_t kcp, const void *ap, const void *bp,
                     float *c, int64_t ldc, int rows, int cols, int first,
                     const hq_gemm_epilogue *ep) {
    if (rows == ki->mr && cols == NR) {
        ki->fn(kcp, ap, bp, c, ldc, first, ep);
        return;
    }
    float tile[MR_MAX * NR] __attribute__((aligned(ALIGN)));
    float tile_bias[NR];
    memset(tile, 0, sizeof(tile));
    if (!first || (ep && ep->accumulate))
        for (int r = 0; r < rows; r++) memcpy(tile + r * NR, c + r * ldc, cols * sizeof(float));
    hq_gemm_epilogue e;
    if (ep) {
        e = *ep;
        if (ep->bias) {
            memset(tile_bias, 0, sizeof(tile_bias));
            memcpy(tile_bias, ep->bias, cols * sizeof(float));
            e.bias = tile_bias;
        }
    }
    ki->fn(kcp, ap, bp, tile, NR, first, ep ? &e : NULL);
    for (int r = 0; r < rows; r++) memcpy(c + r * ldc, tile + r * NR, cols * sizeof(float));
}

int hq_gemm(int64_t M, int64_t N, int64_t K, const hq_gemm_operand *a,
            const hq_gemm_operand *b, const hq_packed_b *packed, float scale,
            const float *bias, float *c, int64_t ldc, int accumulate) {
    if (M <= 0 || N <= 0 || K <= 0 || (b == NULL && packed == NULL)) return HQ_GEMM_EARG;
    const int kid = select_kernel();
    const kernel_info *ki = &kernels[kid];
    if (packed && (packed->layout != ki->layout || packed->K != K || packed->N != N))
        return HQ_GEMM_ELAYOUT;
    const int64_t kcb = packed ? packed->kc : KC;
    const int mr = ki->mr, MC = ki->mc, NC = ki->nc;
    const size_t esize = layout_esize(ki->layout);

    /* With accumulate and several K slices C holds partial sums, so build y aside. */
    float *scratch = NULL, *cc = c;
    int64_t ldcc = ldc;
    int ep_accumulate = accumulate;
    if (accumulate && K > kcb) {
        scratch = (float *)malloc((size_t)M * N * sizeof(float));
        if (scratch == NULL) return HQ_GEMM_ENOMEM;
        cc = scratch;
        ldcc = N;
        ep_accumulate = 0;
    }

    double flops = 2.0 * M * N * K;
    int nt = flops < 4e6 ? 1 : hq_get_num_threads();
    if (nt < 1) nt = 1;
    const size_t a_bytes = (size_t)MC * even_up(kcb) * esize;
    const size_t b_bytes = (size_t)NC * even_up(kcb) * esize;
    char *a_bufs = (char *)aligned_buffer(a_bytes * nt);
    char *b_buf = packed ? NULL : (char *)aligned_buffer(b_bytes);
    if (a_bufs == NULL || (!packed && b_buf == NULL)) {
        free(a_bufs);
        free(b_buf);
        free(scratch);
        return HQ_GEMM_ENOMEM;
    }

    const int64_t n_ic = (M + MC - 1) / MC;
    const int64_t npan_total = (N + NR - 1) / NR;

#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        char *a_buf = a_bufs + a_bytes * omp_get_thread_num();
#else
        char *a_buf = a_bufs;
#endif
        for (int64_t jc = 0; jc < N; jc += NC) {
            const int64_t nc = N - jc < NC ? N - jc : NC;
            const int64_t npan = (nc + NR - 1) / NR;
            /* column chunks per row block: enough items to balance the threads */
            int64_t n_jch = (4 * (int64_t)nt + n_ic - 1) / n_ic;
            if (n_jch > npan) n_jch = npan;
            if (n_jch < 1) n_jch = 1;
            const int64_t pan_per_ch = (npan + n_jch - 1) / n_jch;
            n_jch = (npan + pan_per_ch - 1) / pan_per_ch;

            for (int64_t pc = 0; pc < K; pc += kcb) {
                const int64_t kc = K - pc < kcb ? K - pc : kcb;
                const int64_t kcp = even_up(kc);
                const int first = pc == 0, last = pc + kc >= K;
                const char *b_block;
                if (packed) {
                    b_block = (const char *)packed->data + packed_offset(packed, pc / kcb, jc / NR);
                } else {
#pragma omp for schedule(static)
                    for (int64_t jp = 0; jp < npan; jp++) {
                        int cols = nc - jp * NR < NR ? (int)(nc - jp * NR) : NR;
                        pack_b_panel(b, pc, kc, jc + jp * NR, cols, ki->layout,
                                     b_buf + (size_t)jp * kcp * NR * esize);
                    }
                    b_block = b_buf;
                }
                int64_t packed_ic = -1;
#pragma omp for schedule(dynamic, 1)
                for (int64_t item = 0; item < n_ic * n_jch; item++) {
                    const int64_t ic = item / n_jch, jch = item % n_jch;
                    const int64_t i0 = ic * MC;
                    const int64_t mc = M - i0 < MC ? M - i0 : MC;
                    if (packed_ic != ic) {
                        for (int64_t ir = 0; ir < mc; ir += mr) {
                            int rows = mc - ir < mr ? (int)(mc - ir) : mr;
                            pack_a_panel(a, i0 + ir, rows, mr, pc, kc, ki->layout,
                                         a_buf + (size_t)ir * kcp * esize);
                        }
                        packed_ic = ic;
                    }
                    const int64_t jp0 = jch * pan_per_ch;
                    const int64_t jp1 = jp0 + pan_per_ch < npan ? jp0 + pan_per_ch : npan;
                    for (int64_t jp = jp0; jp < jp1; jp++) {
                        const int64_t j = jc + jp * NR;
                        const int cols = N - j < NR ? (int)(N - j) : NR;
                        const char *bp = b_block + (size_t)jp * kcp * NR * esize;
                        hq_gemm_epilogue ep = {scale, bias ? bias + j : NULL, ep_accumulate};
                        for (int64_t ir = 0; ir < mc; ir += mr) {
                            const int rows = mc - ir < mr ? (int)(mc - ir) : mr;
                            run_tile(ki, kcp, a_buf + (size_t)ir * kcp * esize, bp,
                                     cc + (i0 + ir) * ldcc + j, ldcc, rows, cols, first,
                                     last ? &ep : NULL);
                        }
                    }
                }
            }
        }
        if (scratch) {
#pragma omp for schedule(static)
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++) c[i * ldc + j] += scratch[i * N + j];
        }
    }
    (void)npan_total;
    free(a_bufs);
    free(b_buf);
    free(scratch);
    return HQ_GEMM_OK;
}
