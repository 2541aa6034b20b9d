"""Parity with the implementation people trust: transformers' LlamaForCausalLM (CPU, fp32).

Checkpoints saved by transformers load here with the same logits and the same loss
gradients; checkpoints saved here load in transformers. Skipped when torch or
transformers is absent (install torch first: `pip install torch==2.13.0 transformers`).

transformers' LlamaAttention puts ``bias=config.attention_bias`` on q_proj, k_proj,
v_proj **and** o_proj (checked in 5.24's modeling_llama.py), so a Llama with
attention_bias=True is exactly OpenPangu-Embedded's ``bias: true`` layout.
"""
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hif8qat as hq  # noqa: E402
from hif8qat.model.safetensors_io import read_header  # noqa: E402

VOCAB, SEQ = 64, 12


def make_hf_model(tie, bias, seed=0):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=4e6, rms_norm_eps=1e-5,
        max_position_embeddings=64, tie_word_embeddings=tie, attention_bias=bias)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():   # make norms and biases matter (HF inits them to 1 and 0)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.mul_(5.0)   # std 0.1: attention patterns and logits far from uniform
    return model


def batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(2, SEQ))
    targets = rng.integers(0, VOCAB, size=(2, SEQ))
    targets[0, :3] = -100
    targets[1, -1] = -100
    return tokens, targets


def hf_logits_and_grads(hf, tokens, targets):
    hf.zero_grad()
    logits = hf(input_ids=torch.from_numpy(tokens)).logits
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), torch.from_numpy(targets).reshape(-1), ignore_index=-100)
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in hf.named_parameters()}
    return logits.detach().numpy(), loss.item(), grads


def save_hf(hf, path, dtype=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype is not None:
            hf = hf.to(dtype)
        hf.save_pretrained(path)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_transformers_checkpoint_gives_same_logits_and_grads(tmp_path, tie, bias):
    hf = make_hf_model(tie, bias)
    save_hf(hf, tmp_path)
    model = hq.load_model(tmp_path)
    assert model.config.rope_theta == 4e6
    assert ("lm_head.weight" in model.param_views) == (not tie)
    tokens, targets = batch()
    ref_logits, ref_loss, ref_grads = hf_logits_and_grads(hf, tokens, targets)
    logits, loss = model.forward(tokens, targets)
    # the bar is 1e-4; we see ~1e-6, and 1e-5 still catches a 1 % error in theta
    assert np.abs(logits - ref_logits).max() < 1e-5
    assert abs(loss - ref_loss) < 1e-5
    grads = model.backward()
    assert set(ref_grads) == set(grads)
    for name, g in grads.items():
        scale = np.abs(ref_grads[name]).max() + 1e-6
        assert np.abs(g - ref_grads[name]).max() < 1e-4 * scale + 1e-7, name


def test_bfloat16_checkpoint_loads_widened_exactly(tmp_path):
    hf = make_hf_model(tie=True, bias=True, seed=1)
    save_hf(hf, tmp_path, dtype=torch.bfloat16)
    entries, _, _ = read_header(tmp_path / "model.safetensors")
    assert {e[0] for e in entries.values()} == {"BF16"}
    model = hq.load_model(tmp_path)
    hf32 = hf.float()          # the bf16 values, exactly representable in fp32
    for name, p in hf32.named_parameters():
        np.testing.assert_array_equal(model.param_views[name], p.detach().numpy())
    tokens, targets = batch(1)
    ref_logits, _, _ = hf_logits_and_grads(hf32, tokens, targets)
    logits, _ = model.forward(tokens)
    assert np.abs(logits - ref_logits).max() < 1e-4


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_checkpoint_saved_here_loads_in_transformers(tmp_path, tie):
    cfg = hq.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         rope_theta=4e6, rms_norm_eps=1e-5, tie_word_embeddings=tie,
                         attention_bias=True, max_position_embeddings=64)
    model = hq.LlamaModel.from_config(cfg, seed=3)
    rng = np.random.default_rng(3)
    for name, v in model.param_views.items():
        v += 0.1 * rng.standard_normal(v.shape).astype(np.float32)
    model.save(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    assert hf.config.attention_bias and hf.config.tie_word_embeddings == tie
    assert hf.model.layers[0].self_attn.o_proj.bias is not None
    for name, p in hf.named_parameters():
        np.testing.assert_array_equal(p.detach().numpy(), model.param_views[name])
    tokens, _ = batch(2)
    ref = hf(input_ids=torch.from_numpy(tokens)).logits.detach().numpy()
    logits, _ = model.forward(tokens)
    assert np.abs(logits - ref).max() < 1e-4


def test_openpangu_style_config_bias_true_puts_biases_on_qkvo(tmp_path):
    """A config.json with OpenPangu's `bias: true` (no attention_bias) and rope_theta
    inside rope_parameters loads as the biased Llama transformers computes."""
    hf = make_hf_model(tie=True, bias=True, seed=4)
    save_hf(hf, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["attention_bias"]
    cfg.update(bias=True, model_type="PanguEmbedded", architectures=["PanguEmbeddedForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = hq.load_model(tmp_path)
    assert "model.layers.1.self_attn.o_proj.bias" in model.param_views
    tokens, _ = batch(4)
    ref, _, _ = hf_logits_and_grads(hf, tokens, batch(4)[1])
    assert np.abs(model.forward(tokens)[0] - ref).max() < 1e-4
