"""The training loop: BF16 warm-up with the scalers calibrating, then HiF8 QAT.

One optimizer step, top to bottom (``Trainer.step``)::

    phase = config.phase_at(step)          # "bf16_warmup" | "qat" | "bf16" | "fp32"
    model.set_precision(...)               # the phase switch changes precision only
    lr = lr_at(step, ...)                  # one schedule for the whole run
    model.grad_step = step                 # quantize_grads: stochastic-rounding seeds
    inputs, targets = data.next_batch()    # batch k depends on (seed, k) only
    with weight_noise(model, winq_noise_std, rng):   # WinQ: gradient at w + eps (opt-in)
        for each micro-batch i:            # weight_i = its share of the step's targets
            loss_i = model.forward(x_i, y_i)
            model.backward(dloss=weight_i, accumulate=i > 0)
    grad_norm = clip_grad_norm_(grads)     # global norm, float64 sum
    diagnostics = model.scalers.diagnostics()   # the step just finished (QAT / warm-up)
    model.scalers.update()                 # exactly once per optimizer step
    optimizer.step(grads, lr)              # AdamW on the flat buffer
    winq_reset(model, alpha)               # WinQ, every winq_reset_every QAT steps (opt-in)
    hessian_spectrum(model, ...)           # every hessian_every steps (opt-in, changes nothing)
    log.jsonl += one line                  # step, phase, lr, loss, grad_norm, scalers...

A run directory holds ``config.toml`` (the resolved config), ``log.jsonl`` (one JSON
object per optimizer step), ``checkpoints/`` (see checkpoint.py) and, at the end,
``summary.json`` (saturation events per layer and per scaler, wall time).

Each log line: ``step`` (1-based count of steps done), ``phase``, ``lr``, ``loss``
(token-weighted mean over the step's micro-batches), ``grad_norm`` (before
clipping), ``tokens`` (non-ignored targets), ``saturated`` (scalers with a clipped
element this step), ``scalers`` ({name: {amax, scale, headroom,
clipped_fraction}}, where ``scale`` is the one the step used; absent in baselines;
with quantize_grads the "<module>.grad_output" scalers of the output gradients too),
``eval`` (hook results, on the steps the hooks ran), ``winq_reset`` (on reset steps:
moved_rms, tensors), ``hessian`` (on probe steps: top, bottom, near_zero_fraction,
negative_fraction, positive_fraction, n_negative_ritz, delta; the whole spectrum goes to
``hessian.jsonl``, one line per probe) and the wall-clock fields
``tokens_per_s`` and ``step_time_s`` (WALL_CLOCK_FIELDS: everything else is
bit-identical between an uninterrupted and a resumed run).

Example::

    cfg = hq.TrainConfig.from_toml("qat.toml")
    run_dir = hq.train(cfg)
    # or step by step, in a notebook:
    t = hq.Trainer(cfg)
    for _ in range(10):
        record = t.step()
    t.save_checkpoint()
    t = hq.Trainer.resume(t.run_dir)
    t.run()
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Optional

import numpy as np

from . import checkpoint as ckpt
from .config import RESUMABLE_CHANGES, TrainConfig, _toml
from .data import IGNORE_INDEX, TokenBatches, load_tokens, split_micro_batches
from .optim import AdamW, clip_grad_norm_, global_grad_norm, lr_at, matrix_decay_mask
from ..winq import weight_noise, winq_reset

# log fields that measure the machine, not the computation: left out when comparing
# an uninterrupted run with a resumed one
WALL_CLOCK_FIELDS = ("tokens_per_s", "step_time_s")

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class TrainingDivergedError(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite; the run stopped."""


def _phase_precision(phase: str) -> tuple:
    """(model precision, calibrating) for a phase."""
    if phase == "bf16_warmup":
        return "bf16", True          # compute in bf16; scalers observe, nothing is cast
    if phase == "qat":
        return "hif8", False
    return phase, False              # baselines: "bf16" or "fp32" throughout


