"""hq.gemm / hq.qlinear / hq.pack_weight against a float64 NumPy reference built from the
decoded operands (hq.from_hif8, hq.round_bf16), plus determinism and bad input."""
import itertools
import sys

import numpy as np
import pytest

import hif8qat as hq

G = sys.modules["hif8qat.gemm"]
U = 2.0 ** -24  # float32 unit roundoff

FINITE_CODES = np.array([c for c in range(256) if np.isfinite(hq.hif8_values()[c])], np.uint8)


def make(fmt, shape, rng, *, spread=1.0):
    """An operand: HiF8 codes of N(0, spread²) data, or float32 data of that spread."""
    x = (rng.standard_normal(shape) * spread).astype(np.float32)
    return hq.to_hif8(x, 1.0) if fmt == "hif8" else x


def decoded(x):
    """The exact unscaled value of each element as float64 (what the kernel multiplies)."""
    if x.dtype == np.uint8:
        return hq.from_hif8(x, 1.0, dtype=np.float64)
    return hq.round_bf16(np.ascontiguousarray(x)).astype(np.float64)


def reference(a, b, ta, tb, a_si=1.0, b_si=1.0, bias=None, out_old=None):
    """float64 result and the float32 error bound of hq.gemm's arithmetic."""
    A, B = decoded(a), decoded(b)
    A, B = (A.T if ta else A), (B.T if tb else B)
    s32 = float(np.float32(a_si) * np.float32(b_si))
    K = A.shape[1]
    exact = A @ B * s32
    absum = np.abs(A) @ np.abs(B) * s32
    gamma = K * U / (1 - K * U)
    ref = exact.copy()
    extra = np.zeros_like(exact)
    if bias is not None:
        ref += bias.astype(np.float64)
        extra += np.abs(bias)
    if out_old is not None:
        ref += out_old.astype(np.float64)
        extra += np.abs(out_old)
    # sum error + scale rounding + fma/add roundings of the epilogue
    tol = gamma * absum + 4 * U * (np.abs(exact) + extra) + 1e-38
    return ref, tol


def assert_close(got, ref, tol):
    assert got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= tol)
    assert not bad.any(), (f"{bad.sum()} elements outside the float32 accumulation bound; "
                           f"worst err {err.max():.3g} vs tol {tol[np.unravel_index(err.argmax(), err.shape)]:.3g}")


def operands(fa, fb, M, K, N, ta, tb, rng):
    a = make(fa, (K, M) if ta else (M, K), rng)
    b = make(fb, (N, K) if tb else (K, N), rng)
    return a, b


PAIRINGS = list(itertools.product(["hif8", "bf16"], repeat=2))


@pytest.mark.parametrize("fa,fb", PAIRINGS)
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_matches_float64_reference_for_every_transposition_and_pairing(fa, fb, ta, tb):
    rng = np.random.default_rng(hash((fa, fb, ta, tb)) % 2 ** 32)
    for M, K, N in [(1, 1, 1), (3, 5, 7), (17, 33, 19), (1, 17, 3), (40, 300, 33)]:
        a, b = operands(fa, fb, M, K, N, ta, tb, rng)
        a_si, b_si = 0.37, 3.0
        got = hq.gemm(a, b, trans_a=ta, trans_b=tb, a_scale_inv=a_si, b_scale_inv=b_si)
        assert got.shape == (M, N)
        assert_close(got, *reference(a, b, ta, tb, a_si, b_si))


@pytest.mark.parametrize("fa,fb", PAIRINGS)
def test_k_8192_stays_within_the_float32_accumulation_bound(fa, fb):
    rng = np.random.default_rng(8192)
    a, b = operands(fa, fb, 37, 8192, 29, False, True, rng)
    got = hq.gemm(a, b, trans_b=True)
    assert_close(got, *reference(a, b, False, True))


def test_sizes_past_1000_with_ragged_edges():
    rng = np.random.default_rng(1000)
    a, b = operands("hif8", "bf16", 1003, 257, 1001, False, False, rng)
    bias = rng.standard_normal(1001).astype(np.float32)
    got = hq.gemm(a, b, bias=bias, a_scale_inv=0.125)
    assert_close(got, *reference(a, b, False, False, 0.125, 1.0, bias))


