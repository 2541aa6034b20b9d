/* The cast chunk kernel written once with GCC vector extensions; hif8_avx2.c and
 * hif8_avx512.c include it with VW lanes under their own `#pragma GCC target`.
 * It is the scalar core of hif8_core.h lane by lane (same integer rounding, same
 * random bits), so every path gives the same codes, values, masks and statistics.
 * Define VW and HIF8_VEC_NAME before including. */
#include <string.h>
#include "hif8_internal.h"

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));
typedef uint8_t vb __attribute__((vector_size(VW)));

/* Store the low byte of each lane (values 0..255). An ISA file may define
 * HIF8_STORE_U8 with its pack instructions: gcc 12 scalarises the generic narrowing. */
#ifndef HIF8_STORE_U8
#define HIF8_STORE_U8(dst, v)                                  \
    do {                                                       \
        vb narrow_ = __builtin_convertvector((v), vb);         \
        memcpy((dst), &narrow_, sizeof narrow_);               \
    } while (0)
#endif

#define SEL(m, a, b) (((a) & (vu)(m)) | ((b) & ~(vu)(m))) /* m ? a : b, m lanes 0/-1 */
/* Signed lane min / max / abs and a lane select. An ISA file may map them to single
 * instructions (gcc 12 turns the generic select into three logic ops). */
#ifndef VMIN
#define VMIN(a, b) ((vi)SEL((a) < (b), (vu)(a), (vu)(b)))
#define VMAX(a, b) ((vi)SEL((a) > (b), (vu)(a), (vu)(b)))
#define VABS(a) (((a) ^ ((a) >> 31)) - ((a) >> 31))
#endif
#ifndef VSEL
#define VSEL(m, a, b) ((vi)SEL((m), (vu)(a), (vu)(b))) /* m ? a : b on vi lanes */
#endif

/* Non-temporal store of one vector to a vector-aligned address, and the fence that
 * orders such stores before the chunk is reported done. An ISA file defines them with
 * its stream instruction; the generic fallback is a plain store. */
#ifndef HIF8_STREAM_F32
#define HIF8_STREAM_F32(dst, v) memcpy((dst), &(v), sizeof(v))
#define HIF8_SFENCE() ((void)0)
#endif

/* The body, specialised by the always-inlined constant flags below so that a
 * fake-quant call never computes codes and a nearest cast never hashes indices. */
