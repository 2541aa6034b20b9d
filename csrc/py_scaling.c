/* Python binding of scaling.c: the extension type hif8qat._C.ScalerState.
 *
 * Glue only: argument checks, array allocation, GIL release around the data passes.
 * The public, documented class is hif8qat.scaling.DelayedScaler, which owns one
 * ScalerState and validates its arguments before they get here (the checks below are
 * the last line of defence, so a direct caller gets an exception, never a crash).
 */
#include "py_common.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "hif8.h"
#include "scaling.h"

typedef struct {
    PyObject_HEAD
    hq_scaler s;
    int ready; /* hq_scaler_init succeeded */
} ScalerStateObject;

static const char *algo_name(hq_amax_algo a) { return a == HQ_AMAX_MAX ? "max" : "most_recent"; }
static const char *ste_name(hq_ste t) { return t == HQ_STE_MASKED ? "masked" : "identity"; }

static int check_ready(ScalerStateObject *self) {
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "ScalerState is not initialised");
        return -1;
    }
    return 0;
}

/* ---- construction ---- */

static void ScalerState_dealloc(ScalerStateObject *self) {
    if (self->ready) hq_scaler_free(&self->s);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ScalerState_init(ScalerStateObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"window", "algo", "fmax", "margin", "clip", "ste", NULL};
    Py_ssize_t window = 64;
    const char *algo = "max", *ste = "masked";
    double fmax = 15.0, margin = 0.0;
    int clip = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nsddps", kwlist, &window, &algo, &fmax,
                                     &margin, &clip, &ste))
        return -1;
    hq_scaling_recipe r;
    memset(&r, 0, sizeof(r));
    if (window < 1 || window > HQ_SCALER_MAX_WINDOW) {
        PyErr_Format(PyExc_ValueError, "window must be an integer in [1, %d], got %zd",
                     HQ_SCALER_MAX_WINDOW, window);
        return -1;
    }
    r.window = (int)window;
    if (strcmp(algo, "max") == 0) r.algo = HQ_AMAX_MAX;
    else if (strcmp(algo, "most_recent") == 0) r.algo = HQ_AMAX_MOST_RECENT;
    else {
        PyErr_Format(PyExc_ValueError, "algo must be 'max' or 'most_recent', got '%s'", algo);
        return -1;
    }
    if (strcmp(ste, "masked") == 0) r.ste = HQ_STE_MASKED;
    else if (strcmp(ste, "identity") == 0) r.ste = HQ_STE_IDENTITY;
    else {
        PyErr_Format(PyExc_ValueError, "ste must be 'masked' or 'identity', got '%s'", ste);
        return -1;
    }
    r.fmax = (float)fmax;
    r.margin = (float)margin;
    r.clip = clip ? 1 : 0;
    const char *msg = hq_scaling_recipe_check(&r);
    if (msg != NULL || !isfinite(fmax) || !isfinite(margin)) {
        char buf[256];
        snprintf(buf, sizeof(buf), "%s (got window=%zd, fmax=%g, margin=%g)",
                 msg ? msg : "fmax and margin must be finite", window, fmax, margin);
        PyErr_SetString(PyExc_ValueError, buf);
        return -1;
    }
    if (self->ready) {
        hq_scaler_free(&self->s);
        self->ready = 0;
    }
    if (hq_scaler_init(&self->s, &r) != HQ_SCALER_OK) {
        PyErr_NoMemory();
        return -1;
    }
    self->ready = 1;
    return 0;
}

/* ---- arrays ---- */

/* x must be a native-order, aligned, C-contiguous float32/float64 ndarray. */
static int check_input(PyObject *obj, PyArrayObject **out) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "expected a numpy.ndarray of float32 or float64, got %s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int t = PyArray_TYPE(a);
    if (t != NPY_FLOAT32 && t != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError,
                     "expected a float32 or float64 array, got dtype %R; convert with "
                     "x.astype(np.float32)",
                     (PyObject *)PyArray_DESCR(a));
        return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_SetString(PyExc_ValueError,
                        "the array must be C-contiguous, aligned and in native byte order; "
                        "pass np.ascontiguousarray(x)");
        return -1;
    }
    *out = a;
    return 0;
}

