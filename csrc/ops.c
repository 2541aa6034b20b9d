/* Fused RMSNorm and RoPE kernels (ops.h). Plain C loops that gcc vectorizes; no
 * -ffast-math, so every sum runs in the order written. */
#include "ops.h"

#include <math.h>
#include <string.h>

#include "cpu.h"

#define LANES 8

/* One thread below 2^18 elements: waking a second thread costs ~50 us on a quiet
 * machine and a scheduler time slice (several ms) on a loaded one. */
static int ops_threads(size_t work) { return work < ((size_t)1 << 18) ? 1 : hq_threads_for(work); }

/* sum of a[i] * b[i] in LANES double lanes, lanes added in order: a fixed order. */
static double dot_lanes(const float *a, const float *b, int64_t n) {
    double lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) lane[j] += (double)a[i + j] * (double)b[i + j];
    for (int j = 0; i < n; i++, j++) lane[j] += (double)a[i] * (double)b[i];
    double s = 0.0;
    for (int j = 0; j < LANES; j++) s += lane[j];
    return s;
}

void hq_rmsnorm_forward_f32(const float *x, const float *weight, float eps, int64_t N,
                            int64_t C, float *out, float *rstd) {
    int nt = ops_threads((size_t)(N * C));
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * C;
        float *o = out + n * C;
        float ms = (float)(dot_lanes(xr, xr, C) / (double)C) + eps;
        float r = 1.0f / sqrtf(ms);
        rstd[n] = r;
        for (int64_t c = 0; c < C; c++) o[c] = (xr[c] * r) * weight[c];
    }
}

#define DW_COLS 64 /* columns per dweight task: 64 double accumulators */

void hq_rmsnorm_backward_f32(const float *dout, const float *x, const float *weight,
                             const float *rstd, int64_t N, int64_t C, float *dx,
                             float *dweight, int accumulate) {
    int nt = ops_threads((size_t)(N * C));
#pragma omp parallel num_threads(nt)
    {
        /* dx: one row per iteration, xhat and dxhat recomputed in registers */
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const float *xr = x + n * C, *dr = dout + n * C;
            float *o = dx + n * C;
            const float r = rstd[n];
            double lane[LANES] = {0};
            int64_t c = 0;
            for (; c + LANES <= C; c += LANES)
                for (int j = 0; j < LANES; j++)
                    lane[j] += (double)(dr[c + j] * weight[c + j]) * (double)(xr[c + j] * r);
            for (int j = 0; c < C; c++, j++) lane[j] += (double)(dr[c] * weight[c]) * (double)(xr[c] * r);
            double s = 0.0;
            for (int j = 0; j < LANES; j++) s += lane[j];
            const float dot = (float)(s / (double)C);
            for (c = 0; c < C; c++) {
                float xhat = xr[c] * r, dxhat = dr[c] * weight[c];
                o[c] = (dxhat - xhat * dot) * r;
            }
        }
        /* dweight: a block of columns per iteration, rows summed in order */
        const int64_t nblk = (C + DW_COLS - 1) / DW_COLS;
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t c0 = blk * DW_COLS, w = C - c0 < DW_COLS ? C - c0 : DW_COLS;
            double acc[DW_COLS] = {0};
            for (int64_t n = 0; n < N; n++) {
                const float *xr = x + n * C + c0, *dr = dout + n * C + c0;
                const float r = rstd[n];
                for (int64_t j = 0; j < w; j++) acc[j] += (double)dr[j] * (double)(xr[j] * r);
            }
            for (int64_t j = 0; j < w; j++)
                dweight[c0 + j] = accumulate ? dweight[c0 + j] + (float)acc[j] : (float)acc[j];
        }
    }
}

