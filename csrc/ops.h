/* Fused float32 kernels for the model's light layers (RMSNorm, RoPE, softmax, SwiGLU).
 *
 * Each replaces several NumPy passes (and their temporaries) with one pass over the
 * rows, split over OpenMP threads by rows (or, for a sum over rows, by columns), so
 * every output element is computed by one thread in a fixed order: results never
 * depend on the thread count. Sums along a row run in 8 double lanes (lane j takes
 * elements j, j+8, ...; the lanes are added in order at the end), then round once.
 * All arrays are C-contiguous float32; shapes as in hif8qat/model/llama.py.
 */
#ifndef HIF8QAT_OPS_H
#define HIF8QAT_OPS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* x (N, C), weight (C,) -> out (N, C) = x * rstd * weight, rstd (N,) =
 * 1 / sqrt(mean(x²) + eps) (the mean in double, rounded to float32 before + eps). */
void hq_rmsnorm_forward_f32(const float *x, const float *weight, float eps, int64_t N,
                            int64_t C, float *out, float *rstd);

/* dout, x (N, C), weight (C,), rstd (N,) -> dx (N, C) = rstd * (dxhat - xhat *
 * mean(dxhat * xhat)) with xhat = x * rstd, dxhat = dout * weight; dweight (C,) =
 * sum over rows of dout * xhat (double, rows in order), stored or added (accumulate). */
void hq_rmsnorm_backward_f32(const float *dout, const float *x, const float *weight,
                             const float *rstd, int64_t N, int64_t C, float *dx,
                             float *dweight, int accumulate);

/* RoPE, Hugging Face's rotate_half pairing (i with i + D/2). x (B, T, nh, D); cos, sin
 * (T, D/2) when cs_batch_stride is 0, else (B, T, D/2) with that stride between rows b.
 * sign = -1 (forward): out1 = x1 c - x2 s, out2 = x2 c + x1 s;
 * sign = +1 (backward, the transpose): out1 = x1 c + x2 s, out2 = x2 c - x1 s. */
void hq_rope_f32(const float *x, const float *cos, const float *sin, int64_t B, int64_t T,
                 int64_t nh, int64_t D, int64_t cs_batch_stride, int sign, float *out);

/* exp(x) in float32 for the softmax and SiLU below: Cephes' polynomial on x - n ln2,
 * scaled by 2^n, within 2 ulp of exp over the normal range; 0 below -87.3 (where
 * exp would be subnormal: never matters next to a softmax row's max of 1 or in
 * 1 + exp), +inf above 88.72, NaN stays NaN. Written with fmaf and no branches so
 * that the AVX2 build and the portable build give the same bits. */
float hq_expf(float x);

/* Softmax of each row of s (rows, cols; row stride lds), in place, after
 * s = s * scale + bias (bias rows of stride ldb, may be NULL): s = exp(s - max) / sum
 * with the max and sum over the row (the sum in double lanes). One thread: the model
 * runs it inside its own thread pool's pieces. */
void hq_softmax_rows_f32(float *s, int64_t rows, int64_t cols, int64_t lds,
                         const float *bias, int64_t ldb, float scale);

/* SwiGLU over n elements: h = silu(g) * u with silu(g) = g / (1 + exp(-g)); backward
 * dg = dh * u * (sig + silu * (1 - sig)), du = dh * silu, sig = 1 / (1 + exp(-g)).
 * OpenMP over fixed element blocks. */
void hq_swiglu_forward_f32(const float *g, const float *u, int64_t n, float *h);
void hq_swiglu_backward_f32(const float *dh, const float *g, const float *u, int64_t n,
                            float *dg, float *du);

#ifdef __cplusplus
}
#endif
#endif
