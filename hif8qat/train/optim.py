"""AdamW on the model's flat parameter buffer, global-norm clipping, the LR schedule.

The model keeps every parameter in one float32 buffer (``params_flat``) with named
views, and its gradients in a buffer of the same layout (``grads_flat``), so the
optimizer is a handful of whole-array NumPy operations (llm.c's ``adamw_update``):

    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2
    p = p * (1 - lr * wd)          (matrices only)      # decoupled weight decay
    p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

Weight decay applies to matrices only (parameters with two or more dimensions: the
projections, the embedding and an untied LM head), never to vectors (RMSNorm gains,
biases), as in nanoGPT and most Llama recipes: decaying a norm gain towards 0 shrinks
the whole residual branch, which is not regularisation.

Everything is float32 except the gradient norm, summed in float64 in fixed-size
chunks (NumPy's pairwise sum, no BLAS), so results are bit-identical run to run and
across thread counts.

Example::

    >>> p = np.ones(4, np.float32); g = np.full(4, 0.5, np.float32)
    >>> opt = AdamW(p, lr=0.1)
    >>> opt.step(g, lr=0.1); [round(float(v), 3) for v in p]
    [0.9, 0.9, 0.9, 0.9]
"""
from __future__ import annotations

import math

import numpy as np

_CHUNK = 1 << 16  # elements per block: the optimizer's temporaries stay in the L2 cache


def global_grad_norm(grads: np.ndarray) -> float:
    """L2 norm of a flat float32 gradient buffer: squares and sums in float64, block
    by block (NumPy's pairwise sum, no BLAS), so the result never depends on threads."""
    total = 0.0
    sq = np.empty(min(_CHUNK, grads.size), dtype=np.float64)
    for start in range(0, grads.size, _CHUNK):
        c = grads[start:start + _CHUNK]
        t = sq[:c.size]
        np.multiply(c, c, out=t, dtype=np.float64)
        total += float(t.sum())
    return math.sqrt(total)


def clip_grad_norm_(grads: np.ndarray, max_norm: float) -> float:
    """Scale ``grads`` in place so its global norm is at most ``max_norm``.

    Returns the norm before clipping (what the log reports). ``max_norm <= 0``
    disables clipping. A non-finite norm is returned unchanged and nothing is
    scaled: the caller decides to stop.
    """
    norm = global_grad_norm(grads)
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        grads *= np.float32(max_norm / (norm + 1e-6))
    return norm


def lr_at(step: int, *, lr: float, steps: int, schedule: str = "cosine",
          warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Learning rate of 0-based optimizer step ``step``: one schedule for the run.

    Linear warm-up over the first ``warmup_steps`` steps (step 0 gets lr/warmup, the
    last warm-up step the full lr), then "constant" at ``lr`` or "cosine" from ``lr``
    down to ``min_lr`` at the last step. The BF16 warm-up phase does not touch this:
    a phase changes precision only.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}: use 'constant' or 'cosine'")
    decay_steps = steps - warmup_steps
    if decay_steps <= 1:
        return lr
    progress = (step - warmup_steps) / (decay_steps - 1)  # 0 .. 1 over the decay steps
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def matrix_decay_mask(params_flat: np.ndarray, param_views: dict) -> np.ndarray:
    """float32 mask over the flat buffer: 1 where a parameter is a matrix (ndim >= 2).

    Views that share storage (tied embeddings) are handled by position, so a tied
    LM head adds nothing twice.
    """
    mask = np.zeros(params_flat.size, dtype=np.float32)
    base = params_flat.__array_interface__["data"][0]
    itemsize = params_flat.itemsize
    for name, view in param_views.items():
        if not np.shares_memory(view, params_flat):
            raise ValueError(f"parameter {name!r} is not a view into params_flat")
        if not view.flags.c_contiguous:
            raise ValueError(f"parameter view {name!r} is not contiguous")
        offset = (view.__array_interface__["data"][0] - base) // itemsize
        if view.ndim >= 2:
            mask[offset:offset + view.size] = 1.0
    return mask