void hq_rope_f32(const float *x, const float *cos, const float *sin, int64_t B, int64_t T,
                 int64_t nh, int64_t D, int64_t cs_batch_stride, int sign, float *out) {
    const int64_t h = D / 2;
    int nt = ops_threads((size_t)(B * T * nh * D));
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t bt = 0; bt < B * T; bt++) {
        const int64_t b = bt / T, t = bt % T;
        const float *c = cos + b * cs_batch_stride + t * h;
        const float *s = sin + b * cs_batch_stride + t * h;
        for (int64_t head = 0; head < nh; head++) {
            const float *x1 = x + (bt * nh + head) * D, *x2 = x1 + h;
            float *o1 = out + (bt * nh + head) * D, *o2 = o1 + h;
            if (sign < 0)
                for (int64_t i = 0; i < h; i++) {
                    o1[i] = x1[i] * c[i] - x2[i] * s[i];
                    o2[i] = x2[i] * c[i] + x1[i] * s[i];
                }
            else
                for (int64_t i = 0; i < h; i++) {
                    o1[i] = x1[i] * c[i] + x2[i] * s[i];
                    o2[i] = x2[i] * c[i] - x1[i] * s[i];
                }
        }
    }
}

/* ---- exp, softmax, SwiGLU: a portable build and an AVX2+FMA build, same bits ---- */

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#define EXP_LO -88.0f          /* clamp, so 2^n stays within two normal factors */
#define EXP_HI 88.75f
#define EXP_ZERO -87.33654f    /* below: exp(x) < 2^-126, returned as 0 */
#define EXP_INF 88.72283f      /* above: exp(x) > FLT_MAX, returned as +inf */
#define EXP_MAGIC 12582912.0f  /* 1.5 * 2^23: adding it rounds to an integer */
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440e-4f
#define P0 1.9875691500e-4f
#define P1 1.3981999507e-3f
#define P2 8.3334519073e-3f
#define P3 4.1665795894e-2f
#define P4 1.6666665459e-1f
#define P5 5.0000001201e-1f

/* See ops.h. n = round(x log2 e) by the magic-number trick (no float -> int conversion,
 * so NaN is never converted), 2^n applied as two normal factors 2^(n>>1) 2^(n-(n>>1)). */
static inline float expf_inline(float x) {
    float xc = x < EXP_LO ? EXP_LO : x;          /* NaN compares false: stays NaN */
    xc = xc > EXP_HI ? EXP_HI : xc;
    float t = fmaf(xc, LOG2E, EXP_MAGIC);
    uint32_t tb;
    memcpy(&tb, &t, 4);
    int32_t n = (int32_t)(tb - 0x4B400000u);     /* round(xc log2 e), in [-127, 128] */
    float fn = t - EXP_MAGIC;
    float r = fmaf(fn, -LN2_HI, xc);             /* x - n ln2 in two parts (Cephes) */
    r = fmaf(fn, -LN2_LO, r);
    float p = fmaf(P0, r, P1);
    p = fmaf(p, r, P2);
    p = fmaf(p, r, P3);
    p = fmaf(p, r, P4);
    p = fmaf(p, r, P5);
    p = fmaf(p * r, r, r) + 1.0f;
    int32_t n1 = n >> 1, n2 = n - n1;
    float y = (p * bits_f32((uint32_t)(n1 + 127) << 23)) * bits_f32((uint32_t)(n2 + 127) << 23);
    y = x < EXP_ZERO ? 0.0f : y;
    return x > EXP_INF ? INFINITY : y;
}

float hq_expf(float x) { return expf_inline(x); }

/* Row pass 1: s = s * scale + bias, returns the max (NaN never wins, as in the
 * vector max below). Pass 2: s = exp(s - max), returns the sum in LANES double lanes.
 * Pass 3: s *= 1 / sum. The portable and AVX2 versions of each pass give equal bits. */
static float softmax_pass1(float *row, const float *brow, int64_t cols, float scale) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < cols; j++) {
        float v = row[j] * scale;
        if (brow) v = v + brow[j];
        row[j] = v;
        mx = v > mx ? v : mx;
    }
    return mx;
}

static void softmax_rows_portable(float *s, int64_t rows, int64_t cols, int64_t lds,
                                  const float *bias, int64_t ldb, float scale) {
    for (int64_t i = 0; i < rows; i++) {
        float *row = s + i * lds;
        const float mx = softmax_pass1(row, bias ? bias + i * ldb : NULL, cols, scale);
        double lane[LANES] = {0};
        for (int64_t j = 0; j < cols; j++) {
            float e = expf_inline(row[j] - mx);
            row[j] = e;
            lane[j % LANES] += e;
        }
        double sum = 0.0;
        for (int l = 0; l < LANES; l++) sum += lane[l];
        const float inv = 1.0f / (float)sum;
        for (int64_t j = 0; j < cols; j++) row[j] *= inv;
    }
}

