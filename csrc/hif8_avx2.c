/* AVX2 instance of the cast kernel (hif8_vec.h), 8 lanes. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <stdint.h>
#define VW 8
#define HIF8_VEC_NAME hif8_cast_chunk_f32_avx2
#define HIF8_AMAX_NAME hif8_amax_chunk_f32_avx2
/* 8 x u32 (each 0..255) -> 8 bytes: two saturating packs, exact for these values */
#define HIF8_STORE_U8(dst, v)                                                              \
    do {                                                                                   \
        __m256i w_ = (__m256i)(v);                                                         \
        __m128i p16_ = _mm_packus_epi32(_mm256_castsi256_si128(w_), _mm256_extracti128_si256(w_, 1)); \
        _mm_storel_epi64((__m128i *)(void *)(dst), _mm_packus_epi16(p16_, p16_));          \
    } while (0)
#define HIF8_STREAM_F32(dst, v) _mm256_stream_ps((dst), (__m256)(v))
#define HIF8_SFENCE() _mm_sfence()
#define VMIN(a, b) ((vi)_mm256_min_epi32((__m256i)(a), (__m256i)(b)))
#define VMAX(a, b) ((vi)_mm256_max_epi32((__m256i)(a), (__m256i)(b)))
#define VABS(a) ((vi)_mm256_abs_epi32((__m256i)(a)))
#define VSEL(m, a, b) ((vi)_mm256_blendv_epi8((__m256i)(b), (__m256i)(a), (__m256i)(m)))
#include "hif8_vec.h"
#endif
