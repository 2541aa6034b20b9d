"""The HiF8 codec against the spec (hif8-format.md) and an independent Python golden model."""
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import hif8qat as hq
import hif8_reference as ref

ISAS = hq.available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    before = hq.get_isa()
    hq.set_isa(request.param)
    yield request.param
    hq.set_isa(before)


def f32(*v):
    return np.array(v, dtype=np.float32)


# ---------------------------------------------------------------- decoding

def test_decode_all_256_codes_match_the_spec_formula():
    got = hq.hif8_values()
    want = np.array([ref.decode(c) for c in range(256)], dtype=np.float64)
    assert got.dtype == np.float32 and got.shape == (256,)
    np.testing.assert_array_equal(got.astype(np.float64), want)  # NaN == NaN here
    assert np.isnan(got[0x80]) and got[0x6F] == np.inf and got[0xEF] == -np.inf
    assert np.sum(np.isfinite(got)) == 253


def test_spec_examples():
    v = hq.hif8_values()
    assert v[0x08] == 1.0 and v[0x0E] == 1.75 and v[0x2E] == 14.0 and v[0x2F] == 15.0
    assert v[0x6E] == 32768.0 and v[0x7E] == 2.0 ** -15 and v[0x01] == 2.0 ** -22
    assert hq.HIF8_MAX == 32768.0 and hq.HIF8_MIN_POSITIVE == 2.0 ** -22


def test_from_hif8_scale_and_dtype():
    c = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = hq.from_hif8(c, 0.5)
    assert out.dtype == np.float32 and out.shape == (16, 16)
    np.testing.assert_array_equal(out.ravel(), hq.hif8_values() * np.float32(0.5))
    out64 = hq.from_hif8(c[:, ::2], 0.1, dtype=np.float64)  # strided input too
    np.testing.assert_array_equal(out64, hq.hif8_values().astype(np.float64).reshape(16, 16)[:, ::2] * 0.1)


def test_round_trip_every_code(isa):
    c = np.arange(256, dtype=np.uint8)
    finite = c != 0x80
    back = hq.to_hif8(hq.from_hif8(c), saturate=False)
    np.testing.assert_array_equal(back[finite], c[finite])
    assert back[0x80] == 0x80
    sat = hq.to_hif8(hq.from_hif8(c))  # default saturate=True: ±Inf -> ±32768
    assert sat[0x6F] == 0x6E and sat[0xEF] == 0xEE
    np.testing.assert_array_equal(np.delete(sat, [0x6F, 0xEF]), np.delete(back, [0x6F, 0xEF]))


# ---------------------------------------------------------------- nearest rounding

def _edge_cases():
    """Every midpoint between neighbouring values, its float32 neighbours, and the values."""
    vals = [v for v, _ in ref.POSITIVE]
    pts = [0.0, 2.0 ** -23, 40960.0, 32768.0, 49152.0, 1e30, 2.0 ** -24]
    for lo, hi in zip([0.0] + vals, vals + [49152.0]):
        mid = np.float32((lo + hi) / 2)
        pts += [float(mid), float(np.nextafter(mid, np.float32(0))), float(np.nextafter(mid, np.float32(np.inf))),
                hi, float(np.nextafter(np.float32(hi), np.float32(np.inf)))]
    pts = np.array(sorted(set(pts)), dtype=np.float32)
    return np.concatenate([pts, -pts])


@pytest.mark.parametrize("saturate", [True, False])
def test_every_midpoint_and_its_neighbours(isa, saturate):
    x = _edge_cases()
    got = hq.to_hif8(x, saturate=saturate)
    want = np.array([ref.encode(float(v), saturate) for v in x], dtype=np.uint8)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [(float(x[i]), hex(got[i]), hex(want[i])) for i in bad[:10]]


