"""PNG plots of runs (matplotlib is an optional extra, imported only here and lazily):

* ``loss.png`` per run: its training loss against its reference run's, step by step,
  the BF16 warm-up shaded;
* ``headroom.png`` per HiF8 run: per layer, the largest headroom of the layer's scalers
  per step (amax x scale / fmax; above 1 the delayed estimate lagged the data and the
  cast clipped), saturation events (steps with a clipped element) marked;
* ``hessian.png`` per run whose training probed the Hessian (``hessian_every``): the
  spectral density at each probe, later probes darker (the WinQ paper's quantity);
* ``accuracy.png`` and ``loss_curves.png`` for a whole table: accuracy per benchmark
  for every run, and every run's loss curve.

Example::

    from hif8qat.experiments import plots, report
    plots.plot_table(report.compare(["runs/demo"]), "runs/demo")
"""
from __future__ import annotations

import os
import re

from . import report as rep

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def have_matplotlib() -> bool:
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg", force=False)      # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path) -> str:
    """Write one figure to ``path`` and free it (pyplot keeps every open figure)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _losses(log):
    pts = [(r["step"], r["loss"]) for r in log
           if isinstance(r.get("loss"), (int, float)) and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_loss(run, reference=None, path=None) -> str:
    """The run's loss curve (and its reference's) -> ``RUN_DIR/loss.png``."""
    plt = _pyplot()
    run = run if isinstance(run, rep.RunData) else rep.load_run(run)
    if reference is not None and not isinstance(reference, rep.RunData):
        reference = rep.load_run(reference)
    path = path or os.path.join(run.path, "loss.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    warm = [r["step"] for r in run.log if r.get("phase") == "bf16_warmup"]
    if warm:
        ax.axvspan(min(warm) - 0.5, max(warm) + 0.5, color="0.9", label="BF16 warm-up")
    if reference is not None and reference.log:
        ax.plot(*_losses(reference.log), color="0.4", lw=1.2, label=f"{reference.label}")
    ax.plot(*_losses(run.log), color="C3", lw=1.2, label=run.label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/byte)")
    ax.set_title(f"{run.label}: loss" + (f" vs {reference.label}" if reference else ""))
    ax.legend()
    return _save(plt, fig, path)


def layer_headroom(log):
    """{layer: (steps, max headroom per step, steps with a clipped element)} from a
    log's scaler diagnostics (QAT and warm-up steps)."""
    out = {}
    for r in log:
        scalers = r.get("scalers")
        if not scalers:
            continue
        per_layer = {}
        for name, d in scalers.items():
            m = _LAYER.search(name)
            key = int(m.group(1)) if m else -1
            h = d.get("headroom")
            clipped = (d.get("clipped_fraction") or 0) > 0
            best, clip = per_layer.get(key, (None, False))
            if isinstance(h, (int, float)) and h > 0:   # 0 = nothing cast (warm-up)
                best = h if best is None else max(best, h)
            per_layer[key] = (best, clip or clipped)
        for key, (h, clip) in per_layer.items():
            steps, hs, sat = out.setdefault(key, ([], [], []))
            if h is not None:
                steps.append(r["step"])
                hs.append(h)
            if clip and r.get("phase") == "qat":
                sat.append((r["step"], h))
    return dict(sorted(out.items()))


def plot_headroom(run, path=None) -> str:
    """Per-layer headroom over time with the saturation events -> ``headroom.png``."""
    plt = _pyplot()
    run = run if isinstance(run, rep.RunData) else rep.load_run(run)
    path = path or os.path.join(run.path, "headroom.png")
    layers = layer_headroom(run.log)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (layer, (steps, hs, sat)) in enumerate(layers.items()):
        name = f"layer {layer}" if layer >= 0 else "other"
        ax.plot(steps, hs, lw=1.0, color=f"C{i % 10}", label=name)
        if sat:
            ax.scatter([s for s, _ in sat], [h for _, h in sat], marker="x", s=18,
                       color=f"C{i % 10}")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    n_events = sum(int(r.get("saturated") or 0) for r in run.log if r.get("phase") == "qat")
    ax.set_xlabel("step")
    ax.set_ylabel("max headroom of the layer's scalers")
    ax.set_title(f"{run.label}: headroom (x = saturation event; {n_events} events)")
    ax.set_yscale("log")
    if layers:
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_accuracy(table, path) -> str:
    """Accuracy per benchmark for every run of a table (grouped bars) -> ``path``."""
    plt = _pyplot()
    tasks = table.tasks
    rows = [r for r in table.rows if any(r.get(f"acc_{t}") is not None for t in tasks)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks) * max(1, len(rows)) / 3), 4))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(tasks))]
        ys = [r.get(f"acc_{t}") or 0.0 for t in tasks]
        ax.bar(xs, ys, width, label=r["label"], color=f"C{i % 10}")
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([rep._short(t) for t in tasks])
    ax.set_ylabel("accuracy %")
    ax.set_title(table.title or "accuracy per benchmark")
    ax.legend(fontsize=7, ncol=2)
    return _save(plt, fig, path)


def plot_loss_curves(table, path) -> str:
    """Every training run's loss curve in one plot -> ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(table.rows):
        run = rep.load_run(r["path"])
        if run.log:
            ax.plot(*_losses(run.log), lw=1.0, color=f"C{i % 10}", label=r["label"])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/byte)")
    ax.set_title("fine-tuning loss")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def read_hessian_log(run_dir) -> list:
    """The spectrum records of ``RUN_DIR/hessian.jsonl`` (step, grid, density, ...)."""
    import json
    path = os.path.join(run_dir, "hessian.jsonl")
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not JSON ({e})") from None
    return out


def plot_hessian_density(run_dir, path=None):
    """Spectral density over training -> ``RUN_DIR/hessian.png``; None without probes."""
    records = [r for r in read_hessian_log(run_dir) if r.get("grid") and r.get("density")]
    if not records:
        return None
    plt = _pyplot()
    path = path or os.path.join(run_dir, "hessian.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(records):
        shade = cmap(0.15 + 0.8 * i / max(1, len(records) - 1))
        ax.plot(r["grid"], r["density"], color=shade, lw=1.1,
                label=f"step {r.get('step')} ({r.get('phase', '')})")
    ax.set_yscale("log")
    top = max(max(r["density"]) for r in records)
    ax.set_ylim(top * 1e-6, top * 3)       # the Gaussian broadening's far tails say nothing
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("spectral density (SLQ)")
    ax.set_title(f"{os.path.basename(os.path.abspath(run_dir))}: Hessian spectrum over training")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_table(table, out_dir=None, log=print) -> list:
    """Every plot of a table: per run (loss, headroom) and, with ``out_dir``, accuracy
    and all loss curves. Returns the paths; [] (with a message) without matplotlib."""
    if not have_matplotlib():
        log("  plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    paths = []
    by_name = {r["name"]: r for r in table.rows}
    for r in table.rows:
        run = rep.load_run(r["path"])
        if not run.log:
            continue
        ref = rep.load_run(by_name[r["reference"]]["path"]) if r.get("reference") else None
        paths.append(plot_loss(run, ref))
        if r.get("precision") == "hif8":
            paths.append(plot_headroom(run))
        hessian = plot_hessian_density(run.path)
        if hessian:
            paths.append(hessian)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        paths.append(plot_accuracy(table, os.path.join(out_dir, "accuracy.png")))
        paths.append(plot_loss_curves(table, os.path.join(out_dir, "loss_curves.png")))
    return paths
