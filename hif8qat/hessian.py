"""A Hessian spectrum probe: Lanczos and stochastic Lanczos quadrature on the loss surface.

WinQ (arXiv 2605.17471) explains slow QAT convergence by the spectrum of the Hessian H
of the training loss: QAT weights settle in flat regions around saddle points, where a
growing share of the eigenvalues, of both signs, sit near zero. This module measures
that spectrum for any model with the LlamaModel interface, without a second autodiff
system, from the model's own backward:

* **Hessian-vector products** by central differences of gradients::

      H v ≈ (g(w + h·v) − g(w − h·v)) / 2h,     h = rel_step · ‖w‖ / ‖v‖

  The step is relative to the weights, so that the perturbation h·v is a fixed small
  fraction (``rel_step``, default 1e-3) of the whole parameter vector whatever the
  model's size and scale. For float32 weights and gradients this balances the two
  errors of a central difference: truncation (∝ h², third derivatives) and rounding
  (≈ 6e-8·‖g‖ / h); with rel_step = 1e-3 both stay near 1e-4 relative on the
  test models (``tests/test_hessian.py`` checks a float32 model's products against a
  float64 model's). The perturbed weights are rounded to the model's dtype; nothing
  else is approximated.
* **Lanczos with full reorthogonalisation** (``iters`` steps, every new vector
  orthogonalised twice against all previous ones, so no ghost eigenvalues) gives Ritz
  values: the ``k`` largest and smallest estimate the extreme eigenvalues, with a
  residual bound ``|β_m · u_last|`` for each.
* **Stochastic Lanczos quadrature** (``probes`` Rademacher start vectors): each run's
  tridiagonal matrix T = U Θ Uᵀ gives Gauss-quadrature nodes θ_j with weights
  τ_j = U[0, j]², an estimate of the spectral measure (1/n) Σ_i δ(λ − λ_i); the
  density is their average, broadened by a Gaussian of width ``sigma``, and it
  integrates to 1. The spectrum is split into three bands by δ: the quadrature masses
  of the nodes with θ < −δ (``negative_fraction``), |θ| ≤ δ (``near_zero_fraction``)
  and θ > δ (``positive_fraction``); they sum to 1. The sign of eigenvalues *inside*
  the band is not reported: with ``iters`` nodes, the bulk of a network's spectrum
  around zero becomes one or two nodes whose sign is an accident of the probe (on
  the tiny world model the mass below 0 jumped between 0.001 and 0.99 from one probe
  to the next), while the mass below −δ is stable.

Precision: the probe runs in the model's current precision, or in ``precision``
("fp32", "bf16", "hif8") for its duration. fp32 gives the curvature of the
full-precision loss at the current weights, accurately (the default of the training
hook). In bf16/hif8 the gradient is the straight-through one and the forward rounds
its operands, so a finite difference measures the curvature of that surrogate *at the
scale h*: with h below the rounding steps, code flips make the products noisy and
asymmetric. Measured on the tiny test model (``uᵀHv`` vs ``vᵀHu``, relative): bf16
needs rel_step ≈ 1e-2 (asymmetry 1e-3); hif8 stays at 0.4–0.6 up to rel_step 3e-2 and
only smooths out near 1e-1, where truncation already moves the products by ~20 % —
so a hif8 spectrum is a smoothed, qualitative picture, not an exact one. In hif8 the
scalers are frozen during the probe (the delayed scales stay those of the last step,
and no amax is recorded); calibration is switched off. Afterwards the weights, the
gradient buffer, the precision, the scalers' frozen flags and ``calibrating`` are
restored exactly (bit for bit), so probing never changes a training run.

Cost: ``probes × iters`` Hessian-vector products, each two forward+backward passes over
``batches``; memory ``iters × n`` float64 numbers for the Lanczos basis (n parameters).

Example::

    import numpy as np, hif8qat as hq
    cfg = hq.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = hq.LlamaModel.from_config(cfg, seed=0)
    tokens = np.random.default_rng(0).integers(0, 256, size=(4, 33))
    spec = hq.hessian_spectrum(model, [(tokens[:, :-1], tokens[:, 1:])], k=3, iters=20)
    spec.top, spec.bottom, spec.near_zero_fraction, spec.negative_fraction
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["HessianSpectrum", "hessian_spectrum", "hessian_vector_product", "lanczos"]

IGNORE_INDEX = -100


@dataclass
class HessianSpectrum:
    """What ``hessian_spectrum`` measured (the quantities WinQ tracks).

    top / bottom: the ``k`` largest Ritz values (descending) and the ``k`` smallest
      (ascending) of the first probe's Lanczos run: estimates of the extreme eigenvalues
      (Ritz values lie inside [λ_min, λ_max], and converge from inside).
    top_residuals / bottom_residuals: ‖H u − θ u‖ bounds for those Ritz pairs (an
      eigenvalue lies within the residual of each Ritz value).
    grid, density: the Gaussian-broadened SLQ spectral density on a grid (integrates to 1).
    sigma: the broadening width; delta: the half-width of the "near zero" band.
    near_zero_fraction: estimated fraction of eigenvalues with |λ| ≤ delta.
    negative_fraction / positive_fraction: estimated fractions with λ < −delta and
      λ > delta (the three bands sum to 1); ``estimated_negative`` is
      negative_fraction times num_parameters.
    n_negative_ritz: negative Ritz values in the first probe's run (an exact count of
      negative directions that Lanczos resolved, a lower bound on what exists).
    ritz_values, ritz_weights: (probes, m) quadrature nodes and weights (NaN-padded when
      a run stopped early on an invariant subspace).
    """
    top: np.ndarray
    bottom: np.ndarray
    top_residuals: np.ndarray
    bottom_residuals: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    delta: float
    near_zero_fraction: float
    negative_fraction: float
    positive_fraction: float
    n_negative_ritz: int
    num_parameters: int
    ritz_values: np.ndarray
    ritz_weights: np.ndarray
    iters: int
    probes: int
    rel_step: float
    precision: str
    hvp_calls: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def estimated_negative(self) -> float:
        """Estimated number of eigenvalues below −delta (negative_fraction × n)."""
        return self.negative_fraction * self.num_parameters

    def summary(self) -> dict:
        """The scalars a training log keeps per probe."""
        return {"top": float(self.top[0]), "bottom": float(self.bottom[0]),
                "near_zero_fraction": float(self.near_zero_fraction),
                "negative_fraction": float(self.negative_fraction),
                "positive_fraction": float(self.positive_fraction),
                "n_negative_ritz": int(self.n_negative_ritz), "delta": float(self.delta)}

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (hessian.jsonl lines); NaN padding becomes None."""
        def arr(a):
            return [None if not math.isfinite(x) else float(x) for x in np.ravel(a)]
        return {"top": arr(self.top), "bottom": arr(self.bottom),
                "top_residuals": arr(self.top_residuals),
                "bottom_residuals": arr(self.bottom_residuals),
                "grid": arr(self.grid), "density": arr(self.density),
                "sigma": float(self.sigma), "delta": float(self.delta),
                "near_zero_fraction": float(self.near_zero_fraction),
                "negative_fraction": float(self.negative_fraction),
                "positive_fraction": float(self.positive_fraction),
                "estimated_negative": float(self.estimated_negative),
                "n_negative_ritz": int(self.n_negative_ritz),
                "num_parameters": int(self.num_parameters),
                "ritz_values": [arr(r) for r in self.ritz_values],
                "ritz_weights": [arr(r) for r in self.ritz_weights],
                "iters": int(self.iters), "probes": int(self.probes),
                "rel_step": float(self.rel_step), "precision": self.precision,
                "hvp_calls": int(self.hvp_calls)}