def test_layer_products_forward_input_grad_weight_grad():
    """The three products of y = x·Wᵀ with W (N, K) as documented in hif8qat.gemm."""
    rng = np.random.default_rng(3)
    M, K, N = 50, 70, 30
    x = make("hif8", (M, K), rng)
    W = make("hif8", (N, K), rng)
    dy = make("bf16", (M, N), rng)
    X, Wd, DY = decoded(x), decoded(W), decoded(dy)
    for got, exact, k in [(hq.gemm(x, W, trans_b=True), X @ Wd.T, K),
                          (hq.gemm(dy, W), DY @ Wd, N),
                          (hq.gemm(dy, x, trans_a=True), DY.T @ X, M)]:
        assert got.shape == exact.shape
        bound = k * U * 1.01 * (np.abs(exact) + 1) * 50
        assert np.all(np.abs(got - exact) <= bound)


def test_non_contiguous_inputs_are_read_in_place_and_agree_with_copies():
    rng = np.random.default_rng(5)
    big_a = make("hif8", (60, 90), rng)
    big_b = make("bf16", (80, 70), rng)
    a = big_a[::2, 5:70:3]          # (30, 22), strided both ways
    b = big_b[::-3, ::-3][:22]      # negative strides, (22, 24)
    assert not a.flags.c_contiguous and not b.flags.c_contiguous
    got = hq.gemm(a, b)
    want = hq.gemm(np.ascontiguousarray(a), np.ascontiguousarray(b))
    np.testing.assert_array_equal(got, want)
    f = np.asfortranarray(np.ascontiguousarray(b))
    np.testing.assert_array_equal(hq.gemm(a, f), want)
    # a float32 view with a non-element stride is copied, not misread
    raw = np.zeros(22 * 24 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(22, 24)
    raw[...] = b
    np.testing.assert_array_equal(hq.gemm(a, raw), want)
    # a big-endian float32 operand is converted, not misread
    np.testing.assert_array_equal(hq.gemm(a, b.astype(">f4")), want)


@pytest.mark.parametrize("K", [100, 700])  # one K slice (fused epilogue) and several (scratch)
def test_bias_out_and_accumulate(K):
    rng = np.random.default_rng(K)
    a, b = operands("hif8", "hif8", 31, K, 45, False, True, rng)
    bias = rng.standard_normal(45).astype(np.float32)
    y = hq.gemm(a, b, trans_b=True, bias=bias, a_scale_inv=0.5, b_scale_inv=0.25)
    assert_close(y, *reference(a, b, False, True, 0.5, 0.25, bias))
    out = np.full((31, 45), np.nan, np.float32)
    r = hq.gemm(a, b, trans_b=True, bias=bias, a_scale_inv=0.5, b_scale_inv=0.25, out=out)
    assert r is out
    np.testing.assert_array_equal(out, y)
    old = rng.standard_normal((31, 45)).astype(np.float32)
    acc = old.copy()
    hq.gemm(a, b, trans_b=True, bias=bias, a_scale_inv=0.5, b_scale_inv=0.25, out=acc,
            accumulate=True)
    np.testing.assert_array_equal(acc, old + y)  # out_old + y, one float32 add


def test_bit_identical_for_one_and_two_threads():
    rng = np.random.default_rng(12)
    # bands of rows (M >= N) and of columns (N > M), each over several K slices
    shapes = [(300, 1100, 200), (64, 1100, 500), (300, 700, 200), (40, 900, 1000)]
    cases = [operands(fa, fb, M, K, N, ta, tb, rng) + (ta, tb)
             for (fa, fb), (ta, tb), (M, K, N) in zip(PAIRINGS, [(0, 1), (1, 0), (0, 0), (1, 1)],
                                                      shapes)]
    saved = hq.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            hq.set_num_threads(n)
            results.append([hq.gemm(a, b, trans_a=ta, trans_b=tb,
                                    bias=np.ones(b.shape[0 if tb else 1], np.float32))
                            for a, b, ta, tb in cases])
    finally:
        hq.set_num_threads(saved)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one.view(np.uint32), two.view(np.uint32))


@pytest.mark.parametrize("kernel", ["scalar", "avx2", "avx512f", "avx512bf16", "bf16emu"])
def test_every_kernel_is_bit_identical_to_the_reference_loop(kernel):
    """Same summation order by design on every kernel. The bf16 ones (avx512bf16 and its
    scalar emulation bf16emu) flush subnormals; this data has none, so they agree too."""
    if kernel not in G.available_kernels():
        pytest.skip(f"this CPU does not run the {kernel} kernel (untested here)")
    rng = np.random.default_rng(7)
    pairings = PAIRINGS
    try:
        G._force_kernel(kernel)
        for (fa, fb), (M, K, N) in itertools.product(pairings, [(7, 9, 5), (29, 530, 37)]):
            for ta, tb in [(False, True), (True, False)]:
                a, b = operands(fa, fb, M, K, N, ta, tb, rng)
                bias = rng.standard_normal(N).astype(np.float32)
                kw = dict(trans_a=ta, trans_b=tb, a_scale_inv=0.3, bias=bias)
                got = hq.gemm(a, b, **kw)
                want = G._reference(a, b, **kw)
                np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    finally:
        G._force_kernel(None)


