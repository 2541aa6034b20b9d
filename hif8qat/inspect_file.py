"""``hif8qat inspect FILE``: what a checkpoint holds, and how HiF8 would treat it.

FILE may be a ``.safetensors`` file, a Hugging Face model directory (``config.json`` +
weights), a training checkpoint directory (``step_NNNNNN/`` with ``scalers.json``) or a
run directory (its newest checkpoint is used). For every tensor: dtype, shape, amax,
RMS and the SQNR of a HiF8 fake-quantization at the per-tensor scale fmax/amax (what
delayed scaling converges to for a weight); for every delayed scaler: its recipe,
history fill, scale, amax estimate and lifetime saturation counters.
"""
from __future__ import annotations

import json
import os

import numpy as np


def _tensor_rows(path: str) -> list:
    from .format import fake_quant, from_hif8
    from .model.safetensors_io import read_checkpoint_dir, read_safetensors
    if os.path.isdir(path):
        tensors, _ = read_checkpoint_dir(path)
    else:
        tensors = read_safetensors(path)
    rows = []
    for name in sorted(tensors):
        t = np.asarray(tensors[name])
        row = dict(name=name, dtype=str(t.dtype), shape=tuple(t.shape), amax=float("nan"),
                   rms=float("nan"), sqnr_db=float("nan"))
        if t.dtype == np.uint8:          # exported HiF8 codes: statistics of the decoded values
            t = from_hif8(t)
        if t.dtype.kind == "f" and t.size:
            x = t.astype(np.float32, copy=False)
            finite = np.isfinite(x)
            amax = float(np.abs(x[finite]).max()) if finite.any() else 0.0
            row["amax"], row["rms"] = amax, float(np.sqrt(np.mean(x[finite].astype(np.float64) ** 2)))
            if amax > 0 and x.ndim >= 2:
                y = fake_quant(x, 15.0 / amax, clip=15.0)
                err = float(np.sum((y[finite].astype(np.float64) - x[finite]) ** 2))
                sig = float(np.sum(x[finite].astype(np.float64) ** 2))
                row["sqnr_db"] = float("inf") if err == 0 else 10 * np.log10(sig / err)
        rows.append(row)
    return rows


def _scaler_rows(scalers_json: str) -> list:
    from .train.checkpoint import read_json
    states = read_json(scalers_json) or {}
    rows = []
    for name, st in states.items():
        hist = np.asarray(st.get("history", []), dtype=np.float32)
        rec = st.get("recipe", {})
        tot = st.get("totals", {})
        rows.append(dict(name=name, algo=rec.get("algo"), window=rec.get("window"), fmax=rec.get("fmax"),
                         n_valid=st.get("n_valid"), scale=st.get("scale"),
                         amax_estimate=float(hist.max()) if hist.size else float("nan"),
                         last_amax=float(hist[-1]) if hist.size else float("nan"),
                         saturation_events=tot.get("saturation_events", 0),
                         clipped=tot.get("clipped", 0), n=tot.get("n", 0)))
    return rows


def _resolve(path: str):
    """(weights path, scalers.json or None, description)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ValueError(f"{path}: expected a .safetensors file or a model/run directory")
        return path, None, "safetensors file"
    ck = os.path.join(path, "checkpoints")
    if os.path.isdir(ck):
        from .train.checkpoint import latest_checkpoint
        path = latest_checkpoint(ck)
    if os.path.isfile(os.path.join(path, "scalers.json")) or os.path.isdir(os.path.join(path, "model")):
        sj = os.path.join(path, "scalers.json")
        return os.path.join(path, "model"), (sj if os.path.isfile(sj) else None), f"training checkpoint {path}"
    if os.path.isfile(os.path.join(path, "config.json")):
        return path, None, "model directory"
    raise ValueError(f"{path}: not a model directory (no config.json), checkpoint or run directory")


def inspect_file(path: str) -> str:
    weights, scalers_json, what = _resolve(path)
    out = [f"{path}: {what}"]
    cfg = os.path.join(weights, "config.json") if os.path.isdir(weights) else None
    if cfg and os.path.isfile(cfg):
        with open(cfg) as fh:
            c = json.load(fh)
        keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "tie_word_embeddings")
        out.append("config: " + ", ".join(f"{k}={c[k]}" for k in keys if k in c))
    rows = _tensor_rows(weights)
    n_params = sum(int(np.prod(r["shape"])) for r in rows)
    out.append(f"{len(rows)} tensors, {n_params:,} values; SQNR = HiF8 fake-quant at scale 15/amax, clip 15")
    out.append(f"{'tensor':<52} {'dtype':<8} {'shape':<16} {'amax':>10} {'rms':>10} {'SQNR dB':>8}")
    for r in rows:
        out.append(f"{r['name']:<52} {r['dtype']:<8} {str(r['shape']):<16} {r['amax']:>10.4g} "
                   f"{r['rms']:>10.4g} {r['sqnr_db']:>8.2f}")
    if scalers_json:
        srows = _scaler_rows(scalers_json)
        out.append("")
        out.append(f"{len(srows)} delayed scalers")
        out.append(f"{'scaler':<52} {'algo':<11} {'fill':>7} {'scale':>10} {'amax est':>10} "
                   f"{'last amax':>10} {'sat.events':>10} {'clipped':>9}")
        for r in srows:
            frac = r["clipped"] / r["n"] if r["n"] else 0.0
            out.append(f"{r['name']:<52} {str(r['algo']):<11} {r['n_valid']:>3}/{r['window']:<3} "
                       f"{float(r['scale']):>10.4g} {r['amax_estimate']:>10.4g} {r['last_amax']:>10.4g} "
                       f"{r['saturation_events']:>10} {frac:>9.3%}")
    return "\n".join(out)