def test_named_rules_of_the_spec():
    assert hq.to_hif8(np.float32(7.75)) == hq.to_hif8(np.float32(8.0))      # tie away from zero
    assert hq.hif8_values()[hq.to_hif8(np.float32(15.5))] == 16.0           # tie across widths
    assert hq.to_hif8(np.float32(2.0 ** -23)) == 0x01                        # underflow tie -> 2^-22
    assert hq.to_hif8(np.float32(np.nextafter(np.float32(2.0 ** -23), np.float32(0)))) == 0x00
    assert hq.to_hif8(np.float32(-1e-30)) == 0x00 and hq.to_hif8(np.float32(-0.0)) == 0x00  # never -0
    assert hq.to_hif8(np.float32(40960.0)) == 0x6E and hq.to_hif8(np.float32(40960.0), saturate=False) == 0x6F
    below = np.nextafter(np.float32(40960.0), np.float32(0))
    assert hq.to_hif8(below, saturate=False) == 0x6E                         # below 40960: finite
    assert hq.to_hif8(f32(np.nan), saturate=True)[0] == 0x80                 # NaN never hidden
    assert hq.to_hif8(f32(-np.inf))[0] == 0xEE and hq.to_hif8(f32(-np.inf), saturate=False)[0] == 0xEF
    # denormal binades: round up iff x >= 1.5 * 2^e
    for e in range(-22, -15):
        t = np.float32(1.5 * 2.0 ** e)
        assert hq.hif8_values()[hq.to_hif8(t)] == 2.0 ** (e + 1)
        assert hq.hif8_values()[hq.to_hif8(np.nextafter(t, np.float32(0)))] == 2.0 ** e


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2 ** 32 - 1), min_size=1, max_size=64), st.booleans())
def test_random_float32_bit_patterns_match_the_golden_model(bits, saturate):
    x = np.array(bits, dtype=np.uint32).view(np.float32)
    want = np.array([ref.encode(float(v), saturate) for v in x], dtype=np.uint8)
    for name in ISAS:
        hq.set_isa(name)
        np.testing.assert_array_equal(hq.to_hif8(x, saturate=saturate), want)
    hq.set_isa(ISAS[-1])


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_float64_is_rounded_from_its_exact_value(v):
    want = ref.encode(v)
    assert hq.to_hif8(np.float64(v)) == want
    assert hq.to_hif8(v) == want  # Python scalars are float64


def test_float64_never_passes_through_float32():
    # just above the 7.5|8 midpoint... in float64 but rounds to the midpoint in float32
    mid = 15.5
    x = mid - 2.0 ** -40           # float64: below the tie -> 15; via float32 it would be 15.5 -> 16
    assert hq.hif8_values()[hq.to_hif8(np.float64(x))] == 15.0
    assert hq.hif8_values()[hq.to_hif8(np.float32(x))] == 16.0


# ---------------------------------------------------------------- scaled casts

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fake_quant_follows_the_scaled_cast_arithmetic(isa, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(5003) * 3).astype(dtype)
    x[:4] = [0.0, np.nan, np.inf, -1e-12]
    scale, clip = 1.7, 15.0
    y, stats = hq.fake_quant(x, scale, clip=clip, return_stats=True)
    assert y.dtype == dtype and y.shape == x.shape
    s = dtype(scale)
    inv = dtype(1) / s
    xs = x * s
    clamped = np.where(np.isnan(xs), xs, np.clip(xs, -clip, clip))
    want = np.array([ref.decode(ref.encode(float(v))) for v in clamped], dtype=dtype) * inv
    np.testing.assert_array_equal(y, want)
    finite = np.isfinite(x)
    assert stats.n == x.size and stats.nonfinite == 2
    assert stats.amax == np.abs(x[finite]).max()
    assert stats.clipped == int(np.sum(np.abs(xs) >= 15.5))  # +inf included
    flushed = finite & (x != 0) & (want == 0)
    assert stats.zero_flushed == int(flushed.sum()) >= 1


def _golden_fake_quant_f32(x, scale, clip):
    """decode(encode(clamp(x*scale, ±clip))) * (1/scale) in float32, from the golden model."""
    s = np.float32(scale)
    xs = x * s
    if clip is not None:
        xs = np.where(np.isnan(xs), xs, np.clip(xs, np.float32(-clip), np.float32(clip)))
    dec = np.array([ref.decode(ref.encode(float(v))) for v in xs], dtype=np.float32)
    return dec * (np.float32(1) / s)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 2 ** 32 - 1), min_size=1, max_size=80),
       st.sampled_from([1.0, 1.75, 4.0, 3e-6, 1e5]), st.sampled_from([None, 15.0, 224.0, 1e-9, 5e4]))