def test_isa_paths_give_bit_identical_results():
    isas = hq.available_isas()
    rng = np.random.default_rng(8)
    a, b = operands("bf16", "hif8", 50, 600, 40, False, True, rng)
    saved = hq.get_isa()
    try:
        res = {}
        for isa in isas:
            hq.set_isa(isa)
            res[isa] = hq.gemm(a, b, trans_b=True)
    finally:
        hq.set_isa(saved)
    for isa in isas:
        np.testing.assert_array_equal(res[isa].view(np.uint32), res[isas[0]].view(np.uint32))


def test_packed_weight_gives_the_same_bits_as_the_codes():
    rng = np.random.default_rng(9)
    M, K, N = 33, 600, 50
    x = make("bf16", (M, K), rng)
    W = make("hif8", (N, K), rng)
    dy = make("bf16", (M, N), rng)
    pw_fwd = hq.pack_weight(W, 0.25, trans_b=True)
    assert pw_fwd.shape == (K, N) and pw_fwd.format == "hif8" and pw_fwd.usable
    np.testing.assert_array_equal(hq.gemm(x, pw_fwd), hq.gemm(x, W, trans_b=True, b_scale_inv=0.25))
    pw_bwd = hq.pack_weight(W, 0.25)
    assert pw_bwd.shape == (N, K)
    np.testing.assert_array_equal(hq.gemm(dy, pw_bwd), hq.gemm(dy, W, b_scale_inv=0.25))
    np.testing.assert_array_equal(hq.qlinear(x, pw_fwd, None, 2.0),
                                  hq.qlinear(x, W, 0.25, 2.0))
    with pytest.raises(ValueError, match="trans_b"):
        hq.gemm(x, pw_fwd, trans_b=True)
    with pytest.raises(ValueError, match="Wᵀ"):
        hq.qlinear(dy, pw_bwd, None, 1.0)
    with pytest.raises(ValueError, match="conflicts"):
        hq.gemm(x, pw_fwd, b_scale_inv=0.5)
    with pytest.raises(ValueError, match="inner dimensions"):
        hq.gemm(dy, pw_fwd)


def test_qlinear_equals_cast_then_gemm_with_mask_and_stats():
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((2, 3, 64)) * 4).astype(np.float32)
    W = make("hif8", (24, 64), rng)
    bias = rng.standard_normal(24).astype(np.float32)
    x_scale, clip = 2.5, 15.0
    y, mask, stats = hq.qlinear(x, W, 0.5, x_scale, clip=clip, bias=bias, return_mask=True,
                                return_stats=True)
    assert y.shape == (2, 3, 24) and mask.shape == x.shape and mask.dtype == np.bool_
    # independent path: float32 x*scale, clamp, encode; then the codes GEMM
    xs = x * np.float32(x_scale)
    codes = hq.to_hif8(np.clip(xs, -clip, clip))
    s_inv = float(np.float32(1) / np.float32(x_scale))
    want = hq.gemm(codes.reshape(6, 64), W, trans_b=True, a_scale_inv=s_inv, b_scale_inv=0.5,
                   bias=bias)
    np.testing.assert_array_equal(y.reshape(6, 24), want)
    np.testing.assert_array_equal(mask, np.abs(xs) < hq.clip_threshold(clip))
    _, st = hq.fake_quant(x, x_scale, clip=clip, return_stats=True)
    assert isinstance(stats, hq.CastStats) and stats == st
    assert stats.clipped == (~mask).sum() > 0
    # clip=None: no clamp, values above 15 keep HiF8's wider range
    y2 = hq.qlinear(x, W, 0.5, x_scale, clip=None)
    want2 = hq.gemm(hq.to_hif8(xs).reshape(6, 64), W, trans_b=True, a_scale_inv=s_inv,
                    b_scale_inv=0.5)
    np.testing.assert_array_equal(y2.reshape(6, 24), want2)


def test_nan_and_inf_propagate():
    a = np.full((3, 4), 0x08, np.uint8)          # 1.0
    b = np.full((4, 5), 0x10, np.uint8)          # 2.0
    a[1, 2] = 0x80                               # NaN
    b[3, 4] = 0x6F                               # +Inf
    c = hq.gemm(a, b)
    assert np.isnan(c[1]).all()
    assert np.isinf(c[[0, 2], 4]).all() and (c[[0, 2], 4] > 0).all()
    assert (c[[0, 2], :4] == 8.0).all()
    x = np.ones((2, 4), np.float32)
    x[0, 0] = np.nan
    c = hq.gemm(x, b[:, :4])
    assert np.isnan(c[0]).all() and (c[1] == 8.0).all()


