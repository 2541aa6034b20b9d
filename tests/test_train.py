"""Training loop: config validation, data order, AdamW, atomic checkpoints, the loop.

The loop tests use a tiny byte-level Llama (vocab 256, hidden 32, 2 layers, seq 32)
so the whole file runs in seconds.
"""
import json
import math
import os

import numpy as np
import pytest

from hif8qat.train import checkpoint as ckpt
from hif8qat.train.config import ScalingRecipe, TrainConfig
from hif8qat.train.data import (IGNORE_INDEX, TokenBatches, decode_bytes, encode_bytes,
                                load_tokens, split_micro_batches)
from hif8qat.train.optim import (AdamW, clip_grad_norm_, global_grad_norm, lr_at,
                                 matrix_decay_mask)

TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)

CORPUS = ("the cat sat on the mat. the dog sat on the log. a cat and a dog met on a mat. "
          "the mat was red and the log was brown. ") * 40


def tiny_config(tmp_path, **overrides):
    data = tmp_path / "corpus.txt"
    if not data.exists():
        data.write_text(CORPUS)
    kw = dict(model_config=dict(TINY), data=str(data), run_dir=str(tmp_path / "run"),
              steps=20, batch_size=8, seq_len=32, lr=3e-3, lr_schedule="constant",
              progress=False, weight_decay=0.0)
    kw.update(overrides)
    return TrainConfig(**kw)


# ============================================================================ config
def test_config_defaults_validate_and_phase_schedule(tmp_path):
    cfg = tiny_config(tmp_path, bf16_warmup_steps=5, precision="hif8")
    assert [cfg.phase_at(s) for s in (0, 4, 5, 19)] == ["bf16_warmup"] * 2 + ["qat"] * 2
    base = tiny_config(tmp_path, bf16_warmup_steps=5, precision="bf16")
    assert {base.phase_at(s) for s in range(20)} == {"bf16"}
    assert cfg.grad.fmax == 224.0 and cfg.weight.fmax == 15.0 and cfg.activation.window == 64
    assert cfg.micro_batch_size == 8


@pytest.mark.parametrize("field,value,exc,match", [
    ("steps", -5, ValueError, "steps"),
    ("steps", 0, ValueError, "steps"),
    ("steps", 2.5, TypeError, "steps"),
    ("precision", "fp8", ValueError, "precision"),
    ("bf16_warmup_steps", 21, ValueError, "bf16_warmup_steps"),
    ("lr_warmup_steps", 50, ValueError, "lr_warmup_steps"),
    ("lr", float("nan"), ValueError, "lr"),
    ("lr", -1e-3, ValueError, "lr"),
    ("beta2", 1.0, ValueError, "beta2"),
    ("eps", 0.0, ValueError, "eps"),
    ("grad_accum_steps", 3, ValueError, "grad_accum_steps"),
    ("lr_schedule", "linear", ValueError, "lr_schedule"),
    ("grad_rounding", "up", ValueError, "grad_rounding"),
    ("quantize_grads", 1, TypeError, "quantize_grads"),
    ("keep_checkpoints", 0, ValueError, "keep_checkpoints"),
    ("min_lr", 1.0, ValueError, "min_lr"),
    ("progress", "yes", TypeError, "progress"),
])
def test_bad_config_values_are_rejected_naming_the_field(tmp_path, field, value, exc, match):
    with pytest.raises(exc, match=match):
        tiny_config(tmp_path, **{field: value})


@pytest.mark.parametrize("recipe,match", [
    (dict(window=0), "activation.window"), (dict(algo="mean"), "activation.algo"),
    (dict(fmax=-1.0), "activation.fmax"), (dict(ste="sign"), "activation.ste"),
    (dict(margin=float("inf")), "activation.margin"), (dict(clip="yes"), "activation.clip"),
])
def test_bad_scaling_recipes_are_rejected_naming_role_and_field(tmp_path, recipe, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_config(tmp_path, activation=recipe)


def test_model_source_must_be_exactly_one(tmp_path):
    with pytest.raises(ValueError, match="exactly one of model_dir"):
        tiny_config(tmp_path, model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="exactly one of model_dir"):
        TrainConfig(data="x.txt")


def test_toml_round_trip_and_relative_paths(tmp_path):
    cfg = tiny_config(tmp_path, lr=1.5e-4, bf16_warmup_steps=3,
                      activation=dict(algo="most_recent", window=16, margin=1.0))
    cfg = cfg.with_overrides({"weight.clip": False})
    text = cfg.to_toml()
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "run.toml").write_text(text)
    back = TrainConfig.from_toml(str(sub / "run.toml"))
    assert back == cfg
    assert back.activation == ScalingRecipe(window=16, algo="most_recent", margin=1.0)
    assert back.weight.clip is False
    # a relative data path is relative to the TOML file
    (sub / "rel.toml").write_text(text.replace(json.dumps(cfg.data), '"../corpus.txt"'))
    assert TrainConfig.from_toml(str(sub / "rel.toml")).data == cfg.data


