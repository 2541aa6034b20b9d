/* The HiF8 codec: decode table, scalar encoders (the reference every fast path must
 * match bit for bit), and the bulk cast drivers (chunking, OpenMP, ISA dispatch). */
#include "hif8_internal.h"
#include "cpu.h"

#include <math.h>
#include <string.h>

float hif8_decode_table_f32[256];

/* Decoded value of a code, straight from the spec's bit layout (hif8-format.md). */
static double decode_formula(unsigned c) {
    if (c == 0x00) return 0.0;
    if (c == 0x80) return NAN;
    double sign = (c & 0x80) ? -1.0 : 1.0;
    unsigned b = c & 0x7f;
    if (b == 0x6f) return sign * INFINITY;
    int E, mw;
    unsigned m;
    if (b >= 0x60) {        /* dot 11: 4 exponent bits, 1 mantissa bit */
        unsigned eb = (b >> 1) & 0xf;
        E = (int)(8 | (eb & 7)) * ((eb & 8) ? -1 : 1), m = b & 1, mw = 1;
    } else if (b >= 0x40) { /* dot 10: 3 exponent bits, 2 mantissa bits */
        unsigned eb = (b >> 2) & 7;
        E = (int)(4 | (eb & 3)) * ((eb & 4) ? -1 : 1), m = b & 3, mw = 2;
    } else if (b >= 0x20) { /* dot 01: 2 exponent bits, 3 mantissa bits */
        unsigned eb = (b >> 3) & 3;
        E = (int)(2 | (eb & 1)) * ((eb & 2) ? -1 : 1), m = b & 7, mw = 3;
    } else if (b >= 0x10) { /* dot 001: 1 exponent bit */
        E = ((b >> 3) & 1) ? -1 : 1, m = b & 7, mw = 3;
    } else if (b >= 0x08) { /* dot 0001: E = 0 */
        E = 0, m = b & 7, mw = 3;
    } else {                /* dot 0000: denormal 2^(M-23) */
        return sign * ldexp(1.0, (int)b - 23);
    }
    return sign * ldexp(1.0 + (double)m / (double)(1 << mw), E);
}

void hif8_init(void) {
    for (unsigned c = 0; c < 256; c++) hif8_decode_table_f32[c] = (float)decode_formula(c);
}

