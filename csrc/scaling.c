/* Delayed tensor scaling: the state machine of scaling.h. See shared/docs/delayed-scaling.md. */
#include "scaling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *hq_scaling_recipe_check(const hq_scaling_recipe *r) {
    if (r->window < 1 || r->window > HQ_SCALER_MAX_WINDOW)
        return "window must be an integer in [1, 2^20]";
    if (r->algo != HQ_AMAX_MAX && r->algo != HQ_AMAX_MOST_RECENT)
        return "algo must be 'max' or 'most_recent'";
    if (!isfinite(r->fmax) || !(r->fmax > 0.0f) || r->fmax > (float)HIF8_MAX)
        return "fmax must be finite, > 0 and <= 32768 (the largest HiF8 value)";
    if (!isfinite(r->margin) || !(r->margin >= 0.0f) || r->margin > HQ_SCALER_MAX_MARGIN)
        return "margin must be finite and in [0, 126]";
    if (r->clip != 0 && r->clip != 1) return "clip must be 0 or 1";
    if (r->ste != HQ_STE_MASKED && r->ste != HQ_STE_IDENTITY)
        return "ste must be 'masked' or 'identity'";
    return NULL;
}

float hq_margin_divisor(float margin) { return (float)exp2((double)margin); }

int hq_scaler_init(hq_scaler *s, const hq_scaling_recipe *r) {
    memset(s, 0, sizeof(*s));
    if (hq_scaling_recipe_check(r) != NULL) return HQ_SCALER_ERR_RECIPE;
    s->amax_history = (float *)calloc((size_t)r->window, sizeof(float));
    if (s->amax_history == NULL) return HQ_SCALER_ERR_NOMEM;
    s->recipe = *r;
    s->margin_divisor = hq_margin_divisor(r->margin);
    s->scale = 1.0f;
    s->scale_inv = 1.0f;
    return HQ_SCALER_OK;
}

void hq_scaler_free(hq_scaler *s) {
    free(s->amax_history);
    s->amax_history = NULL;
}

float hq_scale_from_amax(float amax_est, float fmax, float margin_divisor) {
    /* Each line is one binary32 operation (FLT_EVAL_METHOD 0 on x86-64/aarch64). */
    float scale = fmax / amax_est;
    scale = scale / margin_divisor;
    if (!(scale <= HQ_SCALE_MAX)) scale = HQ_SCALE_MAX; /* +inf (tiny amax) included */
    if (scale < HQ_SCALE_MIN) scale = HQ_SCALE_MIN;
    return scale;
}

int hq_scaler_needs_amax(const hq_scaler *s) { return s->n_valid == 0 && !s->frozen; }

float hq_scaler_scale_for_call(const hq_scaler *s, double call_amax) {
    if (s->n_valid > 0 || s->frozen) return s->scale;
    /* Current scaling on first use; the amax goes through float32 as it would in the ring. */
    float a = (float)call_amax;
    if (!(a > 0.0f) || !isfinite(a)) return 1.0f;
    return hq_scale_from_amax(a, s->recipe.fmax, s->margin_divisor);
}

/* The cast parameters for one call: clamp at fmax, or no clamp (saturation counts). */
static hif8_cast_params cast_params(const hq_scaler *s, float scale, double scale_inv,
                                    int rounding, uint64_t seed) {
    hif8_cast_params p;
    memset(&p, 0, sizeof(p));
    p.scale = (double)scale;
    p.scale_inv = scale_inv;
    p.clip = s->recipe.clip ? (double)s->recipe.fmax : 0.0;
    p.rounding = rounding;
    p.saturate = 1;
    p.seed = seed;
    p.index0 = 0;
    return p;
}

/* x_hat = decode(q) * scale_inv in the input's arithmetic (hif8-format.md): 1.0f/scale
 * for float32 input, 1.0/scale for float64. The scale itself is always a float32 value. */
