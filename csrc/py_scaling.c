/* Python bindings for scaling.c (placeholder until that part lands). */
#include "py_common.h"

PyMethodDef hq_scaling_methods[] = {{NULL, NULL, 0, NULL}};
int hq_scaling_init(PyObject *module) { (void)module; return 0; }