uint32_t hif8_seed_key(uint64_t seed, uint32_t index_hi) {
    /* splitmix64 finaliser over (seed, high index word): a fresh key per 2^32 block */
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * ((uint64_t)index_hi + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (uint32_t)(z ^ (z >> 32));
}

/* ---- scalar encoders ---- */

static inline uint8_t encode_f32(float x, int stochastic, uint32_t rand16, int saturate) {
    uint32_t b;
    memcpy(&b, &x, 4);
    uint32_t ab = b & 0x7fffffffu, neg = b >> 31;
    if (ab > 0x7f800000u) return HIF8_CODE_NAN;
    if (ab >= 0x47200000u) /* |x| >= 40960, Inf included */
        return (uint8_t)((saturate ? HIF8_CODE_POS_MAX : HIF8_CODE_POS_INF) | (neg << 7));
    uint8_t code;
    hif8_round_mag_f32(ab, stochastic, rand16, saturate, &code);
    return code ? (uint8_t)(code | (neg << 7)) : 0; /* no -0: zero is always 0x00 */
}

uint8_t hif8_encode_f32(float x, int saturate) { return encode_f32(x, 0, 0, saturate); }
uint8_t hif8_encode_sr_f32(float x, uint32_t rand16, int saturate) {
    return encode_f32(x, 1, rand16 & 0xffffu, saturate);
}

/* float64: the same algorithm on the 52-bit mantissa, so a double is rounded from its
 * exact value and never passes through float32. */
static inline uint64_t round_mag_f64(uint64_t ab, int stochastic, uint32_t rand16, uint8_t *code_out) {
    const uint64_t two_m22 = (uint64_t)(1023 - 22) << 52, two_m23 = (uint64_t)(1023 - 23) << 52;
    if (ab < two_m22) {
        int up;
        if (stochastic) {
            double a;
            memcpy(&a, &ab, 8);
            up = (double)rand16 < a * 274877906944.0;
        } else {
            up = ab >= two_m23;
        }
        *code_out = up ? 1 : 0;
        return up ? two_m22 : 0;
    }
    int e = (int)(ab >> 52) - 1023;
    int ae = e < 0 ? -e : e;
    int mw = e < -15 ? 0 : 3 - (ae >= 4) - (ae >= 8);
    int sh = 52 - mw;
    uint64_t add = stochastic ? (uint64_t)rand16 << (sh - 16) : 1ull << (sh - 1);
    uint64_t rb = (ab + add) & ~((1ull << sh) - 1ull);
    const uint64_t v49152 = 0x40E8000000000000ull, v32768 = 0x40E0000000000000ull;
    if (rb >= v49152) rb = v32768;
    int E = (int)(rb >> 52) - 1023;
    uint32_t m = (uint32_t)((rb & 0xfffffffffffffull) >> sh);
    *code_out = (uint8_t)hif8_code_from_parts(E, m);
    return rb;
}

static inline uint8_t encode_f64(double x, int stochastic, uint32_t rand16, int saturate) {
    uint64_t b;
    memcpy(&b, &x, 8);
    uint64_t ab = b & 0x7fffffffffffffffull, neg = b >> 63;
    if (ab > 0x7ff0000000000000ull) return HIF8_CODE_NAN;
    if (ab >= 0x40E4000000000000ull) /* 40960 */
        return (uint8_t)((saturate ? HIF8_CODE_POS_MAX : HIF8_CODE_POS_INF) | (neg << 7));
    uint8_t code;
    round_mag_f64(ab, stochastic, rand16, &code);
    return code ? (uint8_t)(code | (neg << 7)) : 0;
}

uint8_t hif8_encode_f64(double x, int saturate) { return encode_f64(x, 0, 0, saturate); }
uint8_t hif8_encode_sr_f64(double x, uint32_t rand16, int saturate) {
    return encode_f64(x, 1, rand16 & 0xffffu, saturate);
}

double hif8_clip_threshold(double clip) {
    if (!(clip > 0.0) || !isfinite(clip) || clip >= HIF8_OVERFLOW) return HIF8_OVERFLOW;
    double r = hif8_decode_table_f32[hif8_encode_f64(clip, 1)];
    if (r >= HIF8_MAX) return HIF8_OVERFLOW;
    double next = HIF8_MAX; /* the smallest finite HiF8 value above r */
    for (unsigned c = 1; c < 0x80; c++) {
        double v = hif8_decode_table_f32[c];
        if (v > r && v < next) next = v;
    }
    /* r = 0 happens only for clip < 2^-23: then the grid starts at 2^-22 */
    return 0.5 * (r + next);
}

/* ---- the scalar chunk kernel (reference path) ---- */

void hif8_cast_chunk_f32_scalar(const float *x, size_t n, const hif8_chunk_params *p,
                                uint64_t index0, uint8_t *codes, float *values,
                                uint8_t *mask, hif8_stats *st) {
    uint32_t key = hif8_seed_key(p->seed, (uint32_t)(index0 >> 32));
    uint32_t clip_bits;
    memcpy(&clip_bits, &p->clip, 4);
    int64_t clipped = 0, flushed = 0, nonfinite = 0;
    uint32_t amax_bits = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t xb;
        memcpy(&xb, &x[i], 4);
        uint32_t axb = xb & 0x7fffffffu;
        if (axb >= 0x7f800000u) nonfinite++;
        else if (axb > amax_bits) amax_bits = axb;
        float y = x[i] * p->scale;
        uint32_t yb;
        memcpy(&yb, &y, 4);
        uint32_t ab = yb & 0x7fffffffu, neg = yb >> 31;
        float ay;
        memcpy(&ay, &ab, 4);
        int is_clipped = ay >= p->threshold; /* false for NaN */
        clipped += is_clipped;
        if (mask) mask[i] = (uint8_t)!is_clipped;
        if (ab > clip_bits && ab <= 0x7f800000u) ab = clip_bits; /* clamp, NaN untouched */
        uint8_t code;
        uint32_t rb;
        if (ab > 0x7f800000u) {
            code = HIF8_CODE_NAN, rb = ab;
        } else if (ab >= 0x47200000u) {
            code = p->saturate ? HIF8_CODE_POS_MAX : HIF8_CODE_POS_INF;
            rb = p->saturate ? 0x47000000u : 0x7f800000u;
        } else {
            uint32_t r16 = p->stochastic ? hif8_rand16(key, (uint32_t)(index0 + i)) : 0;
            rb = hif8_round_mag_f32(ab, p->stochastic, r16, p->saturate, &code);
            if (code == 0) {
                neg = 0;
                flushed += axb != 0 && axb < 0x7f800000u;
            }
        }
        if (code != HIF8_CODE_NAN) code |= (uint8_t)(neg << 7);
        if (codes) codes[i] = code;
        if (values) {
            uint32_t vb = rb | (neg << 31);
            float v;
            memcpy(&v, &vb, 4);
            values[i] = v * p->scale_inv;
        }
    }
    float amax;
    memcpy(&amax, &amax_bits, 4);
    st->n += (int64_t)n;
    st->clipped += clipped;
    st->zero_flushed += flushed;
    st->nonfinite += nonfinite;
    if (amax > st->amax) st->amax = amax;
}