def _mask_to_ranges(mask: np.ndarray) -> list:
    """[(start, stop)] runs where mask != 0."""
    on = np.concatenate(([0], (np.asarray(mask) != 0).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(on))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


class AdamW:
    """AdamW over one flat float32 parameter buffer, updated in place.

    ``decay_mask``: array like params (non-zero = decayed, e.g. matrix_decay_mask), or
    None to decay everything. ``step(grads, lr)`` applies one update with the given
    learning rate (the schedule lives in the trainer, so the optimizer holds no
    schedule state to drift). The update runs block by block so its temporaries stay
    in cache; every operation is elementwise, so the blocking never changes a bit.
    """

    def __init__(self, params: np.ndarray, *, lr: float = 1e-4, betas=(0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.0, decay_mask=None):
        if not isinstance(params, np.ndarray) or params.dtype != np.float32 or params.ndim != 1:
            raise TypeError("AdamW needs the flat float32 parameter buffer (1-D float32)")
        if not params.flags.c_contiguous:
            raise ValueError("AdamW needs a contiguous parameter buffer")
        n = params.size
        if decay_mask is None:
            ranges = [(0, n)]
        else:
            decay_mask = np.asarray(decay_mask)
            if decay_mask.shape != params.shape:
                raise ValueError(f"decay_mask shape {decay_mask.shape} differs from params "
                                 f"{params.shape}")
            ranges = _mask_to_ranges(decay_mask)
        self.params = params
        self.lr = float(lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.decay_ranges = ranges
        # per block, the decayed runs inside it (block-local coordinates)
        self._block_decay = []
        for a in range(0, n, _CHUNK):
            b = min(a + _CHUNK, n)
            self._block_decay.append([(max(x, a) - a, min(y, b) - a) for x, y in ranges
                                      if x < b and y > a])
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.t = 0
        self._tmp = np.empty(min(_CHUNK, n), dtype=np.float32)

    def step(self, grads: np.ndarray, lr: float | None = None) -> None:
        if (not isinstance(grads, np.ndarray) or grads.shape != self.params.shape
                or grads.dtype != np.float32):
            raise ValueError(f"gradients must be float32 of shape {self.params.shape}, got "
                             f"{getattr(grads, 'dtype', type(grads).__name__)} "
                             f"{getattr(grads, 'shape', '')}")
        lr = self.lr if lr is None else float(lr)
        self.t += 1
        f32 = np.float32
        b1, b2 = f32(self.beta1), f32(self.beta2)
        one_minus_b1, one_minus_b2 = f32(1.0 - self.beta1), f32(1.0 - self.beta2)
        # p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps): the bias corrections folded
        # into two scalars, as in PyTorch's AdamW
        step_size = f32(lr / (1.0 - self.beta1 ** self.t))
        inv_sqrt_bc2 = f32(1.0 / math.sqrt(1.0 - self.beta2 ** self.t))
        eps = f32(self.eps)
        decay = f32(1.0 - lr * self.weight_decay) if self.weight_decay and lr else None
        n = self.params.size
        for k, a in enumerate(range(0, n, _CHUNK)):
            b = min(a + _CHUNK, n)
            p, g = self.params[a:b], grads[a:b]
            m, v, tmp = self.m[a:b], self.v[a:b], self._tmp[:b - a]
            # m = b1*m + (1-b1)*g
            m *= b1
            np.multiply(g, one_minus_b1, out=tmp)
            m += tmp
            # v = b2*v + (1-b2)*g*g
            v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= one_minus_b2
            v += tmp
            # decoupled weight decay, on the matrices only
            if decay is not None:
                for x, y in self._block_decay[k]:
                    p[x:y] *= decay
            np.sqrt(v, out=tmp)
            tmp *= inv_sqrt_bc2
            tmp += eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp

    def state_dict(self) -> dict:
        """Arrays and scalars that restore the optimizer exactly."""
        return {"m": self.m, "v": self.v, "t": self.t, "lr": self.lr,
                "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay}

    def load_state_dict(self, d: dict) -> None:
        for key in ("m", "v", "t"):
            if key not in d:
                raise ValueError(f"optimizer state is missing {key!r}")
        for key in ("m", "v"):
            a = np.asarray(d[key])
            if a.shape != self.params.shape or a.dtype != np.float32:
                raise ValueError(f"optimizer state {key!r} has {a.dtype} {a.shape}; this "
                                 f"model needs float32 {self.params.shape} (different model?)")
        t = int(d["t"])
        if t < 0:
            raise ValueError(f"optimizer state has a negative step count {t}")
        self.m[...] = d["m"]
        self.v[...] = d["v"]
        self.t = t
