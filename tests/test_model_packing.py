"""Packed rows: one row holding a shared prefix and several continuations, each with its
own positions (``position_ids``) and a tree-shaped ``attention_mask``, must give the same
logits, loss and gradients as running each prefix+continuation as its own causal row."""
import numpy as np
import pytest

import hif8qat as hq
from test_model import perturbed_model, tiny_config


def packed_row(prefix, suffixes):
    """tokens (1, L), position_ids (1, L), mask (1, L, L) and each suffix's row offset."""
    tokens, pos, owner = list(prefix), list(range(len(prefix))), [-1] * len(prefix)
    offsets = []
    for j, s in enumerate(suffixes):
        offsets.append(len(tokens))
        tokens += list(s)
        pos += range(len(prefix), len(prefix) + len(s))
        owner += [j] * len(s)
    L, owner, pos = len(tokens), np.array(owner), np.array(pos)
    i, k = np.arange(L)[:, None], np.arange(L)[None, :]
    # a key is visible when it is the shared prefix or an earlier token of the same suffix
    mask = (k <= i) & ((owner[None, :] == -1) | (owner[None, :] == owner[:, None]))
    return (np.array([tokens]), pos[None], mask[None], offsets)


PREFIX = [3, 17, 5, 29, 11]
SUFFIXES = [[7, 2, 33], [19], [1, 38, 4, 4]]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_packed_logits_equal_separate_rows(dtype, tol):
    cfg = tiny_config()
    model = perturbed_model(cfg, dtype=dtype)
    tokens, pos, mask, offsets = packed_row(PREFIX, SUFFIXES)
    logits, _ = model.forward(tokens, position_ids=pos, attention_mask=mask)
    P = len(PREFIX)
    for s, off in zip(SUFFIXES, offsets):
        ref, _ = model.forward(np.array([PREFIX + s]))
        np.testing.assert_allclose(logits[0, :P], ref[0, :P], rtol=0, atol=tol)
        np.testing.assert_allclose(logits[0, off:off + len(s)], ref[0, P:], rtol=0, atol=tol)


def test_packed_gradients_equal_separate_rows():
    """Loss over the suffixes' tokens only: the packed row and the batch of separate rows
    average the same per-token losses, so every parameter gradient agrees."""
    cfg = tiny_config()
    model = perturbed_model(cfg, dtype=np.float64)
    rng = np.random.default_rng(3)
    tokens, pos, mask, offsets = packed_row(PREFIX, SUFFIXES)
    targets = np.full_like(tokens, -100)
    P, W = len(PREFIX), len(PREFIX) + max(map(len, SUFFIXES))
    sep_tokens = np.zeros((len(SUFFIXES), W), dtype=np.int64)
    sep_targets = np.full((len(SUFFIXES), W), -100)
    for j, (s, off) in enumerate(zip(SUFFIXES, offsets)):
        t = rng.integers(0, cfg.vocab_size, size=len(s))
        targets[0, off:off + len(s)] = t
        sep_tokens[j, :P + len(s)] = PREFIX + s
        sep_targets[j, P:P + len(s)] = t
    _, loss = model.forward(tokens, targets, position_ids=pos, attention_mask=mask)
    grads = {k: v.copy() for k, v in model.backward().items()}
    _, ref_loss = model.forward(sep_tokens, sep_targets)
    ref = model.backward()
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name, g in ref.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-9, atol=1e-12, err_msg=name)


def test_default_positions_and_mask_are_causal():
    cfg = tiny_config()
    model = perturbed_model(cfg, dtype=np.float64)
    tokens = np.array([PREFIX + SUFFIXES[0]])
    T = tokens.shape[1]
    a, _ = model.forward(tokens)
    b, _ = model.forward(tokens, position_ids=np.arange(T)[None],
                         attention_mask=np.tril(np.ones((T, T), bool))[None])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kw,err,match", [
    (dict(attention_mask=np.ones((1, 4, 4), dtype=np.int64)), TypeError, "bool"),
    (dict(attention_mask=np.ones((1, 3, 4), dtype=bool)), ValueError, "shape"),
    (dict(attention_mask=~np.eye(4, dtype=bool)[None]), ValueError, "itself"),
    (dict(position_ids=np.array([[0, 1, 2]])), ValueError, "position_ids shape"),
    (dict(position_ids=np.array([[0, -1, 2, 3]])), ValueError, ">= 0"),
    (dict(position_ids=np.array([[0.0, 1, 2, 3]])), TypeError, "integer"),
])
def test_bad_positions_and_masks_are_rejected(kw, err, match):
    model = hq.LlamaModel.from_config(tiny_config(), seed=0)
    with pytest.raises(err, match=match):
        model.forward(np.array([[1, 2, 3, 4]]), **kw)
