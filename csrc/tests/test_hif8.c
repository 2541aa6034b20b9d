/* C unit tests of the codec, built with -fsanitize=address,undefined by .ci/run.
 * Every ISA path this CPU has must agree bit for bit with the scalar reference. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../cpu.h"
#include "../hif8.h"
#include "../hif8_internal.h" /* hif8_stream_min: cover the streaming-store path */

#include "check.h"

static void test_spec_examples(void) {
    CHECK(hif8_decode(0x08) == 1.0f, "0x08");
    CHECK(hif8_decode(0x0E) == 1.75f, "0x0E");
    CHECK(hif8_decode(0x2E) == 14.0f, "0x2E");
    CHECK(hif8_decode(0x2F) == 15.0f, "0x2F");
    CHECK(hif8_decode(0x6E) == 32768.0f, "0x6E");
    CHECK(hif8_decode(0x7E) == ldexpf(1.0f, -15), "0x7E");
    CHECK(hif8_decode(0x01) == ldexpf(1.0f, -22), "0x01");
    CHECK(isinf(hif8_decode(0x6F)) && isnan(hif8_decode(0x80)), "specials");
    CHECK(hif8_encode_f32(7.75f, 1) == hif8_encode_f32(8.0f, 1), "tie away");
    CHECK(hif8_decode(hif8_encode_f32(15.5f, 1)) == 16.0f, "15.5");
    CHECK(hif8_encode_f32(40960.0f, 1) == 0x6E && hif8_encode_f32(40960.0f, 0) == 0x6F, "overflow");
    CHECK(hif8_encode_f32(-0.0f, 1) == 0x00 && hif8_encode_f32(-1e-30f, 1) == 0x00, "no -0");
    CHECK(hif8_encode_f32(NAN, 1) == 0x80, "nan");
    CHECK(hif8_clip_threshold(15.0) == 15.5, "threshold 15");
    CHECK(hif8_clip_threshold(0.0) == 40960.0, "threshold none");
}

static void test_round_trip(void) {
    for (unsigned c = 0; c < 256; c++) {
        if (c == 0x80) continue;
        CHECK(hif8_encode_f32(hif8_decode((uint8_t)c), 0) == c, "round trip f32 0x%02X", c);
        CHECK(hif8_encode_f64((double)hif8_decode((uint8_t)c), 0) == c, "round trip f64 0x%02X", c);
    }
}

/* Monotonic: the decoded value of encode(x) never decreases as x grows. */
static void test_monotonic(void) {
    float prev = -INFINITY;
    for (int k = -2000000; k <= 2000000; k++) {
        /* a sweep over +-50000 that is dense near zero: x = sign * 50000 * (|k|/2e6)^6 */
        double t = (double)k / 2000000.0;
        float x = (float)(50000.0 * t * t * t * t * t * fabs(t));
        float v = hif8_decode(hif8_encode_f32(x, 1));
        CHECK(v >= prev, "monotonic at %g", x);
        prev = v;
    }
}

static void run_paths(const float *x, size_t n, const hif8_cast_params *p, uint8_t *codes,
                      float *vals, uint8_t *mask, hif8_stats *st, hq_isa isa) {
    hq_set_isa(isa);
    memset(st, 0, sizeof *st);
    hif8_cast_f32(x, n, p, codes, vals, mask, st);
}

