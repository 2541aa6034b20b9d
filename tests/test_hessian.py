"""Hessian spectrum probe: Lanczos, SLQ density, finite-difference Hessian-vector products."""
import numpy as np
import pytest

import hif8qat as hq
from hif8qat.hessian import hessian_vector_product, lanczos

TINY = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)


class QuadraticModel:
    """A stand-in "model" with the LlamaModel training interface whose loss is
    L(w) = ½ (w − w*)ᵀ A (w − w*), so its Hessian is A, with a chosen spectrum."""

    def __init__(self, eigenvalues, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        n = len(eigenvalues)
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        self.A = (q * np.asarray(eigenvalues)) @ q.T
        self.w_star = rng.standard_normal(n)
        self.params_flat = rng.standard_normal(n).astype(dtype)
        self.grads_flat = np.zeros(n, dtype)
        self.precision = "fp32"

    def forward(self, tokens, targets=None):
        self._d = self.params_flat.astype(np.float64) - self.w_star
        return None, 0.5 * self._d @ self.A @ self._d

    def backward(self, dloss=1.0, accumulate=False):
        g = dloss * (self.A @ self._d)
        if accumulate:
            self.grads_flat += g
        else:
            self.grads_flat[...] = g


DUMMY_BATCH = [(np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64))]


