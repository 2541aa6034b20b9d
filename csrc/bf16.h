/* bfloat16 rounding of float32 values: round to nearest, ties to even, on the bits.
 * NaN stays a quiet NaN, +-Inf stays, values that round past the bf16 range become
 * +-Inf, float32 subnormals are rounded like any other value (never flushed). */
#ifndef HIF8QAT_BF16_H
#define HIF8QAT_BF16_H
#include <stdint.h>
#include <string.h>

static inline uint16_t bf16_bits_from_f32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float f32_from_bf16_bits(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline float round_bf16_f32(float f) { return f32_from_bf16_bits(bf16_bits_from_f32(f)); }

void bf16_round_array(const float *x, size_t n, float *out);
#endif
