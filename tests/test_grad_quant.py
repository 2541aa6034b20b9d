"""Output-gradient quantization (TrainConfig.quantize_grads): dY cast to HiF8 with a
"<module>.grad_output" DelayedScaler (fmax 224), dX = Ĝ·Ŵ and dW = Ĝᵀ·X̂ on codes.

Checked against an independent float64 NumPy re-implementation built from
hq.fake_quant and the scalers' scales; stochastic rounding for reproducibility
(seed, step, thread count, resume) and unbiasedness; the BF16 warm-up filling the
gradient scalers' histories; and the training loop end to end.
"""
import json
import os

import numpy as np
import pytest

import hif8qat as hq
from hif8qat.model import llama as llama_mod
from hif8qat.model.linear import (grad_cast_seed, linear_backward, linear_forward,
                                  quantize_grad_output)
from hif8qat.train import checkpoint as ckpt
from hif8qat.train.config import TrainConfig
from hif8qat.train.trainer import Trainer, read_log, train

from test_train import TINY, final_state, interrupted_run, tiny_config

GRAD_FMAX = 224.0

def tiny_train_config(tmp_path, **overrides):
    """test_train's tiny run, in hif8 with output-gradient quantization."""
    return tiny_config(tmp_path, **{"precision": "hif8", "quantize_grads": True,
                                    **overrides})


def small_model(seed=0):
    cfg = hq.LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=24,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=32)
    model = hq.LlamaModel.from_config(cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for v in model.param_views.values():          # norms away from 1: they matter
        v += (0.2 * rng.standard_normal(v.shape)).astype(np.float32)
    tokens = rng.integers(0, 48, size=(2, 9))
    return model, tokens[:, :-1], tokens[:, 1:]


def calibrate(model, x, y):
    """One BF16 warm-up step (every scaler observes, grad scalers included), then update."""
    model.set_precision("bf16")
    model.calibrating = True
    model.forward(x, y)
    model.backward()
    model.scalers.update()
    model.calibrating = False


def ref_hif8(x, scale, fmax):
    """Spec value of a cast operand (float64) and where its STE passes."""
    x32 = np.asarray(x, dtype=np.float32)
    x_hat = hq.fake_quant(x32, scale=scale, clip=fmax).astype(np.float64)
    return x_hat, np.abs(x32 * np.float32(scale)) < hq.clip_threshold(fmax)


def calibrated(name, sample, fmax=15.0):
    s = hq.DelayedScaler(window=4, fmax=fmax, name=name)
    s.observe(sample)
    s.update()
    return s


# ========================================================== the linear layer, nearest
def test_linear_backward_with_quantized_dy_matches_float64_reference():
    rng = np.random.default_rng(0)
    N, C, OC = 24, 40, 12
    x = rng.standard_normal((N, C)).astype(np.float32)
    w = (0.1 * rng.standard_normal((OC, C))).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32)
    dy = (1e-3 * rng.standard_normal((N, OC))).astype(np.float32)
    # scales calibrated on smaller tensors, so the outliers below clip (x, w, and dY)
    xs, ws = calibrated("x", 0.5 * x), calibrated("w", 0.1 * w)
    gs = calibrated("g", 0.5 * dy, fmax=GRAD_FMAX)
    x[3, 5], w[2, 7], dy[4, 1] = 40.0, 3.0, 0.05
    y, cache = linear_forward(x, w, b, precision="hif8", w_scaler=ws, x_scaler=xs, g_scaler=gs)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    dx = linear_backward(dy, cache, dw, db)

    xq, xm = ref_hif8(x, xs.scale, 15.0)
    wq, wm = ref_hif8(w, ws.scale, 15.0)
    gq, _ = ref_hif8(dy, gs.scale, GRAD_FMAX)          # dY: clamped to +-224/scale
    assert not xm.all() and not wm.all()
    dx_ref, dw_ref = (gq @ wq) * xm, (gq.T @ xq) * wm
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-6 * np.abs(dx_ref).max())
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-6 * np.abs(dw_ref).max())
    np.testing.assert_allclose(db, dy.sum(0), rtol=1e-6)   # the bias sees the unquantized dY
    # the cast really happened: the bf16(dY) backward differs by far more than the tolerance
    bf = hq.round_bf16(dy).astype(np.float64)
    assert np.abs((bf.T @ xq) * wm - dw_ref).max() > 100 * 1e-6 * np.abs(dw_ref).max()
    st = gs.step_stats()
    assert st["n"] == dy.size and st["clipped"] >= 1 and st["amax"] == np.float32(0.05)
    # accumulate adds the same quantized product
    dw2 = dw.copy()
    linear_backward(dy, cache, dw2, None, accumulate=True)
    np.testing.assert_allclose(dw2, 2 * dw, rtol=1e-6)


