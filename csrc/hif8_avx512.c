/* AVX-512 instance of the cast kernel (hif8_vec.h), 16 lanes. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
#include <immintrin.h>
#include <stdint.h>
#define VW 16
#define HIF8_VEC_NAME hif8_cast_chunk_f32_avx512
#define HIF8_AMAX_NAME hif8_amax_chunk_f32_avx512
/* 16 x u32 -> 16 bytes with vpmovdb (truncation; the values are 0..255) */
#define HIF8_STORE_U8(dst, v) _mm_storeu_si128((__m128i *)(void *)(dst), _mm512_cvtepi32_epi8((__m512i)(v)))
#define HIF8_STREAM_F32(dst, v) _mm512_stream_ps((dst), (__m512)(v))
#define HIF8_SFENCE() _mm_sfence()
#define VMIN(a, b) ((vi)_mm512_min_epi32((__m512i)(a), (__m512i)(b)))
#define VMAX(a, b) ((vi)_mm512_max_epi32((__m512i)(a), (__m512i)(b)))
#define VABS(a) ((vi)_mm512_abs_epi32((__m512i)(a)))
#include "hif8_vec.h"
#endif
