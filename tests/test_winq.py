"""WinQ: the interpolation reset, noise-injected gradients, and their training options."""
import json
import os

import numpy as np
import pytest

import hif8qat as hq
from hif8qat.train.config import TrainConfig
from hif8qat.train.trainer import Trainer, read_log, train
from hif8qat.winq import quantized_weight_names, weight_noise, winq_reset
from test_train import CORPUS, TINY, final_state, interrupted_run
from test_train import tiny_config as train_tiny_config



def calibrated_hif8_model(steps=3, **recipe):
    model = hq.LlamaModel.from_config(hq.LlamaConfig(**TINY), seed=0)
    model.set_precision("hif8")
    if recipe:
        model.reset_scalers(**recipe)
    tokens = np.random.default_rng(0).integers(0, 256, size=(2, 17))
    for _ in range(steps):
        model.forward(tokens[:, :-1], tokens[:, 1:])
        model.backward()
        model.scalers.update()
    return model


# ============================================================================ reset
@pytest.mark.parametrize("alpha,recipe", [(0.5, {}), (0.3, dict(margin=1.0)),
                                          (0.7, dict(clip=False)), (1.0, {})])
def test_reset_moves_every_quantized_weight_to_the_interpolation_exactly(alpha, recipe):
    model = calibrated_hif8_model(**recipe)
    # a few weights far above the scale's range, so clipping at fmax matters
    model.param_views["model.layers.0.mlp.up_proj.weight"][0, :3] = [5.0, -7.0, 3.0]
    before = {n: v.copy() for n, v in model.param_views.items()}
    scalers_before = json.dumps(model.scalers.state_dict(), sort_keys=True, default=str)
    names = quantized_weight_names(model)
    assert len(names) == 2 * 7

    stats = winq_reset(model, alpha)

    for name, w in model.param_views.items():
        if name in names:
            s = model.scalers[name]
            q = hq.fake_quant(before[name], s.scale, clip=s.fmax if s.clip else None)
            expect = ((1 - alpha) * before[name].astype(np.float64)
                      + alpha * q.astype(np.float64)).astype(np.float32)
            assert np.array_equal(w.view(np.uint32), expect.view(np.uint32)), name
            if alpha == 1.0:
                assert np.array_equal(w, q)
        else:   # embeddings, norms: untouched
            assert np.array_equal(w.view(np.uint32), before[name].view(np.uint32)), name
    assert json.dumps(model.scalers.state_dict(), sort_keys=True, default=str) == scalers_before
    assert stats["tensors"] == 14 and stats["moved_rms"] > 0
    clipped = model.param_views["model.layers.0.mlp.up_proj.weight"][0, :3]
    if recipe.get("clip", True):   # clipped values move towards ±fmax / scale
        bound = model.scalers["model.layers.0.mlp.up_proj.weight"].fmax / \
            model.scalers["model.layers.0.mlp.up_proj.weight"].scale
        assert np.all(np.abs(clipped) <= (1 - alpha) * np.array([5, 7, 3]) + alpha * bound + 1e-6)


def test_reset_with_alpha_zero_changes_nothing_and_bad_alpha_is_rejected():
    model = calibrated_hif8_model()
    w = model.params_flat.copy()
    winq_reset(model, 0.0)
    assert np.array_equal(model.params_flat, w)
    with pytest.raises(ValueError, match="alpha"):
        winq_reset(model, 1.5)
    with pytest.raises(TypeError, match="alpha"):
        winq_reset(model, "half")


def test_reset_needs_a_scale_estimate():
    model = hq.LlamaModel.from_config(hq.LlamaConfig(**TINY), seed=0)
    with pytest.raises(RuntimeError, match="empty amax history"):
        winq_reset(model, 0.5)