def test_fake_quant_of_random_bit_patterns_is_the_golden_model_on_every_path(bits, scale, clip):
    x = np.array(bits, dtype=np.uint32).view(np.float32)
    want = _golden_fake_quant_f32(x, scale, clip)
    got = []
    for name in ISAS:
        hq.set_isa(name)
        got.append(hq.fake_quant(x, scale, clip=clip, return_stats=True))
    hq.set_isa(ISAS[-1])
    y0, s0 = got[0]
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(y0), nan)
    # bit for bit where finite: zero is +0, never -0
    np.testing.assert_array_equal(y0[~nan].view(np.uint32), want[~nan].view(np.uint32))
    for y, s in got[1:]:  # every ISA path: same bits (NaN payloads too) and same statistics
        np.testing.assert_array_equal(y.view(np.uint32), y0.view(np.uint32))
        assert s == s0


def test_fake_quant_of_a_large_array_is_the_same_on_every_path():
    # 4.2M elements: big enough for the streaming-store output path of the vector kernels
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(4_200_003) * 6).astype(np.float32)
    x[::1001] = rng.integers(0, 2 ** 32, x[::1001].size, dtype=np.uint64).astype(np.uint32).view(np.float32)
    got = []
    for name in ISAS:
        hq.set_isa(name)
        got.append(hq.fake_quant(x, 2.5, clip=15.0, return_stats=True))
        got.append(hq.fake_quant(x[1:], 2.5, return_stats=True))
    hq.set_isa(ISAS[-1])
    for k in range(2, len(got)):
        np.testing.assert_array_equal(got[k][0].view(np.uint32), got[k % 2][0].view(np.uint32))
        assert got[k][1] == got[k % 2][1]
    sample = slice(0, None, 997)
    want = _golden_fake_quant_f32(x[sample], 2.5, 15.0)
    nan = np.isnan(want)
    np.testing.assert_array_equal(got[0][0][sample][~nan], want[~nan])


def test_large_outputs_are_fresh_arrays_even_when_memory_is_reused():
    # cast outputs of >= 1 MiB reuse freed blocks: a live result must never be overwritten
    rng = np.random.default_rng(6)
    xs = [(rng.standard_normal(1 << 19) * 4).astype(dt) for dt in (np.float32, np.float32, np.float64)]
    want = [hq.fake_quant(x.copy(), 1.5, clip=15.0) for x in xs]
    for _ in range(3):
        a = hq.fake_quant(xs[0], 1.5, clip=15.0)
        b = hq.fake_quant(xs[1], 1.5, clip=15.0)
        c = hq.fake_quant(xs[2], 1.5, clip=15.0)
        assert not np.shares_memory(a, b)
        for got, w in zip((a, b, c), want):
            np.testing.assert_array_equal(got, w)
            assert got.flags.owndata and got.flags.c_contiguous and got.flags.writeable
        del a, b
    # an output can still be resized in place (the handler's realloc keeps the data)
    c.resize(c.size + 1000, refcheck=False)
    np.testing.assert_array_equal(c[:-1000], want[2])
    assert not c[-1000:].any()


def test_clipped_means_the_clamp_changed_the_code():
    x = f32(14.9, 15.0, 15.2, 15.49, 15.5, 16.0, -15.5, -15.3)
    y, st_ = hq.fake_quant(x, 1.0, clip=15.0, return_stats=True)
    np.testing.assert_array_equal(y, f32(15, 15, 15, 15, 15, 15, -15, -15))
    assert st_.clipped == 3
    assert hq.clip_threshold(15.0) == 15.5 and hq.clip_threshold(None) == 40960.0
    _, nc = hq.fake_quant(f32(40959, 40960, 1e6), return_stats=True)
    assert nc.clipped == 2  # without a clamp, "clipped" means saturated


def test_nan_propagates_and_is_counted(isa):
    x = f32(1.0, np.nan, 2.0)
    y, s = hq.fake_quant(x, 2.0, clip=15.0, return_stats=True)
    assert np.isnan(y[1]) and y[0] == 1.0 and s.nonfinite == 1 and s.amax == 2.0


