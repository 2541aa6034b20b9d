"""TrainConfig: every knob of a training run, as one plain value.

A run is fully described by a TrainConfig (nanoGPT's "small dataclass plus
overrides"): the model source, the data, the batch geometry, AdamW and its one
learning-rate schedule, the phases (BF16 warm-up with the scalers calibrating,
then HiF8 QAT) and the delayed-scaling recipe of each tensor role. The same names
are the keys of a TOML file::

    steps = 200
    precision = "hif8"          # "hif8" (QAT) | "bf16" (baseline) | "fp32" (reference)
    bf16_warmup_steps = 50      # the first 50 steps run in bf16 while scalers calibrate
    lr = 1e-5
    data = "corpus.txt"         # text (byte-level tokens) or .npy / .npz token arrays

    [model_config]              # a from-scratch model (or model_dir = "hf_checkpoint/")
    vocab_size = 256
    hidden_size = 64
    ...

    [activation]                # delayed-scaling recipe of the linear layers' inputs
    algo = "max"
    window = 64

Every value is checked when the config is built, before any work starts, and an
error names the field (``TrainConfig.steps must be >= 1, got -5``). Unknown TOML
keys are rejected, with the closest known name suggested.

Example::

    >>> cfg = TrainConfig(model_config=dict(vocab_size=256, hidden_size=32,
    ...     intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...     num_key_value_heads=2), data="corpus.txt", steps=20)
    >>> cfg.phase_at(0), cfg.micro_batch_size
    ('qat', 8)
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Optional

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as _toml

PRECISIONS = ("fp32", "bf16", "hif8")
LR_SCHEDULES = ("constant", "cosine")
DTS_ALGOS = ("max", "most_recent")
STE_MODES = ("masked", "identity")
GRAD_ROUNDINGS = ("nearest", "stochastic")

# Fields that may differ between a checkpoint's config and the config a run is
# resumed with: they change how long the run goes on, how it reports, or where its
# files live (the data's content is checked by its SHA-256; the weights come from the
# checkpoint, so model_dir is not read again), never what a step computes. A longer
# `steps` stretches a cosine schedule: the resumed steps then follow the new one.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "keep_checkpoints", "eval_every",
                     "progress", "run_dir", "data", "model_dir",
                     # the Hessian probe restores every bit it touches (hessian.py)
                     "hessian_every", "hessian_k", "hessian_iters", "hessian_probes",
                     "hessian_batches", "hessian_precision", "hessian_rel_step")


def read_toml(path, what: str = "config") -> dict:
    """A TOML file as a dict; a missing file or bad TOML is a one-line error naming it."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            return _toml.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except _toml.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None


@dataclass
class ScalingRecipe:
    """Delayed-scaling recipe of one tensor role (see delayed-scaling.md).

    ``window`` amax-history length; ``algo`` "max" over the window or "most_recent";
    ``fmax`` the value the estimated amax is mapped to (15 for weights and
    activations, 224 for gradients); ``margin`` scale divided by 2**margin;
    ``clip`` clamp to +-fmax before encoding; ``ste`` "masked" (no gradient where
    clipped) or "identity".
    """
    window: int = 64
    algo: str = "max"
    fmax: float = 15.0
    margin: float = 0.0
    clip: bool = True
    ste: str = "masked"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _grad_recipe() -> ScalingRecipe:
    return ScalingRecipe(fmax=224.0)


