/* C unit tests of the delayed-scaling state machine (csrc/scaling.c), no Python.
 *
 * Build and run from the repository root:
 *   gcc -std=c11 -O2 -fopenmp -Wall -Wextra -I csrc csrc/tests/test_scaling.c csrc/scaling.c \
 *       csrc/hif8.c csrc/hif8_avx2.c csrc/hif8_avx512.c csrc/cpu.c -lm -o /tmp/test_scaling \
 *       && /tmp/test_scaling
 * (add -fsanitize=address,undefined for the sanitizer build). Exit status 0 = all passed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hif8.h"
#include "scaling.h"

static int failures = 0;
#define CHECK(cond)                                                               \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                           \
        }                                                                         \
    } while (0)

static hq_scaling_recipe recipe(int window, hq_amax_algo algo, float fmax, float margin) {
    hq_scaling_recipe r;
    memset(&r, 0, sizeof(r));
    r.window = window;
    r.algo = algo;
    r.fmax = fmax;
    r.margin = margin;
    r.clip = 1;
    r.ste = HQ_STE_MASKED;
    return r;
}

static void test_recipe_validation(void) {
    hq_scaling_recipe r = recipe(64, HQ_AMAX_MAX, 15.0f, 0.0f);
    CHECK(hq_scaling_recipe_check(&r) == NULL);
    r.window = 0;
    CHECK(hq_scaling_recipe_check(&r) != NULL);
    r = recipe(64, HQ_AMAX_MAX, 0.0f, 0.0f);
    CHECK(hq_scaling_recipe_check(&r) != NULL);
    r = recipe(64, HQ_AMAX_MAX, INFINITY, 0.0f);
    CHECK(hq_scaling_recipe_check(&r) != NULL);
    r = recipe(64, HQ_AMAX_MAX, NAN, 0.0f);
    CHECK(hq_scaling_recipe_check(&r) != NULL);
    r = recipe(64, HQ_AMAX_MAX, 15.0f, -1.0f);
    CHECK(hq_scaling_recipe_check(&r) != NULL);
    r = recipe(64, (hq_amax_algo)7, 15.0f, 0.0f);
    CHECK(hq_scaling_recipe_check(&r) != NULL);
    hq_scaler s;
    r.window = -3;
    CHECK(hq_scaler_init(&s, &r) == HQ_SCALER_ERR_RECIPE);
}

static void test_scale_formula(void) {
    CHECK(hq_scale_from_amax(3.0f, 15.0f, 1.0f) == 5.0f);
    CHECK(hq_scale_from_amax(3.0f, 15.0f, hq_margin_divisor(2.0f)) == 1.25f);
    /* a tiny amax overflows the division: clamped to 2^126, scale_inv stays normal */
    CHECK(hq_scale_from_amax(1e-45f, 15.0f, 1.0f) == 0x1p126f);
    CHECK(hq_scale_from_amax(1e-37f, 15.0f, 1.0f) == 0x1p126f); /* 1.5e38 > 2^126 */
    /* the division is one correctly rounded float32 division */
    volatile float a = 0.7f, f = 15.0f;
    CHECK(hq_scale_from_amax(a, 15.0f, 1.0f) == f / a);
    /* the lower clamp keeps 1/scale finite for amaxes near FLT_MAX with a margin */
    CHECK(hq_scale_from_amax(3.0e38f, 15.0f, hq_margin_divisor(8.0f)) == 0x1p-126f);
}

