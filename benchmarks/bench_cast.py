"""Throughput of the HiF8 casts against the memory-bandwidth yardstick and ml_dtypes.

    python benchmarks/bench_cast.py [--quick]

For 1M and 16M float32 elements: to_hif8, from_hif8, fake_quant beside (a) a NumPy copy
of the array (same bytes moved as fake_quant: 4 in, 4 out) and (b) ml_dtypes'
x.astype(float8_e4m3fn).astype(float32) round trip, plus en_dtypes' hifloat8 round trip
(the like-for-like HiF8 baseline) when installed. Bars (issue 2), at 16M: fake_quant at
least 5x faster than the ml_dtypes round trip and within 1.25x of the copy time.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _util import best_time, environment_line  # noqa: E402

import hif8qat as hq  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1M elements only, fewer repeats")
    args = ap.parse_args()
    sizes = [1 << 20] if args.quick else [1 << 20, 1 << 24]
    print(f"# bench_cast: ISA {hq.get_isa()}, threads {hq.get_num_threads()}; {environment_line()}")
    try:
        import ml_dtypes
    except ImportError:
        ml_dtypes = None
    try:
        import en_dtypes
    except ImportError:
        en_dtypes = None
    for n in sizes:
        rng = np.random.default_rng(0)
        x = rng.standard_normal(n).astype(np.float32)
        codes = hq.to_hif8(x, 4.0)
        out = np.empty_like(x)
        rows = {}
        rows["numpy copy (yardstick)"] = best_time(lambda: np.copyto(out, x))
        # for context: a copy into a new array also pays the kernel's zeroing of fresh pages
        rows["numpy x.copy() (new array)"] = best_time(lambda: x.copy())
        rows["hq.to_hif8"] = best_time(lambda: hq.to_hif8(x, 4.0))
        rows["hq.from_hif8"] = best_time(lambda: hq.from_hif8(codes, 0.25))
        rows["hq.fake_quant"] = best_time(lambda: hq.fake_quant(x, 4.0, clip=15.0))
        rows["hq.fake_quant (return_stats)"] = best_time(lambda: hq.fake_quant(x, 4.0, clip=15.0, return_stats=True))
        rows["hq.fake_quant (stochastic)"] = best_time(lambda: hq.fake_quant(x, 4.0, clip=15.0, rounding="stochastic"))
        if ml_dtypes is not None:
            rows["ml_dtypes e4m3fn round trip"] = best_time(
                lambda: x.astype(ml_dtypes.float8_e4m3fn).astype(np.float32), repeat=3)
        if en_dtypes is not None:
            rows["en_dtypes hifloat8 round trip"] = best_time(
                lambda: x.astype(en_dtypes.hifloat8).astype(np.float32), repeat=3)
        copy, fq = rows["numpy copy (yardstick)"], rows["hq.fake_quant"]
        print(f"\n{n:,} float32 elements")
        print(f"{'operation':<32} {'ms':>9} {'Gelem/s':>9} {'time / copy':>12} {'time / fake_quant':>18}")
        for k, t in rows.items():
            print(f"{k:<32} {t * 1e3:>9.3f} {n / t / 1e9:>9.3f} {t / copy:>12.2f} {t / fq:>18.2f}")
        if ml_dtypes is not None and n == 1 << 24:  # the bars are set at 16M elements
            print(f"bar: fake_quant vs ml_dtypes round trip: {rows['ml_dtypes e4m3fn round trip'] / fq:.1f}x faster "
                  f"(need >= 5x); vs copy: {fq / copy:.2f}x the copy time (need <= 1.25x)")


if __name__ == "__main__":
    main()
