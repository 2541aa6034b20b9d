"""WinQ: weight interpolation towards the quantization grid, and noise-injected gradients.

WinQ (arXiv 2605.17471) speeds up QAT near saddle points with two moves; only its
abstract is public here, so the details below are this project's choices:

1. **Reset** (every ``winq_reset_every`` optimizer steps of the QAT phase, after the
   update): every quantized weight moves part of the way to its quantized value,

       w ← (1 − α)·w + α·Q(w),     Q(w) = HiF8 fake-quant of w with its scaler's scale

   Q uses the weight's DelayedScaler exactly as the next forward will: its current
   ``scale`` (margin included), clamped to ±fmax when the recipe clips. The blend is
   computed in float64 and rounded once to the weights' float32, so it is exactly
   reproducible (α = 1 gives Q(w) exactly, α = 0 leaves w untouched). Only the
   quantized tensors (the q/k/v/o/gate/up/down projection weights) move; embeddings,
   norms and biases are never touched, and the scalers' states are not changed.
2. **Noise-injected gradient**: the step's gradient is evaluated at w + ε with
   ε ~ N(0, (noise_std · RMS(w))²) drawn independently per quantized weight tensor
   from the run's seeded generator (one draw per optimizer step, shared by its
   micro-batches); the clean weights are then copied back (bit for bit) before the
   optimizer update, so the noise only changes where the gradient is measured. This
   penalises sharp directions (E[L(w + ε)] ≈ L(w) + ½ σ² tr H) — the Hessian
   regularisation the paper describes.

Example::

    import hif8qat as hq
    from hif8qat.winq import winq_reset, weight_noise
    moved = winq_reset(model, alpha=0.5)            # after scalers.update()
    with weight_noise(model, std=0.05, rng=rng):    # gradient at w + eps
        model.forward(x, y); model.backward()
    # weights are the clean ones again here; grads_flat holds the noisy gradient
"""
from __future__ import annotations

import contextlib
import json
import math
import os

from typing import Optional

import numpy as np

__all__ = ["quantized_weight_names", "quantized_weight", "winq_reset", "weight_noise"]


def quantized_weight_names(model) -> list:
    """Names of the parameters the HiF8 forward quantizes (the projection weights).

    A weight scaler is named after the parameter it quantizes ("<module>.weight"), so
    these are exactly the "*.weight" scaler names, in layer order.
    """
    return [n for n in model.scaler_names() if n.endswith(".weight")]


