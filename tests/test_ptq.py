"""Post-training HiF8: calibration fills the scalers, export round-trips bit for bit."""
import json

import numpy as np
import pytest

import hif8qat as hq
from hif8qat import ptq
from hif8qat.eval import ByteTokenizer, evaluate
from hif8qat.model.safetensors_io import read_header


def tiny_model(seed=0):
    cfg = hq.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return hq.LlamaModel.from_config(cfg, seed=seed)


def batches(n, seed=0, shape=(2, 16)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=shape) for _ in range(n)]


def test_calibrate_fills_every_history_and_restores_the_model():
    model = tiny_model()
    model.set_precision("bf16")
    assert all(s.n_valid == 0 for s in model.scalers)
    info = ptq.calibrate(model, batches(3), steps=3)
    assert info["steps"] == 3 and info["tokens"] == 3 * 32
    assert all(s.n_valid == 3 for s in model.scalers)
    assert model.precision == "bf16" and model.calibrating is False
    assert not any(s.frozen for s in model.scalers)
    # a weight's amax is its largest magnitude, so its scale is fmax / max|W|
    w = model.param_views["model.layers.1.mlp.down_proj.weight"]
    s = model.scalers["model.layers.1.mlp.down_proj.weight"]
    assert s.scale == pytest.approx(s.fmax / float(np.abs(w).max()), rel=1e-6)
    assert max(d["n"] for d in info["scalers"]) > 0


def test_calibrate_from_hif8_runs_in_bf16_and_restores_hif8():
    model = tiny_model()
    model.set_precision("hif8")
    ptq.calibrate(model, batches(2))
    assert model.precision == "hif8" and all(s.n_valid == 2 for s in model.scalers)
    logits, _ = model.forward(batches(1, seed=9)[0])
    assert np.isfinite(logits).all()


def test_calibrate_rejects_bad_input():
    model = tiny_model()
    with pytest.raises(ValueError, match="no batches"):
        ptq.calibrate(model, [])
    with pytest.raises(TypeError, match="integer token array"):
        ptq.calibrate(model, [np.zeros((2, 4), np.float32)])
    with pytest.raises(ValueError, match="ran out after 2"):
        ptq.calibrate(model, batches(2), steps=5)
    with pytest.raises(ValueError, match="steps"):
        ptq.calibrate(model, batches(2), steps=0)
    with pytest.raises(ValueError, match="observes unquantized"):
        ptq.calibrate(model, batches(1), precision="hif8")


def test_export_then_load_gives_bit_identical_logits_and_scores(tmp_path):
    model = tiny_model(seed=3)
    model.configure_scalers(weight=dict(window=1, algo="most_recent"), activation=dict(window=8))
    ptq.calibrate(model, batches(4, seed=1), steps=4)
    model.set_precision("hif8")
    model.scalers.set_frozen(True)
    tokens = batches(1, seed=7, shape=(3, 24))[0]
    expected, _ = model.forward(tokens)
    out = tmp_path / "hif8"
    ptq.export_hif8(model, out)
    again = ptq.load_hif8(out)
    assert again.precision == "hif8" and all(s.frozen for s in again.scalers)
    assert [s.state_dict()["recipe"] for s in again.scalers] == \
        [s.state_dict()["recipe"] for s in model.scalers]
    assert [s.n_valid for s in again.scalers][:2] == [1, 4]
    got, _ = again.forward(tokens)
    assert np.array_equal(got, expected)
    # hq.load_model recognises the export and hands it to load_hif8
    via_load_model = hq.load_model(out, precision="hif8")
    assert np.array_equal(via_load_model.forward(tokens)[0], expected)
    # the hq.evaluate scores agree too (the same logits, the same requests)
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"id": str(i), "question": f"q{i}?", "answerKey": "A",
                                          "choices": {"text": ["yes", "no", "maybe"],
                                                      "label": ["A", "B", "C"]}})
                              for i in range(4)) + "\n")
    a = evaluate(model, ByteTokenizer(), f"arc:{path}")
    b = evaluate(again, ByteTokenizer(), f"arc:{path}")
    assert [r.lls for r in a.items["arc"]] == [r.lls for r in b.items["arc"]]


def test_export_stores_codes_and_scales_with_documented_names(tmp_path):
    model = tiny_model(seed=4)
    ptq.calibrate(model, batches(2))
    ptq.export_hif8(model, tmp_path / "q")
    model.save(str(tmp_path / "fp32"))
    entries, metadata, _ = read_header(tmp_path / "q" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj"
    assert entries[name + ".weight"][0] == "U8"
    assert entries[name + ".weight_scale_inv"][:2] == ("F32", ())
    assert entries[name + ".input_scale"][:2] == ("F32", ())
    assert entries["model.embed_tokens.weight"][0] == "F32"
    s = model.scalers[name + ".input"]
    scales = json.loads(metadata["hif8qat.scalers"])
    assert scales[name + ".input"]["scale"] == s.scale
    # the projection weights take a quarter of their fp32 bytes
    fp32, _, _ = read_header(tmp_path / "fp32" / "model.safetensors")
    proj = [n for n in fp32 if n.endswith("_proj.weight")]
    q_bytes = sum(entries[n][3] - entries[n][2] for n in proj)
    f_bytes = sum(fp32[n][3] - fp32[n][2] for n in proj)
    assert q_bytes * 4 == f_bytes
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "hif8qat"


def test_export_and_load_refuse_what_they_cannot_do(tmp_path):
    model = tiny_model()
    with pytest.raises(RuntimeError, match="calibrate"):
        ptq.export_hif8(model, tmp_path / "x")
    model.save(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="not a hif8qat HiF8 export"):
        ptq.load_hif8(tmp_path / "plain")
    ptq.calibrate(model, batches(1))
    ptq.export_hif8(model, tmp_path / "q")
    # a hand-edited scale no longer matches the codes' scaler state
    from hif8qat.model.safetensors_io import read_safetensors, write_safetensors
    st = tmp_path / "q" / "model.safetensors"
    _, metadata, _ = read_header(st)
    tensors = read_safetensors(st)
    tensors["model.layers.0.mlp.up_proj.input_scale"] = np.array(2.0, np.float32)
    write_safetensors(str(st), tensors, metadata=metadata)
    with pytest.raises(ValueError, match="input_scale disagree"):
        ptq.load_hif8(tmp_path / "q")


def test_text_batches_chunk_a_corpus():
    text = "abcdefgh" * 10
    out = list(ptq.text_batches(text, ByteTokenizer(), seq_len=8, batch_size=2))
    assert len(out) == 5 and out[0].shape == (2, 8)
    assert bytes(out[0][1].astype(np.uint8)) == b"abcdefgh"
    with pytest.raises(ValueError, match="fewer than one batch"):
        list(ptq.text_batches("ab", ByteTokenizer(), seq_len=8, batch_size=2))


def test_calibrate_reset_forgets_histories_but_keeps_recipes():
    model = tiny_model()
    model.configure_scalers(weight=dict(window=2), activation=dict(window=5))
    ptq.calibrate(model, batches(3))
    assert [s.n_valid for s in model.scalers][:2] == [2, 3]
    ptq.calibrate(model, batches(1), reset=True)
    assert all(s.n_valid == 1 for s in model.scalers)
    assert [s.window for s in model.scalers][:2] == [2, 5]
