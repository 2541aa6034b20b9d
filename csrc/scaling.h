/* Delayed tensor scaling (DTS): the per-tensor scaler state machine, with no Python in it.
 *
 * Semantics: shared/docs/delayed-scaling.md. In short, one scaler per quantized tensor
 * role keeps a ring of the last W absolute maxima ("amax_history"). The scale used to
 * cast step t's tensor comes from amaxes observed before t:
 *
 *   quantize(x)   y = x*scale; clamp to +-fmax; q = encode(y); x_hat = decode(q)*scale_inv
 *                 and fold amax(|x|) into the staging amax (+inf if x holds NaN/Inf)
 *   update()      push the staging amax into the ring (unless 0 or not finite), then
 *                 scale = (fmax / amax_est) / 2^margin, amax_est = max(ring) or newest
 *
 * The cast itself is the codec's bulk cast (hif8_cast_f32/f64), so the scaler adds
 * nothing to the data pass except, on the very first use, one amax pass.
 *
 * Threading: an hq_scaler is not locked. The fused cast (hq_scaler_cast_*) only reads
 * the scaler, so a binding may run it without holding its own lock and then apply
 * hq_scaler_commit() under it; the other calls mutate and must be serialised.
 */
#ifndef HIF8QAT_SCALING_H
#define HIF8QAT_SCALING_H

#include <stddef.h>
#include <stdint.h>

#include "hif8.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { HQ_AMAX_MAX = 0, HQ_AMAX_MOST_RECENT = 1 } hq_amax_algo;
typedef enum { HQ_STE_MASKED = 0, HQ_STE_IDENTITY = 1 } hq_ste;

/* Limits on a recipe, chosen so every scale and 2^margin stay normal float32 numbers. */
#define HQ_SCALER_MAX_WINDOW (1 << 20)
#define HQ_SCALER_MAX_MARGIN 126.0
#define HQ_SCALE_MAX 0x1p126f /* an infinite or larger scale becomes this */
#define HQ_SCALE_MIN 0x1p-126f /* and a smaller one this, so scale_inv stays finite */

/* The recipe: plain values a user sets once (TransformerEngine's DelayedScaling). */
typedef struct {
    int window;        /* amax_history length W >= 1 */
    hq_amax_algo algo; /* max over the window, or the most recent amax */
    float fmax;        /* the window amax is mapped onto this: 15 (acts/weights), 224 (grads) */
    float margin;      /* scale divided by 2^margin */
    int clip;          /* clamp x*scale to +-fmax before encoding (1) or not (0) */
    hq_ste ste;        /* masked: gradient zero where clipped; identity: passes everywhere */
} hq_scaling_recipe;

/* Counters of one step (reset by update) or of the scaler's whole life. */
typedef struct {
    int64_t n;            /* elements seen (quantized or observed) */
    int64_t clipped;      /* elements whose code the clamp changed (saturated without clamp) */
    int64_t zero_flushed; /* finite non-zero inputs encoded as zero */
    int64_t nonfinite;    /* NaN or +-Inf inputs */
    float amax;           /* step: the staging amax; life: the largest staging amax seen */
    double headroom;      /* max over quantize calls of call_amax * scale_used / fmax */
} hq_scaling_counters;

typedef struct {
    hq_scaling_recipe recipe;
    float margin_divisor; /* 2^margin rounded to float32, computed once */
    float scale;          /* current multiplier, 1.0 until the first update that inserts */
    float scale_inv;      /* 1.0f / scale */
    float *amax_history;  /* ring of `window` entries; n_valid of them are filled */
    int head;             /* where the next amax goes */
    int n_valid;
    float staging_amax;   /* running max of |x| since the last update (+inf if non-finite) */
    hq_scaling_counters step, last_step, total;
    int64_t steps;                 /* update() calls */
    int64_t saturation_events;     /* steps with at least one clipped element */
    int64_t nonfinite_amax_events; /* updates whose staging amax was not finite */
    int frozen; /* evaluation: cast with the current scale, record nothing */
} hq_scaler;

/* What one fused cast used and saw; hq_scaler_commit folds it into the scaler. */
typedef struct {
    hif8_stats stats; /* stats.amax: max |x| over the finite, unscaled elements */
    float scale;      /* the scale this call used (current scaling on first use) */
    float scale_inv;  /* 1.0f / scale: what the GEMM multiplies the codes by */
} hq_scaler_call;

