/* Python bindings of ops.c (fused RMSNorm / RoPE): validation, GIL release. The callers
 * are the layer functions of hif8qat/model/llama.py, which use these for C-contiguous
 * float32 arrays and NumPy otherwise (float64 gradient checks). */
#include "py_common.h"
#include "ops.h"

#include <math.h>

/* A C-contiguous, aligned, native float32 array with `ndim` dimensions. */
static PyArrayObject *f32_array(PyObject *obj, const char *name, int ndim, int writeable) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a NumPy array, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s must be float32, got dtype %s", name,
                     PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-D, got %d dimension(s)", name, ndim,
                     PyArray_NDIM(a));
        return NULL;
    }
    int flags = NPY_ARRAY_CARRAY_RO | (writeable ? NPY_ARRAY_WRITEABLE : 0);
    if (!PyArray_CHKFLAGS(a, flags) || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be C-contiguous, aligned, native-endian%s float32 "
                     "(use np.ascontiguousarray)", name, writeable ? " and writeable" : "");
        return NULL;
    }
    return a;
}

static int same_dims(PyArrayObject *a, const char *an, PyArrayObject *b, const char *bn) {
    if (PyArray_NDIM(a) == PyArray_NDIM(b) &&
        PyArray_CompareLists(PyArray_DIMS(a), PyArray_DIMS(b), PyArray_NDIM(a)))
        return 0;
    PyErr_Format(PyExc_ValueError, "%s and %s must have the same shape", an, bn);
    return -1;
}

static PyObject *py_rmsnorm_forward(PyObject *self, PyObject *args) {
    PyObject *xo, *wo;
    double eps;
    if (!PyArg_ParseTuple(args, "OOd", &xo, &wo, &eps)) return NULL;
    PyArrayObject *x = f32_array(xo, "x", 2, 0), *w = x ? f32_array(wo, "weight", 1, 0) : NULL;
    if (w == NULL) return NULL;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1);
    if (PyArray_DIM(w, 0) != C) {
        PyErr_Format(PyExc_ValueError, "weight has %zd entries, x has %zd columns",
                     (Py_ssize_t)PyArray_DIM(w, 0), (Py_ssize_t)C);
        return NULL;
    }
    if (!isfinite(eps) || eps < 0) {
        PyErr_Format(PyExc_ValueError, "eps must be finite and >= 0, got %g", eps);
        return NULL;
    }
    npy_intp rdims[2] = {N, 1};
    PyObject *out = PyArray_SimpleNew(2, PyArray_DIMS(x), NPY_FLOAT32);
    PyObject *rstd = out ? PyArray_SimpleNew(2, rdims, NPY_FLOAT32) : NULL;
    if (rstd == NULL) {
        Py_XDECREF(out);
        return NULL;
    }
    if (N > 0 && C > 0) {
        Py_BEGIN_ALLOW_THREADS
        hq_rmsnorm_forward_f32((const float *)PyArray_DATA(x), (const float *)PyArray_DATA(w),
                               (float)eps, N, C, (float *)PyArray_DATA((PyArrayObject *)out),
                               (float *)PyArray_DATA((PyArrayObject *)rstd));
        Py_END_ALLOW_THREADS
    }
    return Py_BuildValue("(NN)", out, rstd);
}

static PyObject *py_rmsnorm_backward(PyObject *self, PyObject *args) {
    PyObject *doo, *xo, *wo, *ro, *dwo;
    int accumulate;
    if (!PyArg_ParseTuple(args, "OOOOOp", &doo, &xo, &wo, &ro, &dwo, &accumulate)) return NULL;
    PyArrayObject *d = f32_array(doo, "dout", 2, 0);
    PyArrayObject *x = d ? f32_array(xo, "x", 2, 0) : NULL;
    PyArrayObject *w = x ? f32_array(wo, "weight", 1, 0) : NULL;
    PyArrayObject *r = w ? f32_array(ro, "rstd", 2, 0) : NULL;
    PyArrayObject *dw = r ? f32_array(dwo, "dweight", 1, 1) : NULL;
    if (dw == NULL || same_dims(d, "dout", x, "x") < 0) return NULL;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1);
    if (PyArray_DIM(w, 0) != C || PyArray_DIM(dw, 0) != C || PyArray_DIM(r, 0) != N ||
        PyArray_DIM(r, 1) != 1) {
        PyErr_SetString(PyExc_ValueError,
                        "rmsnorm_backward: weight and dweight must be (C,), rstd (N, 1)");
        return NULL;
    }
    PyObject *dx = PyArray_SimpleNew(2, PyArray_DIMS(x), NPY_FLOAT32);
    if (dx == NULL) return NULL;
    Py_BEGIN_ALLOW_THREADS
    hq_rmsnorm_backward_f32((const float *)PyArray_DATA(d), (const float *)PyArray_DATA(x),
                            (const float *)PyArray_DATA(w), (const float *)PyArray_DATA(r),
                            N, C, (float *)PyArray_DATA((PyArrayObject *)dx),
                            (float *)PyArray_DATA(dw), accumulate);
    Py_END_ALLOW_THREADS
    return dx;
}

