"""Tokens/s of one training step's forward + backward, per precision, and PyTorch eager fp32.

The ~10M-parameter config of the model issue: hidden 384, intermediate 1024, 6 layers,
6 heads, 2 KV heads, vocab 256, seq 256, batch 8. Modes:

* fp32 — NumPy float32 matmuls (the reference path);
* bf16 — every projection through hq.gemm with bf16 operands (the BF16 baseline);
* hif8 — W8A8 codes GEMMs with delayed scaling (after one calibrating bf16 step, and
  including the once-per-step ScalerGroup.update(), as a training loop runs it);
* hif8g — hif8 with the output gradients cast too (quantize_grads, nearest; not in the
  default modes: `--modes bf16,hif8,hif8g`);
* torch — transformers' LlamaForCausalLM, eager attention, fp32, same weights, same
  number of threads (when torch and transformers are installed).

Bars from the issue: hif8 >= 0.8x bf16, and bf16 >= 1.0x torch eager fp32.
Timings are medians of --repeats steps after one warm-up step; modes are interleaved
per repeat so machine noise hits them alike. Ratios are only meaningful within a run.

    python benchmarks/bench_step.py            # the 10M config
    python benchmarks/bench_step.py --quick    # a small config, a few seconds
    python benchmarks/bench_step.py --profile  # where the time goes (per layer type)
    python benchmarks/bench_step.py --baseline /tmp/old_checkout   # before/after

--baseline DIR runs the same modes from another built checkout (say, the commit before
a change: `git archive OLD | tar -x -C DIR && cd DIR && python setup.py build_ext
--inplace`) in a subprocess, one step at a time between this checkout's steps, so
both see the same machine load; its rows are named "base-<mode>". The cpu column is
this process's (or the subprocess's) CPU time per step: on a loaded machine it tracks
the work done better than the wall time (for torch it also counts spinning threads).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

if __name__ == "__main__" and "--serve" in sys.argv:   # a --baseline checkout's package
    sys.path.insert(0, sys.argv[sys.argv.index("--serve") + 1])
import hif8qat as hq  # noqa: E402


def make_config(quick):
    if quick:
        return hq.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=384,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              rope_theta=4e6, max_position_embeddings=256), 4, 64
    return hq.LlamaConfig(vocab_size=256, hidden_size=384, intermediate_size=1024,
                          num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
                          rope_theta=4e6, max_position_embeddings=256), 8, 256


def ours_step(model, tokens, targets, precision):
    def step():
        model.set_precision(precision)
        model.forward(tokens, targets)
        model.backward()
        if precision == "hif8":
            model.scalers.update()
    return step


def torch_step(model_dir, tokens, targets, threads):
    import torch
    import transformers
    torch.set_num_threads(threads)
    hf = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                       attn_implementation="eager")
    hf.train()
    x, y = torch.from_numpy(tokens), torch.from_numpy(targets)
    V = hf.config.vocab_size

    def step():
        hf.zero_grad(set_to_none=False)
        logits = hf(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        loss.backward()
    return step


def profile(model, tokens, targets, precision):
    """Wall time per function of llama.py / linear.py over one step (a rough breakdown)."""
    import cProfile
    import pstats
    model.set_precision(precision)
    pr = cProfile.Profile()
    pr.enable()
    model.forward(tokens, targets)
    model.backward()
    pr.disable()
    st = pstats.Stats(pr)
    rows = []
    for (file, line, fn), (_, _, tt, ct, _) in st.stats.items():
        if file.endswith(("llama.py", "linear.py")) and not fn.startswith("<"):
            rows.append((ct, fn if fn != "piece" else f"piece (llama.py:{line})"))
        elif fn.startswith("<built-in method hif8qat._C."):     # the C kernels themselves
            rows.append((ct, "C " + fn[len("<built-in method hif8qat._C."):-1]))
    print(f"\nprofile ({precision}), cumulative seconds per function:")
    for ct, fn in sorted(rows, reverse=True)[:20]:
        print(f"  {fn:28s} {ct * 1e3:9.1f} ms")


def serve(args):
    """--baseline's subprocess: the same model and batch with this sys.path's hif8qat;
    reads a mode per line, runs one step, answers "wall_s cpu_s"."""
    cfg, B, T = make_config(args.quick)
    hq.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets = rng.integers(0, cfg.vocab_size, size=(B, T))
    model = hq.LlamaModel.from_config(cfg, seed=0)
    modes = [m for m in args.modes.split(",") if m]
    steps = {m: ours_step(model, tokens, targets, m) for m in modes}
    if "hif8" in steps:
        hq.calibrate(model, tokens, precision="bf16")   # as the BF16 warm-up would
    for fn in steps.values():
        fn()
    print("ready", os.path.dirname(hq.__file__), flush=True)
    for line in sys.stdin:
        t0, c0 = time.perf_counter(), time.process_time()
        steps[line.strip()]()
        print(time.perf_counter() - t0, time.process_time() - c0, flush=True)


def start_baseline(path, args, threads, modes):
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", os.path.abspath(path),
           "--threads", str(threads), "--modes", ",".join(modes)] + (["--quick"] if args.quick else [])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = proc.stdout.readline().split()
    if not ready or ready[0] != "ready":
        raise RuntimeError(f"--baseline {path}: the subprocess did not start ({cmd})")
    print(f"baseline: hif8qat from {ready[1]}")

    def step(mode):
        proc.stdin.write(mode + "\n")
        proc.stdin.flush()
        wall, cpu = proc.stdout.readline().split()
        return float(wall), float(cpu)
    return proc, step


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small config, 3 repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--modes", default="fp32,bf16,hif8,torch")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for hq and torch (default: hq.get_num_threads())")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="also time these modes from another built checkout, interleaved")
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args)
    cfg, B, T = make_config(args.quick)
    repeats = args.repeats or (3 if args.quick else 5)
    threads = args.threads or hq.get_num_threads()
    hq.set_num_threads(threads)
    modes = [m for m in args.modes.split(",") if m]
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets = rng.integers(0, cfg.vocab_size, size=(B, T))
    model = hq.LlamaModel.from_config(cfg, seed=0)
    print(f"config: hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, layers "
          f"{cfg.num_hidden_layers}, heads {cfg.num_attention_heads}/{cfg.num_key_value_heads}, "
          f"vocab {cfg.vocab_size}; {model.num_parameters / 1e6:.2f}M params; batch {B} x seq "
          f"{T}; threads {threads}; isa {hq.get_isa()}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")

    has_gemm = hasattr(hq, "gemm")
    steps = {}
    for m in modes:
        if m in ("bf16", "hif8", "hif8g") and not has_gemm:
            print(f"skip {m}: hq.gemm not built")
            continue
        if m == "torch":
            if not all(importlib.util.find_spec(p) for p in ("torch", "transformers")):
                print("skip torch: torch/transformers not installed")
                continue
            tmp = tempfile.mkdtemp(prefix="bench_step_")
            model.save(tmp)
            steps[m] = torch_step(tmp, tokens, targets, threads)
        elif m == "hif8g":   # hif8 with output-gradient quantization (quantize_grads)
            gmodel = hq.LlamaModel.from_config(cfg, seed=0)
            gmodel.configure_grad_quantization(enabled=True)
            # one calibrating BF16 step: hq.calibrate only runs forwards, and the
            # grad_output scalers observe dY in the backward
            gmodel.set_precision("bf16")
            gmodel.calibrating = True
            gmodel.forward(tokens, targets)
            gmodel.backward()
            gmodel.calibrating = False
            gmodel.scalers.update()
            steps[m] = ours_step(gmodel, tokens, targets, "hif8")
        else:
            steps[m] = ours_step(model, tokens, targets, m)
    if "hif8" in steps:
        hq.calibrate(model, tokens, precision="bf16")   # as the BF16 warm-up would
    base_modes = [m for m in steps if m not in ("torch", "hif8g")] if args.baseline else []
    proc, base_step = (start_baseline(args.baseline, args, threads, base_modes)
                       if base_modes else (None, None))

    names = list(steps) + [f"base-{m}" for m in base_modes]
    times, cpus = {m: [] for m in names}, {m: [] for m in names}
    for fn in steps.values():
        fn()                                     # warm-up
    for _ in range(repeats):
        for m, fn in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[m].append(time.perf_counter() - t0)
            cpus[m].append(time.process_time() - c0)
            if m in base_modes:
                wall, cpu = base_step(m)
                times[f"base-{m}"].append(wall)
                cpus[f"base-{m}"].append(cpu)
    if proc is not None:
        proc.stdin.close()
        proc.wait()

    med = {m: statistics.median(t) for m, t in times.items()}
    cpu = {m: statistics.median(t) for m, t in cpus.items()}
    ref = "bf16" if "bf16" in med else next(iter(med))
    print(f"\n{'mode':10s} {'ms/step':>10s} {'cpu ms':>9s} {'tokens/s':>10s} {'vs ' + ref:>9s}"
          f"{'  vs torch' if 'torch' in med else ''}")
    for m, t in med.items():
        line = f"{m:10s} {t * 1e3:10.1f} {cpu[m] * 1e3:9.0f} {B * T / t:10.0f} {med[ref] / t:9.2f}"
        if "torch" in med:
            line += f" {med['torch'] / t:9.2f}"
        print(line)
    if "hif8" in med and "bf16" in med:
        r = med["bf16"] / med["hif8"]
        print(f"\nbar hif8 >= 0.8x bf16: {r:.2f}x  {'MET' if r >= 0.8 else 'NOT MET'}")
    if "bf16" in med and "torch" in med:
        r = med["torch"] / med["bf16"]
        print(f"bar bf16 >= 1.0x torch eager fp32: {r:.2f}x  {'MET' if r >= 1.0 else 'NOT MET'}")
    if args.profile:
        for m in steps:
            if m != "torch":
                profile(model, tokens, targets, m)


if __name__ == "__main__":
    main()
