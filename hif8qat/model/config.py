"""LlamaConfig: a Llama-family decoder's shape, with Hugging Face ``config.json`` names.

Besides plain Llama configs this accepts OpenPangu-Embedded's variant, whose
``"bias": true`` puts biases on the q, k, v **and o** projections (the same four
tensors Hugging Face Llama's ``attention_bias`` covers), and RoPE theta either at the
top level (``rope_theta``) or inside ``rope_parameters`` / ``rope_scaling`` as newer
transformers releases write it. A ``rope_type`` other than ``"default"`` (linear,
dynamic, yarn, llama3, ...) is rejected: this model implements only the plain rotation,
and rotating with the wrong frequencies would silently produce a different model.

Example::

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    cfg = LlamaConfig.from_json_file("hf_dir/config.json")
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

# Fields whose value this model does not use but that a round trip should keep
# (token ids, generation defaults, ...) live in ``extra``. These keys are rewritten
# on save because they describe the *saved* checkpoint, not the source one.
_REWRITTEN_ON_SAVE = ("model_type", "architectures", "auto_map", "torch_dtype", "dtype",
                      "bias", "rope_parameters", "rope_scaling", "transformers_version")


@dataclass
class LlamaConfig:
    """Shape and hyper-parameters of a Llama-family decoder (HF ``config.json`` names).

    ``head_dim`` defaults to ``hidden_size // num_attention_heads``;
    ``num_key_value_heads`` defaults to ``num_attention_heads`` (no GQA).
    ``attention_bias`` puts biases on q_proj, k_proj, v_proj and o_proj (as in HF
    Llama and OpenPangu's ``bias``); ``mlp_bias`` on gate/up/down.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise ValueError when the shape is inconsistent or unsupported."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim",
                     "max_position_embeddings"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        for name in ("rope_theta", "rms_norm_eps"):
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                    or v <= 0):
                raise ValueError(f"LlamaConfig.{name} must be a finite number > 0, got {v!r}")
        self.rope_theta = float(self.rope_theta)
        self.rms_norm_eps = float(self.rms_norm_eps)
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported: this model "
                             "implements the SwiGLU MLP with silu only")
        for name in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LlamaConfig.{name} must be a bool, got {getattr(self, name)!r}")

    # ----------------------------------------------------------- dict / json
    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        """Build from a parsed HF ``config.json`` dict (unknown keys kept in ``extra``)."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        # OpenPangu-Embedded: "bias": true -> biases on q, k, v and o.
        if "bias" in d and "attention_bias" not in d:
            kwargs["attention_bias"] = bool(d["bias"])
        rope_theta = _rope_theta_from(d)
        if rope_theta is not None:
            kwargs["rope_theta"] = rope_theta
        for k in known:
            if k in d and k != "rope_theta" and d[k] is not None:
                kwargs[k] = d[k]
        extra = {k: v for k, v in d.items() if k not in known}
        for k in ("num_key_value_heads", "head_dim"):
            if d.get(k) is None:
                kwargs.pop(k, None)
        cfg = cls(**kwargs)
        cfg.extra = extra
        return cfg

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "LlamaConfig":
        """Read a HF ``config.json``."""
        try:
            with open(path, "r", encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        """A HF LlamaForCausalLM ``config.json`` dict (loads in transformers as ``llama``)."""
        d = {k: v for k, v in self.extra.items() if k not in _REWRITTEN_ON_SAVE}
        for f in dataclasses.fields(self):
            if f.name != "extra":
                d[f.name] = getattr(self, f.name)
        d["model_type"] = "llama"
        d["architectures"] = ["LlamaForCausalLM"]
        # newer transformers read rope_parameters, older ones the top-level rope_theta
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta}
        return d

    def to_json_file(self, path: str | os.PathLike, torch_dtype: str = "float32") -> None:
        d = self.to_dict()
        d["torch_dtype"] = torch_dtype
        with open(path, "w", encoding="utf-8") as f:
            json.dump(d, f, indent=2, sort_keys=True)
            f.write("\n")

    # ------------------------------------------------------------- derived
    @property
    def num_parameters(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        C, I, V = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        per_layer = 2 * C + C * q + 2 * C * kv + q * C + 3 * C * I
        if self.attention_bias:
            per_layer += q + 2 * kv + C
        if self.mlp_bias:
            per_layer += 2 * I + C
        n = V * C + self.num_hidden_layers * per_layer + C
        if not self.tie_word_embeddings:
            n += V * C
        return n


def _rope_theta_from(d: dict) -> Optional[float]:
    """RoPE theta from the top level or rope_parameters/rope_scaling; reject other rope types."""
    theta = d.get("rope_theta")
    if d.get("partial_rotary_factor", 1.0) not in (None, 1, 1.0):
        raise ValueError(f"partial_rotary_factor={d['partial_rotary_factor']!r} is not "
                         "supported: this model rotates the whole head dimension")
    for key in ("rope_parameters", "rope_scaling"):
        rp = d.get(key)
        if rp is None:
            continue
        if not isinstance(rp, dict):
            raise ValueError(f"{key} must be a JSON object or null, got {rp!r}")
        rope_type = rp.get("rope_type", rp.get("type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(
                f"{key}.rope_type={rope_type!r} is not supported: this model implements only "
                "the default RoPE (theta ** (-2i/d)); convert the checkpoint or extend "
                "hif8qat/model/llama.py rope frequencies")
        prf = rp.get("partial_rotary_factor", 1.0)
        if prf not in (None, 1, 1.0):
            raise ValueError(f"{key}.partial_rotary_factor={prf!r} is not supported: this "
                             "model rotates the whole head dimension")
        if rp.get("rope_theta") is not None:
            if theta is not None and float(theta) != float(rp["rope_theta"]):
                raise ValueError(f"rope_theta ({theta}) and {key}.rope_theta "
                                 f"({rp['rope_theta']}) disagree")
            theta = rp["rope_theta"]
    return None if theta is None else float(theta)