class Trainer:
    """Runs one TrainConfig: model, data, AdamW, scalers, log and checkpoints.

    ``Trainer(config, eval_hooks=None)`` starts a new run in ``config.run_dir``
    (which must not already hold one: resume it with ``Trainer.resume``).
    ``eval_hooks``: {name: callable(trainer) -> dict | float | None} (or a list of
    callables, named by ``__name__``), run every ``config.eval_every`` steps and at
    the end with the scalers frozen and calibration off, so evaluating never changes
    the training state; results go into that step's log line under "eval".

    Example::

        t = hq.Trainer(cfg)
        rec = t.step()            # one optimizer step -> its log record
        t.run()                   # the remaining steps, checkpoints, summary
    """

    def __init__(self, config: TrainConfig, eval_hooks=None, *, _resume: Optional[dict] = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer needs a TrainConfig, got {type(config).__name__}")
        config.validate()
        # the resolved config names its files absolutely, so it reads back from anywhere
        absolute = {k: os.path.abspath(getattr(config, k)) for k in ("data", "model_dir", "run_dir")
                    if getattr(config, k) is not None
                    and getattr(config, k) != os.path.abspath(getattr(config, k))}
        if absolute:
            config = config.with_overrides(absolute)
        self.config = cfg = config
        self.eval_hooks = _normalise_hooks(eval_hooks)
        self.run_dir = os.path.abspath(cfg.run_dir)
        self.checkpoints_dir = os.path.join(self.run_dir, "checkpoints")
        self.log_path = os.path.join(self.run_dir, "log.jsonl")
        self.hessian_path = os.path.join(self.run_dir, "hessian.jsonl")

        # ---- every check before any work --------------------------------------------
        from hif8qat.model import LlamaConfig, LlamaModel, load_model
        if not os.path.isfile(cfg.data):
            raise FileNotFoundError(f"TrainConfig.data: file not found: {cfg.data}")
        if _resume is None:
            if cfg.model_dir is not None and not os.path.isdir(cfg.model_dir):
                raise FileNotFoundError(f"TrainConfig.model_dir: not a directory: "
                                        f"{cfg.model_dir}")
            for existing in ("log.jsonl", "checkpoints"):
                if os.path.exists(os.path.join(self.run_dir, existing)):
                    raise FileExistsError(
                        f"{self.run_dir} already holds a run ({existing}); resume it with "
                        f"Trainer.resume({cfg.run_dir!r}) (command line: --resume), or "
                        "choose another run_dir")
        model_cfg = None
        if cfg.model_config is not None and _resume is None:
            try:
                model_cfg = LlamaConfig.from_dict(cfg.model_config)
            except (TypeError, ValueError) as e:
                raise ValueError(f"TrainConfig.model_config: {e}") from None

        # ---- data -------------------------------------------------------------------------
        tokens, loss_mask = load_tokens(cfg.data, cfg.tokenizer)
        self.data = TokenBatches(tokens, cfg.seq_len, cfg.batch_size, seed=cfg.seed,
                                 loss_mask=loss_mask)

        # ---- model, scalers, optimizer -------------------------------------------------------
        if _resume is not None:
            self.model = load_model(_resume["model_dir"])       # the checkpoint's weights
        elif model_cfg is not None:
            self.model = LlamaModel.from_config(model_cfg, seed=cfg.seed)
        else:
            self.model = load_model(cfg.model_dir)
        mc = self.model.config
        if self.data.max_token >= mc.vocab_size:
            raise ValueError(f"the data holds token id {self.data.max_token} but the model's "
                             f"vocab_size is {mc.vocab_size} (wrong tokenizer or data file?)")
        if cfg.seq_len > mc.max_position_embeddings:
            raise ValueError(f"TrainConfig.seq_len ({cfg.seq_len}) exceeds the model's "
                             f"max_position_embeddings ({mc.max_position_embeddings})")
        self.uses_scalers = cfg.precision == "hif8"
        # output gradients are cast in hif8 runs only (a bf16/fp32 baseline sharing the
        # QAT run's config ignores quantize_grads, as it ignores bf16_warmup_steps)
        self.quantizes_grads = self.uses_scalers and cfg.quantize_grads
        if self.uses_scalers:
            configure_model_scalers(self.model, cfg)
        decay_mask = (matrix_decay_mask(self.model.params_flat, self.model.param_views)
                      if cfg.weight_decay else None)
        self.optimizer = AdamW(self.model.params_flat, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                               eps=cfg.eps, weight_decay=cfg.weight_decay, decay_mask=decay_mask)

        # ---- loop state --------------------------------------------------------------------
        self.step_index = 0                  # optimizer steps done
        self.rng = np.random.default_rng(cfg.seed)   # for anything random the loop grows
        self.saturation_events = {}          # scaler name -> QAT steps with a clipped element
        self.saturated_steps = 0             # QAT steps where any scaler clipped
        self.first_saturation_step = None
        self.last_saturation_step = None
        self.elapsed_s = 0.0                 # wall time of the steps (not of checkpoints)
        self.last_checkpoint = None
        self.last_record = None
        self._phase = None
        self._diverged = False

        if _resume is not None:
            self._load_state(_resume)        # may raise: nothing written yet
        os.makedirs(self.run_dir, exist_ok=True)
        ckpt.atomic_write_text(os.path.join(self.run_dir, "config.toml"), cfg.to_toml())
        if _resume is not None:
            self._truncate_log(self.step_index)
            _truncate_jsonl(self.hessian_path, self.step_index)
        elif not os.path.exists(self.log_path):
            open(self.log_path, "w").close()

    # ------------------------------------------------------------------ the step
    @property
    def done(self) -> bool:
        return self.step_index >= self.config.steps

    @property
    def phase(self) -> str:
        """Phase of the next step."""
        return self.config.phase_at(min(self.step_index, self.config.steps - 1))

    def _enter_phase(self, phase: str) -> None:
        if phase != self._phase:
            precision, calibrating = _phase_precision(phase)
            self.model.set_precision(precision)
            self.model.calibrating = calibrating
            self._phase = phase

    def step(self) -> dict:
        """Run one optimizer step; return its log record (also appended to log.jsonl)."""
        if self._diverged:
            raise TrainingDivergedError("this Trainer stopped on a non-finite loss; resume "
                                        "from the last good checkpoint")
        if self.done:
            raise RuntimeError(f"the run is complete ({self.config.steps} steps); raise "
                               "TrainConfig.steps and resume to train further")
        cfg, model = self.config, self.model
        s = self.step_index
        phase = cfg.phase_at(s)
        self._enter_phase(phase)
        lr = lr_at(s, lr=cfg.lr, steps=cfg.steps, schedule=cfg.lr_schedule,
                   warmup_steps=cfg.lr_warmup_steps, min_lr=cfg.min_lr)
        t0 = time.perf_counter()

        if self.quantizes_grads:
            model.grad_step = s      # stochastic gradient rounding: seeds from (seed, s, tensor)
        inputs, targets = self.data.next_batch()                      # (B, T) each
        n_targets = int((targets != IGNORE_INDEX).sum())
        if n_targets == 0:
            raise ValueError(f"step {s + 1}: every target of the batch is ignored (-100); "
                             "the loss mask leaves nothing to learn from")
        loss = 0.0
        first = True
        # WinQ: the gradient is measured at w + eps (not during the warm-up, whose scalers
        # calibrate on the weights); the clean weights are back before the update
        noise_std = cfg.winq_noise_std if phase != "bf16_warmup" else 0.0
        with weight_noise(model, noise_std, self.rng):
            for x, y, weight in split_micro_batches(inputs, targets, cfg.grad_accum_steps):
                if weight == 0.0:
                    model.forward(x)   # no targets here, but the scalers still see the inputs
                    continue
                _, micro_loss = model.forward(x, y)
                micro_loss = float(micro_loss)
                if not math.isfinite(micro_loss):
                    self._diverge(s, phase, lr, f"the loss became {micro_loss}")
                model.backward(dloss=weight, accumulate=not first)
                first = False
                loss += weight * micro_loss

        grads = model.grads_flat
        grad_norm = (clip_grad_norm_(grads, cfg.grad_clip) if cfg.grad_clip > 0
                     else global_grad_norm(grads))
        if not math.isfinite(grad_norm):
            self._diverge(s, phase, lr, f"the gradient norm became {grad_norm}")

        scalers_log, saturated = None, 0
        if self.uses_scalers:
            # the diagnostics describe the step just finished: read them before update()
            rows = model.scalers.diagnostics()
            model.scalers.update()
            scalers_log = {r["name"]: {"amax": float(r["amax"]), "scale": float(r["scale"]),
                                       "headroom": float(r["headroom"]),
                                       "clipped_fraction": float(r["clipped_fraction"])}
                           for r in rows}
            if phase == "qat":
                for r in rows:
                    if r["clipped"] > 0:
                        saturated += 1
                        self.saturation_events[r["name"]] = (
                            self.saturation_events.get(r["name"], 0) + 1)
                if saturated:
                    self.saturated_steps += 1
                    if self.first_saturation_step is None:
                        self.first_saturation_step = s + 1
                    self.last_saturation_step = s + 1
        self.optimizer.step(grads, lr)
        self.step_index = s + 1
        winq_log = None
        if cfg.winq_reset_every and phase == "qat" and \
                (s + 1 - cfg.bf16_warmup_steps) % cfg.winq_reset_every == 0:
            # after scalers.update(): Q(w) uses the scale the next forward will use
            winq_log = winq_reset(model, cfg.winq_alpha)

        dt = time.perf_counter() - t0
        self.elapsed_s += dt
        record = {"step": s + 1, "phase": phase, "lr": lr, "loss": loss,
                  "grad_norm": grad_norm, "tokens": n_targets, "saturated": saturated}
        if scalers_log is not None:
            record["scalers"] = scalers_log
        if winq_log is not None:
            record["winq_reset"] = winq_log
        if cfg.hessian_every and self.step_index % cfg.hessian_every == 0:
            record["hessian"] = self.probe_hessian(phase).summary()
        if self.eval_hooks and self._eval_due():
            record["eval"] = self.evaluate()
        record["tokens_per_s"] = cfg.tokens_per_step / dt if dt > 0 else None
        record["step_time_s"] = dt
        self._append_log(record)
        self.last_record = record
        return record

    def _diverge(self, s, phase, lr, what):
        self._diverged = True
        last = self.last_checkpoint or _latest_or_none(self.checkpoints_dir)
        self._append_log({"step": s + 1, "phase": phase, "lr": lr, "loss": None,
                          "error": f"{what}; the run stopped"})
        where = (f"the last good checkpoint is {last} (resume with "
                 f"Trainer.resume({self.run_dir!r}))" if last else
                 "no checkpoint was saved before this step")
        raise TrainingDivergedError(
            f"step {s + 1} ({phase}, lr={lr:.3g}): {what}; the run stopped and the parameters "
            f"were not updated; {where}. Lower the learning rate, add an LR warm-up or "
            "BF16 warm-up steps, or check the data.")

    # ------------------------------------------------------------------ Hessian probe
    def hessian_batches(self) -> list:
        """The probe's fixed data: the run's first ``hessian_batches`` batches, split into
        micro-batches as a step would (the same data at every probe, so the spectra of a
        run, and of two runs with one seed, are comparable)."""
        cfg = self.config
        out = []
        for i in range(cfg.hessian_batches):
            inputs, targets = self.data.batch(i)          # the data position is not moved
            out += [(x, y) for x, y, w in split_micro_batches(inputs, targets,
                                                               cfg.grad_accum_steps) if w > 0]
        return out

    def probe_hessian(self, phase: Optional[str] = None):
        """Run hq.hessian_spectrum at the current weights, in hessian_precision,
        append it to hessian.jsonl and return it. Restores every bit it touches, so a
        run with probes trains exactly as one without."""
        from hif8qat.hessian import hessian_spectrum
        cfg = self.config
        t0 = time.perf_counter()
        spec = hessian_spectrum(self.model, self.hessian_batches(), k=cfg.hessian_k,
                                iters=cfg.hessian_iters, probes=cfg.hessian_probes,
                                rel_step=cfg.hessian_rel_step,
                                precision=cfg.hessian_precision, seed=cfg.seed)
        line = {"step": self.step_index, "phase": phase or self.phase, **spec.to_dict(),
                "time_s": time.perf_counter() - t0}
        with open(self.hessian_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, default=_json_default) + "\n")
        return spec

    # ------------------------------------------------------------------ evaluation
    def _eval_due(self) -> bool:
        every = self.config.eval_every
        return (every > 0 and self.step_index % every == 0) or self.done

    def evaluate(self) -> dict:
        """Run the eval hooks now, without touching the training state."""
        model = self.model
        calibrating = model.calibrating
        frozen = self.uses_scalers and model.precision == "hif8"
        results = {}
        model.calibrating = False
        if frozen:
            model.scalers.set_frozen(True)
        try:
            for name, hook in self.eval_hooks.items():
                results[name] = _plain(hook(self))
        finally:
            model.calibrating = calibrating
            if frozen:
                model.scalers.set_frozen(False)
        return results

    # ------------------------------------------------------------------ the whole run
    def run(self) -> str:
        """Run the remaining steps with checkpoints every ``checkpoint_every`` steps and
        at the end; write summary.json; return the run directory."""
        cfg = self.config
        bar = None
        if cfg.progress:
            try:
                from tqdm.auto import tqdm
                bar = tqdm(total=cfg.steps, initial=self.step_index, unit="step",
                           desc=os.path.basename(self.run_dir), dynamic_ncols=True)
            except ImportError:  # tqdm is a dependency, but a bar is never essential
                bar = None
        try:
            while not self.done:
                try:
                    rec = self.step()
                except TrainingDivergedError as e:
                    self.write_summary(stopped=str(e))   # a report can still show the run
                    raise
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(phase=rec["phase"], loss=f"{rec['loss']:.4f}",
                                    sat=self.saturated_steps, refresh=False)
                if (cfg.checkpoint_every and self.step_index % cfg.checkpoint_every == 0
                        and not self.done):
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if self.eval_hooks and (self.last_record is None
                                or "eval" not in self.last_record):
            # a resumed, already complete run: evaluate once more for the summary
            self.last_record = dict(self.last_record or {}, eval=self.evaluate())
        self.save_checkpoint()
        self.write_summary()
        return self.run_dir

    # ------------------------------------------------------------------ logging, summary
    def _append_log(self, record: dict) -> None:
        # a non-finite amax or headroom is data, not an error: Python's JSON writes it as
        # Infinity/NaN and reads it back
        line = json.dumps(record, default=_json_default)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def _truncate_log(self, step: int) -> None:
        """Keep the log lines of steps <= step (a resumed run rewrites what followed)."""
        if not os.path.exists(self.log_path):
            open(self.log_path, "w").close()
            return
        kept = []
        with open(self.log_path, "r", encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break   # a line cut by a kill: nothing after it is trustworthy
                if isinstance(rec, dict) and isinstance(rec.get("step"), int) \
                        and rec["step"] <= step and "error" not in rec:
                    kept.append(line if line.endswith("\n") else line + "\n")
                    self.last_record = rec
        ckpt.atomic_write_text(self.log_path, "".join(kept))

    def summary(self, stopped: Optional[str] = None) -> dict:
        """Saturation events per layer and per scaler, losses, wall time; ``stopped``
        holds the reason when the run ended early."""
        cfg = self.config
        per_layer = {}
        for name, n in self.saturation_events.items():
            m = _LAYER.search(name)
            key = m.group(1) if m else "other"
            per_layer[key] = per_layer.get(key, 0) + n
        out = {
            "run_dir": self.run_dir, "steps": self.step_index, "precision": cfg.precision,
            "bf16_warmup_steps": cfg.bf16_warmup_steps,
            "qat_steps": sum(1 for s in range(self.step_index) if cfg.phase_at(s) == "qat"),
            "final_loss": self.last_record.get("loss") if self.last_record else None,
            "saturation": {
                "events": int(sum(self.saturation_events.values())),
                "saturated_steps": self.saturated_steps,
                "first_step": self.first_saturation_step,
                "last_step": self.last_saturation_step,
                "per_layer": dict(sorted(per_layer.items(),
                                         key=lambda kv: (not kv[0].isdigit(),
                                                         int(kv[0]) if kv[0].isdigit() else 0))),
                "per_scaler": dict(sorted(self.saturation_events.items())),
            },
            "wall_time_s": self.elapsed_s,
            "tokens_per_s": (self.step_index * cfg.tokens_per_step / self.elapsed_s
                             if self.elapsed_s > 0 else None),
            "last_checkpoint": self.last_checkpoint,
            "model_dir": (os.path.join(self.last_checkpoint, "model")
                          if self.last_checkpoint else None),
            "stopped": stopped,
        }
        if self.uses_scalers:
            out["scalers"] = {r["name"]: {k: v for k, v in r.items() if k != "name"}
                              for r in self.model.scalers.summary()}
        if self.last_record and "eval" in self.last_record:
            out["eval"] = self.last_record["eval"]
        return out

    def write_summary(self, stopped: Optional[str] = None) -> str:
        path = os.path.join(self.run_dir, "summary.json")
        ckpt.atomic_write_text(path, json.dumps(_plain(self.summary(stopped)), indent=1,
                                                default=_json_default) + "\n")
        return path

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict:
        return {"step": self.step_index, "data": self.data.state_dict(),
                "rng": self.rng.bit_generator.state,
                "saturation_events": dict(self.saturation_events),
                "saturated_steps": self.saturated_steps,
                "first_saturation_step": self.first_saturation_step,
                "last_saturation_step": self.last_saturation_step,
                "elapsed_s": self.elapsed_s}

    def save_checkpoint(self) -> str:
        """Write checkpoint ``step_{step:06d}`` atomically and point ``latest`` at it."""
        if self._diverged:
            raise TrainingDivergedError("refusing to checkpoint a run that stopped on a "
                                        "non-finite loss")
        path = ckpt.save_training_checkpoint(
            self.checkpoints_dir, self.step_index, model=self.model,
            optimizer_state=self.optimizer.state_dict(),
            scaler_state=self.model.scalers.state_dict() if self.uses_scalers else None,
            trainer_state=self._trainer_state(), config_toml=self.config.to_toml(),
            keep=self.config.keep_checkpoints)
        self.last_checkpoint = path
        return path

    def _load_state(self, state: dict) -> None:
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:
            raise ckpt.CheckpointError(f"checkpoint does not fit this run: {e}") from None
        if self.uses_scalers:
            if state["scalers"] is None:
                raise ckpt.CheckpointError("the checkpoint has no scaler states, but this "
                                           "run quantizes (precision = 'hif8')")
            try:
                self.model.scalers.load_state_dict(state["scalers"])
            except ValueError as e:
                raise ckpt.CheckpointError(f"checkpoint scaler states do not fit: {e}") from None
        ts = state["trainer_state"]
        try:
            self.data.load_state_dict(ts["data"])
            self.rng.bit_generator.state = ts["rng"]
            self.step_index = int(ts["step"])
            self.saturation_events = {str(k): int(v) for k, v in ts["saturation_events"].items()}
            self.saturated_steps = int(ts["saturated_steps"])
            self.first_saturation_step = ts["first_saturation_step"]
            self.last_saturation_step = ts["last_saturation_step"]
            self.elapsed_s = float(ts["elapsed_s"])
        except (KeyError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(f"checkpoint trainer state is unusable: {e}") from None
        if self.step_index > self.config.steps:
            raise ckpt.CheckpointError(f"the checkpoint is at step {self.step_index}, past "
                                       f"this run's steps = {self.config.steps}")
        self.last_checkpoint = state["path"]

    @classmethod
    def resume(cls, run_dir: str, config: Optional[TrainConfig] = None, *,
               checkpoint: Optional[str] = None, eval_hooks=None) -> "Trainer":
        """Continue a run from its latest checkpoint (or ``checkpoint``, a name such as
        "step_000100"), bit-identically to a run that was never interrupted.

        ``config``: optionally a config to go on with; it may differ from the saved one
        only in RESUMABLE_CHANGES (steps, checkpoint_every, ...). A damaged checkpoint
        or an incompatible config is a CheckpointError/ValueError and nothing in the
        run directory changes.
        """
        run_dir = os.path.abspath(os.fspath(run_dir))
        checkpoints_dir = os.path.join(run_dir, "checkpoints")
        if checkpoint is not None:
            path = os.path.join(checkpoints_dir, checkpoint)
        else:
            path = ckpt.latest_checkpoint(checkpoints_dir)
        try:
            state = ckpt.load_training_checkpoint(path)
        except ckpt.CheckpointError as e:
            others = [n for n in ckpt.list_checkpoints(checkpoints_dir)
                      if n != os.path.basename(path)]
            hint = (f"; other checkpoints: {', '.join(others)} (resume one with "
                    f"checkpoint='{others[-1]}')" if others else "")
            raise ckpt.CheckpointError(f"{e}{hint}") from None
        state["path"] = path
        try:
            saved = TrainConfig.from_dict(_toml.loads(state["config_toml"]),
                                          source=os.path.join(path, "config.toml"))
        except (ValueError, TypeError) as e:
            raise ckpt.CheckpointError(f"{path}: unusable config.toml: {e}") from None
        if config is None:
            config = saved
        else:
            bad = [f for f in saved.differences(config)
                   if f.split(".")[0] not in RESUMABLE_CHANGES]
            if bad:
                raise ValueError(f"the config differs from the checkpoint's in {', '.join(bad)}:"
                                 f" a resumed run may change only {', '.join(RESUMABLE_CHANGES)}"
                                 f" (start a new run_dir for other changes)")
        config = config.with_overrides({"run_dir": run_dir})
        return cls(config, eval_hooks, _resume=state)


def read_log(run_dir: str, *, wall_clock: bool = True) -> list:
    """The step records of a run's log.jsonl (``wall_clock=False`` drops
    WALL_CLOCK_FIELDS, leaving what a resumed run reproduces bit for bit)."""
    records = []
    with open(os.path.join(run_dir, "log.jsonl"), "r", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                if not wall_clock:
                    rec = {k: v for k, v in rec.items() if k not in WALL_CLOCK_FIELDS}
                records.append(rec)
    return records


def train(config, eval_hooks=None, *, resume: bool = False) -> str:
    """Run a whole training run; return its directory.

    ``config``: a TrainConfig or the path of a TOML file. ``resume=True`` continues
    the run in ``config.run_dir`` when it has a checkpoint (and starts it otherwise).

    Example::

        run_dir = hq.train(hq.TrainConfig.from_toml("qat.toml"))
    """
    if isinstance(config, (str, os.PathLike)):
        config = TrainConfig.from_toml(config)
    if resume and ckpt.read_latest_name(os.path.join(config.run_dir, "checkpoints")):
        trainer = Trainer.resume(config.run_dir, config, eval_hooks=eval_hooks)
    else:
        trainer = Trainer(config, eval_hooks)
    return trainer.run()


# ---------------------------------------------------------------------- helpers
def configure_model_scalers(model, cfg: TrainConfig) -> None:
    """Give every weight scaler cfg.weight's recipe and every input scaler
    cfg.activation's; with quantize_grads, add the "<module>.grad_output" scalers with
    cfg.grad's recipe (its ``ste`` does not apply: dY is not a forward value).

    The scaler group this builds is the one a run's checkpoints hold, so it is how a
    trained model is rebuilt for evaluation::

        configure_model_scalers(model, config)
        model.scalers.load_state_dict(state["scalers"])
    """
    w, a = cfg.weight.as_dict(), cfg.activation.as_dict()
    if hasattr(model, "configure_scalers"):
        model.configure_scalers(weight=w, activation=a)
    elif w == a:
        model.reset_scalers(**w)
    else:
        # the model's reset_scalers takes one recipe for all; build the group by role
        from hif8qat.scaling import DelayedScaler, ScalerGroup
        group = ScalerGroup()
        for name in model.scaler_names():
            group.add(DelayedScaler(name=name, **(w if name.endswith(".weight") else a)))
        model._scalers = group
    if cfg.quantize_grads:
        g = cfg.grad
        model.configure_grad_quantization(enabled=True, fmax=g.fmax, window=g.window,
                                          algo=g.algo, margin=g.margin, clip=g.clip,
                                          rounding=cfg.grad_rounding, seed=cfg.seed)


def _normalise_hooks(hooks) -> dict:
    if hooks is None:
        return {}
    if callable(hooks):
        hooks = [hooks]
    if isinstance(hooks, dict):
        items = list(hooks.items())
    else:
        items = [(getattr(h, "__name__", f"hook{i}"), h) for i, h in enumerate(hooks)]
    for name, h in items:
        if not callable(h):
            raise TypeError(f"eval hook {name!r} is not callable")
    return dict(items)


def _plain(obj):
    """Hook results and summaries as plain JSON values (NumPy scalars unwrapped)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _truncate_jsonl(path: str, step: int) -> None:
    """Keep the lines of a per-step JSONL file (hessian.jsonl) with step <= step."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, "r", encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break   # a line cut by a kill
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    ckpt.atomic_write_text(path, "".join(kept))


def _latest_or_none(checkpoints_dir):
    try:
        name = ckpt.read_latest_name(checkpoints_dir)
    except ckpt.CheckpointError:
        return None
    return os.path.join(checkpoints_dir, name) if name else None
