"""``hif8qat ablate GRID.toml``: a grid of training runs, resumable, with a summary table.

A grid file names a base config, the values to vary and, optionally, what to evaluate::

    base = "qat.toml"              # a TrainConfig TOML (relative to this file); optional
    out_dir = "runs/ablate-dts"    # one sub-folder per run (relative to the cwd)

    [config]                       # TrainConfig fields on top of the base
    steps = 200
    [config.activation]
    window = 64

    [grid]                         # every combination is one run; dotted keys reach into
    "activation.algo" = ["max", "most_recent"]     # the recipes and model_config
    "activation.window" = [16, 64]
    seed = [0, 1]

    [[runs]]                       # extra runs outside the product (e.g. the baseline)
    name = "bf16-baseline"
    precision = "bf16"

    [eval]                         # optional: evaluate each run's final model
    tasks = ["world_knowledge_tiny", "world_reasoning_tiny"]
    limit = 100                    # items per (sub)task; omit for all
    num_fewshot = 0
    batch_size = 32

Every config is built and checked before the first run starts (a bad value is a
one-line error naming it). Each run has its own directory ``out_dir/<name>`` (the name
lists the grid values, e.g. ``activation.algo=max,seed=0``); a finished run (its
summary at the configured steps, and its eval.json when [eval] is given) is skipped, a
run cut short resumes from its last checkpoint, so running the same grid again after an
interruption only does what is left. At the end the comparison table of all runs
(:func:`hif8qat.experiments.report.compare`) is printed and written to
``out_dir/report.md``.

Example::

    result = run_grid("grid.toml")        # hif8qat ablate grid.toml
    print(result["table"].to_markdown())
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from typing import Callable, Optional

from ..train.config import read_toml
from . import report as rep

GRID_KEYS = ("base", "out_dir", "config", "grid", "runs", "eval", "reference")
EVAL_KEYS = ("tasks", "limit", "num_fewshot", "batch_size")

__all__ = ["load_grid", "expand_grid", "run_grid", "main_ablate"]


def load_grid(path: str) -> dict:
    """Read a grid TOML file into a dict (``base`` resolved against the file's folder)."""
    path = os.fspath(path)
    grid = read_toml(path, "grid")
    grid["_source"] = path
    base = grid.get("base")
    if isinstance(base, str) and base and not os.path.isabs(base):
        grid["base"] = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)),
                                                     base))
    return grid


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


_SHORT = (("activation.", ""), ("weight.", "w."), ("grad.", "g."), ("model_config.", "m."),
          ("bf16_warmup_steps", "warmup"))


def _run_name(overrides: dict, short: bool = True) -> str:
    parts = []
    for k, v in overrides.items():
        if short:
            for long_, abbrev in _SHORT:
                if k.startswith(long_):
                    k = abbrev + k[len(long_):]
                    break
        parts.append(f"{k}={_fmt_value(v)}")
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts) or "base")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resolve_world_path(key: str, value, resolve: bool = True):
    """``world:pretrain[:tiny]`` / ``world:finetune[:tiny]`` (data) and
    ``world:pretrained[:tiny]`` (model_dir, the demo's cached pretrained model) as paths;
    any other value unchanged. ``resolve=False`` only checks the syntax (nothing is
    generated or trained)."""
    if not (isinstance(value, str) and value.startswith("world:")):
        return value
    parts = value.split(":")
    what = parts[1] if len(parts) > 1 else ""
    size = parts[2] if len(parts) > 2 else "full"
    known = {"data": ("pretrain", "finetune"), "model_dir": ("pretrained",)}
    if size not in ("full", "tiny") or len(parts) > 3 or what not in known.get(key, ()):
        raise ValueError(f"{key} = {value!r}: known are data = world:pretrain[:tiny] | "
                         f"world:finetune[:tiny] and model_dir = world:pretrained[:tiny]")
    if not resolve:
        return value
    from hif8qat.world import finetune_data, world_dir
    if key == "data":
        if what == "finetune":
            return finetune_data(None, size)
        return os.path.join(world_dir(None, size), "pretrain.txt")
    from .demo import FULL, QUICK, pretrained_model
    from hif8qat.world.tasks import default_seed
    return pretrained_model(QUICK if size == "tiny" else FULL, default_seed())["model_dir"]