def test_shapes_strides_and_scalars():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2, ::-1]
    np.testing.assert_array_equal(hq.to_hif8(x), hq.to_hif8(np.ascontiguousarray(x)))
    assert hq.to_hif8(np.float32(3.0)).shape == ()
    assert hq.fake_quant(2.9) == 3.0 and isinstance(hq.fake_quant(2.9), np.ndarray)
    assert hq.to_hif8(np.zeros((0, 5), np.float32)).shape == (0, 5)


# ---------------------------------------------------------------- stochastic rounding

def test_stochastic_rounding_is_unbiased():
    for v in [1.1, 3.3, 0.7, 1000.3, 3e-7, 5e-8, -2.6, 20000.0]:
        x = np.full(200_000, v, dtype=np.float32)
        q = hq.fake_quant(x, rounding="stochastic", seed=7)
        lo, hi = ref.neighbours(abs(float(np.float32(v))))
        assert set(np.unique(np.abs(q))) <= {np.float32(lo), np.float32(hi)}
        # 16 random bits: the mean is exact up to 2^-16 of the gap, plus sampling noise
        gap = hi - lo
        assert abs(float(q.astype(np.float64).mean()) - float(np.float32(v))) < gap * (4 / math.sqrt(x.size) + 2 ** -15)


def test_stochastic_rounding_is_reproducible_across_threads_isas_and_layout():
    x = (np.random.default_rng(3).standard_normal((512, 700)) * 5).astype(np.float32)
    results = []
    for name in ISAS:
        hq.set_isa(name)
        for t in (1, 2):
            hq.set_num_threads(t)
            results.append(hq.to_hif8(x, 3.0, rounding="stochastic", seed=11))
    hq.set_isa(ISAS[-1])
    hq.set_num_threads(2)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    # keyed by C-order index: a Fortran-ordered copy gives the same codes
    np.testing.assert_array_equal(hq.to_hif8(np.asfortranarray(x), 3.0, rounding="stochastic", seed=11), results[0])
    assert not np.array_equal(hq.to_hif8(x, 3.0, rounding="stochastic", seed=12), results[0])


def test_stochastic_fake_quant_is_the_stochastic_cast_decoded_on_every_path_and_thread_count():
    # fake_quant has its own kernel; to_hif8 + from_hif8 run the general one
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(4_200_017) * 3).astype(np.float32)
    x[:5000] *= np.float32(2.0 ** -24)  # the denormal binades and below 2^-22
    x[5000:5100] = np.float32(50000.0)
    x[5100] = np.nan
    scale = 1.5
    want = hq.from_hif8(hq.to_hif8(x, scale, rounding="stochastic", seed=9), np.float32(1) / np.float32(scale))
    threads = hq.get_num_threads()
    for name in ISAS:
        hq.set_isa(name)
        for t in (1, 2):
            hq.set_num_threads(t)
            for part in (slice(None), slice(0, 300_001)):  # streamed and cached outputs
                got = hq.fake_quant(x[part], scale, rounding="stochastic", seed=9)
                np.testing.assert_array_equal(got, want[part])
    hq.set_isa(ISAS[-1])
    hq.set_num_threads(threads)


def test_threads_do_not_change_nearest_results_or_stats():
    x = (np.random.default_rng(4).standard_normal(3_000_001) * 9).astype(np.float32)
    out = []
    for t in (1, 2, 3):
        hq.set_num_threads(t)
        out.append(hq.fake_quant(x, 1.3, clip=15.0, return_stats=True))
    hq.set_num_threads(2)
    for y, s in out[1:]:
        np.testing.assert_array_equal(y, out[0][0])
        assert s == out[0][1]


def test_num_threads_default_honours_omp_num_threads():
    code = "import hif8qat as hq; print(hq.get_num_threads())"
    r = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "1"


