"""``hif8qat demo``: the paper's comparison in miniature, on the embedded world.

The pipeline (each stage prints a line; training and evaluation show progress bars):

1. **Pretrain** a small byte-level Llama on the world's pretraining corpus (BF16), or
   reuse it from the cache: ``$HIF8QAT_CACHE/pretrained/<key>`` (default
   ``~/.cache/hif8qat``), keyed on the resolved recipe, the world seed and size, the
   world generator's version and the package version.
2. **Post-training figures**: the pretrained model evaluated in BF16 (``P0``) and, after
   calibrating the R1 scaling recipe on pretraining text (``hq.calibrate``), in HiF8
   without any training (``P1``). Both are cached with the model.
3. **Five matched fine-tuning runs** on the world's fine-tuning corpus (another domain),
   same data order, seed and LR schedule, each a one-knob change from the paper's final
   recipe:

   ===  ======================================================================
   R0   BF16 baseline of R1 (same schedule, bf16 throughout)
   R1   final recipe: hif8 W8A8, DTS ``max`` over 64 steps, BF16 warm-up, low lr
   R2   R1 with ``most_recent`` scaling (saturation-prone)
   R3   R1 with the aggressive lr
   R4   R0 with the aggressive lr (forgetting without quantization)
   ===  ======================================================================

4. **Evaluate** every run's final model (in its own precision; HiF8 runs with their
   scalers frozen) on world_knowledge (MMLU-shaped), world_commonsense (HellaSwag-
   shaped) and world_reasoning (ARC-shaped), 2,000 items each in the full world.
5. **Print the table** (:func:`hif8qat.experiments.report.compare`): accuracy, drop
   against the matched BF16 run with a paired bootstrap interval, loss APE over the QAT
   phase and over all steps, saturation events, clipped fraction, wall time. It is
   also written to ``OUT/report.md`` (and per run, with plots when matplotlib is
   installed).

Scaling the paper's recipe to the small model (see :data:`FULL` for the numbers): the
paper fine-tunes a 1B model for 10,000 steps with a 500-step BF16 warm-up (5 %) at
lr 1e-5 (final) against 1e-4 (aggressive). The demo keeps both rates as they are: on the
embedded world's model (pretrained at lr 3e-3) 1e-5 keeps the pretrained skills within
about 2 points while 1e-4 costs 15-17 points of commonsense and reasoning -- the paper's
forgetting, at the paper's learning rates (world v1's weaker model needed them 10x
higher). A run is 150 steps of 8 x 128 bytes with a 20-step BF16 warm-up (13 %, so that
QAT starts from a history of 20 real amaxes), one cosine schedule with a 10-step linear
LR warm-up for every run. ``--quick`` runs the same pipeline on the tiny world with a
tiny model, in seconds. With ``jobs`` > 1 from a script, call it under
``if __name__ == "__main__":`` (the stages run in spawned processes).

Example::

    table = run_demo("runs/demo")            # hif8qat demo --out runs/demo
    print(table.to_markdown())
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

from . import report as rep

CACHE_FORMAT = 1
TASK_KEYS = ("world_knowledge", "world_commonsense", "world_reasoning")


@dataclass(frozen=True)
class DemoSettings:
    """Every number of a demo. :data:`FULL` and :data:`QUICK` are the two presets."""
    world_size: str                      # "full" (>= 2,000 items per benchmark) | "tiny"
    pretrain_recipe: str                 # a recipe shipped with hif8qat.world
    pretrain_overrides: dict             # TrainConfig overrides of that recipe
    finetune_steps: int
    finetune_batch_size: int
    finetune_seq_len: int
    bf16_warmup_steps: int               # R1-R3: steps in BF16 with the scalers calibrating
    lr_low: float                        # the final recipe's lr (paper: 1e-5)
    lr_high: float                       # the aggressive lr (paper: 1e-4)
    lr_warmup_steps: int                 # linear LR warm-up of the one schedule
    window: int = 64                     # DTS amax-history length (max algorithm)
    calibrate_batches: int = 8           # PTQ calibration batches of pretraining text
    eval_limit: Optional[int] = None     # items per (sub)task; None = all
    eval_batch_size: int = 32
    num_fewshot: int = 0

    def describe(self) -> str:
        return (f"world {self.world_size}; fine-tuning {self.finetune_steps} steps x "
                f"{self.finetune_batch_size} x {self.finetune_seq_len} tokens, cosine LR "
                f"(linear warm-up {self.lr_warmup_steps}), low lr {self.lr_low:g}, "
                f"aggressive lr {self.lr_high:g}; BF16 warm-up {self.bf16_warmup_steps} "
                f"steps; DTS max over {self.window} (R2: most_recent); eval "
                f"{'all' if self.eval_limit is None else self.eval_limit} items per "
                f"(sub)task, {self.num_fewshot}-shot")


# The small model of the full demo: byte-level Llama, 2 layers, hidden 96 (~0.25M
# parameters), pretrained 800 steps x 8 x 256 bytes with the world's recipe otherwise;
# see the module docstring for how the paper's fine-tuning schedule was scaled.
FULL = DemoSettings(
    world_size="full", pretrain_recipe="pretrain",
    pretrain_overrides={
        "steps": 800, "batch_size": 8, "seq_len": 256, "lr": 3e-3, "min_lr": 3e-4,
        "lr_warmup_steps": 40, "weight_decay": 0.01, "precision": "bf16",
        "model_config": {"vocab_size": 256, "hidden_size": 96, "intermediate_size": 288,
                         "num_hidden_layers": 2, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "max_position_embeddings": 320,
                         "tie_word_embeddings": True, "attention_bias": True}},
    finetune_steps=150, finetune_batch_size=8, finetune_seq_len=128,
    bf16_warmup_steps=20, lr_low=1e-5, lr_high=1e-4, lr_warmup_steps=10)

# --quick: the same pipeline on the tiny world and a tiny model, for tests.
QUICK = DemoSettings(
    world_size="tiny", pretrain_recipe="pretrain",
    pretrain_overrides={
        "steps": 60, "batch_size": 8, "seq_len": 128, "lr": 5e-3, "min_lr": 5e-4,
        "lr_warmup_steps": 5, "weight_decay": 0.0, "precision": "bf16",
        "model_config": {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64,
                         "num_hidden_layers": 2, "num_attention_heads": 2,
                         "num_key_value_heads": 1, "max_position_embeddings": 320,
                         "tie_word_embeddings": True, "attention_bias": True}},
    finetune_steps=16, finetune_batch_size=4, finetune_seq_len=64,
    bf16_warmup_steps=4, lr_low=1e-3, lr_high=1e-2, lr_warmup_steps=2, window=64,
    calibrate_batches=2, eval_limit=24, eval_batch_size=64)


@dataclass(frozen=True)
class RunSpec:
    name: str
    label: str
    description: str
    overrides: dict = field(default_factory=dict)
    reference: Optional[str] = None


def run_specs(s: DemoSettings) -> list:
    """The five matched fine-tuning runs (one knob from R1 each)."""
    hif8 = {"precision": "hif8", "bf16_warmup_steps": s.bf16_warmup_steps,
            "activation.algo": "max", "activation.window": s.window,
            "weight.algo": "max", "weight.window": s.window}
    return [
        RunSpec("R0-bf16", "R0 BF16 baseline",
                f"bf16 throughout, lr {s.lr_low:g} (R1's schedule)",
                {"precision": "bf16", "lr": s.lr_low}),
        RunSpec("R1-final", "R1 final recipe",
                f"hif8, DTS max/{s.window}, {s.bf16_warmup_steps}-step BF16 warm-up, "
                f"lr {s.lr_low:g}", dict(hif8, lr=s.lr_low)),
        RunSpec("R2-most-recent", "R2 most_recent",
                "R1 with most_recent scaling", dict(hif8, lr=s.lr_low, **{
                    "activation.algo": "most_recent", "weight.algo": "most_recent"})),
        RunSpec("R3-aggressive", "R3 aggressive lr",
                f"R1 with lr {s.lr_high:g}", dict(hif8, lr=s.lr_high)),
        RunSpec("R4-bf16-aggressive", "R4 BF16 aggressive lr",
                f"R0 with lr {s.lr_high:g} (forgetting without quantization)",
                {"precision": "bf16", "lr": s.lr_high}, reference="R0-bf16"),
    ]


# --------------------------------------------------------------------------------------
# the pretrained model (cached)

def _cache_root(cache_dir: Optional[str]) -> str:
    if cache_dir:
        return cache_dir
    from hif8qat.world.tasks import cache_root
    return cache_root()


def _pretrain_config(s: DemoSettings, world_seed: int):
    from hif8qat.world import pretrain_config
    return pretrain_config(world_seed, s.world_size, recipe=s.pretrain_recipe,
                           overrides=dict(s.pretrain_overrides) or None)


def world_fingerprint(world_seed: int, size: str) -> str:
    """SHA-256 over the world's manifest of file hashes: a cached model or evaluation
    is reused only for the very same corpora and benchmark files."""
    from hif8qat.world import world_dir
    with open(os.path.join(world_dir(world_seed, size), "manifest.json"), encoding="utf-8") as fh:
        files = json.load(fh).get("files", {})
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_cache_key(s: DemoSettings, world_seed: int) -> str:
    """Hash of what the pretrained model depends on: the resolved recipe (paths and
    reporting fields aside), the world seed/size/generator version, the package version."""
    import hif8qat
    from hif8qat.world import GENERATOR_VERSION

    cfg = _pretrain_config(s, world_seed).to_dict()
    for k in ("data", "run_dir", "progress", "checkpoint_every", "keep_checkpoints",
              "eval_every"):
        cfg.pop(k, None)
    blob = json.dumps({"recipe": cfg, "world_seed": world_seed, "world_size": s.world_size,
                       "generator": GENERATOR_VERSION, "version": hif8qat.__version__,
                       "world": world_fingerprint(world_seed, s.world_size),
                       "cache_format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrained_model(s: DemoSettings, world_seed: int = 0, cache_dir: Optional[str] = None,
                     progress: bool = True, log=print) -> dict:
    """The pretrained model's directory, trained once per machine and cached.

    Returns ``{"dir", "model_dir", "cached", "wall_time_s", "final_loss"}``; ``dir``
    also holds the pretraining run (config, log, summary) and cached evaluations.
    """
    from hif8qat.model import load_model
    from hif8qat.train import Trainer

    key = pretrain_cache_key(s, world_seed)
    base = os.path.join(_cache_root(cache_dir), "pretrained")
    final = os.path.join(base, f"{s.world_size}-seed{world_seed}-{key}")
    model_dir = os.path.join(final, "model")
    info_path = os.path.join(final, "pretrain.json")
    if os.path.isfile(info_path) and os.path.isfile(os.path.join(model_dir, "config.json")):
        with open(info_path, encoding="utf-8") as fh:
            info = json.load(fh)
        return dict(info, dir=final, model_dir=model_dir, cached=True)
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".pretrain-", dir=base)
    try:
        cfg = _pretrain_config(s, world_seed).with_overrides(
            {"run_dir": os.path.join(tmp, "run"), "progress": progress,
             "checkpoint_every": 0, "keep_checkpoints": 1})
        log(f"  pretraining: {cfg.steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens, "
            f"lr {cfg.lr:g}, {cfg.precision} (cached afterwards in {final})")
        trainer = Trainer(cfg)
        trainer.run()
        summary = trainer.summary()
        trainer.model.save(os.path.join(tmp, "model"))
        info = {"key": key, "steps": cfg.steps, "wall_time_s": summary["wall_time_s"],
                "final_loss": summary["final_loss"], "world_seed": world_seed,
                "world_size": s.world_size}
        with open(os.path.join(tmp, "pretrain.json"), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=1)
        if os.path.exists(final):            # damaged or half-written: replace it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:                      # another process cached it first
            if not os.path.isfile(info_path):
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    load_model(model_dir)                    # fail here, not in five runs, if unreadable
    return dict(info, dir=final, model_dir=model_dir, cached=False)


# --------------------------------------------------------------------------------------
# the demo

def _tasks(s: DemoSettings, world_seed: int) -> dict:
    from hif8qat.world.tasks import task_specs
    specs = task_specs(world_seed, s.world_size)
    return {k: specs[k] for k in TASK_KEYS}


def _eval_kwargs(s: DemoSettings) -> dict:
    return {"num_fewshot": s.num_fewshot, "limit": s.eval_limit,
            "batch_size": s.eval_batch_size}


def _write_json(path, obj):
    rep._atomic_write(path, json.dumps(obj, indent=1) + "\n")


def _post_training_evals(s, world_seed, pre, out_dir, progress, log, only=None):
    """P0 (pretrained, BF16) and P1 (calibrated, HiF8, no training), cached with the
    pretrained model per evaluation setting."""
    from hif8qat.eval import ByteTokenizer
    from hif8qat.model import load_model
    from hif8qat.ptq import calibrate, text_batches

    tasks = _tasks(s, world_seed)
    ekey = hashlib.sha256(json.dumps({"eval": _eval_kwargs(s), "tasks": sorted(tasks),
                                      "world": world_fingerprint(world_seed, s.world_size),
                                      "window": s.window,
                                      "calibrate": s.calibrate_batches,
                                      "seq_len": s.finetune_seq_len},
                                     sort_keys=True).encode()).hexdigest()[:12]
    tok = ByteTokenizer()
    entries = [("P0-pretrained-bf16", "P0 pretrained, BF16", "the pretrained model in BF16",
                None),
               ("P1-ptq-hif8", "P1 post-training HiF8",
                f"pretrained model, scalers calibrated on {s.calibrate_batches} batches of "
                f"pretraining text (max/{s.window}), HiF8 W8A8 without training",
                "P0-pretrained-bf16")]
    for name, label, desc, ref in entries:
        if only is not None and name not in only:
            continue
        run_dir = os.path.join(out_dir, name)
        os.makedirs(run_dir, exist_ok=True)
        cached = os.path.join(pre["dir"], "evals", f"{name}-{ekey}.json")
        meta = {"name": name, "label": label, "description": desc, "reference": ref,
                "model_dir": pre["model_dir"]}
        _write_json(os.path.join(run_dir, rep.RUN_META_FILE), meta)
        if os.path.isfile(cached):
            shutil.copyfile(cached, os.path.join(run_dir, rep.EVAL_FILE))
            log(f"  {label}: cached evaluation")
            continue
        if name.startswith("P0"):
            model = load_model(pre["model_dir"], precision="bf16")
        else:
            model = load_model(pre["model_dir"], precision="bf16")
            recipe = {"algo": "max", "window": s.window}
            model.configure_scalers(weight=recipe, activation=recipe)
            from hif8qat.world import world_dir
            with open(os.path.join(world_dir(world_seed, s.world_size), "pretrain.txt"),
                      encoding="utf-8") as fh:
                text = fh.read()
            calibrate(model, text_batches(text, tok, seq_len=s.finetune_seq_len,
                                          batch_size=8, max_batches=s.calibrate_batches),
                      steps=s.calibrate_batches)
            model.set_precision("hif8")
        log(f"  {label}: evaluating")
        rep.evaluate_model(model, tok, tasks, os.path.join(run_dir, rep.EVAL_FILE),
                           progress=progress, desc=name, extra={"model_dir": pre["model_dir"]},
                           **_eval_kwargs(s))
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        shutil.copyfile(os.path.join(run_dir, rep.EVAL_FILE), cached)


def finetune_config(s: DemoSettings, spec: RunSpec, model_dir: str, data: str, run_dir: str,
                    seed: int = 0, progress: bool = True):
    """The TrainConfig of one demo run."""
    from hif8qat.train import TrainConfig

    base = TrainConfig(model_dir=model_dir, data=data, run_dir=run_dir, seed=seed,
                       steps=s.finetune_steps, batch_size=s.finetune_batch_size,
                       seq_len=s.finetune_seq_len, lr=s.lr_low, lr_schedule="cosine",
                       lr_warmup_steps=s.lr_warmup_steps, min_lr=0.0, weight_decay=0.0,
                       grad_clip=1.0, precision="bf16", bf16_warmup_steps=0,
                       checkpoint_every=0, keep_checkpoints=1, progress=progress)
    overrides = dict(spec.overrides)
    if overrides.get("precision") == "bf16":
        overrides.setdefault("bf16_warmup_steps", s.bf16_warmup_steps)  # same config
    return base.with_overrides(overrides)


def run_is_complete(run_dir, steps, need_eval=True) -> bool:
    """True when ``run_dir`` holds a run trained to ``steps`` (and evaluated)."""
    try:
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as fh:
            summary = json.load(fh)
    except (OSError, ValueError):
        return False
    return summary.get("steps") == steps and not summary.get("stopped") and \
        (not need_eval or os.path.isfile(os.path.join(run_dir, rep.EVAL_FILE)))


def train_and_evaluate(config, tasks, eval_kwargs, *, progress=True, log=print,
                       meta=None) -> tuple:
    """Run one training config to the end (resuming a run cut short, skipping a finished
    one) and, when ``tasks`` is not None, evaluate its final model into ``eval.json``.
    Returns ``(run_dir, did_work)``."""
    from hif8qat.train import Trainer
    from hif8qat.train import checkpoint as ckpt

    run_dir = os.path.abspath(config.run_dir)
    if meta is not None:
        os.makedirs(run_dir, exist_ok=True)
        _write_json(os.path.join(run_dir, rep.RUN_META_FILE), meta)
    if run_is_complete(run_dir, config.steps, need_eval=tasks is not None):
        _check_same_config(run_dir, config)
        log(f"  {os.path.basename(run_dir)}: done already, skipped")
        return run_dir, False
    trainer, ran = None, False
    has_ckpt = ckpt.read_latest_name(os.path.join(run_dir, "checkpoints")) if \
        os.path.isdir(os.path.join(run_dir, "checkpoints")) else None
    if has_ckpt:
        trainer = Trainer.resume(run_dir, config)
        if not trainer.done:
            log(f"  {os.path.basename(run_dir)}: resuming at step {trainer.step_index}")
            trainer.run()
            ran = True
        elif not os.path.isfile(os.path.join(run_dir, "summary.json")):
            trainer.write_summary()
    else:
        # a run cut before its first checkpoint left only a partial log: start it over
        for stale in ("log.jsonl", "summary.json", rep.EVAL_FILE):
            p = os.path.join(run_dir, stale)
            if os.path.exists(p):
                os.remove(p)
        if os.path.isdir(os.path.join(run_dir, "checkpoints")):
            shutil.rmtree(os.path.join(run_dir, "checkpoints"))
        trainer = Trainer(config)
        trainer.run()
        ran = True
    # the model in memory is the run's final state only if this call trained it (a
    # resumed, finished run has not entered its phase): otherwise load it from disk
    if tasks is not None:
        rep.evaluate_run(run_dir, tasks, model=trainer.model if ran else None,
                         progress=progress, **eval_kwargs)
    return run_dir, True


def _check_same_config(run_dir, config):
    from hif8qat.train import TrainConfig
    saved = TrainConfig.from_toml(os.path.join(run_dir, "config.toml"))
    diff = [d for d in saved.differences(config) if d not in ("progress",)]
    if diff:
        raise ValueError(f"{run_dir} holds a finished run with another config (differs in "
                         f"{', '.join(diff)}); choose another output folder")


def run_demo(out_dir: str = "runs/demo", quick: bool = False, seed: int = 0,
             world_seed: int = 0, cache_dir: Optional[str] = None, progress: bool = True,
             plots: bool = True, settings: Optional[DemoSettings] = None,
             only=None, jobs=1, log=print) -> "rep.ReportTable":
    """Run the demo (see the module docstring) into ``out_dir``; return the table.

    ``quick``: the tiny world and model (seconds). ``seed``: the fine-tuning runs' seed
    (model init of the pretraining is the recipe's). ``settings`` replaces the preset.
    Runs already finished in ``out_dir`` are skipped, so an interrupted demo resumes.
    ``only``: names (or name prefixes such as "R1", "P0") of the stages to run; the
    table then shows what ``out_dir`` holds (e.g. stages run in separate processes).
    ``jobs``: stages run at once, each in its own process with an equal share of the
    threads (``"auto"``: one per core). The results are the same for any ``jobs``:
    every stage's numerics are independent of its thread count.

    Example::

        table = run_demo("runs/demo-quick", quick=True)
        table["R1-final"]["drop_world_knowledge"]
    """
    from hif8qat.world import world_dir

    s = settings or (QUICK if quick else FULL)
    if not isinstance(seed, int) or seed < 0 or not isinstance(world_seed, int) or world_seed < 0:
        raise ValueError(f"seed and world_seed must be non-negative integers, got {seed!r}, "
                         f"{world_seed!r}")
    t_start = time.perf_counter()
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} exists and is not a folder")
    os.makedirs(out_dir, exist_ok=True)
    specs = run_specs(s)
    names = ["P0-pretrained-bf16", "P1-ptq-hif8"] + [r.name for r in specs]
    if only is not None:
        if isinstance(only, str):
            only = [o for o in only.split(",") if o]
        chosen = {n for n in names for o in only if n == o or n.split("-")[0] == o}
        unknown = [o for o in only if not any(n == o or n.split("-")[0] == o for n in names)]
        if unknown:
            raise ValueError(f"unknown demo stage(s) {', '.join(unknown)}; stages are "
                             f"{', '.join(names)} (or P0, P1, R0..R4)")
        only = chosen
    log(f"hif8qat demo{' --quick' if quick else ''}: {s.describe()}")
    log(f"  output: {out_dir}")
    _write_json(os.path.join(out_dir, rep.EXPERIMENT_FILE),
                {"kind": "demo", "quick": quick, "seed": seed, "world_seed": world_seed,
                 "settings": dataclasses.asdict(s), "runs": names})

    log("[1/4] world and pretrained model")
    world_dir(world_seed, s.world_size)
    t0 = time.perf_counter()
    pre = pretrained_model(s, world_seed, cache_dir, progress, log)
    log(f"  pretrained model: {pre['model_dir']} ({'cached' if pre['cached'] else 'trained'}"
        f", final loss {pre['final_loss']:.4f}, {time.perf_counter() - t0:.0f} s)")

    stages = [n for n in names if only is None or n in only]
    jobs = _resolve_jobs(jobs, len(stages))
    if jobs > 1:
        log(f"[2-3/4] post-training evaluation and five matched fine-tuning runs, "
            f"{jobs} stages at a time")
        _run_stages_parallel(s, stages, out_dir, seed, world_seed, pre, jobs, progress, log)
    else:
        log("[2/4] post-training evaluation: BF16 and calibrated HiF8 without training")
        for name in stages:
            if name[0] == "P":
                _run_stage(s, name, out_dir, seed, world_seed, pre, progress, log)
        log("[3/4] five matched fine-tuning runs on the fine-tuning corpus")
        for name in stages:
            if name[0] == "R":
                _run_stage(s, name, out_dir, seed, world_seed, pre, progress, log)

    log("[4/4] comparison table")
    wall = time.perf_counter() - t_start
    table = rep.compare(out_dir, title=f"hif8qat demo{' --quick' if quick else ''} "
                                       f"(world seed {world_seed}, seed {seed})")
    table.notes.append(f"settings: {s.describe()}")
    table.notes.append(f"pretrained model: {pre['steps']} steps, final loss "
                       f"{pre['final_loss']:.4f}, {pre['wall_time_s']:.0f} s"
                       f"{' (cached)' if pre['cached'] else ''}; demo wall time {wall:.0f} s")
    table.save(out_dir)
    write_run_reports(table)
    if plots:
        from . import plots as pl
        pl.plot_table(table, out_dir, log=log)
    table.wall_time_s = wall
    table.out_dir = out_dir
    return table


def _run_stage(s, name, out_dir, seed, world_seed, pre, progress, log):
    """One stage: P0/P1 (post-training evaluations) or a fine-tuning run R0..R4."""
    from hif8qat.world import finetune_data

    if name.startswith("P"):
        _post_training_evals(s, world_seed, pre, out_dir, progress, log, only={name})
        return
    spec = next(r for r in run_specs(s) if r.name == name)
    cfg = finetune_config(s, spec, pre["model_dir"], finetune_data(world_seed, s.world_size),
                          os.path.join(out_dir, spec.name), seed=seed, progress=progress)
    log(f"  {spec.label}: {spec.description}")
    train_and_evaluate(cfg, _tasks(s, world_seed), _eval_kwargs(s), progress=progress,
                       log=log, meta={"name": spec.name, "label": spec.label,
                                      "description": spec.description,
                                      **({"reference": spec.reference}
                                         if spec.reference else {})})


def _resolve_jobs(jobs, n_stages) -> int:
    """``jobs`` as a count: "auto" is one stage per core (threads split evenly), which
    beats threading inside one stage for a model this small."""
    if jobs == "auto":
        jobs = os.cpu_count() or 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer or 'auto', got {jobs!r}")
    return max(1, min(jobs, n_stages))


def _stage_worker(args):
    """Child process: run one stage with ``threads`` threads, return its log lines."""
    s, name, out_dir, seed, world_seed, pre, threads = args
    import hif8qat as hq
    hq.set_num_threads(threads)
    lines = []
    t0 = time.perf_counter()
    _run_stage(s, name, out_dir, seed, world_seed, pre, False, lines.append)
    lines.append(f"  {name}: finished in {time.perf_counter() - t0:.0f} s")
    return lines


def _run_stages_parallel(s, stages, out_dir, seed, world_seed, pre, jobs, progress, log):
    """Stages in ``jobs`` spawned processes (not forked: the parent's OpenMP runtime is
    not fork-safe), longest first: the fine-tuning runs, then the evaluations."""
    import concurrent.futures as cf
    import multiprocessing as mp

    from hif8qat.format import get_num_threads

    threads = max(1, get_num_threads() // jobs)
    order = sorted(stages, key=lambda n: (n[0] != "R", n))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(order), desc="stages", unit="stage")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_stage_worker, (s, n, out_dir, seed, world_seed, pre, threads)):
                   n for n in order}
        try:
            for fut in cf.as_completed(futures):
                lines = fut.result()
                if bar is not None:
                    bar.clear()
                for line in lines:
                    log(line)
                if bar is not None:
                    bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()


def write_run_reports(table) -> None:
    """Each run's ``report.md``: its row and its reference's, with the table's notes."""
    for row in table.rows:
        rows = [row]
        if row.get("reference"):
            rows = [table[row["reference"]], row]
        sub = rep.ReportTable(rows, table.tasks, title=row["label"],
                              notes=[row.get("description", "")] + table.notes)
        rep._atomic_write(os.path.join(row["path"], "report.md"), sub.to_markdown() + "\n")


def main_demo(argv=None) -> int:
    """``hif8qat demo [--quick] [--out DIR] [--seed N] [--world-seed N] [--cache-dir DIR]
    [--no-progress] [--no-plots]`` -> exit status (2 on bad arguments)."""
    parser = argparse.ArgumentParser(
        prog="hif8qat demo",
        description="The paper in miniature on the embedded world: pretrain (cached), "
                    "post-training HiF8, five matched fine-tuning runs, comparison table.")
    parser.add_argument("--quick", action="store_true",
                        help="tiny world and model: the same pipeline in seconds")
    parser.add_argument("--out", default=None,
                        help="output folder (default runs/demo, runs/demo-quick)")
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed (default 0)")
    parser.add_argument("--world-seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache of worlds and pretrained models (default $HIF8QAT_CACHE "
                             "or ~/.cache/hif8qat)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-plots", action="store_true", help="no PNG plots")
    parser.add_argument("--jobs", default=None, metavar="N",
                        help="stages run at once, one process each (default: one per core "
                             "for the full demo, 1 with --quick); results do not depend on it")
    parser.add_argument("--only", default=None, metavar="STAGES",
                        help="comma-separated stages to run (P0,P1,R0..R4); the table "
                             "shows every stage the output folder holds")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.seed < 0 or args.world_seed < 0:
        return rep._usage_error("demo", "--seed and --world-seed must be >= 0")
    jobs = args.jobs or ("1" if args.quick else "auto")
    if jobs != "auto":
        if not jobs.isdigit() or int(jobs) < 1:
            return rep._usage_error("demo", f"--jobs must be a positive integer or 'auto', "
                                            f"got {args.jobs!r}")
        jobs = int(jobs)
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    try:
        if args.cache_dir:
            os.environ["HIF8QAT_CACHE"] = args.cache_dir   # the world's cache too
        table = run_demo(out, quick=args.quick, seed=args.seed, world_seed=args.world_seed,
                         cache_dir=args.cache_dir, progress=not args.no_progress,
                         plots=not args.no_plots, only=args.only, jobs=jobs)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        return rep._usage_error("demo", e)
    print()
    print(table.to_markdown())
    print(f"\nwall time {table.wall_time_s:.0f} s; report: "
          f"{os.path.join(table.out_dir, 'report.md')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_demo())