# ------------------------------------------------------------------------------ plumbing
def _check_batches(batches):
    if isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[0], np.ndarray):
        batches = [batches]               # one (inputs, targets) pair
    try:
        batches = list(batches)
    except TypeError:
        raise TypeError("batches must be a list of (inputs, targets) pairs, got "
                        f"{type(batches).__name__}") from None
    if not batches:
        raise ValueError("batches is empty: give at least one (inputs, targets) pair")
    out = []
    for i, b in enumerate(batches):
        if not (isinstance(b, (tuple, list)) and len(b) == 2):
            raise TypeError(f"batches[{i}] must be an (inputs, targets) pair, got {b!r:.60}")
        x, y = np.asarray(b[0]), np.asarray(b[1])
        n = int((y != IGNORE_INDEX).sum())
        out.append((x, y, n))
    total = sum(n for _, _, n in out)
    if total == 0:
        raise ValueError("every target in batches is ignored (-100): the loss is constant")
    # the loss probed is the token-weighted mean over all batches (as a training step)
    return [(x, y, n / total) for x, y, n in out if n > 0]


class _Probe:
    """Saves a model's mutable state, computes gradients at perturbed weights, restores.

    Used as a context manager: on exit the weights, gradients, calibration flag and the
    scalers' frozen flags are put back exactly as they were.
    """

    def __init__(self, model, batches, precision=None):
        for attr in ("params_flat", "grads_flat", "forward", "backward"):
            if not hasattr(model, attr):
                raise TypeError(f"model must have params_flat, grads_flat, forward(tokens, "
                                f"targets) and backward(dloss, accumulate); it has no {attr}")
        p = model.params_flat
        if not (isinstance(p, np.ndarray) and p.ndim == 1 and p.size > 0
                and p.dtype in (np.float32, np.float64)):
            raise TypeError("model.params_flat must be a non-empty 1-D float32/float64 array")
        self.model = model
        self.batches = _check_batches(batches)
        self.dtype = p.dtype
        self.n = p.size
        self.run_precision = getattr(model, "precision", "fp32")
        if precision is not None and precision not in ("fp32", "bf16", "hif8"):
            raise ValueError(f"precision must be 'fp32', 'bf16', 'hif8' or None (the model's "
                             f"current one), got {precision!r}")
        if precision is not None and precision != self.run_precision \
                and not hasattr(model, "set_precision"):
            raise TypeError("this model has no set_precision; leave precision=None")
        self.precision = precision or self.run_precision

    def __enter__(self):
        m = self.model
        if self.precision != self.run_precision:
            m.set_precision(self.precision)
        self.w0 = m.params_flat.copy()
        self.g0 = m.grads_flat.copy()
        self.w64 = self.w0.astype(np.float64)
        self.w_norm = float(np.linalg.norm(self.w64))
        self.calibrating = getattr(m, "calibrating", None)
        if self.calibrating is not None:
            m.calibrating = False          # a probe must not feed the amax histories
        self.frozen = None
        if self.precision == "hif8" and getattr(m, "scalers", None) is not None:
            self.frozen = [(s, s.frozen) for s in m.scalers]
            m.scalers.set_frozen(True)
        self.calls = 0
        return self

    def __exit__(self, *exc):
        m = self.model
        m.params_flat[...] = self.w0      # a copy, not w - h·v: bit for bit
        m.grads_flat[...] = self.g0
        if self.precision != self.run_precision:
            m.set_precision(self.run_precision)
        if self.calibrating is not None:
            m.calibrating = self.calibrating
        if self.frozen is not None:
            for s, was in self.frozen:
                s.frozen = was
        return False

    def gradient(self, w64) -> np.ndarray:
        """∇L at weights w64 (rounded to the model's dtype), as float64."""
        m = self.model
        m.params_flat[...] = w64.astype(self.dtype)
        first = True
        for x, y, share in self.batches:
            _, loss = m.forward(x, y)
            if loss is None or not math.isfinite(float(loss)):
                raise FloatingPointError(f"the loss at the perturbed weights is {loss}: "
                                         "lower rel_step")
            m.backward(dloss=share, accumulate=not first)
            first = False
        return m.grads_flat.astype(np.float64)

    def hvp(self, v, rel_step) -> np.ndarray:
        """H v by a central difference with h = rel_step · ‖w‖ / ‖v‖ (float64 in, out)."""
        v_norm = float(np.linalg.norm(v))
        if v_norm == 0.0:
            return np.zeros_like(v)
        # all-zero weights have no scale to be relative to: then h·‖v‖ = rel_step
        h = rel_step * (self.w_norm if self.w_norm > 0 else 1.0) / v_norm
        g_plus = self.gradient(self.w64 + h * v)
        g_minus = self.gradient(self.w64 - h * v)
        self.calls += 1
        g_plus -= g_minus
        g_plus /= 2.0 * h
        return g_plus