static inline __attribute__((always_inline)) void
vec_body(const float *x, size_t n, const hif8_chunk_params *p, uint64_t index0, uint8_t *codes,
         float *values, uint8_t *mask, hif8_stats *st, const int want_codes, const int want_values,
         const int want_mask, const int stochastic) {
    const uint32_t key = hif8_seed_key(p->seed, (uint32_t)(index0 >> 32));
    uint32_t clip_bits;
    memcpy(&clip_bits, &p->clip, 4);
    vi lane;
    for (int l = 0; l < VW; l++) lane[l] = l;
    vi n_clipped = {0}, n_flushed = {0}, n_nonfinite = {0};
    vu amax_v = {0};
    size_t i = 0;
    for (; i + VW <= n; i += VW) {
        vf xv;
        memcpy(&xv, x + i, sizeof xv);
        vu xb = (vu)xv, axb = xb & 0x7fffffffu;
        vi x_nonfinite = (vi)axb >= 0x7f800000; /* magnitudes compare as signed: no sign-flip emulation */
        n_nonfinite -= x_nonfinite;
        vu finite_ax = SEL(x_nonfinite, (vu){0}, axb);
        amax_v = SEL((vi)finite_ax > (vi)amax_v, finite_ax, amax_v);

        vf y = xv * p->scale;
        vu yb = (vu)y, ab = yb & 0x7fffffffu, neg = yb >> 31;
        vi is_nan = (vi)ab > 0x7f800000;
        vi is_clipped = (vf)ab >= p->threshold; /* false for NaN */
        n_clipped -= is_clipped;
        ab = SEL(((vi)ab > (int32_t)clip_bits) & ~is_nan, (vu){0} + clip_bits, ab);
        vi overflow = ((vi)ab >= 0x47200000) & ~is_nan;

        /* the rounding core of hif8_core.h */
        vi e = (vi)(ab >> 23) - 127;
        vi ae = (e ^ (e >> 31)) - (e >> 31);
        vi mw = 3 + (ae >= 4) + (ae >= 8); /* comparisons are -1 where true */
        mw = (vi)SEL(e < -15, (vu){0}, (vu)mw);
        vu sh = (vu)(23 - mw);
        vu add, small;
        if (stochastic) {
            vu idx = (vu)lane + (uint32_t)(index0 + i);
            vu h = idx * 0x9E3779B1u + key;
            h ^= h >> 16; h *= 0x85EBCA6Bu;
            h ^= h >> 13; h *= 0xC2B2AE35u;
            h ^= h >> 16;
            vu r16 = h >> 16;
            add = r16 << (sh - 16);
            vi up = __builtin_convertvector(r16, vf) < (vf)ab * 274877906944.0f;
            small = SEL(up, (vu){0} + 0x34800000u, (vu){0});
        } else {
            add = ((vu){0} + 1u) << (sh - 1);
            small = SEL((vi)ab >= 0x34000000, (vu){0} + 0x34800000u, (vu){0});
        }
        vu rb = (ab + add) & ~((((vu){0} + 1u) << sh) - 1u);
        rb = SEL((vi)rb >= 0x47400000, (vu){0} + 0x47000000u, rb);
        vi is_small = (vi)ab < 0x34800000;
        rb = SEL(is_small, small, rb);

        /* positive code from the rounded magnitude */
        vi E = (vi)(rb >> 23) - 127;
        vu m = (rb & 0x7fffffu) >> sh;
        vi aE = (E ^ (E >> 31)) - (E >> 31);
        vu sE = (vu)(E < 0) & 1u, uaE = (vu)aE;
        vu b4 = (0x60u | sE << 4 | (uaE - 8) << 1);
        vu b3 = (0x40u | sE << 4 | (uaE - 4) << 2);
        vu b2 = (0x20u | sE << 4 | (uaE - 2) << 3);
        vu b1 = (0x10u | sE << 3);
        vu base = SEL(aE >= 2, b2, SEL(aE == 1, b1, (vu){0} + 0x08u));
        base = SEL(aE >= 4, b3, base);
        base = SEL(aE >= 8, b4, base);
        base = SEL(E < -15, (vu)(E + 23), base);
        vu code = base + m;
        vi is_zero = rb == 0u;
        code = SEL(is_zero, (vu){0}, code);
        n_flushed -= is_zero & ~is_nan & ~overflow & (axb != 0u) & ~x_nonfinite;

        /* overflow and NaN */
        vu of_code = (vu){0} + (p->saturate ? 0x6Eu : 0x6Fu);
        vu of_rb = (vu){0} + (p->saturate ? 0x47000000u : 0x7f800000u);
        code = SEL(overflow, of_code, code);
        rb = SEL(overflow, of_rb, rb);
        neg = SEL(is_zero & ~overflow & ~is_nan, (vu){0}, neg);
        code |= neg << 7;
        code = SEL(is_nan, (vu){0} + 0x80u, code);
        rb = SEL(is_nan, ab, rb);

        if (want_codes) {
            HIF8_STORE_U8(codes + i, code);
        }
        if (want_mask) {
            HIF8_STORE_U8(mask + i, (vu)(~is_clipped) & 1u);
        }
        if (want_values) {
            vf v = (vf)(rb | neg << 31) * p->scale_inv;
            memcpy(values + i, &v, sizeof v);
        }
    }
    int64_t c = 0, f = 0, nf = 0;
    uint32_t amax_bits = 0;
    for (int l = 0; l < VW; l++) {
        c += n_clipped[l];
        f += n_flushed[l];
        nf += n_nonfinite[l];
        if (amax_v[l] > amax_bits) amax_bits = amax_v[l];
    }
    hif8_stats tail = {0, 0, 0, 0, 0.0};
    if (i < n)
        hif8_cast_chunk_f32_scalar(x + i, n - i, p, index0 + i, codes ? codes + i : NULL,
                                   values ? values + i : NULL, mask ? mask + i : NULL, &tail);
    float amax;
    memcpy(&amax, &amax_bits, 4);
    st->n += (int64_t)i + tail.n;
    st->clipped += c + tail.clipped;
    st->zero_flushed += f + tail.zero_flushed;
    st->nonfinite += nf + tail.nonfinite;
    if (amax > st->amax) st->amax = amax;
    if (tail.amax > st->amax) st->amax = tail.amax;
}

/* Fake quantization only (values out, saturating): the hot path of QAT. Same results as
 * vec_body bit for bit, with fewer operations, because values need no code: clamp |y|
 * to min(clip, 32768) as integers (a saturated value is 32768 either way, and so is a
 * stochastic round-up from [32768, 40960); NaN lanes are restored from y at the end),
 * then round with one integer add and mask chosen by a table permute over |E|/4 (|E|
 * 0-3: 3 mantissa bits, 4-7: 2, 8-15: 1, 16-23: 0 = the denormal binades).
 * Nearest: the half-ulp is added; [2^-23, 1.5*2^-23) is lifted to 1.5*2^-23 so that
 * binade rounds up to 2^-22 as the spec says, and below 2^-23 is zero. Stochastic: the
 * add is the element's 16 random bits shifted under the kept mantissa, and below 2^-22
 * it is 2^-22 with probability |y| / 2^-22, as in hif8_core.h.
 * `stream`: write values with non-temporal stores (outputs far bigger than the caches),
 * which saves the read-for-ownership of every destination line. */
