/* CPU feature detection, the ISA path in use, and the OpenMP thread count. */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
/* __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV). */
int hq_cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
int hq_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           hq_cpu_has_avx2();
}
int hq_cpu_has_avx512bf16(void) {
    __builtin_cpu_init();
    return hq_cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}
#else
int hq_cpu_has_avx2(void) { return 0; }
int hq_cpu_has_avx512(void) { return 0; }
int hq_cpu_has_avx512bf16(void) { return 0; }
#endif

static volatile int isa_chosen = -1; /* -1: not yet decided */

static int isa_supported(hq_isa isa) {
    switch (isa) {
    case HQ_ISA_SCALAR: return 1;
    case HQ_ISA_AVX2: return hq_cpu_has_avx2();
    case HQ_ISA_AVX512: return hq_cpu_has_avx512();
    }
    return 0;
}

static hq_isa best_isa(void) {
    if (hq_cpu_has_avx512()) return HQ_ISA_AVX512;
    if (hq_cpu_has_avx2()) return HQ_ISA_AVX2;
    return HQ_ISA_SCALAR;
}

hq_isa hq_get_isa(void) {
    int v = isa_chosen;
    if (v >= 0) return (hq_isa)v;
    hq_isa isa = best_isa();
    const char *env = getenv("HIF8QAT_ISA");
    /* An unknown or unsupported request falls back to the best path here; the Python
     * layer validates the variable at import and warns, so nothing is silent. */
    if (env && *env) {
        hq_isa want = isa;
        if (!strcmp(env, "scalar")) want = HQ_ISA_SCALAR;
        else if (!strcmp(env, "avx2")) want = HQ_ISA_AVX2;
        else if (!strcmp(env, "avx512")) want = HQ_ISA_AVX512;
        if (isa_supported(want)) isa = want;
    }
    isa_chosen = (int)isa;
    return isa;
}

int hq_set_isa(hq_isa isa) {
    if (!isa_supported(isa)) return -1;
    isa_chosen = (int)isa;
    return 0;
}

const char *hq_isa_name(hq_isa isa) {
    switch (isa) {
    case HQ_ISA_SCALAR: return "scalar";
    case HQ_ISA_AVX2: return "avx2";
    case HQ_ISA_AVX512: return "avx512";
    }
    return "unknown";
}

static volatile int num_threads = 0; /* 0: not yet read from the environment */

int hq_get_num_threads(void) {
    int n = num_threads;
    if (n > 0) return n;
#ifdef _OPENMP
    n = omp_get_max_threads(); /* honours OMP_NUM_THREADS, else all cores */
#else
    n = 1;
#endif
    if (n < 1) n = 1;
    num_threads = n;
    return n;
}

void hq_set_num_threads(int n) { num_threads = n < 1 ? 1 : n; }

int hq_threads_for(size_t work) {
    int n = hq_get_num_threads();
    size_t useful = work / ((size_t)1 << 16) + 1; /* ~64k elements per thread pays */
    if ((size_t)n > useful) n = (int)useful;
    return n < 1 ? 1 : n;
}
