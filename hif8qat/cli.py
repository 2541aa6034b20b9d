"""The ``hif8qat`` command line (also ``python -m hif8qat``).

Each subcommand lives with its concern; this file only parses and dispatches, and turns
user errors into one-line messages with exit status 2.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _code_table() -> str:
    from .format import hif8_values
    v = hif8_values()
    lines = ["HiF8 code table: value of code 0xRC (row R = high nibble, column C = low nibble)",
             "     " + "".join(f"{c:>12X}" for c in range(16))]
    for r in range(16):
        cells = []
        for c in range(16):
            x = float(v[r * 16 + c])
            cells.append(f"{x:>12.6g}")
        lines.append(f"  {r:X}_  " + "".join(cells))
    lines.append("0x00 = 0 (the only zero), 0x80 = NaN, 0x6F/0xEF = ±Inf, 0x6E = 32768 (largest finite), "
                 "0x01 = 2^-22 (smallest positive)")
    return "\n".join(lines)


def _sqnr_db(x: np.ndarray, y: np.ndarray) -> float:
    x64, e = x.astype(np.float64), (y.astype(np.float64) - x.astype(np.float64))
    num, den = float(np.sum(x64 * x64)), float(np.sum(e * e))
    return float("inf") if den == 0 else 10.0 * np.log10(num / den)


def error_report(n: int = 1 << 20, seed: int = 0, fmax: float = 15.0) -> list[dict]:
    """Fake-quantization error of random data at a few scales: the scale from the
    tensor's own amax (what delayed scaling converges to), an amax estimate lagging 2x
    behind (amax saturation), and no scaling at all."""
    from .format import fake_quant
    rng = np.random.default_rng(seed)
    rows = []
    for dist in ("normal", "laplace"):
        base = rng.standard_normal(n) if dist == "normal" else rng.laplace(size=n)
        for magnitude in (1e-4, 1.0, 1e3):
            x = (base * magnitude).astype(np.float32)
            amax = float(np.abs(x).max())
            for label, scale, clip in (("amax->fmax", fmax / amax, fmax),
                                       ("est. amax/2", 2 * fmax / amax, fmax),
                                       ("unscaled", 1.0, None)):
                y, st = fake_quant(x, scale, clip=clip, return_stats=True)
                rows.append(dict(data=f"{dist} σ={magnitude:g}", scaling=label, scale=scale,
                                 sqnr_db=_sqnr_db(x, y), clipped=st.clipped_fraction,
                                 zero_flushed=st.zero_flushed_fraction))
    return rows


def cmd_inspect(args) -> int:
    from . import format as fmt
    if args.file:
        from .inspect_file import inspect_file  # checkpoints: added with the model issue
        print(inspect_file(args.file))
        return 0
    print(_code_table())
    print()
    print(f"ISA path: {fmt.get_isa()} (available: {', '.join(fmt.available_isas())}); "
          f"threads: {fmt.get_num_threads()}")
    print()
    print(f"Fake-quantization error report ({args.n} elements, fmax 15, clip at fmax when scaled):")
    print(f"{'data':<18} {'scaling':<12} {'scale':>10} {'SQNR dB':>8} {'clipped':>9} {'zero-flushed':>13}")
    for r in error_report(args.n, args.seed):
        print(f"{r['data']:<18} {r['scaling']:<12} {r['scale']:>10.3g} {r['sqnr_db']:>8.2f} "
              f"{r['clipped']:>9.2%} {r['zero_flushed']:>13.2%}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hif8qat", description="HiF8 W8A8 QAT with delayed tensor scaling")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    pi = sub.add_parser("inspect", help="the HiF8 code table and a fake-quantization error report "
                                        "(or, given FILE, a checkpoint's tensors and scaler states)")
    pi.add_argument("file", nargs="?", help="a model/run directory or a .safetensors file")
    pi.add_argument("--n", type=int, default=1 << 20, help="elements of random data (default 2^20)")
    pi.add_argument("--seed", type=int, default=0)
    pi.set_defaults(func=cmd_inspect)
    for name, (module, func, text) in DELEGATED.items():
        sp = sub.add_parser(name, help=text, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(func=_delegate(module, func))
    return p


# Subcommands whose parsing lives with their concern: (module, function, help).
DELEGATED = {
    "demo": ("hif8qat.experiments.demo", "main_demo",
             "the paper in miniature on the embedded world (--quick for a tiny run)"),
    "train": ("hif8qat.train", "main_train", "train from a TOML config (--resume RUN_DIR)"),
    "eval": ("hif8qat.experiments.eval_cli", "main_eval", "evaluate a model directory on tasks"),
    "ablate": ("hif8qat.experiments.ablate", "main_ablate", "run a grid of training runs from a TOML grid"),
    "report": ("hif8qat.experiments.report", "main_report", "the comparison table of run directories"),
    "world": ("hif8qat.world", "main_world", "generate the embedded benchmark world"),
}


def _run_delegated(command: str, rest: list) -> int:
    import importlib
    module, func, _ = DELEGATED[command]
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        print(f"hif8qat {command}: not available in this build ({e})", file=sys.stderr)
        return 2
    try:
        return int(fn(rest) or 0)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2


def _delegate(module: str, func: str):
    command = next(k for k, v in DELEGATED.items() if v[0] == module and v[1] == func)
    return lambda args: _run_delegated(command, list(args.rest))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        # hand the rest over untouched (argparse's REMAINDER would swallow "--help")
        return _run_delegated(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "inspect" and args.n < 1:
        parser.error("--n must be >= 1")
    try:
        return int(args.func(args) or 0)
    except SystemExit as e:  # argparse inside a subcommand: keep its status (2 on bad usage)
        return e.code if isinstance(e.code, int) else 2
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        print(f"hif8qat {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
