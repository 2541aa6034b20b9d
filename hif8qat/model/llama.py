"""A Llama-family decoder with a hand-written backward, in the spirit of llm.c.

Every layer is a pair of plain functions, ``x_forward`` and ``x_backward``; each states
the shapes of its buffers. B = batch, T = sequence length, C = hidden_size,
H = query heads, KV = key/value heads, R = H // KV (queries per key/value head),
D = head_dim, I = intermediate_size, V = vocab_size, N = B*T.

The light work (norms, RoPE, softmax attention, SwiGLU, loss) is NumPy plus, for float32
models, fused C kernels (csrc/ops.c: RMSNorm, RoPE, row softmax, SwiGLU); attention is
split into (batch, head) pieces run on a small thread pool (``pieces.py``) whose results
do not depend on its size. Float64 models (the gradient checks) take the NumPy paths. Every
q/k/v/o/gate/up/down projection goes through ``linear.py``, the single place where the
fp32 / bf16 / hif8 precision of a linear layer is decided. Embedding, RMSNorm,
attention scores and the LM head stay in high precision (the model's dtype).

Parameters live in one flat buffer (``params_flat``) with named views in Hugging Face
order and names; gradients in a second buffer with the same layout (``grads_flat``),
so the optimizer, gradient clipping and checkpointing are single array operations.

Example::

    import numpy as np, hif8qat as hq
    cfg = hq.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = hq.LlamaModel.from_config(cfg, seed=0)
    tokens = np.random.default_rng(0).integers(0, 256, size=(2, 16))
    logits, loss = model.forward(tokens[:, :-1], targets=tokens[:, 1:])
    grads = model.backward()       # {"model.embed_tokens.weight": array, ...}
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .blas import deterministic_blas
from .config import LlamaConfig
from .linear import PRECISIONS, linear_backward, linear_forward
from .pieces import row_blocks, run_pieces

try:                    # the fused RMSNorm / RoPE kernels of the C extension (csrc/ops.c)
    from hif8qat import _C as _ops
    if not hasattr(_ops, "rope"):
        _ops = None
except ImportError:     # extension not built: the NumPy paths below
    _ops = None

IGNORE_INDEX = -100
INFERENCE_SCORE_BYTES = 256 << 20   # attention score buffer bound when no backward follows
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _fused(*arrays):
    """True when ops.c's fused float32 kernels can take these arrays as they are
    (C-contiguous float32; float64 models, e.g. gradient checks, stay on NumPy)."""
    return _ops is not None and all(a.dtype == np.float32 and a.flags.c_contiguous
                                    for a in arrays)


def _run_rows(fn, n_rows, row_elems):
    """fn(r0, r1) over the row blocks of pieces.row_blocks, on the thread pool."""
    blocks = row_blocks(n_rows, row_elems)
    run_pieces(lambda i: fn(*blocks[i]), len(blocks), work=n_rows * row_elems)


# ----------------------------------------------------------------------------- embedding
def embedding_forward(wte, tokens):
    """wte is (V, C), tokens is (B, T) int -> out (B, T, C)."""
    return wte[tokens]


def embedding_backward(dwte, dout, tokens):
    """Adds dout (B, T, C) into the rows of dwte (V, C) named by tokens (B, T)."""
    # out[b, t] = wte[tokens[b, t]]: a token seen twice gets both gradients
    np.add.at(dwte, tokens.reshape(-1), dout.reshape(-1, dout.shape[-1]))


# ----------------------------------------------------------------------------- RMSNorm
def rmsnorm_forward(x, weight, eps):
    """x is (N, C), weight is (C,) -> out (N, C), rstd (N, 1).

    out = x / sqrt(mean(x²) + eps) * weight, computed in x's dtype (fp32 or fp64).
    """
    if _fused(x, weight):                            # one pass in C (ops.c), OpenMP rows
        return _ops.rmsnorm_forward(x, weight, eps)
    ms = np.einsum("nc,nc->n", x, x)[:, None]        # sum of squares without an (N, C) temp
    ms /= x.shape[-1]
    ms += eps
    rstd = 1.0 / np.sqrt(ms)
    out = x * rstd
    out *= weight
    return out, rstd


def rmsnorm_backward(dout, x, weight, rstd, dweight, accumulate=False):
    """dout (N, C) -> dx (N, C); dweight (C,) written or accumulated in place."""
    if _fused(dout, x, weight, rstd, dweight):
        return _ops.rmsnorm_backward(dout, x, weight, rstd, dweight, bool(accumulate))
    xhat = x * rstd                                  # out = xhat * weight
    dw = np.einsum("nc,nc->c", dout, xhat)
    if accumulate:
        dweight += dw
    else:
        dweight[...] = dw
    dxhat = dout * weight
    # xhat = x * rstd(x):  dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    dot = np.mean(dxhat * xhat, axis=-1, keepdims=True)
    dxhat -= xhat * dot
    dxhat *= rstd
    return dxhat


# ----------------------------------------------------------------------------- RoPE
def rope_tables(T, D, theta, dtype):
    """cos, sin tables of shape (T, D/2) for positions 0..T-1.

    Hugging Face's convention: inv_freq[i] = theta ** (-2i / D), and ``rotate_half``
    pairs dimension i with i + D/2 (not adjacent pairs as in the RoFormer paper).
    """
    inv_freq = 1.0 / (theta ** (np.arange(0, D, 2, dtype=np.float64) / D))
    angles = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rope_forward(x, cos, sin):
    """x is (B, T, nh, D), cos/sin are (T, D/2) or per row (B, T, D/2) -> out (B, T, nh, D).

    out = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] with x = [x1, x2].
    """
    if x.dtype == np.float32 and x.ndim == 4 and _fused(cos, sin):
        return _ops.rope(np.ascontiguousarray(x), cos, sin, -1)   # one pass in C (ops.c)
    h = x.shape[-1] // 2
    c, s = cos[..., None, :], sin[..., None, :]      # (.., T, 1, D/2) broadcast over heads
    x1, x2 = x[..., :h], x[..., h:]
    out = np.empty_like(x)
    out[..., :h] = x1 * c - x2 * s
    out[..., h:] = x2 * c + x1 * s
    return out


def rope_backward(dout, cos, sin):
    """dout (B, T, nh, D) -> dx (B, T, nh, D); the rotation's transpose."""
    if dout.dtype == np.float32 and dout.ndim == 4 and _fused(cos, sin):
        return _ops.rope(np.ascontiguousarray(dout), cos, sin, +1)
    h = dout.shape[-1] // 2
    c, s = cos[..., None, :], sin[..., None, :]
    d1, d2 = dout[..., :h], dout[..., h:]
    dx = np.empty_like(dout)
    dx[..., :h] = d1 * c + d2 * s                   # out1 = x1 c - x2 s ; out2 = x2 c + x1 s
    dx[..., h:] = d2 * c - d1 * s
    return dx


