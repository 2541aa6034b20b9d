"""The HiF8 format from Python: casts, decoding, bf16 rounding, threads and ISA paths.

The numerics live in C (``csrc/hif8.c``); this module validates arguments and chooses
the arithmetic per input dtype (``../shared/docs/hif8-format.md``, "Arithmetic of a
scaled cast"): for float32 input the scale is rounded to float32, ``x * scale`` is a
float32 product and ``scale_inv = 1.0f / scale``; float64 input runs in float64 and is
rounded from its exact value, never through float32.

>>> import numpy as np, hif8qat as hq
>>> hq.to_hif8(np.array([1.0, 7.75, 15.5], np.float32))   # 1.0, 8.0, 16.0
array([ 8, 40, 64], dtype=uint8)
"""
from __future__ import annotations

import math
import os
import warnings
from typing import NamedTuple

import numpy as np

from . import _C

HIF8_MAX = 32768.0
"""Largest finite HiF8 magnitude (2^15, code 0x6E)."""
HIF8_MIN_POSITIVE = 2.0 ** -22
"""Smallest positive HiF8 value (denormal code 0x01)."""
HIF8_OVERFLOW = 40960.0
"""|x| at or above this overflows (the tie between 32768 and the Inf pattern)."""

_ROUNDINGS = ("nearest", "stochastic")


class CastStats(NamedTuple):
    """What one cast saw. ``amax`` is max |x| over the unscaled finite elements;
    ``clipped`` counts elements whose code the clamp (or, without a clamp, saturation
    at 40960) changed, infinities included; ``zero_flushed`` counts finite non-zero
    inputs that encoded as 0; ``nonfinite`` counts NaN and ±Inf inputs."""

    n: int
    amax: float
    clipped: int
    zero_flushed: int
    nonfinite: int

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.n if self.n else 0.0

    @property
    def zero_flushed_fraction(self) -> float:
        return self.zero_flushed / self.n if self.n else 0.0


# ---------------------------------------------------------------- validation helpers

def _as_float_array(x, name="x") -> np.ndarray:
    """float32/float64 ndarray (any strides), or a Python scalar as a 0-d float64."""
    if isinstance(x, np.ndarray):
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name} must be a float32 or float64 array, got dtype {x.dtype}")
        return x
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a float array or a real number, got bool")
    if isinstance(x, (float, int, np.floating, np.integer)) and not isinstance(x, np.integer):
        return np.asarray(float(x), dtype=np.float64)
    if isinstance(x, (np.float32, np.float64)):
        return np.asarray(x)
    if isinstance(x, (list, tuple)):
        a = np.asarray(x)
        if a.dtype.kind in "iuf" and a.dtype != np.bool_:
            return a.astype(np.float64)
        raise TypeError(f"{name}: cannot cast a sequence of dtype {a.dtype} to HiF8")
    raise TypeError(f"{name} must be a float32/float64 NumPy array or a Python float, "
                    f"got {type(x).__name__}")


def _check_scale(scale, name="scale") -> float:
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(scale).__name__}")
    s = float(scale)
    if not math.isfinite(s) or s <= 0.0:
        raise ValueError(f"{name} must be finite and > 0, got {s!r}")
    return s


def _scales_for(dtype, scale: float, name="scale"):
    """(scale, scale_inv) in the input's arithmetic."""
    if dtype == np.float32:
        with np.errstate(over="ignore"):
            s32 = np.float32(scale)
        if not np.isfinite(s32) or s32 <= 0:
            raise ValueError(f"{name}={scale!r} is not representable as a positive finite float32")
        inv = np.float32(1.0) / s32
        if not np.isfinite(inv) or inv == 0:
            raise ValueError(f"{name}={scale!r}: 1/{name} is not a finite non-zero float32")
        return float(s32), float(inv)
    inv = 1.0 / scale
    if not math.isfinite(inv) or inv == 0.0:
        raise ValueError(f"{name}={scale!r}: 1/{name} is not a finite non-zero float64")
    return scale, inv


def _check_rounding(rounding) -> bool:
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    return rounding == "stochastic"


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def _check_clip(clip, dtype) -> float:
    if clip is None:
        return 0.0
    c = _check_scale(clip, "clip")
    return float(np.float32(c)) if dtype == np.float32 else c