#define DEFINE_CAST(SUFFIX, T)                                                              \
    int hq_scaler_cast_##SUFFIX(const hq_scaler *s, const T *x, size_t n, int rounding,     \
                                uint64_t seed, uint8_t *codes, T *values, uint8_t *mask,   \
                                hq_scaler_call *call) {                                    \
        if (s->frozen && s->n_valid == 0) return HQ_SCALER_ERR_FROZEN_EMPTY;               \
        float scale = s->scale;                                                            \
        if (hq_scaler_needs_amax(s)) {                                                     \
            int64_t nonfinite = 0;                                                         \
            double a = hif8_amax_##SUFFIX(x, n, &nonfinite);                               \
            scale = hq_scaler_scale_for_call(s, nonfinite > 0 ? INFINITY : a);             \
        }                                                                                  \
        hif8_cast_params p = cast_params(s, scale, (double)((T)1 / (T)scale), rounding,   \
                                         seed);                                            \
        uint8_t *cast_mask = s->recipe.ste == HQ_STE_MASKED ? mask : NULL;                 \
        memset(&call->stats, 0, sizeof(call->stats));                                      \
        hif8_cast_##SUFFIX(x, n, &p, codes, values, cast_mask, &call->stats);              \
        if (mask != NULL && cast_mask == NULL) memset(mask, 1, n);                         \
        call->scale = scale;                                                               \
        call->scale_inv = 1.0f / scale;                                                    \
        return HQ_SCALER_OK;                                                               \
    }

DEFINE_CAST(f32, float)
DEFINE_CAST(f64, double)

static void fold_amax(hq_scaler *s, float a) {
    if (a > s->staging_amax) s->staging_amax = a;
    if (a > s->total.amax) s->total.amax = a;
    s->step.amax = s->staging_amax;
}

static void add_counts(hq_scaling_counters *c, const hif8_stats *st) {
    c->n += st->n;
    c->clipped += st->clipped;
    c->zero_flushed += st->zero_flushed;
    c->nonfinite += st->nonfinite;
}

void hq_scaler_commit(hq_scaler *s, const hq_scaler_call *call) {
    if (s->frozen) return;
    const hif8_stats *st = &call->stats;
    fold_amax(s, st->nonfinite > 0 ? INFINITY : (float)st->amax);
    add_counts(&s->step, st);
    add_counts(&s->total, st);
    /* headroom of this call: how far its (finite) amax went past fmax at the scale used */
    if (st->n > 0) {
        double headroom = st->amax * (double)call->scale / (double)s->recipe.fmax;
        if (headroom > s->step.headroom) s->step.headroom = headroom;
        if (headroom > s->total.headroom) s->total.headroom = headroom;
    }
}

int hq_scaler_quantize_f32(hq_scaler *s, const float *x, size_t n, uint8_t *codes,
                           float *values, uint8_t *mask) {
    hq_scaler_call call;
    int rc = hq_scaler_cast_f32(s, x, n, HIF8_ROUND_NEAREST, 0, codes, values, mask, &call);
    if (rc == HQ_SCALER_OK) hq_scaler_commit(s, &call);
    return rc;
}

int hq_scaler_quantize_f64(hq_scaler *s, const double *x, size_t n, uint8_t *codes,
                           double *values, uint8_t *mask) {
    hq_scaler_call call;
    int rc = hq_scaler_cast_f64(s, x, n, HIF8_ROUND_NEAREST, 0, codes, values, mask, &call);
    if (rc == HQ_SCALER_OK) hq_scaler_commit(s, &call);
    return rc;
}

int hq_scaler_observe_amax(hq_scaler *s, double amax, int64_t n, int64_t nonfinite) {
    if (s->frozen) return HQ_SCALER_ERR_FROZEN;
    if (amax < 0.0 || n < 0 || nonfinite < 0) return HQ_SCALER_ERR_ARG;
    fold_amax(s, (nonfinite > 0 || isnan(amax)) ? INFINITY : (float)amax);
    s->step.n += n;
    s->total.n += n;
    s->step.nonfinite += nonfinite;
    s->total.nonfinite += nonfinite;
    return HQ_SCALER_OK;
}