@pytest.mark.parametrize("snippet,match", [
    ("stepz = 10\n", r"unknown key 'stepz'.*did you mean 'steps'"),
    ("[activation]\nwindw = 8\n", r"unknown key 'windw' in \[activation\]"),
    ("steps = -1\n", "TrainConfig.steps"),
    ('precision = "int8"\n', "TrainConfig.precision"),
    ("steps = 10\nbf16_warmup_steps = 11\n", "bf16_warmup_steps"),
    ("steps = [\n", "not valid TOML"),
])
def test_bad_toml_files_are_rejected_before_any_work(tmp_path, snippet, match):
    base = 'data = "corpus.txt"\n[model_config]\nvocab_size = 256\n'
    p = tmp_path / "bad.toml"
    p.write_text(snippet + base if not snippet.startswith("[") else base + snippet)
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig.from_toml(str(p))
    assert not (tmp_path / "runs").exists()


def test_differences_names_changed_fields(tmp_path):
    a = tiny_config(tmp_path)
    b = a.with_overrides({"lr": 1.0, "activation.window": 8, "steps": 30})
    assert a.differences(b) == ["activation.window", "lr", "steps"]


# ============================================================================ data
def test_byte_tokenizer_round_trips_utf8():
    text = "héllo — HiF8 ✓"
    toks = encode_bytes(text)
    assert toks.dtype == np.int64 and toks.max() < 256
    assert decode_bytes(toks) == text


def test_batches_are_shifted_chunks_of_the_stream():
    tokens = np.arange(1000, dtype=np.int64)
    b = TokenBatches(tokens, seq_len=10, batch_size=4, seed=3)
    x, y = b.next_batch()
    assert x.shape == y.shape == (4, 10)
    assert np.array_equal(y, x + 1)           # targets are the next tokens
    assert np.all(x[:, 0] % 10 == 0)          # chunks start on seq_len boundaries


def test_batch_order_depends_only_on_seed_and_index():
    tokens = np.random.default_rng(0).integers(0, 256, 5000)
    a = TokenBatches(tokens, seq_len=16, batch_size=8, seed=7)
    b = TokenBatches(tokens, seq_len=16, batch_size=8, seed=7)
    c = TokenBatches(tokens, seq_len=16, batch_size=8, seed=8)
    seq_a = [a.next_batch()[0] for _ in range(60)]   # crosses epoch boundaries
    assert all(np.array_equal(seq_a[k], b.batch(k)[0]) for k in range(60))
    assert not np.array_equal(seq_a[0], c.next_batch()[0])


def test_each_epoch_visits_every_chunk_once():
    tokens = np.arange(16 * 20 + 1)
    b = TokenBatches(tokens, seq_len=16, batch_size=5, seed=1)
    assert b.n_chunks == 20
    ids = np.concatenate([b.chunk_ids(k) for k in range(8)])   # two epochs
    assert sorted(ids[:20]) == list(range(20)) and sorted(ids[20:]) == list(range(20))
    assert not np.array_equal(ids[:20], ids[20:])             # reshuffled per epoch


def test_data_position_resumes_the_same_stream():
    tokens = np.random.default_rng(1).integers(0, 256, 3000)
    a = TokenBatches(tokens, seq_len=16, batch_size=4, seed=0)
    for _ in range(7):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    b = TokenBatches(tokens, seq_len=16, batch_size=4, seed=0)
    b.load_state_dict(state)
    assert np.array_equal(a.next_batch()[0], b.next_batch()[0])
    other = TokenBatches(tokens[:-50], seq_len=16, batch_size=4, seed=0)
    with pytest.raises(ValueError, match="n_tokens"):
        other.load_state_dict(state)
    edited = tokens.copy()
    edited[100] += 1                      # same length, different content
    with pytest.raises(ValueError, match="sha256"):
        TokenBatches(edited, seq_len=16, batch_size=4, seed=0).load_state_dict(state)


def test_loss_mask_turns_targets_into_ignore_index(tmp_path):
    tokens = np.arange(200) % 256
    mask = (np.arange(200) % 3) != 0
    np.savez(tmp_path / "d.npz", tokens=tokens, loss_mask=mask)
    toks, m = load_tokens(str(tmp_path / "d.npz"))
    b = TokenBatches(toks, seq_len=8, batch_size=2, seed=0, loss_mask=m)
    x, y = b.next_batch()
    expect = np.where((x + 1) % 3 != 0, x + 1, IGNORE_INDEX)
    assert np.array_equal(y, expect)


