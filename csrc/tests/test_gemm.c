/* C tests of gemm.c: every kernel this CPU runs against the reference triple loop
 * (bit-identical by design, gemm.h), the reference against a float64 sum, thread-count
 * independence, pre-packed operands, bias/accumulate epilogues, NaN propagation.
 * Build: gcc -std=c11 -fopenmp -I csrc csrc/tests/test_gemm.c csrc/{hif8,cpu,gemm,...}.c -lm
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "cpu.h"
#include "gemm.h"
#include "hif8.h"

#include "check.h"

static float rnd_normal(void) { /* crude, good enough for test data */
    float s = 0;
    for (int i = 0; i < 4; i++) s += (float)(rnd() & 0xffff) / 65536.0f - 0.5f;
    return s * 1.7f;
}
static uint8_t rnd_code(void) { /* a finite HiF8 code */
    for (;;) {
        uint8_t c = (uint8_t)rnd();
        if (isfinite(hif8_decode_table_f32[c])) return c;
    }
}

/* A stored matrix (rows x cols, row-major with padding) holding op(X) or its transpose. */
typedef struct {
    void *data;
    hq_gemm_operand op;
} matrix;

/* op(X) of shape (r, s) in `format`, stored transposed when `trans`, with a row pitch
 * larger than needed (a non-contiguous view). */
static matrix make_operand(int64_t r, int64_t s, int format, int trans) {
    int64_t rows = trans ? s : r, cols = trans ? r : s, pitch = cols + 3;
    matrix m;
    size_t n = (size_t)(rows * pitch);
    if (format == HQ_GEMM_HIF8) {
        uint8_t *d = malloc(n);
        for (size_t i = 0; i < n; i++) d[i] = rnd_code();
        m.data = d;
    } else {
        float *d = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) d[i] = rnd_normal();
        m.data = d;
    }
    m.op.data = m.data;
    m.op.format = format;
    m.op.row_stride = trans ? 1 : pitch;
    m.op.col_stride = trans ? pitch : 1;
    return m;
}

static double value64(const hq_gemm_operand *x, int64_t r, int64_t s) {
    int64_t off = r * x->row_stride + s * x->col_stride;
    if (x->format == HQ_GEMM_HIF8) return hif8_decode_table_f32[((const uint8_t *)x->data)[off]];
    return round_bf16_f32(((const float *)x->data)[off]);
}

static const char *kernel_names[] = {"scalar", "avx2", "avx512f", "avx512bf16", "bf16emu"};
#define N_KERNELS 5

static int same_bits(const float *x, const float *y, size_t n, size_t *where) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(x + i, y + i, 4) != 0) {
            *where = i;
            return 0;
        }
    return 1;
}

static void check_case(int64_t M, int64_t N, int64_t K, int fa, int fb, int ta, int tb,
                       int with_bias, int accumulate) {
    matrix A = make_operand(M, K, fa, ta), B = make_operand(K, N, fb, tb);
    float *bias = NULL;
    if (with_bias) {
        bias = malloc(N * sizeof(float));
        for (int64_t j = 0; j < N; j++) bias[j] = rnd_normal();
    }
    const float scale = 0.375f * 0.1f;
    size_t nc = (size_t)(M * N);
    float *init = malloc(nc * sizeof(float)), *ref = malloc(nc * sizeof(float)),
          *got = malloc(nc * sizeof(float));
    for (size_t i = 0; i < nc; i++) init[i] = rnd_normal();
    memcpy(ref, init, nc * sizeof(float));
    hq_gemm_reference(M, N, K, &A.op, &B.op, scale, bias, ref, N, accumulate);

    /* the reference against float64 within the float32 accumulation bound */
    for (int64_t i = 0; i < M; i += (M > 7 ? M / 7 : 1))
        for (int64_t j = 0; j < N; j += (N > 7 ? N / 7 : 1)) {
            double s = 0, sabs = 0;
            for (int64_t k = 0; k < K; k++) {
                double p = value64(&A.op, i, k) * value64(&B.op, k, j);
                s += p;
                sabs += fabs(p);
            }
            double y = s * scale + (bias ? bias[j] : 0.0) + (accumulate ? init[i * N + j] : 0.0);
            double tol = (K + 4) * ldexp(1.0, -24) * sabs * scale +
                         4 * ldexp(1.0, -24) * (fabs(y) + (bias ? fabs(bias[j]) : 0.0) +
                                                (accumulate ? fabs(init[i * N + j]) : 0.0));
            CHECK(fabs(ref[i * N + j] - y) <= tol,
                  "reference %lldx%lldx%lld at (%lld,%lld): %.9g vs float64 %.9g (tol %.3g)",
                  (long long)M, (long long)N, (long long)K, (long long)i, (long long)j,
                  ref[i * N + j], y, tol);
        }

    for (int kn = 0; kn < N_KERNELS; kn++) {
        if (!hq_gemm_kernel_supported(kernel_names[kn])) continue;
        hq_gemm_force_kernel(kernel_names[kn]);
        for (int threads = 1; threads <= 2; threads++) {
            hq_set_num_threads(threads);
            for (int use_pack = 0; use_pack <= 1; use_pack++) {
                memcpy(got, init, nc * sizeof(float));
                hq_packed_b *pb = use_pack ? hq_pack_b(K, N, &B.op) : NULL;
                int rc = hq_gemm(M, N, K, &A.op, use_pack ? NULL : &B.op, pb, scale, bias, got,
                                 N, accumulate);
                hq_packed_b_free(pb);
                size_t w = 0;
                CHECK(rc == HQ_GEMM_OK, "hq_gemm returned %d", rc);
                /* exact on every kernel: the test data has no subnormal values or
                 * products, the only place the bf16 kernels may differ (gemm.h) */
                CHECK(same_bits(got, ref, nc, &w),
                      "%s, %d threads, pack %d: %lldx%lldx%lld fa%d fb%d ta%d tb%d bias%d "
                      "acc%d differs at %zu: %.9g vs %.9g",
                      kernel_names[kn], threads, use_pack, (long long)M, (long long)N,
                      (long long)K, fa, fb, ta, tb, with_bias, accumulate, w, got[w], ref[w]);
            }
        }
    }
    hq_gemm_force_kernel(NULL);
    free(A.data);
    free(B.data);
    free(bias);
    free(init);
    free(ref);
    free(got);
}

