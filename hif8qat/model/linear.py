"""The one place a linear layer ``y = x · Wᵀ + b`` runs, in fp32, bf16 or hif8 precision.

Shapes: x is (N, C), weight is (OC, C) (the Hugging Face / PyTorch layout), bias is
(OC,) or None, y is (N, OC).

Precisions (see the paper's recipe in docs/paper.md):

* ``"fp32"`` — the reference: NumPy matmul in the model's dtype (float32, or float64
  for finite-difference gradient checks).
* ``"bf16"`` — ``hq.gemm`` on float32 operands, which rounds both to bfloat16 (RNE)
  and accumulates in fp32: the BF16 baseline. The backward rounds dY to bf16 too.
* ``"hif8"`` — W8A8: the weight and the input activation each go through their own
  ``DelayedScaler``; the forward is the **codes GEMM** on the HiF8 codes (true W8A8,
  not a float GEMM on fake-quantized values). Backward, with the straight-through
  estimator masked where the cast clipped:
      dX = bf16(dY) · Ŵ   masked by the input's STE mask
      dW = bf16(dY)ᵀ · X̂  masked by the weight's STE mask
  where Ŵ, X̂ are the same codes (decoded × scale_inv inside the GEMM).
  With output-gradient quantization (a ``g_scaler``, fmax 224 by default) dY is cast
  to HiF8 codes Ĝ as well, nearest or stochastic rounding, and both backward GEMMs run
  on codes × codes:
      dX = Ĝ · Ŵ    masked by the input's STE mask
      dW = Ĝᵀ · X̂   masked by the weight's STE mask
  (the bias gradient stays the sum of the unquantized dY, as in TransformerEngine).

Calibration (``calibrating=True`` in fp32/bf16 precision): the scalers *observe* the
weight and the input (the BF16 warm-up / PTQ calibration, delayed-scaling.md) without
casting anything; a ``g_scaler`` observes dY in the backward the same way, so
gradient quantization also starts from a full window. This module never calls
``scaler.update()``: the training loop does, once per optimizer step.
"""
from __future__ import annotations

import numpy as np

PRECISIONS = ("fp32", "bf16", "hif8")


def _gemm():
    try:
        from hif8qat.gemm import gemm
    except ImportError as e:  # the C GEMM is built with the extension
        raise ImportError(
            "bf16/hif8 precision needs hif8qat.gemm (the C extension): build it with "
            "`python setup.py build_ext --inplace`") from e
    return gemm


class LinearCache:
    """What a linear layer's backward needs from its forward (llm.c keeps these in acts)."""

    __slots__ = ("precision", "x", "weight", "x_codes", "x_scale_inv", "x_mask",
                 "w_codes", "w_scale_inv", "w_mask", "has_bias", "sequences",
                 "g_scaler", "calibrating")

    def __init__(self, precision, x, weight, has_bias, sequences=1):
        self.precision = precision
        self.g_scaler = None        # the output gradient's DelayedScaler (None: no cast)
        self.calibrating = False
        self.sequences = sequences
        self.x = x
        self.weight = weight
        self.has_bias = has_bias
        self.x_codes = self.w_codes = self.x_mask = self.w_mask = None
        self.x_scale_inv = self.w_scale_inv = 1.0