int hq_scaler_observe_f32(hq_scaler *s, const float *x, size_t n) {
    if (s->frozen) return HQ_SCALER_ERR_FROZEN;
    int64_t nonfinite = 0;
    double a = hif8_amax_f32(x, n, &nonfinite);
    return hq_scaler_observe_amax(s, a, (int64_t)n, nonfinite);
}

int hq_scaler_observe_f64(hq_scaler *s, const double *x, size_t n) {
    if (s->frozen) return HQ_SCALER_ERR_FROZEN;
    int64_t nonfinite = 0;
    double a = hif8_amax_f64(x, n, &nonfinite);
    return hq_scaler_observe_amax(s, a, (int64_t)n, nonfinite);
}

int hq_scaler_record_amax(hq_scaler *s, double a) {
    if (s->frozen) return HQ_SCALER_ERR_FROZEN;
    if (a < 0.0) return HQ_SCALER_ERR_ARG;
    fold_amax(s, isnan(a) ? INFINITY : (float)a);
    return HQ_SCALER_OK;
}

float hq_scaler_amax_estimate(const hq_scaler *s) {
    if (s->n_valid == 0) return 0.0f;
    const int w = s->recipe.window;
    if (s->recipe.algo == HQ_AMAX_MOST_RECENT) return s->amax_history[(s->head - 1 + w) % w];
    float m = 0.0f;
    for (int i = 0; i < s->n_valid; i++)
        if (s->amax_history[i] > m) m = s->amax_history[i];
    /* when n_valid < window the filled entries are exactly [0, n_valid): see push() */
    return m;
}

void hq_scaler_recompute_scale(hq_scaler *s) {
    if (s->n_valid == 0) {
        s->scale = 1.0f;
    } else {
        s->scale = hq_scale_from_amax(hq_scaler_amax_estimate(s), s->recipe.fmax,
                                      s->margin_divisor);
    }
    s->scale_inv = 1.0f / s->scale;
}

/* The ring fills [0, window) in order, then overwrites the oldest entry at head. */
static void push(hq_scaler *s, float amax) {
    const int w = s->recipe.window;
    s->amax_history[s->head] = amax;
    s->head = (s->head + 1) % w;
    if (s->n_valid < w) s->n_valid++;
}

float hq_scaler_update(hq_scaler *s) {
    const float a = s->staging_amax;
    if (a == 0.0f) {
        /* the tensor did not run this step (or was all zeros): no change at all */
    } else if (!isfinite(a)) {
        /* keep the scale and the history; TransformerEngine would freeze it W steps */
        s->nonfinite_amax_events++;
    } else {
        push(s, a);
        hq_scaler_recompute_scale(s);
    }
    s->steps++;
    if (s->step.clipped > 0) s->saturation_events++;
    s->last_step = s->step;
    memset(&s->step, 0, sizeof(s->step));
    s->staging_amax = 0.0f;
    return s->scale;
}

void hq_scaler_history(const hq_scaler *s, float *out) {
    const int w = s->recipe.window;
    const int oldest = (s->head - s->n_valid + w) % w;
    for (int i = 0; i < s->n_valid; i++) out[i] = s->amax_history[(oldest + i) % w];
}

int hq_scaler_set_state(hq_scaler *s, const float *h, int n, float scale) {
    if (n < 0 || n > s->recipe.window) return HQ_SCALER_ERR_ARG;
    if (!isfinite(scale) || !(scale > 0.0f)) return HQ_SCALER_ERR_ARG;
    for (int i = 0; i < n; i++)
        if (!isfinite(h[i]) || !(h[i] > 0.0f)) return HQ_SCALER_ERR_ARG;
    memset(s->amax_history, 0, (size_t)s->recipe.window * sizeof(float));
    memcpy(s->amax_history, h, (size_t)n * sizeof(float));
    s->n_valid = n;
    s->head = n % s->recipe.window;
    s->scale = scale;
    s->scale_inv = 1.0f / scale;
    return HQ_SCALER_OK;
}
