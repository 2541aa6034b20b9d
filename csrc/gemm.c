/* Quantized GEMM: the reference kernel, packing, cache blocking, OpenMP and kernel
 * dispatch. The arithmetic contract (formats, summation order, epilogue) is in gemm.h.
 *
 * Blocking (GotoBLAS/BLIS style): each thread owns one band of C (rows, or columns when
 * N > M) and, for each NC-wide column block and KC-deep slice of K, packs its own op(B)
 * block into NR=16-column panels (a pre-packed operand from hq_pack_b skips this), then
 * per MC-row block packs op(A) into MR-row panels (kept in L2) and runs the MR x 16
 * micro-kernel down each B panel (kept in L1). Packing decodes HiF8 codes through the
 * 256-entry table (or rounds float32 to bf16), so every operand element is converted
 * once per panel, and lays each k pair out odd-first so the micro-kernels are plain
 * sequential loops in the order of gemm.h.
 *
 * Threads never wait for each other until the end. A shared B block with dynamically
 * scheduled row blocks (the first version) needed two barriers per K slice; on this
 * project's shared 2-core machines every barrier waits for the other thread's next time
 * slice, and the private bands measured 1.3-1.5x faster there at the cost of packing the
 * shorter operand once per thread.
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
#ifndef HQ_GEMM_KC
/* 512 rather than 256: the model's K = 384 products then run in one slice (no partial
 * sums through C, one packing pass) and K = 1024 in two; measured 1.12-1.2x on the
 * K = 384 products, neutral on K = 2048, single-threaded (benchmarks/bench_gemm.py). A
 * 6 x 512 A panel (12 KiB) and a 16 x 512 B panel (32 KiB) still stream through L1,
 * the MC x KC A block (288 KiB) stays in a 512 KiB L2. */
#define HQ_GEMM_KC 512
#endif
#define KC HQ_GEMM_KC /* even: K slices start on pair boundaries */
#ifndef HQ_GEMM_MC_AVX2
#define HQ_GEMM_MC_AVX2 144
#endif
#define MR_MAX 24
#define ALIGN 64

enum { LAYOUT_F32 = 0, LAYOUT_BF16 = 1 };
/* KID_BF16EMU is a scalar emulation of the AVX512-BF16 kernel (same panels, Intel's
 * vdpbf16ps pseudo-code with DAZ/FTZ): never chosen by the ISA path, it lets tests on
 * any CPU exercise the bf16 packing and blocking. */
enum { KID_SCALAR = 0, KID_AVX2, KID_AVX512F, KID_AVX512BF16, KID_BF16EMU, KID_COUNT };

static void ukernel_scalar_4x16(int64_t, const void *, const void *, float *, int64_t, int,
                                const hq_gemm_epilogue *);
static void ukernel_bf16emu_24x16(int64_t, const void *, const void *, float *, int64_t, int,
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
    {"avx2", 6, HQ_GEMM_MC_AVX2, 4096, LAYOUT_F32, hq_gemm_ukernel_avx2_6x16},
    {"avx512f", 24, 192, 4096, LAYOUT_F32, hq_gemm_ukernel_avx512_24x16},
    {"avx512bf16", 24, 192, 4096, LAYOUT_BF16, hq_gemm_ukernel_avx512bf16_24x16},
#else
    {"avx2", 6, 144, 4096, LAYOUT_F32, NULL},
    {"avx512f", 24, 192, 4096, LAYOUT_F32, NULL},
    {"avx512bf16", 24, 192, 4096, LAYOUT_BF16, NULL},
#endif
    {"bf16emu", 24, 192, 4096, LAYOUT_BF16, ukernel_bf16emu_24x16},
};

static int forced_kernel = -1;
#define PARALLEL_MIN_FLOPS 3.2e7
static double parallel_min_flops = PARALLEL_MIN_FLOPS;

void hq_gemm_set_parallel_min_flops(double flops) {
    parallel_min_flops = flops >= 0 ? flops : PARALLEL_MIN_FLOPS;
}