static inline __attribute__((always_inline)) void
vec_fake_quant(const float *x, size_t n, const hif8_chunk_params *p, uint64_t index0, float *values,
               hif8_stats *st, const int stochastic, const int stream, const int want_stats) {
    const float scale = p->scale, scale_inv = p->scale_inv, threshold = p->threshold;
    const uint32_t key = stochastic ? hif8_seed_key(p->seed, (uint32_t)(index0 >> 32)) : 0;
    uint32_t clip_bits;
    memcpy(&clip_bits, &p->clip, 4);
    const int32_t cmax = clip_bits < 0x47000000u ? (int32_t)clip_bits : 0x47000000; /* 32768 */
    vi add_tab, mask_tab, lane;
    for (int l = 0; l < VW; l++) {
        int g = l < 5 ? l : 5; /* |E| >> 2 = 0, 1, 2-3, 4-5 -> 20, 21, 22, 23 dropped bits */
        int sh = 20 + (g >= 1) + (g >= 2) + (g >= 4);
        add_tab[l] = stochastic ? sh - 16 : (int32_t)(1u << (sh - 1)); /* stochastic: a shift */
        mask_tab[l] = (int32_t)(~0u << sh);
        lane[l] = l;
    }
    vi n_clipped = {0}, n_kept = {0}, n_nonfinite = {0}, amax_v = {0};
    hif8_stats head = {0, 0, 0, 0, 0.0}, tail = {0, 0, 0, 0, 0.0};
    size_t i = 0;
    if (stream) { /* scalar head up to a vector-aligned destination */
        i = (size_t)(-(uintptr_t)values / 4) % VW;
        if (i > n) i = n;
        if (i) hif8_cast_chunk_f32_scalar(x, i, p, index0, NULL, values, NULL, &head);
    }
    const size_t i0 = i;
    for (; i + VW <= n; i += VW) {
        vi xb;
        memcpy(&xb, x + i, sizeof xb);
        vi axb = xb & 0x7fffffff;
        vi x_nonfinite = axb >= 0x7f800000;
        n_nonfinite -= x_nonfinite;
        vi finite_ax = axb & ~x_nonfinite;
        amax_v = VMAX(finite_ax, amax_v);

        vf y = (vf)xb * scale;
        vi yb = (vi)y, ab = yb & 0x7fffffff;
        vi is_nan = ab > 0x7f800000;
        n_clipped -= (vi)((vf)ab >= threshold); /* false for NaN */
        vi ac = VMIN(ab, (vi){0} + cmax);          /* NaN lanes too: replaced at the end */
        vi al = VMAX(ac, (vi){0} + 0x34400000);    /* |E| <= 23 below */
        vi e = (al >> 23) - 127;
        vi g = VABS(e) >> 2;                       /* |E| / 4 */
        vi rb, nonzero;
        if (stochastic) {
            vu h = ((vu)lane + (uint32_t)(index0 + i)) * 0x9E3779B1u + key; /* hif8_rand16 */
            h ^= h >> 16; h *= 0x85EBCA6Bu;
            h ^= h >> 13; h *= 0xC2B2AE35u;
            h ^= h >> 16;
            vi r16 = (vi)(h >> 16);
            rb = (al + (r16 << __builtin_shuffle(add_tab, g))) & __builtin_shuffle(mask_tab, g);
            vi up = __builtin_convertvector(r16, vf) < (vf)ac * 274877906944.0f; /* 2^38 */
            rb = VSEL(ac < 0x34800000, up & 0x34800000, rb);
            nonzero = ~(rb == 0);
        } else {
            rb = (al + __builtin_shuffle(add_tab, g)) & __builtin_shuffle(mask_tab, g);
            nonzero = ac > 0x33ffffff;              /* 2^-23 (the tie with 0) and up */
        }
        n_kept -= nonzero | (finite_ax == 0);      /* not a flush: non-zero, or x is 0/Inf/NaN */
        rb = (rb | (yb & (int32_t)0x80000000)) & nonzero; /* no -0 */
        rb = VSEL(is_nan, yb, rb);                         /* NaN: y, payload and all */
        vf v = (vf)rb * scale_inv;
        if (stream) {
            HIF8_STREAM_F32(values + i, v);
        } else {
            memcpy(values + i, &v, sizeof v);
        }
    }
    if (stream) HIF8_SFENCE();
    if (i < n) hif8_cast_chunk_f32_scalar(x + i, n - i, p, index0 + i, NULL, values + i, NULL, &tail);
    if (!want_stats) return; /* and the compiler drops the counting from the loop */
    int64_t c = 0, kept = 0, nf = 0;
    uint32_t amax_bits = 0;
    for (int l = 0; l < VW; l++) {
        c += n_clipped[l];
        kept += n_kept[l];
        nf += n_nonfinite[l];
        if ((uint32_t)amax_v[l] > amax_bits) amax_bits = (uint32_t)amax_v[l];
    }
    float amax;
    memcpy(&amax, &amax_bits, 4);
    st->n += (int64_t)n;
    st->clipped += c + head.clipped + tail.clipped;
    st->zero_flushed += (int64_t)(i - i0) - kept + head.zero_flushed + tail.zero_flushed;
    st->nonfinite += nf + head.nonfinite + tail.nonfinite;
    if (amax > st->amax) st->amax = amax;
    if (head.amax > st->amax) st->amax = head.amax;
    if (tail.amax > st->amax) st->amax = tail.amax;
}