# ----------------------------------------------------------------------------- attention
def causal_bias(T, R, dtype):
    """(R*T, T) additive mask: 0 where key t' <= query t, -inf above the diagonal.

    The R query heads that share one key/value head are stacked along the rows, so
    row r*T + t is query position t.
    """
    bias = np.triu(np.full((T, T), -np.inf, dtype=dtype), k=1)
    return np.tile(bias, (R, 1))


CAUSAL_BLOCK = 64      # query rows per block when causal attention skips masked key blocks
CAUSAL_BLOCK_BACKWARD = 128   # the backward's blocks (each costs ~10 NumPy calls)


def _causal_blocks(T, causal, block=CAUSAL_BLOCK):
    """[(i0, i1)] query row blocks; with causal, block i0:i1 needs keys 0:i1 only."""
    step = block if causal else T
    return [(i0, min(i0 + step, T)) for i0 in range(0, T, step)]


def attention_forward(q, k, v, bias, causal=False):
    """Causal grouped-query attention with the softmax in the model's dtype (fp32/fp64).

    q is (B, KV, R*T, D): the R query heads of each key/value head stacked along rows;
    k, v are (B, KV, T, D); bias broadcasts to (B, KV, R*T, T): (R*T, T) from
    ``causal_bias``, or per row (B, 1, R*T, T) for packed rows with their own masks.
    -> out (B, KV, R*T, D), probs (B, KV, R*T, T).
    Stacking the R query heads makes one (R*T, D)·(D, T) matmul per key/value head, and
    the backward's sums over the R heads sharing k, v come out of the matmuls for free.
    The (b, kv-head, query-head) pieces run on a thread pool (pieces.py): each is
    computed by one thread with the same code, so no bit depends on the pool size, and a
    piece's (T, T) scores stay in L2 through the softmax.
    ``causal=True`` promises that bias is -inf wherever key t' > query t (true of
    ``causal_bias`` and of any mask inside it): blocks of CAUSAL_BLOCK queries then
    compute keys 0..block end only and store exact zeros beyond (~40% fewer flops at
    T = 256; the softmax of a row is unchanged: the skipped terms are exact zeros).
    """
    B, KV, RT, D = q.shape
    T = k.shape[2]
    R = RT // T
    scale = q.dtype.type(1.0 / math.sqrt(D))
    bias = np.broadcast_to(bias, (B, KV, RT, T))
    probs = np.empty((B, KV, RT, T), dtype=q.dtype)
    out = np.empty((B, KV, RT, D), dtype=q.dtype)
    fused = _fused(q)
    blocks = _causal_blocks(T, causal)

    def piece(i):
        b, rest = divmod(i, KV * R)
        h, r = divmod(rest, R)
        rows = slice(r * T, (r + 1) * T)
        qp, kp, vp, op = q[b, h, rows], k[b, h], v[b, h], out[b, h, rows]
        sp, bpp = probs[b, h, rows], bias[b, h, rows]    # (T, T) scores, then probabilities
        for i0, i1 in blocks:
            kend = i1 if causal else T
            s, bp = sp[i0:i1, :kend], bpp[i0:i1, :kend]
            np.matmul(qp[i0:i1], kp[:kend].T, out=s)
            if fused:   # ops.c: scale, bias, max, exp, sum, normalize in one pass per row
                if bp.dtype != np.float32 or bp.strides[-1] != 4 or bp.strides[0] < 4 * kend:
                    bp = np.ascontiguousarray(bp, dtype=np.float32)
                _ops.softmax_rows(s, bp, float(scale))
            else:
                s *= scale
                s += bp
                # numerically stable softmax, in place: subtract the row max (the diagonal)
                s -= s.max(axis=-1, keepdims=True)
                np.exp(s, out=s)
                s *= 1.0 / s.sum(axis=-1, keepdims=True)
            sp[i0:i1, kend:] = 0.0
            np.matmul(s, vp[:kend], out=op[i0:i1])

    run_pieces(piece, B * KV * R, work=B * KV * RT * T)
    return out, probs


