/* Python bindings of gemm.c: argument validation, GIL release, errors. No numerics here;
 * the documented API is hif8qat/gemm.py, which calls these.
 *
 * Operands are read in place through their strides (any 2-D view: transposed, sliced,
 * negative steps); only a float32 array whose strides are not whole elements, whose
 * data is misaligned or whose byte order is not native is copied first. `out` must be
 * a C-contiguous, native, writeable float32 (M, N) array not overlapping the inputs. */
#include "py_common.h"
#include "cpu.h"
#include "gemm.h"
#include "hif8.h"

#include <math.h>
#include <string.h>

#define PACKED_CAPSULE "hif8qat.PackedB"

static void packed_capsule_free(PyObject *cap) {
    hq_packed_b_free((hq_packed_b *)PyCapsule_GetPointer(cap, PACKED_CAPSULE));
}

/* One operand op(X) as (rows, cols) plus its view; *keep owns a reference. */
static int parse_operand(PyObject *obj, const char *name, int trans, hq_gemm_operand *op,
                         int64_t *rows, int64_t *cols, PyArrayObject **keep) {
    *keep = NULL;
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be a NumPy array (uint8 HiF8 codes or float32), got %s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *x = (PyArrayObject *)obj;
    int t = PyArray_TYPE(x);
    if (t != NPY_UINT8 && t != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be uint8 (HiF8 codes) or float32 (rounded to bf16), got dtype "
                     "%s: encode with hq.to_hif8 or convert with .astype(np.float32)",
                     name, PyArray_DESCR(x)->typeobj->tp_name);
        return -1;
    }
    if (PyArray_NDIM(x) != 2) {
        PyErr_Format(PyExc_ValueError, "%s must be 2-D, got %d dimension(s)", name,
                     PyArray_NDIM(x));
        return -1;
    }
    npy_intp isz = PyArray_ITEMSIZE(x);
    npy_intp *st = PyArray_STRIDES(x);
    if (st[0] % isz != 0 || st[1] % isz != 0 || !PyArray_ISALIGNED(x) ||
        !PyArray_ISNOTSWAPPED(x)) {
        x = (PyArrayObject *)PyArray_FROM_OTF(obj, t, NPY_ARRAY_CARRAY_RO);
        if (x == NULL) return -1;
        st = PyArray_STRIDES(x);
    } else {
        Py_INCREF(x);
    }
    *keep = x;
    int64_t r = PyArray_DIM(x, 0), c = PyArray_DIM(x, 1);
    int64_t rs = st[0] / isz, cs = st[1] / isz;
    op->data = PyArray_DATA(x);
    op->format = t == NPY_UINT8 ? HQ_GEMM_HIF8 : HQ_GEMM_F32;
    op->row_stride = trans ? cs : rs;
    op->col_stride = trans ? rs : cs;
    *rows = trans ? c : r;
    *cols = trans ? r : c;
    return 0;
}

/* A float32 scale_inv: finite and > 0 as given and after rounding to float32. */
static int parse_scale_inv(const char *name, double v, float *out) {
    if (hq_check_positive_finite(name, v) < 0) return -1;
    float f = (float)v;
    if (!isfinite(f) || !(f > 0.0f)) {
        PyErr_Format(PyExc_ValueError, "%s=%g is not a positive finite float32", name, v);
        return -1;
    }
    *out = f;
    return 0;
}

static void extent(PyArrayObject *a, const char **lo, const char **hi) {
    const char *p = PyArray_BYTES(a);
    *lo = *hi = p;
    for (int d = 0; d < PyArray_NDIM(a); d++) {
        npy_intp n = PyArray_DIM(a, d);
        if (n == 0) {
            *hi = *lo;
            return;
        }
        npy_intp s = PyArray_STRIDE(a, d) * (n - 1);
        if (s < 0) *lo += s;
        else *hi += s;
    }
    *hi += PyArray_ITEMSIZE(a);
}

static int may_overlap(PyArrayObject *a, PyArrayObject *b) {
    if (a == NULL || b == NULL) return 0;
    const char *alo, *ahi, *blo, *bhi;
    extent(a, &alo, &ahi);
    extent(b, &blo, &bhi);
    return alo < bhi && blo < ahi;
}