def test_bad_data_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_tokens(str(tmp_path / "missing.txt"))
    np.save(tmp_path / "f.npy", np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="1-D"):
        load_tokens(str(tmp_path / "f.npy"))
    np.save(tmp_path / "g.npy", np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="integers"):
        load_tokens(str(tmp_path / "g.npy"))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="junk.npy"):
        load_tokens(str(tmp_path / "junk.npy"))
    with pytest.raises(ValueError, match="too few"):
        TokenBatches(np.arange(5), seq_len=8, batch_size=1)


def test_micro_batch_weights_are_token_shares():
    x = np.zeros((4, 5), np.int64)
    y = np.ones((4, 5), np.int64)
    y[0, :4] = IGNORE_INDEX     # micro-batch 0 keeps 1 + 5 = 6 targets, micro-batch 1 keeps 10
    parts = split_micro_batches(x, y, 2)
    assert [p[2] for p in parts] == [6 / 16, 10 / 16]
    assert sum(p[0].shape[0] for p in parts) == 4


# ============================================================================ optim
def adamw_reference(p, grads_seq, lrs, b1, b2, eps, wd, mask):
    """float64 textbook AdamW (Loshchilov & Hutter, PyTorch's form)."""
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads_seq, lrs), start=1):
        g = g.astype(np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * wd * mask * p
        mhat = m / (1 - b1 ** t)
        vhat = v / (1 - b2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


def test_adamw_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(300).astype(np.float32)
    mask = (np.arange(300) < 200).astype(np.float32)
    grads = [rng.standard_normal(300).astype(np.float32) for _ in range(12)]
    lrs = [1e-2 * (k + 1) / 12 for k in range(12)]
    p = p0.copy()
    opt = AdamW(p, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, decay_mask=mask)
    for g, lr in zip(grads, lrs):
        opt.step(g, lr)
    ref = adamw_reference(p0, grads, lrs, 0.9, 0.95, 1e-8, 0.1, mask)
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6)
    assert opt.t == 12


def test_blocked_adamw_equals_a_whole_array_float32_update_bit_for_bit():
    # 150,001 elements: three blocks, decayed runs that cross block boundaries
    n = 150_001
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal(n).astype(np.float32)
    mask = np.zeros(n, np.float32)
    mask[1000:70000] = 1
    mask[130000:140000] = 1
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    p = p0.copy()
    opt = AdamW(p, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, decay_mask=mask)
    q, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    f = np.float32
    for t, g in enumerate(grads, start=1):
        opt.step(g, 1e-2)
        m = m * f(0.9) + g * f(1 - 0.9)
        v = v * f(0.95) + (g * g) * f(1 - 0.95)
        q = np.where(mask > 0, q * f(1 - 1e-2 * 0.1), q)
        denom = np.sqrt(v) * f(1 / math.sqrt(1 - 0.95 ** t)) + f(1e-8)
        q = q - (m / denom) * f(1e-2 / (1 - 0.9 ** t))
    assert np.array_equal(p, q) and np.array_equal(opt.m, m) and np.array_equal(opt.v, v)


def test_weight_decay_touches_matrices_only():
    flat = np.ones(4 * 3 + 3 + 4, np.float32)
    views = {"w": flat[:12].reshape(4, 3), "b": flat[12:15], "norm": flat[15:]}
    mask = matrix_decay_mask(flat, views)
    assert mask[:12].all() and not mask[12:].any()
    opt = AdamW(flat, weight_decay=0.5, decay_mask=mask)
    opt.step(np.zeros_like(flat), lr=0.1)   # zero gradient: only the decay moves p
    assert np.allclose(flat[:12], 0.95) and np.all(flat[12:] == 1.0)


def test_adamw_state_round_trip_continues_identically():
    rng = np.random.default_rng(2)
    p = rng.standard_normal(50).astype(np.float32)
    q = p.copy()
    a, b = AdamW(p), AdamW(q)
    g = [rng.standard_normal(50).astype(np.float32) for _ in range(6)]
    for k in range(3):
        a.step(g[k], 1e-2)
        b.step(g[k], 1e-2)
    c_params = q.copy()
    c = AdamW(c_params)
    c.load_state_dict({k: (v.copy() if isinstance(v, np.ndarray) else v)
                       for k, v in b.state_dict().items()})
    for k in range(3, 6):
        a.step(g[k], 1e-2)
        c.step(g[k], 1e-2)
    assert np.array_equal(p, c_params)
    with pytest.raises(ValueError, match="different model"):
        AdamW(np.zeros(10, np.float32)).load_state_dict(a.state_dict())


def test_grad_clipping_scales_to_the_threshold_and_reports_the_old_norm():
    g = np.full(100, 0.3, np.float32)          # norm 3
    norm = clip_grad_norm_(g, 1.0)
    assert math.isclose(norm, 3.0, rel_tol=1e-6)
    assert math.isclose(global_grad_norm(g), 1.0, rel_tol=1e-5)
    small = np.full(4, 0.1, np.float32)
    clip_grad_norm_(small, 1.0)
    assert np.all(small == np.float32(0.1))     # below the threshold: untouched
    bad = np.array([1.0, np.inf], np.float32)
    assert math.isinf(clip_grad_norm_(bad, 1.0))


def test_lr_schedule_warmup_then_cosine_or_constant():
    kw = dict(lr=1.0, steps=10, warmup_steps=2, min_lr=0.1)
    lrs = [lr_at(s, schedule="cosine", **kw) for s in range(10)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0
    assert math.isclose(lrs[-1], 0.1) and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert math.isclose(lr_at(5, schedule="cosine", **kw),
                        0.1 + 0.45 * (1 + math.cos(math.pi * (5 - 2) / 7)))
    assert [lr_at(s, schedule="constant", **kw) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


# ============================================================================ checkpoint files
def _write_two_files(tmp):
    with open(os.path.join(tmp, "a.bin"), "wb") as fh:
        fh.write(b"\x00" * 100)
    os.makedirs(os.path.join(tmp, "sub"))
    with open(os.path.join(tmp, "sub", "b.txt"), "w") as fh:
        fh.write("hello")


def test_checkpoint_write_verify_and_latest_pointer(tmp_path):
    root = str(tmp_path / "ck")
    p1 = ckpt.write_checkpoint(root, "step_000001", _write_two_files)
    man = ckpt.verify_checkpoint(p1)
    assert set(man["files"]) == {"a.bin", "sub/b.txt"}
    assert man["files"]["a.bin"]["size"] == 100
    assert ckpt.latest_checkpoint(root) == p1
    p2 = ckpt.write_checkpoint(root, "step_000002", _write_two_files, keep=1)
    assert ckpt.latest_checkpoint(root) == p2
    assert ckpt.list_checkpoints(root) == ["step_000002"]     # pruned to one


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    root = str(tmp_path / "ck")
    p = ckpt.write_checkpoint(root, "step_000001", _write_two_files)
    target = os.path.join(p, "a.bin")
    if damage == "flip":
        data = bytearray(open(target, "rb").read())
        data[10] ^= 1
        open(target, "wb").write(bytes(data))
    elif damage == "truncate":
        open(target, "r+b").truncate(50)
    elif damage == "delete":
        os.remove(target)
    else:
        open(os.path.join(p, "manifest.json"), "w").write("{not json")
    with pytest.raises(ckpt.CheckpointError, match="damaged|missing"):
        ckpt.verify_checkpoint(p)


def test_failed_save_leaves_latest_on_the_previous_checkpoint(tmp_path):
    root = str(tmp_path / "ck")
    p1 = ckpt.write_checkpoint(root, "step_000001", _write_two_files)

    def dies_midway(tmp):
        _write_two_files(tmp)
        raise KeyboardInterrupt("killed during save")

    with pytest.raises(KeyboardInterrupt):
        ckpt.write_checkpoint(root, "step_000002", dies_midway)
    assert ckpt.latest_checkpoint(root) == p1
    ckpt.verify_checkpoint(p1)
    assert ckpt.list_checkpoints(root) == ["step_000001"]
    # a real kill leaves its temporary directory; the next save clears it
    os.makedirs(os.path.join(root, ".tmp-step_000002-999-dead"))
    ckpt.write_checkpoint(root, "step_000003", _write_two_files)
    assert not [e for e in os.listdir(root) if e.startswith(".tmp-")]


def test_json_state_round_trips_dtypes_and_special_floats(tmp_path):
    state = {"h": np.array([1.5, np.inf, 3e-39], np.float32), "s": np.float32(0.1),
             "n": 3, "f": float("nan"), "nested": {"x": [np.int64(4), "a"]}}
    ckpt.write_json(str(tmp_path / "s.json"), state)
    back = ckpt.read_json(str(tmp_path / "s.json"))
    assert back["h"].dtype == np.float32 and np.array_equal(back["h"], state["h"])
    assert back["s"] == np.float32(0.1) and back["s"].dtype == np.float32
    assert math.isnan(back["f"]) and back["nested"]["x"][0] == 4


# ============================================================================ the loop
from hif8qat.train import WALL_CLOCK_FIELDS, Trainer, TrainingDivergedError, main_train, train  # noqa: E402


from hif8qat.train import read_log  # noqa: E402


def comparable(records):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "hif8"])
def test_tiny_model_learns_the_corpus(tmp_path, precision):
    cfg = tiny_config(tmp_path, precision=precision, steps=20, lr=1e-2,
                      bf16_warmup_steps=5 if precision == "hif8" else 0)
    log = read_log(train(cfg))
    assert len(log) == 20 and [r["step"] for r in log] == list(range(1, 21))
    first, last = log[0]["loss"], np.mean([r["loss"] for r in log[-3:]])
    assert first > 5.0                      # about log(256) at initialisation
    assert last < 0.4 * first, (first, last)
    assert {r["phase"] for r in log} == ({"bf16_warmup", "qat"} if precision == "hif8"
                                         else {precision})


def test_warmup_steps_run_in_bf16_with_scalers_calibrating(tmp_path):
    kw = dict(steps=8, bf16_warmup_steps=4, lr_schedule="cosine", lr_warmup_steps=2)
    qat = Trainer(tiny_config(tmp_path, precision="hif8", run_dir=str(tmp_path / "q"), **kw))
    base = Trainer(tiny_config(tmp_path, precision="bf16", run_dir=str(tmp_path / "b"), **kw))
    probe = qat.model.scalers["model.layers.0.self_attn.q_proj.input"]
    for step in range(1, 9):
        if step == 5:   # the first QAT step uses the scale the warm-up calibrated
            expected_scale = np.float32(15.0) / np.max(probe.history)
        rq, rb = qat.step(), base.step()
        assert rq["lr"] == rb["lr"]         # one schedule; the phase switch changes precision only
        if step <= 4:
            assert rq["phase"] == "bf16_warmup"
            # nothing is cast during the warm-up: the loss is exactly the bf16 baseline's
            assert rq["loss"] == rb["loss"]
            assert all(s["clipped_fraction"] == 0.0 for s in rq["scalers"].values())
            assert all(sc.n_valid == step for sc in qat.model.scalers)   # history fills
            assert qat.model.precision == "bf16" and qat.model.calibrating
        else:
            assert rq["phase"] == "qat" and qat.model.precision == "hif8"
            assert not qat.model.calibrating
            assert rq["loss"] != rb["loss"]
        if step == 5:
            assert rq["scalers"][probe.name]["scale"] == expected_scale
    lrs = [r["lr"] for r in read_log(qat.run_dir)]
    assert lrs[:2] == [qat.config.lr / 2, qat.config.lr]         # linear LR warm-up
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)               # cosine to min_lr = 0
    assert "scalers" not in read_log(base.run_dir)[0]             # a baseline has none


