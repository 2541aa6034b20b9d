"""HiF8 W8A8 and BF16 matrix products in C, for the three products of a linear layer.

An operand's dtype says its format: ``uint8`` arrays are HiF8 codes (value =
``decode(code) * scale_inv``), ``float32`` arrays are rounded to bfloat16 (nearest-even)
and then multiplied by their ``scale_inv`` (1.0 by default). Products accumulate in
float32. For a layer ``y = x·Wᵀ + b`` with ``W`` stored (out_features, in_features)::

    y  = hq.gemm(x, W, trans_b=True, bias=b)      # forward      (M,K)·(N,K)ᵀ
    dX = hq.gemm(dy, W)                            # input grad   (M,N)·(N,K)
    dW = hq.gemm(dy, x, trans_a=True)              # weight grad  (M,N)ᵀ·(M,K)

Arithmetic (``csrc/gemm.h``): the unscaled operand values are multiplied exactly and
summed in float32 in a fixed order (k in pairs, odd element first — the order of
AVX512-BF16 ``vdpbf16ps``), then ``y = fma(sum, a_scale_inv*b_scale_inv, bias)``.
The result does not depend on the thread count, and the scalar, AVX2 and AVX-512F
kernels give bit-identical results; the AVX512-BF16 kernel too for codes × codes (the
instruction flushes bf16/float32 subnormals, which HiF8 values never produce).

>>> import numpy as np, hif8qat as hq
>>> x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
>>> w = hq.to_hif8(np.ones((3, 8), np.float32))
>>> hq.gemm(x, w, trans_b=True).shape      # (M, N)
(4, 3)
"""
from __future__ import annotations

import numpy as np

from . import _C
from .format import CastStats, _check_scale

__all__ = ["gemm", "qlinear", "pack_weight", "PackedWeight", "available_kernels", "get_kernel"]


class PackedWeight:
    """``op(b)`` (K, N) decoded once into the panels the GEMM kernel reads.

    Made by :func:`pack_weight`; pass it as ``b`` to :func:`gemm` (with ``trans_b``
    left False: the pack already is op(b)) or as ``w_codes`` to :func:`qlinear` (pack
    the weight with ``trans_b=True`` for that). Holds float32 panels (bf16 pairs on
    AVX512-BF16 CPUs): 4 (or 2) bytes per weight, padded to 16 columns.

    Attributes: ``shape`` (K, N) of op(b), ``scale_inv``, ``format`` ("hif8" or
    "bf16": the source operand's format), ``trans_b``, ``nbytes``, ``kernel``.
    """

    __slots__ = ("_capsule", "shape", "scale_inv", "format", "trans_b", "nbytes", "kernel")

    def __init__(self, capsule, scale_inv: float, trans_b: bool):
        k, n, fmt, nbytes, kernel, _ = _C.packed_info(capsule)
        self._capsule = capsule
        self.shape = (k, n)
        self.scale_inv = scale_inv
        self.format = fmt
        self.trans_b = trans_b
        self.nbytes = nbytes
        self.kernel = kernel

    @property
    def usable(self) -> bool:
        """True when the kernel selected now (see hq.set_isa) reads this pack's layout."""
        return bool(_C.packed_info(self._capsule)[5])

    def __repr__(self):
        return (f"PackedWeight(shape={self.shape}, format={self.format!r}, "
                f"scale_inv={self.scale_inv!r}, trans_b={self.trans_b}, kernel={self.kernel!r}, "
                f"nbytes={self.nbytes})")


