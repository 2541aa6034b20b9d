"""The comparison table of training runs: accuracy per benchmark, the drop against the
matched BF16 run (points, a paired bootstrap interval over items, relative drop), the
training-loss APE over the QAT phase and over all steps, saturation events, clipped
fraction and wall time -- recomputed from what each run directory holds.

A run directory (see ``hif8qat/train/trainer.py``) holds ``config.toml``, ``log.jsonl``
and ``summary.json``; this module adds ``eval.json`` (every benchmark's metrics and its
per-item scores, so two runs can be compared item by item) and, optionally,
``run.json`` (``name``, ``label``, ``description``, ``reference``: the basename of the
run to compare against). A directory with only ``eval.json`` (and ``run.json``) is an
evaluation-only entry, e.g. the pretrained model in BF16 and after post-training HiF8
calibration in the demo.

Metrics (paper.md):

* ``ape_qat`` = mean over the QAT-phase steps of |L_qat(t) - L_ref(t)| / L_ref(t), in
  percent, against the matched BF16 run's loss at the same step; ``ape_all`` the same
  over every step both logs hold (the BF16 warm-up included).
* ``drop_<task>`` = acc_ref - acc_run in points (positive = accuracy lost), with
  ``drop_low_<task>``/``drop_high_<task>`` a 95 % paired bootstrap interval over items
  (:func:`hif8qat.eval.stats.paired_bootstrap`, fixed seed, so a table is reproducible)
  and ``rel_drop_<task>`` = drop / acc_ref in percent.
* ``saturation_events`` = sum over QAT steps of the scalers that clipped an element in
  that step (as the trainer counts them); ``saturated_steps`` = QAT steps with any;
  ``clipped_fraction`` = mean over QAT steps and scalers of the step's clipped fraction
  (percent), ``max_clipped_fraction`` the largest single scaler-step value.

The matched BF16 run of a QAT run is, unless ``run.json`` names one, the BF16 run among
those compared whose config equals the QAT run's in everything a BF16 run uses (the
precision, the BF16 warm-up and the scaling recipes aside).

Example::

    >>> import hif8qat.report as hr                                  # doctest: +SKIP
    >>> table = hr.compare(["runs/demo"])                           # doctest: +SKIP
    >>> table.rows[1]["drop_world_knowledge"], table.to_pandas()     # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..train.checkpoint import atomic_write_text

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as _toml

EVAL_FILE = "eval.json"
RUN_META_FILE = "run.json"
EXPERIMENT_FILE = "experiment.json"
EVAL_FORMAT = "hif8qat-eval/1"

# fields a BF16 run does not use: two runs that differ only here are matched
_MATCH_IGNORED = ("precision", "bf16_warmup_steps", "weight", "activation", "grad",
                  "quantize_grads", "grad_rounding", "run_dir", "progress",
                  "checkpoint_every", "keep_checkpoints", "eval_every")

__all__ = ["ReportTable", "RunData", "compare", "load_run", "load_eval", "save_eval",
           "evaluate_model", "evaluate_run", "expand_run_dirs", "loss_ape", "main_report"]


# --------------------------------------------------------------------------------------
# eval.json: metrics plus per-item scores

def save_eval(result, path: str, *, wall_time_s: Optional[float] = None,
              extra: Optional[dict] = None) -> dict:
    """Write an :class:`~hif8qat.eval.evaluator.EvalResult` as ``eval.json`` with every
    item's source, gold, prediction, correctness and log-likelihoods; return the dict.

    Example::

        res = hq.evaluate(model, tok, ["world_reasoning"])
        save_eval(res, "runs/r1/eval.json", wall_time_s=12.5)
    """
    tasks = {}
    for key, metrics in dict.items(result):
        records = result.items[key]
        tasks[key] = dict(_plain(metrics), items={
            "source": [r.source for r in records],
            "gold": [int(r.gold) for r in records],
            "pred": [int(r.pred) for r in records],
            "correct": [int(bool(r.correct)) for r in records],
            "correct_norm": [int(bool(r.correct_norm)) for r in records],
            "lls": [[_finite_or_none(x) for x in r.lls] for r in records],
        })
        if getattr(result, "subtasks", None) and key in result.subtasks:
            tasks[key]["subtasks"] = _plain(result.subtasks[key])
    out = {"format": EVAL_FORMAT, "config": _plain(dict(result.config)),
           "wall_time_s": wall_time_s, "tasks": tasks}
    if extra:
        out.update(_plain(extra))
    _atomic_write(path, json.dumps(out) + "\n")
    return out


def load_eval(path: str) -> dict:
    """Read an ``eval.json`` (a file, or a run directory holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, EVAL_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"no evaluation results at {path}") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != EVAL_FORMAT or "tasks" not in d:
        raise ValueError(f"{path}: not a hif8qat eval file (format {EVAL_FORMAT!r})")
    return d