def test_quantize_grads_adds_grad_output_scalers_with_the_grad_recipe(tmp_path):
    t = Trainer(tiny_config(tmp_path, quantize_grads=True, grad_rounding="stochastic", seed=3,
                            grad=dict(window=16, margin=1.0, clip=False)))
    grads = [s for s in t.model.scalers if s.name.endswith(".grad_output")]
    assert len(grads) == 7 * TINY["num_hidden_layers"] == len(t.model.scalers) // 3
    for sc in grads:
        assert (sc.fmax, sc.window, sc.algo, sc.margin, sc.clip) == (224.0, 16, "max", 1.0,
                                                                     False)
    assert t.model.grad_quantization["rounding"] == "stochastic"
    assert t.model.grad_quantization["seed"] == 3
    t.step()
    t.step()
    assert t.model.grad_step == 1           # the trainer sets the step the seeds derive from


def test_dts_recipes_reach_weight_and_activation_scalers(tmp_path):
    t = Trainer(tiny_config(tmp_path, weight=dict(window=8, margin=1.0),
                            activation=dict(algo="most_recent", clip=False, ste="identity")))
    names = t.model.scalers.names()
    assert len(names) == 2 * 7 * TINY["num_hidden_layers"]
    for sc in t.model.scalers:
        if sc.name.endswith(".weight"):
            assert (sc.window, sc.algo, sc.margin, sc.clip) == (8, "max", 1.0, True)
        else:
            assert (sc.window, sc.algo, sc.clip, sc.ste) == (64, "most_recent", False,
                                                             "identity")