/* Validated pieces of one GEMM call. */
typedef struct {
    hq_gemm_operand a, b;
    const hq_packed_b *packed;
    int64_t M, N, K;
    float scale;
    PyArrayObject *a_keep, *b_keep, *bias, *out;
    int accumulate;
} gemm_call;

static void gemm_call_clear(gemm_call *g) {
    Py_CLEAR(g->a_keep);
    Py_CLEAR(g->b_keep);
    Py_CLEAR(g->bias);
    Py_CLEAR(g->out);
}

static int check_dims(int64_t M, int64_t N, int64_t K) {
    if (M == 0 || N == 0 || K == 0) {
        PyErr_Format(PyExc_ValueError,
                     "gemm needs non-empty operands, got M=%lld, K=%lld, N=%lld (op(a) is "
                     "(M,K), op(b) is (K,N)); skip the call for empty batches",
                     (long long)M, (long long)K, (long long)N);
        return -1;
    }
    int64_t mn, mnk;
    if (__builtin_mul_overflow(M, N, &mn) || __builtin_mul_overflow(mn, K, &mnk)) {
        PyErr_Format(PyExc_ValueError,
                     "gemm size M*N*K = %lld*%lld*%lld overflows int64; split the product",
                     (long long)M, (long long)N, (long long)K);
        return -1;
    }
    return 0;
}

/* Parse bias (None or (N,) float32) and out (None or (M,N) float32 C-contiguous). */
static int parse_bias_out(gemm_call *g, PyObject *bias_obj, PyObject *out_obj) {
    if (bias_obj != Py_None) {
        if (!PyArray_Check(bias_obj) || PyArray_TYPE((PyArrayObject *)bias_obj) != NPY_FLOAT32) {
            PyErr_Format(PyExc_TypeError, "bias must be a float32 NumPy array of shape (%lld,), got %s",
                         (long long)g->N,
                         PyArray_Check(bias_obj)
                             ? PyArray_DESCR((PyArrayObject *)bias_obj)->typeobj->tp_name
                             : Py_TYPE(bias_obj)->tp_name);
            return -1;
        }
        PyArrayObject *bb = (PyArrayObject *)bias_obj;
        if (PyArray_NDIM(bb) != 1 || PyArray_DIM(bb, 0) != g->N) {
            PyObject *shape = PyObject_GetAttrString(bias_obj, "shape");
            PyErr_Format(PyExc_ValueError, "bias must have shape (%lld,) (N), got %R",
                         (long long)g->N, shape);
            Py_XDECREF(shape);
            return -1;
        }
        g->bias = (PyArrayObject *)PyArray_FROM_OTF(bias_obj, NPY_FLOAT32, NPY_ARRAY_IN_ARRAY);
        if (g->bias == NULL) return -1;
    }
    if (out_obj == Py_None) {
        if (g->accumulate) {
            PyErr_SetString(PyExc_ValueError, "accumulate=True needs out= (the array to add into)");
            return -1;
        }
        npy_intp dims[2] = {(npy_intp)g->M, (npy_intp)g->N};
        g->out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
        return g->out ? 0 : -1;
    }
    if (!PyArray_Check(out_obj) || PyArray_TYPE((PyArrayObject *)out_obj) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "out must be a float32 NumPy array of shape (%lld, %lld)",
                     (long long)g->M, (long long)g->N);
        return -1;
    }
    PyArrayObject *o = (PyArrayObject *)out_obj;
    if (PyArray_NDIM(o) != 2 || PyArray_DIM(o, 0) != g->M || PyArray_DIM(o, 1) != g->N) {
        PyObject *shape = PyObject_GetAttrString(out_obj, "shape");
        PyErr_Format(PyExc_ValueError, "out must have shape (%lld, %lld) (M, N), got %R",
                     (long long)g->M, (long long)g->N, shape);
        Py_XDECREF(shape);
        return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(o) || !PyArray_ISALIGNED(o) || !PyArray_ISWRITEABLE(o) ||
        !PyArray_ISNOTSWAPPED(o)) {
        PyErr_SetString(PyExc_ValueError,
                        "out must be C-contiguous, aligned, native byte order and writeable "
                        "(pass a fresh array, or omit out= and copy the result)");
        return -1;
    }
    if (may_overlap(o, g->a_keep) || may_overlap(o, g->b_keep) || may_overlap(o, g->bias)) {
        PyErr_SetString(PyExc_ValueError, "out must not share memory with a, b or bias");
        return -1;
    }
    Py_INCREF(o);
    g->out = o;
    return 0;
}

