/* Python bindings of the codec (hif8.c), bf16 rounding and the CPU/threads controls.
 * Argument parsing, validation, GIL release; no numerics here. The public, documented
 * API is hif8qat/format.py, which calls these. */
#include "py_common.h"
#include "bf16.h"
#include "cpu.h"
#include "hif8.h"

#include <math.h>

/* A C-contiguous, aligned array of the given float type, or NULL with TypeError.
 * Other dtypes are refused rather than converted: the caller decides conversions. */
static PyArrayObject *float_input(PyObject *obj, const char *what, int *typenum) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a NumPy array", what);
        return NULL;
    }
    int t = PyArray_TYPE((PyArrayObject *)obj);
    if (t != NPY_FLOAT32 && t != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "%s must be float32 or float64, got %s", what,
                     PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name);
        return NULL;
    }
    if (typenum) *typenum = t;
    return (PyArrayObject *)PyArray_FROM_OTF(obj, t, NPY_ARRAY_IN_ARRAY);
}

static PyObject *stats_tuple(const hif8_stats *s) {
    return Py_BuildValue("(LdLLL)", (long long)s->n, s->amax, (long long)s->clipped,
                         (long long)s->zero_flushed, (long long)s->nonfinite);
}

/* cast(x, scale, scale_inv, clip, stochastic, saturate, seed, want_codes, want_values,
 *      want_mask) -> (codes|None, values|None, mask|None, (n, amax, clipped, zero_flushed, nonfinite)) */
static PyObject *py_cast(PyObject *self, PyObject *args) {
    PyObject *xobj;
    double scale, scale_inv, clip;
    int stochastic, saturate, want_codes, want_values, want_mask;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OdddppKppp", &xobj, &scale, &scale_inv, &clip, &stochastic,
                          &saturate, &seed, &want_codes, &want_values, &want_mask))
        return NULL;
    if (hq_check_positive_finite("scale", scale) < 0 ||
        hq_check_positive_finite("scale_inv", scale_inv) < 0)
        return NULL;
    if (isnan(clip) || clip < 0.0) {
        PyErr_SetString(PyExc_ValueError, "clip must be > 0 (or None for no clamp)");
        return NULL;
    }
    int t;
    PyArrayObject *x = float_input(xobj, "x", &t);
    if (!x) return NULL;
    int nd = PyArray_NDIM(x);
    npy_intp *dims = PyArray_DIMS(x);
    npy_intp n = PyArray_SIZE(x);
    PyArrayObject *codes = NULL, *values = NULL, *mask = NULL;
    if (want_codes && !(codes = (PyArrayObject *)PyArray_SimpleNew(nd, dims, NPY_UINT8))) goto fail;
    if (want_values && !(values = (PyArrayObject *)PyArray_SimpleNew(nd, dims, t))) goto fail;
    if (want_mask && !(mask = (PyArrayObject *)PyArray_SimpleNew(nd, dims, NPY_BOOL))) goto fail;
    hif8_cast_params p = {scale, scale_inv, clip, stochastic ? HIF8_ROUND_STOCHASTIC : HIF8_ROUND_NEAREST,
                          saturate, (uint64_t)seed, 0};
    hif8_stats st = {0, 0, 0, 0, 0.0};
    uint8_t *cp = codes ? (uint8_t *)PyArray_DATA(codes) : NULL;
    uint8_t *mp = mask ? (uint8_t *)PyArray_DATA(mask) : NULL;
    Py_BEGIN_ALLOW_THREADS
    if (t == NPY_FLOAT32)
        hif8_cast_f32((const float *)PyArray_DATA(x), (size_t)n, &p, cp,
                      values ? (float *)PyArray_DATA(values) : NULL, mp, &st);
    else
        hif8_cast_f64((const double *)PyArray_DATA(x), (size_t)n, &p, cp,
                      values ? (double *)PyArray_DATA(values) : NULL, mp, &st);
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    PyObject *stats = stats_tuple(&st);
    if (!stats) goto fail_nox;
#define OR_NONE(a) ((a) ? (PyObject *)(a) : (Py_INCREF(Py_None), Py_None))
    return Py_BuildValue("(NNNN)", OR_NONE(codes), OR_NONE(values), OR_NONE(mask), stats);
#undef OR_NONE
fail:
    Py_DECREF(x);
fail_nox:
    Py_XDECREF(codes);
    Py_XDECREF(values);
    Py_XDECREF(mask);
    return NULL;
}