def clustered_spectrum(seed=1):
    """200 eigenvalues in four tight clusters plus one outlier: 40 near −2, 60 within
    ±1e-4 of zero (some negative), 60 near 1, 39 near 5, and 10."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-2.2, -1.8, 40), rng.uniform(-1e-4, 1e-4, 60),
                           rng.uniform(0.9, 1.1, 60), rng.uniform(4.0, 6.0, 39), [10.0]])


# ============================================================================ Lanczos
def test_lanczos_ritz_values_match_eigvalsh_at_both_ends():
    rng = np.random.default_rng(0)
    n = 200
    eig = np.concatenate([[-7.0, -6.5], rng.uniform(-1, 1, n - 4), [8.0, 9.0]])
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * eig) @ q.T
    alpha, beta = lanczos(lambda v: a @ v, rng.standard_normal(n), 40)
    t = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    ritz = np.linalg.eigvalsh(t)
    np.testing.assert_allclose(ritz[-2:], [8.0, 9.0], atol=1e-8)
    np.testing.assert_allclose(ritz[:2], [-7.0, -6.5], atol=1e-8)
    # Ritz values of a symmetric matrix lie inside its spectrum (no ghosts outside)
    assert ritz.min() >= -7.0 - 1e-9 and ritz.max() <= 9.0 + 1e-9


def test_lanczos_stops_on_an_invariant_subspace():
    a = np.diag([1.0, 2.0, 3.0, 4.0, 5.0])
    alpha, beta = lanczos(lambda v: a @ v, np.ones(5), 30)
    assert alpha.size == 5 and abs(beta[-1]) < 1e-10
    t = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    np.testing.assert_allclose(np.linalg.eigvalsh(t), [1, 2, 3, 4, 5], atol=1e-10)


# ============================================================================ quadratic loss
def test_probe_recovers_extreme_eigenvalues_of_a_known_hessian():
    eig = clustered_spectrum()
    model = QuadraticModel(eig)
    spec = hq.hessian_spectrum(model, DUMMY_BATCH, k=2, iters=30, probes=3, seed=0)
    # float32 weights and gradients: the central difference is good to ~1e-4 relative
    assert spec.top[0] == pytest.approx(10.0, rel=1e-3)
    assert spec.top[1] == pytest.approx(np.sort(eig)[-2], abs=0.1)
    assert spec.bottom[0] == pytest.approx(eig.min(), abs=0.05)
    assert spec.top_residuals[0] < 1e-3
    assert spec.bottom[0] <= spec.bottom[1] and spec.top[0] >= spec.top[1]


def test_density_integrates_to_one_with_mass_at_the_known_clusters():
    eig = clustered_spectrum()
    model = QuadraticModel(eig)
    spec = hq.hessian_spectrum(model, DUMMY_BATCH, k=3, iters=30, probes=12, seed=1,
                               delta=0.01, sigma=0.05, grid_size=2000)
    assert np.trapezoid(spec.density, spec.grid) == pytest.approx(1.0, abs=1e-3)

    def mass(lo, hi):
        sel = (spec.grid >= lo) & (spec.grid <= hi)
        return np.trapezoid(spec.density[sel], spec.grid[sel])

    # cluster masses 40/200, 60/200, 60/200, 40/200; Rademacher noise ~ 0.04
    assert mass(-2.5, -1.5) == pytest.approx(0.2, abs=0.06)
    assert mass(-0.3, 0.3) == pytest.approx(0.3, abs=0.06)
    assert mass(0.7, 1.3) == pytest.approx(0.3, abs=0.06)
    assert mass(3.6, 10.5) == pytest.approx(0.2, abs=0.06)
    assert mass(1.5, 3.5) < 0.01 and mass(6.5, 9.5) < 0.01          # the gaps are empty
    assert spec.near_zero_fraction == pytest.approx(0.3, abs=0.06)
    assert spec.negative_fraction == pytest.approx(0.2, abs=0.06)      # below -delta
    assert spec.positive_fraction == pytest.approx(0.5, abs=0.06)
    total = spec.negative_fraction + spec.near_zero_fraction + spec.positive_fraction
    assert total == pytest.approx(1.0, abs=1e-12)
    assert spec.estimated_negative == pytest.approx(spec.negative_fraction * 200)
    assert spec.n_negative_ritz >= 2
    assert spec.hvp_calls == 12 * 30


def test_negative_fraction_counts_well_separated_negative_eigenvalues():
    rng = np.random.default_rng(4)
    eig = np.concatenate([rng.uniform(-3, -1, 70), rng.uniform(1, 4, 130)])
    spec = hq.hessian_spectrum(QuadraticModel(eig), DUMMY_BATCH, k=1, iters=20, probes=10)
    assert spec.negative_fraction == pytest.approx(0.35, abs=0.06)
    assert spec.near_zero_fraction < 0.01


def test_probe_restores_the_weights_and_gradients_bit_for_bit():
    model = QuadraticModel(clustered_spectrum())
    model.grads_flat[...] = np.arange(model.grads_flat.size)
    w, g = model.params_flat.copy(), model.grads_flat.copy()
    hq.hessian_spectrum(model, DUMMY_BATCH, k=1, iters=5, probes=1)
    assert np.array_equal(model.params_flat.view(np.uint32), w.view(np.uint32))
    assert np.array_equal(model.grads_flat, g)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(k=5, iters=3), ValueError, "k"), (dict(iters=1), ValueError, "iters"),
    (dict(probes=0), ValueError, "probes"), (dict(rel_step=0.0), ValueError, "rel_step"),
    (dict(rel_step=float("nan")), ValueError, "rel_step"), (dict(k=2.5), TypeError, "k"),
    (dict(delta=-1.0), ValueError, "delta"), (dict(seed=-1), ValueError, "seed"),
])
def test_bad_probe_arguments_are_rejected(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        hq.hessian_spectrum(QuadraticModel([1.0, 2.0]), DUMMY_BATCH, **kwargs)


def test_bad_batches_and_models_are_rejected():
    model = QuadraticModel([1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        hq.hessian_spectrum(model, [])
    with pytest.raises(ValueError, match="ignored"):
        hq.hessian_spectrum(model, [(np.zeros((1, 2), int), np.full((1, 2), -100))])
    with pytest.raises(TypeError, match="params_flat"):
        hq.hessian_spectrum(object(), DUMMY_BATCH)
    with pytest.raises(ValueError, match="shape"):
        hessian_vector_product(model, DUMMY_BATCH, np.ones(3))


# ============================================================================ tiny LlamaModel
def _tiny_models():
    cfg = hq.LlamaConfig(**TINY)
    m32 = hq.LlamaModel.from_config(cfg, seed=0)
    m64 = hq.LlamaModel.from_config(cfg, seed=0, dtype=np.float64)
    m64.params_flat[...] = m32.params_flat
    tokens = np.random.default_rng(0).integers(0, 64, size=(2, 17))
    return m32, m64, [(tokens[:, :-1], tokens[:, 1:])]


def test_llama_hvps_are_symmetric_and_match_a_float64_reference():
    m32, m64, batches = _tiny_models()
    rng = np.random.default_rng(3)
    u, v = rng.standard_normal((2, m32.num_parameters))
    hu = hessian_vector_product(m32, batches, u)
    hv = hessian_vector_product(m32, batches, v)
    assert u @ hv == pytest.approx(v @ hu, rel=1e-3)
    # float64 model, a 100x smaller step: truncation and rounding both ~1e-9 there
    ref = hessian_vector_product(m64, batches, v, rel_step=1e-5)
    assert np.linalg.norm(hv - ref) / np.linalg.norm(ref) < 1e-3
    # and the reference itself is a Hessian-vector product: linear in v
    ref2 = hessian_vector_product(m64, batches, 2 * v, rel_step=1e-5)
    np.testing.assert_allclose(ref2, 2 * ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max())


def test_llama_probe_in_hif8_freezes_scalers_and_restores_everything():
    m32, _, batches = _tiny_models()
    m32.set_precision("hif8")
    x, y = batches[0]
    for _ in range(2):                     # give every scaler a history
        m32.forward(x, y)
        m32.backward()
        m32.scalers.update()
    m32.scalers["model.layers.0.mlp.up_proj.input"].frozen = True   # one frozen before
    before = m32.scalers.state_dict()
    frozen = {s.name: s.frozen for s in m32.scalers}
    w, g = m32.params_flat.copy(), m32.grads_flat.copy()
    spec = hq.hessian_spectrum(m32, batches, k=2, iters=6, probes=1, rel_step=1e-2)
    assert np.isfinite(spec.top).all() and spec.precision == "hif8"
    assert np.array_equal(m32.params_flat.view(np.uint32), w.view(np.uint32))
    assert np.array_equal(m32.grads_flat.view(np.uint32), g.view(np.uint32))
    assert {s.name: s.frozen for s in m32.scalers} == frozen
    after = m32.scalers.state_dict()
    for name in before:                    # no amax recorded, no counter touched
        assert repr(after[name]) == repr(before[name]), name


def test_llama_spectrum_is_deterministic_given_the_seed():
    m32, _, batches = _tiny_models()
    a = hq.hessian_spectrum(m32, batches, k=2, iters=5, probes=1, seed=7)
    b = hq.hessian_spectrum(m32, batches, k=2, iters=5, probes=1, seed=7)
    assert np.array_equal(a.ritz_values, b.ritz_values)
    d = a.to_dict()
    assert d["num_parameters"] == m32.num_parameters and len(d["density"]) == 256
    assert set(a.summary()) >= {"top", "bottom", "near_zero_fraction", "negative_fraction"}


def test_probe_precision_is_switched_for_the_probe_and_restored():
    m32, _, batches = _tiny_models()
    v = np.random.default_rng(5).standard_normal(m32.num_parameters)
    ref = hessian_vector_product(m32, batches, v)                   # fp32 model
    m32.set_precision("bf16")
    assert np.array_equal(hessian_vector_product(m32, batches, v, precision="fp32"), ref)
    assert m32.precision == "bf16"
    with pytest.raises(ValueError, match="precision"):
        hessian_vector_product(m32, batches, v, precision="fp8")