static PyObject *py_rope(PyObject *self, PyObject *args) {
    PyObject *xo, *co, *so;
    int sign;
    if (!PyArg_ParseTuple(args, "OOOi", &xo, &co, &so, &sign)) return NULL;
    PyArrayObject *x = f32_array(xo, "x", 4, 0);
    if (x == NULL) return NULL;
    if (!PyArray_Check(co) || (PyArray_NDIM((PyArrayObject *)co) != 2 &&
                               PyArray_NDIM((PyArrayObject *)co) != 3)) {
        PyErr_SetString(PyExc_ValueError, "cos must be a (T, D/2) or (B, T, D/2) array");
        return NULL;
    }
    int cnd = PyArray_NDIM((PyArrayObject *)co);
    PyArrayObject *c = f32_array(co, "cos", cnd, 0);
    PyArrayObject *s = c ? f32_array(so, "sin", cnd, 0) : NULL;
    if (s == NULL || same_dims(c, "cos", s, "sin") < 0) return NULL;
    npy_intp B = PyArray_DIM(x, 0), T = PyArray_DIM(x, 1), nh = PyArray_DIM(x, 2),
             D = PyArray_DIM(x, 3);
    npy_intp *cd = PyArray_DIMS(c);
    int ok = D % 2 == 0 && cd[cnd - 1] == D / 2 && cd[cnd - 2] == T && (cnd == 2 || cd[0] == B);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError,
                        "rope: x must be (B, T, nh, D) with D even and cos, sin (T, D/2) or "
                        "(B, T, D/2)");
        return NULL;
    }
    if (sign != 1 && sign != -1) {
        PyErr_SetString(PyExc_ValueError, "rope: sign must be -1 (forward) or +1 (backward)");
        return NULL;
    }
    PyObject *out = PyArray_SimpleNew(4, PyArray_DIMS(x), NPY_FLOAT32);
    if (out == NULL) return NULL;
    Py_BEGIN_ALLOW_THREADS
    hq_rope_f32((const float *)PyArray_DATA(x), (const float *)PyArray_DATA(c),
                (const float *)PyArray_DATA(s), B, T, nh, D, cnd == 3 ? T * (D / 2) : 0, sign,
                (float *)PyArray_DATA((PyArrayObject *)out));
    Py_END_ALLOW_THREADS
    return out;
}