@dataclass
class TrainConfig:
    """One training run: model, data, optimizer, schedule, phases, DTS recipes.

    Example::

        cfg = hq.TrainConfig.from_toml("qat.toml")
        run_dir = hq.train(cfg)             # or: t = hq.Trainer(cfg); t.step(); ...
    """
    # -- model: exactly one of the two ------------------------------------------
    model_dir: Optional[str] = None       # a Hugging Face directory to fine-tune
    model_config: Optional[dict] = None   # LlamaConfig fields (HF names) for a new model
    # -- data ---------------------------------------------------------------------
    data: str = ""                        # .txt (byte-level tokenizer) | .npy | .npz
    tokenizer: str = "byte"               # the built-in byte-level tokenizer (vocab 256)
    # -- run ----------------------------------------------------------------------
    run_dir: str = "runs/run"             # output directory (relative to the cwd)
    seed: int = 0                         # model init, data order, stochastic rounding
    steps: int = 100                      # optimizer steps in the whole run
    batch_size: int = 8                   # sequences per optimizer step (all micro-batches)
    grad_accum_steps: int = 1             # micro-batches per step; must divide batch_size
    seq_len: int = 128                    # tokens per sequence
    # -- AdamW --------------------------------------------------------------------
    lr: float = 1e-4                      # peak learning rate
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0             # decoupled, on matrices only (see optim.py)
    grad_clip: float = 1.0                # global-norm clipping threshold; 0 disables
    # -- the one learning-rate schedule of the run -------------------------------------
    lr_schedule: str = "cosine"           # "constant" | "cosine" (after the linear warm-up)
    lr_warmup_steps: int = 0              # linear LR warm-up from 0 to lr
    min_lr: float = 0.0                   # cosine floor
    # -- phases -------------------------------------------------------------------
    precision: str = "hif8"               # "hif8" (QAT) | "bf16" (baseline) | "fp32"
    bf16_warmup_steps: int = 0            # hif8 runs: steps in bf16 with scalers calibrating
    # -- delayed scaling ----------------------------------------------------------
    weight: ScalingRecipe = field(default_factory=ScalingRecipe)
    activation: ScalingRecipe = field(default_factory=ScalingRecipe)
    grad: ScalingRecipe = field(default_factory=_grad_recipe)
    quantize_grads: bool = False          # hif8 runs: also cast output gradients dY (recipe `grad`)
    grad_rounding: str = "nearest"        # "nearest" | "stochastic" (seeds from seed, step, tensor)
    # -- checkpoints, evaluation, reporting ------------------------------------------
    checkpoint_every: int = 0             # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2             # newest checkpoints kept on disk
    eval_every: int = 0                   # steps between eval hooks; 0 = only at the end
    progress: bool = True                 # tqdm progress bar
    # -- WinQ (arXiv 2605.17471; see winq.py) and the Hessian probe (hessian.py) --------
    winq_reset_every: int = 0             # QAT steps between resets w <- (1-a)w + a Q(w); 0 = off
    winq_alpha: float = 0.5               # the reset's a, in [0, 1]
    winq_noise_std: float = 0.0           # gradient at w + eps, eps ~ N(0, (std RMS(w))^2); 0 = off
    hessian_every: int = 0                # steps between Hessian spectrum probes; 0 = off
    hessian_k: int = 3                    # top/bottom eigenvalues reported
    hessian_iters: int = 20               # Lanczos steps per probe vector
    hessian_probes: int = 2               # Rademacher vectors for the density (SLQ)
    hessian_batches: int = 1              # fixed batches (the run's first) the probe uses
    hessian_precision: str = "fp32"       # probe in "fp32" (exact curvature) | "bf16" | "hif8"
    hessian_rel_step: float = 1e-3        # finite-difference step / |w| (bf16: 1e-2, hif8: 1e-1)

    # ---------------------------------------------------------------------------
    def __post_init__(self):
        for name in ("weight", "activation", "grad"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _recipe_from_dict(value, section=name))
            elif not isinstance(value, ScalingRecipe):
                raise TypeError(f"TrainConfig.{name} must be a ScalingRecipe or a dict, "
                                f"got {type(value).__name__}")
        self.validate()

    # -- derived values ------------------------------------------------------------
    @property
    def micro_batch_size(self) -> int:
        """Sequences in one forward/backward pass."""
        return self.batch_size // self.grad_accum_steps

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def phase_at(self, step: int) -> str:
        """Phase of the 0-based optimizer step ``step``.

        "bf16_warmup" (hif8 runs, step < bf16_warmup_steps: bf16 compute, scalers
        calibrating), "qat" (hif8 compute), or the precision of a baseline run
        ("bf16"/"fp32" throughout; bf16_warmup_steps is accepted so that a baseline
        can share its QAT run's config, and changes nothing there).
        """
        if self.precision == "hif8":
            return "bf16_warmup" if step < self.bf16_warmup_steps else "qat"
        return self.precision

    # -- validation ------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field; raise TypeError/ValueError naming the first bad one."""
        def integer(name, lo=None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"TrainConfig.{name} must be an integer, got {v!r}")
            if lo is not None and v < lo:
                raise ValueError(f"TrainConfig.{name} must be >= {lo}, got {v}")

        def number(name, lo=None, hi=None, lo_open=False, hi_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"TrainConfig.{name} must be a number, got {v!r}")
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"TrainConfig.{name} must be finite, got {v}")
            if lo is not None and (v < lo or (lo_open and v == lo)):
                raise ValueError(f"TrainConfig.{name} must be {'>' if lo_open else '>='} "
                                 f"{lo}, got {v}")
            if hi is not None and (v > hi or (hi_open and v == hi)):
                raise ValueError(f"TrainConfig.{name} must be {'<' if hi_open else '<='} "
                                 f"{hi}, got {v}")
            setattr(self, name, v)

        def choice(name, options):
            v = getattr(self, name)
            if v not in options:
                raise ValueError(f"TrainConfig.{name} must be one of {list(options)}, "
                                 f"got {v!r}")

        def boolean(name):
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise TypeError(f"TrainConfig.{name} must be true or false, got {v!r}")

        # model source
        if (self.model_dir is None) == (self.model_config is None):
            raise ValueError("TrainConfig: give exactly one of model_dir (a Hugging Face "
                             "directory to fine-tune) and model_config (the fields of a new "
                             "model), got "
                             + ("both" if self.model_dir is not None else "neither"))
        if self.model_dir is not None and (not isinstance(self.model_dir, str)
                                           or not self.model_dir):
            raise TypeError(f"TrainConfig.model_dir must be a non-empty path string, "
                            f"got {self.model_dir!r}")
        if self.model_config is not None and not isinstance(self.model_config, dict):
            raise TypeError(f"TrainConfig.model_config must be a dict of LlamaConfig "
                            f"fields, got {type(self.model_config).__name__}")
        # data
        if not isinstance(self.data, str) or not self.data:
            raise ValueError("TrainConfig.data must name a token file (.txt, .npy or .npz), "
                             f"got {self.data!r}")
        choice("tokenizer", ("byte",))
        if not isinstance(self.run_dir, str) or not self.run_dir:
            raise ValueError(f"TrainConfig.run_dir must be a non-empty path, got "
                             f"{self.run_dir!r}")
        # run geometry
        integer("seed", 0)
        integer("steps", 1)
        integer("batch_size", 1)
        integer("grad_accum_steps", 1)
        integer("seq_len", 1)
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"TrainConfig.grad_accum_steps ({self.grad_accum_steps}) must "
                             f"divide batch_size ({self.batch_size}): batch_size counts the "
                             "sequences of the whole optimizer step")
        # optimizer and schedule
        number("lr", 0.0)
        number("beta1", 0.0, 1.0, hi_open=True)
        number("beta2", 0.0, 1.0, hi_open=True)
        number("eps", 0.0, lo_open=True)
        number("weight_decay", 0.0)
        number("grad_clip", 0.0)
        choice("lr_schedule", LR_SCHEDULES)
        integer("lr_warmup_steps", 0)
        if self.lr_warmup_steps > self.steps:
            raise ValueError(f"TrainConfig.lr_warmup_steps ({self.lr_warmup_steps}) is "
                             f"longer than the run (steps = {self.steps})")
        number("min_lr", 0.0)
        if self.min_lr > self.lr:
            raise ValueError(f"TrainConfig.min_lr ({self.min_lr}) must not exceed lr "
                             f"({self.lr})")
        # phases
        choice("precision", PRECISIONS)
        integer("bf16_warmup_steps", 0)
        if self.bf16_warmup_steps > self.steps:
            raise ValueError(f"TrainConfig.bf16_warmup_steps ({self.bf16_warmup_steps}) is "
                             f"longer than the run (steps = {self.steps})")
        # scaling recipes
        for role in ("weight", "activation", "grad"):
            _validate_recipe(getattr(self, role), role)
        boolean("quantize_grads")
        choice("grad_rounding", GRAD_ROUNDINGS)
        # reporting
        integer("checkpoint_every", 0)
        integer("keep_checkpoints", 1)
        integer("eval_every", 0)
        boolean("progress")
        # WinQ and the Hessian probe
        integer("winq_reset_every", 0)
        number("winq_alpha", 0.0, 1.0)
        number("winq_noise_std", 0.0)
        if self.winq_reset_every and self.precision != "hif8":
            raise ValueError("TrainConfig.winq_reset_every needs precision = 'hif8': the reset "
                             "moves weights towards their HiF8 values, which a "
                             f"{self.precision} run has no scales for")
        integer("hessian_every", 0)
        integer("hessian_k", 1)
        integer("hessian_iters", 2)
        integer("hessian_probes", 1)
        integer("hessian_batches", 1)
        choice("hessian_precision", PRECISIONS)
        if self.hessian_precision == "hif8" and self.precision != "hif8":
            raise ValueError("TrainConfig.hessian_precision = 'hif8' needs precision = "
                             "'hif8' (a baseline run has no calibrated scalers)")
        number("hessian_rel_step", 0.0, lo_open=True)
        if self.hessian_k > self.hessian_iters:
            raise ValueError(f"TrainConfig.hessian_k ({self.hessian_k}) must not exceed "
                             f"hessian_iters ({self.hessian_iters})")

    # -- dict / TOML round trip ---------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain nested dict (the TOML layout); None fields are left out."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, ScalingRecipe):
                v = v.as_dict()
            elif isinstance(v, dict):
                v = json.loads(json.dumps(v))  # a deep, plain copy
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> "TrainConfig":
        """Build from a nested dict; unknown keys are a ValueError naming them."""
        if not isinstance(d, dict):
            raise TypeError(f"{source}: expected a table of TrainConfig fields, "
                            f"got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                raise ValueError(f"{source}: unknown key {key!r}{_suggest(key, known)}; "
                                 f"TrainConfig fields are: {', '.join(known)}")
        kwargs = dict(d)
        for role in ("weight", "activation", "grad"):
            if role in kwargs:
                if not isinstance(kwargs[role], dict):
                    raise TypeError(f"{source}: [{role}] must be a table of scaling-recipe "
                                    f"fields, got {kwargs[role]!r}")
                base = _grad_recipe() if role == "grad" else ScalingRecipe()
                kwargs[role] = _recipe_from_dict(kwargs[role], section=role, base=base,
                                                 source=source)
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str) -> "TrainConfig":
        """Read a TOML file whose keys are TrainConfig fields.

        Relative ``data`` and ``model_dir`` paths are taken relative to the TOML
        file's directory (so a config travels with its data); ``run_dir`` stays
        relative to the working directory, where outputs go.
        """
        path = os.fspath(path)
        d = read_toml(path, "config")
        base = os.path.dirname(os.path.abspath(path))
        for key in ("data", "model_dir"):
            v = d.get(key)
            if isinstance(v, str) and v and not os.path.isabs(v):
                d[key] = os.path.normpath(os.path.join(base, v))
        return cls.from_dict(d, source=path)

    def to_toml(self) -> str:
        """The config as TOML text that from_toml reads back to an equal config."""
        return dumps_toml(self.to_dict())

    def with_overrides(self, overrides: dict) -> "TrainConfig":
        """A copy with some fields changed; dotted keys reach into the recipes.

        ``cfg.with_overrides({"lr": 1e-4, "activation.algo": "most_recent"})``
        """
        d = self.to_dict()
        for key, value in overrides.items():
            if "." in key:
                section, sub = key.split(".", 1)
                if section not in ("weight", "activation", "grad", "model_config"):
                    raise ValueError(f"unknown override {key!r}: dotted keys must start "
                                     "with weight., activation., grad. or model_config.")
                d.setdefault(section, {})[sub] = value
            else:
                d[key] = value
        return TrainConfig.from_dict(d, source="overrides")

    def differences(self, other: "TrainConfig") -> list:
        """Names of the fields whose values differ (recipes as role.field)."""
        a, b = self.to_dict(), other.to_dict()
        out = []
        for key in sorted(set(a) | set(b)):
            va, vb = a.get(key), b.get(key)
            if isinstance(va, dict) and isinstance(vb, dict) and key != "model_config":
                out += [f"{key}.{k}" for k in sorted(set(va) | set(vb))
                        if va.get(k) != vb.get(k)]
            elif va != vb:
                out.append(key)
        return out