def _flag(v, name) -> bool:
    if not isinstance(v, (bool, np.bool_, int, np.integer)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def gemm(a, b, *, trans_a=False, trans_b=False, a_scale_inv=1.0, b_scale_inv=1.0, bias=None,
         out=None, accumulate=False) -> np.ndarray:
    """``op(a) (M,K) · op(b) (K,N) * a_scale_inv * b_scale_inv + bias`` as float32 (M, N).

    ``op(x)`` is ``x.T`` when ``trans_x``. ``a``/``b``: 2-D uint8 HiF8 codes or float32
    (rounded to bf16), any pairing, any strides (views are read in place). ``b`` may be
    a :class:`PackedWeight` (then its own ``scale_inv`` is used). ``bias``: float32 (N,).
    ``out``: a C-contiguous float32 (M, N) array to write (or, with ``accumulate=True``,
    to add the result into). Empty dimensions raise ValueError.

    >>> a = hq.to_hif8(np.full((2, 3), 2.0, np.float32))
    >>> hq.gemm(a, a, trans_b=True, a_scale_inv=0.5, b_scale_inv=0.5)
    array([[3., 3.],
           [3., 3.]], dtype=float32)
    """
    trans_a, trans_b = _flag(trans_a, "trans_a"), _flag(trans_b, "trans_b")
    accumulate = _flag(accumulate, "accumulate")
    a_si = _check_scale(a_scale_inv, "a_scale_inv")
    if isinstance(b, PackedWeight):
        if trans_b:
            raise ValueError("trans_b must be False with a PackedWeight: it already holds op(b) "
                             "(choose the orientation when packing)")
        if b_scale_inv != 1.0 and b_scale_inv != b.scale_inv:
            raise ValueError(f"b_scale_inv={b_scale_inv!r} conflicts with the PackedWeight's "
                             f"scale_inv={b.scale_inv!r}; leave b_scale_inv out")
        return _C.gemm(a, b._capsule, trans_a, False, a_si, b.scale_inv, bias, out, accumulate)
    b_si = _check_scale(b_scale_inv, "b_scale_inv")
    return _C.gemm(a, b, trans_a, trans_b, a_si, b_si, bias, out, accumulate)


def qlinear(x, w_codes, w_scale_inv, x_scale, *, clip=15.0, bias=None, return_mask=False,
            return_stats=False):
    """W8A8 linear layer: ``y = Q(x)·Ŵᵀ + bias`` with the activation cast fused in.

    ``x`` (..., K) float32 is cast to HiF8 as ``codes = encode(clamp(x*x_scale, ±clip))``
    (nearest, saturating; ``clip=None``: no clamp) and multiplied by ``w_codes`` (N, K)
    HiF8 codes (or a :class:`PackedWeight` made with ``trans_b=True``), with
    ``scale_inv = 1/x_scale`` (float32) and ``w_scale_inv``. Returns ``y`` (..., N)
    float32, then, if asked, the STE ``mask`` (bool, x's shape: True where the clamp did
    not change the code) and the cast's :class:`~hif8qat.CastStats`.

    >>> x = np.float32([[0.5, -1.0, 20.0]])
    >>> w = hq.to_hif8(np.eye(3, dtype=np.float32))
    >>> y, mask = hq.qlinear(x, w, 1.0, 1.0, return_mask=True)
    >>> y, mask          # 20 clipped to 15
    (array([[ 0.5, -1. , 15. ]], dtype=float32), array([[ True,  True, False]]))
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"x must be a float32 NumPy array, got {got}")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension (..., in_features)")
    xs = _check_scale(x_scale, "x_scale")
    c = 0.0 if clip is None else float(np.float32(_check_scale(clip, "clip")))
    if isinstance(w_codes, PackedWeight):
        if not w_codes.trans_b:
            raise ValueError("qlinear needs the weight packed as op(b) = Wᵀ: "
                             "hq.pack_weight(w_codes, scale_inv, trans_b=True)")
        if w_scale_inv is not None and w_scale_inv != w_codes.scale_inv:
            raise ValueError(f"w_scale_inv={w_scale_inv!r} conflicts with the PackedWeight's "
                             f"scale_inv={w_codes.scale_inv!r}; pass None")
        w, w_si = w_codes._capsule, w_codes.scale_inv
    else:
        w, w_si = w_codes, _check_scale(w_scale_inv, "w_scale_inv")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
    y, mask, stats = _C.qlinear(x2, w, w_si, xs, c, bias, bool(return_mask), bool(return_stats))
    y = y.reshape(*lead, y.shape[-1])
    result = (y,)
    if return_mask:
        result += (mask.reshape(x.shape),)
    if return_stats:
        result += (CastStats(*stats),)
    return result[0] if len(result) == 1 else result


def pack_weight(b, scale_inv=1.0, *, trans_b=False) -> PackedWeight:
    """Decode and lay out ``op(b)`` once for repeated :func:`gemm` / :func:`qlinear` calls.

    For a layer weight ``W`` (N, K) of codes: ``pack_weight(W, s, trans_b=True)`` serves
    the forward product (and qlinear), ``pack_weight(W, s)`` the input gradient
    ``gemm(dy, packed)``. The pack matches the kernel of the ISA path selected when it
    was made; after ``hq.set_isa`` to a path with another layout, pack again.

    >>> w = hq.to_hif8(np.ones((4, 8), np.float32))
    >>> pw = hq.pack_weight(w, 0.5, trans_b=True)
    >>> hq.gemm(np.ones((2, 8), np.float32), pw)[0]
    array([4., 4., 4., 4.], dtype=float32)
    """
    trans_b = _flag(trans_b, "trans_b")
    s = _check_scale(scale_inv, "scale_inv")
    if not np.isfinite(np.float32(s)) or np.float32(s) <= 0:
        raise ValueError(f"scale_inv={scale_inv!r} is not a positive finite float32")
    return PackedWeight(_C.pack_b(b, trans_b), s, trans_b)


def available_kernels() -> list:
    """GEMM micro-kernels this CPU runs: 'scalar', 'avx2', 'avx512f', 'avx512bf16'."""
    return _C.gemm_kernels()


def get_kernel() -> str:
    """The micro-kernel the current ISA path (hq.get_isa) uses."""
    return _C.gemm_kernel()


def _force_kernel(name) -> None:
    """Pin a micro-kernel (tests only); None restores the ISA-path default."""
    _C.gemm_force_kernel(name)


def _reference(a, b, *, trans_a=False, trans_b=False, a_scale_inv=1.0, b_scale_inv=1.0,
               bias=None, out=None, accumulate=False) -> np.ndarray:
    """The plain C triple loop with the same arithmetic as :func:`gemm` (tests only)."""
    return _C.gemm(a, b, bool(trans_a), bool(trans_b), _check_scale(a_scale_inv),
                   _check_scale(b_scale_inv), bias, out, bool(accumulate), True)
