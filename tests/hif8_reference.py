"""A pure-Python HiF8 golden model written from shared/docs/hif8-format.md, independently
of the C codec: decoding from the bit-layout table, encoding by searching the sorted list
of representable values (nearest, ties to the larger magnitude). Slow and obvious."""
import bisect
import math
from fractions import Fraction

# (first positive code, dot length, exponent bits D, mantissa bits) per row of the spec
_ROWS = [(0x60, 2, 4, 1), (0x40, 2, 3, 2), (0x20, 2, 2, 3), (0x10, 3, 1, 3), (0x08, 4, 0, 3)]


def decode(code: int) -> float:
    if code == 0x00:
        return 0.0
    if code == 0x80:
        return math.nan
    sign = -1.0 if code & 0x80 else 1.0
    b = code & 0x7F
    if b == 0x6F:
        return sign * math.inf
    for first, dot_len, d, mw in _ROWS:
        if b >= first:
            rest = b - first            # exponent bits then mantissa bits
            exp_bits, m = rest >> mw, rest & ((1 << mw) - 1)
            if d == 0:
                e = 0
            else:
                e_sign = (exp_bits >> (d - 1)) & 1
                magnitude = (1 << (d - 1)) | (exp_bits & ((1 << (d - 1)) - 1))
                e = -magnitude if e_sign else magnitude
            return sign * (2.0 ** e) * (1 + m / 2 ** mw)
    return sign * 2.0 ** (b - 23)       # denormal, M = 1..7


POSITIVE = sorted((decode(c), c) for c in range(1, 0x80) if c != 0x6F)
_VALUES = [v for v, _ in POSITIVE]
_CODE_OF = {v: c for v, c in POSITIVE}
assert len(POSITIVE) == 126


def encode(x, saturate=True) -> int:
    """Nearest, ties away from zero; x is a float or Fraction (exact)."""
    if isinstance(x, float) and math.isnan(x):
        return 0x80
    neg = x < 0
    ax = -x if neg else x
    if ax == math.inf or ax >= 40960:
        code = 0x6E if saturate else 0x6F
        return code | (0x80 if neg else 0)
    ax = Fraction(ax)
    i = bisect.bisect_left(_VALUES, ax)
    if i < len(_VALUES) and _VALUES[i] == ax:
        v = _VALUES[i]
    else:
        lo = Fraction(_VALUES[i - 1]) if i > 0 else Fraction(0)
        hi = Fraction(_VALUES[i]) if i < len(_VALUES) else Fraction(49152)
        v = float(hi) if ax - lo >= hi - ax else float(lo)
    if v == 0:
        return 0x00
    return _CODE_OF[v] | (0x80 if neg else 0)


def neighbours(ax: float):
    """The representable magnitudes just below and above ax (0 and 2^-22 at the bottom)."""
    lo = max([0.0] + [v for v in _VALUES if v <= ax])
    hi = min([v for v in _VALUES if v > ax], default=math.inf)
    return lo, hi
