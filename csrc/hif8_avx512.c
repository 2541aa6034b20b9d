/* AVX-512 instance of the cast kernel (hif8_vec.h), 16 lanes. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
#define VW 16
#define HIF8_VEC_NAME hif8_cast_chunk_f32_avx512
#include "hif8_vec.h"
#endif
