"""Post-training HiF8: calibrate a trained model's scalers on real data, evaluate it in
HiF8 without any training, and export a deployable HiF8 checkpoint.

The first question a user asks of a trained BF16 model is how it scores in HiF8 before
any QAT::

    model = hq.load_model("ckpt", precision="bf16")
    hq.calibrate(model, text_batches(open("corpus.txt").read(), tok, seq_len=256), steps=16)
    model.set_precision("hif8")
    hq.evaluate(model, tok, ["arc:/data/ARC-Challenge-Test.jsonl"])
    hq.export_hif8(model, "ckpt-hif8")          # W8A8 HiF8, a quarter of the weight bytes

Export format (``config.json`` + ``model.safetensors``, Hugging Face naming):

* for every quantized projection ``P`` (q/k/v/o/gate/up/down of every layer):
  ``P.weight`` — uint8 HiF8 codes, the weight's shape; ``P.weight_scale_inv`` —
  float32 scalar, so ``W ≈ decode(P.weight) * P.weight_scale_inv``; ``P.input_scale`` —
  float32 scalar, the activation's multiplier: ``x_codes = cast(clamp(x * input_scale,
  ±fmax))`` (static per-tensor activation scaling, from the calibrated history);
* everything else (embeddings, norms, LM head, biases) in float32 under its own name;
* ``config.json`` has ``"quantization_config": {"quant_method": "hif8qat", ...}``;
  the safetensors metadata ``"hif8qat.scalers"`` holds every scaler's full state (recipe,
  amax history, scale) as JSON, so loading restores the scalers exactly.

:func:`load_hif8` rebuilds a frozen hif8 model whose logits equal the exported model's
bit for bit (it checks that re-casting the decoded weights reproduces the stored codes).
"""
from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["calibrate", "export_hif8", "load_hif8", "text_batches", "QUANT_METHOD"]

QUANT_METHOD = "hif8qat"
FORMAT_VERSION = 1


def _as_batch(batch, i):
    arr = np.asarray(batch)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"calibration batch {i} must be an integer token array (B, T), "
                        f"got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"calibration batch {i} must have shape (B, T) with B, T >= 1, "
                         f"got {arr.shape}")
    return arr.astype(np.int64, copy=False)


def calibrate(model, batches, steps=None, precision=None, reset=False):
    """Fill every scaler's amax history from real data (post-training calibration).

    Runs ``model.forward`` in calibrate mode on each batch (an int token array (B, T);
    ``batches`` may be one such array, a 3-D array or any iterable of them), one scaler
    update per batch, for ``steps`` batches (default: all). The forward runs in
    ``precision`` (default: the model's own, or "bf16" when the model is in "hif8", as
    the BF16 warm-up would); the model's precision, frozen flags and calibrating flag
    are restored afterwards. ``reset=True`` forgets existing histories first.

    Returns ``{"steps", "tokens", "scalers": model.scalers.diagnostics() of the last step}``.

    Example::

        hq.calibrate(model, [tokens_a, tokens_b], steps=2)
        model.set_precision("hif8")
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))
                              or steps < 1):
        raise ValueError(f"steps must be a positive int or None, got {steps!r}")
    if isinstance(batches, np.ndarray) and batches.ndim in (1, 2):
        batches = [batches]
    original = model.precision
    run_precision = precision or ("bf16" if original == "hif8" else original)
    if run_precision == "hif8":
        raise ValueError("calibration observes unquantized tensors: run it in 'fp32' or "
                         "'bf16' precision (hif8 casts need the scales it computes)")
    if reset:  # fresh scalers with the recipes they had, per role
        model.configure_scalers(**_role_recipes({s.name: s.recipe() for s in model.scalers}))
    scalers = model.scalers
    frozen = [s.frozen for s in scalers]
    calibrating = model.calibrating
    done = tokens = 0
    last = []
    try:
        scalers.set_frozen(False)
        model.set_precision(run_precision)
        model.calibrating = True
        for i, batch in enumerate(batches):
            if steps is not None and done >= steps:
                break
            tok = _as_batch(batch, i)
            model.forward(tok)
            last = scalers.diagnostics()
            scalers.update()
            done += 1
            tokens += tok.size
    finally:
        model.calibrating = calibrating
        model.set_precision(original)
        for s, f in zip(scalers, frozen):
            s.frozen = f
    if done == 0:
        raise ValueError("calibrate: no batches given (need at least one (B, T) token array)")
    if steps is not None and done < steps:
        raise ValueError(f"calibrate: asked for {steps} steps, the batches ran out after {done}")
    return {"steps": done, "tokens": tokens, "scalers": last}


def text_batches(text, tokenizer, seq_len=256, batch_size=8, max_batches=None):
    """Consecutive (batch_size, seq_len) token arrays of a text, for :func:`calibrate`.

    Example::

        batches = list(text_batches(corpus, hq.ByteTokenizer(), seq_len=128, batch_size=4))
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    per_batch = seq_len * batch_size
    n = len(ids) // per_batch
    if n == 0:
        raise ValueError(f"text has {len(ids)} tokens, fewer than one batch "
                         f"({batch_size} x {seq_len}); use a longer text or smaller batches")
    if max_batches is not None:
        n = min(n, int(max_batches))
    for b in range(n):
        yield ids[b * per_batch:(b + 1) * per_batch].reshape(batch_size, seq_len)


