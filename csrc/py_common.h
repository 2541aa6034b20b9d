/* Shared by the CPython/NumPy binding files (py_*.c) and module.c.
 * Each binding file exports a NULL-terminated method table and an init hook;
 * module.c stitches them into the one extension module hif8qat._C. */
#ifndef HIF8QAT_PY_COMMON_H
#define HIF8QAT_PY_COMMON_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define PY_ARRAY_UNIQUE_SYMBOL hif8qat_ARRAY_API
#ifndef HQ_MODULE_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

extern PyMethodDef hq_codec_methods[];
extern PyMethodDef hq_scaling_methods[];
extern PyMethodDef hq_gemm_methods[];
int hq_codec_init(PyObject *module);
int hq_scaling_init(PyObject *module);
int hq_gemm_init(PyObject *module);

/* Parse a "scale"-like double: finite and > 0, else ValueError naming it. */
int hq_check_positive_finite(const char *name, double v);
#endif