# ============================================================================ noise
def test_weight_noise_has_the_stated_scale_and_is_undone_bit_for_bit():
    model = hq.LlamaModel.from_config(hq.LlamaConfig(**TINY), seed=0)
    clean = {n: v.copy() for n, v in model.param_views.items()}
    names = set(quantized_weight_names(model))
    rng = np.random.default_rng(11)
    with weight_noise(model, 0.1, rng):
        for name, w in model.param_views.items():
            diff = w.astype(np.float64) - clean[name]
            if name in names:
                rms = np.sqrt(np.mean(clean[name].astype(np.float64) ** 2))
                # per-tensor std = 0.1 * RMS(w), within sampling error (>= 1024 entries)
                assert np.std(diff) == pytest.approx(0.1 * rms, rel=0.08), name
                assert abs(np.mean(diff)) < 0.02 * rms
            else:
                assert not diff.any(), name
    for name, w in model.param_views.items():
        assert np.array_equal(w.view(np.uint32), clean[name].view(np.uint32)), name
    # the same generator state gives the same noise; std 0 draws nothing
    state = rng.bit_generator.state
    with weight_noise(model, 0.0, rng):
        assert np.array_equal(model.params_flat, np.concatenate(
            [clean[n].ravel() for n in model.param_views]))
    assert rng.bit_generator.state == state


def test_weight_noise_restores_the_weights_when_the_block_raises():
    model = hq.LlamaModel.from_config(hq.LlamaConfig(**TINY), seed=0)
    w = model.params_flat.copy()
    with pytest.raises(KeyError):
        with weight_noise(model, 0.5, np.random.default_rng(0)):
            raise KeyError("boom")
    assert np.array_equal(model.params_flat, w)


# ============================================================================ training
def tiny_config(tmp_path, **overrides):
    """test_train's tiny run: 12 hif8 steps (2 in BF16 warm-up), batch 4."""
    return train_tiny_config(tmp_path, **{
        "steps": 12, "batch_size": 4, "precision": "hif8", "bf16_warmup_steps": 2,
        "activation": dict(window=4), **overrides})


@pytest.mark.parametrize("field,value,exc", [
    ("winq_reset_every", -1, ValueError), ("winq_alpha", 1.5, ValueError),
    ("winq_alpha", float("nan"), ValueError), ("winq_noise_std", -0.1, ValueError),
    ("hessian_every", -2, ValueError), ("hessian_iters", 1, ValueError),
    ("hessian_k", 0, ValueError), ("hessian_probes", 1.5, TypeError),
])
def test_bad_winq_and_hessian_options_are_rejected_naming_the_field(tmp_path, field, value,
                                                                     exc):
    with pytest.raises(exc, match=field):
        tiny_config(tmp_path, **{field: value})


def test_winq_options_are_off_by_default_and_round_trip_through_toml(tmp_path):
    cfg = tiny_config(tmp_path)
    assert cfg.winq_reset_every == 0 and cfg.winq_noise_std == 0.0 and cfg.hessian_every == 0
    on = cfg.with_overrides({"winq_reset_every": 4, "winq_alpha": 0.25,
                             "winq_noise_std": 0.05, "hessian_every": 3})
    (tmp_path / "c.toml").write_text(on.to_toml())
    assert TrainConfig.from_toml(str(tmp_path / "c.toml")) == on
    with pytest.raises(ValueError, match="winq_reset_every needs precision"):
        tiny_config(tmp_path, precision="bf16", winq_reset_every=2)
    with pytest.raises(ValueError, match="hessian_k"):
        tiny_config(tmp_path, hessian_k=9, hessian_iters=4)
    with pytest.raises(ValueError, match="hessian_precision"):
        tiny_config(tmp_path, precision="bf16", hessian_precision="hif8")
    with pytest.raises(ValueError, match="hessian_rel_step"):
        tiny_config(tmp_path, hessian_rel_step=0.0)


def _hessian_lines(run_dir):
    with open(os.path.join(run_dir, "hessian.jsonl")) as fh:
        return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in fh]