def _quantized_modules(model):
    names = model.scaler_names()
    modules = [n[:-len(".weight")] for n in names if n.endswith(".weight")]
    for m in modules:
        if m + ".input" not in names:
            raise ValueError(f"scaler {m}.weight has no matching {m}.input scaler")
    return modules


def _role_recipes(recipes, source="model"):
    """{name: recipe} -> configure_scalers(weight=..., activation=...) arguments; every
    scaler of a role must share its recipe (the model configures scalers per role)."""
    out = {}
    for role, suffix in (("weight", ".weight"), ("activation", ".input")):
        found = {json.dumps(r, sort_keys=True) for n, r in recipes.items() if n.endswith(suffix)}
        if len(found) > 1:
            raise ValueError(f"{source}: the {role} scalers have different recipes; "
                             "one recipe per role is supported")
        out[role] = json.loads(found.pop()) if found else None
    return out


def _scalers_json(group):
    out = {}
    for s in group:
        d = s.state_dict()
        d["history"] = [float(a) for a in np.asarray(d["history"], dtype=np.float64)]
        out[s.name] = d
    return json.dumps(out, sort_keys=True, default=float)


def export_hif8(model, out_dir):
    """Write a deployable W8A8 HiF8 checkpoint of a calibrated (or trained) model.

    Each quantized projection weight is stored as uint8 HiF8 codes with its
    ``weight_scale_inv``, each activation's ``input_scale`` alongside, the rest in
    float32; see the module docstring for the naming. The codes are those the frozen
    hif8 model computes, so :func:`load_hif8` evaluates bit-identically to it.
    Returns the list of files written.

    Example::

        hq.calibrate(model, batches); hq.export_hif8(model, "out")
        again = hq.ptq.load_hif8("out")      # logits equal model's in frozen hif8
    """
    from hif8qat.model.safetensors_io import write_safetensors

    scalers = model.scalers
    empty = [s.name for s in scalers if s.n_valid == 0]
    if empty:
        raise RuntimeError(f"export_hif8: {len(empty)} scalers have an empty amax history "
                           f"({', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''}): "
                           "calibrate first (hq.calibrate(model, batches)) or train")
    modules = _quantized_modules(model)
    frozen = [s.frozen for s in scalers]
    tensors = {}
    try:
        scalers.set_frozen(True)  # cast with the current scales, record nothing
        for m in modules:
            w = model.param_views[m + ".weight"]
            codes, scale_inv, _ = scalers[m + ".weight"].quantize_codes(
                np.ascontiguousarray(w, dtype=np.float32))
            tensors[m + ".weight"] = codes
            tensors[m + ".weight_scale_inv"] = np.array(scale_inv, dtype=np.float32)
            tensors[m + ".input_scale"] = np.array(scalers[m + ".input"].scale, dtype=np.float32)
    finally:
        for s, f in zip(scalers, frozen):
            s.frozen = f
    for name, view in model.param_views.items():
        if name not in tensors:
            tensors[name] = np.asarray(view, dtype=np.float32)
    os.makedirs(out_dir, exist_ok=True)
    metadata = {"format": "pt", "hif8qat.format_version": str(FORMAT_VERSION),
                "hif8qat.scalers": _scalers_json(scalers)}
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, metadata=metadata)
    config = model.config.to_dict()
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION,
        "weight_format": "hif8 codes (uint8), per-tensor weight_scale_inv",
        "activation_scheme": "static", "activation_scale": "input_scale (multiplier)",
        "quantized_modules": [m.split(".", 3)[-1] for m in modules[:7]],
        "modules_to_not_convert": ["model.embed_tokens", "lm_head", "norms"]}
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return ["config.json", "model.safetensors"]