def expand_grid(grid: dict, resolve_world: bool = True) -> tuple:
    """Check a grid dict and build every run's TrainConfig before anything runs.

    Returns ``(out_dir, [(name, overrides, TrainConfig)], eval_settings or None)``.
    """
    from hif8qat.train import TrainConfig

    src = grid.get("_source", "grid")
    unknown = [k for k in grid if k not in GRID_KEYS and k != "_source"]
    if unknown:
        raise ValueError(f"{src}: unknown key(s) {', '.join(map(repr, unknown))}; a grid "
                         f"file has {', '.join(GRID_KEYS)}")
    out_dir = grid.get("out_dir", "runs/ablate")
    if not isinstance(out_dir, str) or not out_dir:
        raise ValueError(f"{src}: out_dir must be a non-empty path, got {out_dir!r}")
    # the base config
    inline = grid.get("config", {})
    if not isinstance(inline, dict):
        raise ValueError(f"{src}: [config] must be a table of TrainConfig fields")
    base = grid.get("base")
    if base is not None:
        if not isinstance(base, str):
            raise ValueError(f"{src}: base must be the path of a TrainConfig TOML file")
        cfg = TrainConfig.from_toml(base)
        base_dict = cfg.to_dict()
        for k, v in inline.items():
            if isinstance(v, dict) and isinstance(base_dict.get(k), dict):
                base_dict[k] = dict(base_dict[k], **v)
            else:
                base_dict[k] = v
    else:
        base_dict = dict(inline)
        src_dir = os.path.dirname(os.path.abspath(src)) if src != "grid" else os.getcwd()
        for key in ("data", "model_dir"):   # relative to the grid file, as in from_toml
            v = base_dict.get(key)
            if isinstance(v, str) and v and not os.path.isabs(v) \
                    and not v.startswith("world:"):
                base_dict[key] = os.path.normpath(os.path.join(src_dir, v))
    base_dict.setdefault("run_dir", os.path.join(out_dir, "base"))
    for key in ("data", "model_dir"):
        base_dict[key] = resolve_world_path(key, base_dict.get(key), resolve_world)
    try:
        base_cfg = TrainConfig.from_dict(base_dict, source=f"{src} [config]")
    except TypeError as e:
        raise ValueError(str(e)) from None
    # the product of the grid values, then the explicit runs
    axes = grid.get("grid", {})
    if not isinstance(axes, dict):
        raise ValueError(f"{src}: [grid] must be a table of field = [values]")
    axes = _flatten(axes) if any(isinstance(v, dict) for v in axes.values()) else axes
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise ValueError(f"{src}: [grid] {k} must be a non-empty list of values, got {v!r}")
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    extra = grid.get("runs", [])
    if not isinstance(extra, list) or any(not isinstance(r, dict) for r in extra):
        raise ValueError(f"{src}: [[runs]] must be tables of field overrides")
    short = [_run_name(c) for c in combos]
    use_short = len(set(short)) == len(short)      # else the unabbreviated keys
    named = [(_run_name(c, use_short), c) for c in combos]
    for r in extra:
        r = dict(r)
        name = r.pop("name", None)
        named.append((name, _flatten(r)))
    if not named:
        named = [(None, {})]
    runs, seen = [], set()
    for name, overrides in named:
        name = name or _run_name(overrides)
        if name in seen:
            raise ValueError(f"{src}: two runs are named {name!r}")
        seen.add(name)
        overrides = dict(overrides)
        for key in ("data", "model_dir"):
            if key in overrides:
                overrides[key] = resolve_world_path(key, overrides[key], resolve_world)
        if "run_dir" in overrides:
            raise ValueError(f"{src}: run {name!r}: run_dir is set per run (out_dir/name)")
        try:
            cfg = base_cfg.with_overrides(dict(overrides,
                                               run_dir=os.path.join(out_dir, name)))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{src}: run {name!r}: {e}") from None
        runs.append((name, overrides, cfg))
    # evaluation
    ev = grid.get("eval")
    if ev is not None:
        if not isinstance(ev, dict):
            raise ValueError(f"{src}: [eval] must be a table ({', '.join(EVAL_KEYS)})")
        bad = [k for k in ev if k not in EVAL_KEYS]
        if bad:
            raise ValueError(f"{src}: unknown key(s) in [eval]: {', '.join(bad)}; known: "
                             f"{', '.join(EVAL_KEYS)}")
        tasks = ev.get("tasks")
        if isinstance(tasks, str):
            tasks = [t for t in tasks.split(",") if t]
        if not tasks or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"{src}: [eval] tasks must be a non-empty list of task names")
        for key, lo in (("limit", 1), ("num_fewshot", 0), ("batch_size", 1)):
            v = ev.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
                raise ValueError(f"{src}: [eval] {key} must be an integer >= {lo}, got {v!r}")
        from hif8qat.eval import load_task
        for t in tasks:          # an unknown task fails now, not after the first run
            load_task(t)
        ev = {"tasks": list(tasks), "limit": ev.get("limit"),
              "num_fewshot": ev.get("num_fewshot", 0), "batch_size": ev.get("batch_size", 32)}
    return out_dir, runs, ev