def test_isa_env_var_forces_a_path_and_warns_on_nonsense():
    import os
    env = {**os.environ, "HIF8QAT_ISA": "scalar"}
    r = subprocess.run([sys.executable, "-c", "import hif8qat as hq; print(hq.get_isa())"], env=env,
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "scalar"
    env["HIF8QAT_ISA"] = "quantum"
    r = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", "import hif8qat"], env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "HIF8QAT_ISA" in r.stderr


# ---------------------------------------------------------------- bf16

def test_round_bf16_against_a_bit_level_reference():
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)
    bits[:6] = [0x7F800000, 0xFF800000, 0x7FC00001, 0x00000001, 0x7F7FFFFF, 0x3F808000]
    x = bits.view(np.float32)
    got = hq.round_bf16(x)
    # reference: exact rounding in float64 of the bf16 grid via ml_dtypes when available
    ml = pytest.importorskip("ml_dtypes")
    with np.errstate(invalid="ignore"):
        want = x.astype(ml.bfloat16).astype(np.float32)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.all(np.isnan(got[nan]))
    assert got[4] == np.inf                              # past the bf16 range -> inf
    assert got[3] == 0.0 and hq.round_bf16(f32(3e-39))[0] != 0  # subnormals rounded, not flushed


def test_round_bf16_ties_to_even():
    assert hq.round_bf16(f32(1 + 2 ** -8))[0] == 1.0
    assert hq.round_bf16(f32(1 + 3 * 2 ** -8))[0] == 1 + 2 ** -6


# ---------------------------------------------------------------- an independent oracle

def test_en_dtypes_hifloat8_agrees_where_the_spec_says_it_should():
    en = pytest.importorskip("en_dtypes")
    c = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(c.view(en.hifloat8).astype(np.float32), hq.hif8_values())
    x = (np.random.default_rng(6).standard_normal(200_000) * np.float32(300)).astype(np.float32)
    x[:8] = [7.75, 15.5, 2 ** -23, 40960, np.inf, -np.inf, np.nan, -0.0]
    # en_dtypes casts are non-saturating: compare with saturate=False
    np.testing.assert_array_equal(x.astype(en.hifloat8).view(np.uint8), hq.to_hif8(x, saturate=False))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad", [np.arange(3), np.ones(3, np.complex64), np.array([1.0], dtype=object),
                                 np.ones(3, np.float16), "1.0", None])
def test_wrong_input_dtype_is_a_type_error(bad):
    with pytest.raises(TypeError):
        hq.to_hif8(bad)
    with pytest.raises(TypeError):
        hq.fake_quant(bad)


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan, np.inf, 1e-50, 1e300])
def test_bad_scale_is_a_value_error(scale):
    with pytest.raises(ValueError, match="scale"):
        hq.to_hif8(f32(1.0), scale)
    with pytest.raises(ValueError, match="scale"):
        hq.fake_quant(f32(1.0), scale)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="rounding"):
        hq.to_hif8(f32(1.0), rounding="up")
    with pytest.raises(TypeError, match="uint8"):
        hq.from_hif8(np.zeros(3, np.int8))
    with pytest.raises(TypeError, match="uint8"):
        hq.from_hif8([1, 2])
    with pytest.raises(ValueError, match="scale_inv"):
        hq.from_hif8(np.zeros(3, np.uint8), np.nan)
    with pytest.raises(TypeError):
        hq.from_hif8(np.zeros(3, np.uint8), dtype=np.int32)
    with pytest.raises(ValueError, match="clip"):
        hq.fake_quant(f32(1.0), clip=0.0)
    with pytest.raises(ValueError, match="clip"):
        hq.fake_quant(f32(1.0), clip=np.nan)
    with pytest.raises(ValueError, match="seed"):
        hq.to_hif8(f32(1.0), seed=-1)
    with pytest.raises(ValueError, match="out"):
        hq.to_hif8(f32(1.0, 2.0), out=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="out"):
        hq.fake_quant(f32(1.0, 2.0), out=np.zeros(2, np.float64))
    with pytest.raises(TypeError):
        hq.round_bf16(np.ones(2, np.float64))
    with pytest.raises(ValueError):
        hq.set_num_threads(0)
    with pytest.raises(ValueError):
        hq.set_isa("sse9")
    out = np.zeros(2, np.uint8)
    assert hq.to_hif8(f32(1.0, 2.0), out=out) is out and out[0] == 0x08