/* decode(codes uint8 array, scale_inv, as_float64) -> float array of the same shape */
static PyObject *py_decode(PyObject *self, PyObject *args) {
    PyObject *cobj;
    double scale_inv;
    int f64;
    if (!PyArg_ParseTuple(args, "Odp", &cobj, &scale_inv, &f64)) return NULL;
    if (hq_check_positive_finite("scale_inv", scale_inv) < 0) return NULL;
    if (!PyArray_Check(cobj) || PyArray_TYPE((PyArrayObject *)cobj) != NPY_UINT8) {
        PyErr_SetString(PyExc_TypeError, "codes must be a uint8 NumPy array of HiF8 codes");
        return NULL;
    }
    PyArrayObject *c = (PyArrayObject *)PyArray_FROM_OTF(cobj, NPY_UINT8, NPY_ARRAY_IN_ARRAY);
    if (!c) return NULL;
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(PyArray_NDIM(c), PyArray_DIMS(c),
                                                            f64 ? NPY_FLOAT64 : NPY_FLOAT32);
    if (!out) {
        Py_DECREF(c);
        return NULL;
    }
    size_t n = (size_t)PyArray_SIZE(c);
    Py_BEGIN_ALLOW_THREADS
    if (f64) hif8_decode_f64((const uint8_t *)PyArray_DATA(c), n, scale_inv, (double *)PyArray_DATA(out));
    else hif8_decode_f32((const uint8_t *)PyArray_DATA(c), n, (float)scale_inv, (float *)PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    Py_DECREF(c);
    return (PyObject *)out;
}

static PyObject *py_round_bf16(PyObject *self, PyObject *arg) {
    if (!PyArray_Check(arg) || PyArray_TYPE((PyArrayObject *)arg) != NPY_FLOAT32) {
        PyErr_SetString(PyExc_TypeError, "round_bf16 takes a float32 array");
        return NULL;
    }
    PyArrayObject *x = (PyArrayObject *)PyArray_FROM_OTF(arg, NPY_FLOAT32, NPY_ARRAY_IN_ARRAY);
    if (!x) return NULL;
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32);
    if (!out) {
        Py_DECREF(x);
        return NULL;
    }
    size_t n = (size_t)PyArray_SIZE(x);
    Py_BEGIN_ALLOW_THREADS
    bf16_round_array((const float *)PyArray_DATA(x), n, (float *)PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    return (PyObject *)out;
}

/* amax(x) -> (max |x| over finite elements, number of non-finite elements) */
static PyObject *py_amax(PyObject *self, PyObject *arg) {
    int t;
    PyArrayObject *x = float_input(arg, "x", &t);
    if (!x) return NULL;
    size_t n = (size_t)PyArray_SIZE(x);
    double a;
    int64_t nf = 0;
    Py_BEGIN_ALLOW_THREADS
    a = t == NPY_FLOAT32 ? hif8_amax_f32((const float *)PyArray_DATA(x), n, &nf)
                         : hif8_amax_f64((const double *)PyArray_DATA(x), n, &nf);
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    return Py_BuildValue("(dL)", a, (long long)nf);
}

static PyObject *py_hif8_values(PyObject *self, PyObject *noargs) {
    npy_intp dim = 256;
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, &dim, NPY_FLOAT32);
    if (!out) return NULL;
    memcpy(PyArray_DATA(out), hif8_decode_table_f32, sizeof hif8_decode_table_f32);
    return (PyObject *)out;
}

static PyObject *py_clip_threshold(PyObject *self, PyObject *arg) {
    double c = PyFloat_AsDouble(arg);
    if (c == -1.0 && PyErr_Occurred()) return NULL;
    return PyFloat_FromDouble(hif8_clip_threshold(c));
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > 4096) {
        PyErr_Format(PyExc_ValueError, "number of threads must be in 1..4096, got %ld", n);
        return NULL;
    }
    hq_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    return PyLong_FromLong(hq_get_num_threads());
}

static PyObject *py_get_isa(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(hq_isa_name(hq_get_isa()));
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    hq_isa isa;
    if (!strcmp(name, "scalar")) isa = HQ_ISA_SCALAR;
    else if (!strcmp(name, "avx2")) isa = HQ_ISA_AVX2;
    else if (!strcmp(name, "avx512")) isa = HQ_ISA_AVX512;
    else {
        PyErr_Format(PyExc_ValueError, "unknown ISA %R: use 'scalar', 'avx2' or 'avx512'", arg);
        return NULL;
    }
    if (hq_set_isa(isa) < 0) {
        PyErr_Format(PyExc_ValueError, "this CPU does not support the %s path", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_cpu_features(PyObject *self, PyObject *noargs) {
    return Py_BuildValue("{s:O,s:O,s:O}", "avx2", hq_cpu_has_avx2() ? Py_True : Py_False,
                         "avx512", hq_cpu_has_avx512() ? Py_True : Py_False, "avx512bf16",
                         hq_cpu_has_avx512bf16() ? Py_True : Py_False);
}

PyMethodDef hq_codec_methods[] = {
    {"cast", py_cast, METH_VARARGS, "Fused scale, clamp, HiF8 encode/decode with statistics."},
    {"decode", py_decode, METH_VARARGS, "Decode HiF8 codes times scale_inv."},
    {"round_bf16", py_round_bf16, METH_O, "Round float32 to bfloat16 precision (RNE)."},
    {"amax", py_amax, METH_O, "(max |x| of finite elements, non-finite count)."},
    {"hif8_values", py_hif8_values, METH_NOARGS, "Decoded value of every code."},
    {"clip_threshold", py_clip_threshold, METH_O, "|y| at or above which a clamp changes the code."},
    {"set_num_threads", py_set_num_threads, METH_O, "Set the OpenMP thread count."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "The OpenMP thread count."},
    {"get_isa", py_get_isa, METH_NOARGS, "The instruction-set path in use."},
    {"set_isa", py_set_isa, METH_O, "Force an instruction-set path."},
    {"cpu_features", py_cpu_features, METH_NOARGS, "What this CPU supports."},
    {NULL, NULL, 0, NULL},
};

int hq_codec_init(PyObject *module) { (void)module; return 0; }
