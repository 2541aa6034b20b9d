/* Python bindings of the codec (hif8.c), bf16 rounding and the CPU/threads controls.
 * Argument parsing, validation, GIL release; no numerics here. The public, documented
 * API is hif8qat/format.py, which calls these. */
#include "py_common.h"
#include "bf16.h"
#include "cpu.h"
#include "hif8.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <pthread.h>
#include <sys/mman.h>
#endif

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

/* ---- Reuse of large cast outputs ----
 * A fresh multi-megabyte NumPy array lives on new pages that the kernel zeroes on first
 * touch, which costs about as much as the cast itself (64 MB: ~5-8 ms next to a ~9 ms
 * copy). QAT casts the same shapes every step, so cast outputs of >= 1 MiB come from a
 * NumPy memory handler that keeps up to REUSE_SLOTS freed blocks (REUSE_MAX_BYTES in
 * all) and gives one back to the next cast of the same rounded size. A kept block is
 * marked MADV_FREE: under memory pressure the kernel may still take its pages (they then
 * fault in zeroed, like fresh memory). The arrays own their data as usual; only cast
 * outputs use this handler, and only on Linux. */
#ifdef __linux__
#define REUSE_MIN ((size_t)1 << 20)
#define REUSE_SLOTS 4
#define REUSE_MAX_BYTES ((size_t)1 << 30)
#define REUSE_ALIGN ((size_t)1 << 21) /* whole huge pages */
#define REUSE_HEADER ((size_t)64)     /* block size in front of the data, 64-byte aligned data */

static struct {
    pthread_mutex_t lock;
    void *block[REUSE_SLOTS];
    size_t size[REUSE_SLOTS];
    size_t kept;
    unsigned next; /* slot to evict when all are full (round robin = oldest first) */
} reuse = {PTHREAD_MUTEX_INITIALIZER, {NULL}, {0}, 0, 0};

/* A block is [header: its size][data]; small blocks come from malloc, large ones are
 * 2 MiB aligned and rounded up to whole 2 MiB pages. */
static void *reuse_malloc(void *ctx, size_t nbytes) {
    (void)ctx;
    if (nbytes > ((size_t)-1 >> 2)) return NULL;
    size_t need = nbytes + REUSE_HEADER;
    size_t size = need < REUSE_MIN ? need : (need + REUSE_ALIGN - 1) & ~(REUSE_ALIGN - 1);
    void *b = NULL;
    if (size >= REUSE_MIN) {
        pthread_mutex_lock(&reuse.lock);
        for (int k = 0; k < REUSE_SLOTS && !b; k++)
            if (reuse.block[k] && reuse.size[k] == size) {
                b = reuse.block[k];
                reuse.block[k] = NULL;
                reuse.kept -= size;
            }
        pthread_mutex_unlock(&reuse.lock);
        if (!b) {
            if (posix_memalign(&b, REUSE_ALIGN, size) != 0) return NULL;
            madvise(b, size, MADV_HUGEPAGE); /* as NumPy's own allocator does */
        }
    } else if (!(b = malloc(size))) {
        return NULL;
    }
    memcpy(b, &size, sizeof size);
    return (char *)b + REUSE_HEADER;
}

static void *reuse_calloc(void *ctx, size_t nelem, size_t elsize) {
    if (elsize && nelem > ((size_t)-1 >> 2) / elsize) return NULL;
    void *p = reuse_malloc(ctx, nelem * elsize);
    if (p) memset(p, 0, nelem * elsize); /* a reused block holds old data */
    return p;
}

static void reuse_free(void *ctx, void *p, size_t nbytes) {
    (void)ctx, (void)nbytes; /* the header knows the block's size */
    if (!p) return;
    void *b = (char *)p - REUSE_HEADER;
    size_t size;
    memcpy(&size, b, sizeof size);
    if (size < REUSE_MIN || size > REUSE_MAX_BYTES) {
        free(b);
        return;
    }
#ifdef MADV_FREE
    madvise(b, size, MADV_FREE); /* before any other thread can take it back */
#endif
    void *evict = NULL;
    pthread_mutex_lock(&reuse.lock);
    int slot = -1;
    for (int k = 0; k < REUSE_SLOTS && slot < 0; k++)
        if (!reuse.block[k]) slot = k;
    if (slot < 0) {
        slot = (int)(reuse.next++ % REUSE_SLOTS);
        evict = reuse.block[slot];
        reuse.kept -= reuse.size[slot];
        reuse.block[slot] = NULL;
    }
    if (reuse.kept + size <= REUSE_MAX_BYTES) {
        reuse.block[slot] = b, reuse.size[slot] = size, reuse.kept += size;
        b = NULL;
    }
    pthread_mutex_unlock(&reuse.lock);
    free(evict);
    free(b);
}