def test_model_backward_casts_every_projections_dy_with_its_own_scaler(monkeypatch):
    """Each projection's dW is Ĝᵀ·X̂ (masked) with Ĝ from "<module>.grad_output"'s scale."""
    model, x, y = small_model()
    model.configure_grad_quantization(window=8)
    calibrate(model, x, y)
    seen = {}

    def spy(dy, cache, dweight, dbias=None, **kw):
        out = linear_backward(dy, cache, dweight, dbias, **kw)
        seen[id(dweight)] = (dy.copy(), cache)
        return out

    monkeypatch.setattr(llama_mod, "linear_backward", spy)
    model.set_precision("hif8")
    model.forward(x, y)
    model.backward()
    modules = [n[:-len(".weight")] for n in model.scaler_names() if n.endswith(".weight")]
    assert len(seen) == len(modules) == 14
    for m in modules:
        dy, cache = seen[id(model.grad_views[m + ".weight"])]
        gs = model.scalers[m + ".grad_output"]
        assert cache.g_scaler is gs and gs.step_stats()["n"] == dy.size
        gq, _ = ref_hif8(dy, gs.scale, GRAD_FMAX)
        xq = hq.from_hif8(cache.x_codes, cache.x_scale_inv).astype(np.float64)
        ref = (gq.T @ xq) * cache.w_mask
        np.testing.assert_allclose(model.grad_views[m + ".weight"], ref, rtol=1e-5,
                                   atol=1e-6 * np.abs(ref).max(), err_msg=m)


def test_bf16_and_fp32_precisions_ignore_gradient_quantization():
    model, x, y = small_model()
    plain, _, _ = small_model()
    model.configure_grad_quantization()
    for prec in ("bf16", "fp32"):
        for m in (model, plain):
            m.set_precision(prec)
            m.forward(x, y)
            m.backward()
        assert np.array_equal(model.grads_flat, plain.grads_flat), prec
    assert all(s.step_stats()["n"] == 0 and s.staging_amax == 0.0 for s in model.scalers)


# ========================================================== stochastic rounding
def stochastic_grads(model, x, y, step):
    model.grad_step = step
    model.forward(x, y)
    model.backward()
    return model.grads_flat.copy()


