"""Hugging Face model directories: ``config.json`` + ``model.safetensors`` (or shards).

``load_model`` reads a Llama-family checkpoint (Llama names, F32/F16/BF16 tensors, tied
embeddings without ``lm_head.weight``, stale buffers such as ``rotary_emb.inv_freq``
ignored) into a ``LlamaModel``; ``save_model`` writes one that transformers loads as
``LlamaForCausalLM``. Missing, unexpected or mis-shaped tensors are a ValueError naming
the tensor. Never unpickles anything.

Example::

    model = load_model("hf_dir", precision="bf16")
    model.save("out_dir")                     # same layout, float32
"""
from __future__ import annotations

import os
import re
import warnings

import numpy as np

from .config import LlamaConfig
from .llama import LlamaModel
from .safetensors_io import read_checkpoint_dir, write_checkpoint_dir

# buffers some exporters save that carry no parameters (recomputed from the config)
_STALE = re.compile(r"(^|\.)rotary_emb\.inv_freq$|(^|\.)masked_bias$|(^|\.)attn\.bias$")
_SAVE_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def load_model(path, precision: str = "fp32", dtype=np.float32) -> LlamaModel:
    """Load a HF Llama-family directory into a LlamaModel.

    Args:
      path: a directory with ``config.json`` and ``model.safetensors`` or a sharded
        ``model.safetensors.index.json``.
      precision: "fp32" | "bf16" | "hif8" for the linear layers.
        A directory written by ``hq.export_hif8`` (uint8 codes with their scales) loads
        with its scalers restored and frozen, so its hif8 logits equal the exporting
        model's bit for bit.
      dtype: the parameter buffer's dtype (float32; float64 for gradient checks).

    Example::

        model = hq.load_model("openpangu-embedded-1b", precision="bf16")
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory (expected a Hugging Face model "
                                "directory with config.json and model.safetensors)")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path}: no config.json")
    from ..ptq import is_hif8_checkpoint, load_hif8
    if is_hif8_checkpoint(path):  # an hq.export_hif8 directory: uint8 codes + scales
        if dtype != np.float32:
            raise ValueError(f"{path}: a HiF8 export loads as float32, not {np.dtype(dtype)}")
        return load_hif8(path, precision=precision)
    cfg = LlamaConfig.from_json_file(cfg_path)
    tensors, _ = read_checkpoint_dir(path)
    model = LlamaModel(cfg, dtype=dtype, precision=precision)
    load_state_dict(model, tensors, source=path)
    return model


def load_state_dict(model: LlamaModel, tensors: dict, source: str = "state dict") -> None:
    """Copy {HF name: array} into the model's parameter views, strictly."""
    # some exporters prefix names (e.g. a bare LlamaModel saves "layers.0..." without "model.")
    expected = model.param_views
    if not any(n in tensors for n in expected) and any(
            "model." + n in expected for n in tensors):
        tensors = {("model." + n if "model." + n in expected else n): a for n, a in tensors.items()}
    unexpected = [n for n in tensors if n not in expected and not _STALE.search(n)]
    if model.config.tie_word_embeddings and "lm_head.weight" in unexpected:
        unexpected.remove("lm_head.weight")
        emb = tensors.get("model.embed_tokens.weight")
        if emb is not None and not np.array_equal(np.asarray(tensors["lm_head.weight"]), emb):
            warnings.warn(f"{source}: tie_word_embeddings is true but lm_head.weight differs "
                          "from model.embed_tokens.weight; using the embedding (tied)")
    if unexpected:
        raise ValueError(f"{source}: unexpected tensor(s) not part of a Llama model with this "
                         f"config: {', '.join(sorted(unexpected)[:5])}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise ValueError(f"{source}: missing tensor {missing[0]!r}"
                         f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    for name, view in expected.items():
        arr = np.asarray(tensors[name])
        if arr.shape != view.shape:
            raise ValueError(f"{source}: tensor {name!r} has shape {arr.shape}, the config "
                             f"needs {view.shape}")
        if arr.dtype.kind != "f":
            raise ValueError(f"{source}: tensor {name!r} has non-float dtype {arr.dtype}")
        view[...] = arr


def state_dict(model: LlamaModel) -> dict:
    """{HF name: parameter view} in Hugging Face naming (no copy)."""
    return dict(model.param_views)


def save_model(model: LlamaModel, path, dtype: str = "float32", max_shard_bytes=None) -> list:
    """Write ``config.json`` + ``model.safetensors`` (or shards + index) to ``path``.

    dtype: "float32" | "bfloat16" | "float16" for the stored tensors.
    Returns the file names written.
    """
    if dtype not in _SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_SAVE_DTYPES)}, got {dtype!r}")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    files = write_checkpoint_dir(path, state_dict(model), dtype=_SAVE_DTYPES[dtype],
                                 max_shard_bytes=max_shard_bytes)
    model.config.to_json_file(os.path.join(path, "config.json"), torch_dtype=dtype)
    return ["config.json"] + files