/* A 2-D float32 array whose rows are contiguous (any row stride >= cols). */
static PyArrayObject *f32_rows(PyObject *obj, const char *name, int writeable,
                               int64_t *ld) {
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_FLOAT32 ||
        PyArray_NDIM((PyArrayObject *)obj) != 2) {
        PyErr_Format(PyExc_TypeError, "%s must be a 2-D float32 array", name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    npy_intp *st = PyArray_STRIDES(a), cols = PyArray_DIM(a, 1);
    if ((cols > 1 && st[1] != 4) || st[0] % 4 != 0 || st[0] / 4 < cols || !PyArray_ISALIGNED(a) ||
        !PyArray_ISNOTSWAPPED(a) || (writeable && !PyArray_ISWRITEABLE(a))) {
        PyErr_Format(PyExc_ValueError,
                     "%s must have contiguous rows (row stride >= columns), be aligned, "
                     "native-endian%s", name, writeable ? " and writeable" : "");
        return NULL;
    }
    *ld = PyArray_DIM(a, 0) > 1 ? st[0] / 4 : cols;
    return a;
}

static PyObject *py_softmax_rows(PyObject *self, PyObject *args) {
    PyObject *so, *bo;
    double scale;
    if (!PyArg_ParseTuple(args, "OOd", &so, &bo, &scale)) return NULL;
    int64_t lds, ldb = 0;
    PyArrayObject *s = f32_rows(so, "scores", 1, &lds), *b = NULL;
    if (s == NULL) return NULL;
    if (bo != Py_None) {
        b = f32_rows(bo, "bias", 0, &ldb);
        if (b == NULL || same_dims(s, "scores", b, "bias") < 0) return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    hq_softmax_rows_f32((float *)PyArray_DATA(s), PyArray_DIM(s, 0), PyArray_DIM(s, 1), lds,
                        b ? (const float *)PyArray_DATA(b) : NULL, ldb, (float)scale);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_swiglu_forward(PyObject *self, PyObject *args) {
    PyObject *go, *uo;
    if (!PyArg_ParseTuple(args, "OO", &go, &uo)) return NULL;
    PyArrayObject *g = f32_array(go, "g", 2, 0), *u = g ? f32_array(uo, "u", 2, 0) : NULL;
    if (u == NULL || same_dims(g, "g", u, "u") < 0) return NULL;
    PyObject *h = PyArray_SimpleNew(2, PyArray_DIMS(g), NPY_FLOAT32);
    if (h == NULL) return NULL;
    Py_BEGIN_ALLOW_THREADS
    hq_swiglu_forward_f32((const float *)PyArray_DATA(g), (const float *)PyArray_DATA(u),
                          PyArray_SIZE(g), (float *)PyArray_DATA((PyArrayObject *)h));
    Py_END_ALLOW_THREADS
    return h;
}

static PyObject *py_swiglu_backward(PyObject *self, PyObject *args) {
    PyObject *dho, *go, *uo;
    if (!PyArg_ParseTuple(args, "OOO", &dho, &go, &uo)) return NULL;
    PyArrayObject *dh = f32_array(dho, "dh", 2, 0);
    PyArrayObject *g = dh ? f32_array(go, "g", 2, 0) : NULL;
    PyArrayObject *u = g ? f32_array(uo, "u", 2, 0) : NULL;
    if (u == NULL || same_dims(g, "g", u, "u") < 0 || same_dims(g, "g", dh, "dh") < 0)
        return NULL;
    PyObject *dg = PyArray_SimpleNew(2, PyArray_DIMS(g), NPY_FLOAT32);
    PyObject *du = dg ? PyArray_SimpleNew(2, PyArray_DIMS(g), NPY_FLOAT32) : NULL;
    if (du == NULL) {
        Py_XDECREF(dg);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    hq_swiglu_backward_f32((const float *)PyArray_DATA(dh), (const float *)PyArray_DATA(g),
                           (const float *)PyArray_DATA(u), PyArray_SIZE(g),
                           (float *)PyArray_DATA((PyArrayObject *)dg),
                           (float *)PyArray_DATA((PyArrayObject *)du));
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NN)", dg, du);
}

static PyObject *py_expf(PyObject *self, PyObject *arg) {
    PyArrayObject *x = f32_array(arg, "x", 1, 0);
    if (x == NULL) return NULL;
    PyObject *y = PyArray_SimpleNew(1, PyArray_DIMS(x), NPY_FLOAT32);
    if (y == NULL) return NULL;
    const float *xs = (const float *)PyArray_DATA(x);
    float *ys = (float *)PyArray_DATA((PyArrayObject *)y);
    for (npy_intp i = 0; i < PyArray_DIM(x, 0); i++) ys[i] = hq_expf(xs[i]);
    return y;
}

PyMethodDef hq_ops_methods[] = {
    {"softmax_rows", py_softmax_rows, METH_VARARGS,
     "softmax_rows(scores, bias_or_None, scale): in place, rows = softmax(rows*scale + bias)."},
    {"swiglu_forward", py_swiglu_forward, METH_VARARGS, "swiglu_forward(g, u) -> h."},
    {"swiglu_backward", py_swiglu_backward, METH_VARARGS,
     "swiglu_backward(dh, g, u) -> (dg, du)."},
    {"ops_expf", py_expf, METH_O, "ops_expf(x) -> the float32 exp of ops.c (for tests)."},
    {"rmsnorm_forward", py_rmsnorm_forward, METH_VARARGS,
     "rmsnorm_forward(x, weight, eps) -> (out, rstd (N, 1)); float32, C-contiguous."},
    {"rmsnorm_backward", py_rmsnorm_backward, METH_VARARGS,
     "rmsnorm_backward(dout, x, weight, rstd, dweight, accumulate) -> dx; dweight in place."},
    {"rope", py_rope, METH_VARARGS,
     "rope(x, cos, sin, sign) -> out; sign -1 forward, +1 backward (the transpose)."},
    {NULL, NULL, 0, NULL},
};