def test_stochastic_dy_same_seed_same_bits_new_step_new_codes():
    model, x, y = small_model()
    model.configure_grad_quantization(rounding="stochastic", seed=5)
    calibrate(model, x, y)
    model.set_precision("hif8")
    a = stochastic_grads(model, x, y, 7)
    b = stochastic_grads(model, x, y, 7)     # no update between: same scales, same seeds
    c = stochastic_grads(model, x, y, 8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # an independent model with another config seed draws other bits
    other, _, _ = small_model()
    other.configure_grad_quantization(rounding="stochastic", seed=6)
    calibrate(other, x, y)
    other.set_precision("hif8")
    assert not np.array_equal(a, stochastic_grads(other, x, y, 7))
    # the seed helper: a function of (seed, step, tensor, use) only
    seeds = {grad_cast_seed(s, st, t, u) for s in (0, 1) for st in (0, 1, 2)
             for t in range(7) for u in (0, 1)}
    assert len(seeds) == 2 * 3 * 7 * 2 and grad_cast_seed(3, 4, 5, 6) == grad_cast_seed(3, 4, 5, 6)
    # micro-batches of one step draw different bits (the use counter), reset by grad_step
    model.grad_step = 9
    first = model._grad_cast("model.layers.0.mlp.up_proj")
    second = model._grad_cast("model.layers.0.mlp.up_proj")
    model.grad_step = 9
    assert first != second and model._grad_cast("model.layers.0.mlp.up_proj") == first


def test_stochastic_dy_is_unbiased_and_nearest_is_not():
    rng = np.random.default_rng(3)
    dy = (1e-3 * rng.uniform(0.5, 1.0, size=(64, 64))).astype(np.float32)
    s = calibrated("g", dy, fmax=GRAD_FMAX)
    s.frozen = True                                   # the same scale for every draw
    n = 200
    total = np.zeros(dy.shape, np.float64)
    draws = []
    for step in range(n):
        codes, si = quantize_grad_output(dy, s, rounding="stochastic",
                                         seed=grad_cast_seed(0, step, 0))
        v = hq.from_hif8(codes, si).astype(np.float64)
        total += v
        if step < 2:
            draws.append(codes)
    assert not np.array_equal(draws[0], draws[1])
    mean = total / n
    codes, si = quantize_grad_output(dy, s, rounding="nearest")
    nearest_err = hq.from_hif8(codes, si).astype(np.float64) - dy
    sr_err = mean - dy
    # per element the mean of n draws is within a few sigma of dY (sigma <= gap/2/sqrt(n))
    assert np.abs(sr_err).mean() < 0.25 * np.abs(nearest_err).mean()
    # a constant 30% of the way from 24 to 28 (HiF8 neighbours in [16, 32)): nearest is
    # off by -1.2 everywhere, the stochastic mean by ~0 (sigma of the mean ~0.002)
    const = np.full((64, 64), np.float32(25.2) / np.float32(s.scale), np.float32)
    assert hq.from_hif8(quantize_grad_output(const, s)[0])[0, 0] == 24.0
    mean = np.mean([hq.from_hif8(quantize_grad_output(const, s, rounding="stochastic",
                                                      seed=grad_cast_seed(1, step, 2))[0])
                    .astype(np.float64).mean() for step in range(n)])
    assert abs(mean - 25.2) < 0.01, mean


def test_stochastic_backward_is_identical_with_one_and_two_threads():
    before = hq.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            hq.set_num_threads(threads)
            model, x, y = small_model()
            model.configure_grad_quantization(rounding="stochastic", seed=11)
            calibrate(model, x, y)
            model.set_precision("hif8")
            out.append(stochastic_grads(model, x, y, 3))
        assert np.array_equal(out[0], out[1])
    finally:
        hq.set_num_threads(before)


# ========================================================== warm-up, API, config
def test_grad_scaler_histories_fill_during_the_calibrating_warmup(monkeypatch):
    model, x, y = small_model()
    plain, _, _ = small_model()
    model.configure_grad_quantization(window=4)
    amax = {}

    def spy(dy, cache, dweight, dbias=None, **kw):
        if cache.g_scaler is not None:
            amax[cache.g_scaler.name] = np.float32(np.abs(dy).max())
        return linear_backward(dy, cache, dweight, dbias, **kw)

    monkeypatch.setattr(llama_mod, "linear_backward", spy)
    for step in range(1, 4):
        calibrate(model, x, y)
        grads = model.grads_flat.copy()
        plain.set_precision("bf16")
        plain.forward(x, y)
        plain.backward()
        assert np.array_equal(grads, plain.grads_flat)      # observing casts nothing
        gscalers = [s for s in model.scalers if s.name.endswith(".grad_output")]
        assert len(gscalers) == 14
        for s in gscalers:
            assert s.n_valid == step and s.history[-1] == amax[s.name]
            assert s.scale == np.float32(np.float32(GRAD_FMAX) / np.max(s.history))


def test_configure_grad_quantization_adds_and_removes_scalers():
    model, x, y = small_model()
    calibrate(model, x, y)
    kept = model.scalers["model.layers.0.self_attn.q_proj.input"]
    assert len(model.scalers) == 28 and model.grad_quantization is None
    model.configure_grad_quantization(fmax=100.0, window=3, algo="most_recent", margin=1.0,
                                      clip=False, rounding="stochastic", seed=2)
    names = model.scalers.names()
    assert len(names) == 42 and names[:3] == ["model.layers.0.self_attn.q_proj.weight",
                                              "model.layers.0.self_attn.q_proj.input",
                                              "model.layers.0.self_attn.q_proj.grad_output"]
    assert model.scalers["model.layers.0.self_attn.q_proj.input"] is kept   # history kept
    g = model.scalers["model.layers.1.mlp.down_proj.grad_output"]
    assert (g.fmax, g.window, g.algo, g.margin, g.clip) == (100.0, 3, "most_recent", 1.0, False)
    assert model.grad_quantization["rounding"] == "stochastic"
    model.configure_scalers(weight=dict(window=2))        # a re-configure keeps them
    assert len(model.scalers) == 42
    model.configure_grad_quantization(enabled=False)
    assert len(model.scalers) == 28 and model.grad_quantization is None


@pytest.mark.parametrize("kw,exc,match", [
    (dict(rounding="up"), ValueError, "rounding"),
    (dict(fmax=0.0), ValueError, "fmax"),
    (dict(fmax=float("nan")), ValueError, "fmax"),
    (dict(window=0), ValueError, "window"),
    (dict(algo="mean"), ValueError, "algo"),
    (dict(margin=-1.0), ValueError, "margin"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(enabled="yes"), TypeError, "enabled"),
])
def test_bad_grad_quantization_arguments_are_rejected(kw, exc, match):
    model, _, _ = small_model()
    with pytest.raises(exc, match=match):
        model.configure_grad_quantization(**kw)
    assert len(model.scalers) == 28
    with pytest.raises(ValueError, match="grad_step"):
        model.grad_step = -1


@pytest.mark.parametrize("field,value,exc,match", [
    ("grad_rounding", "up", ValueError, "TrainConfig.grad_rounding"),
    ("grad_rounding", None, ValueError, "TrainConfig.grad_rounding"),
    ("quantize_grads", "yes", TypeError, "TrainConfig.quantize_grads"),
    ("grad", dict(fmax=0.0), ValueError, "TrainConfig.grad.fmax"),
    ("grad", dict(fmax=1e6), ValueError, "TrainConfig.grad.fmax"),
    ("grad", dict(window=0), ValueError, "TrainConfig.grad.window"),
    ("grad", dict(algo="mean"), ValueError, "TrainConfig.grad.algo"),
    ("grad", dict(margin=-2.0), ValueError, "TrainConfig.grad.margin"),
    ("grad", dict(clip="no"), TypeError, "TrainConfig.grad.clip"),
    ("grad", dict(rounding="nearest"), ValueError, "unknown key 'rounding' in \\[grad\\]"),
])
def test_bad_grad_settings_are_rejected_naming_the_field(tmp_path, field, value, exc, match):
    with pytest.raises(exc, match=match):
        tiny_train_config(tmp_path, **{field: value})
    assert not os.path.exists(tmp_path / "run")


# ========================================================== the training loop
def test_tiny_model_learns_with_quantized_gradients(tmp_path):
    for rounding in ("nearest", "stochastic"):
        cfg = tiny_train_config(tmp_path, lr=1e-2, bf16_warmup_steps=5, grad_rounding=rounding,
                                run_dir=str(tmp_path / rounding))
        log = read_log(train(cfg))
        first, last = log[0]["loss"], np.mean([r["loss"] for r in log[-3:]])
        assert first > 5.0 and last < 0.4 * first, (rounding, first, last)


def test_step_log_and_summary_carry_the_grad_scalers(tmp_path):
    t = Trainer(tiny_train_config(tmp_path, steps=6, bf16_warmup_steps=3))
    names = [n for n in t.model.scalers.names() if n.endswith(".grad_output")]
    assert len(names) == 7 * TINY["num_hidden_layers"]
    for step in range(1, 5):
        rec = t.step()
        for n in names:
            s = rec["scalers"][n]
            assert set(s) == {"amax", "scale", "headroom", "clipped_fraction"}
            assert s["amax"] > 0.0                       # dY seen in warm-up and QAT alike
            if rec["phase"] == "qat":
                assert s["headroom"] > 0.0 and s["scale"] != 1.0
            else:
                assert s["headroom"] == 0.0 and s["clipped_fraction"] == 0.0   # nothing cast
        assert t.model.scalers[names[0]].n_valid == step
    # a delayed scale lagging far behind the data saturates the gradient cast: the step
    # log and the summary count it like any other scaler's
    gs = t.model.scalers[names[-1]]
    gs.load_state_dict(dict(gs.state_dict(), history=gs.history * np.float32(1e-3),
                            scale=gs.scale * 1e3))
    rec = t.step()
    assert rec["scalers"][names[-1]]["clipped_fraction"] > 0 and rec["saturated"] >= 1
    t.run()
    summary = json.load(open(os.path.join(t.run_dir, "summary.json")))
    assert set(names) <= set(summary["scalers"])
    assert summary["saturation"]["per_scaler"][names[-1]] >= 1


def test_resume_with_stochastic_grad_rounding_is_bit_identical(tmp_path):
    kw = dict(steps=20, bf16_warmup_steps=3, grad_rounding="stochastic", grad_accum_steps=2,
              lr=5e-3, seed=4, grad=dict(window=4))
    full, split, resumed = interrupted_run(tiny_train_config, tmp_path, stop=10, **kw)
    assert resumed.model.grad_quantization["rounding"] == "stochastic"

    (w_full, s_full), (w_split, s_split) = final_state(full), final_state(split)
    assert w_full == w_split
    for k in ("m", "v"):
        assert np.array_equal(s_full["optimizer"][k], s_split["optimizer"][k])
    assert any(n.endswith(".grad_output") for n in s_full["scalers"])
    assert json.dumps(s_full["scalers"], sort_keys=True, default=str) == \
        json.dumps(s_split["scalers"], sort_keys=True, default=str)
    assert read_log(full, wall_clock=False) == read_log(split, wall_clock=False)
    # and the stochastic bits mattered: a nearest run ends elsewhere
    near = train(tiny_train_config(tmp_path, run_dir=str(tmp_path / "near"),
                                   **dict(kw, grad_rounding="nearest")))
    assert final_state(near)[0] != w_full


def test_quantize_grads_off_leaves_runs_and_checkpoints_unchanged(tmp_path):
    t = Trainer(tiny_train_config(tmp_path, steps=2, quantize_grads=False))
    assert not any(n.endswith(".grad_output") for n in t.model.scalers.names())
    # a baseline sharing the QAT config ignores quantize_grads (no scalers at all)
    b = Trainer(tiny_train_config(tmp_path, steps=2, precision="bf16",
                                  run_dir=str(tmp_path / "b")))
    assert "scalers" not in b.step()


def test_a_trained_models_scalers_rebuild_from_config_and_checkpoint(tmp_path):
    """What an evaluation needs: the same scaler group (grad scalers included) rebuilt
    from the run's config, loading the checkpoint's states strictly."""
    from hif8qat.train.trainer import configure_model_scalers
    run = train(tiny_train_config(tmp_path, steps=3, bf16_warmup_steps=1,
                                  grad=dict(window=5)))
    state = ckpt.load_training_checkpoint(ckpt.latest_checkpoint(os.path.join(run,
                                                                              "checkpoints")))
    model = hq.load_model(state["model_dir"])
    config = TrainConfig.from_toml(os.path.join(run, "config.toml"))
    configure_model_scalers(model, config)
    model.scalers.load_state_dict(state["scalers"])              # strict: names match
    g = model.scalers["model.layers.1.self_attn.v_proj.grad_output"]
    assert g.window == 5 and g.n_valid == 3
    assert g.history.tolist() == list(state["scalers"][g.name]["history"])