static void test_paths_agree(void) {
    const size_t n = 100003;
    float *x = malloc(n * sizeof *x);
    uint8_t *c0 = malloc(n), *c1 = malloc(n), *m0 = malloc(n), *m1 = malloc(n);
    float *v0 = malloc(n * sizeof *v0), *v1 = malloc(n * sizeof *v1);
    for (size_t i = 0; i < n; i++) {
        uint32_t b = rnd();
        if (i % 3 == 0) { /* mostly realistic magnitudes, some raw bit patterns */
            float f = (float)((int32_t)b) / 2147483648.0f * 40.0f;
            memcpy(&x[i], &f, 4);
        } else {
            memcpy(&x[i], &b, 4);
        }
    }
    hq_isa isas[3] = {HQ_ISA_SCALAR, HQ_ISA_AVX2, HQ_ISA_AVX512};
    double clips[3] = {0.0, 15.0, 224.0};
    for (int stoch = 0; stoch < 2; stoch++)
        for (int ci = 0; ci < 3; ci++)
            for (int sat = 0; sat < 2; sat++) {
                hif8_cast_params p = {1.75, 1.0 / 1.75, clips[ci], stoch, sat, 42, 5};
                hif8_stats s0, s1;
                run_paths(x, n, &p, c0, v0, m0, &s0, HQ_ISA_SCALAR);
                for (int k = 1; k < 3; k++) {
                    if (hq_set_isa(isas[k]) != 0) continue;
                    run_paths(x, n, &p, c1, v1, m1, &s1, isas[k]);
                    CHECK(!memcmp(c0, c1, n), "codes differ %s stoch=%d clip=%g", hq_isa_name(isas[k]), stoch, clips[ci]);
                    CHECK(!memcmp(v0, v1, n * 4), "values differ %s", hq_isa_name(isas[k]));
                    CHECK(!memcmp(m0, m1, n), "mask differ %s", hq_isa_name(isas[k]));
                    CHECK(s0.n == s1.n && s0.clipped == s1.clipped && s0.zero_flushed == s1.zero_flushed &&
                              s0.nonfinite == s1.nonfinite && s0.amax == s1.amax,
                          "stats differ %s", hq_isa_name(isas[k]));
                }
                /* codes and values agree with the scalar encoder */
                for (size_t i = 0; i < n; i++) {
                    float y = x[i] * 1.75f;
                    if (clips[ci] > 0 && !isnan(y)) y = fminf(fmaxf(y, -(float)clips[ci]), (float)clips[ci]);
                    if (!stoch) {
                        uint8_t want = hif8_encode_f32(y, sat);
                        if (c0[i] != want) {
                            CHECK(0, "code %zu: x=%g got 0x%02X want 0x%02X", i, x[i], c0[i], want);
                            break;
                        }
                    }
                }
            }
    hq_set_isa(hq_cpu_has_avx2() ? HQ_ISA_AVX2 : HQ_ISA_SCALAR);
    free(x), free(c0), free(c1), free(m0), free(m1), free(v0), free(v1);
}

/* Fake quantization (values only, nearest and stochastic) has its own vector kernel, with and without
 * streaming stores and at unaligned outputs: it must match the scalar reference's values
 * and statistics bit for bit, edge cases included (NaN payloads, +-Inf, the 2^-23 tie,
 * denormal binades, clamps below 2^-23 and above 32768, scale 1). */
