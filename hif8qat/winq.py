"""WinQ: weight interpolation towards the quantization grid, and noise-injected gradients.

WinQ (arXiv 2605.17471) speeds up QAT near saddle points with two moves; only its
abstract is public here, so the details below are this project's choices:

1. **Reset** (every ``winq_reset_every`` optimizer steps of the QAT phase, after the
   update): every quantized weight moves part of the way to its quantized value,

       w ← (1 − α)·w + α·Q(w),     Q(w) = HiF8 fake-quant of w with its scaler's scale

   Q uses the weight's DelayedScaler exactly as the next forward will: its current
   ``scale`` (margin included), clamped to ±fmax when the recipe clips. The blend is
   computed in float64 and rounded once to the weights' float32, so it is exactly
   reproducible (α = 1 gives Q(w) exactly, α = 0 leaves w untouched). Only the
   quantized tensors (the q/k/v/o/gate/up/down projection weights) move; embeddings,
   norms and biases are never touched, and the scalers' states are not changed.
2. **Noise-injected gradient**: the step's gradient is evaluated at w + ε with
   ε ~ N(0, (noise_std · RMS(w))²) drawn independently per quantized weight tensor
   from the run's seeded generator (one draw per optimizer step, shared by its
   micro-batches); the clean weights are then copied back (bit for bit) before the
   optimizer update, so the noise only changes where the gradient is measured. This
   penalises sharp directions (E[L(w + ε)] ≈ L(w) + ½ σ² tr H) — the Hessian
   regularisation the paper describes.

Example::

    import hif8qat as hq
    from hif8qat.winq import winq_reset, weight_noise
    moved = winq_reset(model, alpha=0.5)            # after scalers.update()
    with weight_noise(model, std=0.05, rng=rng):    # gradient at w + eps
        model.forward(x, y); model.backward()
    # weights are the clean ones again here; grads_flat holds the noisy gradient
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

__all__ = ["quantized_weight_names", "quantized_weight", "winq_reset", "weight_noise"]


def quantized_weight_names(model) -> list:
    """Names of the parameters the HiF8 forward quantizes (the projection weights).

    A weight scaler is named after the parameter it quantizes ("<module>.weight"), so
    these are exactly the "*.weight" scaler names, in layer order.
    """
    return [n for n in model.scaler_names() if n.endswith(".weight")]


def quantized_weight(weight: np.ndarray, scaler) -> np.ndarray:
    """Q(w): the HiF8 fake-quantization of ``weight`` with ``scaler``'s current scale,
    clamped at ±fmax when the scaler's recipe clips. The scaler is not changed.

    RuntimeError if the scaler has never been updated (its scale is the placeholder
    1.0, not an estimate): run a step or calibrate first.
    """
    from hif8qat.format import fake_quant
    if scaler.n_valid == 0:
        raise RuntimeError(f"scaler {scaler.name!r} has an empty amax history, so it has no "
                           "scale for Q(w) yet: run a training step (or calibrate) first")
    return fake_quant(weight, scaler.scale, clip=scaler.fmax if scaler.clip else None)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)):
        raise TypeError(f"alpha must be a number in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


def winq_reset(model, alpha: float = 0.5) -> dict:
    """Move every quantized weight to (1 − α)·w + α·Q(w), in place; return diagnostics.

    Returns {"moved_rms": RMS over all quantized weights of the change, relative to
    their RMS, "tensors": how many were reset}. Call it after ``scalers.update()`` so
    Q uses the scale the next forward will use.

    Example::

        stats = winq_reset(model, alpha=0.5)
    """
    alpha = _check_alpha(alpha)
    views, scalers = model.param_views, model.scalers
    sq_change = sq_weight = 0.0
    names = quantized_weight_names(model)
    for name in names:
        w = views[name]
        q = quantized_weight(w, scalers[name]).astype(np.float64)
        w64 = w.astype(np.float64)
        new = ((1.0 - alpha) * w64 + alpha * q).astype(w.dtype)
        sq_change += float(np.sum((new.astype(np.float64) - w64) ** 2))
        sq_weight += float(np.sum(w64 * w64))
        w[...] = new
    return {"moved_rms": math.sqrt(sq_change / sq_weight) if sq_weight > 0 else 0.0,
            "tensors": len(names)}


@contextlib.contextmanager
def weight_noise(model, std: float, rng: np.random.Generator):
    """Within the block the quantized weights are w + ε, ε ~ N(0, (std·RMS(w))²) per
    tensor (drawn from ``rng`` in layer order); on exit the clean weights are copied
    back bit for bit. ``std`` = 0 draws nothing and changes nothing.

    Example::

        with weight_noise(model, std=0.05, rng=trainer.rng):
            model.forward(x, y); model.backward()
    """
    if isinstance(std, bool) or not isinstance(std, (int, float, np.floating)):
        raise TypeError(f"std must be a number >= 0, got {std!r}")
    std = float(std)
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"std must be finite and >= 0, got {std}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if std == 0.0:
        yield
        return
    views = model.param_views
    saved = []
    try:
        for name in quantized_weight_names(model):
            w = views[name]
            saved.append((w, w.copy()))
            rms = math.sqrt(float(np.mean(np.square(w, dtype=np.float64))))
            eps = rng.standard_normal(w.shape, dtype=np.float32)
            eps *= np.float32(std * rms)
            w += eps
        yield
    finally:
        for w, clean in saved:
            w[...] = clean