def _check_positive(name, value, integer=False, lo=None):
    if integer:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < (1 if lo is None else lo):
            raise ValueError(f"{name} must be >= {1 if lo is None else lo}, got {value}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


# ------------------------------------------------------------------------------ public API
def hessian_vector_product(model, batches, v, *, rel_step: float = 1e-3,
                           precision: Optional[str] = None) -> np.ndarray:
    """H v of the token-weighted mean loss over ``batches`` at the model's weights.

    Central difference of the model's gradients, h = rel_step · ‖w‖ / ‖v‖ (see the
    module docstring); v is a 1-D array the size of ``model.params_flat``; returns
    float64. ``precision``: run the probe in this precision (default: the model's).
    The model's weights and gradients are restored bit for bit.

    Example::

        hv = hq.hessian.hessian_vector_product(model, [(x, y)], v)
    """
    rel_step = _check_positive("rel_step", rel_step)
    with _Probe(model, batches, precision) as probe:
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (probe.n,):
            raise ValueError(f"v must have shape ({probe.n},) like model.params_flat, "
                             f"got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError("v must be finite")
        return probe.hvp(v, rel_step)


def lanczos(matvec, v0, iters: int):
    """Lanczos tridiagonalisation with full reorthogonalisation.

    matvec: x (n,) float64 -> A x for a symmetric A; v0: the start vector (n,).
    Returns (alpha (m,), beta (m,)) where T has diagonal alpha and off-diagonal
    beta[:-1], and beta[-1] is the norm of the residual after the last step (the
    residual bound of a Ritz pair is |beta[-1] · U[-1, j]|). m ≤ iters; it is smaller
    when the Krylov space became invariant (then beta[-1] is ~0 and the Ritz values
    are eigenvalues).
    """
    n = v0.size
    m_max = min(int(iters), n)
    basis = np.zeros((m_max, n), dtype=np.float64)
    v = v0 / np.linalg.norm(v0)
    alphas, betas = [], []
    beta_prev = 0.0
    scale = 0.0
    for j in range(m_max):
        basis[j] = v
        w = matvec(v)
        alpha = float(w @ v)
        w -= alpha * v
        if j > 0:
            w -= beta_prev * basis[j - 1]
        # full reorthogonalisation, twice ("twice is enough", Kahan–Parlett): a
        # finite-difference operator is only approximately symmetric, and rounding in
        # the three-term recurrence would otherwise bring back copies of converged
        # eigenvalues
        for _ in range(2):
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        beta = float(np.linalg.norm(w))
        alphas.append(alpha)
        betas.append(beta)
        scale = max(scale, abs(alpha), beta)
        if beta <= 1e-12 * max(scale, 1e-300) or j == m_max - 1:
            break
        v = w / beta
        beta_prev = beta
    return np.array(alphas), np.array(betas)


def _ritz(alpha, beta):
    """Eigen-decomposition of the tridiagonal T: (nodes ascending, U)."""
    m = alpha.size
    T = np.diag(alpha)
    if m > 1:
        off = beta[:-1]
        T += np.diag(off, 1) + np.diag(off, -1)
    return np.linalg.eigh(T)


def hessian_spectrum(model, batches, k: int = 5, iters: int = 30, *, probes: int = 4,
                     rel_step: float = 1e-3, delta: Optional[float] = None,
                     sigma: Optional[float] = None, grid_size: int = 256,
                     seed: int = 0, precision: Optional[str] = None) -> HessianSpectrum:
    """Extreme eigenvalues and spectral density of the loss Hessian at the model's weights.

    Args:
        model: a LlamaModel (or anything with params_flat, grads_flat, forward(tokens,
            targets) -> (logits, loss), backward(dloss, accumulate)); its current
            precision is used (hif8: scalers frozen for the probe).
        batches: (inputs, targets) pairs; the loss is their token-weighted mean.
        k: how many top and bottom eigenvalues to report (≤ iters).
        iters: Lanczos steps per probe (the quadrature's resolution).
        probes: Rademacher start vectors for the density (the first also gives the
            extreme eigenvalues); cost is probes × iters Hessian-vector products.
        rel_step: the finite-difference step relative to ‖w‖ (module docstring).
        delta: half-width of the "near zero" band; default 1 % of the spectral radius
            max(|top|, |bottom|) measured by the probe.
        sigma: Gaussian broadening of the density; default 1 % of the Ritz-value range.
        grid_size: points of the density grid (spanning every node ± 4 sigma).
        seed: the probe vectors' generator seed (same seed, same vectors).
        precision: "fp32" | "bf16" | "hif8" for the probe (the model's is restored
            afterwards); None: the model's current precision.

    Returns a HessianSpectrum. The weights are restored bit for bit afterwards.

    Example::

        spec = hq.hessian_spectrum(model, [(x, y)], k=3, iters=20, probes=2)
        print(spec.top, spec.near_zero_fraction, spec.negative_fraction)
    """
    k = _check_positive("k", k, integer=True)
    iters = _check_positive("iters", iters, integer=True, lo=2)
    probes = _check_positive("probes", probes, integer=True)
    grid_size = _check_positive("grid_size", grid_size, integer=True, lo=2)
    rel_step = _check_positive("rel_step", rel_step)
    if k > iters:
        raise ValueError(f"k ({k}) must not exceed iters ({iters}): Lanczos gives at most "
                         "iters Ritz values")
    if delta is not None:
        delta = _check_positive("delta", delta)
    if sigma is not None:
        sigma = _check_positive("sigma", sigma)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng([int(seed), 0x4E55])

    with _Probe(model, batches, precision) as probe:
        n = probe.n
        runs = []
        for _ in range(probes):
            # Rademacher start: E[z zᵀ] = I, so zᵀ f(H) z / n estimates tr f(H) / n
            z = rng.integers(0, 2, size=n).astype(np.float64) * 2.0 - 1.0
            alpha, beta = lanczos(lambda v: probe.hvp(v, rel_step), z, iters)
            nodes, U = _ritz(alpha, beta)
            runs.append((nodes, U[0] ** 2, np.abs(beta[-1] * U[-1])))
        calls = probe.calls
    if not all(np.all(np.isfinite(r[0])) for r in runs):
        raise FloatingPointError("the Hessian-vector products were not finite (NaN/Inf in "
                                 "the loss or gradients near these weights)")

    nodes0, _, resid0 = runs[0]
    kk = min(k, nodes0.size)
    top, top_res = nodes0[::-1][:kk], resid0[::-1][:kk]
    bottom, bottom_res = nodes0[:kk], resid0[:kk]
    m = max(r[0].size for r in runs)
    ritz_values = np.full((probes, m), np.nan)
    ritz_weights = np.full((probes, m), np.nan)
    for i, (nodes, weights, _) in enumerate(runs):
        ritz_values[i, :nodes.size] = nodes
        ritz_weights[i, :nodes.size] = weights / weights.sum()
    all_nodes = np.concatenate([r[0] for r in runs])
    all_weights = np.concatenate([r[1] / r[1].sum() for r in runs]) / probes

    lo, hi = float(all_nodes.min()), float(all_nodes.max())
    radius = max(abs(lo), abs(hi))
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else max(1e-3 * radius, 1e-12)
    if delta is None:
        delta = 0.01 * radius if radius > 0 else 1e-12
    grid = np.linspace(lo - 4 * sigma, hi + 4 * sigma, grid_size)
    # each node is a Gaussian of mass tau_j: the density integrates to sum(tau) = 1
    d = (grid[:, None] - all_nodes[None, :]) / sigma
    density = (np.exp(-0.5 * d * d) / (sigma * math.sqrt(2 * math.pi))) @ all_weights

    return HessianSpectrum(
        top=top, bottom=bottom, top_residuals=top_res, bottom_residuals=bottom_res,
        grid=grid, density=density, sigma=float(sigma), delta=float(delta),
        near_zero_fraction=float(all_weights[np.abs(all_nodes) <= delta].sum()),
        negative_fraction=float(all_weights[all_nodes < -delta].sum()),
        positive_fraction=float(all_weights[all_nodes > delta].sum()),
        n_negative_ritz=int((nodes0 < 0).sum()), num_parameters=n,
        ritz_values=ritz_values, ritz_weights=ritz_weights, iters=iters, probes=probes,
        rel_step=rel_step, precision=probe.precision, hvp_calls=calls)