static void *reuse_realloc(void *ctx, void *p, size_t nbytes) {
    if (!p) return reuse_malloc(ctx, nbytes);
    size_t old;
    memcpy(&old, (char *)p - REUSE_HEADER, sizeof old);
    void *q = reuse_malloc(ctx, nbytes);
    if (!q) return NULL;
    size_t keep = old - REUSE_HEADER < nbytes ? old - REUSE_HEADER : nbytes;
    memcpy(q, p, keep);
    reuse_free(ctx, p, 0);
    return q;
}

static PyDataMem_Handler reuse_handler = {
    "hif8qat_reuse_large_outputs", 1,
    {NULL, reuse_malloc, reuse_calloc, reuse_realloc, reuse_free}};
static PyObject *reuse_handler_capsule; /* made by hq_codec_init */
#endif

/* A new C-contiguous array for a cast's output: large ones from the reuse handler. */
static PyArrayObject *new_output(int nd, npy_intp *dims, int typenum) {
#ifdef __linux__
    npy_intp n = 1;
    for (int k = 0; k < nd; k++) n *= dims[k];
    size_t elsize = typenum == NPY_FLOAT64 ? 8 : typenum == NPY_FLOAT32 ? 4 : 1;
    if (reuse_handler_capsule && (size_t)n * elsize >= REUSE_MIN) {
        PyObject *before = PyDataMem_SetHandler(reuse_handler_capsule);
        if (!before) return NULL;
        PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(nd, dims, typenum);
        PyObject *ours = PyDataMem_SetHandler(before);
        Py_DECREF(before);
        if (!ours) {
            Py_XDECREF(a);
            return NULL;
        }
        Py_DECREF(ours);
        return a;
    }
#endif
    return (PyArrayObject *)PyArray_SimpleNew(nd, dims, typenum);
}

/* cast(x, scale, scale_inv, clip, stochastic, saturate, seed, want_codes, want_values,
 *      want_mask[, want_stats=True]) -> (codes|None, values|None, mask|None,
 *      (n, amax, clipped, zero_flushed, nonfinite) or None without want_stats) */
static PyObject *py_cast(PyObject *self, PyObject *args) {
    PyObject *xobj;
    double scale, scale_inv, clip;
    int stochastic, saturate, want_codes, want_values, want_mask, want_stats = 1;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OdddppKppp|p", &xobj, &scale, &scale_inv, &clip, &stochastic,
                          &saturate, &seed, &want_codes, &want_values, &want_mask, &want_stats))
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
    if (want_codes && !(codes = new_output(nd, dims, NPY_UINT8))) goto fail;
    if (want_values && !(values = new_output(nd, dims, t))) goto fail;
    if (want_mask && !(mask = new_output(nd, dims, NPY_BOOL))) goto fail;
    hif8_cast_params p = {scale, scale_inv, clip, stochastic ? HIF8_ROUND_STOCHASTIC : HIF8_ROUND_NEAREST,
                          saturate, (uint64_t)seed, 0};
    hif8_stats st = {0, 0, 0, 0, 0.0};
    uint8_t *cp = codes ? (uint8_t *)PyArray_DATA(codes) : NULL;
    uint8_t *mp = mask ? (uint8_t *)PyArray_DATA(mask) : NULL;
    Py_BEGIN_ALLOW_THREADS
    if (t == NPY_FLOAT32)
        hif8_cast_f32((const float *)PyArray_DATA(x), (size_t)n, &p, cp,
                      values ? (float *)PyArray_DATA(values) : NULL, mp, want_stats ? &st : NULL);
    else
        hif8_cast_f64((const double *)PyArray_DATA(x), (size_t)n, &p, cp,
                      values ? (double *)PyArray_DATA(values) : NULL, mp, want_stats ? &st : NULL);
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    PyObject *stats = want_stats ? stats_tuple(&st) : (Py_INCREF(Py_None), Py_None);
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
    PyArrayObject *out = new_output(PyArray_NDIM(c), PyArray_DIMS(c), f64 ? NPY_FLOAT64 : NPY_FLOAT32);
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

int hq_codec_init(PyObject *module) {
    (void)module;
#ifdef __linux__
    reuse_handler_capsule = PyCapsule_New(&reuse_handler, "mem_handler", NULL);
    if (!reuse_handler_capsule) return -1;
#endif
    return 0;
}
