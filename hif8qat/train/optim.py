"""AdamW on the model's flat parameter buffer, global-norm clipping, the LR schedule.

The model keeps every parameter in one float32 buffer (``params_flat``) with named
views, and its gradients in a buffer of the same layout (``grads_flat``), so the
optimizer is a handful of whole-array NumPy operations (llm.c's ``adamw_update``):

    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2
    p = p - lr * wd * mask * p                          # decoupled weight decay
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

_CHUNK = 1 << 20  # elements per float64 chunk of the norm sum


def global_grad_norm(grads: np.ndarray) -> float:
    """L2 norm of a flat float32 gradient buffer, summed in float64."""
    total = 0.0
    for start in range(0, grads.size, _CHUNK):
        c = grads[start:start + _CHUNK].astype(np.float64)
        total += float(np.sum(c * c))
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


class AdamW:
    """AdamW over one flat float32 parameter buffer, updated in place.

    ``decay_mask``: float32 array like params (1 = decayed), or None to decay all.
    ``step(grads, lr)`` applies one update with the given learning rate (the schedule
    lives in the trainer, so the optimizer holds no schedule state to drift).
    """

    def __init__(self, params: np.ndarray, *, lr: float = 1e-4, betas=(0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.0, decay_mask=None):
        if not isinstance(params, np.ndarray) or params.dtype != np.float32 or params.ndim != 1:
            raise TypeError("AdamW needs the flat float32 parameter buffer (1-D float32)")
        if not params.flags.c_contiguous:
            raise ValueError("AdamW needs a contiguous parameter buffer")
        if decay_mask is not None:
            decay_mask = np.asarray(decay_mask, dtype=np.float32)
            if decay_mask.shape != params.shape:
                raise ValueError(f"decay_mask shape {decay_mask.shape} differs from params "
                                 f"{params.shape}")
        self.params = params
        self.lr = float(lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.decay_mask = decay_mask
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.t = 0
        self._tmp = np.empty_like(params)

    def step(self, grads: np.ndarray, lr: float | None = None) -> None:
        g = grads
        if g.shape != self.params.shape or g.dtype != np.float32:
            raise ValueError(f"gradients must be float32 of shape {self.params.shape}, got "
                             f"{g.dtype} {g.shape}")
        lr = self.lr if lr is None else float(lr)
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        f32 = np.float32
        # m = b1*m + (1-b1)*g ; v = b2*v + (1-b2)*g*g
        self.m *= f32(b1)
        self.m += f32(1.0 - b1) * g
        self.v *= f32(b2)
        np.multiply(g, g, out=self._tmp)
        self._tmp *= f32(1.0 - b2)
        self.v += self._tmp
        # decoupled weight decay, on the masked (matrix) entries only
        if self.weight_decay and lr:
            if self.decay_mask is None:
                self.params *= f32(1.0 - lr * self.weight_decay)
            else:
                np.multiply(self.params, self.decay_mask, out=self._tmp)
                self._tmp *= f32(lr * self.weight_decay)
                self.params -= self._tmp
        # p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps): the bias corrections
        # folded into two scalars, as in PyTorch's AdamW
        bc1 = 1.0 - b1 ** self.t
        bc2 = 1.0 - b2 ** self.t
        step_size = lr / bc1
        np.sqrt(self.v, out=self._tmp)
        self._tmp *= f32(1.0 / math.sqrt(bc2))
        self._tmp += f32(self.eps)
        np.divide(self.m, self._tmp, out=self._tmp)
        self._tmp *= f32(step_size)
        self.params -= self._tmp

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
