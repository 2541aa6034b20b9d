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
