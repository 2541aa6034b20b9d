/* ops.c under the sanitizers: exact-size buffers with odd lengths (the vector loops'
 * tails), the AVX2 and portable paths giving the same bits, and float64 references. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu.h"
#include "ops.h"

static float frand(float scale) { return ((float)rnd() / 4294967296.0f * 2.0f - 1.0f) * scale; }

static float *fvec(size_t n, float scale) {
    float *x = (float *)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = frand(scale);
    return x;
}

static void test_softmax(int64_t rows, int64_t cols, int64_t lds) {
    float *s0 = fvec((size_t)(rows * lds), 8.0f), *b = fvec((size_t)(rows * cols), 1.0f);
    if (cols > 1) /* mask one key per row, never the whole row */
        for (int64_t i = 0; i < rows; i++) b[i * cols + 1 + i % (cols - 1)] = -INFINITY;
    float *s1 = (float *)malloc((size_t)(rows * lds) * sizeof(float));
    float *s2 = (float *)malloc((size_t)(rows * lds) * sizeof(float));
    memcpy(s1, s0, (size_t)(rows * lds) * sizeof(float));
    memcpy(s2, s0, (size_t)(rows * lds) * sizeof(float));
    hq_set_isa(HQ_ISA_SCALAR);
    hq_softmax_rows_f32(s1, rows, cols, lds, b, cols, 0.5f);
    if (hq_set_isa(HQ_ISA_AVX2) == 0) {
        hq_softmax_rows_f32(s2, rows, cols, lds, b, cols, 0.5f);
        CHECK(memcmp(s1, s2, (size_t)(rows * lds) * sizeof(float)) == 0,
              "softmax %lldx%lld: avx2 and portable bits differ", (long long)rows, (long long)cols);
    }
    for (int64_t i = 0; i < rows; i++) {
        double mx = -INFINITY, sum = 0.0;
        for (int64_t j = 0; j < cols; j++) {
            double z = (double)s0[i * lds + j] * 0.5 + b[i * cols + j];
            mx = z > mx ? z : mx;
        }
        for (int64_t j = 0; j < cols; j++) sum += exp((double)s0[i * lds + j] * 0.5 + b[i * cols + j] - mx);
        for (int64_t j = 0; j < cols; j++) {
            double want = exp((double)s0[i * lds + j] * 0.5 + b[i * cols + j] - mx) / sum;
            CHECK(fabs(s1[i * lds + j] - want) <= 1e-6 * want + 1e-7, "softmax (%lld,%lld) %g vs %g",
                  (long long)i, (long long)j, s1[i * lds + j], want);
        }
        for (int64_t j = cols; j < lds; j++)
            CHECK(s1[i * lds + j] == s0[i * lds + j], "softmax wrote past its columns");
    }
    free(s0), free(s1), free(s2), free(b);
}

static void test_swiglu(int64_t n) {
    float *g = fvec((size_t)n, 30.0f), *u = fvec((size_t)n, 1.0f), *dh = fvec((size_t)n, 1.0f);
    float *h = (float *)malloc((size_t)n * 4), *dg = (float *)malloc((size_t)n * 4),
          *du = (float *)malloc((size_t)n * 4);
    hq_set_isa(HQ_ISA_SCALAR);
    hq_swiglu_forward_f32(g, u, n, h);
    hq_swiglu_backward_f32(dh, g, u, n, dg, du);
    for (int64_t i = 0; i < n; i++) {
        double sig = 1.0 / (1.0 + exp(-(double)g[i])), silu = g[i] * sig;
        double dgw = dh[i] * u[i] * (sig + silu * (1.0 - sig));
        CHECK(fabs(h[i] - silu * u[i]) <= 1e-5 * fabs(silu * u[i]) + 1e-6, "swiglu h[%lld]", (long long)i);
        CHECK(fabs(dg[i] - dgw) <= 1e-5 * fabs(dgw) + 1e-6, "swiglu dg[%lld]", (long long)i);
        CHECK(fabs(du[i] - dh[i] * silu) <= 1e-5 * fabs(dh[i] * silu) + 1e-6, "swiglu du[%lld]",
              (long long)i);
    }
    if (hq_set_isa(HQ_ISA_AVX2) == 0) {
        float *h2 = (float *)malloc((size_t)n * 4), *dg2 = (float *)malloc((size_t)n * 4),
              *du2 = (float *)malloc((size_t)n * 4);
        hq_swiglu_forward_f32(g, u, n, h2);
        hq_swiglu_backward_f32(dh, g, u, n, dg2, du2);
        CHECK(memcmp(h, h2, (size_t)n * 4) == 0 && memcmp(dg, dg2, (size_t)n * 4) == 0 &&
                  memcmp(du, du2, (size_t)n * 4) == 0,
              "swiglu n=%lld: avx2 and portable bits differ", (long long)n);
        free(h2), free(dg2), free(du2);
    }
    free(g), free(u), free(dh), free(h), free(dg), free(du);
}

