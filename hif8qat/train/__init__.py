"""Training: TrainConfig, the Trainer loop, data, AdamW, atomic checkpoints.

    >>> import hif8qat as hq
    >>> cfg = hq.TrainConfig.from_toml("qat.toml")       # doctest: +SKIP
    >>> run_dir = hq.train(cfg)                           # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError
from .config import ScalingRecipe, TrainConfig
from .trainer import WALL_CLOCK_FIELDS, Trainer, TrainingDivergedError, read_log, train

__all__ = ["TrainConfig", "ScalingRecipe", "Trainer", "train", "TrainingDivergedError",
           "CheckpointError", "WALL_CLOCK_FIELDS", "read_log", "main_train"]


def main_train(argv=None) -> int:
    """``hif8qat train CONFIG.toml [--resume RUN_DIR]`` -> exit status.

    0: the run finished; 1: it stopped on a non-finite loss (the last good checkpoint
    is kept); 2: a bad config, data file or checkpoint (one-line message, nothing run).
    """
    parser = argparse.ArgumentParser(
        prog="hif8qat train",
        description="Train (BF16 warm-up, then HiF8 QAT) as a TOML config describes.")
    parser.add_argument("config", help="TOML file of TrainConfig fields")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue this run directory from its latest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        config = TrainConfig.from_toml(args.config)
        if args.no_progress:
            config = config.with_overrides({"progress": False})
        if args.resume:
            trainer = Trainer.resume(args.resume, config.with_overrides(
                {"run_dir": args.resume}))
        else:
            trainer = Trainer(config)
        run_dir = trainer.run()
    except TrainingDivergedError as e:
        print(f"hif8qat train: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, CheckpointError) as e:
        print(f"hif8qat train: error: {e}", file=sys.stderr)
        return 2
    print(run_dir)
    return 0