static hq_packed_b *packed_from(PyObject *obj) {
    if (!PyCapsule_CheckExact(obj) || !PyCapsule_IsValid(obj, PACKED_CAPSULE)) return NULL;
    return (hq_packed_b *)PyCapsule_GetPointer(obj, PACKED_CAPSULE);
}

static int check_packed_usable(const hq_packed_b *p) {
    if (!hq_packed_b_usable(p)) {
        PyErr_Format(PyExc_ValueError,
                     "this PackedWeight was packed for the %s kernel but the current ISA path "
                     "uses the %s kernel: pack it again (hq.pack_weight) after hq.set_isa",
                     hq_packed_b_kernel(p), hq_gemm_kernel_name());
        return -1;
    }
    return 0;
}

/* Runs the call without the GIL; on success returns a new reference to out. */
static PyObject *run_gemm(gemm_call *g, int reference) {
    float *c = (float *)PyArray_DATA(g->out);
    const float *bias = g->bias ? (const float *)PyArray_DATA(g->bias) : NULL;
    int rc = HQ_GEMM_OK;
    Py_BEGIN_ALLOW_THREADS
    if (reference)
        hq_gemm_reference(g->M, g->N, g->K, &g->a, &g->b, g->scale, bias, c, g->N, g->accumulate);
    else
        rc = hq_gemm(g->M, g->N, g->K, &g->a, g->packed ? NULL : &g->b, g->packed, g->scale,
                     bias, c, g->N, g->accumulate);
    Py_END_ALLOW_THREADS
    if (rc == HQ_GEMM_ENOMEM) return PyErr_NoMemory();
    if (rc == HQ_GEMM_ELAYOUT) {
        PyErr_SetString(PyExc_ValueError, "PackedWeight does not match this product or kernel");
        return NULL;
    }
    if (rc != HQ_GEMM_OK) {
        PyErr_Format(PyExc_RuntimeError, "gemm failed (code %d)", rc);
        return NULL;
    }
    PyObject *r = (PyObject *)g->out;
    Py_INCREF(r);
    return r;
}

/* gemm(a, b, trans_a, trans_b, a_scale_inv, b_scale_inv, bias, out, accumulate[, reference])
 * b may be a packed capsule (then trans_b must be False). */