def evaluate_model(model, tokenizer, tasks, out_path: Optional[str] = None, *,
                   num_fewshot: int = 0, limit: Optional[int] = None, batch_size: int = 32,
                   progress: bool = False, desc: str = "eval", extra: Optional[dict] = None):
    """Evaluate ``model`` (in its current precision) on ``tasks`` -- a list of names or a
    dict ``{key: spec}`` -- and, with ``out_path``, save ``eval.json``. Returns the
    saved dict (``{"tasks": {key: metrics + items}, "wall_time_s", ...}``).
    ``progress`` shows a bar of model rows run."""
    from hif8qat.eval import evaluate

    bar = None
    target = model
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(desc=desc, unit="row", dynamic_ncols=True)
            target = _CountingModel(model, bar)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
    t0 = time.perf_counter()
    try:
        res = evaluate(target, tokenizer, tasks, num_fewshot=num_fewshot, limit=limit,
                       batch_size=batch_size)
    finally:
        if bar is not None:
            bar.close()
    dt = time.perf_counter() - t0
    meta = {"precision": getattr(model, "precision", None)}
    meta.update(extra or {})
    if out_path is None:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            return save_eval(res, os.path.join(tmp, EVAL_FILE), wall_time_s=dt, extra=meta)
    return save_eval(res, out_path, wall_time_s=dt, extra=meta)


class _CountingModel:
    """Delegates to a model and advances a progress bar by the rows of each forward."""

    def __init__(self, model, bar):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_bar", bar)

    def forward(self, tokens, targets=None):
        out = self._model.forward(tokens, targets)
        self._bar.update(int(np.shape(tokens)[0]))
        return out

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __setattr__(self, name, value):
        setattr(self._model, name, value)


def load_trained_model(run_dir: str):
    """The final model of a training run directory, as it ended: weights from the latest
    checkpoint, the run's precision and (hif8 runs) its scaler states. Returns
    ``(model, config)``."""
    from hif8qat.model import load_model
    from hif8qat.train import TrainConfig
    from hif8qat.train import checkpoint as ckpt

    path = ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    state = ckpt.load_training_checkpoint(path)
    config = TrainConfig.from_dict(_toml.loads(state["config_toml"]),
                                   source=os.path.join(path, "config.toml"))
    model = load_model(state["model_dir"])
    if config.precision == "hif8":
        from hif8qat.train.trainer import configure_model_scalers
        configure_model_scalers(model, config)     # the run's group, grad scalers included
        if state["scalers"] is None:
            raise ValueError(f"{path}: a hif8 run's checkpoint without scaler states")
        model.scalers.load_state_dict(state["scalers"])
        phase = config.phase_at(max(0, state["step"] - 1))
        model.set_precision("bf16" if phase == "bf16_warmup" else "hif8")
    else:
        model.set_precision(config.precision)
    model.calibrating = False
    return model, config


def evaluate_run(run_dir: str, tasks, *, num_fewshot: int = 0, limit: Optional[int] = None,
                 batch_size: int = 32, progress: bool = False, model=None) -> dict:
    """Evaluate a finished training run's final model on ``tasks`` and write
    ``RUN_DIR/eval.json``. ``model``: the run's model already in memory (e.g.
    ``trainer.model`` right after ``trainer.run()``), else it is loaded from the latest
    checkpoint."""
    from hif8qat.eval import load_tokenizer

    if model is None:
        model, _ = load_trained_model(run_dir)
    tok_dir = _model_dir_of(run_dir)
    tokenizer = load_tokenizer(tok_dir) if tok_dir else _byte_tokenizer()
    return evaluate_model(model, tokenizer, tasks, os.path.join(run_dir, EVAL_FILE),
                          num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                          progress=progress, desc=os.path.basename(run_dir) + " eval",
                          extra={"run_dir": os.path.abspath(run_dir)})