def test_winq_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    kw = dict(winq_reset_every=3, winq_alpha=0.5, winq_noise_std=0.05, grad_accum_steps=2,
              hessian_every=5, hessian_iters=3, hessian_k=1, hessian_probes=1)
    full, split, _ = interrupted_run(tiny_config, tmp_path, stop=6, **kw)

    w_full, s_full = final_state(full)
    w_split, s_split = final_state(split)
    assert w_full == w_split
    for k in ("m", "v"):
        assert np.array_equal(s_full["optimizer"][k], s_split["optimizer"][k])
    assert s_full["trainer_state"]["rng"] == s_split["trainer_state"]["rng"]
    assert json.dumps(s_full["scalers"], sort_keys=True, default=str) == \
        json.dumps(s_split["scalers"], sort_keys=True, default=str)
    log = read_log(full, wall_clock=False)
    assert log == read_log(split, wall_clock=False)
    # resets on QAT steps 3, 6, 9 of the QAT phase (global steps 5, 8, 11)
    assert [r["step"] for r in log if "winq_reset" in r] == [5, 8, 11]
    assert [r["step"] for r in log if "hessian" in r] == [5, 10]
    assert _hessian_lines(full) == _hessian_lines(split)
    assert [h["step"] for h in _hessian_lines(full)] == [5, 10]


def test_noise_changes_the_gradient_but_not_the_step_it_is_applied_to(tmp_path):
    base = Trainer(tiny_config(tmp_path, run_dir=str(tmp_path / "a"), bf16_warmup_steps=0))
    noisy = Trainer(tiny_config(tmp_path, run_dir=str(tmp_path / "b"), bf16_warmup_steps=0,
                                winq_noise_std=0.1))
    w0 = base.model.params_flat.copy()
    ra, rb = base.step(), noisy.step()
    assert ra["loss"] != rb["loss"]             # the forward ran at w + eps
    # AdamW's first step moves each weight by about lr·sign(g): both runs started from w0
    # and moved from w0, not from w0 + eps
    da = base.model.params_flat - w0
    db = noisy.model.params_flat - w0
    assert np.abs(da).max() <= 1.01 * 3e-3 and np.abs(db).max() <= 1.01 * 3e-3


def test_hessian_probes_do_not_change_training(tmp_path):
    plain = train(tiny_config(tmp_path, run_dir=str(tmp_path / "plain"), steps=6))
    probed = train(tiny_config(tmp_path, run_dir=str(tmp_path / "probed"), steps=6,
                               hessian_every=2, hessian_iters=4, hessian_k=2,
                               hessian_probes=1, hessian_precision="hif8",
                               hessian_rel_step=0.1))
    assert final_state(plain)[0] == final_state(probed)[0]
    strip = [{k: v for k, v in r.items() if k != "hessian"}
             for r in read_log(probed, wall_clock=False)]
    assert strip == read_log(plain, wall_clock=False)
    lines = _hessian_lines(probed)
    assert [(h["step"], h["phase"]) for h in lines] == [(2, "bf16_warmup"), (4, "qat"),
                                                      (6, "qat")]
    assert all(len(h["top"]) == 2 and h["precision"] == "hif8" for h in lines)
    assert all(h["rel_step"] == 0.1 for h in lines)


def test_the_shipped_ablation_config_builds_a_valid_run_per_variant(tmp_path):
    from hif8qat import winq
    spec = winq._load_spec(winq.ablation_path())
    assert spec["baseline"] in spec["variants"] and "qat" in spec["variants"]
    (tmp_path / "d.txt").write_text(CORPUS)
    cfgs = {n: winq.variant_config(spec, n, str(tmp_path), str(tmp_path / "d.txt"),
                                   str(tmp_path / n)) for n in spec["variants"]}
    assert cfgs["bf16"].precision == "bf16" and cfgs["qat"].winq_reset_every == 0
    assert cfgs["winq"].winq_reset_every > 0 and cfgs["winq"].winq_noise_std > 0
    # equal training cost: every variant runs the same steps, batches and schedule
    keys = ("steps", "batch_size", "seq_len", "lr", "lr_schedule", "seed")
    assert len({tuple(getattr(c, k) for k in keys) for c in cfgs.values()}) == 1
