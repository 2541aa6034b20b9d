"""The model's fused float32 kernels (csrc/ops.c) and its threaded/causal attention agree
with float64 NumPy written here, keep NaN, and give the same bits on every ISA path and
thread count."""
import numpy as np
import pytest

import hif8qat as hq
from hif8qat import _C
from hif8qat.model import llama as L

ULP = 2.0 ** -23


@pytest.fixture
def restore_threads_and_isa():
    n, isa = hq.get_num_threads(), hq.get_isa()
    yield
    hq.set_num_threads(n)
    hq.set_isa(isa)


def isas():
    return [i for i in ("scalar", "avx2") if i in hq.available_isas()]


def test_exp_is_within_two_ulp_and_keeps_special_values():
    x = np.concatenate([np.linspace(-87.3, 88.7, 400001, dtype=np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30])])
    got = _C.ops_expf(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 2 * ULP
    special = _C.ops_expf(np.float32([np.inf, -np.inf, np.nan, -200.0, 200.0, 88.8, -87.4]))
    assert special[0] == np.inf and special[1] == 0.0 and np.isnan(special[2])
    assert special[3] == 0.0 and special[4] == np.inf and special[5] == np.inf
    assert special[6] == 0.0          # below 2^-126: flushed (never matters in softmax/SiLU)


def softmax64(s, bias, scale):
    z = s.astype(np.float64) * scale + bias
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("cols", [1, 7, 8, 37, 256])
def test_softmax_rows_matches_float64_on_every_isa(cols, restore_threads_and_isa):
    rng = np.random.default_rng(cols)
    s = rng.standard_normal((9, cols)).astype(np.float32) * 4
    bias = np.where(rng.random((9, cols)) < 0.3, -np.inf, 0.0).astype(np.float32)
    bias[:, 0] = 0.0                                   # every row keeps one key
    results = []
    for isa in isas():
        hq.set_isa(isa)
        got = s.copy()
        _C.softmax_rows(got, bias, 0.125)
        results.append(got)
        np.testing.assert_allclose(got, softmax64(s, bias, 0.125), rtol=1e-6, atol=1e-7)
        assert np.all(got[bias == -np.inf] == 0.0)     # masked keys exactly 0
    for r in results[1:]:
        assert r.tobytes() == results[0].tobytes()


def test_softmax_rows_reads_strided_rows_and_propagates_nan():
    s = np.zeros((4, 16), np.float32)
    s[2, 5] = np.nan
    view = s[:, :10]                                   # row stride 16, 10 columns
    _C.softmax_rows(view, None, 1.0)
    assert np.all(np.isnan(view[2])) and np.allclose(view[[0, 1, 3]], 0.1)
    assert np.all(s[:, 10:] == 0.0)                    # untouched beyond the view
    with pytest.raises(TypeError):
        _C.softmax_rows(np.zeros((2, 3)), None, 1.0)  # float64
    with pytest.raises(ValueError):
        _C.softmax_rows(np.zeros((3, 2), np.float32).T, None, 1.0)


def swiglu64(g, u, dh):
    g, u, dh = (a.astype(np.float64) for a in (g, u, dh))
    with np.errstate(all="ignore"):                  # the test's inf/NaN inputs
        sig = 1.0 / (1.0 + np.exp(-g))
        h = g * sig * u
        dsilu = sig * (1.0 + g * (1.0 - sig))
        return h, dh * u * dsilu, dh * g * sig


def test_swiglu_fused_matches_float64_and_threads_and_isas_agree(restore_threads_and_isa):
    rng = np.random.default_rng(1)
    shape = (300, 1001)                   # > 2^18 elements: ops.c uses 2 threads
    g = (rng.standard_normal(shape) * 6).astype(np.float32)
    g[0, :4] = [-200.0, 200.0, np.nan, -np.inf]
    u = rng.standard_normal(shape).astype(np.float32)
    dh = rng.standard_normal(shape).astype(np.float32)
    h_ref, dg_ref, du_ref = swiglu64(g, u, dh)
    bits = set()
    for isa in isas():
        for n in (1, 2):
            hq.set_isa(isa)
            hq.set_num_threads(n)
            with np.errstate(all="raise"):             # no spurious overflow warnings
                h = L.swiglu_forward(g, u)
                dg, du = L.swiglu_backward(dh, g, u)
            # the same bits, NaN's sign aside (x86 picks an operand's NaN by position)
            bits.add(b"".join(np.where(np.isnan(a), np.nan, a).tobytes() for a in (h, dg, du)))
    assert len(bits) == 1
    ok = np.isfinite(h_ref)
    np.testing.assert_allclose(h[ok], h_ref[ok], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dg[np.isfinite(dg_ref)], dg_ref[np.isfinite(dg_ref)],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(du[ok], du_ref[ok], rtol=1e-5, atol=1e-6)
    assert h[0, 0] == 0.0 and np.isnan(h[0, 2]) and np.isnan(dg[0, 2])


def test_rmsnorm_and_rope_fused_match_the_float64_numpy_path(restore_threads_and_isa):
    rng = np.random.default_rng(2)
    N, C = 700, 400                       # > 2^18 elements: ops.c uses 2 threads
    x = rng.standard_normal((N, C)).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    dout = rng.standard_normal((N, C)).astype(np.float32)
    out64, rstd64 = L.rmsnorm_forward(x.astype(np.float64), w.astype(np.float64), 1e-5)
    dw64 = np.zeros(C)
    dx64 = L.rmsnorm_backward(dout.astype(np.float64), x.astype(np.float64),
                              w.astype(np.float64), rstd64, dw64)
    bits = set()
    for n in (1, 2):
        hq.set_num_threads(n)
        out, rstd = L.rmsnorm_forward(x, w, 1e-5)
        dw = np.full(C, 1.0, np.float32)
        dx = L.rmsnorm_backward(dout, x, w, rstd, dw, accumulate=True)
        bits.add(out.tobytes() + dx.tobytes() + dw.tobytes())
        np.testing.assert_allclose(out, out64, rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(dx, dx64, rtol=2e-5, atol=1e-5)
        np.testing.assert_allclose(dw, dw64 + 1.0, rtol=2e-5, atol=1e-5)
    assert len(bits) == 1
    cos, sin = L.rope_tables(12, 16, 1e4, np.float32)
    q = rng.standard_normal((3, 12, 5, 16)).astype(np.float32)
    for fn in (L.rope_forward, L.rope_backward):
        got = fn(q, cos, sin)
        want = fn(q.astype(np.float64), cos.astype(np.float64), sin.astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        per_row = fn(q, np.broadcast_to(cos, (3, 12, 8)).copy(),
                     np.broadcast_to(sin, (3, 12, 8)).copy())
        assert per_row.tobytes() == got.tobytes()       # (B, T, D/2) tables
        strided = fn(q.transpose(0, 2, 1, 3).copy().transpose(0, 2, 1, 3), cos, sin)
        assert strided.tobytes() == got.tobytes()       # non-contiguous input


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_causal_attention_skips_only_masked_work(dtype):
    """causal=True (blocked) gives the full computation's result, for the causal bias and
    for a per-row mask inside it, forward and backward."""
    rng = np.random.default_rng(3)
    B, KV, R, T, D = 2, 2, 2, 200, 16
    q = rng.standard_normal((B, KV, R * T, D)).astype(dtype)
    k = rng.standard_normal((B, KV, T, D)).astype(dtype)
    v = rng.standard_normal((B, KV, T, D)).astype(dtype)
    dout = rng.standard_normal((B, KV, R * T, D)).astype(dtype)
    causal = L.causal_bias(T, R, dtype)
    packed = np.tile(causal[:T], (B, 1, 1))
    packed[1, 120:, 40:100] = -np.inf                  # row 1: a second segment at 100
    packed = np.tile(packed, (1, R, 1))[:, None]       # (B, 1, R*T, T)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for bias in (causal, packed):
        o_full, p_full = L.attention_forward(q, k, v, bias)
        o_blk, p_blk = L.attention_forward(q, k, v, bias, causal=True)
        np.testing.assert_allclose(o_blk, o_full, atol=tol)
        np.testing.assert_allclose(p_blk, p_full, atol=tol)
        assert np.all(p_blk[..., np.triu(np.ones((T, T), bool), 1)[None].repeat(R, 0)
                            .reshape(R * T, T)] == 0.0)
        for g_full, g_blk in zip(L.attention_backward(dout, q, k, v, p_full),
                                 L.attention_backward(dout, q, k, v, p_blk, causal=True)):
            np.testing.assert_allclose(g_blk, g_full, atol=10 * tol)