def quantized_weight(weight: np.ndarray, scaler) -> np.ndarray:
    """Q(w): the HiF8 fake-quantization of ``weight`` with ``scaler``'s current scale,
    clamped at ±fmax when the scaler's recipe clips. The scaler is not changed.

    RuntimeError if the scaler has never been updated (its scale is the placeholder
    1.0, not an estimate): run a step or calibrate first.
    """
    from hif8qat.format import fake_quant
    if scaler.n_valid == 0:
        raise RuntimeError(f"scaler {scaler.name!r} has an empty amax history, so it has no "
                           "scale for Q(w) yet: run a training step (or calibrate) first")
    return fake_quant(weight, scaler.scale, clip=scaler.fmax if scaler.clip else None)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)):
        raise TypeError(f"alpha must be a number in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


def winq_reset(model, alpha: float = 0.5) -> dict:
    """Move every quantized weight to (1 − α)·w + α·Q(w), in place; return diagnostics.

    Returns {"moved_rms": RMS over all quantized weights of the change, relative to
    their RMS, "tensors": how many were reset}. Call it after ``scalers.update()`` so
    Q uses the scale the next forward will use.

    Example::

        stats = winq_reset(model, alpha=0.5)
    """
    alpha = _check_alpha(alpha)
    views, scalers = model.param_views, model.scalers
    sq_change = sq_weight = 0.0
    names = quantized_weight_names(model)
    for name in names:
        w = views[name]
        q = quantized_weight(w, scalers[name]).astype(np.float64)
        w64 = w.astype(np.float64)
        new = ((1.0 - alpha) * w64 + alpha * q).astype(w.dtype)
        sq_change += float(np.sum((new.astype(np.float64) - w64) ** 2))
        sq_weight += float(np.sum(w64 * w64))
        w[...] = new
    return {"moved_rms": math.sqrt(sq_change / sq_weight) if sq_weight > 0 else 0.0,
            "tensors": len(names)}


@contextlib.contextmanager
def weight_noise(model, std: float, rng: np.random.Generator):
    """Within the block the quantized weights are w + ε, ε ~ N(0, (std·RMS(w))²) per
    tensor (drawn from ``rng`` in layer order); on exit the clean weights are copied
    back bit for bit. ``std`` = 0 draws nothing and changes nothing.

    Example::

        with weight_noise(model, std=0.05, rng=trainer.rng):
            model.forward(x, y); model.backward()
    """
    if isinstance(std, bool) or not isinstance(std, (int, float, np.floating)):
        raise TypeError(f"std must be a number >= 0, got {std!r}")
    std = float(std)
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"std must be finite and >= 0, got {std}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if std == 0.0:
        yield
        return
    views = model.param_views
    saved = []
    try:
        for name in quantized_weight_names(model):
            w = views[name]
            saved.append((w, w.copy()))
            rms = math.sqrt(float(np.mean(np.square(w, dtype=np.float64))))
            eps = rng.standard_normal(w.shape, dtype=np.float32)
            eps *= np.float32(std * rms)
            w += eps
        yield
    finally:
        for w, clean in saved:
            w[...] = clean



# ------------------------------------------------------------------------------ ablation
def ablation_path() -> str:
    """The shipped ablation config (``hif8qat/winq_ablation.toml``)."""
    return os.path.join(os.path.dirname(__file__), "winq_ablation.toml")


def _read_json(path):
    with open(path, "r", encoding="utf-8") as fh:
        return json.load(fh)


def _write_json(path, obj):
    from hif8qat.train.checkpoint import atomic_write_text
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def _load_spec(path):
    try:
        import tomllib as toml
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as toml
    with open(path, "rb") as fh:
        spec = toml.load(fh)
    known = {"world_seed", "world_size", "pretrain_recipe", "pretrain", "tasks",
             "baseline", "base", "variants"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if not spec.get("variants"):
        raise ValueError(f"{path}: no [variants.NAME] tables")
    if spec.get("baseline") not in spec["variants"]:
        raise ValueError(f"{path}: baseline {spec.get('baseline')!r} is not a variant")
    return spec


def run_ablation(path=None, out_dir: str = "runs/winq_ablation", variants=None,
                 evaluate: bool = True) -> dict:
    """Run the WinQ ablation described by a TOML file (default: the shipped one).

    Pretrains the base model once (``out_dir/pretrain``), fine-tunes it once per
    ``[variants.NAME]`` table (``out_dir/NAME``; a variant with a ``result.json`` is
    not run again, so several processes can share the work with ``variants=[...]``),
    scores the benchmarks, and writes ``out_dir/results.json``: per variant the final
    loss (mean of the last 20 steps), the loss APE against the baseline over the QAT
    phase, accuracies with paired-bootstrap intervals against the baseline, and the
    Hessian spectrum summaries. Returns that dict.

    Example::

        res = hq.winq.run_ablation(out_dir="runs/winq")    # doctest: +SKIP
    """
    spec = _load_spec(path or ablation_path())
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    names = list(spec["variants"])
    todo = names if variants is None else list(variants)
    bad = [v for v in todo if v not in names]
    if bad:
        raise ValueError(f"unknown variants {bad}; the config has {names}")
    base_model, data = _ablation_pretrain(spec, out_dir)
    for name in todo:
        if not os.path.exists(os.path.join(out_dir, name, "result.json")):
            _ablation_variant(spec, name, base_model, data, out_dir, evaluate)
    results = {n: _read_json(os.path.join(out_dir, n, "result.json")) for n in names
               if os.path.exists(os.path.join(out_dir, n, "result.json"))}
    summary = _ablation_summary(spec, results)
    _write_json(os.path.join(out_dir, "results.json"), summary)
    return summary


def _ablation_pretrain(spec, out_dir):
    """Train (once) the base model with the world's recipe; its model dir and data."""
    from hif8qat import world
    from hif8qat.train.trainer import train
    run_dir = os.path.join(out_dir, "pretrain")
    overrides = dict(spec.get("pretrain", {}), run_dir=run_dir, progress=False)
    cfg = world.pretrain_config(spec.get("world_seed", 0), spec.get("world_size", "tiny"),
                                recipe=spec.get("pretrain_recipe", "pretrain_tiny"),
                                overrides=overrides)
    summary = os.path.join(run_dir, "summary.json")
    if not os.path.exists(summary):
        train(cfg, resume=True)
    return _read_json(summary)["model_dir"], cfg.data


def variant_config(spec, name, model_dir, data, run_dir):
    """The TrainConfig of one variant: [base] updated by [variants.NAME]."""
    from hif8qat.train.config import TrainConfig
    d = json.loads(json.dumps(spec.get("base", {})))
    for key, value in spec["variants"][name].items():
        if isinstance(value, dict):
            d.setdefault(key, {}).update(value)
        else:
            d[key] = value
    d.update(model_dir=model_dir, data=data, run_dir=run_dir)
    return TrainConfig.from_dict(d, source=f"[variants.{name}]")


def _ablation_variant(spec, name, base_model, data, out_dir, evaluate):
    import time
    from hif8qat.train.trainer import Trainer, read_log
    run_dir = os.path.join(out_dir, name)
    cfg = variant_config(spec, name, base_model, data, run_dir)
    hooks = {"clean_loss": _clean_loss}
    if os.path.exists(os.path.join(run_dir, "checkpoints")):
        trainer = Trainer.resume(run_dir, cfg, eval_hooks=hooks)
    else:
        trainer = Trainer(cfg, hooks)
    trainer.run()
    log = read_log(run_dir)
    losses = [r["loss"] for r in log]
    clean = [(r["step"], r["eval"]["clean_loss"]) for r in log if "eval" in r]
    result = {"config": cfg.to_dict(), "losses": losses, "clean_losses": clean,
              "final_clean_loss": clean[-1][1] if clean else None,
              "phases": [r["phase"] for r in log],
              "final_loss": float(np.mean(losses[-20:])),
              "wall_time_s": trainer.elapsed_s,
              "hessian": [r["hessian"] | {"step": r["step"]} for r in log if "hessian" in r],
              "resets": [r["step"] for r in log if "winq_reset" in r]}
    if evaluate and spec.get("tasks"):
        from hif8qat.eval import ByteTokenizer, evaluate as run_eval
        t0 = time.perf_counter()
        res = run_eval(trainer.model, ByteTokenizer(), list(spec["tasks"]))
        result["eval"] = {task: {k: res[task][k] for k in ("acc", "acc_norm", "n")}
                          for task in res}
        result["eval_items"] = {task: [int(r.correct) for r in res.items[task]]
                                for task in res}
        result["eval_precision"] = trainer.model.precision
        result["eval_time_s"] = time.perf_counter() - t0
    _write_json(os.path.join(run_dir, "result.json"), result)
    return result


CLEAN_LOSS_BATCHES = 8


def _clean_loss(trainer) -> float:
    """Eval hook: the loss at the clean weights (no WinQ noise) on the run's first
    CLEAN_LOSS_BATCHES batches, in the current precision with frozen scalers — the
    logged training loss of a noise variant is measured at w + eps, so it is not
    comparable with the other runs'."""
    total = weight = 0.0
    for i in range(CLEAN_LOSS_BATCHES):
        x, y = trainer.data.batch(i)
        n = int((y != -100).sum())
        _, loss = trainer.model.forward(x, y)
        total += n * float(loss)
        weight += n
    return total / weight


def _ablation_summary(spec, results):
    from hif8qat.eval import paired_bootstrap
    base = results.get(spec["baseline"])
    out = {"baseline": spec["baseline"], "variants": {}}
    for name, r in results.items():
        row = {"final_loss": r["final_loss"], "final_clean_loss": r.get("final_clean_loss"),
               "hessian": r["hessian"],
               "resets": len(r["resets"]), "wall_time_s": r["wall_time_s"],
               "eval": r.get("eval")}
        if base is not None and name != spec["baseline"]:
            qat = [i for i, p in enumerate(r["phases"]) if p == "qat"]
            lb, lq = np.asarray(base["losses"]), np.asarray(r["losses"])
            cb = dict(base.get("clean_losses", []))
            cq = dict(r.get("clean_losses", []))
            steps = [s for s in cq if s in cb and r["phases"][s - 1] == "qat"]
            if steps:
                row["clean_loss_ape_qat_pct"] = float(100 * np.mean(
                    [abs(cq[s] - cb[s]) / cb[s] for s in steps]))
            if qat and len(lb) == len(lq):
                row["loss_ape_qat_pct"] = float(100 * np.mean(np.abs(lq[qat] - lb[qat])
                                                               / lb[qat]))
                row["loss_ape_all_pct"] = float(100 * np.mean(np.abs(lq - lb) / lb))
            if r.get("eval_items") and base.get("eval_items"):
                row["acc_diff_vs_baseline"] = {
                    task: paired_bootstrap(r["eval_items"][task], base["eval_items"][task])
                    for task in r["eval_items"] if task in base["eval_items"]}
        out["variants"][name] = row
    return out


def plot_ablation(out_dir: str, path: Optional[str] = None) -> str:
    """Figure of an ablation run (needs matplotlib): training loss, clean-weight loss
    relative to the baseline (dotted lines: WinQ resets), and the last Hessian
    spectral density of every variant. Returns the PNG's path (``out_dir/winq_ablation.png``).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plot_ablation needs matplotlib: pip install matplotlib") from e
    summary = _read_json(os.path.join(out_dir, "results.json"))
    names = list(summary["variants"])
    res = {n: _read_json(os.path.join(out_dir, n, "result.json")) for n in names}
    colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.2))

    def ema(x, a=0.1):
        out, m = [], x[0]
        for v in x:
            m = (1 - a) * m + a * v
            out.append(m)
        return out

    base = dict(res[summary["baseline"]].get("clean_losses", []))
    for n in names:
        r = res[n]
        ax[0].plot(range(1, len(r["losses"]) + 1), ema(r["losses"]), color=colors[n], label=n)
        clean = [(s, c) for s, c in r.get("clean_losses", []) if s in base]
        if n != summary["baseline"] and clean:
            ax[1].plot([s for s, _ in clean], [100 * (c - base[s]) / base[s] for s, c in clean],
                       "o-", color=colors[n], label=n)
            for step in r["resets"]:
                ax[1].axvline(step, color=colors[n], lw=0.5, ls=":")
        lines = _read_jsonl(os.path.join(out_dir, n, "hessian.jsonl"))
        if lines:
            h = lines[-1]
            dens = np.maximum(np.array(h["density"], dtype=float), 1e-9)
            ax[2].semilogy(h["grid"], dens, color=colors[n],
                           label=f"{n} (top {h['top'][0]:.1f}, step {h['step']})")
    ax[0].set(title="training loss (EMA 0.1; noise variants: at w + eps)", xlabel="step")
    ax[1].axhline(0, color="k", lw=0.5)
    ax[1].set(title=f"clean-weight loss vs {summary['baseline']}, %", xlabel="step")
    ax[2].set(title="Hessian spectral density (SLQ, last probe)", xlabel="eigenvalue",
              ylim=(1e-6, None))
    for a in ax:
        a.legend(fontsize=8)
    fig.tight_layout()
    png = path or os.path.join(out_dir, "winq_ablation.png")
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path, "r", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def main(argv=None) -> int:
    """``python -m hif8qat.winq [CONFIG.toml] [OUT_DIR] [--only a,b] [--no-eval]``"""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m hif8qat.winq",
                                 description="Run the WinQ ablation (plain QAT vs WinQ).")
    ap.add_argument("config", nargs="?", default=None)
    ap.add_argument("out_dir", nargs="?", default="runs/winq_ablation")
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--plot", action="store_true", help="also write winq_ablation.png")
    a = ap.parse_args(argv)
    res = run_ablation(a.config, a.out_dir, a.only.split(",") if a.only else None,
                       evaluate=not a.no_eval)
    print(json.dumps({n: {k: v for k, v in r.items() if k != "hessian"}
                      for n, r in res["variants"].items()}, indent=1))
    if a.plot:
        print("figure:", plot_ablation(a.out_dir))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