static void swiglu_fwd_portable(const float *g, const float *u, int64_t i0, int64_t i1,
                                float *h) {
    for (int64_t i = i0; i < i1; i++)            /* g << 0: exp = inf, silu -> -0 */
        h[i] = (g[i] / (expf_inline(-g[i]) + 1.0f)) * u[i];
}

static void swiglu_bwd_portable(const float *dh, const float *g, const float *u, int64_t i0,
                                int64_t i1, float *dg, float *du) {
    for (int64_t i = i0; i < i1; i++) {
        float sig = 1.0f / (expf_inline(-g[i]) + 1.0f);
        float silu = g[i] * sig;
        du[i] = dh[i] * silu;
        /* d silu/dg = sig * (1 + g (1 - sig)) = sig + silu * (1 - sig) */
        dg[i] = (((1.0f - sig) * silu + sig) * dh[i]) * u[i];
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
#define HQ_AVX2 __attribute__((target("avx2,fma")))

HQ_AVX2 static inline __m256 exp8(__m256 x) {   /* expf_inline on 8 lanes */
    const __m256 lo = _mm256_set1_ps(EXP_LO), hi = _mm256_set1_ps(EXP_HI);
    const __m256 magic = _mm256_set1_ps(EXP_MAGIC);
    /* x < lo ? lo : x  and  xc > hi ? hi : xc, NaN kept (ordered compares) */
    __m256 xc = _mm256_blendv_ps(x, lo, _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    xc = _mm256_blendv_ps(xc, hi, _mm256_cmp_ps(xc, hi, _CMP_GT_OQ));
    __m256 t = _mm256_fmadd_ps(xc, _mm256_set1_ps(LOG2E), magic);
    __m256i n = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B400000));
    __m256 fn = _mm256_sub_ps(t, magic);
    __m256 r = _mm256_fmadd_ps(fn, _mm256_set1_ps(-LN2_HI), xc);
    r = _mm256_fmadd_ps(fn, _mm256_set1_ps(-LN2_LO), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(P0), r, _mm256_set1_ps(P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
    p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(),
                         _mm256_cmp_ps(x, _mm256_set1_ps(EXP_ZERO), _CMP_LT_OQ));
    return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY),
                            _mm256_cmp_ps(x, _mm256_set1_ps(EXP_INF), _CMP_GT_OQ));
}

HQ_AVX2 static void softmax_rows_avx2(float *s, int64_t rows, int64_t cols, int64_t lds,
                                      const float *bias, int64_t ldb, float scale) {
    const __m256 vs = _mm256_set1_ps(scale);
    for (int64_t i = 0; i < rows; i++) {
        float *row = s + i * lds;
        const float *brow = bias ? bias + i * ldb : NULL;
        int64_t j = 0;
        __m256 vmx = _mm256_set1_ps(-INFINITY);
        for (; j + 8 <= cols; j += 8) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(row + j), vs);
            if (brow) v = _mm256_add_ps(v, _mm256_loadu_ps(brow + j));
            _mm256_storeu_ps(row + j, v);
            vmx = _mm256_max_ps(v, vmx);          /* NaN in v: keeps vmx */
        }
        float m8[8];
        _mm256_storeu_ps(m8, vmx);
        float mx = softmax_pass1(row + j, brow ? brow + j : NULL, cols - j, scale);
        for (int l = 0; l < 8; l++) mx = m8[l] > mx ? m8[l] : mx;
        const __m256 vmax = _mm256_set1_ps(mx);
        __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
        for (j = 0; j + 8 <= cols; j += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), vmax));
            _mm256_storeu_ps(row + j, e);
            lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
        }
        double lane[LANES];
        _mm256_storeu_pd(lane, lo);
        _mm256_storeu_pd(lane + 4, hi);
        for (int l = 0; j < cols; j++, l++) {
            float e = expf_inline(row[j] - mx);
            row[j] = e;
            lane[l] += e;
        }
        double sum = 0.0;
        for (int l = 0; l < LANES; l++) sum += lane[l];
        const float inv = 1.0f / (float)sum;
        const __m256 vinv = _mm256_set1_ps(inv);
        for (j = 0; j + 8 <= cols; j += 8)
            _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), vinv));
        for (; j < cols; j++) row[j] *= inv;
    }
}