static int kernel_supported(int kid) {
    if (kernels[kid].fn == NULL) return 0;
    switch (kid) {
    case KID_SCALAR:
    case KID_BF16EMU: return 1;
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

/* Write an accumulator tile (rows x NR, row-major) to C through the epilogue:
 * y = fma(sum, scale, bias) and, with accumulate, C + y (gemm.h). */
static inline void store_tile(const float *acc, int rows, float *c, int64_t ldc,
                              const hq_gemm_epilogue *ep) {
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < NR; j++) {
            float v = acc[r * NR + j];
            if (ep) {
                v = epilogue_value(v, ep->scale, ep->bias, j);
                if (ep->accumulate) v = c[r * ldc + j] + v;
            }
            c[r * ldc + j] = v;
        }
}

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
    store_tile(&acc[0][0], 4, c, ldc, ep);
}

/* ---- the vdpbf16ps emulation (tests only, see KID_BF16EMU) ---- */

static inline float bf16_daz(uint32_t bits) { /* subnormal bf16 input -> signed zero */
    return f32_from_bf16_bits((uint16_t)((bits & 0x7f80u) == 0 ? bits & 0x8000u : bits));
}
static inline float f32_ftz(float x) { return fabsf(x) < 0x1p-126f ? copysignf(0.0f, x) : x; }

static void ukernel_bf16emu_24x16(int64_t kc, const void *a_panel, const void *b_panel,
                                  float *c, int64_t ldc, int first,
                                  const hq_gemm_epilogue *ep) {
    const uint32_t *ap = (const uint32_t *)a_panel, *bp = (const uint32_t *)b_panel;
    float acc[24][NR];
    for (int r = 0; r < 24; r++)
        for (int j = 0; j < NR; j++) acc[r][j] = first ? 0.0f : f32_ftz(c[r * ldc + j]);
    for (int64_t p = 0; p < kc / 2; p++, ap += 24, bp += NR)
        for (int r = 0; r < 24; r++)
            for (int j = 0; j < NR; j++) {
                /* Intel: dst += a.odd*b.odd; dst += a.even*b.even (each RNE, DAZ, FTZ) */
                float odd = f32_ftz(bf16_daz(ap[r] >> 16) * bf16_daz(bp[j] >> 16));
                float even = f32_ftz(bf16_daz(ap[r] & 0xffffu) * bf16_daz(bp[j] & 0xffffu));
                acc[r][j] = f32_ftz(acc[r][j] + odd);
                acc[r][j] = f32_ftz(acc[r][j] + even);
            }
    store_tile(&acc[0][0], 24, c, ldc, ep);
}

/* ---- packing ---- */

static size_t layout_esize(int layout) { return layout == LAYOUT_F32 ? 4 : 2; }
static int64_t even_up(int64_t k) { return k + (k & 1); }

/* One panel: `lanes` (<= width) vectors of kc elements of op(X) — the rows of an A
 * panel or the columns of a B panel — element k of lane l at base[l*lane_stride +
 * k*k_stride]; lanes past `lanes` and the odd-K pad are zero.
 *   F32 layout:  float d[kk*width + l], position kk holding k = kk^1 (pairs swapped,
 *                so the float32 kernels run the gemm.h order as a plain loop);
 *   BF16 layout: uint32 d[p*width + l] = bf16(x[2p]) | bf16(x[2p+1]) << 16, the
 *                operand layout of vdpbf16ps.
 * Written once per (format, layout) with a macro so the table look-up or bf16 rounding
 * is inlined; the loop order follows whichever stride is contiguous. */
static inline float hif8_value(uint8_t c) { return hif8_decode_table_f32[c]; }
static inline uint32_t hif8_bf16(uint8_t c) { /* every HiF8 value is exact in bf16 */
    return bf16_bits_from_f32(hif8_decode_table_f32[c]);
}
static inline uint32_t f32_bf16(float x) { return bf16_bits_from_f32(x); }