static void test_update_rules(void) {
    hq_scaler s;
    hq_scaling_recipe r = recipe(3, HQ_AMAX_MAX, 15.0f, 0.0f);
    CHECK(hq_scaler_init(&s, &r) == HQ_SCALER_OK);
    CHECK(s.scale == 1.0f && s.n_valid == 0);

    /* a step where the tensor did not run changes nothing */
    CHECK(hq_scaler_update(&s) == 1.0f);
    CHECK(s.n_valid == 0);

    /* NaN is taken as +inf: not inserted, scale kept, one non-finite event */
    CHECK(hq_scaler_record_amax(&s, NAN) == HQ_SCALER_OK);
    CHECK(isinf(s.staging_amax));
    CHECK(hq_scaler_update(&s) == 1.0f);
    CHECK(s.n_valid == 0 && s.nonfinite_amax_events == 1 && s.staging_amax == 0.0f);

    CHECK(hq_scaler_record_amax(&s, -1.0) == HQ_SCALER_ERR_ARG);

    /* ring of 3: 6, 1, 2 -> max 6; then 1 pushes out 6 -> max 2 */
    const float amaxes[] = {6.0f, 1.0f, 2.0f, 1.0f, 0.5f, 0.25f};
    const float want_est[] = {6.0f, 6.0f, 6.0f, 2.0f, 2.0f, 1.0f};
    for (int i = 0; i < 6; i++) {
        hq_scaler_record_amax(&s, amaxes[i]);
        float scale = hq_scaler_update(&s);
        CHECK(hq_scaler_amax_estimate(&s) == want_est[i]);
        CHECK(scale == 15.0f / want_est[i]);
        CHECK(s.scale_inv == 1.0f / scale);
    }
    float h[3];
    hq_scaler_history(&s, h);
    CHECK(s.n_valid == 3 && h[0] == 1.0f && h[1] == 0.5f && h[2] == 0.25f);

    /* the staging amax is a running max over several calls */
    hq_scaler_record_amax(&s, 0.5);
    hq_scaler_record_amax(&s, 4.0);
    hq_scaler_record_amax(&s, 3.0);
    CHECK(s.staging_amax == 4.0f);
    CHECK(hq_scaler_update(&s) == 15.0f / 4.0f);

    /* most_recent uses only the newest entry */
    hq_scaler m;
    r = recipe(4, HQ_AMAX_MOST_RECENT, 15.0f, 0.0f);
    CHECK(hq_scaler_init(&m, &r) == HQ_SCALER_OK);
    hq_scaler_record_amax(&m, 8.0);
    hq_scaler_update(&m);
    hq_scaler_record_amax(&m, 2.0);
    CHECK(hq_scaler_update(&m) == 7.5f);
    hq_scaler_free(&m);
    hq_scaler_free(&s);
}

static void test_first_use_and_clipping(void) {
    hq_scaler s;
    hq_scaling_recipe r = recipe(4, HQ_AMAX_MAX, 15.0f, 0.0f);
    CHECK(hq_scaler_init(&s, &r) == HQ_SCALER_OK);
    enum { N = 9 };
    float x[N] = {0.1f, -0.7f, 1.3f, 2.9f, -3.0f, 0.0f, 1e-9f, 2.0f, -2.5f};
    float v[N];
    uint8_t c[N], mask[N];

    /* first use: current scaling from the tensor's own amax (3 -> scale 5) */
    CHECK(hq_scaler_quantize_f32(&s, x, N, c, v, mask) == HQ_SCALER_OK);
    for (int i = 0; i < N; i++) {
        uint8_t want = hif8_encode_f32(x[i] * 5.0f, 1);
        CHECK(c[i] == want);
        CHECK(v[i] == hif8_decode(want) * (1.0f / 5.0f));
        CHECK(mask[i] == 1);
    }
    CHECK(s.scale == 1.0f); /* scale itself only changes at update */
    CHECK(s.step.amax == 3.0f && s.step.n == N && s.step.clipped == 0);
    CHECK(s.step.zero_flushed == 1); /* 1e-9 * 5 < 2^-23 */
    CHECK(fabs(s.step.headroom - 1.0) < 1e-6);
    CHECK(hq_scaler_update(&s) == 5.0f);

    /* next step's amax is 2x the window max: exactly |x*5| >= 15.5 clips */
    float y[N];
    int64_t want_clipped = 0;
    for (int i = 0; i < N; i++) {
        y[i] = 2.0f * x[i];
        if (fabsf(y[i] * 5.0f) >= 15.5f) want_clipped++;
    }
    CHECK(hq_scaler_quantize_f32(&s, y, N, c, v, mask) == HQ_SCALER_OK);
    CHECK(s.step.clipped == want_clipped && want_clipped == 4);
    for (int i = 0; i < N; i++) {
        int clipped = fabsf(y[i] * 5.0f) >= 15.5f;
        CHECK(mask[i] == !clipped);
        if (clipped) CHECK(v[i] == copysignf(15.0f, y[i]) * 0.2f);
    }
    CHECK(fabs(s.step.headroom - 2.0) < 1e-6);
    hq_scaler_update(&s);
    CHECK(s.saturation_events == 1);
    CHECK(s.scale == 2.5f);

    /* a NaN input: stays NaN, counted, the step's amax is +inf and the update skips it */
    float z[3] = {1.0f, NAN, -2.0f};
    float vz[3];
    CHECK(hq_scaler_quantize_f32(&s, z, 3, NULL, vz, NULL) == HQ_SCALER_OK);
    CHECK(isnan(vz[1]) && s.step.nonfinite == 1 && isinf(s.staging_amax));
    CHECK(hq_scaler_update(&s) == 2.5f);
    CHECK(s.n_valid == 2 && s.nonfinite_amax_events == 1);

    /* frozen: current scale, nothing recorded */
    s.frozen = 1;
    CHECK(hq_scaler_quantize_f32(&s, y, N, NULL, v, NULL) == HQ_SCALER_OK);
    CHECK(s.step.n == 0 && s.staging_amax == 0.0f);
    CHECK(hq_scaler_record_amax(&s, 1.0) == HQ_SCALER_ERR_FROZEN);
    hq_scaler_free(&s);

    /* all-zero first tensor: scale 1.0, zeros out, nothing inserted */
    CHECK(hq_scaler_init(&s, &r) == HQ_SCALER_OK);
    float zeros[4] = {0};
    CHECK(hq_scaler_quantize_f32(&s, zeros, 4, NULL, v, NULL) == HQ_SCALER_OK);
    for (int i = 0; i < 4; i++) CHECK(v[i] == 0.0f);
    CHECK(hq_scaler_update(&s) == 1.0f && s.n_valid == 0);

    /* frozen with an empty history refuses */
    s.frozen = 1;
    CHECK(hq_scaler_quantize_f32(&s, x, N, NULL, v, NULL) == HQ_SCALER_ERR_FROZEN_EMPTY);
    hq_scaler_free(&s);
}