def _model_dir_of(run_dir):
    try:
        from hif8qat.train import checkpoint as ckpt
        return os.path.join(ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints")),
                            "model")
    except Exception:  # noqa: BLE001 - any unreadable checkpoint: fall back to bytes
        return None


def _byte_tokenizer():
    from hif8qat.eval import ByteTokenizer
    return ByteTokenizer()


# --------------------------------------------------------------------------------------
# run directories

@dataclass
class RunData:
    """What a run directory holds, read once."""
    path: str
    name: str
    config: Optional[dict] = None         # config.toml as a dict (training runs)
    log: list = field(default_factory=list)   # log.jsonl records
    summary: Optional[dict] = None        # summary.json
    eval: Optional[dict] = None           # eval.json
    meta: dict = field(default_factory=dict)  # run.json

    @property
    def precision(self) -> Optional[str]:
        if self.config is not None:
            return self.config.get("precision")
        if self.eval is not None:
            return self.eval.get("precision") or self.eval.get("config", {}).get("precision")
        return None

    @property
    def label(self) -> str:
        return self.meta.get("label") or self.name


def is_run_dir(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f))
               for f in ("log.jsonl", EVAL_FILE, "config.toml"))


def expand_run_dirs(paths) -> list:
    """Run directories from a list of paths: a run directory stays; a folder of runs
    (an experiment: the demo's or an ablation's output) becomes its runs, in the order
    its ``experiment.json`` lists them (else sorted)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.isdir(p):
            raise FileNotFoundError(f"not a directory: {p}")
        if is_run_dir(p):
            out.append(p)
            continue
        exp = os.path.join(p, EXPERIMENT_FILE)
        names = None
        if os.path.isfile(exp):
            try:
                with open(exp, encoding="utf-8") as fh:
                    names = json.load(fh).get("runs")
            except ValueError as e:
                raise ValueError(f"{exp}: not valid JSON: {e}") from None
        if not names:
            names = sorted(n for n in os.listdir(p) if os.path.isdir(os.path.join(p, n)))
        runs = [os.path.join(p, n) for n in names if is_run_dir(os.path.join(p, n))]
        if not runs:
            raise ValueError(f"{p} is neither a run directory (config.toml, log.jsonl or "
                             f"eval.json) nor a folder of them")
        out += runs
    return out


def read_log(path: str) -> list:
    """The JSON records of a log.jsonl (a line cut short by a kill ends the log)."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                break
            if isinstance(rec, dict):
                records.append(rec)
    return records


