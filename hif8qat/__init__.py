"""hif8qat: HiF8 W8A8 quantization-aware training with delayed tensor scaling, on the CPU.

>>> import numpy as np, hif8qat as hq
>>> x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
>>> x_hat, stats = hq.fake_quant(x, scale=15 / np.abs(x).max(), clip=15.0, return_stats=True)
"""
from .format import (
    HIF8_MAX, HIF8_MIN_POSITIVE, HIF8_OVERFLOW, CastStats, available_isas, clip_threshold,
    cpu_features, fake_quant, from_hif8, get_isa, get_num_threads, hif8_values, round_bf16,
    set_isa, set_num_threads, to_hif8,
)

__version__ = "0.1.0"

__all__ = [
    "HIF8_MAX", "HIF8_MIN_POSITIVE", "HIF8_OVERFLOW", "CastStats", "available_isas",
    "clip_threshold", "cpu_features", "fake_quant", "from_hif8", "get_isa", "get_num_threads",
    "hif8_values", "round_bf16", "set_isa", "set_num_threads", "to_hif8",
]

# ---- delayed scaling (issue 3) ----
from .scaling import DelayedScaler, ScalerGroup  # noqa: E402

__all__ += ["DelayedScaler", "ScalerGroup"]

# ---- GEMM (issue 4) ----
from .gemm import PackedWeight, gemm, pack_weight, qlinear  # noqa: E402

__all__ += ["PackedWeight", "gemm", "pack_weight", "qlinear"]

# ---- model (issue 5) ----
from .model import LlamaConfig, LlamaModel, load_model  # noqa: E402

__all__ += ["LlamaConfig", "LlamaModel", "load_model"]

# ---- training (issue 6) ----
from .train import TrainConfig, Trainer, TrainingDivergedError, train  # noqa: E402

__all__ += ["TrainConfig", "Trainer", "TrainingDivergedError", "train"]

# ---- evaluation, PTQ, export (issue 7) ----
from .eval import (ByteTokenizer, EvalResult, acc_stderr, evaluate, load_task,  # noqa: E402
                   load_tokenizer, paired_bootstrap, register_task)

from .ptq import calibrate, export_hif8, load_hif8  # noqa: E402

__all__ += ["ByteTokenizer", "EvalResult", "acc_stderr", "evaluate", "load_task",
            "load_tokenizer", "paired_bootstrap", "register_task",
            "calibrate", "export_hif8", "load_hif8"]

# ---- embedded world (issue 8) ----
from . import world  # noqa: E402  (registers world_knowledge/commonsense/reasoning)

__all__ += ["world"]

# ---- Hessian spectrum probe and WinQ (issue 10) ----
from .hessian import HessianSpectrum, hessian_spectrum  # noqa: E402

__all__ += ["HessianSpectrum", "hessian_spectrum"]