def test_log_lines_and_summary_report_scalers_and_saturation(tmp_path):
    t = Trainer(tiny_config(tmp_path, steps=6, bf16_warmup_steps=3, precision="hif8"))
    for _ in range(4):
        t.step()
    # make one weight jump far above its calibrated amax: the delayed scale lags, clips
    name = "model.layers.1.mlp.up_proj.weight"
    t.model.param_views[name][...] *= 8.0
    rec = t.step()
    assert rec["saturated"] >= 1 and rec["scalers"][name]["clipped_fraction"] > 0
    assert rec["scalers"][name]["headroom"] > 1.0
    t.run()
    summary = json.load(open(os.path.join(t.run_dir, "summary.json")))
    sat = summary["saturation"]
    assert sat["per_scaler"][name] >= 1 and sat["per_layer"]["1"] >= 1
    assert sat["first_step"] >= 4           # never during the bf16 warm-up (steps 1-3)
    assert sat["events"] == sum(sat["per_scaler"].values())
    assert summary["steps"] == 6 and summary["qat_steps"] == 3
    log = read_log(t.run_dir)
    for r in log:
        for key in ("step", "phase", "lr", "loss", "grad_norm", "tokens_per_s", "scalers"):
            assert key in r
        assert set(r["scalers"]) == set(t.model.scalers.names())
        assert set(next(iter(r["scalers"].values()))) == {"amax", "scale", "headroom",
                                                          "clipped_fraction"}
    cfg_back = TrainConfig.from_toml(os.path.join(t.run_dir, "config.toml"))
    assert cfg_back == t.config