# -- helpers ---------------------------------------------------------------------------
def _suggest(key, known) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _recipe_from_dict(d: dict, *, section: str, base: Optional[ScalingRecipe] = None,
                      source: str = "TrainConfig") -> ScalingRecipe:
    known = [f.name for f in fields(ScalingRecipe)]
    for key in d:
        if key not in known:
            raise ValueError(f"{source}: unknown key {key!r} in [{section}]"
                             f"{_suggest(key, known)}; scaling-recipe fields are: "
                             f"{', '.join(known)}")
    if base is None:
        base = _grad_recipe() if section == "grad" else ScalingRecipe()
    return dataclasses.replace(base, **d)


def _validate_recipe(r: ScalingRecipe, role: str) -> None:
    where = f"TrainConfig.{role}"
    if isinstance(r.window, bool) or not isinstance(r.window, int):
        raise TypeError(f"{where}.window must be an integer, got {r.window!r}")
    if r.window < 1:
        raise ValueError(f"{where}.window must be >= 1, got {r.window}")
    if r.algo not in DTS_ALGOS:
        raise ValueError(f"{where}.algo must be one of {list(DTS_ALGOS)}, got {r.algo!r}")
    for name in ("fmax", "margin"):
        v = getattr(r, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{where}.{name} must be a finite number, got {v!r}")
        setattr(r, name, float(v))
    if not 0 < r.fmax <= 32768.0:
        raise ValueError(f"{where}.fmax must be > 0 and <= 32768 (the largest HiF8 value), "
                         f"got {r.fmax}")
    if r.margin < 0:
        raise ValueError(f"{where}.margin must be >= 0, got {r.margin}")
    if not isinstance(r.clip, bool):
        raise TypeError(f"{where}.clip must be true or false, got {r.clip!r}")
    if r.ste not in STE_MODES:
        raise ValueError(f"{where}.ste must be one of {list(STE_MODES)}, got {r.ste!r}")


def _toml_key(k) -> str:
    k = str(k)
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # shortest repr round-trips the float exactly
    if isinstance(v, str):
        return json.dumps(v)  # JSON escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}"
                               for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(d: dict) -> str:
    """Minimal TOML writer for config dicts: scalars first, then one table per dict."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables:
        lines.append("")
        lines.append(f"[{k}]")
        for kk, vv in v.items():
            lines.append(f"{_toml_key(kk)} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"