def _deliver(result: np.ndarray, out, name="out"):
    if out is None:
        return result
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(out).__name__}")
    if out.shape != result.shape or out.dtype != result.dtype:
        raise ValueError(f"{name} must have shape {result.shape} and dtype {result.dtype}, "
                         f"got shape {out.shape} and dtype {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    np.copyto(out, result)
    return out


# ---------------------------------------------------------------- the public casts

def to_hif8(x, scale=1.0, *, rounding="nearest", saturate=True, seed=0, out=None) -> np.ndarray:
    """Encode ``x * scale`` as HiF8 codes (uint8, same shape as ``x``).

    ``rounding="nearest"`` rounds to the nearest value, ties away from zero;
    ``"stochastic"`` is unbiased and reproducible: its random bits are keyed by
    (``seed``, element index in C order), whatever the threads or ISA path.
    ``saturate=True`` sends overflow (|x·scale| ≥ 40960) and ±Inf to ±32768,
    ``saturate=False`` to ±Inf. NaN is always code 0x80.

    >>> hq.to_hif8(np.float32(15.5))   # tie across a mantissa-width change: 16.0
    array(64, dtype=uint8)
    """
    xa = _as_float_array(x)
    scale, scale_inv = _scales_for(xa.dtype, _check_scale(scale))
    stochastic = _check_rounding(rounding)
    codes, _, _, _ = _C.cast(xa, scale, scale_inv, 0.0, stochastic, bool(saturate),
                             _check_seed(seed), True, False, False, False)
    return _deliver(codes, out)


def from_hif8(codes, scale_inv=1.0, *, dtype=np.float32, out=None) -> np.ndarray:
    """Decode HiF8 codes: ``value(code) * scale_inv`` in ``dtype`` (float32 or float64)."""
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
        got = codes.dtype if isinstance(codes, np.ndarray) else type(codes).__name__
        raise TypeError(f"codes must be a uint8 NumPy array of HiF8 codes, got {got}")
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    sinv = _check_scale(scale_inv, "scale_inv")
    if dt == np.float32:
        sinv = float(np.float32(sinv))
        if sinv == 0.0 or not math.isfinite(sinv):
            raise ValueError(f"scale_inv={scale_inv!r} is not a positive finite float32")
    return _deliver(_C.decode(codes, sinv, dt == np.float64), out)


def fake_quant(x, scale=1.0, *, clip=None, rounding="nearest", seed=0, return_stats=False,
               out=None):
    """``decode(encode(clamp(x*scale, ±clip))) * (1/scale)`` in the input's dtype.

    ``clip=None`` means no clamp (values above 15 still use HiF8's range up to 32768;
    overflow saturates). With ``return_stats=True`` also returns a :class:`CastStats`.

    >>> y, st = hq.fake_quant(np.float32([0.1, 3.0, 20.0]), 1.0, clip=15.0, return_stats=True)
    >>> st.clipped
    1
    """
    xa = _as_float_array(x)
    scale, scale_inv = _scales_for(xa.dtype, _check_scale(scale))
    stochastic = _check_rounding(rounding)
    c = _check_clip(clip, xa.dtype)
    # without return_stats the C pass skips the counting (about a third of its work)
    _, values, _, st = _C.cast(xa, scale, scale_inv, c, stochastic, True, _check_seed(seed),
                               False, True, False, bool(return_stats))
    values = _deliver(values, out)
    return (values, CastStats(*st)) if return_stats else values


def round_bf16(x, *, out=None) -> np.ndarray:
    """Round float32 values to bfloat16 precision (nearest, ties to even), as float32.

    NaN stays (quiet) NaN, ±Inf stays, finite values past the bf16 range become ±Inf,
    float32 subnormals are rounded, never flushed.
    """
    if isinstance(x, np.ndarray):
        if x.dtype != np.float32:
            raise TypeError(f"round_bf16 takes float32 arrays (got {x.dtype}); convert "
                            "explicitly with .astype(np.float32) if double rounding is fine")
        xa = x
    elif isinstance(x, (float, int, np.floating)) and not isinstance(x, bool):
        xa = np.asarray(x, dtype=np.float32)
    else:
        raise TypeError(f"round_bf16 takes a float32 array, got {type(x).__name__}")
    return _deliver(_C.round_bf16(xa), out)


def hif8_values() -> np.ndarray:
    """Decoded value of every code as float32[256] (NaN at 0x80, ±inf at 0x6F/0xEF)."""
    return _C.hif8_values()


def clip_threshold(clip) -> float:
    """|x·scale| at or above which clamping to ±clip changes the code (15.5 for 15)."""
    return _C.clip_threshold(0.0 if clip is None else _check_scale(clip, "clip"))


# ---------------------------------------------------------------- threads and ISA

def set_num_threads(n: int) -> None:
    """Threads for the C kernels (default: OMP_NUM_THREADS, else all cores)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"number of threads must be an int, got {type(n).__name__}")
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    return _C.get_num_threads()


def get_isa() -> str:
    """The kernel path in use: 'scalar', 'avx2' or 'avx512'."""
    return _C.get_isa()


def set_isa(name: str) -> None:
    """Force a kernel path ('scalar', 'avx2', 'avx512'); ValueError if the CPU lacks it.
    Every path gives bit-identical casts; the env var HIF8QAT_ISA does the same at import."""
    if not isinstance(name, str):
        raise TypeError(f"ISA name must be a str, got {type(name).__name__}")
    _C.set_isa(name)


def available_isas() -> list:
    """The paths this CPU runs, slowest first."""
    f = _C.cpu_features()
    return ["scalar"] + (["avx2"] if f["avx2"] else []) + (["avx512"] if f["avx512"] else [])


def cpu_features() -> dict:
    return dict(_C.cpu_features())


def _apply_isa_env() -> None:
    want = os.environ.get("HIF8QAT_ISA", "")
    if not want:
        return
    try:
        set_isa(want)
    except ValueError as e:
        warnings.warn(f"HIF8QAT_ISA={want!r} ignored: {e}; using {get_isa()!r}", RuntimeWarning,
                      stacklevel=3)


_apply_isa_env()