def final_state(run_dir):
    """(model.safetensors bytes, training checkpoint state) of a run's latest checkpoint."""
    path = ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    st = ckpt.load_training_checkpoint(path)
    with open(os.path.join(path, "model", "model.safetensors"), "rb") as fh:
        weights = fh.read()
    return weights, st


def interrupted_run(make_config, tmp_path, stop, lost=1, **kw):
    """One run straight through and one that saves at step ``stop``, runs ``lost`` more
    steps, is "killed" (those steps' log lines are dropped and recomputed) and resumed.
    Returns (full run dir, split run dir, the resumed Trainer after its run)."""
    full = train(make_config(tmp_path, run_dir=str(tmp_path / "full"), **kw))
    t = Trainer(make_config(tmp_path, run_dir=str(tmp_path / "split"), **kw))
    for _ in range(stop):
        t.step()
    t.save_checkpoint()
    for _ in range(lost):
        t.step()
    del t
    resumed = Trainer.resume(str(tmp_path / "split"))
    assert resumed.step_index == stop
    split = resumed.run()
    return full, split, resumed


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    kw = dict(steps=20, bf16_warmup_steps=3, precision="hif8", lr_schedule="cosine",
              lr_warmup_steps=4, grad_accum_steps=2, weight_decay=0.1, lr=5e-3,
              activation=dict(window=4))
    full, split, _ = interrupted_run(tiny_config, tmp_path, stop=10, lost=2, **kw)

    w_full, s_full = final_state(full)
    w_split, s_split = final_state(split)
    assert w_full == w_split                                   # weights, bit for bit
    for k in ("m", "v"):
        assert np.array_equal(s_full["optimizer"][k], s_split["optimizer"][k])
    assert s_full["optimizer"]["t"] == s_split["optimizer"]["t"] == 20
    assert json.dumps(s_full["scalers"], sort_keys=True, default=str) == \
        json.dumps(s_split["scalers"], sort_keys=True, default=str)
    assert s_full["trainer_state"]["data"] == s_split["trainer_state"]["data"]
    assert comparable(read_log(full)) == comparable(read_log(split))
    assert read_log(full, wall_clock=False) == comparable(read_log(split))


def _token_masked_data(tmp_path):
    """A corpus with a loss mask that ignores uneven runs of positions."""
    tokens = encode_bytes(CORPUS)
    rng = np.random.default_rng(5)
    mask = rng.random(tokens.size) > 0.35
    mask[: 33 * 3] = False          # whole sequences fully ignored at the start
    path = tmp_path / "masked.npz"
    np.savez(path, tokens=tokens, loss_mask=mask)
    return str(path)


@pytest.mark.parametrize("precision,accum", [("fp32", 2), ("fp32", 4), ("bf16", 4),
                                             ("hif8", 2), ("hif8", 4)])
