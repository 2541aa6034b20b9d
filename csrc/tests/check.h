/* Shared by the C unit tests: a non-fatal CHECK that counts failures, and a small
 * xorshift generator (reproducible test data without libc's rand). */
#ifndef HIF8QAT_TESTS_CHECK_H
#define HIF8QAT_TESTS_CHECK_H
#include <stdint.h>
#include <stdio.h>

static int failures = 0;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            failures++;                                                    \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
        }                                                                  \
    } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
#endif