static int raise_scaler_error(int rc) {
    switch (rc) {
    case HQ_SCALER_OK: return 0;
    case HQ_SCALER_ERR_FROZEN_EMPTY:
        PyErr_SetString(PyExc_RuntimeError,
                        "the scaler is frozen and has an empty amax history: calibrate first "
                        "(hq.calibrate or observe+update)");
        return -1;
    case HQ_SCALER_ERR_FROZEN:
        PyErr_SetString(PyExc_RuntimeError,
                        "the scaler is frozen (evaluation): set frozen=False to record amaxes");
        return -1;
    case HQ_SCALER_ERR_NOMEM: PyErr_NoMemory(); return -1;
    default:
        PyErr_SetString(PyExc_ValueError, "invalid argument to the scaler");
        return -1;
    }
}

/* cast(x, values=True, codes=False, mask=False, rounding=0, seed=0)
 *   -> (values | None, codes | None, mask | None, scale_used, scale_inv_used) */
static PyObject *ScalerState_cast(ScalerStateObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "values", "codes", "mask", "rounding", "seed", NULL};
    PyObject *xobj;
    int want_values = 1, want_codes = 0, want_mask = 0, rounding = HIF8_ROUND_NEAREST;
    unsigned long long seed = 0;
    if (check_ready(self) < 0) return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pppiK", kwlist, &xobj, &want_values,
                                     &want_codes, &want_mask, &rounding, &seed))
        return NULL;
    if (rounding != HIF8_ROUND_NEAREST && rounding != HIF8_ROUND_STOCHASTIC) {
        PyErr_Format(PyExc_ValueError, "rounding must be 0 (nearest) or 1 (stochastic), got %d",
                     rounding);
        return NULL;
    }
    PyArrayObject *x;
    if (check_input(xobj, &x) < 0) return NULL;
    const int is64 = PyArray_TYPE(x) == NPY_FLOAT64;
    const int nd = PyArray_NDIM(x);
    npy_intp *dims = PyArray_DIMS(x);
    const size_t n = (size_t)PyArray_SIZE(x);
    if (self->s.frozen && self->s.n_valid == 0) {
        raise_scaler_error(HQ_SCALER_ERR_FROZEN_EMPTY);
        return NULL;
    }

    PyArrayObject *values = NULL, *codes = NULL, *mask = NULL;
    if (want_values)
        values = (PyArrayObject *)PyArray_SimpleNew(nd, dims, is64 ? NPY_FLOAT64 : NPY_FLOAT32);
    if (want_codes) codes = (PyArrayObject *)PyArray_SimpleNew(nd, dims, NPY_UINT8);
    if (want_mask) mask = (PyArrayObject *)PyArray_SimpleNew(nd, dims, NPY_BOOL);
    if ((want_values && !values) || (want_codes && !codes) || (want_mask && !mask)) goto fail;

    /* The cast reads a snapshot, so the GIL can go; the commit happens with it held. */
    hq_scaler snapshot = self->s;
    hq_scaler_call call;
    int rc;
    uint8_t *cp = codes ? (uint8_t *)PyArray_DATA(codes) : NULL;
    uint8_t *mp = mask ? (uint8_t *)PyArray_DATA(mask) : NULL;
    Py_BEGIN_ALLOW_THREADS
    if (is64)
        rc = hq_scaler_cast_f64(&snapshot, (const double *)PyArray_DATA(x), n, rounding,
                                (uint64_t)seed, cp,
                                values ? (double *)PyArray_DATA(values) : NULL, mp, &call);
    else
        rc = hq_scaler_cast_f32(&snapshot, (const float *)PyArray_DATA(x), n, rounding,
                                (uint64_t)seed, cp,
                                values ? (float *)PyArray_DATA(values) : NULL, mp, &call);
    Py_END_ALLOW_THREADS
    if (raise_scaler_error(rc) < 0) goto fail;
    hq_scaler_commit(&self->s, &call);

    PyObject *none = Py_None;
    return Py_BuildValue("(NNNdd)", values ? (PyObject *)values : (Py_INCREF(none), none),
                         codes ? (PyObject *)codes : (Py_INCREF(none), none),
                         mask ? (PyObject *)mask : (Py_INCREF(none), none), (double)call.scale,
                         (double)call.scale_inv);