def run_grid(grid, *, out_dir: Optional[str] = None, progress: bool = True, log=print,
             on_run_done: Optional[Callable] = None) -> dict:
    """Run every run of a grid (a path or a dict as :func:`load_grid` returns), skipping
    finished ones; return ``{"out_dir", "runs", "trained", "skipped", "table"}``.

    ``on_run_done(name, run_dir)`` is called after each run (trained or skipped).
    """
    from .demo import train_and_evaluate

    if isinstance(grid, (str, os.PathLike)):
        grid = load_grid(grid)
    if out_dir is not None:
        grid = dict(grid, out_dir=out_dir)
    out_dir, runs, ev = expand_grid(grid)
    reference = grid.get("reference")
    if reference is not None and reference not in [n for n, _, _ in runs]:
        raise ValueError(f"reference {reference!r} is not one of the grid's runs")
    os.makedirs(out_dir, exist_ok=True)
    rep._atomic_write(os.path.join(out_dir, rep.EXPERIMENT_FILE), json.dumps(
        {"kind": "ablation", "source": grid.get("_source"), "runs": [n for n, _, _ in runs],
         "overrides": {n: o for n, o, _ in runs}, "eval": ev}, indent=1, default=str) + "\n")
    trained, skipped = [], []
    eval_kwargs = {k: ev[k] for k in ("limit", "num_fewshot", "batch_size")} if ev else {}
    for i, (name, overrides, cfg) in enumerate(runs):
        if progress:
            cfg = cfg.with_overrides({"progress": True})
        log(f"[{i + 1}/{len(runs)}] {name}")
        run_dir, did = train_and_evaluate(
            cfg, ev["tasks"] if ev else None, eval_kwargs, progress=progress, log=log,
            meta={"name": name, "label": name,
                  "description": ", ".join(f"{k}={_fmt_value(v)}" for k, v in overrides.items())})
        (trained if did else skipped).append(name)
        if on_run_done is not None:
            on_run_done(name, run_dir)
    table = rep.compare(out_dir, reference=reference,
                        title=f"ablation {os.path.basename(os.path.normpath(out_dir))}")
    table.save(out_dir)
    return {"out_dir": os.path.abspath(out_dir), "runs": [n for n, _, _ in runs],
            "trained": trained, "skipped": skipped, "table": table}


def main_ablate(argv=None) -> int:
    """``hif8qat ablate GRID.toml [--out DIR] [--dry-run] [--no-progress] [--plots]``.

    Exit status 0 when every run finished, 2 on a bad grid or arguments (one line)."""
    parser = argparse.ArgumentParser(
        prog="hif8qat ablate",
        description="Run a grid of training runs (resumable: finished runs are skipped) and "
                    "print their comparison table.")
    parser.add_argument("grid", help="grid TOML file (see hif8qat/experiments/grids/)")
    parser.add_argument("--out", default=None, help="output folder (overrides out_dir)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the grid and list its runs without running them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--plots", action="store_true", help="PNG plots (needs matplotlib)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        grid = load_grid(args.grid)
        if args.out:
            grid["out_dir"] = args.out
        if args.dry_run:
            out_dir, runs, ev = expand_grid(grid, resolve_world=False)
            print(f"{len(runs)} runs into {out_dir}"
                  f"{'; eval ' + ','.join(ev['tasks']) if ev else ''}:")
            for name, _, cfg in runs:
                print(f"  {name}: {cfg.precision}, {cfg.steps} steps, lr {cfg.lr:g}")
            return 0
        result = run_grid(grid, progress=not args.no_progress)
        if args.plots:
            from . import plots
            plots.plot_table(result["table"], result["out_dir"])
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, KeyError) as e:
        return rep._usage_error("ablate", e)
    print()
    print(result["table"].to_markdown())
    print(f"\n{len(result['trained'])} run(s) trained, {len(result['skipped'])} already done; "
          f"report: {os.path.join(result['out_dir'], 'report.md')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_ablate())