def attention_backward(dout, q, k, v, probs, causal=False):
    """dout (B, KV, R*T, D) -> dq (B, KV, R*T, D), dk, dv (B, KV, T, D).

    One piece per (b, kv-head) on the thread pool, as in attention_forward. With
    ``causal`` (probs exactly 0 above the diagonal, as attention_forward(causal=True)
    leaves them) each query head runs in blocks of CAUSAL_BLOCK_BACKWARD queries against
    the keys up to the block's end only.
    """
    B, KV, RT, D = q.shape
    T = k.shape[2]
    scale = q.dtype.type(1.0 / math.sqrt(D))
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    R = RT // T
    # (row slice, key end): whole pieces, or with causal each query head in blocks
    parts = ([(slice(None), T)] if not causal else
             [(slice(r * T + i0, r * T + i1), i1) for r in range(R)
              for i0, i1 in _causal_blocks(T, True, CAUSAL_BLOCK_BACKWARD)])

    def piece(i):
        b, h = divmod(i, KV)
        p, do, qb, kb, vb = probs[b, h], dout[b, h], q[b, h], k[b, h], v[b, h]
        dvb, dkb, dqb = dv[b, h], dk[b, h], dq[b, h]
        for n, (rows, kend) in enumerate(parts):
            pr, dor = p[rows, :kend], do[rows]
            part_dv = pr.T @ dor                         # out = P · v
            dp = dor @ vb[:kend].T                       # (rows, kend)
            # P = softmax(S):  dS = P * (dP - rowsum(dP * P))
            dp -= np.einsum("ij,ij->i", dp, pr)[:, None]
            dp *= pr
            # S = q·kᵀ * scale; the scale goes on the (rows, D) and (T, D) results
            np.matmul(dp, kb[:kend], out=dqb[rows])
            dqb[rows] *= scale
            part_dk = dp.T @ qb[rows]
            if n == 0:
                dvb[...] = 0.0
                dkb[...] = 0.0
            dvb[:kend] += part_dv
            dkb[:kend] += part_dk
        dkb *= scale

    run_pieces(piece, B * KV, work=B * KV * RT * T)
    return dq, dk, dv


# ----------------------------------------------------------------------------- SwiGLU
def swiglu_forward(g, u):
    """g, u are (N, I) (gate and up projections) -> h = silu(g) * u, (N, I).

    float32: one fused pass in C (ops.c, OpenMP). Else row blocks of 256 KiB on the
    thread pool, each NumPy pass staying in cache.
    """
    if _fused(g, u):
        return _ops.swiglu_forward(g, u)
    h = np.empty_like(g)

    def piece(r0, r1):
        hb = h[r0:r1]
        with np.errstate(over="ignore"):             # exp(-g) = inf for g << 0: silu -> -0
            np.negative(g[r0:r1], out=hb)
            np.exp(hb, out=hb)
            hb += 1.0
            np.divide(g[r0:r1], hb, out=hb)          # silu(g) = g / (1 + exp(-g))
        hb *= u[r0:r1]

    _run_rows(piece, g.shape[0], g.shape[-1])
    return h


def swiglu_backward(dh, g, u):
    """dh (N, I) -> dg, du (N, I). Fused in C or row blocks, as the forward."""
    if _fused(dh, g, u):
        return _ops.swiglu_backward(dh, g, u)
    dg, du = np.empty_like(g), np.empty_like(g)

    def piece(r0, r1):
        gb, dhb, dgb = g[r0:r1], dh[r0:r1], dg[r0:r1]
        with np.errstate(over="ignore"):
            sig = np.negative(gb)
            np.exp(sig, out=sig)
            sig += 1.0
            np.reciprocal(sig, out=sig)              # sigmoid(g), recomputed (saves memory)
        silu = gb * sig
        np.multiply(dhb, silu, out=du[r0:r1])        # h = silu(g) * u
        # d silu(g)/dg = sig * (1 + g * (1 - sig)) = sig + silu * (1 - sig)
        np.subtract(1.0, sig, out=dgb)
        dgb *= silu
        dgb += sig
        dgb *= dhb
        dgb *= u[r0:r1]

    _run_rows(piece, g.shape[0], g.shape[-1])
    return dg, du