fail:
    Py_XDECREF(values);
    Py_XDECREF(codes);
    Py_XDECREF(mask);
    return NULL;
}

static PyObject *ScalerState_observe(ScalerStateObject *self, PyObject *xobj) {
    if (check_ready(self) < 0) return NULL;
    PyArrayObject *x;
    if (check_input(xobj, &x) < 0) return NULL;
    if (self->s.frozen) {
        raise_scaler_error(HQ_SCALER_ERR_FROZEN);
        return NULL;
    }
    const size_t n = (size_t)PyArray_SIZE(x);
    int64_t nonfinite = 0;
    double amax;
    Py_BEGIN_ALLOW_THREADS
    if (PyArray_TYPE(x) == NPY_FLOAT64)
        amax = hif8_amax_f64((const double *)PyArray_DATA(x), n, &nonfinite);
    else
        amax = hif8_amax_f32((const float *)PyArray_DATA(x), n, &nonfinite);
    Py_END_ALLOW_THREADS
    if (raise_scaler_error(hq_scaler_observe_amax(&self->s, amax, (int64_t)n, nonfinite)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *ScalerState_record_amax(ScalerStateObject *self, PyObject *arg) {
    if (check_ready(self) < 0) return NULL;
    double a = PyFloat_AsDouble(arg);
    if (a == -1.0 && PyErr_Occurred()) return NULL;
    if (a < 0.0) {
        PyErr_Format(PyExc_ValueError, "amax must be >= 0 (or +inf/NaN), got %R", arg);
        return NULL;
    }
    if (raise_scaler_error(hq_scaler_record_amax(&self->s, a)) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *ScalerState_update(ScalerStateObject *self, PyObject *noargs) {
    if (check_ready(self) < 0) return NULL;
    return PyFloat_FromDouble((double)hq_scaler_update(&self->s));
}

static PyObject *ScalerState_history(ScalerStateObject *self, PyObject *noargs) {
    if (check_ready(self) < 0) return NULL;
    npy_intp dim = self->s.n_valid;
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, &dim, NPY_FLOAT32);
    if (out == NULL) return NULL;
    hq_scaler_history(&self->s, (float *)PyArray_DATA(out));
    return (PyObject *)out;
}

/* set_state(history float32 1-D oldest first, scale) */
static PyObject *ScalerState_set_state(ScalerStateObject *self, PyObject *args) {
    PyObject *hobj;
    double scale;
    if (check_ready(self) < 0) return NULL;
    if (!PyArg_ParseTuple(args, "Od", &hobj, &scale)) return NULL;
    PyArrayObject *h = (PyArrayObject *)PyArray_FROMANY(hobj, NPY_FLOAT32, 1, 1,
                                                         NPY_ARRAY_IN_ARRAY);
    if (h == NULL) return NULL;
    npy_intp n = PyArray_DIM(h, 0);
    if (n > self->s.recipe.window) {
        PyErr_Format(PyExc_ValueError, "history has %zd entries, more than the window (%d)",
                     (Py_ssize_t)n, self->s.recipe.window);
        Py_DECREF(h);
        return NULL;
    }
    float fscale = (float)scale;
    int rc = hq_scaler_set_state(&self->s, (const float *)PyArray_DATA(h), (int)n, fscale);
    Py_DECREF(h);
    if (rc != HQ_SCALER_OK) {
        PyErr_SetString(PyExc_ValueError,
                        "history entries must be finite and > 0, and scale a finite float32 > 0");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *ScalerState_recompute_scale(ScalerStateObject *self, PyObject *noargs) {
    if (check_ready(self) < 0) return NULL;
    hq_scaler_recompute_scale(&self->s);
    return PyFloat_FromDouble((double)self->s.scale);
}

/* ---- counters ---- */

static hq_scaling_counters *counters_by_name(ScalerStateObject *self, const char *which) {
    if (strcmp(which, "step") == 0) return &self->s.step;
    if (strcmp(which, "last_step") == 0) return &self->s.last_step;
    if (strcmp(which, "total") == 0) return &self->s.total;
    PyErr_Format(PyExc_ValueError, "counters: which must be 'step', 'last_step' or 'total', "
                                   "got '%s'", which);
    return NULL;
}

static PyObject *ScalerState_counters(ScalerStateObject *self, PyObject *args) {
    const char *which;
    if (check_ready(self) < 0) return NULL;
    if (!PyArg_ParseTuple(args, "s", &which)) return NULL;
    hq_scaling_counters *c = counters_by_name(self, which);
    if (c == NULL) return NULL;
    return Py_BuildValue("{s:d,s:d,s:L,s:L,s:L,s:L}", "amax", (double)c->amax, "headroom",
                         c->headroom, "clipped", (long long)c->clipped, "zero_flushed",
                         (long long)c->zero_flushed, "nonfinite", (long long)c->nonfinite, "n",
                         (long long)c->n);
}

/* set_counters(which, amax, headroom, clipped, zero_flushed, nonfinite, n) */
static PyObject *ScalerState_set_counters(ScalerStateObject *self, PyObject *args) {
    const char *which;
    double amax, headroom;
    long long clipped, zero_flushed, nonfinite, n;
    if (check_ready(self) < 0) return NULL;
    if (!PyArg_ParseTuple(args, "sddLLLL", &which, &amax, &headroom, &clipped, &zero_flushed,
                          &nonfinite, &n))
        return NULL;
    hq_scaling_counters *c = counters_by_name(self, which);
    if (c == NULL) return NULL;
    if (!(amax >= 0.0) || !(headroom >= 0.0) || isnan(headroom) || clipped < 0 ||
        zero_flushed < 0 || nonfinite < 0 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "counters must be >= 0 (amax may be +inf)");
        return NULL;
    }
    c->amax = (float)amax;
    c->headroom = headroom;
    c->clipped = clipped;
    c->zero_flushed = zero_flushed;
    c->nonfinite = nonfinite;
    c->n = n;
    if (c == &self->s.step) self->s.staging_amax = c->amax;
    Py_RETURN_NONE;
}

/* set_events(steps, saturation_events, nonfinite_amax_events) */
static PyObject *ScalerState_set_events(ScalerStateObject *self, PyObject *args) {
    long long steps, sat, nonfinite;
    if (check_ready(self) < 0) return NULL;
    if (!PyArg_ParseTuple(args, "LLL", &steps, &sat, &nonfinite)) return NULL;
    if (steps < 0 || sat < 0 || nonfinite < 0) {
        PyErr_SetString(PyExc_ValueError, "event counters must be >= 0");
        return NULL;
    }
    self->s.steps = steps;
    self->s.saturation_events = sat;
    self->s.nonfinite_amax_events = nonfinite;
    Py_RETURN_NONE;
}

static PyMethodDef ScalerState_methods[] = {
    {"cast", (PyCFunction)(void (*)(void))ScalerState_cast, METH_VARARGS | METH_KEYWORDS,
     "cast(x, values=True, codes=False, mask=False, rounding=0, seed=0) -> (values, codes, "
     "mask, scale, scale_inv): fused scaled cast; records amax and counters unless frozen."},
    {"observe", (PyCFunction)ScalerState_observe, METH_O, "observe(x): record amax only."},
    {"record_amax", (PyCFunction)ScalerState_record_amax, METH_O,
     "record_amax(a): fold an amax computed elsewhere (NaN = +inf)."},
    {"update", (PyCFunction)ScalerState_update, METH_NOARGS, "update() -> new scale."},
    {"history", (PyCFunction)ScalerState_history, METH_NOARGS,
     "history() -> float32 copy, oldest first."},
    {"set_state", (PyCFunction)ScalerState_set_state, METH_VARARGS,
     "set_state(history, scale): restore the ring (oldest first) and the scale."},
    {"recompute_scale", (PyCFunction)ScalerState_recompute_scale, METH_NOARGS,
     "recompute_scale() -> scale from the current history (1.0 if empty)."},
    {"counters", (PyCFunction)ScalerState_counters, METH_VARARGS,
     "counters(which) -> dict; which: 'step', 'last_step' or 'total'."},
    {"set_counters", (PyCFunction)ScalerState_set_counters, METH_VARARGS,
     "set_counters(which, amax, headroom, clipped, zero_flushed, nonfinite, n)."},
    {"set_events", (PyCFunction)ScalerState_set_events, METH_VARARGS,
     "set_events(steps, saturation_events, nonfinite_amax_events)."},
    {NULL, NULL, 0, NULL},
};

/* ---- attributes ---- */

#define GETTER(NAME, EXPR)                                                            \
    static PyObject *get_##NAME(ScalerStateObject *self, void *closure) {             \
        if (check_ready(self) < 0) return NULL;                                       \
        return EXPR;                                                                  \
    }
GETTER(scale, PyFloat_FromDouble((double)self->s.scale))
GETTER(scale_inv, PyFloat_FromDouble((double)self->s.scale_inv))
GETTER(n_valid, PyLong_FromLong(self->s.n_valid))
GETTER(staging_amax, PyFloat_FromDouble((double)self->s.staging_amax))
GETTER(window, PyLong_FromLong(self->s.recipe.window))
GETTER(algo, PyUnicode_FromString(algo_name(self->s.recipe.algo)))
GETTER(fmax, PyFloat_FromDouble((double)self->s.recipe.fmax))
GETTER(margin, PyFloat_FromDouble((double)self->s.recipe.margin))
GETTER(clip, PyBool_FromLong(self->s.recipe.clip))
GETTER(ste, PyUnicode_FromString(ste_name(self->s.recipe.ste)))
GETTER(frozen, PyBool_FromLong(self->s.frozen))
GETTER(steps, PyLong_FromLongLong(self->s.steps))
GETTER(saturation_events, PyLong_FromLongLong(self->s.saturation_events))
GETTER(nonfinite_amax_events, PyLong_FromLongLong(self->s.nonfinite_amax_events))
GETTER(amax_estimate, PyFloat_FromDouble((double)hq_scaler_amax_estimate(&self->s)))

static int set_frozen(ScalerStateObject *self, PyObject *value, void *closure) {
    if (check_ready(self) < 0) return -1;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete frozen");
        return -1;
    }
    int v = PyObject_IsTrue(value);
    if (v < 0) return -1;
    self->s.frozen = v;
    return 0;
}

static PyGetSetDef ScalerState_getset[] = {
    {"scale", (getter)get_scale, NULL, "current scale (float32 value)", NULL},
    {"scale_inv", (getter)get_scale_inv, NULL, "1.0f / scale", NULL},
    {"n_valid", (getter)get_n_valid, NULL, "filled entries of the amax history", NULL},
    {"staging_amax", (getter)get_staging_amax, NULL, "running amax since the last update", NULL},
    {"window", (getter)get_window, NULL, NULL, NULL},
    {"algo", (getter)get_algo, NULL, NULL, NULL},
    {"fmax", (getter)get_fmax, NULL, NULL, NULL},
    {"margin", (getter)get_margin, NULL, NULL, NULL},
    {"clip", (getter)get_clip, NULL, NULL, NULL},
    {"ste", (getter)get_ste, NULL, NULL, NULL},
    {"frozen", (getter)get_frozen, (setter)set_frozen, "evaluation mode", NULL},
    {"steps", (getter)get_steps, NULL, NULL, NULL},
    {"saturation_events", (getter)get_saturation_events, NULL, NULL, NULL},
    {"nonfinite_amax_events", (getter)get_nonfinite_amax_events, NULL, NULL, NULL},
    {"amax_estimate", (getter)get_amax_estimate, NULL, "max (or newest) of the history", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ScalerStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hif8qat._C.ScalerState",
    .tp_basicsize = sizeof(ScalerStateObject),
    .tp_dealloc = (destructor)ScalerState_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Delayed-scaling state of one tensor (csrc/scaling.c); use "
              "hif8qat.DelayedScaler.",
    .tp_methods = ScalerState_methods,
    .tp_getset = ScalerState_getset,
    .tp_init = (initproc)ScalerState_init,
    .tp_new = PyType_GenericNew,
};

PyMethodDef hq_scaling_methods[] = {{NULL, NULL, 0, NULL}};

int hq_scaling_init(PyObject *module) {
    if (PyType_Ready(&ScalerStateType) < 0) return -1;
    Py_INCREF(&ScalerStateType);
    if (PyModule_AddObject(module, "ScalerState", (PyObject *)&ScalerStateType) < 0) {
        Py_DECREF(&ScalerStateType);
        return -1;
    }
    return 0;
}
