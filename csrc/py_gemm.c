/* Python bindings for gemm.c (placeholder until that part lands). */
#include "py_common.h"

PyMethodDef hq_gemm_methods[] = {{NULL, NULL, 0, NULL}};
int hq_gemm_init(PyObject *module) { (void)module; return 0; }