def test_bad_input_raises_clear_errors():
    codes = np.zeros((4, 5), np.uint8)
    f = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        hq.gemm(codes, f.T)
    with pytest.raises(TypeError, match="b must be uint8"):
        hq.gemm(codes, f.astype(np.float64))
    with pytest.raises(TypeError, match="a must be uint8"):
        hq.gemm(codes.astype(np.int8), f)
    with pytest.raises(TypeError, match="a must be a NumPy array"):
        hq.gemm([[1.0]], f)
    with pytest.raises(ValueError, match="2-D"):
        hq.gemm(codes[0], f)
    for bad in (np.nan, np.inf, 0.0, -1.0):
        with pytest.raises(ValueError, match="a_scale_inv"):
            hq.gemm(codes, f, a_scale_inv=bad)
    with pytest.raises(ValueError, match="float32"):
        hq.gemm(codes, f, b_scale_inv=1e300)
    with pytest.raises(ValueError, match="shape"):
        hq.gemm(codes, f, out=np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="out"):
        hq.gemm(codes, f, out=np.zeros((4, 3), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        hq.gemm(codes, f, out=np.zeros((3, 4), np.float32).T)
    ro = np.zeros((4, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        hq.gemm(codes, f, out=ro)
    with pytest.raises(ValueError, match="accumulate=True needs out"):
        hq.gemm(codes, f, accumulate=True)
    with pytest.raises(ValueError, match="bias must have shape"):
        hq.gemm(codes, f, bias=np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="bias"):
        hq.gemm(codes, f, bias=np.zeros(3))
    sq = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="share memory"):
        hq.gemm(sq, sq, out=sq)
    for a, b in [(codes[:0], f), (codes[:, :0], f[:0]), (codes, f[:, :0])]:
        with pytest.raises(ValueError, match="non-empty"):
            hq.gemm(a, b)
    huge = np.broadcast_to(np.uint8(8), (2 ** 21, 2 ** 21))
    with pytest.raises(ValueError, match="overflows int64"):
        hq.gemm(huge, huge)
    with pytest.raises(TypeError, match="x must be a float32"):
        hq.qlinear(codes, codes, 1.0, 1.0)
    with pytest.raises(ValueError, match="features"):
        hq.qlinear(np.zeros((2, 3), np.float32), codes, 1.0, 1.0)
    with pytest.raises(ValueError, match="x_scale"):
        hq.qlinear(np.zeros((2, 5), np.float32), codes, 1.0, np.nan)
    with pytest.raises(TypeError, match="w must be a uint8"):
        hq.qlinear(np.zeros((2, 5), np.float32), codes.astype(np.float32), 1.0, 1.0)
    with pytest.raises(ValueError, match="empty"):
        hq.pack_weight(codes[:0])
    with pytest.raises(ValueError, match="GEMM kernel"):
        G._force_kernel("avx9000")


def test_bf16_kernels_flush_subnormal_bf16_operands_to_zero():
    """Documented difference of the vdpbf16ps path (emulated here by bf16emu): a bf16
    operand below 2^-126 counts as zero there, while the float32 kernels keep it."""
    a = np.array([[1e-39, 1.0]], np.float32)     # subnormal, then a normal value
    b = np.array([[1.0], [0.0]], np.float32)
    try:
        G._force_kernel("scalar")               # a float32 FMA kernel
        assert hq.gemm(a, b)[0, 0] == hq.round_bf16(np.float32(1e-39)) != 0
        G._force_kernel("bf16emu")
        assert hq.gemm(a, b)[0, 0] == 0.0
    finally:
        G._force_kernel(None)


def test_pack_made_for_another_kernel_layout_is_refused():
    W = make("hif8", (20, 30), np.random.default_rng(11))
    try:
        G._force_kernel("bf16emu")             # bf16-pair panels
        pw = hq.pack_weight(W, trans_b=True)
        assert pw.kernel == "bf16emu" and pw.usable
        x = np.ones((3, 30), np.float32)
        y_emu = hq.gemm(x, pw)
    finally:
        G._force_kernel(None)
    if G.get_kernel() in ("scalar", "avx2", "avx512f"):  # float32 panels
        assert not pw.usable
        with pytest.raises(ValueError, match="pack it again"):
            hq.gemm(x, pw)
    np.testing.assert_array_equal(y_emu, hq.gemm(x, W, trans_b=True))
