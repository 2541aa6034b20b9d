/* hif8qat._C: module definition only. The bindings live in py_codec.c, py_scaling.c
 * and py_gemm.c; the numerics in hif8.c, scaling.c and gemm.c know nothing of Python. */
#define HQ_MODULE_MAIN
#include "py_common.h"
#include "hif8.h"
#include <math.h>

int hq_check_positive_finite(const char *name, double v) {
    if (!isfinite(v) || !(v > 0.0)) {
        PyErr_Format(PyExc_ValueError, "%s must be finite and > 0, got %R", name,
                     PyFloat_FromDouble(v));
        return -1;
    }
    return 0;
}

extern PyMethodDef hq_ops_methods[]; /* py_ops.c: fused RMSNorm / RoPE */

static PyMethodDef *const tables[] = {hq_codec_methods, hq_scaling_methods, hq_gemm_methods,
                                      hq_ops_methods};
#define MAX_METHODS 128
static PyMethodDef all_methods[MAX_METHODS];

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_C", "hif8qat C core: HiF8 codec, delayed scaling, GEMM.", -1,
    all_methods,
};

PyMODINIT_FUNC PyInit__C(void) {
    size_t k = 0;
    for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++)
        for (PyMethodDef *m = tables[t]; m->ml_name != NULL; m++) {
            if (k + 1 >= MAX_METHODS) {
                PyErr_SetString(PyExc_RuntimeError, "hif8qat._C: too many methods");
                return NULL;
            }
            all_methods[k++] = *m;
        }
    all_methods[k] = (PyMethodDef){NULL, NULL, 0, NULL};
    import_array();
    hif8_init();
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    if (hq_codec_init(m) < 0 || hq_scaling_init(m) < 0 || hq_gemm_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
