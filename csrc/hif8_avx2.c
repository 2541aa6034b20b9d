/* AVX2 instance of the cast kernel (hif8_vec.h), 8 lanes. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma")
#define VW 8
#define HIF8_VEC_NAME hif8_cast_chunk_f32_avx2
#include "hif8_vec.h"
#endif