def test_gradient_accumulation_matches_one_big_batch(tmp_path, precision, accum):
    # lr = 0 keeps the parameters fixed, so every step compares the gradient of the same
    # model (with lr > 0 Adam would amplify float-rounding differences step by step);
    # hif8 runs two warm-up steps, so steps 3-4 compare QAT gradients at calibrated scales
    data = _token_masked_data(tmp_path)
    kw = dict(data=data, steps=4, precision=precision, grad_clip=0.0, lr=0.0,
              bf16_warmup_steps=2 if precision == "hif8" else 0)
    big = Trainer(tiny_config(tmp_path, run_dir=str(tmp_path / "big"), **kw))
    acc = Trainer(tiny_config(tmp_path, run_dir=str(tmp_path / "acc"),
                              grad_accum_steps=accum, **kw))
    uneven = False
    for _ in range(4):
        x, y = big.data.batch(big.data.batches_served)
        m = 8 // accum
        counts = [int((y[i * m:(i + 1) * m] != IGNORE_INDEX).sum()) for i in range(accum)]
        uneven |= len(set(counts)) > 1
        rb, ra = big.step(), acc.step()
        assert ra["phase"] == rb["phase"]
        assert ra["tokens"] == rb["tokens"] == sum(counts)
        np.testing.assert_allclose(ra["loss"], rb["loss"], rtol=1e-6)
        ga, gb = acc.model.grads_flat, big.model.grads_flat
        assert np.linalg.norm(ga - gb) <= 1e-5 * np.linalg.norm(gb)
    assert uneven                   # the micro-batches really held different token counts
    if precision == "hif8":
        assert rb["phase"] == "qat"


def test_corrupt_checkpoint_is_a_clear_error_and_the_previous_one_survives(tmp_path):
    cfg = tiny_config(tmp_path, steps=10, checkpoint_every=5, precision="hif8",
                      bf16_warmup_steps=2)
    run_dir = train(cfg)
    cdir = os.path.join(run_dir, "checkpoints")
    assert ckpt.list_checkpoints(cdir) == ["step_000005", "step_000010"]
    target = os.path.join(cdir, "step_000010", "model", "model.safetensors")
    data = bytearray(open(target, "rb").read())
    data[-3] ^= 0x40
    open(target, "wb").write(bytes(data))
    log_before = open(os.path.join(run_dir, "log.jsonl"), "rb").read()
    with pytest.raises(ckpt.CheckpointError, match=r"model.safetensors.*step_000005"):
        Trainer.resume(run_dir)
    assert open(os.path.join(run_dir, "log.jsonl"), "rb").read() == log_before
    ckpt.verify_checkpoint(os.path.join(cdir, "step_000005"))
    t = Trainer.resume(run_dir, checkpoint="step_000005")
    assert t.step_index == 5 and t.step()["step"] == 6


def test_incompatible_config_on_resume_is_rejected_and_nothing_changes(tmp_path):
    cfg = tiny_config(tmp_path, steps=6, precision="bf16")
    run_dir = train(cfg)
    before = {p: open(os.path.join(run_dir, p), "rb").read()
              for p in ("log.jsonl", "config.toml", "summary.json")}
    wider = dict(TINY, hidden_size=64)
    for bad, match in ((cfg.with_overrides({"model_config": wider}), "model_config"),
                       (cfg.with_overrides({"lr": 1.0}), "lr"),
                       (cfg.with_overrides({"activation.algo": "most_recent"}),
                        "activation.algo")):
        with pytest.raises(ValueError, match=match):
            Trainer.resume(run_dir, bad)
    for p, content in before.items():
        assert open(os.path.join(run_dir, p), "rb").read() == content
    ckpt.verify_checkpoint(ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints")))
    # the data may move, but not change
    edited = tmp_path / "edited.txt"
    edited.write_text(CORPUS.replace("cat", "rat"))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        Trainer.resume(run_dir, cfg.with_overrides({"data": str(edited)}))
    moved = tmp_path / "moved.txt"
    moved.write_text(CORPUS)
    # a longer run on the moved data is a compatible change
    t = Trainer.resume(run_dir, cfg.with_overrides({"steps": 8, "data": str(moved)}))
    t.run()
    assert [r["step"] for r in read_log(run_dir)] == list(range(1, 9))


def test_killed_save_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, steps=8, precision="hif8", bf16_warmup_steps=2)
    reference = train(cfg.with_overrides({"run_dir": str(tmp_path / "ref")}))
    t = Trainer(cfg)
    for _ in range(4):
        t.step()
    first = t.save_checkpoint()
    for _ in range(2):
        t.step()

    def killed(*a, **k):
        raise KeyboardInterrupt("killed in the middle of writing the optimizer state")

    monkeypatch.setattr(ckpt.np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        t.save_checkpoint()
    monkeypatch.undo()
    cdir = os.path.join(t.run_dir, "checkpoints")
    assert ckpt.latest_checkpoint(cdir) == first
    resumed = Trainer.resume(t.run_dir)
    assert resumed.step_index == 4
    resumed.run()
    assert final_state(resumed.run_dir)[0] == final_state(reference)[0]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path):
    t = Trainer(tiny_config(tmp_path, steps=10, precision="bf16"))
    for _ in range(3):
        t.step()
    good = t.save_checkpoint()
    t.model.param_views["model.norm.weight"][...] = np.nan
    with pytest.raises(TrainingDivergedError, match=r"step 4 .*nan.*step_000003"):
        t.step()
    with pytest.raises(TrainingDivergedError):
        t.step()
    assert ckpt.latest_checkpoint(t.checkpoints_dir) == good
    assert Trainer.resume(t.run_dir).step()["step"] == 4


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_diverging_run_writes_its_summary_and_stops(tmp_path, monkeypatch):
    t = Trainer(tiny_config(tmp_path, steps=6, checkpoint_every=2, precision="bf16"))
    real_step = t.optimizer.step

    def poisoned(grads, lr):      # after step 3 the parameters go bad
        real_step(grads, lr)
        if t.optimizer.t == 3:
            t.model.params_flat[:] = np.inf

    monkeypatch.setattr(t.optimizer, "step", poisoned)
    with pytest.raises(TrainingDivergedError, match="step 4"):
        t.run()
    summary = json.load(open(os.path.join(t.run_dir, "summary.json")))
    assert "step 4" in summary["stopped"] and summary["steps"] == 3
    assert summary["last_checkpoint"].endswith("step_000002")
    assert read_log(t.run_dir)[-1]["error"].startswith("the loss became")