#define HIF8_VEC_CASE(c, v, m, s)                                                          \
    case (c) | (v) << 1 | (m) << 2 | (s) << 3:                                            \
        vec_body(x, n, p, index0, codes, values, mask, st, c, v, m, s);                  \
        return;

void HIF8_VEC_NAME(const float *x, size_t n, const hif8_chunk_params *p, uint64_t index0,
                   uint8_t *codes, float *values, uint8_t *mask, hif8_stats *st) {
    int sel = (codes != NULL) | (values != NULL) << 1 | (mask != NULL) << 2 | (p->stochastic != 0) << 3;
    if ((sel & 7) == 2 && p->saturate) { /* fake quantization: values only */
        switch ((sel >> 3) | p->stream << 1 | p->want_stats << 2) {
        case 0: vec_fake_quant(x, n, p, index0, values, st, 0, 0, 0); return;
        case 1: vec_fake_quant(x, n, p, index0, values, st, 1, 0, 0); return;
        case 2: vec_fake_quant(x, n, p, index0, values, st, 0, 1, 0); return;
        case 3: vec_fake_quant(x, n, p, index0, values, st, 1, 1, 0); return;
        case 4: vec_fake_quant(x, n, p, index0, values, st, 0, 0, 1); return;
        case 5: vec_fake_quant(x, n, p, index0, values, st, 1, 0, 1); return;
        case 6: vec_fake_quant(x, n, p, index0, values, st, 0, 1, 1); return;
        default: vec_fake_quant(x, n, p, index0, values, st, 1, 1, 1); return;
        }
    }
    switch (sel) {
        HIF8_VEC_CASE(0, 0, 0, 0) HIF8_VEC_CASE(1, 0, 0, 0) HIF8_VEC_CASE(0, 1, 0, 0) HIF8_VEC_CASE(1, 1, 0, 0)
        HIF8_VEC_CASE(0, 0, 1, 0) HIF8_VEC_CASE(1, 0, 1, 0) HIF8_VEC_CASE(0, 1, 1, 0) HIF8_VEC_CASE(1, 1, 1, 0)
        HIF8_VEC_CASE(0, 0, 0, 1) HIF8_VEC_CASE(1, 0, 0, 1) HIF8_VEC_CASE(0, 1, 0, 1) HIF8_VEC_CASE(1, 1, 0, 1)
        HIF8_VEC_CASE(0, 0, 1, 1) HIF8_VEC_CASE(1, 0, 1, 1) HIF8_VEC_CASE(0, 1, 1, 1) HIF8_VEC_CASE(1, 1, 1, 1)
    }
}

/* max |x| over finite elements (as float bits) and the count of non-finite ones */
void HIF8_AMAX_NAME(const float *x, size_t n, uint32_t *amax_bits, int64_t *nonfinite) {
    vi best = {0}, nf = {0};
    size_t i = 0;
    for (; i + VW <= n; i += VW) {
        vi b;
        memcpy(&b, x + i, sizeof b);
        b &= 0x7fffffff;
        vi bad = b >= 0x7f800000;
        nf -= bad;
        b &= ~bad;
        best = (vi)SEL(b > best, (vu)b, (vu)best);
    }
    uint32_t m = 0;
    int64_t c = 0;
    for (int l = 0; l < VW; l++) {
        if ((uint32_t)best[l] > m) m = (uint32_t)best[l];
        c += nf[l];
    }
    for (; i < n; i++) {
        uint32_t b;
        memcpy(&b, x + i, 4);
        b &= 0x7fffffffu;
        if (b >= 0x7f800000u) c++;
        else if (b > m) m = b;
    }
    *amax_bits = m;
    *nonfinite = c;
}