HQ_AVX2 static void swiglu_fwd_avx2(const float *g, const float *u, int64_t i0, int64_t i1,
                                    float *h) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8) {
        __m256 vg = _mm256_loadu_ps(g + i);
        __m256 e = exp8(_mm256_xor_ps(vg, neg));
        __m256 silu = _mm256_div_ps(vg, _mm256_add_ps(e, one));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
    }
    swiglu_fwd_portable(g, u, i, i1, h);
}

HQ_AVX2 static void swiglu_bwd_avx2(const float *dh, const float *g, const float *u,
                                    int64_t i0, int64_t i1, float *dg, float *du) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8) {
        __m256 vg = _mm256_loadu_ps(g + i), vdh = _mm256_loadu_ps(dh + i);
        __m256 sig = _mm256_div_ps(one, _mm256_add_ps(exp8(_mm256_xor_ps(vg, neg)), one));
        __m256 silu = _mm256_mul_ps(vg, sig);
        _mm256_storeu_ps(du + i, _mm256_mul_ps(vdh, silu));
        __m256 d = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(one, sig), silu), sig);
        _mm256_storeu_ps(dg + i, _mm256_mul_ps(_mm256_mul_ps(d, vdh), _mm256_loadu_ps(u + i)));
    }
    swiglu_bwd_portable(dh, g, u, i, i1, dg, du);
}

static int use_avx2(void) { return hq_get_isa() != HQ_ISA_SCALAR && hq_cpu_has_avx2(); }
#else
static int use_avx2(void) { return 0; }
#define softmax_rows_avx2 softmax_rows_portable
#define swiglu_fwd_avx2 swiglu_fwd_portable
#define swiglu_bwd_avx2 swiglu_bwd_portable
#endif

void hq_softmax_rows_f32(float *s, int64_t rows, int64_t cols, int64_t lds,
                         const float *bias, int64_t ldb, float scale) {
    if (use_avx2())
        softmax_rows_avx2(s, rows, cols, lds, bias, ldb, scale);
    else
        softmax_rows_portable(s, rows, cols, lds, bias, ldb, scale);
}

#define SWIGLU_BLOCK 16384 /* elements per OpenMP iteration: fixed, cache-sized */

void hq_swiglu_forward_f32(const float *g, const float *u, int64_t n, float *h) {
    const int avx2 = use_avx2();
    const int64_t nblk = (n + SWIGLU_BLOCK - 1) / SWIGLU_BLOCK;
    int nt = ops_threads((size_t)n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t b = 0; b < nblk; b++) {
        int64_t i0 = b * SWIGLU_BLOCK, i1 = i0 + SWIGLU_BLOCK < n ? i0 + SWIGLU_BLOCK : n;
        if (avx2)
            swiglu_fwd_avx2(g, u, i0, i1, h);
        else
            swiglu_fwd_portable(g, u, i0, i1, h);
    }
}

void hq_swiglu_backward_f32(const float *dh, const float *g, const float *u, int64_t n,
                            float *dg, float *du) {
    const int avx2 = use_avx2();
    const int64_t nblk = (n + SWIGLU_BLOCK - 1) / SWIGLU_BLOCK;
    int nt = ops_threads((size_t)n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t b = 0; b < nblk; b++) {
        int64_t i0 = b * SWIGLU_BLOCK, i1 = i0 + SWIGLU_BLOCK < n ? i0 + SWIGLU_BLOCK : n;
        if (avx2)
            swiglu_bwd_avx2(dh, g, u, i0, i1, dg, du);
        else
            swiglu_bwd_portable(dh, g, u, i0, i1, dg, du);
    }
}