def _rowwise_matmul(a, b, sequences):
    """a (N, K) · b (K, M) as one matmul per sequence of N // sequences rows: BLAS picks
    kernels by the row count, so this keeps a row's result independent of how many
    sequences share the batch (hq.gemm is row-independent by construction)."""
    if sequences <= 1:
        return a @ b
    N, K = a.shape
    return np.matmul(a.reshape(sequences, N // sequences, K), b).reshape(N, -1)


def linear_forward(x, weight, bias=None, *, precision="fp32", w_scaler=None, x_scaler=None,
                   calibrating=False, sequences=1, g_scaler=None):
    """y = x · weightᵀ + bias.  x (N, C), weight (OC, C), bias (OC,) -> y (N, OC), cache.

    In hif8 precision ``w_scaler`` / ``x_scaler`` quantize the weight / the input; when
    ``calibrating`` in fp32/bf16 precision they observe them instead. ``g_scaler``
    (optional): the output gradient's scaler, used by ``linear_backward`` (hif8: casts
    dY; calibrating: observes it). ``sequences``: the rows are that many sequences of
    equal length (fp32 runs one matmul per sequence).
    """
    y, cache = _linear_forward(x, weight, bias, precision, w_scaler, x_scaler, calibrating,
                               sequences)
    cache.g_scaler = g_scaler
    cache.calibrating = bool(calibrating)
    return y, cache


def _linear_forward(x, weight, bias, precision, w_scaler, x_scaler, calibrating, sequences):
    if precision == "fp32":
        if calibrating:
            w_scaler.observe(weight)
            x_scaler.observe(x)
        y = _rowwise_matmul(x, weight.T, sequences)
        if bias is not None:
            y += bias
        return y, LinearCache("fp32", x, weight, bias is not None, sequences)

    if x.dtype != np.float32 or weight.dtype != np.float32:
        raise TypeError(f"{precision} precision runs on float32 tensors, got {x.dtype} input "
                        f"and {weight.dtype} weight (a float64 model is for fp32 gradient checks)")
    gemm = _gemm()
    if precision == "bf16":
        if calibrating:
            w_scaler.observe(weight)
            x_scaler.observe(x)
        # y = bf16(x) · bf16(W)ᵀ (+ b), fp32 accumulation
        y = gemm(x, weight, trans_b=True, bias=bias)
        return y, LinearCache("bf16", x, weight, bias is not None)

    if precision == "hif8":
        w_codes, w_scale_inv, w_mask = w_scaler.quantize_codes(weight)
        x_codes, x_scale_inv, x_mask = x_scaler.quantize_codes(x)
        # y = X̂ · Ŵᵀ (+ b) on the codes: value = decode(code) * scale_inv
        y = gemm(x_codes, w_codes, trans_b=True, a_scale_inv=x_scale_inv,
                 b_scale_inv=w_scale_inv, bias=bias)
        cache = LinearCache("hif8", None, weight, bias is not None)
        cache.x_codes, cache.x_scale_inv, cache.x_mask = x_codes, x_scale_inv, x_mask
        cache.w_codes, cache.w_scale_inv, cache.w_mask = w_codes, w_scale_inv, w_mask
        return y, cache

    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


_MASK64 = (1 << 64) - 1


def grad_cast_seed(seed: int, step: int, tensor: int, use: int = 0) -> int:
    """The stochastic-rounding seed of one output-gradient cast: a SplitMix64 hash of
    (run seed, optimizer step, tensor index, use within the step — the micro-batch).

    Every step and tensor draws fresh random bits, and the bits depend on nothing else
    (not the thread count, not whether the run was resumed). Returns an int in [0, 2**64).

    Example::

        >>> grad_cast_seed(0, 5, 3) != grad_cast_seed(0, 6, 3)
        True
    """
    h = _splitmix64(int(seed) & _MASK64)
    for v in (step, tensor, use):
        h = _splitmix64(h ^ _splitmix64((int(v) + 0x632BE59BD9B4E019) & _MASK64))
    return h


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def quantize_grad_output(dy, g_scaler, *, rounding="nearest", seed=0):
    """Ĝ = the HiF8 codes of dY (N, OC) float32 with the gradient scaler's delayed scale:
    (codes uint8 (N, OC), scale_inv). Records dY's amax and cast statistics in the scaler
    (unless it is frozen). The cast's STE mask is not used: dY is not a forward value.
    """
    codes, scale_inv, _ = g_scaler.quantize_codes(dy, rounding=rounding, seed=seed,
                                                  return_mask=False)
    return codes, scale_inv


def linear_backward(dy, cache, dweight, dbias=None, *, accumulate=False,
                    grad_rounding="nearest", grad_seed=0):
    """Backward of y = x · Wᵀ + b.  dy (N, OC) -> dx (N, C); dweight (OC, C) and dbias (OC,)
    are written (or added to, when ``accumulate``) in place.

    When the forward was given a ``g_scaler``: in hif8 precision dY is cast to HiF8
    codes (``grad_rounding`` "nearest" | "stochastic", the latter keyed by
    ``grad_seed``, see ``grad_cast_seed()``) and dX, dW are codes × codes GEMMs; when the
    forward was calibrating (fp32/bf16) the scaler observes dY and nothing is cast.
    """
    if cache.has_bias and dbias is not None:
        db = dy.sum(axis=0)                       # b: y[n, o] += b[o]
        if accumulate:
            dbias += db
        else:
            dbias[...] = db

    g_scaler = cache.g_scaler
    if g_scaler is not None and cache.calibrating and cache.precision != "hif8":
        g_scaler.observe(dy)                      # BF16 warm-up: fill the history only

    if cache.precision == "fp32":
        dx = _rowwise_matmul(dy, cache.weight, cache.sequences)   # y = x·Wᵀ -> dX = dY·W
        if accumulate:
            dweight += dy.T @ cache.x             # W:               dW = dYᵀ · X
        else:
            np.matmul(dy.T, cache.x, out=dweight)
        return dx

    gemm = _gemm()
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    if cache.precision == "bf16":
        dx = gemm(dy, cache.weight)                             # bf16(dY) · bf16(W)
        # dW = bf16(dY)ᵀ · bf16(X), written (or added) straight into the gradient buffer
        gemm(dy, cache.x, trans_a=True, out=dweight, accumulate=accumulate)
        return dx

    # hif8: the same codes as the forward, STE-masked where the cast clipped
    g, g_scale_inv = dy, 1.0                                             # bf16(dY) ...
    if g_scaler is not None:                                             # ... or Ĝ codes
        g, g_scale_inv = quantize_grad_output(dy, g_scaler, rounding=grad_rounding,
                                              seed=grad_seed)
    dx = gemm(g, cache.w_codes, a_scale_inv=g_scale_inv,                # dX = G · Ŵ
              b_scale_inv=cache.w_scale_inv)
    if cache.x_mask is not None:
        dx *= cache.x_mask
    dw = gemm(g, cache.x_codes, trans_a=True, a_scale_inv=g_scale_inv,  # dW = Gᵀ · X̂
              b_scale_inv=cache.x_scale_inv)
    if cache.w_mask is not None:
        dw *= cache.w_mask
    if accumulate:
        dweight += dw
    else:
        dweight[...] = dw
    return dx