static void test_nan_propagates(void) {
    /* a NaN code in row 1 of A makes row 1 of C NaN and leaves the others finite */
    int64_t M = 3, N = 5, K = 7;
    uint8_t a[21], b[35];
    for (int i = 0; i < 21; i++) a[i] = 0x08; /* 1.0 */
    for (int i = 0; i < 35; i++) b[i] = 0x10; /* 2.0 */
    a[1 * K + 4] = HIF8_CODE_NAN;
    hq_gemm_operand A = {a, HQ_GEMM_HIF8, K, 1}, B = {b, HQ_GEMM_HIF8, N, 1};
    float c[15];
    CHECK(hq_gemm(M, N, K, &A, &B, NULL, 1.0f, NULL, c, N, 0) == HQ_GEMM_OK, "rc");
    for (int j = 0; j < N; j++) {
        CHECK(c[0 * N + j] == 14.0f, "row 0 col %d: %g", j, c[j]);
        CHECK(isnan(c[1 * N + j]), "row 1 col %d not NaN: %g", j, c[N + j]);
        CHECK(c[2 * N + j] == 14.0f, "row 2 col %d: %g", j, c[2 * N + j]);
    }
}

static void test_packed_layout_mismatch_is_reported(void) {
    uint8_t b[4] = {0x08, 0x08, 0x08, 0x08};
    hq_gemm_operand B = {b, HQ_GEMM_HIF8, 2, 1};
    hq_packed_b *pb = hq_pack_b(2, 2, &B);
    CHECK(pb != NULL, "pack");
    CHECK(hq_packed_b_usable(pb), "fresh pack not usable");
    uint8_t a[2] = {0x08, 0x08};
    hq_gemm_operand A = {a, HQ_GEMM_HIF8, 2, 1};
    float c[2];
    /* wrong shape for the pack */
    CHECK(hq_gemm(1, 2, 3, &A, NULL, pb, 1.0f, NULL, c, 2, 0) == HQ_GEMM_ELAYOUT, "K mismatch");
    CHECK(hq_gemm(1, 2, 2, &A, NULL, pb, 1.0f, NULL, c, 2, 0) == HQ_GEMM_OK, "ok");
    CHECK(c[0] == 2.0f && c[1] == 2.0f, "1x2 . 2x2 of ones: %g %g", c[0], c[1]);
    hq_packed_b_free(pb);
}

int main(void) {
    hif8_init();
    hq_gemm_set_parallel_min_flops(0); /* small cases below use the threaded split too */
    printf("kernels on this CPU:");
    for (int k = 0; k < N_KERNELS; k++)
        if (hq_gemm_kernel_supported(kernel_names[k])) printf(" %s", kernel_names[k]);
    printf(" (default %s)\n", hq_gemm_kernel_name());

    const int64_t sizes[][3] = {{1, 1, 1},   {3, 5, 7},    {17, 33, 19},  {6, 16, 256},
                                {25, 47, 513}, {150, 70, 300}, {7, 4100, 9}, {200, 40, 600}};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
        for (int fa = 0; fa < 2; fa++)
            for (int fb = 0; fb < 2; fb++)
                for (int t = 0; t < 4; t++) {
                    /* every transposition for small sizes, one per pairing for big ones */
                    int64_t macs = sizes[s][0] * sizes[s][1] * sizes[s][2];
                    if (macs > 100000 && t != (fa * 2 + fb + (int)s) % 4) continue;
                    check_case(sizes[s][0], sizes[s][1], sizes[s][2], fa, fb, t & 1, t >> 1,
                               (int)(s % 2), (int)((s / 2) % 2));
                }
    /* accumulate with several K slices goes through the scratch path */
    check_case(30, 20, 700, HQ_GEMM_HIF8, HQ_GEMM_F32, 0, 1, 1, 1);
    check_case(13, 70, 50, HQ_GEMM_HIF8, HQ_GEMM_HIF8, 0, 1, 0, 1);
    /* bands of columns (N > M) and of rows (M >= N), with K slices, on 2 threads */
    check_case(20, 90, 530, HQ_GEMM_F32, HQ_GEMM_HIF8, 0, 1, 1, 0);
    check_case(95, 20, 530, HQ_GEMM_HIF8, HQ_GEMM_F32, 1, 0, 0, 1);
    test_nan_propagates();
    test_packed_layout_mismatch_is_reported();
    if (failures) {
        printf("test_gemm: %d failures\n", failures);
        return 1;
    }
    printf("test_gemm: all passed\n");
    return 0;
}
