"""``hif8qat eval MODEL_DIR --tasks a,b``: score a model on benchmarks from the shell.

``MODEL_DIR`` is a Hugging Face directory (config.json + safetensors), a HiF8 export
(``hq.export_hif8``), or a training run directory (its latest checkpoint, with the
run's scaler states). ``--precision``: ``bf16`` (default), ``fp32`` or ``hif8``; HiF8
needs scales: a run directory or HiF8 export has them, a plain checkpoint is calibrated
first on ``--calibrate-data`` (a text file, or a .npy token array).

    hif8qat eval ckpt/ --tasks world_knowledge,world_reasoning --precision hif8 \\
        --calibrate-data corpus.txt --limit 500 --out results.json

Prints the harness-style table; ``--out`` writes every metric plus the per-item scores
(the format :mod:`hif8qat.experiments.report` reads, so two such files can be compared
item by item).
"""
from __future__ import annotations

import argparse
import os
import sys

from . import report as rep

PRECISIONS = ("bf16", "fp32", "hif8")


def _calibration_batches(path, tokenizer, seq_len, batch_size):
    import numpy as np

    from hif8qat.ptq import text_batches
    if path.endswith(".npy"):
        arr = np.load(path, allow_pickle=False)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"--calibrate-data {path}: expected integer tokens, got {arr.dtype}")
        arr = arr.reshape(-1)
        per = seq_len * batch_size
        n = arr.size // per
        if n == 0:
            raise ValueError(f"--calibrate-data {path}: {arr.size} tokens, fewer than one "
                             f"batch of {batch_size} x {seq_len}")
        return [arr[i * per:(i + 1) * per].reshape(batch_size, seq_len).astype(np.int64)
                for i in range(n)]
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise ValueError(f"--calibrate-data {path}: not UTF-8 text (give a .txt or .npy)") \
            from None
    return list(text_batches(text, tokenizer, seq_len=seq_len, batch_size=batch_size))


def load_for_eval(model_dir, precision="bf16", calibrate_data=None, calibrate_steps=8,
                  calibrate_seq_len=256, calibrate_batch_size=8):
    """``(model, tokenizer, how)`` ready to evaluate in ``precision``; ``how`` says where
    the weights (and scales) came from."""
    from hif8qat.eval import load_tokenizer
    from hif8qat.model import load_model
    from hif8qat.ptq import calibrate, is_hif8_checkpoint, load_hif8

    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"MODEL_DIR {model_dir} is not a directory")
    has_scales = False
    if os.path.isdir(os.path.join(model_dir, "checkpoints")):
        model, config = rep.load_trained_model(model_dir)
        weights_dir = rep._model_dir_of(model_dir)
        has_scales = config.precision == "hif8"
        how = f"training run ({config.precision}), latest checkpoint"
    elif is_hif8_checkpoint(model_dir):
        model = load_hif8(model_dir, precision="hif8")
        weights_dir, has_scales, how = model_dir, True, "HiF8 export"
    elif os.path.isfile(os.path.join(model_dir, "config.json")):
        model = load_model(model_dir)
        weights_dir, how = model_dir, "checkpoint"
    else:
        raise FileNotFoundError(f"{model_dir}: neither a model directory (config.json), a "
                                "HiF8 export nor a training run (checkpoints/)")
    tokenizer = load_tokenizer(weights_dir)
    if precision == "hif8":
        if calibrate_data is not None:
            if not os.path.isfile(calibrate_data):
                raise FileNotFoundError(f"--calibrate-data {calibrate_data}: no such file")
            batches = _calibration_batches(calibrate_data, tokenizer, calibrate_seq_len,
                                           calibrate_batch_size)
            if len(batches) < calibrate_steps:
                raise ValueError(f"--calibrate-data holds {len(batches)} batches of "
                                 f"{calibrate_batch_size} x {calibrate_seq_len} tokens, fewer "
                                 f"than --calibrate-steps {calibrate_steps}")
            calibrate(model, batches, steps=calibrate_steps, precision="bf16", reset=True)
            how += f", calibrated on {calibrate_steps} batches of {calibrate_data}"
        elif not has_scales:
            raise ValueError("--precision hif8 needs scales: pass --calibrate-data FILE "
                             "(text or .npy tokens) to calibrate this checkpoint, or give a "
                             "hif8 training run directory or a HiF8 export")
        for s in model.scalers:
            s.frozen = False
    model.set_precision(precision)
    model.calibrating = False
    return model, tokenizer, how


def main_eval(argv=None) -> int:
    """``hif8qat eval MODEL_DIR --tasks a,b [--precision bf16|fp32|hif8] [--calibrate-data
    FILE] [--num-fewshot N] [--limit N] [--batch-size N] [--out results.json]``."""
    parser = argparse.ArgumentParser(
        prog="hif8qat eval",
        description="Evaluate a model directory (HF checkpoint, HiF8 export or training run) "
                    "on multiple-choice tasks, scored as lm-evaluation-harness scores them.")
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument("--tasks", required=True,
                        help="comma-separated task names or FORMAT:PATH specs "
                             "(e.g. world_knowledge,arc:/data/ARC-Challenge-Test.jsonl)")
    parser.add_argument("--precision", default="bf16", help="bf16 (default), fp32 or hif8")
    parser.add_argument("--calibrate-data", default=None, metavar="FILE",
                        help="hif8: calibrate the scalers on this text (.txt) or tokens (.npy)")
    parser.add_argument("--calibrate-steps", type=int, default=8, help="calibration batches")
    parser.add_argument("--calibrate-seq-len", type=int, default=256)
    parser.add_argument("--num-fewshot", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="items per (sub)task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=None, help="write metrics and per-item scores (JSON)")
    parser.add_argument("--no-progress", action="store_true")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    for name in ("calibrate_steps", "calibrate_seq_len", "batch_size"):
        if getattr(args, name) < 1:
            return rep._usage_error("eval", f"--{name.replace('_', '-')} must be >= 1")
    if args.num_fewshot < 0:
        return rep._usage_error("eval", "--num-fewshot must be >= 0")
    if args.limit is not None and args.limit < 1:
        return rep._usage_error("eval", "--limit must be >= 1")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        return rep._usage_error("eval", "--tasks is empty")
    try:
        from hif8qat.eval import load_task
        for t in tasks:
            load_task(t)
        model, tok, how = load_for_eval(args.model_dir, args.precision, args.calibrate_data,
                                        args.calibrate_steps, args.calibrate_seq_len)
        out = rep.evaluate_model(model, tok, tasks, args.out, num_fewshot=args.num_fewshot,
                                 limit=args.limit, batch_size=args.batch_size,
                                 progress=not args.no_progress, desc="eval",
                                 extra={"model_dir": os.path.abspath(args.model_dir),
                                        "loaded": how})
    except (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError) as e:
        return rep._usage_error("eval", e)
    print(f"{args.model_dir} ({how}), precision {args.precision}, {args.num_fewshot}-shot"
          f"{'' if args.limit is None else f', limit {args.limit}'}, "
          f"{out['wall_time_s']:.1f} s")
    print(f"{'task':<28} {'n':>6} {'acc':>8} {'± stderr':>9} {'acc_norm':>9}")
    for key, m in out["tasks"].items():
        norm = "-" if m.get("acc_norm") is None else f"{m['acc_norm']:.4f}"
        print(f"{key:<28} {m['n']:>6} {m['acc']:>8.4f} {m['acc_stderr']:>9.4f} {norm:>9}")
    if args.out:
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_eval())