# ----------------------------------------------------------------------------- LM head
def lm_head_forward(xf, weight, B):
    """xf is (N, C) with N = B*T, weight is (V, C) -> logits (N, V), in the model's dtype.

    One matmul per sequence, so that a row's logits never depend on how many sequences
    share the batch (BLAS picks kernels by the row count; evaluation scores must not
    depend on the batch size, and micro-batches must match the full batch).
    """
    N, C = xf.shape
    logits = np.matmul(xf.reshape(B, N // B, C), weight.T)      # (B, T, V)
    return logits.reshape(N, -1)


def lm_head_backward(dlogits, xf, weight, dweight, B, accumulate=False):
    """dlogits (N, V) -> dxf (N, C); dweight (V, C) written or accumulated in place."""
    N, V = dlogits.shape
    dw = dlogits.T @ xf                                         # logits = xf · Wᵀ
    if accumulate:
        dweight += dw
    else:
        dweight[...] = dw
    return np.matmul(dlogits.reshape(B, N // B, V), weight).reshape(N, -1)


# ----------------------------------------------------------------------------- loss
def cross_entropy_forward(logits, targets):
    """logits (N, V), targets (N,) int with -100 = ignore -> (mean loss, lse (N,), n_valid).

    The mean is over the non-ignored positions; with none, the loss is 0.0 (and the
    backward gives zero gradients) rather than NaN, so an all-padding micro-batch is
    harmless in gradient accumulation.
    """
    valid = targets != IGNORE_INDEX
    n_valid = int(valid.sum())
    m = logits.max(axis=-1, keepdims=True)
    lse = (np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)) + m)[:, 0]
    if n_valid == 0:
        return 0.0, lse, 0
    rows = np.nonzero(valid)[0]
    nll = lse[rows] - logits[rows, targets[rows]]
    return float(nll.sum(dtype=np.float64) / n_valid), lse, n_valid


def cross_entropy_backward(logits, lse, targets, n_valid, dloss=1.0):
    """dlogits (N, V) = dloss * (softmax(logits) - onehot(target)) / n_valid, 0 on ignored rows.

    Reuses the logits buffer for dlogits (llm.c style) to save an (N, V) array.
    """
    dlogits = logits
    dlogits -= lse[:, None]
    np.exp(dlogits, out=dlogits)
    valid = targets != IGNORE_INDEX
    if n_valid == 0:
        dlogits[...] = 0.0
        return dlogits
    rows = np.nonzero(valid)[0]
    dlogits[rows, targets[rows]] -= 1.0
    dlogits[~valid] = 0.0
    dlogits *= dloss / n_valid
    return dlogits


# ----------------------------------------------------------------------------- model
def parameter_shapes(cfg: LlamaConfig):
    """[(HF name, shape)] in the order the flat buffer stores them."""
    C, I, V, D = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    q_out, kv_out = cfg.num_attention_heads * D, cfg.num_key_value_heads * D
    shapes = [("model.embed_tokens.weight", (V, C))]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.append((p + "input_layernorm.weight", (C,)))
        for name, out_f, in_f in (("q_proj", q_out, C), ("k_proj", kv_out, C),
                                  ("v_proj", kv_out, C), ("o_proj", C, q_out)):
            shapes.append((p + f"self_attn.{name}.weight", (out_f, in_f)))
            if cfg.attention_bias:
                shapes.append((p + f"self_attn.{name}.bias", (out_f,)))
        shapes.append((p + "post_attention_layernorm.weight", (C,)))
        for name, out_f, in_f in (("gate_proj", I, C), ("up_proj", I, C), ("down_proj", C, I)):
            shapes.append((p + f"mlp.{name}.weight", (out_f, in_f)))
            if cfg.mlp_bias:
                shapes.append((p + f"mlp.{name}.bias", (out_f,)))
    shapes.append(("model.norm.weight", (C,)))
    if not cfg.tie_word_embeddings:
        shapes.append(("lm_head.weight", (V, C)))
    return shapes


class LlamaModel:
    """Llama-family decoder (causal LM) with forward/backward in NumPy + the C GEMMs.

    Attributes:
      config: the LlamaConfig.
      params_flat, grads_flat: 1-D buffers (float32; float64 for gradient checks).
      param_views, grad_views: {HF tensor name: view into the flat buffer}.
      param_layout: [(name, offset, shape)] in buffer order.
      precision: "fp32" | "bf16" | "hif8" (``set_precision`` switches between steps).
      calibrating: when True in fp32/bf16 precision, every projection's scalers observe
        its weight and input (BF16 warm-up / PTQ calibration). No effect in hif8, where
        quantizing records the amaxes anyway.
      scalers: a ScalerGroup with one DelayedScaler per projection weight and input,
        named "<module>.weight" / "<module>.input" (created on first use).

    Example::

        model = LlamaModel.from_config(cfg, seed=0)
        logits, loss = model.forward(x, targets=y)
        grads = model.backward()
        model.params_flat -= 1e-3 * model.grads_flat
    """

    def __init__(self, config: LlamaConfig, dtype=np.float32, precision: str = "fp32"):
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64 (for gradient checks), got {dtype}")
        config.validate()
        self.config = config
        self.dtype = dtype
        self.param_layout = []
        offset = 0
        for name, shape in parameter_shapes(config):
            self.param_layout.append((name, offset, shape))
            offset += int(np.prod(shape))
        self.params_flat = np.zeros(offset, dtype=dtype)
        self.grads_flat = np.zeros(offset, dtype=dtype)
        self.param_views = self._views(self.params_flat)
        self.grad_views = self._views(self.grads_flat)
        self.precision = "fp32"
        self.set_precision(precision)
        self.calibrating = False
        self._scalers = None
        self._scaler_recipe = ({}, {})
        self._acts = None           # forward activations kept for backward (llm.c's acts)
        self._rope_cache = {}

    def _views(self, flat):
        return {name: flat[off:off + int(np.prod(shape))].reshape(shape)
                for name, off, shape in self.param_layout}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: LlamaConfig, seed: int = 0, dtype=np.float32,
                    precision: str = "fp32") -> "LlamaModel":
        """A randomly initialised model: weights ~ N(0, initializer_range) as in HF
        (0.02 by default), norm weights 1, biases 0."""
        model = cls(config, dtype=dtype, precision=precision)
        model.init_weights(seed)
        return model

    def init_weights(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        std = self.config.initializer_range
        for name, view in self.param_views.items():
            if name.endswith("norm.weight"):
                view[...] = 1.0
            elif name.endswith(".bias"):
                view[...] = 0.0
            else:
                view[...] = rng.standard_normal(view.shape, dtype=np.float64) * std

    @property
    def num_parameters(self) -> int:
        return int(self.params_flat.size)

    # ------------------------------------------------------------------ precision, scalers
    def set_precision(self, precision: str) -> None:
        """Switch the linear layers between "fp32", "bf16" and "hif8" (between steps)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision != "fp32" and self.dtype != np.float32:
            raise ValueError(f"{precision} precision needs a float32 model; this one is "
                             f"{self.dtype} (float64 exists for fp32 gradient checks)")
        self.precision = precision

    def scaler_names(self):
        """Names of the DelayedScalers, in layer order: "<module>.weight", "<module>.input"
        (and "<module>.grad_output" when output-gradient quantization is configured)."""
        grads = self._grad_quant is not None
        names = []
        for i in range(self.config.num_hidden_layers):
            for proj in PROJECTIONS:
                names += [f"model.layers.{i}.{proj}.weight", f"model.layers.{i}.{proj}.input"]
                if grads:
                    names.append(f"model.layers.{i}.{proj}.grad_output")
        return names

    def reset_scalers(self, **recipe) -> None:
        """Create fresh DelayedScalers with this recipe (window, algo, fmax, margin, clip,
        ste), one per projection weight and input. Forgets all amax histories."""
        self.configure_scalers(weight=recipe, activation=recipe)

    def configure_scalers(self, weight: Optional[dict] = None,
                          activation: Optional[dict] = None) -> None:
        """Create fresh DelayedScalers: ``weight`` is the recipe of every "<module>.weight"
        scaler, ``activation`` of every "<module>.input" scaler (None: the defaults).
        Forgets all amax histories.

        Example::

            model.configure_scalers(weight=dict(window=1, algo="most_recent"),
                                    activation=dict(window=64, algo="max"))
        """
        from hif8qat.scaling import DelayedScaler, ScalerGroup
        weight, activation = dict(weight or {}), dict(activation or {})
        group = ScalerGroup()
        for name in self.scaler_names():
            if name.endswith(".grad_output"):   # configure_grad_quantization's recipe
                group.add(DelayedScaler(name=name, **self._grad_quant["recipe"]))
                continue
            group.add(DelayedScaler(name=name, **(weight if name.endswith(".weight")
                                                  else activation)))
        self._scalers = group
        self._scaler_recipe = (weight, activation)

    @property
    def scalers(self):
        """The ScalerGroup of this model's DelayedScalers (default recipe on first use)."""
        if self._scalers is None:
            self.configure_scalers()
        return self._scalers

    # ------------------------------------------------------------------ gradient quantization
    _grad_quant = None      # configure_grad_quantization's settings (None: dY stays bf16)
    _grad_step = 0          # the optimizer step the stochastic-rounding seeds derive from
    _grad_uses = None       # {module: dY casts since grad_step was set} (micro-batches)

    def configure_grad_quantization(self, enabled: bool = True, fmax: float = 224.0,
                                    window: int = 64, algo: str = "max", margin: float = 0.0,
                                    clip: bool = True, rounding: str = "nearest",
                                    seed: int = 0) -> None:
        """Also quantize every projection's output gradient dY to HiF8 in hif8 precision.

        Adds one fresh DelayedScaler "<module>.grad_output" per projection (recipe
        fmax/window/algo/margin/clip; fmax 224 maps the amax to the top of HiF8's 2-bit
        band, leaving headroom up to 32768) to ``scalers``; the weight and input scalers
        are kept as they are. In hif8 precision the backward then runs dX = Ĝ·Ŵ and
        dW = Ĝᵀ·X̂ on codes; while ``calibrating`` (bf16/fp32) the scalers observe dY.
        ``rounding`` "nearest" | "stochastic": stochastic seeds are a hash of (``seed``,
        ``grad_step``, tensor index, micro-batch), see linear.grad_cast_seed, so they do
        not depend on thread counts and a resumed run draws the same bits.
        ``enabled=False`` removes the gradient scalers again.

        Example::

            model.configure_grad_quantization(rounding="stochastic", seed=1)
            model.grad_step = step          # once per optimizer step (the trainer does)
        """
        from hif8qat.scaling import DelayedScaler, ScalerGroup, _check_recipe, _check_seed
        if not isinstance(enabled, (bool, np.bool_)):
            raise TypeError(f"enabled must be a bool, got {enabled!r}")
        if rounding not in ("nearest", "stochastic"):
            raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
        _check_recipe(window, algo, fmax, margin, clip, "identity")
        seed = _check_seed(seed)
        group = self.scalers                  # the weight/input scalers, kept
        recipe = dict(window=int(window), algo=algo, fmax=float(fmax), margin=float(margin),
                      clip=bool(clip), ste="identity")   # no STE: dY is not a forward value
        self._grad_quant = (dict(recipe=recipe, rounding=rounding, seed=seed,
                                 index={n[:-len(".weight")]: i for i, n in enumerate(
                                     n for n in self.scaler_names() if n.endswith(".weight"))})
                            if enabled else None)
        new = ScalerGroup()
        for name in self.scaler_names():
            new.add(DelayedScaler(name=name, **recipe) if name.endswith(".grad_output")
                    else group[name])
        self._scalers = new
        self.grad_step = 0

    @property
    def grad_quantization(self) -> Optional[dict]:
        """The gradient-quantization settings (recipe, rounding, seed), or None when off."""
        gq = self._grad_quant
        return None if gq is None else dict(recipe=dict(gq["recipe"]), rounding=gq["rounding"],
                                            seed=gq["seed"])

    @property
    def grad_step(self) -> int:
        """The optimizer step that stochastic gradient rounding derives its seeds from;
        setting it (once per step, before the micro-batches) restarts the micro-batch
        count."""
        return self._grad_step

    @grad_step.setter
    def grad_step(self, step: int) -> None:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"grad_step must be an integer >= 0, got {step!r}")
        self._grad_step = int(step)
        self._grad_uses = {}

    def _grad_cast(self, module: str) -> dict:
        """linear_backward's gradient-cast arguments for one use of ``module``."""
        gq = self._grad_quant
        if gq is None or gq["rounding"] == "nearest":
            return {}
        if self._grad_uses is None:
            self._grad_uses = {}
        use = self._grad_uses.get(module, 0)
        self._grad_uses[module] = use + 1
        from .linear import grad_cast_seed
        return dict(grad_rounding="stochastic",
                    grad_seed=grad_cast_seed(gq["seed"], self._grad_step, gq["index"][module],
                                             use))

    # ------------------------------------------------------------------ forward
    def _rope(self, T):
        """cos, sin (T, D/2) — slices of tables grown to the longest T seen so far."""
        cos, sin = self._rope_cache.get("tables", (None, None))
        if cos is None or cos.shape[0] < T:
            n = max(T, 2 * cos.shape[0] if cos is not None else T)
            cos, sin = rope_tables(n, self.config.head_dim, self.config.rope_theta, self.dtype)
            self._rope_cache["tables"] = (cos, sin)
        return cos[:T], sin[:T]

    def _causal_bias(self, T, R):
        key = ("bias", T, R)
        if key not in self._rope_cache:
            self._rope_cache = {k: v for k, v in self._rope_cache.items() if k == "tables"}
            self._rope_cache[key] = causal_bias(T, R, self.dtype)
        return self._rope_cache[key]

    def _check_tokens(self, tokens, what):
        tokens = np.asarray(tokens)
        if tokens.dtype.kind not in "iu":
            raise TypeError(f"{what} must be an integer array, got dtype {tokens.dtype}")
        if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
            raise ValueError(f"{what} must have shape (B, T) with B, T >= 1, got {tokens.shape}")
        return tokens.astype(np.int64, copy=False)

    def _positions(self, position_ids, shape):
        """cos, sin (B, T, D/2) gathered at each row's own positions."""
        pos = self._check_tokens(position_ids, "position_ids")
        if pos.shape != shape:
            raise ValueError(f"position_ids shape {pos.shape} must equal tokens shape {shape}")
        if pos.min() < 0:
            raise ValueError(f"position_ids must be >= 0, got {pos.min()}")
        cos, sin = self._rope(int(pos.max()) + 1)
        return cos[pos], sin[pos]

    def _mask_bias(self, attention_mask, shape, R):
        """(B, 1, R*T, T) additive bias from a boolean (B, T, T) mask (True: may attend)."""
        mask = np.asarray(attention_mask)
        B, T = shape
        if mask.dtype != np.bool_:
            raise TypeError(f"attention_mask must be a bool array, got dtype {mask.dtype}")
        if mask.shape != (B, T, T):
            raise ValueError(f"attention_mask must have shape (B, T, T) = {(B, T, T)}, "
                             f"got {mask.shape}")
        # every query attends at least to itself, so no softmax row is empty
        if not mask[:, np.arange(T), np.arange(T)].all():
            raise ValueError("attention_mask must let every position attend to itself "
                             "(its diagonal must be True)")
        bias = np.where(mask, self.dtype.type(0.0), self.dtype.type(-np.inf))
        return np.tile(bias, (1, R, 1))[:, None]               # rows r*T + t, as causal_bias

    @deterministic_blas
    def forward(self, tokens, targets=None, *, position_ids=None, attention_mask=None):
        """Run the decoder.  tokens (B, T) int -> (logits (B, T, V), loss or None).

        ``position_ids`` (B, T) int (default 0..T-1 in every row) and ``attention_mask``
        (B, T, T) bool, True where query i may attend key j (default causal), let one row
        hold several sequences that share a prefix -- the evaluator packs a question and
        all its answers into one row this way. Backward supports both.

        ``targets[:, t]`` is the token that should follow position t (already shifted);
        -100 marks positions to ignore; the loss is the mean cross-entropy over the
        non-ignored positions (0.0 when all are ignored). With targets, the activations
        needed by ``backward()`` are kept (and the returned logits array is later reused
        by backward as scratch space for dlogits — copy it if you need it after
        backward). Logits are float32 (float64 for a float64 model).
        """
        cfg = self.config
        tokens = self._check_tokens(tokens, "tokens")
        if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
            raise ValueError(f"tokens must lie in [0, {cfg.vocab_size}), got values in "
                             f"[{tokens.min()}, {tokens.max()}]")
        if targets is not None:
            targets = self._check_tokens(targets, "targets")
            if targets.shape != tokens.shape:
                raise ValueError(f"targets shape {targets.shape} must equal tokens shape "
                                 f"{tokens.shape}")
            bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= cfg.vocab_size))
            if bad.any():
                raise ValueError(f"targets must lie in [0, {cfg.vocab_size}) or be "
                                 f"{IGNORE_INDEX} (ignored); found {targets[bad][0]}")
        self._acts = None
        keep = targets is not None
        B, T = tokens.shape
        C, D = cfg.hidden_size, cfg.head_dim
        H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
        R, N = H // KV, B * T
        P = self.param_views
        prec, calib = self.precision, self.calibrating
        need_scalers = prec == "hif8" or calib
        sc = self.scalers if need_scalers else None
        if position_ids is None:
            cos, sin = self._rope(T)
        else:
            cos, sin = self._positions(position_ids, (B, T))
        if attention_mask is None:
            bias = self._causal_bias(T, R)
        else:
            bias = self._mask_bias(attention_mask, (B, T), R)
        # a mask inside the causal one lets attention skip the key blocks above the diagonal
        causal = attention_mask is None or not np.triu(np.asarray(attention_mask), 1).any()

        grad_quant = keep and self._grad_quant is not None

        def lin(x, module):
            b = P.get(module + ".bias")
            w_s = sc[module + ".weight"] if need_scalers else None
            x_s = sc[module + ".input"] if need_scalers else None
            # dY's scaler (configure_grad_quantization): cast or observed in backward
            g_s = sc[module + ".grad_output"] if need_scalers and grad_quant else None
            return linear_forward(x, P[module + ".weight"], b, precision=prec,
                                  w_scaler=w_s, x_scaler=x_s, calibrating=calib, sequences=B,
                                  g_scaler=g_s)

        x = embedding_forward(P["model.embed_tokens.weight"], tokens).reshape(N, C)
        layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            a = {"x": x}
            xn, a["rstd1"] = rmsnorm_forward(x, P[p + "input_layernorm.weight"], cfg.rms_norm_eps)
            q, a["q_proj"] = lin(xn, p + "self_attn.q_proj")          # (N, H*D)
            k, a["k_proj"] = lin(xn, p + "self_attn.k_proj")          # (N, KV*D)
            v, a["v_proj"] = lin(xn, p + "self_attn.v_proj")
            q = rope_forward(q.reshape(B, T, H, D), cos, sin)
            k = rope_forward(k.reshape(B, T, KV, D), cos, sin)
            # to attention layout: q (B, KV, R*T, D), k, v (B, KV, T, D)
            qa = np.ascontiguousarray(
                q.reshape(B, T, KV, R, D).transpose(0, 2, 3, 1, 4)).reshape(B, KV, R * T, D)
            ka = np.ascontiguousarray(k.transpose(0, 2, 1, 3))
            va = np.ascontiguousarray(v.reshape(B, T, KV, D).transpose(0, 2, 1, 3))
            # inference keeps no probs: run a few sequences at a time so that the
            # (b, KV, R*T, T) score buffer stays under INFERENCE_SCORE_BYTES
            step = B if keep else max(1, INFERENCE_SCORE_BYTES // (KV * R * T * T * qa.itemsize))
            if step >= B:
                oa, probs = attention_forward(qa, ka, va, bias, causal=causal)
            else:
                oa = np.concatenate([attention_forward(qa[j:j + step], ka[j:j + step],
                                                       va[j:j + step],
                                                       bias if bias.ndim == 2
                                                       else bias[j:j + step], causal)[0]
                                     for j in range(0, B, step)])
                probs = None
            o = np.ascontiguousarray(
                oa.reshape(B, KV, R, T, D).transpose(0, 3, 1, 2, 4)).reshape(N, H * D)
            y, a["o_proj"] = lin(o, p + "self_attn.o_proj")           # (N, C)
            x = x + y
            a.update(qa=qa, ka=ka, va=va, probs=probs, causal=causal, x2=x)
            xn, a["rstd2"] = rmsnorm_forward(x, P[p + "post_attention_layernorm.weight"],
                                             cfg.rms_norm_eps)
            g, a["gate_proj"] = lin(xn, p + "mlp.gate_proj")          # (N, I)
            u, a["up_proj"] = lin(xn, p + "mlp.up_proj")
            h = swiglu_forward(g, u)
            m, a["down_proj"] = lin(h, p + "mlp.down_proj")           # (N, C)
            x = x + m
            a.update(g=g, u=u)
            if keep:
                layers.append(a)
        xf, rstd_f = rmsnorm_forward(x, P["model.norm.weight"], cfg.rms_norm_eps)
        w_head = P["model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"]
        logits = lm_head_forward(xf, w_head, B)                       # (N, V)
        if targets is None:
            return logits.reshape(B, T, -1), None
        tflat = targets.reshape(-1)
        loss, lse, n_valid = cross_entropy_forward(logits, tflat)
        self._acts = dict(tokens=tokens, targets=tflat, layers=layers, x=x, rstd_f=rstd_f,
                          xf=xf, logits=logits, lse=lse, n_valid=n_valid, shape=(B, T),
                          precision=prec, rope=(cos, sin))
        return logits.reshape(B, T, -1), loss

    # ------------------------------------------------------------------ backward
    def zero_grad(self) -> None:
        self.grads_flat[...] = 0.0

    @deterministic_blas
    def backward(self, dloss: float = 1.0, accumulate: bool = False):
        """Gradients of ``dloss * loss`` for every parameter, after ``forward`` with targets.

        Returns {HF name: view into ``grads_flat``}. With ``accumulate=False`` the
        gradients overwrite ``grads_flat``; with ``accumulate=True`` they are added to it
        (gradient accumulation: pass dloss = this micro-batch's share of the tokens to
        weight micro-batches by token count). The kept activations are freed.
        """
        acts = self._acts
        if acts is None:
            raise RuntimeError("backward() needs a preceding forward(tokens, targets) "
                               "(activations are kept only when targets are given, and "
                               "freed by backward)")
        self._acts = None
        if acts["precision"] != self.precision:
            raise RuntimeError("set_precision was called between forward and backward")
        if not math.isfinite(dloss):
            raise ValueError(f"dloss must be finite, got {dloss}")
        cfg = self.config
        B, T = acts["shape"]
        D = cfg.head_dim
        H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
        R, N = H // KV, B * T
        P, G = self.param_views, self.grad_views
        if not accumulate:
            # the embedding (and a tied LM head) gather contributions from several places
            G["model.embed_tokens.weight"][...] = 0.0
        cos, sin = acts["rope"]

        def lin_back(dy, cache, module):
            # each projection is used once per forward: overwrite unless accumulating
            return linear_backward(dy, cache, G[module + ".weight"], G.get(module + ".bias"),
                                   accumulate=accumulate,
                                   **(self._grad_cast(module) if cache.g_scaler else {}))

        # logits = xf · W_headᵀ
        dlogits = cross_entropy_backward(acts.pop("logits"), acts["lse"], acts["targets"],
                                         acts["n_valid"], dloss)
        head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
        # a tied head adds to the embedding's gradient (zeroed above unless accumulating)
        dxf = lm_head_backward(dlogits, acts["xf"], P[head], G[head], B,
                               accumulate=accumulate or cfg.tie_word_embeddings)
        del dlogits
        dx = rmsnorm_backward(dxf, acts["x"], P["model.norm.weight"], acts["rstd_f"],
                              G["model.norm.weight"], accumulate=accumulate)
        for i in reversed(range(cfg.num_hidden_layers)):
            p = f"model.layers.{i}."
            a = acts["layers"].pop()
            # x3 = x2 + down(swiglu(gate(xn2), up(xn2)))
            dh = lin_back(dx, a["down_proj"], p + "mlp.down_proj")
            dg, du = swiglu_backward(dh, a["g"], a["u"])
            dxn = lin_back(dg, a["gate_proj"], p + "mlp.gate_proj")
            dxn += lin_back(du, a["up_proj"], p + "mlp.up_proj")
            dx += rmsnorm_backward(dxn, a["x2"], P[p + "post_attention_layernorm.weight"],
                                       a["rstd2"], G[p + "post_attention_layernorm.weight"],
                                       accumulate=accumulate)
            # x2 = x + o_proj(attention(rope(q(xn1)), rope(k(xn1)), v(xn1)))
            do = lin_back(dx, a["o_proj"], p + "self_attn.o_proj")
            doa = np.ascontiguousarray(
                do.reshape(B, T, KV, R, D).transpose(0, 2, 3, 1, 4)).reshape(B, KV, R * T, D)
            dqa, dka, dva = attention_backward(doa, a["qa"], a["ka"], a["va"], a["probs"],
                                                a["causal"])
            dq = dqa.reshape(B, KV, R, T, D).transpose(0, 3, 1, 2, 4).reshape(B, T, H, D)
            dk = dka.transpose(0, 2, 1, 3)
            dv = np.ascontiguousarray(dva.transpose(0, 2, 1, 3)).reshape(N, KV * D)
            dq = rope_backward(dq, cos, sin).reshape(N, H * D)
            dk = rope_backward(dk, cos, sin).reshape(N, KV * D)
            dxn = lin_back(dq, a["q_proj"], p + "self_attn.q_proj")
            dxn += lin_back(dk, a["k_proj"], p + "self_attn.k_proj")
            dxn += lin_back(dv, a["v_proj"], p + "self_attn.v_proj")
            dx += rmsnorm_backward(dxn, a["x"], P[p + "input_layernorm.weight"], a["rstd1"],
                                       G[p + "input_layernorm.weight"], accumulate=accumulate)
        embedding_backward(G["model.embed_tokens.weight"], dx, acts["tokens"])
        return dict(G)

    # ------------------------------------------------------------------ I/O
    def save(self, path, dtype: str = "float32", max_shard_bytes: Optional[int] = None) -> None:
        """Write ``path/config.json`` + ``path/model.safetensors`` (HF layout; loads in
        transformers as LlamaForCausalLM). dtype "float32" | "bfloat16" | "float16"."""
        from .io import save_model
        save_model(self, path, dtype=dtype, max_shard_bytes=max_shard_bytes)

    def __repr__(self):
        c = self.config
        return (f"LlamaModel(layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
                f"heads={c.num_attention_heads}/{c.num_key_value_heads}, vocab={c.vocab_size}, "
                f"params={self.num_parameters:,}, dtype={self.dtype.name}, "
                f"precision={self.precision!r})")