static void test_rmsnorm_rope(void) {
    const int64_t N = 37, C = 13, B = 2, T = 5, nh = 3, D = 6;
    float *x = fvec(N * C, 2.0f), *w = fvec(C, 1.0f), *d = fvec(N * C, 1.0f);
    float *out = (float *)malloc(N * C * 4), *rstd = (float *)malloc(N * 4);
    float *dx = (float *)malloc(N * C * 4), dw[13];
    hq_rmsnorm_forward_f32(x, w, 1e-5f, N, C, out, rstd);
    hq_rmsnorm_backward_f32(d, x, w, rstd, N, C, dx, dw, 0);
    for (int64_t n = 0; n < N; n++) {
        double ms = 0.0;
        for (int64_t c = 0; c < C; c++) ms += (double)x[n * C + c] * x[n * C + c];
        double r = 1.0 / sqrt(ms / C + 1e-5);
        CHECK(fabs(rstd[n] - r) <= 1e-6 * r, "rmsnorm rstd[%lld]", (long long)n);
        for (int64_t c = 0; c < C; c++)
            CHECK(fabs(out[n * C + c] - x[n * C + c] * r * w[c]) <= 1e-5, "rmsnorm out");
    }
    float *q = fvec(B * T * nh * D, 1.0f), *cs = fvec(T * D / 2, 1.0f), *sn = fvec(T * D / 2, 1.0f);
    float *o = (float *)malloc(B * T * nh * D * 4), *back = (float *)malloc(B * T * nh * D * 4);
    hq_rope_f32(q, cs, sn, B, T, nh, D, 0, -1, o);
    hq_rope_f32(o, cs, sn, B, T, nh, D, 0, +1, back);
    for (int64_t bt = 0; bt < B * T; bt++)    /* backward(forward(x)) = (c² + s²) x */
        for (int64_t hd = 0; hd < nh * D; hd++) {
            int64_t i = hd % D % (D / 2), t = bt % T;
            double f = (double)cs[t * D / 2 + i] * cs[t * D / 2 + i] + (double)sn[t * D / 2 + i] * sn[t * D / 2 + i];
            CHECK(fabs(back[bt * nh * D + hd] - f * q[bt * nh * D + hd]) <= 1e-5, "rope round trip");
        }
    free(x), free(w), free(d), free(out), free(rstd), free(dx), free(q), free(cs), free(sn), free(o),
        free(back);
}

int main(void) {
    test_softmax(3, 1, 1);
    test_softmax(5, 13, 16);
    test_softmax(4, 64, 64);
    test_softmax(2, 257, 300);
    test_swiglu(1);
    test_swiglu(16384 * 2 + 13);
    test_rmsnorm_rope();
    hq_set_isa(HQ_ISA_SCALAR);
    CHECK(hq_expf(-INFINITY) == 0.0f && isinf(hq_expf(INFINITY)) && isnan(hq_expf(NAN)),
          "exp special values");
    if (failures) {
        fprintf(stderr, "test_ops: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_ops: all passed\n");
    return 0;
}