static PyObject *py_gemm(PyObject *self, PyObject *args) {
    PyObject *aobj, *bobj, *bias_obj, *out_obj;
    int trans_a, trans_b, accumulate, reference = 0;
    double a_si, b_si;
    if (!PyArg_ParseTuple(args, "OOppddOOp|p", &aobj, &bobj, &trans_a, &trans_b, &a_si, &b_si,
                          &bias_obj, &out_obj, &accumulate, &reference))
        return NULL;
    gemm_call g;
    memset(&g, 0, sizeof(g));
    g.accumulate = accumulate;
    float fa, fb;
    if (parse_scale_inv("a_scale_inv", a_si, &fa) < 0 || parse_scale_inv("b_scale_inv", b_si, &fb) < 0)
        return NULL;
    g.scale = fa * fb;
    if (!isfinite(g.scale) || !(g.scale > 0.0f)) {
        PyErr_Format(PyExc_ValueError,
                     "a_scale_inv * b_scale_inv = %g * %g is not a positive finite float32",
                     (double)fa, (double)fb);
        return NULL;
    }
    int64_t Ma, Ka, Kb, Nb;
    if (parse_operand(aobj, "a", trans_a, &g.a, &Ma, &Ka, &g.a_keep) < 0) goto fail;
    hq_packed_b *pb = packed_from(bobj);
    if (pb) {
        if (reference) {
            PyErr_SetString(PyExc_TypeError, "the reference kernel takes arrays, not a PackedWeight");
            goto fail;
        }
        if (trans_b) {
            PyErr_SetString(PyExc_ValueError,
                            "trans_b must be False with a PackedWeight: it already holds op(b)");
            goto fail;
        }
        if (check_packed_usable(pb) < 0) goto fail;
        g.packed = pb;
        Kb = hq_packed_b_k(pb);
        Nb = hq_packed_b_n(pb);
    } else if (parse_operand(bobj, "b", trans_b, &g.b, &Kb, &Nb, &g.b_keep) < 0) {
        goto fail;
    }
    if (Ka != Kb) {
        PyErr_Format(PyExc_ValueError,
                     "gemm inner dimensions differ: op(a) is (%lld, %lld) and op(b) is (%lld, "
                     "%lld) (trans_a=%s, trans_b=%s)",
                     (long long)Ma, (long long)Ka, (long long)Kb, (long long)Nb,
                     trans_a ? "True" : "False", trans_b ? "True" : "False");
        goto fail;
    }
    g.M = Ma;
    g.K = Ka;
    g.N = Nb;
    if (check_dims(g.M, g.N, g.K) < 0) goto fail;
    if (parse_bias_out(&g, bias_obj, out_obj) < 0) goto fail;
    PyObject *r = run_gemm(&g, reference);
    gemm_call_clear(&g);
    return r;
fail:
    gemm_call_clear(&g);
    return NULL;
}

/* qlinear(x (M,K) float32, w (N,K) uint8 codes or packed Wᵀ, w_scale_inv, x_scale, clip,
 *         bias, want_mask, want_stats) -> (y, mask|None, stats|None)
 * y = gemm(to_hif8(clamp(x*x_scale, ±clip)), w, trans_b) * (1/x_scale) * w_scale_inv + bias */