#define DEFINE_PACK(name, T, OUT_T, CONV, STORE)                                          \
    static void name(const T *base, int64_t lane_stride, int64_t k_stride, int lanes,     \
                     int width, int64_t kc, OUT_T *d) {                                   \
        const int64_t np = (kc + 1) / 2, full = kc / 2;                                   \
        if (k_stride == 1 || lanes == 1) {                                                \
            if (k_stride == 1) /* request every lane's lines at once: misses overlap */   \
                for (int l = 0; l < lanes; l++)                                           \
                    for (int64_t o = 0; o < kc * (int64_t)sizeof(T); o += 64)             \
                        __builtin_prefetch((const char *)(base + l * lane_stride) + o);   \
            for (int l = 0; l < lanes; l++) {                                             \
                const T *x = base + l * lane_stride;                                      \
                for (int64_t p = 0; p < full; p++, x += 2 * k_stride)                     \
                    STORE(d, p, l, width, CONV(x[0]), CONV(x[k_stride]));                 \
                if (kc & 1) STORE(d, full, l, width, CONV(x[0]), 0);                      \
            }                                                                             \
        } else {                                                                          \
            for (int64_t p = 0; p < full; p++) {                                          \
                const T *x = base + 2 * p * k_stride;                                     \
                for (int l = 0; l < lanes; l++)                                           \
                    STORE(d, p, l, width, CONV(x[l * lane_stride]),                       \
                          CONV(x[l * lane_stride + k_stride]));                           \
            }                                                                             \
            if (kc & 1) {                                                                 \
                const T *x = base + 2 * full * k_stride;                                  \
                for (int l = 0; l < lanes; l++)                                           \
                    STORE(d, full, l, width, CONV(x[l * lane_stride]), 0);                \
            }                                                                             \
        }                                                                                 \
        for (int l = lanes; l < width; l++)                                               \
            for (int64_t p = 0; p < np; p++) STORE(d, p, l, width, 0, 0);                 \
    }
#define STORE_F32(d, p, l, w, even, odd)                                                  \
    do {                                                                                  \
        (d)[(2 * (p)) * (w) + (l)] = (odd);                                               \
        (d)[(2 * (p) + 1) * (w) + (l)] = (even);                                          \
    } while (0)
#define STORE_BF16(d, p, l, w, even, odd)                                                 \
    ((d)[(p) * (w) + (l)] = (uint32_t)(even) | (uint32_t)(odd) << 16)

DEFINE_PACK(pack_hif8_f32, uint8_t, float, hif8_value, STORE_F32)
DEFINE_PACK(pack_f32_f32, float, float, round_bf16_f32, STORE_F32)
DEFINE_PACK(pack_hif8_bf16, uint8_t, uint32_t, hif8_bf16, STORE_BF16)
DEFINE_PACK(pack_f32_bf16, float, uint32_t, f32_bf16, STORE_BF16)

/* Several consecutive F32-layout panels at once, for an operand whose lanes sit next to
 * each other in memory (lane stride 1) while k strides through it: the dW product's
 * dYᵀ and X, and the dX product's W. Panel by panel, each cache line of a row would be
 * read once per panel it overlaps and the k walk strides whole rows apart; here every
 * k pair's two rows are read once, left to right, and spread over the panels. Same
 * bytes out as pack_panel on each panel (lanes past `lanes` and the odd-K pad are 0). */
#define PACK_ROWS_CHUNK 240 /* lanes converted at a time: a multiple of 4, 6, 16, 24 */
/* Each k pair's two rows are converted into small buffers (plain loops gcc vectorizes)
 * and copied out in width-sized pieces (fixed-size copies for the 6 and 16 wide). */
#define PACK_ROWS_COPY(W)                                                                 \
    for (int64_t o = 0; o < cr; o += (W)) {                                               \
        float *dq = d + ((c0 + o) / (W) * kcp + 2 * p) * (W);                             \
        memcpy(dq, t1 + o, (W) * sizeof(float));                                          \
        memcpy(dq + (W), t0 + o, (W) * sizeof(float));                                    \
    }