/* ---- bulk drivers ---- */

#define HIF8_CHUNK ((size_t)1 << 15)
/* Elements from which the cast writes its float output with non-temporal stores: 4M
 * floats = 16 MB out (plus 16 MB in) no longer fit the caches of a typical socket, so
 * a normal store would first read every destination line for nothing. */
size_t hif8_stream_min = (size_t)1 << 22;

static hif8_chunk_fn chunk_kernel(void) {
    switch (hq_get_isa()) {
#if defined(__x86_64__) || defined(__i386__)
    case HQ_ISA_AVX512: return hif8_cast_chunk_f32_avx512;
    case HQ_ISA_AVX2: return hif8_cast_chunk_f32_avx2;
#endif
    default: return hif8_cast_chunk_f32_scalar;
    }
}

static void merge_stats(hif8_stats *into, const hif8_stats *s) {
    into->n += s->n;
    into->clipped += s->clipped;
    into->zero_flushed += s->zero_flushed;
    into->nonfinite += s->nonfinite;
    if (s->amax > into->amax) into->amax = s->amax;
}

void hif8_cast_f32(const float *x, size_t n, const hif8_cast_params *p,
                   uint8_t *codes, float *values, uint8_t *mask, hif8_stats *stats) {
    hif8_chunk_params cp;
    cp.scale = (float)p->scale;
    cp.scale_inv = (float)p->scale_inv;
    cp.clip = (p->clip > 0.0 && isfinite(p->clip)) ? (float)p->clip : INFINITY;
    cp.threshold = (float)hif8_clip_threshold(isinf(cp.clip) ? 0.0 : (double)cp.clip);
    cp.stochastic = p->rounding == HIF8_ROUND_STOCHASTIC;
    cp.saturate = p->saturate;
    cp.stream = n >= hif8_stream_min;
    cp.want_stats = stats != NULL;
    cp.seed = p->seed;
    hif8_chunk_fn kern = chunk_kernel();
    hif8_stats total = {0, 0, 0, 0, 0.0};
    /* Chunks start at multiples of HIF8_CHUNK in the absolute index, so no chunk
     * straddles a 2^32 boundary (one RNG key per chunk). */
    size_t first = (size_t)(HIF8_CHUNK - (p->index0 % HIF8_CHUNK)) % HIF8_CHUNK;
    if (first > n) first = n;
    size_t nchunks = (n - first + HIF8_CHUNK - 1) / HIF8_CHUNK + (first > 0);
    int nt = hq_threads_for(n);
#pragma omp parallel num_threads(nt)
    {
        hif8_stats local = {0, 0, 0, 0, 0.0};
        /* dynamic: chunks go to whichever thread is free, so a thread the OS delays (a
         * busy machine) does not hold back the whole cast; the result and statistics
         * do not depend on which thread ran a chunk. */
#pragma omp for schedule(dynamic, 1)
        for (long long c = 0; c < (long long)nchunks; c++) {
            size_t s, len;
            if (first > 0) {
                s = c == 0 ? 0 : first + (size_t)(c - 1) * HIF8_CHUNK;
                len = c == 0 ? first : HIF8_CHUNK;
            } else {
                s = (size_t)c * HIF8_CHUNK;
                len = HIF8_CHUNK;
            }
            if (s + len > n) len = n - s;
            kern(x + s, len, &cp, p->index0 + s, codes ? codes + s : NULL,
                 values ? values + s : NULL, mask ? mask + s : NULL, &local);
        }
#pragma omp critical(hif8_stats_merge)
        merge_stats(&total, &local);
    }
    if (stats) merge_stats(stats, &total);
}