static void test_identity_ste_and_no_clip(void) {
    hq_scaler s;
    hq_scaling_recipe r = recipe(2, HQ_AMAX_MAX, 15.0f, 0.0f);
    r.clip = 0;
    CHECK(hq_scaler_init(&s, &r) == HQ_SCALER_OK);
    hq_scaler_record_amax(&s, 1.0);
    hq_scaler_update(&s); /* scale 15 */
    float x[4] = {1.0f, 2.0f, 2731.0f, -3000.0f}; /* *15: 15, 30, 40965 (saturates), -45000 */
    uint8_t mask[4];
    float v[4];
    CHECK(hq_scaler_quantize_f32(&s, x, 4, NULL, v, mask) == HQ_SCALER_OK);
    CHECK(mask[0] == 1 && mask[1] == 1 && mask[2] == 0 && mask[3] == 0);
    CHECK(s.step.clipped == 2);
    /* above fmax but not clamped: 30 rounds on HiF8's own grid (to 32) */
    CHECK(v[1] == hif8_decode(hif8_encode_f32(30.0f, 1)) * (1.0f / 15.0f) && v[1] > 2.0f);
    hq_scaler_free(&s);

    r.clip = 1;
    r.ste = HQ_STE_IDENTITY;
    CHECK(hq_scaler_init(&s, &r) == HQ_SCALER_OK);
    hq_scaler_record_amax(&s, 1.0);
    hq_scaler_update(&s);
    CHECK(hq_scaler_quantize_f32(&s, x, 4, NULL, v, mask) == HQ_SCALER_OK);
    for (int i = 0; i < 4; i++) CHECK(mask[i] == 1);
    CHECK(s.step.clipped == 3); /* still counted, only the gradient passes */
    hq_scaler_free(&s);
}

static void test_set_state(void) {
    hq_scaler s;
    hq_scaling_recipe r = recipe(4, HQ_AMAX_MAX, 15.0f, 2.0f);
    CHECK(hq_scaler_init(&s, &r) == HQ_SCALER_OK);
    const float h[3] = {1.0f, 6.0f, 2.0f};
    CHECK(hq_scaler_set_state(&s, h, 3, 0.625f) == HQ_SCALER_OK);
    CHECK(s.scale == 0.625f && s.n_valid == 3);
    hq_scaler_recompute_scale(&s);
    CHECK(s.scale == (15.0f / 6.0f) / 4.0f);
    const float bad[2] = {1.0f, 0.0f};
    CHECK(hq_scaler_set_state(&s, bad, 2, 1.0f) == HQ_SCALER_ERR_ARG);
    CHECK(hq_scaler_set_state(&s, h, 5, 1.0f) == HQ_SCALER_ERR_ARG);
    CHECK(hq_scaler_set_state(&s, h, 3, NAN) == HQ_SCALER_ERR_ARG);
    /* the restored ring continues: two pushes evict the oldest (1.0) only */
    hq_scaler_set_state(&s, h, 3, 1.0f);
    hq_scaler_record_amax(&s, 0.5);
    hq_scaler_update(&s);
    hq_scaler_record_amax(&s, 0.5);
    hq_scaler_update(&s);
    float out[4];
    hq_scaler_history(&s, out);
    CHECK(s.n_valid == 4 && out[0] == 6.0f && out[1] == 2.0f && out[2] == 0.5f && out[3] == 0.5f);
    hq_scaler_free(&s);
}

int main(void) {
    hif8_init();
    test_recipe_validation();
    test_scale_formula();
    test_update_rules();
    test_first_use_and_clipping();
    test_identity_ste_and_no_clip();
    test_set_state();
    if (failures) {
        fprintf(stderr, "test_scaling: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_scaling: all checks passed\n");
    return 0;
}
