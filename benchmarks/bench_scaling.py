"""Cost of delayed scaling over a bare HiF8 fake-quant, on activation-shaped tensors.

    python benchmarks/bench_scaling.py [--repeat 30] [--threads N]

Rows, for float32 (M, K) activations, all in the same run:
  numpy copy           x.copy(): one read + one write of the tensor, the memory floor
  hq.fake_quant        the codec's fused cast at a given scale and clip (the baseline)
  s.quantize           the scaler in steady state (history filled): one fused pass
  s.quantize+mask      the same, also returning the STE mask
  s.quantize_codes     codes + mask, what the W8A8 GEMM path uses
  s.quantize 1st use   empty history: an amax pass first (current scaling), then the cast
  s.observe            calibrate mode: the amax pass alone
The bar (issue 3): s.quantize at most 25 % slower than hq.fake_quant.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import hif8qat as hq  # noqa: E402


def bench(rows, repeat):
    """Median seconds per variant. The variants take turns within each repeat, so a
    change in machine load (CI runners are shared) hits all of them alike."""
    times = {name: [] for name, _ in rows}
    for name, fn in rows:
        fn()  # warm up (page faults of fresh outputs, thread pool start)
    for _ in range(repeat):
        for name, fn in rows:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return ({name: statistics.median(t) for name, t in times.items()},
            {name: min(t) for name, t in times.items()})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shapes", default="2048x1024,2048x4096")
    args = ap.parse_args()
    if args.threads:
        hq.set_num_threads(args.threads)
    print(f"isa={hq.get_isa()} threads={hq.get_num_threads()} repeat={args.repeat} "
          f"(median and best of the repeats; ratios from medians)")
    rng = np.random.default_rng(0)
    print(f"{'shape':>10} {'variant':<20} {'median ms':>9} {'best ms':>8} {'GB/s':>7} "
          f"{'vs fake_quant':>14}")
    for shape in args.shapes.split(","):
        m, k = (int(v) for v in shape.split("x"))
        x = (rng.standard_normal((m, k)) * 2.0).astype(np.float32)
        amax = float(np.abs(x).max())
        s = hq.DelayedScaler(window=64, name="bench")
        s.record_amax(amax * 0.9)  # a history slightly below the data: some clipping
        s.update()
        scale = s.scale

        def first_use():
            hq.DelayedScaler(window=64).quantize(x)

        def observe():
            s.observe(x)

        rows = [
            ("numpy copy", lambda: x.copy()),
            ("hq.fake_quant", lambda: hq.fake_quant(x, scale, clip=15.0)),
            ("s.quantize", lambda: s.quantize(x)),
            ("s.quantize+mask", lambda: s.quantize(x, return_mask=True)),
            ("s.quantize_codes", lambda: s.quantize_codes(x)),
            ("s.quantize 1st use", first_use),
            ("s.observe", observe),
        ]
        results, best = bench(rows, args.repeat)
        base = results["hq.fake_quant"]
        nbytes = 2 * x.nbytes  # read + write of one float32 tensor
        for name, t in results.items():
            print(f"{shape:>10} {name:<20} {t * 1e3:9.3f} {best[name] * 1e3:8.3f} "
                  f"{nbytes / t / 1e9:7.2f} {t / base:13.3f}x")
        overhead = results["s.quantize"] / base - 1.0
        overhead_best = best["s.quantize"] / best["hq.fake_quant"] - 1.0
        verdict = "meets" if overhead <= 0.25 else "MISSES"
        print(f"{shape:>10} scaler overhead over fake_quant: {overhead * 100:+.1f} % median, "
              f"{overhead_best * 100:+.1f} % best ({verdict} the 25 % bar)")


if __name__ == "__main__":
    main()