enum {
    HQ_SCALER_OK = 0,
    HQ_SCALER_ERR_NOMEM = -1,
    HQ_SCALER_ERR_RECIPE = -2,
    HQ_SCALER_ERR_FROZEN_EMPTY = -3, /* frozen with an empty history: calibrate first */
    HQ_SCALER_ERR_FROZEN = -4,       /* observe/record on a frozen scaler */
    HQ_SCALER_ERR_ARG = -5,          /* negative amax, history longer than the window ... */
};

/* NULL if the recipe is valid, else a message saying what is wrong. */
const char *hq_scaling_recipe_check(const hq_scaling_recipe *r);

/* Allocates the ring. Returns HQ_SCALER_OK, _ERR_RECIPE or _ERR_NOMEM. */
int hq_scaler_init(hq_scaler *s, const hq_scaling_recipe *r);
void hq_scaler_free(hq_scaler *s);

/* The update formula on one amax estimate (finite, > 0):
 *   scale = ((float)fmax / amax_est) / margin_divisor
 * two IEEE binary32 divisions, each correctly rounded (the build never uses
 * -ffast-math), margin_divisor = (float)2^margin, exact for integer margins. A result
 * that is infinite or above 2^126 becomes 2^126; below 2^-126 (only for amax near
 * FLT_MAX with a margin) becomes 2^-126, so scale_inv = 1.0f/scale is a normal float. */
float hq_scale_from_amax(float amax_est, float fmax, float margin_divisor);
float hq_margin_divisor(float margin);

/* The scale a quantize call would use for a tensor of amax `call_amax` (finite amax, or
 * +inf if the tensor holds NaN/Inf): the current scale once the history has an entry,
 * else current scaling (the formula on call_amax; 1.0 if it is 0 or not finite). */
float hq_scaler_scale_for_call(const hq_scaler *s, double call_amax);
/* True when the next quantize needs the tensor's own amax first (empty history). */
int hq_scaler_needs_amax(const hq_scaler *s);

/* The fused cast; reads s, writes nothing to it. codes/values/mask may each be NULL.
 * mask[i] = 1 where the straight-through gradient passes (all ones for ste identity).
 * Returns HQ_SCALER_OK or HQ_SCALER_ERR_FROZEN_EMPTY. */
int hq_scaler_cast_f32(const hq_scaler *s, const float *x, size_t n, int rounding,
                       uint64_t seed, uint8_t *codes, float *values, uint8_t *mask,
                       hq_scaler_call *call);
int hq_scaler_cast_f64(const hq_scaler *s, const double *x, size_t n, int rounding,
                       uint64_t seed, uint8_t *codes, double *values, uint8_t *mask,
                       hq_scaler_call *call);
/* Folds one call's amax and counters into the step (no-op when frozen). */
void hq_scaler_commit(hq_scaler *s, const hq_scaler_call *call);

/* cast + commit in one call, for C users. */
int hq_scaler_quantize_f32(hq_scaler *s, const float *x, size_t n, uint8_t *codes,
                           float *values, uint8_t *mask);
int hq_scaler_quantize_f64(hq_scaler *s, const double *x, size_t n, uint8_t *codes,
                           double *values, uint8_t *mask);

/* Calibrate mode: fold amax (and n, nonfinite) without casting. _ERR_FROZEN if frozen. */
int hq_scaler_observe_amax(hq_scaler *s, double amax, int64_t n, int64_t nonfinite);
int hq_scaler_observe_f32(hq_scaler *s, const float *x, size_t n);
int hq_scaler_observe_f64(hq_scaler *s, const double *x, size_t n);
/* Fold an amax computed elsewhere: a >= 0 or +inf; NaN is taken as +inf. Negative:
 * _ERR_ARG. The value is rounded to float32 (the history's type) first. */
int hq_scaler_record_amax(hq_scaler *s, double a);

/* Once per optimizer step. Returns the (possibly unchanged) scale. */
float hq_scaler_update(hq_scaler *s);

/* The amax estimate of the current history (0 if empty). */
float hq_scaler_amax_estimate(const hq_scaler *s);
/* scale from the current history (1.0 if empty); used after loading a checkpoint. */
void hq_scaler_recompute_scale(hq_scaler *s);

/* History oldest -> newest into out[0 .. n_valid). */
void hq_scaler_history(const hq_scaler *s, float *out);
/* Replace the history with h[0..n) (oldest first; n <= window; entries finite > 0) and
 * set scale (finite > 0; scale_inv = 1.0f/scale). _ERR_ARG if anything is off. */
int hq_scaler_set_state(hq_scaler *s, const float *h, int n, float scale);

#ifdef __cplusplus
}
#endif
#endif
