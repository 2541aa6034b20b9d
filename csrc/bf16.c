/* Bulk bfloat16 rounding (round_bf16). */
#include <stddef.h>
#include "bf16.h"
#include "cpu.h"

void bf16_round_array(const float *x, size_t n, float *out) {
    int nt = hq_threads_for(n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long long i = 0; i < (long long)n; i++) out[i] = round_bf16_f32(x[i]);
}
