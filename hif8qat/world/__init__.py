"""The embedded benchmark world: a seeded fictional world that stands in for
pretraining data and for MMLU, HellaSwag and ARC (see ``generate.py``).

Example::

    >>> import hif8qat as hq
    >>> paths = hq.world.generate(seed=0, out_dir="/tmp/world", size="tiny")
    >>> res = hq.evaluate(model, tok, ["world_knowledge_tiny"])     # doctest: +SKIP

Importing this package registers the task names ``world_knowledge``,
``world_commonsense``, ``world_reasoning`` (and ``*_tiny``) with the evaluator; the
world behind them is generated into a cache folder on first use (``tasks.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .generate import GENERATOR_VERSION, SIZES, WorldSpec, generate
from .tasks import TASK_NAMES, task_specs, verify_world, world_dir

__all__ = ["GENERATOR_VERSION", "SIZES", "WorldSpec", "generate", "TASK_NAMES",
           "task_specs", "verify_world", "world_dir", "recipe_path", "pretrain_config",
           "finetune_data", "main_world"]


def recipe_path(name: str = "pretrain") -> str:
    """Path of a recipe TOML shipped with the package (``recipes/{name}.toml``)."""
    path = os.path.join(os.path.dirname(__file__), "recipes", f"{name}.toml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no world recipe named {name!r} (looked for {path})")
    return path


def pretrain_config(seed: int | None = None, size: str = "full", recipe: str = "pretrain",
                    overrides: dict | None = None):
    """The shipped pretraining recipe as a TrainConfig whose ``data`` is the world's
    ``pretrain.txt`` (the world is generated and cached on first use).

    Example::

        >>> cfg = hq.world.pretrain_config(0, "tiny", overrides={"steps": 50})  # doctest: +SKIP
        >>> run_dir = hq.train(cfg)                                             # doctest: +SKIP
    """
    try:
        import tomllib as toml
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as toml
    from ..train.config import TrainConfig

    path = recipe_path(recipe)
    with open(path, "rb") as fh:
        d = toml.load(fh)
    root = world_dir(seed, size)
    d["data"] = os.path.join(root, d.get("data", "pretrain.txt"))
    cfg = TrainConfig.from_dict(d, source=path)
    return cfg.with_overrides(overrides) if overrides else cfg


def finetune_data(seed: int | None = None, size: str = "full") -> str:
    """Path of the world's fine-tuning corpus (another domain), generated if needed."""
    return os.path.join(world_dir(seed, size), "finetune.txt")


def main_world(argv=None) -> int:
    """``hif8qat world [--seed N] [--out DIR] [--size full|tiny]``: write a world.

    Prints where each part went and the item counts; returns the exit status
    (2 for bad arguments, with a one-line message).
    """
    parser = argparse.ArgumentParser(
        prog="hif8qat world",
        description="Write the embedded benchmark world: pretraining and fine-tuning "
                    "corpora and the world_knowledge / world_commonsense / "
                    "world_reasoning benchmarks in MMLU / HellaSwag / ARC file layouts.")
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: the cache folder the task names use)")
    parser.add_argument("--size", default="full", choices=sorted(SIZES),
                        help="full (>= 2,000 items per benchmark) or tiny (tests, --quick)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:             # argparse already printed its one-line message
        return int(e.code or 0)
    if args.seed < 0:
        print("hif8qat world: error: --seed must be >= 0", file=sys.stderr)
        return 2
    try:
        if args.out is None:
            root = world_dir(args.seed, args.size)
        else:
            if os.path.exists(args.out) and not os.path.isdir(args.out):
                print(f"hif8qat world: error: --out {args.out!r} exists and is not a folder",
                      file=sys.stderr)
                return 2
            generate(args.seed, args.out, size=args.size)
            root = args.out
    except OSError as e:
        print(f"hif8qat world: error: cannot write the world: {e}", file=sys.stderr)
        return 2
    with open(os.path.join(root, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    c = manifest["counts"]
    print(f"world seed {args.seed} ({args.size}) in {root}")
    print(f"  pretrain.txt  {manifest['corpus']['pretrain_bytes']:>9,} bytes")
    print(f"  finetune.txt  {manifest['corpus']['finetune_bytes']:>9,} bytes")
    print(f"  world_knowledge    {c['world_knowledge']['test']:>5} test items "
          f"({c['world_knowledge']['facts']} facts), mmlu_continuation")
    print(f"  world_commonsense  {c['world_commonsense']['val']:>5} val items, hellaswag")
    print(f"  world_reasoning    {c['world_reasoning']['test']:>5} test items, arc")
    for name, spec in task_specs(root=root).items():
        print(f"  --tasks {spec}")
    return 0