void hif8_cast_f64(const double *x, size_t n, const hif8_cast_params *p,
                   uint8_t *codes, double *values, uint8_t *mask, hif8_stats *stats) {
    const double scale = p->scale, scale_inv = p->scale_inv;
    const double clip = (p->clip > 0.0 && isfinite(p->clip)) ? p->clip : INFINITY;
    const double threshold = hif8_clip_threshold(isinf(clip) ? 0.0 : clip);
    const int stochastic = p->rounding == HIF8_ROUND_STOCHASTIC;
    int64_t clipped = 0, flushed = 0, nonfinite = 0;
    double amax = 0.0;
    int nt = hq_threads_for(n);
#pragma omp parallel for num_threads(nt) schedule(static) \
    reduction(+ : clipped, flushed, nonfinite) reduction(max : amax)
    for (long long ii = 0; ii < (long long)n; ii++) {
        size_t i = (size_t)ii;
        double ax = fabs(x[i]);
        if (!isfinite(x[i])) nonfinite++;
        else if (ax > amax) amax = ax;
        double y = x[i] * scale;
        int is_clipped = fabs(y) >= threshold;
        clipped += is_clipped;
        if (mask) mask[i] = (uint8_t)!is_clipped;
        if (y > clip) y = clip;
        else if (y < -clip) y = -clip;
        uint64_t idx = p->index0 + i;
        uint32_t r16 = stochastic ? hif8_rand16(hif8_seed_key(p->seed, (uint32_t)(idx >> 32)), (uint32_t)idx) : 0;
        uint8_t code = encode_f64(y, stochastic, r16, p->saturate);
        if (code == 0 && x[i] != 0.0 && isfinite(x[i])) flushed++;
        if (codes) codes[i] = code;
        if (values) values[i] = (double)hif8_decode_table_f32[code] * scale_inv;
    }
    if (stats) {
        hif8_stats s = {(int64_t)n, clipped, flushed, nonfinite, amax};
        merge_stats(stats, &s);
    }
}

void hif8_decode_f32(const uint8_t *c, size_t n, float scale_inv, float *out) {
    int nt = hq_threads_for(n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long long i = 0; i < (long long)n; i++) out[i] = hif8_decode_table_f32[c[i]] * scale_inv;
}

void hif8_decode_f64(const uint8_t *c, size_t n, double scale_inv, double *out) {
    int nt = hq_threads_for(n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long long i = 0; i < (long long)n; i++)
        out[i] = (double)hif8_decode_table_f32[c[i]] * scale_inv;
}

double hif8_amax_f32(const float *x, size_t n, int64_t *nonfinite) {
    hq_isa isa = hq_get_isa();
    size_t nchunks = (n + HIF8_CHUNK - 1) / HIF8_CHUNK;
    uint32_t amax_bits = 0;
    int64_t nf = 0;
    int nt = hq_threads_for(n);
    /* On the bits: |x| orders like an integer, which vectorises without fmaxf's NaN rules. */
#pragma omp parallel for num_threads(nt) schedule(static) reduction(max : amax_bits) reduction(+ : nf)
    for (long long c = 0; c < (long long)nchunks; c++) {
        size_t s = (size_t)c * HIF8_CHUNK, len = n - s < HIF8_CHUNK ? n - s : HIF8_CHUNK;
        uint32_t m = 0;
        int64_t k = 0;
#if defined(__x86_64__) || defined(__i386__)
        if (isa == HQ_ISA_AVX512) hif8_amax_chunk_f32_avx512(x + s, len, &m, &k);
        else if (isa == HQ_ISA_AVX2) hif8_amax_chunk_f32_avx2(x + s, len, &m, &k);
        else
#endif
        {
            (void)isa;
            for (size_t i = s; i < s + len; i++) {
                uint32_t b;
                memcpy(&b, &x[i], 4);
                b &= 0x7fffffffu;
                if (b >= 0x7f800000u) k++;
                else if (b > m) m = b;
            }
        }
        amax_bits = m > amax_bits ? m : amax_bits;
        nf += k;
    }
    if (nonfinite) *nonfinite = nf;
    float a;
    memcpy(&a, &amax_bits, 4);
    return a;
}

double hif8_amax_f64(const double *x, size_t n, int64_t *nonfinite) {
    double amax = 0.0;
    int64_t nf = 0;
    int nt = hq_threads_for(n);
#pragma omp parallel for num_threads(nt) schedule(static) reduction(max : amax) reduction(+ : nf)
    for (long long i = 0; i < (long long)n; i++) {
        double a = fabs(x[i]);
        if (isfinite(a)) amax = a > amax ? a : amax;
        else nf++;
    }
    if (nonfinite) *nonfinite = nf;
    return amax;
}
