/* Internal to the codec: the per-ISA chunk kernels that hif8.c dispatches to.
 * A chunk never straddles a multiple of 2^32 in the absolute element index, so one
 * random-bits key serves the whole chunk. */
#ifndef HIF8QAT_HIF8_INTERNAL_H
#define HIF8QAT_HIF8_INTERNAL_H
#include <string.h>
#include "hif8.h"

/* Casts of at least this many elements write their float output with non-temporal
 * stores (see hif8.c); the C tests lower it to cover that path on small arrays. */
extern size_t hif8_stream_min;

/* Everything a chunk kernel needs, prepared once per call. */
typedef struct {
    float scale, scale_inv;
    float clip;        /* clamp magnitude; +inf = no clamp */
    float threshold;   /* |y| >= threshold: the clamp/saturation changed the code */
    int stochastic;
    int saturate;
    int stream;        /* outputs far bigger than the caches: non-temporal stores */
    int want_stats;    /* 0: the caller passed no stats, a kernel may skip the counting */
    uint64_t seed;
} hif8_chunk_params;

typedef void (*hif8_chunk_fn)(const float *x, size_t n, const hif8_chunk_params *p,
                              uint64_t index0, uint8_t *codes, float *values,
                              uint8_t *mask, hif8_stats *st);

void hif8_cast_chunk_f32_scalar(const float *x, size_t n, const hif8_chunk_params *p,
                                uint64_t index0, uint8_t *codes, float *values,
                                uint8_t *mask, hif8_stats *st);
void hif8_cast_chunk_f32_avx2(const float *x, size_t n, const hif8_chunk_params *p,
                              uint64_t index0, uint8_t *codes, float *values,
                              uint8_t *mask, hif8_stats *st);
void hif8_cast_chunk_f32_avx512(const float *x, size_t n, const hif8_chunk_params *p,
                                uint64_t index0, uint8_t *codes, float *values,
                                uint8_t *mask, hif8_stats *st);

void hif8_amax_chunk_f32_avx2(const float *x, size_t n, uint32_t *amax_bits, int64_t *nonfinite);
void hif8_amax_chunk_f32_avx512(const float *x, size_t n, uint32_t *amax_bits, int64_t *nonfinite);

/* Scalar core shared by the reference path and the vector kernels' tails:
 * rounds |y| (float bits, finite, below the overflow threshold, clamp applied)
 * to a HiF8 magnitude; returns the rounded float bits and writes the positive code. */
static inline uint32_t hif8_round_mag_f32(uint32_t ab, int stochastic, uint32_t rand16,
                                          int saturate, uint8_t *code_out);
#include "hif8_core.h"
#endif