#define DEFINE_PACK_ROWS(name, T, CONV)                                                   \
    static void name(const T *base, int64_t k_stride, int64_t lanes, int width,          \
                     int64_t kc, float *d) {                                              \
        const int64_t kcp = even_up(kc), chunk = PACK_ROWS_CHUNK / width * width;         \
        float t0[PACK_ROWS_CHUNK], t1[PACK_ROWS_CHUNK];                                   \
        for (int64_t p = 0; p < kcp / 2; p++) {                                           \
            const T *x0 = base + 2 * p * k_stride, *x1 = x0 + k_stride;                   \
            const int has_odd = 2 * p + 1 < kc;                                           \
            for (int64_t c0 = 0; c0 < lanes; c0 += chunk) {                               \
                const int64_t cn = lanes - c0 < chunk ? lanes - c0 : chunk;               \
                const int64_t cr = (cn + width - 1) / width * width;                      \
                for (int64_t l = 0; l < cn; l++) t0[l] = CONV(x0[c0 + l]);                \
                if (has_odd)                                                              \
                    for (int64_t l = 0; l < cn; l++) t1[l] = CONV(x1[c0 + l]);            \
                else                                                                      \
                    for (int64_t l = 0; l < cn; l++) t1[l] = 0.0f;                        \
                for (int64_t l = cn; l < cr; l++) t0[l] = t1[l] = 0.0f;                   \
                if (width == 6) {                                                         \
                    PACK_ROWS_COPY(6)                                                     \
                } else if (width == 16) {                                                 \
                    PACK_ROWS_COPY(16)                                                    \
                } else {                                                                  \
                    PACK_ROWS_COPY(width)                                                 \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    }
DEFINE_PACK_ROWS(pack_rows_hif8_f32, uint8_t, hif8_value)
DEFINE_PACK_ROWS(pack_rows_f32_f32, float, round_bf16_f32)

/* Pack `lanes` lanes (lane stride 1) x kc of x starting at element (r0, s0) into
 * consecutive `width`-lane F32 panels; 0 when this operand/layout does not qualify. */
static int pack_rows(const hq_gemm_operand *x, int64_t r0, int64_t s0, int64_t lane_stride,
                     int64_t k_stride, int64_t lanes, int width, int64_t kc, int layout,
                     void *dst) {
    if (layout != LAYOUT_F32 || lane_stride != 1 || k_stride == 1 || k_stride == 0) return 0;
    int64_t off = r0 * x->row_stride + s0 * x->col_stride;
    if (x->format == HQ_GEMM_HIF8)
        pack_rows_hif8_f32((const uint8_t *)x->data + off, k_stride, lanes, width, kc,
                           (float *)dst);
    else
        pack_rows_f32_f32((const float *)x->data + off, k_stride, lanes, width, kc,
                          (float *)dst);
    return 1;
}

static void pack_panel(const hq_gemm_operand *x, int64_t r0, int64_t s0, int64_t lane_stride,
                       int64_t k_stride, int lanes, int width, int64_t kc, int layout,
                       void *dst) {
    int64_t off = r0 * x->row_stride + s0 * x->col_stride;
    if (x->format == HQ_GEMM_HIF8) {
        const uint8_t *base = (const uint8_t *)x->data + off;
        if (layout == LAYOUT_F32)
            pack_hif8_f32(base, lane_stride, k_stride, lanes, width, kc, (float *)dst);
        else
            pack_hif8_bf16(base, lane_stride, k_stride, lanes, width, kc, (uint32_t *)dst);
    } else {
        const float *base = (const float *)x->data + off;
        if (layout == LAYOUT_F32)
            pack_f32_f32(base, lane_stride, k_stride, lanes, width, kc, (float *)dst);
        else
            pack_f32_bf16(base, lane_stride, k_stride, lanes, width, kc, (uint32_t *)dst);
    }
}

/* op(A) rows i0..i0+rows-1 (rows <= mr), k0..k0+kc-1: one mr-row panel. */
static void pack_a_panel(const hq_gemm_operand *a, int64_t i0, int rows, int mr, int64_t k0,
                         int64_t kc, int layout, void *dst) {
    pack_panel(a, i0, k0, a->row_stride, a->col_stride, rows, mr, kc, layout, dst);
}

/* op(B) rows k0..k0+kc-1, columns j0..j0+cols-1 (cols <= NR): one 16-column panel. */
static void pack_b_panel(const hq_gemm_operand *b, int64_t k0, int64_t kc, int64_t j0,
                         int cols, int layout, void *dst) {
    pack_panel(b, k0, j0, b->col_stride, b->row_stride, cols, NR, kc, layout, dst);
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

    /* Threads: one for small products (waking a second thread costs more than it
     * saves, and much more on a loaded machine). Each thread takes a band of C and packs
     * what it reads itself: a band of rows re-packs all of op(B) per thread, a band of
     * columns all of op(A), so split the longer side, and into no more bands than tiles. */
    const double flops = 2.0 * M * N * K;
    const int split_rows = M >= N;
    const int64_t max_bands = split_rows ? (M + mr - 1) / mr : (N + NR - 1) / NR;
    int nt = flops < parallel_min_flops ? 1 : hq_get_num_threads();
    if (nt > max_bands) nt = (int)max_bands;
    if (nt < 1) nt = 1;
    /* scratch sized by what this product touches (small products stay cheap) */
    const int64_t kc_max = even_up(K < kcb ? K : kcb);
    const int64_t mc_max = M < MC ? (M + mr - 1) / mr * mr : MC;
    const int64_t nc_max = N < NC ? (N + NR - 1) / NR * NR : NC;
    const size_t a_bytes = ((size_t)mc_max * kc_max * esize + ALIGN - 1) / ALIGN * ALIGN;
    const size_t b_bytes = (size_t)nc_max * kc_max * esize;
    char *a_bufs = (char *)aligned_buffer(a_bytes * nt);
    char *b_buf = packed ? NULL : (char *)aligned_buffer(b_bytes * nt);
    if (a_bufs == NULL || (!packed && b_buf == NULL)) {
        free(a_bufs);
        free(b_buf);
        free(scratch);
        return HQ_GEMM_ENOMEM;
    }

#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
        const int t = 0, T = 1;
#endif
        char *a_buf = a_bufs + a_bytes * t;
        char *my_b = packed ? NULL : b_buf + b_bytes * t;
        /* this thread's rectangle of C: a band of rows, or of columns when M is short */
        int64_t r0 = 0, r1 = M, c0 = 0, c1 = N;
        if (split_rows) {
            const int64_t per = ((M + T - 1) / T + mr - 1) / mr * mr;
            r0 = t * per < M ? t * per : M;
            r1 = r0 + per < M ? r0 + per : M;
        } else {
            const int64_t per = ((N + T - 1) / T + NR - 1) / NR * NR;
            c0 = t * per < N ? t * per : N;
            c1 = c0 + per < N ? c0 + per : N;
        }
        for (int64_t jc = c0; jc < c1 && r0 < r1; jc += NC) {
            const int64_t nc = c1 - jc < NC ? c1 - jc : NC;
            const int64_t npan = (nc + NR - 1) / NR;
            for (int64_t pc = 0; pc < K; pc += kcb) {
                const int64_t kc = K - pc < kcb ? K - pc : kcb;
                const int64_t kcp = even_up(kc);
                const int first = pc == 0, last = pc + kc >= K;
                const char *b_block;
                if (packed) {
                    b_block = (const char *)packed->data + packed_offset(packed, pc / kcb, jc / NR);
                } else {
                    /* op(B) lanes are its columns: (k = pc, column jc) onwards */
                    if (!pack_rows(b, pc, jc, b->col_stride, b->row_stride, nc, NR, kc,
                                   ki->layout, my_b))
                        for (int64_t jp = 0; jp < npan; jp++) {
                            int cols = nc - jp * NR < NR ? (int)(nc - jp * NR) : NR;
                            pack_b_panel(b, pc, kc, jc + jp * NR, cols, ki->layout,
                                         my_b + (size_t)jp * kcp * NR * esize);
                        }
                    b_block = my_b;
                }
                for (int64_t i0 = r0; i0 < r1; i0 += MC) {
                    const int64_t mc = r1 - i0 < MC ? r1 - i0 : MC;
                    if (!pack_rows(a, i0, pc, a->row_stride, a->col_stride, mc, mr, kc,
                                   ki->layout, a_buf))
                        for (int64_t ir = 0; ir < mc; ir += mr) {
                            int rows = mc - ir < mr ? (int)(mc - ir) : mr;
                            pack_a_panel(a, i0 + ir, rows, mr, pc, kc, ki->layout,
                                         a_buf + (size_t)ir * kcp * esize);
                        }
                    for (int64_t jp = 0; jp < npan; jp++) {
                        const int64_t j = jc + jp * NR;
                        const int cols = c1 - j < NR ? (int)(c1 - j) : NR;
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
#pragma omp barrier
#pragma omp for schedule(static)
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++) c[i * ldc + j] += scratch[i * N + j];
        }
    }
    free(a_bufs);
    free(b_buf);
    free(scratch);
    return HQ_GEMM_OK;
}