static void test_fake_quant_path_agrees(void) {
    const size_t n = 70001;
    float *x = malloc(n * sizeof *x), *v0 = malloc((n + 16) * sizeof *v0), *v1 = malloc((n + 16) * sizeof *v1);
    for (size_t i = 0; i < n; i++) {
        uint32_t b = rnd();
        float f;
        switch (i % 5) {
        case 0: f = (float)((int32_t)b) / 2147483648.0f * 40.0f; break;
        case 1: f = ldexpf((float)(b & 0xffff) / 65536.0f + 1.0f, (int)(b >> 16) % 48 - 28); break;
        case 2: f = ldexpf((float)(b % 17) / 16.0f + 1.0f, (int)(b >> 8) % 40 - 24); break; /* ties */
        default: memcpy(&f, &b, 4);
        }
        if ((b >> 3) % 7 == 0) f = -f;
        x[i] = f;
    }
    const float specials[] = {0.0f, -0.0f, NAN, -NAN, INFINITY, -INFINITY, 40960.0f, 40959.996f,
                              32768.0f, 49152.0f, ldexpf(1, -23), ldexpf(1.5f, -23), ldexpf(1, -24),
                              ldexpf(1.4999999f, -23), ldexpf(1.5f, -17), 7.75f, 15.5f, 1e-45f};
    for (size_t k = 0; k < sizeof specials / sizeof *specials; k++) x[7 * k + 3] = specials[k];
    uint32_t snan = 0x7f800001u, nan_payload = 0xffc12345u;
    memcpy(&x[200], &snan, 4), memcpy(&x[201], &nan_payload, 4);
    /* below 2^-22 a stochastic round goes up iff rand16 < |y| * 2^38: put the exact ties
     * (|y| * 2^38 == rand16, at scale 1) where the kernels meet them */
    for (size_t i = 300; i < 364; i++) x[i] = ldexpf((float)hif8_rand16(hif8_seed_key(42, 0), (uint32_t)(5 + i)), -38);
    const double scales[3] = {1.0, 1.75, 3.0e-6};
    const double clips[5] = {0.0, 15.0, 224.0, 1e-9, 50000.0};
    const size_t mins[2] = {(size_t)-1, 0};
    const size_t saved_min = hif8_stream_min;
    for (int stoch = 0; stoch < 2; stoch++)
    for (int si = 0; si < 3; si++)
        for (int ci = 0; ci < 5; ci++) {
            hif8_cast_params p = {scales[si], 1.0 / scales[si], clips[ci], stoch, 1, 42, 5};
            hif8_stats s0, s1;
            hq_set_isa(HQ_ISA_SCALAR);
            memset(&s0, 0, sizeof s0);
            hif8_cast_f32(x, n, &p, NULL, v0, NULL, &s0);
            for (int k = 1; k < 3; k++) {
                if (hq_set_isa((hq_isa)k) != 0) continue;
                for (int mi = 0; mi < 2; mi++)
                    for (size_t off = 0; off < 2; off++) {
                        hif8_stream_min = mins[mi];
                        memset(&s1, 0, sizeof s1);
                        hif8_cast_f32(x, n, &p, NULL, v1 + off, NULL, &s1);
                        CHECK(!memcmp(v0, v1 + off, n * 4), "fake-quant values differ %s stoch=%d scale=%g clip=%g stream=%d off=%zu",
                              hq_isa_name((hq_isa)k), stoch, scales[si], clips[ci], mi, off);
                        CHECK(s0.n == s1.n && s0.clipped == s1.clipped && s0.zero_flushed == s1.zero_flushed &&
                                  s0.nonfinite == s1.nonfinite && s0.amax == s1.amax,
                              "fake-quant stats differ %s scale=%g clip=%g stream=%d off=%zu", hq_isa_name((hq_isa)k),
                              scales[si], clips[ci], mi, off);
                        /* without statistics the kernel skips the counting: same values */
                        memset(v1, 0, (n + 16) * sizeof *v1);
                        hif8_cast_f32(x, n, &p, NULL, v1 + off, NULL, NULL);
                        CHECK(!memcmp(v0, v1 + off, n * 4), "fake-quant values without stats differ %s", hq_isa_name((hq_isa)k));
                    }
            }
            /* the values are decode(encode(clamp(x*scale))) * scale_inv, and zero has no sign */
            for (size_t i = 0; i < n; i++) {
                float y = x[i] * (float)scales[si];
                if (clips[ci] > 0 && !isnan(y)) y = fminf(fmaxf(y, -(float)clips[ci]), (float)clips[ci]);
                uint8_t code = stoch ? hif8_encode_sr_f32(y, hif8_rand16(hif8_seed_key(42, 0), (uint32_t)(5 + i)), 1)
                                     : hif8_encode_f32(y, 1);
                float want = hif8_decode(code) * (float)(1.0 / scales[si]);
                int same = isnan(want) ? isnan(v0[i]) : (memcmp(&want, &v0[i], 4) == 0);
                if (!same) {
                    CHECK(0, "fake-quant %zu: x=%a got %a want %a", i, x[i], v0[i], want);
                    break;
                }
            }
        }
    hif8_stream_min = saved_min;
    hq_set_isa(hq_cpu_has_avx2() ? HQ_ISA_AVX2 : HQ_ISA_SCALAR);
    free(x), free(v0), free(v1);
}

int main(void) {
    hif8_init();
    test_spec_examples();
    test_round_trip();
    test_monotonic();
    test_paths_agree();
    test_fake_quant_path_agrees();
    printf("test_hif8: %s (avx2=%d avx512=%d)\n", failures ? "FAILED" : "ok", hq_cpu_has_avx2(),
           hq_cpu_has_avx512());
    return failures != 0;
}
