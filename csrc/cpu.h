/* CPU features, the instruction-set path in use, and the thread count. */
#ifndef HIF8QAT_CPU_H
#define HIF8QAT_CPU_H
#include <stddef.h>

typedef enum { HQ_ISA_SCALAR = 0, HQ_ISA_AVX2 = 1, HQ_ISA_AVX512 = 2 } hq_isa;

/* Feature bits of this CPU (and OS: the register state must be enabled). */
int hq_cpu_has_avx2(void);     /* AVX2 + FMA + F16C */
int hq_cpu_has_avx512(void);   /* AVX-512 F, BW, DQ, VL */
int hq_cpu_has_avx512bf16(void);

/* The path kernels use: the best the CPU has, unless HIF8QAT_ISA=scalar|avx2|avx512
 * (read at first use) or hq_set_isa() forced one. Forcing a path the CPU lacks fails. */
hq_isa hq_get_isa(void);
int hq_set_isa(hq_isa isa);   /* 0 on success, -1 if the CPU does not support it */
const char *hq_isa_name(hq_isa isa);

/* Threads used by the OpenMP kernels: OMP_NUM_THREADS if set, else all cores. */
int hq_get_num_threads(void);
void hq_set_num_threads(int n);
/* Threads worth using for a loop of `work` elements (1 below ~64k elements). */
int hq_threads_for(size_t work);
#endif