static PyObject *py_qlinear(PyObject *self, PyObject *args) {
    PyObject *xobj, *wobj, *bias_obj;
    double w_si, x_scale, clip;
    int want_mask, want_stats;
    if (!PyArg_ParseTuple(args, "OOdddOpp", &xobj, &wobj, &w_si, &x_scale, &clip, &bias_obj,
                          &want_mask, &want_stats))
        return NULL;
    gemm_call g;
    memset(&g, 0, sizeof(g));
    PyArrayObject *x = NULL, *mask = NULL;
    uint8_t *codes = NULL;
    float fw;
    if (parse_scale_inv("w_scale_inv", w_si, &fw) < 0) return NULL;
    if (hq_check_positive_finite("x_scale", x_scale) < 0) return NULL;
    float xs = (float)x_scale, xs_inv = 1.0f / xs;
    if (!isfinite(xs) || !(xs > 0.0f) || !isfinite(xs_inv) || !(xs_inv > 0.0f)) {
        PyErr_Format(PyExc_ValueError,
                     "x_scale=%g: it and 1/x_scale must be positive finite float32", x_scale);
        return NULL;
    }
    if (isnan(clip) || clip < 0.0) {
        PyErr_SetString(PyExc_ValueError, "clip must be > 0 (or None for no clamp)");
        return NULL;
    }
    g.scale = xs_inv * fw;
    if (!isfinite(g.scale) || !(g.scale > 0.0f)) {
        PyErr_Format(PyExc_ValueError, "(1/x_scale) * w_scale_inv is not a positive finite float32");
        return NULL;
    }
    if (!PyArray_Check(xobj) || PyArray_TYPE((PyArrayObject *)xobj) != NPY_FLOAT32) {
        PyErr_SetString(PyExc_TypeError, "x must be a float32 NumPy array");
        return NULL;
    }
    if (PyArray_NDIM((PyArrayObject *)xobj) != 2) {
        PyErr_SetString(PyExc_ValueError, "x must be 2-D here (hq.qlinear flattens leading dims)");
        return NULL;
    }
    x = (PyArrayObject *)PyArray_FROM_OTF(xobj, NPY_FLOAT32, NPY_ARRAY_IN_ARRAY);
    if (x == NULL) return NULL;
    int64_t M = PyArray_DIM(x, 0), K = PyArray_DIM(x, 1), Kw, N;
    hq_packed_b *pb = packed_from(wobj);
    if (pb) {
        if (check_packed_usable(pb) < 0) goto fail;
        g.packed = pb;
        Kw = hq_packed_b_k(pb);
        N = hq_packed_b_n(pb);
    } else {
        if (!PyArray_Check(wobj) || PyArray_TYPE((PyArrayObject *)wobj) != NPY_UINT8) {
            PyErr_SetString(PyExc_TypeError,
                            "w must be a uint8 array of HiF8 codes (N, K) or a PackedWeight "
                            "made with hq.pack_weight(w, scale_inv, trans_b=True)");
            goto fail;
        }
        if (parse_operand(wobj, "w", 1, &g.b, &Kw, &N, &g.b_keep) < 0) goto fail;
    }
    if (Kw != K) {
        PyErr_Format(PyExc_ValueError,
                     "qlinear: x has %lld features (last dim) but w has %lld (w is (N, K) = "
                     "(out_features, in_features))",
                     (long long)K, (long long)Kw);
        goto fail;
    }
    g.M = M;
    g.N = N;
    g.K = K;
    if (check_dims(M, N, K) < 0) goto fail;
    if (parse_bias_out(&g, bias_obj, Py_None) < 0) goto fail;
    if (want_mask) {
        mask = (PyArrayObject *)PyArray_SimpleNew(2, PyArray_DIMS(x), NPY_BOOL);
        if (mask == NULL) goto fail;
    }
    codes = (uint8_t *)malloc((size_t)(M * K));
    if (codes == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    g.a.data = codes;
    g.a.format = HQ_GEMM_HIF8;
    g.a.row_stride = K;
    g.a.col_stride = 1;
    hif8_cast_params p = {xs, xs_inv, clip, HIF8_ROUND_NEAREST, 1, 0, 0};
    hif8_stats st = {0, 0, 0, 0, 0.0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    hif8_cast_f32((const float *)PyArray_DATA(x), (size_t)(M * K), &p, codes, NULL,
                  mask ? (uint8_t *)PyArray_DATA(mask) : NULL, &st);
    rc = hq_gemm(M, N, K, &g.a, g.packed ? NULL : &g.b, g.packed, g.scale,
                 g.bias ? (const float *)PyArray_DATA(g.bias) : NULL,
                 (float *)PyArray_DATA(g.out), N, 0);
    Py_END_ALLOW_THREADS
    free(codes);
    codes = NULL;
    if (rc == HQ_GEMM_ENOMEM) {
        PyErr_NoMemory();
        goto fail;
    }
    if (rc != HQ_GEMM_OK) {
        PyErr_Format(PyExc_RuntimeError, "gemm failed (code %d)", rc);
        goto fail;
    }
    PyObject *stats = Py_None;
    Py_INCREF(stats);
    if (want_stats) {
        Py_DECREF(stats);
        stats = Py_BuildValue("(LdLLL)", (long long)st.n, st.amax, (long long)st.clipped,
                              (long long)st.zero_flushed, (long long)st.nonfinite);
        if (stats == NULL) goto fail;
    }
    PyObject *y = (PyObject *)g.out;
    Py_INCREF(y);
    gemm_call_clear(&g);
    Py_DECREF(x);
    PyObject *maskobj = mask ? (PyObject *)mask : (Py_INCREF(Py_None), Py_None);
    return Py_BuildValue("(NNN)", y, maskobj, stats);
fail:
    free(codes);
    Py_XDECREF(mask);
    Py_XDECREF(x);
    gemm_call_clear(&g);
    return NULL;
}

/* pack_b(b, trans_b) -> capsule holding op(b) packed for the current kernel */
static PyObject *py_pack_b(PyObject *self, PyObject *args) {
    PyObject *bobj;
    int trans_b;
    if (!PyArg_ParseTuple(args, "Op", &bobj, &trans_b)) return NULL;
    hq_gemm_operand b;
    int64_t K, N;
    PyArrayObject *keep = NULL;
    if (parse_operand(bobj, "b", trans_b, &b, &K, &N, &keep) < 0) return NULL;
    if (K == 0 || N == 0) {
        Py_DECREF(keep);
        PyErr_Format(PyExc_ValueError, "cannot pack an empty operand: op(b) is (%lld, %lld)",
                     (long long)K, (long long)N);
        return NULL;
    }
    hq_packed_b *p;
    Py_BEGIN_ALLOW_THREADS
    p = hq_pack_b(K, N, &b);
    Py_END_ALLOW_THREADS
    Py_DECREF(keep);
    if (p == NULL) return PyErr_NoMemory();
    PyObject *cap = PyCapsule_New(p, PACKED_CAPSULE, packed_capsule_free);
    if (cap == NULL) hq_packed_b_free(p);
    return cap;
}

/* packed_info(capsule) -> (K, N, "hif8"|"bf16", nbytes, kernel, usable) */
static PyObject *py_packed_info(PyObject *self, PyObject *arg) {
    hq_packed_b *p = packed_from(arg);
    if (p == NULL) {
        PyErr_SetString(PyExc_TypeError, "expected a packed-operand capsule");
        return NULL;
    }
    return Py_BuildValue("(LLsnsO)", (long long)hq_packed_b_k(p), (long long)hq_packed_b_n(p),
                         hq_packed_b_format(p) == HQ_GEMM_HIF8 ? "hif8" : "bf16",
                         (Py_ssize_t)hq_packed_b_nbytes(p), hq_packed_b_kernel(p),
                         hq_packed_b_usable(p) ? Py_True : Py_False);
}

static PyObject *py_gemm_kernel(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(hq_gemm_kernel_name());
}

/* gemm_force_kernel(name or None): tests pin one micro-kernel ("auto"/None resets). */
static PyObject *py_gemm_force_kernel(PyObject *self, PyObject *arg) {
    const char *name = NULL;
    if (arg != Py_None && (name = PyUnicode_AsUTF8(arg)) == NULL) return NULL;
    if (hq_gemm_force_kernel(name) < 0) {
        PyErr_Format(PyExc_ValueError,
                     "unknown GEMM kernel %R or not supported by this CPU: use one of "
                     "available_kernels() from hif8qat.gemm",
                     arg);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_gemm_kernels(PyObject *self, PyObject *noargs) {
    static const char *names[] = {"scalar", "avx2", "avx512f", "avx512bf16", "bf16emu"};
    PyObject *l = PyList_New(0);
    if (l == NULL) return NULL;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (hq_gemm_kernel_supported(names[i])) {
            PyObject *s = PyUnicode_FromString(names[i]);
            if (s == NULL || PyList_Append(l, s) < 0) {
                Py_XDECREF(s);
                Py_DECREF(l);
                return NULL;
            }
            Py_DECREF(s);
        }
    return l;
}

PyMethodDef hq_gemm_methods[] = {
    {"gemm", py_gemm, METH_VARARGS, "C = op(a) . op(b) on HiF8 codes / bf16-rounded float32."},
    {"qlinear", py_qlinear, METH_VARARGS, "HiF8-quantize x, then x_codes . w_codes^T."},
    {"pack_b", py_pack_b, METH_VARARGS, "Pre-pack op(b) for repeated gemm calls."},
    {"packed_info", py_packed_info, METH_O, "(K, N, format, nbytes, kernel, usable)."},
    {"gemm_kernel", py_gemm_kernel, METH_NOARGS, "The GEMM micro-kernel the ISA path uses."},
    {"gemm_force_kernel", py_gemm_force_kernel, METH_O, "Pin a GEMM micro-kernel (tests)."},
    {"gemm_kernels", py_gemm_kernels, METH_NOARGS, "GEMM micro-kernels this CPU runs."},
    {NULL, NULL, 0, NULL}};

int hq_gemm_init(PyObject *module) {
    (void)module;
    return 0;
}