def is_hif8_checkpoint(path):
    """True when ``path/config.json`` says the directory is an :func:`export_hif8` output."""
    cfg_path = os.path.join(os.fspath(path), "config.json")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    return isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD


def load_hif8(path, precision="hif8"):
    """Load an :func:`export_hif8` checkpoint into a LlamaModel with frozen, restored
    scalers (``precision`` "hif8" by default; "fp32"/"bf16" run the decoded weights).

    The weights are decoded to float32 (decode(code) * weight_scale_inv); re-casting them
    with the restored scales reproduces the stored codes exactly, which is checked here,
    so the model's hif8 logits equal the exported model's bit for bit.
    """
    from hif8qat.format import from_hif8
    from hif8qat.model.config import LlamaConfig
    from hif8qat.model.io import load_state_dict
    from hif8qat.model.llama import LlamaModel
    from hif8qat.model.safetensors_io import read_header, read_safetensors

    path = os.fspath(path)
    if not is_hif8_checkpoint(path):
        raise ValueError(f"{path}: not a hif8qat HiF8 export (config.json has no "
                         f"quantization_config with quant_method {QUANT_METHOD!r})")
    st_path = os.path.join(path, "model.safetensors")
    cfg = LlamaConfig.from_json_file(os.path.join(path, "config.json"))
    _, metadata, _ = read_header(st_path)
    try:
        states = json.loads(metadata["hif8qat.scalers"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{st_path}: missing or corrupt 'hif8qat.scalers' metadata "
                         f"({e})") from None
    tensors = read_safetensors(st_path)
    model = LlamaModel(cfg, precision="fp32")
    modules = _quantized_modules(model)
    missing = [n for n in model.scaler_names() if n not in states]
    if missing:
        raise ValueError(f"{st_path}: no scaler state for {missing[0]!r}")
    model.configure_scalers(**_role_recipes({n: states[n]["recipe"] for n in model.scaler_names()},
                                            source=st_path))
    group = model.scalers
    for s in group:
        s.load_state_dict(states[s.name])
    stored_codes, decoded = {}, {}
    for m in modules:
        for suffix in (".weight", ".weight_scale_inv", ".input_scale"):
            if m + suffix not in tensors:
                raise ValueError(f"{st_path}: missing tensor {m + suffix!r}")
        codes = tensors.pop(m + ".weight")
        scale_inv = tensors.pop(m + ".weight_scale_inv")
        input_scale = tensors.pop(m + ".input_scale")
        shape = model.param_views[m + ".weight"].shape
        if codes.dtype != np.uint8 or codes.shape != shape:
            raise ValueError(f"{st_path}: {m}.weight must be uint8 codes of shape {shape}, "
                             f"got {codes.dtype} {codes.shape}")
        w_scaler, x_scaler = group[m + ".weight"], group[m + ".input"]
        if np.float32(w_scaler.scale_inv) != np.float32(scale_inv) or \
                np.float32(x_scaler.scale) != np.float32(input_scale):
            raise ValueError(f"{st_path}: {m}: weight_scale_inv/input_scale disagree with the "
                             "stored scaler state (a hand-edited or corrupt checkpoint)")
        stored_codes[m] = codes
        decoded[m + ".weight"] = from_hif8(codes, float(scale_inv))
    load_state_dict(model, {**tensors, **decoded}, source=st_path)
    group.set_frozen(True)
    for m in modules:  # the decoded weights must re-cast to the stored codes
        again, _, _ = group[m + ".weight"].quantize_codes(model.param_views[m + ".weight"])
        if not np.array_equal(again, stored_codes[m]):
            raise ValueError(f"{st_path}: {m}.weight does not re-cast to its stored codes "
                             "(scale and codes do not belong together)")
    model.set_precision(precision)
    return model
