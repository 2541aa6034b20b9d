/* Fused RMSNorm and RoPE kernels (ops.h). Plain C loops that gcc vectorizes; no
 * -ffast-math, so every sum runs in the order written. */
#include "ops.h"

#include <math.h>

#include "cpu.h"

#define LANES 8

/* sum of a[i] * b[i] in LANES double lanes, lanes added in order: a fixed order. */
static double dot_lanes(const float *a, const float *b, int64_t n) {
    double lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) lane[j] += (double)a[i + j] * (double)b[i + j];
    for (int j = 0; i < n; i++, j++) lane[j] += (double)a[i] * (double)b[i];
    double s = 0.0;
    for (int j = 0; j < LANES; j++) s += lane[j];
    return s;
}

void hq_rmsnorm_forward_f32(const float *x, const float *weight, float eps, int64_t N,
                            int64_t C, float *out, float *rstd) {
    int nt = hq_threads_for((size_t)(N * C));
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * C;
        float *o = out + n * C;
        float ms = (float)(dot_lanes(xr, xr, C) / (double)C) + eps;
        float r = 1.0f / sqrtf(ms);
        rstd[n] = r;
        for (int64_t c = 0; c < C; c++) o[c] = (xr[c] * r) * weight[c];
    }
}

#define DW_COLS 64 /* columns per dweight task: 64 double accumulators */

void hq_rmsnorm_backward_f32(const float *dout, const float *x, const float *weight,
                             const float *rstd, int64_t N, int64_t C, float *dx,
                             float *dweight, int accumulate) {
    int nt = hq_threads_for((size_t)(N * C));
#pragma omp parallel num_threads(nt)
    {
        /* dx: one row per iteration, xhat and dxhat recomputed in registers */
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const float *xr = x + n * C, *dr = dout + n * C;
            float *o = dx + n * C;
            const float r = rstd[n];
            double lane[LANES] = {0};
            int64_t c = 0;
            for (; c + LANES <= C; c += LANES)
                for (int j = 0; j < LANES; j++)
                    lane[j] += (double)(dr[c + j] * weight[c + j]) * (double)(xr[c + j] * r);
            for (int j = 0; c < C; c++, j++) lane[j] += (double)(dr[c] * weight[c]) * (double)(xr[c] * r);
            double s = 0.0;
            for (int j = 0; j < LANES; j++) s += lane[j];
            const float dot = (float)(s / (double)C);
            for (c = 0; c < C; c++) {
                float xhat = xr[c] * r, dxhat = dr[c] * weight[c];
                o[c] = (dxhat - xhat * dot) * r;
            }
        }
        /* dweight: a block of columns per iteration, rows summed in order */
        const int64_t nblk = (C + DW_COLS - 1) / DW_COLS;
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t c0 = blk * DW_COLS, w = C - c0 < DW_COLS ? C - c0 : DW_COLS;
            double acc[DW_COLS] = {0};
            for (int64_t n = 0; n < N; n++) {
                const float *xr = x + n * C + c0, *dr = dout + n * C + c0;
                const float r = rstd[n];
                for (int64_t j = 0; j < w; j++) acc[j] += (double)dr[j] * (double)(xr[j] * r);
            }
            for (int64_t j = 0; j < w; j++)
                dweight[c0 + j] = accumulate ? dweight[c0 + j] + (float)acc[j] : (float)acc[j];
        }
    }
}

void hq_rope_f32(const float *x, const float *cos, const float *sin, int64_t B, int64_t T,
                 int64_t nh, int64_t D, int64_t cs_batch_stride, int sign, float *out) {
    const int64_t h = D / 2;
    int nt = hq_threads_for((size_t)(B * T * nh * D));
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t bt = 0; bt < B * T; bt++) {
        const int64_t b = bt / T, t = bt % T;
        const float *c = cos + b * cs_batch_stride + t * h;
        const float *s = sin + b * cs_batch_stride + t * h;
        for (int64_t head = 0; head < nh; head++) {
            const float *x1 = x + (bt * nh + head) * D, *x2 = x1 + h;
            float *o1 = out + (bt * nh + head) * D, *o2 = o1 + h;
            if (sign < 0)
                for (int64_t i = 0; i < h; i++) {
                    o1[i] = x1[i] * c[i] - x2[i] * s[i];
                    o2[i] = x2[i] * c[i] + x1[i] * s[i];
                }
            else
                for (int64_t i = 0; i < h; i++) {
                    o1[i] = x1[i] * c[i] + x2[i] * s[i];
                    o2[i] = x2[i] * c[i] - x1[i] * s[i];
                }
        }
    }
}