def test_fine_tuning_starts_from_a_saved_model_dir(tmp_path):
    pre = train(tiny_config(tmp_path, steps=3, precision="bf16",
                            run_dir=str(tmp_path / "pre")))
    model_dir = json.load(open(os.path.join(pre, "summary.json")))["model_dir"]
    pretrained = Trainer.resume(pre).model.params_flat.copy()
    cfg = tiny_config(tmp_path, run_dir=str(tmp_path / "ft"), model_config=None,
                      model_dir=model_dir, precision="hif8", bf16_warmup_steps=1, steps=2)
    t = Trainer(cfg)
    assert np.array_equal(t.model.params_flat, pretrained)
    t.run()
    assert not np.array_equal(t.model.params_flat, pretrained)


def test_eval_hooks_run_periodically_without_changing_training(tmp_path):
    seen = []

    def probe(trainer):
        x, y = trainer.data.batch(0)
        _, loss = trainer.model.forward(x[:2], y[:2])
        seen.append((trainer.step_index, trainer.model.precision))
        return {"loss": float(loss)}

    kw = dict(steps=6, precision="hif8", bf16_warmup_steps=2, eval_every=3)
    with_hooks = train(tiny_config(tmp_path, run_dir=str(tmp_path / "h"), **kw),
                       eval_hooks={"probe": probe})
    without = train(tiny_config(tmp_path, run_dir=str(tmp_path / "n"), **kw))
    assert seen == [(3, "hif8"), (6, "hif8")]
    log = read_log(with_hooks)
    assert [r["step"] for r in log if "eval" in r] == [3, 6]
    assert math.isfinite(log[2]["eval"]["probe"]["loss"])
    assert final_state(with_hooks)[0] == final_state(without)[0]
    assert comparable([{k: v for k, v in r.items() if k != "eval"} for r in log]) == \
        comparable(read_log(without))


def test_bad_runs_are_rejected_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="TrainConfig.data"):
        Trainer(tiny_config(tmp_path, data=str(tmp_path / "nope.txt")))
    with pytest.raises(ValueError, match="TrainConfig.grad.fmax"):
        Trainer(tiny_config(tmp_path, quantize_grads=True, grad=dict(fmax=-224.0)))
    with pytest.raises(ValueError, match="vocab_size"):
        Trainer(tiny_config(tmp_path, model_config=dict(TINY, vocab_size=100)))
    with pytest.raises(ValueError, match="model_config"):
        Trainer(tiny_config(tmp_path, model_config=dict(TINY, num_key_value_heads=3)))
    assert not os.path.exists(tmp_path / "run")
    train(tiny_config(tmp_path, steps=2, precision="bf16"))
    with pytest.raises(FileExistsError, match="resume"):
        Trainer(tiny_config(tmp_path, steps=2, precision="bf16"))


def test_command_line_trains_resumes_and_rejects_bad_configs(tmp_path, capsys):
    cfg = tiny_config(tmp_path, steps=3, precision="bf16")
    path = tmp_path / "run.toml"
    path.write_text(cfg.to_toml())
    assert main_train([str(path), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == cfg.run_dir
    longer = tmp_path / "longer.toml"
    longer.write_text(cfg.with_overrides({"steps": 5}).to_toml())
    assert main_train([str(longer), "--resume", cfg.run_dir, "--no-progress"]) == 0
    assert len(read_log(cfg.run_dir)) == 5
    (tmp_path / "bad.toml").write_text(cfg.to_toml().replace("steps = 3", "steps = -3"))
    assert main_train([str(tmp_path / "bad.toml")]) == 2
    assert "TrainConfig.steps" in capsys.readouterr().err