def load_run(path: str) -> RunData:
    """Read a run directory's config, log, summary, eval results and run.json."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"not a run directory: {path}")
    run = RunData(path=os.path.abspath(path), name=os.path.basename(os.path.normpath(path)))
    cfg = os.path.join(path, "config.toml")
    if os.path.isfile(cfg):
        try:
            with open(cfg, "rb") as fh:
                run.config = _toml.load(fh)
        except _toml.TOMLDecodeError as e:
            raise ValueError(f"{cfg}: not valid TOML: {e}") from None
    log = os.path.join(path, "log.jsonl")
    if os.path.isfile(log):
        run.log = read_log(log)
    for attr, fname in (("summary", "summary.json"), ("meta", RUN_META_FILE)):
        fp = os.path.join(path, fname)
        if os.path.isfile(fp):
            try:
                with open(fp, encoding="utf-8") as fh:
                    setattr(run, attr, json.load(fh))
            except ValueError as e:
                raise ValueError(f"{fp}: not valid JSON: {e}") from None
    if os.path.isfile(os.path.join(path, EVAL_FILE)):
        run.eval = load_eval(path)
    return run


# --------------------------------------------------------------------------------------
# metrics

def loss_ape(run_log, ref_log, phase: Optional[str] = "qat") -> Optional[float]:
    """Mean |L_run(t) - L_ref(t)| / L_ref(t) in percent over the steps both logs hold
    (only the run's steps in ``phase`` when given). None when there are none."""
    ref = {r["step"]: r["loss"] for r in ref_log
           if isinstance(r.get("loss"), (int, float)) and "step" in r}
    terms = []
    for r in run_log:
        if phase is not None and r.get("phase") != phase:
            continue
        s, loss = r.get("step"), r.get("loss")
        if s in ref and isinstance(loss, (int, float)) and ref[s] != 0:
            terms.append(abs(loss - ref[s]) / abs(ref[s]))
    return 100.0 * float(np.mean(terms)) if terms else None


def saturation_stats(log: list) -> dict:
    """Saturation events, saturated steps and clipped fractions of the QAT steps."""
    qat = [r for r in log if r.get("phase") == "qat"]
    events = sum(int(r.get("saturated") or 0) for r in qat)
    steps = sum(1 for r in qat if (r.get("saturated") or 0) > 0)
    fracs = [s.get("clipped_fraction", 0.0) for r in qat
             for s in (r.get("scalers") or {}).values()]
    fracs = [f for f in fracs if isinstance(f, (int, float)) and math.isfinite(f)]
    return {"saturation_events": events, "saturated_steps": steps, "qat_steps": len(qat),
            "clipped_fraction": 100.0 * float(np.mean(fracs)) if fracs else 0.0,
            "max_clipped_fraction": 100.0 * float(np.max(fracs)) if fracs else 0.0}


def _match_key(config: dict) -> str:
    d = {k: v for k, v in config.items() if k not in _MATCH_IGNORED}
    return json.dumps(d, sort_keys=True, default=str)


def _find_reference(run: RunData, runs: list) -> Optional[RunData]:
    ref_name = run.meta.get("reference")
    if ref_name:
        for other in runs:
            if other.name == ref_name:
                return other
        return None
    if run.precision != "hif8" or run.config is None:
        return None
    key = _match_key(run.config)
    for other in runs:
        if other is not run and other.config is not None and other.precision == "bf16" \
                and _match_key(other.config) == key:
            return other
    return None


def _correct(task_entry):
    return np.asarray(task_entry["items"]["correct"], dtype=np.float64)


def _item_groups(task_entry):
    """Items that must be resampled together (the facts of the world's knowledge items),
    or None: every item independent."""
    from hif8qat.world.tasks import knowledge_fact_ids
    return knowledge_fact_ids(task_entry["items"]["source"])


def _same_items(a, b) -> bool:
    return a["items"]["source"] == b["items"]["source"] and \
        a["items"]["gold"] == b["items"]["gold"]


# --------------------------------------------------------------------------------------
# the table

class ReportTable:
    """The comparison table: ``rows`` (one dict per run, flat keys, accuracies and drops
    in points/percent), ``tasks`` (benchmark keys), ``to_markdown()``, ``to_pandas()``,
    ``to_json()``; ``repr`` is the markdown.

    Row keys: name, label, description, path, precision, reference, lr, algo, window,
    bf16_warmup_steps, steps, ``acc_<task>`` (percent), ``n_<task>``, ``drop_<task>``,
    ``drop_low_<task>``, ``drop_high_<task>`` (points), ``rel_drop_<task>`` (percent),
    ``p_<task>``, ape_qat, ape_all (percent), saturation_events, saturated_steps,
    clipped_fraction, max_clipped_fraction (percent), train_time_s, eval_time_s.
    """

    def __init__(self, rows: list, tasks: list, title: str = "", notes=()):
        self.rows = rows
        self.tasks = list(tasks)
        self.title = title
        self.notes = list(notes)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, str):
            for r in self.rows:
                if r["name"] == key:
                    return r
            raise KeyError(f"no run named {key!r} (runs: {[r['name'] for r in self.rows]})")
        return self.rows[key]

    def to_pandas(self):
        """The rows as a pandas DataFrame indexed by run name (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("ReportTable.to_pandas needs pandas (pip install pandas); "
                              "table.rows is the same data as a list of dicts") from None
        return pd.DataFrame(self.rows).set_index("name")

    def to_json(self) -> str:
        return json.dumps({"title": self.title, "tasks": self.tasks, "rows": self.rows,
                           "notes": self.notes}, indent=1, default=_json_default)

    def to_markdown(self) -> str:
        short = [_short(t) for t in self.tasks]
        head = (["run", "precision", "lr"] + [f"{s} acc %" for s in short] + ["vs"]
                + [f"{s} drop, pts [95% CI] (rel.)" for s in short]
                + ["loss APE QAT %", "loss APE all %", "sat. events (steps)", "clipped %",
                   "train s", "eval s"])
        lines = []
        if self.title:
            lines += [f"### {self.title}", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * 3 + ["---:"] * len(short) + ["---"]
                                    + ["---:"] * (len(short) + 6)) + "|")
        for r in self.rows:
            cells = [r["label"], r.get("precision") or "-", _fmt(r.get("lr"), "{:.0e}")]
            cells += [_fmt(r.get(f"acc_{t}"), "{:.2f}") for t in self.tasks]
            cells.append(r.get("reference") or "-")
            for t in self.tasks:
                d = r.get(f"drop_{t}")
                if d is None:
                    cells.append("-")
                else:
                    rel = _fmt(r.get(f"rel_drop_{t}"), "{:+.1f}%")
                    cells.append(f"{d:+.2f} [{r[f'drop_low_{t}']:+.2f}, "
                                 f"{r[f'drop_high_{t}']:+.2f}] ({rel})")
            cells += [_fmt(r.get("ape_qat"), "{:.3f}"), _fmt(r.get("ape_all"), "{:.3f}")]
            if r.get("precision") == "hif8" and r.get("saturation_events") is not None:
                cells.append(f"{r['saturation_events']} ({r['saturated_steps']})")
                cells.append(_fmt(r.get("clipped_fraction"), "{:.4f}"))
            else:
                cells += ["-", "-"]
            cells += [_fmt(r.get("train_time_s"), "{:.0f}"), _fmt(r.get("eval_time_s"), "{:.0f}")]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        if self.notes:
            lines.append("")
            lines += [f"* {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self):
        return self.to_markdown()

    __str__ = __repr__

    def _repr_markdown_(self):  # Jupyter
        return self.to_markdown()

    def save(self, out_dir: str, name: str = "report") -> dict:
        """Write ``name.md`` and ``name.json`` into ``out_dir``; return their paths."""
        os.makedirs(out_dir, exist_ok=True)
        md = os.path.join(out_dir, f"{name}.md")
        js = os.path.join(out_dir, f"{name}.json")
        _atomic_write(md, self.to_markdown() + "\n")
        _atomic_write(js, self.to_json() + "\n")
        return {"markdown": md, "json": js}


def compare(run_dirs, *, reference: Optional[str] = None, n_resamples: int = 5000,
            confidence: float = 0.95, seed: int = 0, title: str = "") -> ReportTable:
    """The comparison table of run directories (or folders of them).

    ``reference``: the name (basename) of a run to compare every run against that has no
    reference of its own (by default a QAT run is compared with its matched BF16 run,
    found by config, and others with nothing). Bootstrap: ``n_resamples`` joint
    resamples of the items, fixed ``seed``.

    Example::

        table = compare(["runs/demo"])
        print(table.to_markdown())
    """
    from hif8qat.eval.stats import paired_bootstrap

    runs = [load_run(p) for p in expand_run_dirs(run_dirs)]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"run directories must have distinct names to be compared, "
                         f"got {dup} more than once")
    if reference is not None and reference not in names:
        raise ValueError(f"reference {reference!r} is not among the runs ({', '.join(names)})")
    tasks = []
    for r in runs:
        for t in (r.eval or {}).get("tasks", {}):
            if t not in tasks:
                tasks.append(t)
    notes = []
    rows = []
    clustered = {}
    for run in runs:
        ref = _find_reference(run, runs)
        if ref is None and reference is not None and run.name != reference:
            ref = next(r for r in runs if r.name == reference)
        cfg = run.config or {}
        act = cfg.get("activation") or {}
        row = {"name": run.name, "label": run.label,
               "description": run.meta.get("description", ""), "path": run.path,
               "precision": run.precision, "reference": ref.name if ref else None,
               "lr": cfg.get("lr"), "algo": act.get("algo") if run.precision == "hif8" else None,
               "window": act.get("window") if run.precision == "hif8" else None,
               "bf16_warmup_steps": (cfg.get("bf16_warmup_steps")
                                     if run.precision == "hif8" else None),
               "steps": cfg.get("steps")}
        ev = (run.eval or {}).get("tasks", {})
        ref_ev = (ref.eval or {}).get("tasks", {}) if ref else {}
        for t in tasks:
            e = ev.get(t)
            row[f"acc_{t}"] = 100.0 * float(np.mean(_correct(e))) if e else None
            row[f"n_{t}"] = len(e["items"]["correct"]) if e else None
            d = None
            if e and t in ref_ev:
                if not _same_items(ref_ev[t], e):
                    notes.append(f"{run.name} vs {ref.name}: {t} items differ; no drop shown")
                else:
                    groups = _item_groups(e)
                    d = paired_bootstrap(_correct(ref_ev[t]), _correct(e),
                                         n_resamples=n_resamples, confidence=confidence,
                                         seed=seed, groups=groups)
                    if groups is not None:
                        clustered[t] = (d["n"], d["n_groups"])
            acc_ref = row[f"acc_{t}"] + 100.0 * d["diff"] if d else None
            row[f"drop_{t}"] = 100.0 * d["diff"] if d else None
            row[f"drop_low_{t}"] = 100.0 * d["low"] if d else None
            row[f"drop_high_{t}"] = 100.0 * d["high"] if d else None
            row[f"rel_drop_{t}"] = (100.0 * (100.0 * d["diff"]) / acc_ref
                                    if d and acc_ref else None)
            row[f"p_{t}"] = d["p_value"] if d else None
        row["ape_qat"] = loss_ape(run.log, ref.log, "qat") if ref and run.log and ref.log \
            and run.precision == "hif8" else None
        row["ape_all"] = loss_ape(run.log, ref.log, None) if ref and run.log and ref.log \
            else None
        if run.log:
            row.update(saturation_stats(run.log))
        else:
            row.update(saturation_events=None, saturated_steps=None, qat_steps=None,
                       clipped_fraction=None, max_clipped_fraction=None)
        row["train_time_s"] = (run.summary or {}).get("wall_time_s")
        row["eval_time_s"] = (run.eval or {}).get("wall_time_s")
        stopped = (run.summary or {}).get("stopped")
        if stopped:
            notes.append(f"{run.name} stopped early: {stopped}")
        rows.append(row)
    notes.insert(0, f"drop = reference acc - run acc in points (positive = lost), "
                    f"{int(confidence * 100)}% paired bootstrap interval over items "
                    f"({n_resamples} resamples, seed {seed}); loss APE against the "
                    f"reference run's loss at the same step")
    for t, (n, g) in clustered.items():
        notes.insert(1, f"{t}: its {n} items probe {g} facts, so its interval resamples "
                        f"facts (cluster bootstrap), not items")
    return ReportTable(rows, tasks, title=title, notes=notes)


# --------------------------------------------------------------------------------------
# command line

def main_report(argv=None) -> int:
    """``hif8qat report RUN_DIR... [--reference NAME] [--out DIR] [--plots]`` -> status.

    Prints the comparison table (markdown); ``--out`` also writes report.md/report.json
    (and the plots with ``--plots``) there. 2 on bad arguments (one-line message).
    """
    parser = argparse.ArgumentParser(
        prog="hif8qat report",
        description="Recompute the comparison table (accuracy, drop vs the matched BF16 run "
                    "with a paired bootstrap interval, loss APE, saturation) from run "
                    "directories or folders of them.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--reference", default=None,
                        help="name of the run that runs without a matched one compare against")
    parser.add_argument("--resamples", type=int, default=5000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", default=None, help="also write report.md/report.json here")
    parser.add_argument("--plots", action="store_true",
                        help="write PNG plots (needs matplotlib) next to each run and in --out")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.resamples < 1:
        return _usage_error("report", "--resamples must be >= 1")
    try:
        table = compare(args.run_dirs, reference=args.reference, n_resamples=args.resamples,
                        seed=args.seed)
        if args.out:
            table.save(args.out)
        if args.plots:
            from . import plots
            plots.plot_table(table, args.out or None)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        return _usage_error("report", e)
    except ImportError as e:
        return _usage_error("report", e)
    print(table.to_json() if args.json else table.to_markdown())
    return 0


def _usage_error(cmd, msg) -> int:
    text = str(msg).strip().splitlines()[0] if str(msg).strip() else type(msg).__name__
    print(f"hif8qat {cmd}: error: {text}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------------------
# helpers

def _short(task: str) -> str:
    return task[len("world_"):] if task.startswith("world_") else task


def _fmt(v, spec):
    if v is None:
        return "-"
    try:
        return spec.format(v)
    except (ValueError, TypeError):
        return str(v)


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


# JSON helpers shared with the trainer (one definition: plain values, atomic writes)
from ..train.trainer import _json_default, _plain  # noqa: E402


def _atomic_write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    atomic_write_text(path, text)
