"""GEMM throughput: HiF8 codes, fused qlinear and bf16 against NumPy (and torch) float32/bf16.

    python benchmarks/bench_gemm.py [--quick] [--repeat 3] [--threads N]
                                    [--wait-policy passive|active|env]

For each (M, K, N) shape of a linear layer y = x·Wᵀ (x (M,K), W (N,K)) and each of its
three products — fwd x·Wᵀ, dX dy·W, dW dyᵀ·x — in the same run:
  hif8        hq.gemm on HiF8 codes: fwd codes×codes; backward bf16 dy × codes (the
              W8A8 backward: dy·Ŵ, dyᵀ·X̂)
  hif8 packed fwd with W pre-packed (hq.pack_weight), as in evaluation
  qlinear     fwd only: hq.qlinear, float32 activations in (cast fused), W codes
  bf16        hq.gemm on float32 operands rounded to bf16
  numpy       NumPy float32 matmul as this environment runs it (OPENBLAS_CORETYPE as set)
  numpy-unset the same in a subprocess with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset
  torch-bf16  torch.matmul on bfloat16 tensors, if torch is installed
GFLOP/s = 2·M·N·K / best time over the repeats (variants take turns within each repeat,
so load changes on a shared machine hit all alike). "%peak" is a fraction of the bf16
dot-product peak of the reference 2-core machine (745 GFLOP/s,
shared/docs/performance-yardsticks.md). The issue's bars (forward, every shape): hif8
and bf16 >= 2x numpy and >= 1.2x numpy-unset; qlinear >= 1.5x numpy.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SHAPES = [(2048, 1024, 1024), (2048, 1024, 4096), (2048, 4096, 1024), (2048, 1536, 6144),
          (2048, 6144, 1536)]
QUICK_SHAPES = [(512, 1024, 1024), (512, 1024, 4096)]
PEAK = 745.0


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small shapes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--wait-policy", choices=["passive", "active", "env"], default="env",
                    help="OMP_WAIT_POLICY for the C kernels (env: leave as set)")
    ap.add_argument("--shapes", default=None, help="e.g. 2048x1024x1024,512x512x512 (MxKxN)")
    ap.add_argument("--numpy-only", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args()


args = parse_args()
if args.wait_policy != "env":  # libgomp reads it when the extension loads
    os.environ["OMP_WAIT_POLICY"] = args.wait_policy.upper()

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def shapes():
    if args.shapes:
        return [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    return QUICK_SHAPES if args.quick else SHAPES


def best_times(rows, repeat):
    """Best seconds per variant; variants take turns within each repeat. A variant whose
    warm-up call took over 2 s (torch bf16 without AVX512-BF16) is timed by that call."""
    times = {}
    for name, fn in rows:
        t0 = time.perf_counter()
        fn()  # warm up: page faults, thread pools
        t = time.perf_counter() - t0
        times[name] = t if t > 2.0 else float("inf")
    for _ in range(repeat):
        for name, fn in rows:
            if times[name] == float("inf") or times[name] <= 2.0:
                t0 = time.perf_counter()
                fn()
                times[name] = min(times[name], time.perf_counter() - t0)
    return times


_torch_probe = {}


def torch_too_slow(torch, product, M, K, N, limit_s=20.0):
    """torch's bf16 matmul without AVX512-BF16 can run at well under 1 GFLOP/s; estimate
    each product's time from a 512^3 probe of the same transposition and skip it past
    limit_s."""
    if product not in _torch_probe:
        a = torch.ones(512, 512, dtype=torch.bfloat16)
        f = {"fwd": lambda: torch.matmul(a, a.T), "dX": lambda: torch.matmul(a, a),
             "dW": lambda: torch.matmul(a.T, a)}[product]
        f()
        t0 = time.perf_counter()
        f()
        _torch_probe[product] = (time.perf_counter() - t0) / (2.0 * 512 ** 3)
    return _torch_probe[product] * 2.0 * M * N * K * (args.repeat + 1) > limit_s


def numpy_rows(M, K, N, rng):
    x = rng.standard_normal((M, K), dtype=np.float32)
    W = rng.standard_normal((N, K), dtype=np.float32)
    dy = rng.standard_normal((M, N), dtype=np.float32)
    return {"fwd": lambda: x @ W.T, "dX": lambda: dy @ W, "dW": lambda: dy.T @ x}


def numpy_only():
    """Subprocess mode: NumPy timings as JSON on stdout."""
    rng = np.random.default_rng(0)
    res = {}
    for M, K, N in shapes():
        rows = numpy_rows(M, K, N, rng)
        t = best_times(list(rows.items()), args.repeat)
        res[f"{M}x{K}x{N}"] = t
    print(json.dumps(res))


def main():
    import hif8qat as hq

    if args.threads:
        hq.set_num_threads(args.threads)
    nt = hq.get_num_threads()
    try:
        import torch
        torch.set_num_threads(nt)
    except ImportError:
        torch = None
    gemm_mod = sys.modules["hif8qat.gemm"]
    print(f"cpu: {platform.processor() or platform.machine()}, isa={hq.get_isa()}, "
          f"gemm kernel={gemm_mod.get_kernel()}, threads={nt}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp: spin, then sleep)')}")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}, "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', 'unset')}, "
          f"numpy {np.__version__}, torch {torch.__version__ if torch else 'not installed'}, "
          f"repeat={args.repeat} (best of)")

    # NumPy with the OpenBLAS variables unset, in its own process of this run
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    cmd = [sys.executable, __file__, "--numpy-only", "--repeat", str(args.repeat)]
    if args.quick:
        cmd.append("--quick")
    if args.shapes:
        cmd += ["--shapes", args.shapes]
    sub = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    unset = json.loads(sub.stdout.strip().splitlines()[-1])

    rng = np.random.default_rng(0)
    print()
    hdr = (f"{'M x K x N':>17} {'product':>7} {'variant':<12} {'ms':>8} {'GFLOP/s':>8} "
           f"{'%peak':>6} {'x numpy':>8} {'x np-unset':>10}")
    print(hdr)
    print("-" * len(hdr))
    bars, skipped = [], []
    for M, K, N in shapes():
        flops = 2.0 * M * N * K
        x = rng.standard_normal((M, K), dtype=np.float32)
        W = (rng.standard_normal((N, K), dtype=np.float32) * 0.05)
        dy = rng.standard_normal((M, N), dtype=np.float32)
        x_scale = 15.0 / float(np.abs(x).max())
        w_scale = 15.0 / float(np.abs(W).max())
        xc, Wc = hq.to_hif8(x, x_scale), hq.to_hif8(W, w_scale)
        xs_inv, ws_inv = 1.0 / x_scale, 1.0 / w_scale
        Wp = hq.pack_weight(Wc, ws_inv, trans_b=True)
        npr = numpy_rows(M, K, N, rng)
        key = f"{M}x{K}x{N}"
        rows = {
            "fwd": [("hif8", lambda: hq.gemm(xc, Wc, trans_b=True, a_scale_inv=xs_inv,
                                             b_scale_inv=ws_inv)),
                    ("hif8 packed", lambda: hq.gemm(xc, Wp, a_scale_inv=xs_inv)),
                    ("qlinear", lambda: hq.qlinear(x, Wc, ws_inv, x_scale)),
                    ("bf16", lambda: hq.gemm(x, W, trans_b=True)),
                    ("numpy", npr["fwd"])],
            "dX": [("hif8", lambda: hq.gemm(dy, Wc, b_scale_inv=ws_inv)),
                   ("bf16", lambda: hq.gemm(dy, W)),
                   ("numpy", npr["dX"])],
            "dW": [("hif8", lambda: hq.gemm(dy, xc, trans_a=True, b_scale_inv=xs_inv)),
                   ("bf16", lambda: hq.gemm(dy, x, trans_a=True)),
                   ("numpy", npr["dW"])],
        }
        if torch is not None:
            tx, tW, tdy = (torch.from_numpy(v).to(torch.bfloat16) for v in (x, W, dy))
            for product, fn in [("fwd", lambda: torch.matmul(tx, tW.T)),
                                ("dX", lambda: torch.matmul(tdy, tW)),
                                ("dW", lambda: torch.matmul(tdy.T, tx))]:
                if torch_too_slow(torch, product, M, K, N):
                    skipped.append(f"torch-bf16 {key} {product}")
                else:
                    rows[product].append(("torch-bf16", fn))
        for product, prow in rows.items():
            t = best_times(prow, args.repeat)
            t["numpy-unset"] = unset[key][product]
            for name in [n for n, _ in prow] + ["numpy-unset"]:
                g = flops / t[name] / 1e9
                print(f"{key:>17} {product:>7} {name:<12} {t[name] * 1e3:8.2f} {g:8.1f} "
                      f"{100 * g / PEAK:5.1f}% {t['numpy'] / t[name]:8.2f} "
                      f"{t['numpy-unset'] / t[name]:10.2f}")
            if product == "fwd":
                for name, need_np, need_unset in [("hif8", 2.0, 1.2), ("bf16", 2.0, 1.2),
                                                  ("qlinear", 1.5, None)]:
                    r1 = t["numpy"] / t[name]
                    r2 = t["numpy-unset"] / t[name]
                    ok = r1 >= need_np and (need_unset is None or r2 >= need_unset)
                    bars.append((key, name, r1, r2, ok))
        print()
    if skipped:
        print("torch-bf16 skipped (estimated > 20 s from a 512^3 probe; bf16 matmul is "
              "slow on CPUs without AVX512-BF16): " + ", ".join(skipped))
    print("bars (forward): hif8, bf16 >= 2x numpy and >= 1.2x numpy-unset; qlinear >= 1.5x numpy")
    for key, name, r1, r2, ok in bars:
        print(f"  {key:>17} {name:<8} {r1:5.2f}x numpy {r2:5.2f}x np-unset  "
              f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    numpy_only() if args.numpy_only else main()
