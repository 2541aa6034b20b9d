/* HiF8 (HiFloat8): the format, with no Python in it.
 *
 * Bit layout, rounding and overflow rules: shared/docs/hif8-format.md.
 *   S | dot | exponent (D bits, sign-magnitude, implicit leading 1) | mantissa
 *   0x00 zero, 0x80 NaN, 0x6F/0xEF +-Inf, 0x6E/0xEE +-32768 (largest finite).
 *
 * This header is the scalar reference; hif8_vec.h holds the same algorithm written
 * with GCC vector extensions, which hif8_avx2.c and hif8_avx512.c compile for their
 * instruction sets. All paths are bit-identical by construction (same integer
 * rounding on the float bits, same counter-based random bits).
 */
#ifndef HIF8QAT_HIF8_H
#define HIF8QAT_HIF8_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HIF8_CODE_ZERO 0x00u
#define HIF8_CODE_NAN 0x80u
#define HIF8_CODE_POS_INF 0x6Fu
#define HIF8_CODE_POS_MAX 0x6Eu
#define HIF8_MAX 32768.0          /* 2^15 */
#define HIF8_OVERFLOW 40960.0     /* 1.25 * 2^15: at or above, a value overflows */
#define HIF8_MIN_POSITIVE 2.384185791015625e-07 /* 2^-22 */

enum { HIF8_ROUND_NEAREST = 0, HIF8_ROUND_STOCHASTIC = 1 };

/* Decoded value of every code (NaN at 0x80, +-inf at 0x6F/0xEF). Filled once by
 * hif8_init(); safe to read from any thread afterwards. */
extern float hif8_decode_table_f32[256];
void hif8_init(void);

/* Scalar codec. `rand16` is used only by the stochastic variants: 16 random bits. */
uint8_t hif8_encode_f32(float x, int saturate);
uint8_t hif8_encode_f64(double x, int saturate);
uint8_t hif8_encode_sr_f32(float x, uint32_t rand16, int saturate);
uint8_t hif8_encode_sr_f64(double x, uint32_t rand16, int saturate);
static inline float hif8_decode(uint8_t c) { return hif8_decode_table_f32[c]; }

/* Counter-based random bits for stochastic rounding: 16 bits keyed by (seed, index),
 * index = the element's position in C order. Same on every path and thread count. */
uint32_t hif8_seed_key(uint64_t seed, uint32_t index_hi);
static inline uint32_t hif8_rand16(uint32_t key, uint32_t index_lo) {
    uint32_t h = index_lo * 0x9E3779B1u + key;
    h ^= h >> 16; h *= 0x85EBCA6Bu;
    h ^= h >> 13; h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h >> 16;
}

/* ---- Bulk casts (what the Python layer, the scaler and the GEMM call) ---- */

/* Cast statistics of one call. amax: max |x| over the *unscaled* finite elements. */
typedef struct {
    int64_t n;            /* elements seen */
    int64_t clipped;      /* the clamp (or saturation, without clamp) changed the code */
    int64_t zero_flushed; /* finite non-zero input that encoded as 0x00 */
    int64_t nonfinite;    /* NaN or +-Inf inputs */
    double amax;
} hif8_stats;

typedef struct {
    double scale;       /* y = x * scale (rounded to float32 first for float32 input) */
    double scale_inv;   /* x_hat = decode(q) * scale_inv */
    double clip;        /* clamp y to +-clip before encoding; 0 or inf = no clamp */
    int rounding;       /* HIF8_ROUND_NEAREST or HIF8_ROUND_STOCHASTIC */
    int saturate;       /* overflow to +-32768 (1) or +-Inf (0) */
    uint64_t seed;      /* stochastic rounding key */
    uint64_t index0;    /* C-order index of x[0] within the whole tensor (for the RNG) */
} hif8_cast_params;

/* |y| at or above this encodes differently from the clamp value: the "clipped"
 * threshold. For clip 15 it is 15.5; without a clamp it is 40960 (saturation). */
double hif8_clip_threshold(double clip);

/* One fused pass: y = x*scale, clamp, encode, and optionally decode*scale_inv, the STE
 * mask (1 where the gradient passes = not clipped) and the statistics (stats may be
 * NULL). Any of codes / values / mask may be NULL. Threads and ISA per cpu.h; the
 * result never depends on either. */
void hif8_cast_f32(const float *x, size_t n, const hif8_cast_params *p,
                   uint8_t *codes, float *values, uint8_t *mask, hif8_stats *stats);
void hif8_cast_f64(const double *x, size_t n, const hif8_cast_params *p,
                   uint8_t *codes, double *values, uint8_t *mask, hif8_stats *stats);

/* out[i] = table[c[i]] * scale_inv */
void hif8_decode_f32(const uint8_t *c, size_t n, float scale_inv, float *out);
void hif8_decode_f64(const uint8_t *c, size_t n, double scale_inv, double *out);

/* max |x| over finite elements, and the number of non-finite ones (may be NULL). */
double hif8_amax_f32(const float *x, size_t n, int64_t *nonfinite);
double hif8_amax_f64(const double *x, size_t n, int64_t *nonfinite);

#ifdef __cplusplus
}
#endif
#endif
