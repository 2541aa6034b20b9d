"""Delayed tensor scaling: the update rule, the fused quantize, diagnostics, checkpoints.

The reference for the update is GoldenScaler below, written from
shared/docs/delayed-scaling.md in plain Python with np.float32 arithmetic; the reference
for every cast is hq.fake_quant / hq.to_hif8 (the codec, tested on its own).
"""
import math
import warnings

import numpy as np
import pytest

import hif8qat as hq

F32 = np.float32


# ---------------------------------------------------------------- the golden model

class GoldenScaler:
    """The spec's update rule, one line per sentence of delayed-scaling.md."""

    def __init__(self, window, algo="max", fmax=15.0, margin=0.0):
        self.window, self.algo = window, algo
        self.fmax = F32(fmax)
        self.margin_divisor = F32(2.0 ** margin)
        self.history = []  # oldest first
        self.scale = F32(1.0)
        self.staging = F32(0.0)
        self.nonfinite_events = 0

    def formula(self, amax_est):
        # (fmax / amax_est) / 2^margin in float32; inf or > 2^126 -> 2^126; < 2^-126 -> 2^-126
        with np.errstate(over="ignore", divide="ignore"):
            s = F32(self.fmax / F32(amax_est))
            s = F32(s / self.margin_divisor)
        if not s <= F32(2.0 ** 126):
            s = F32(2.0 ** 126)
        if s < F32(2.0 ** -126):
            s = F32(2.0 ** -126)
        return s

    def record(self, a):
        a = math.inf if math.isnan(a) else a
        with np.errstate(over="ignore"):
            self.staging = max(self.staging, F32(a))

    def update(self):
        a, self.staging = self.staging, F32(0.0)
        if a == 0:
            return self.scale
        if not np.isfinite(a):
            self.nonfinite_events += 1
            return self.scale
        self.history.append(a)
        if len(self.history) > self.window:
            self.history.pop(0)
        est = max(self.history) if self.algo == "max" else self.history[-1]
        self.scale = self.formula(est)
        return self.scale


def random_amaxes(rng, n):
    """Mostly log-uniform normal amaxes, with 0, tiny (scale overflows), inf and NaN."""
    out = []
    for _ in range(n):
        u = rng.random()
        if u < 0.08:
            out.append(0.0)
        elif u < 0.12:
            out.append(float(rng.choice([1e-45, 1e-40, 1e-38, 5e-38, 1e-37])))
        elif u < 0.14:
            out.append(math.inf)
        elif u < 0.16:
            out.append(math.nan)
        else:
            out.append(float(10.0 ** rng.uniform(-6, 6)))
    return out


def assert_same_as_golden(s, g):
    assert s.n_valid == len(g.history)
    np.testing.assert_array_equal(s.history, np.array(g.history, dtype=F32))
    assert s.history.dtype == F32
    assert s.scale == float(g.scale)
    assert s.scale_inv == float(F32(1.0) / g.scale)


# ---------------------------------------------------------------- the update rule

@pytest.mark.parametrize("margin", [0.0, 2.0])
@pytest.mark.parametrize("window,algo", [(1, "max"), (31, "max"), (64, "max"), (1024, "max"),
                                         (1, "most_recent"), (64, "most_recent")])
def test_update_matches_golden_model_on_random_amax_sequences(window, algo, margin):
    _compare_with_golden_on_random_amaxes(window, algo, margin)


def test_fractional_margin_matches_golden_model():
    _compare_with_golden_on_random_amaxes(31, "max", 0.5)


def _compare_with_golden_on_random_amaxes(window, algo, margin):
    rng = np.random.default_rng(window * 10 + int(margin))
    s = hq.DelayedScaler(window=window, algo=algo, margin=margin)
    g = GoldenScaler(window, algo, margin=margin)
    steps = 2 * window + 300
    amaxes = random_amaxes(rng, steps * 2)
    for t in range(steps):
        for a in amaxes[2 * t: 2 * t + 1 + (t % 2)]:  # one or two micro-batches per step
            s.record_amax(a)
            g.record(a)
        assert s.update() == float(g.update())
        assert_same_as_golden(s, g)
    assert s.totals()["nonfinite_amax_events"] == g.nonfinite_events > 0


@pytest.mark.parametrize("margin", [0.0, 2.0])
@pytest.mark.parametrize("window", [1, 31, 64, 1024])
def test_update_matches_golden_model_on_ramps_of_period_window_plus_one(window, margin):
    # The ramp's peak leaves the window one step before it comes back: the max must drop.
    s = hq.DelayedScaler(window=window, margin=margin)
    g = GoldenScaler(window, margin=margin)
    period = window + 1
    drops = 0
    for t in range(3 * period):
        a = 0.5 + 0.25 * (t % period)
        s.record_amax(a)
        g.record(a)
        before = s.scale
        s.update()
        g.update()
        drops += s.scale > before
        assert_same_as_golden(s, g)
    assert drops >= 2  # the estimate fell (scale rose) when each peak expired


@pytest.mark.parametrize("amax,expect", [
    (0.0, "unchanged"), (1e-45, 2.0 ** 126), (1e-38, 2.0 ** 126), (3.0, 5.0),
    (math.inf, "unchanged"), (math.nan, "unchanged"),
])
def test_amax_table_of_the_update_rule(amax, expect):
    s = hq.DelayedScaler(window=4)
    s.record_amax(2.0)
    s.update()  # scale 7.5, history [2]
    s.record_amax(amax)
    s.update()
    if expect == "unchanged":
        assert s.scale == 7.5 and s.n_valid == 1
        assert s.totals()["nonfinite_amax_events"] == (0 if amax == 0 else 1)
    else:
        s2 = hq.DelayedScaler(window=4)  # alone in the window, to see the clamp
        s2.record_amax(amax)
        assert s2.update() == expect
        assert s2.scale_inv == float(F32(1.0) / F32(expect))
        assert math.isfinite(s2.scale_inv) and s2.scale_inv > 0


def test_step_where_the_tensor_did_not_run_changes_nothing():
    s = hq.DelayedScaler(window=3)
    s.record_amax(1.5)
    s.update()
    h, scale = s.history, s.scale
    for _ in range(5):
        s.update()
    np.testing.assert_array_equal(s.history, h)
    assert s.scale == scale and s.n_valid == 1


def test_record_amax_rejects_negative_and_non_numbers():
    s = hq.DelayedScaler()
    with pytest.raises(ValueError, match="amax must be >= 0"):
        s.record_amax(-1.0)
    with pytest.raises(TypeError):
        s.record_amax("3")
    s.record_amax(math.nan)
    assert s.staging_amax == math.inf


# ---------------------------------------------------------------- the fused quantize

def _scaler_with_window_max(amax, **kw):
    s = hq.DelayedScaler(window=8, **kw)
    s.record_amax(amax)
    s.update()
    return s


def test_first_use_equals_fake_quant_at_the_tensors_own_scale():
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal((33, 17)) * 3).astype(dtype)
        s = hq.DelayedScaler(window=16, margin=1.0)
        g = GoldenScaler(16, margin=1.0)
        own = g.formula(np.abs(x).max())
        x_hat = s.quantize(x)
        assert x_hat.dtype == dtype and x_hat.shape == x.shape
        np.testing.assert_array_equal(x_hat, hq.fake_quant(x, float(own), clip=15.0))
        assert s.scale == 1.0  # the scale itself waits for update()
        assert s.update() == float(own)


def test_all_zero_first_tensor_gives_zeros_and_no_history():
    s = hq.DelayedScaler()
    x_hat = s.quantize(np.zeros((4, 5), F32))
    assert np.all(x_hat == 0) and not np.any(np.isnan(x_hat))
    s.update()
    assert s.n_valid == 0 and s.scale == 1.0


def test_nan_input_stays_nan_and_the_update_skips_the_step():
    s = _scaler_with_window_max(2.0)
    x = np.array([1.0, np.nan, -1.0, np.inf], F32)
    x_hat = s.quantize(x)
    assert np.isnan(x_hat[1])
    st = s.step_stats()
    assert st["nonfinite"] == 2 and st["amax"] == math.inf
    assert s.update() == 7.5 and s.n_valid == 1
    assert s.totals()["nonfinite_amax_events"] == 1
    # on first use, a non-finite tensor is cast at scale 1.0
    s2 = hq.DelayedScaler()
    np.testing.assert_array_equal(s2.quantize(x), hq.fake_quant(x, 1.0, clip=15.0))


def test_step_at_twice_the_window_max_clips_exactly_the_changed_codes():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, 4096).astype(F32)
    a = float(np.abs(x).max())
    s = _scaler_with_window_max(a)
    y = x * F32(2.0)
    y_hat, mask = s.quantize(y, return_mask=True)
    scaled = y * F32(s.scale)
    changed = hq.to_hif8(scaled) != hq.to_hif8(np.clip(scaled, -15, 15))
    assert changed.sum() > 100
    np.testing.assert_array_equal(mask, ~changed)
    np.testing.assert_array_equal(changed, np.abs(scaled) >= hq.clip_threshold(15.0))
    st = s.step_stats()
    assert st["clipped"] == changed.sum() and st["n"] == y.size
    assert st["headroom"] == float(np.abs(y).max()) * s.scale / 15.0
    assert st["headroom"] == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_array_equal(y_hat, hq.fake_quant(y, s.scale, clip=15.0))


def test_tensor_whose_amax_equals_the_window_max_shows_no_saturation():
    # float32 rounding puts amax*scale just above 15 for about one amax in nine; that
    # still encodes as 15 and must not count.
    rng = np.random.default_rng(3)
    above = 0
    for a in 10.0 ** rng.uniform(-4, 4, 300):
        x = np.array([F32(a), -F32(a) / 3, F32(a) / 7], F32)
        s = _scaler_with_window_max(float(x[0]))
        _, mask = s.quantize(x, return_mask=True)
        above += float(x[0] * F32(s.scale)) > 15.0
        assert mask.all() and s.step_stats()["clipped"] == 0
        assert s.step_stats()["headroom"] == pytest.approx(1.0, rel=1e-6)
    assert above > 0  # the case the rule exists for did occur


def test_gradient_fmax_224_clips_where_the_clamp_changes_the_code():
    x = np.random.default_rng(12).standard_normal(20000).astype(F32)
    s = _scaler_with_window_max(float(np.abs(x).max()) / 2, fmax=224.0)
    y_hat, mask = s.quantize(x, return_mask=True)
    scaled = x * F32(s.scale)
    changed = hq.to_hif8(scaled) != hq.to_hif8(np.clip(scaled, -224, 224))
    assert 0 < changed.sum() < x.size
    np.testing.assert_array_equal(mask, ~changed)
    np.testing.assert_array_equal(y_hat, hq.fake_quant(x, s.scale, clip=224.0))


def test_identity_ste_passes_every_gradient_but_still_counts_clipping():
    s = _scaler_with_window_max(1.0, ste="identity")
    y = np.array([0.5, 1.0, 2.0, -3.0], F32)
    _, mask = s.quantize(y, return_mask=True)
    assert mask.all() and s.step_stats()["clipped"] == 2


def test_without_clip_only_saturated_elements_are_masked():
    s = _scaler_with_window_max(1.0, clip=False)  # scale 15
    y = np.array([0.5, 2.0, 100.0, 2730.0, 2731.0, -5000.0], F32)  # *15: ... 40950, 40965
    y_hat, mask = s.quantize(y, return_mask=True)
    np.testing.assert_array_equal(mask, np.abs(y * F32(15)) < 40960)
    np.testing.assert_array_equal(mask, [True, True, True, True, False, False])
    np.testing.assert_array_equal(y_hat, hq.fake_quant(y, 15.0))  # no clamp at fmax
    assert y_hat[2] > 15 / 15 * 90  # 100 kept its magnitude
    assert s.step_stats()["clipped"] == 2


def test_quantize_codes_is_to_hif8_of_the_clamped_product():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((64, 32)) * 4).astype(F32)
    s = _scaler_with_window_max(3.0)
    codes, scale_inv, mask = s.quantize_codes(x)
    scale = F32(s.scale)
    assert codes.dtype == np.uint8 and codes.shape == x.shape
    np.testing.assert_array_equal(codes, hq.to_hif8(np.clip(x * scale, -15, 15)))
    assert scale_inv == float(F32(1.0) / scale)
    np.testing.assert_array_equal(mask, np.abs(x * scale) < 15.5)
    np.testing.assert_array_equal(hq.from_hif8(codes, scale_inv),
                                  hq.fake_quant(x, s.scale, clip=15.0))
    assert s.step_stats()["amax"] == float(np.abs(x).max())


def test_float64_input_after_history_matches_fake_quant():
    x = np.random.default_rng(5).standard_normal(1000) * 2
    s = _scaler_with_window_max(1.7)
    np.testing.assert_array_equal(s.quantize(x), hq.fake_quant(x, s.scale, clip=15.0))


def test_stochastic_rounding_passes_through_to_the_codec():
    x = np.random.default_rng(6).standard_normal(5000).astype(F32)
    s = _scaler_with_window_max(3.0)
    got = s.quantize(x, rounding="stochastic", seed=11)
    np.testing.assert_array_equal(
        got, hq.fake_quant(x, s.scale, clip=15.0, rounding="stochastic", seed=11))
    assert not np.array_equal(got, hq.fake_quant(x, s.scale, clip=15.0))


def test_micro_batches_record_the_max_of_all_calls():
    rng = np.random.default_rng(7)
    s = _scaler_with_window_max(1.0)
    parts = [rng.uniform(-m, m, 100).astype(F32) for m in (0.5, 3.0, 1.0)]
    for p in parts:
        s.quantize(p)
    st = s.step_stats()
    assert st["amax"] == max(float(np.abs(p).max()) for p in parts)
    assert st["n"] == 300
    assert st["headroom"] == max(float(np.abs(p).max()) * 15.0 / 15.0 for p in parts)
    s.update()
    assert s.history[-1] == F32(st["amax"])


def test_calibrate_mode_fills_the_history_without_casting():
    rng = np.random.default_rng(8)
    s = hq.DelayedScaler(window=16)
    amaxes = []
    for _ in range(10):
        x = rng.standard_normal(256).astype(F32) * rng.uniform(0.1, 10)
        x[0] = 1e-30  # would flush to zero if it were cast
        s.observe(x)
        st = s.step_stats()
        assert st["clipped"] == 0 and st["zero_flushed"] == 0 and st["headroom"] == 0
        amaxes.append(np.abs(x).max())
        s.update()
    assert s.n_valid == 10
    np.testing.assert_array_equal(s.history, np.array(amaxes, F32))
    assert s.scale == float(F32(15.0) / F32(max(amaxes)))


def test_frozen_scaler_uses_its_scale_and_records_nothing():
    s = _scaler_with_window_max(2.0)
    s.frozen = True
    x = np.array([1.0, 9.0], F32)
    np.testing.assert_array_equal(s.quantize(x), hq.fake_quant(x, 7.5, clip=15.0))
    assert s.step_stats()["n"] == 0 and s.staging_amax == 0
    s.update()
    assert s.n_valid == 1 and s.scale == 7.5
    with pytest.raises(RuntimeError, match="frozen"):
        s.observe(x)
    empty = hq.DelayedScaler()
    empty.frozen = True
    with pytest.raises(RuntimeError, match="calibrate first"):
        empty.quantize(x)
    with pytest.raises(RuntimeError, match="calibrate first"):
        empty.quantize_codes(x)


def test_step_stats_reset_at_update_and_totals_accumulate():
    s = _scaler_with_window_max(1.0)
    s.quantize(np.array([0.5, 3.0], F32))  # 3*15 clips
    s.update()
    s.quantize(np.array([0.5, 1e-12], F32))  # 1e-12 flushes
    last = s.last_step_stats()
    assert last["clipped"] == 1 and last["n"] == 2
    st = s.step_stats()
    assert st["clipped"] == 0 and st["zero_flushed"] == 1 and st["n"] == 2
    t = s.totals()
    assert (t["clipped"], t["zero_flushed"], t["n"], t["saturation_events"]) == (1, 1, 4, 1)
    assert t["steps"] == 2 and t["amax"] == 3.0


def test_results_do_not_depend_on_threads_or_isa():
    x = np.random.default_rng(9).standard_normal(300_001).astype(F32) * 5
    outs = []
    threads, isa = hq.get_num_threads(), hq.get_isa()
    try:
        for name in hq.available_isas():
            hq.set_isa(name)
            for n in (1, 2):
                hq.set_num_threads(n)
                s = _scaler_with_window_max(4.0)
                y, m = s.quantize(x, return_mask=True)
                outs.append((y, m, s.step_stats()))
    finally:
        hq.set_num_threads(threads)
        hq.set_isa(isa)
    for y, m, st in outs[1:]:
        np.testing.assert_array_equal(y, outs[0][0])
        np.testing.assert_array_equal(m, outs[0][1])
        assert st == outs[0][2]


def test_non_contiguous_and_empty_inputs():
    x = np.random.default_rng(10).standard_normal((8, 6)).astype(F32)
    a, b = _scaler_with_window_max(2.0), _scaler_with_window_max(2.0)
    np.testing.assert_array_equal(a.quantize(x.T), b.quantize(np.ascontiguousarray(x.T)))
    e = a.quantize(np.zeros((0, 3), F32))
    assert e.shape == (0, 3)
    a.update()
    assert a.n_valid == 2  # the empty call added nothing; the transposed one did


@pytest.mark.parametrize("bad", [[1.0, 2.0], np.arange(4), np.ones(3, np.float16), "x"])
def test_quantize_rejects_non_float_arrays(bad):
    with pytest.raises(TypeError):
        hq.DelayedScaler().quantize(bad)


@pytest.mark.parametrize("kwargs,err", [
    (dict(window=0), ValueError), (dict(window=-3), ValueError), (dict(window=2.5), TypeError),
    (dict(window=True), TypeError), (dict(algo="mean"), ValueError),
    (dict(fmax=0.0), ValueError), (dict(fmax=-1.0), ValueError), (dict(fmax=math.inf), ValueError),
    (dict(fmax=math.nan), ValueError), (dict(margin=-1.0), ValueError),
    (dict(margin=math.nan), ValueError), (dict(ste="zero"), ValueError),
    (dict(clip="yes"), TypeError), (dict(name=3), TypeError),
])
def test_bad_recipes_are_clear_errors(kwargs, err):
    with pytest.raises(err):
        hq.DelayedScaler(**kwargs)


def test_bad_rounding_and_seed():
    s = hq.DelayedScaler()
    x = np.ones(3, F32)
    with pytest.raises(ValueError, match="rounding"):
        s.quantize(x, rounding="up")
    with pytest.raises(ValueError, match="seed"):
        s.quantize(x, seed=-1)


# ---------------------------------------------------------------- checkpoints

def _run(s, rng_seed, steps):
    rng = np.random.default_rng(rng_seed)
    outs = []
    for t in range(steps):
        x = (rng.standard_normal(200) * 10.0 ** rng.uniform(-1, 1)).astype(F32)
        outs.append(s.quantize(x))
        if t % 7 == 3:
            s.record_amax(math.nan)
        s.update()
    return outs


def test_checkpoint_round_trip_continues_bit_identically():
    a = hq.DelayedScaler(window=16, margin=1.0, name="a")
    _run(a, 0, 40)
    a.quantize(np.array([0.25, -6.0], F32))  # mid-step: staging amax and step counters
    sd = a.state_dict()
    assert isinstance(sd["history"], np.ndarray) and sd["history"].dtype == F32
    b = hq.DelayedScaler(window=16, margin=1.0, name="b")
    b.load_state_dict(sd)
    assert b.step_stats() == a.step_stats() and b.totals() == a.totals()
    for oa, ob in zip(_run(a, 1, 40), _run(b, 1, 40)):
        np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(a.history, b.history)
    assert a.scale == b.scale and a.totals() == b.totals()
    assert b.name == "b"


def test_checkpoint_survives_a_plain_python_round_trip():
    a = hq.DelayedScaler(window=8)
    _run(a, 2, 12)
    sd = a.state_dict()
    sd["history"] = [float(v) for v in sd["history"]]  # e.g. through JSON
    b = hq.DelayedScaler(window=8)
    b.load_state_dict(sd)
    np.testing.assert_array_equal(a.history, b.history)
    assert a.scale == b.scale


@pytest.mark.parametrize("new_window", [4, 40])
def test_load_with_another_window_keeps_the_newest_amaxes(new_window):
    a = hq.DelayedScaler(window=16)
    for v in range(1, 21):  # history 5..20 after 20 steps
        a.record_amax(float(21 - v))  # descending: the oldest entries are the largest
        a.update()
    b = hq.DelayedScaler(window=new_window)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a window change alone is not worth a warning
        b.load_state_dict(a.state_dict())
    kept = a.history[-min(16, new_window):]
    np.testing.assert_array_equal(b.history, kept)
    g = GoldenScaler(new_window)
    assert b.scale == float(g.formula(kept.max()))
    b.record_amax(0.5)
    b.update()
    assert b.n_valid == min(len(kept) + 1, new_window)


def test_load_with_another_fmax_warns_and_recomputes():
    a = hq.DelayedScaler(window=8, fmax=15.0)
    a.record_amax(2.0)
    a.update()
    b = hq.DelayedScaler(window=8, fmax=224.0)
    with pytest.warns(UserWarning, match="fmax"):
        b.load_state_dict(a.state_dict())
    assert b.scale == 112.0 and b.fmax == 224.0


def _corrupt(sd, path, value):
    d = sd
    for k in path[:-1]:
        d = d[k]
    if value is KeyError:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return sd


@pytest.mark.parametrize("path,value", [
    (("scale",), KeyError), (("history",), KeyError), (("n_valid",), KeyError),
    (("recipe",), KeyError), (("recipe", "window"), KeyError), (("totals", "n"), KeyError),
    (("scale",), math.nan), (("scale",), 0.0), (("scale",), "1.0"), (("scale",), 1e60),
    (("n_valid",), 5), (("n_valid",), -1), (("history",), [1.0, 0.0]),
    (("history",), [1.0, math.inf]), (("history",), [[1.0, 2.0]]), (("history",), "abc"),
    (("recipe", "window"), 0), (("recipe", "algo"), "mean"), (("recipe", "fmax"), -1.0),
    (("recipe",), "max"), (("step", "clipped"), -4), (("totals", "steps"), 1.5),
    (("staging_amax",), -1.0),
])
def test_load_rejects_missing_or_malformed_fields(path, value):
    a = hq.DelayedScaler(window=4)
    for v in (1.0, 2.0):
        a.record_amax(v)
        a.update()
    sd = _corrupt(a.state_dict(), path, value)
    b = hq.DelayedScaler(window=4)
    b.record_amax(7.0)
    b.update()
    with pytest.raises(ValueError):
        b.load_state_dict(sd)
    assert b.scale == float(F32(15) / F32(7)) and list(b.history) == [7.0]  # untouched
    with pytest.raises(ValueError):
        b.load_state_dict([1, 2])


def test_pickle_and_deepcopy_keep_the_whole_state():
    import copy
    import pickle
    a = hq.DelayedScaler(window=8, margin=2.0, name="x")
    _run(a, 3, 10)
    a.frozen = True
    for b in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        assert b.recipe() == a.recipe() and b.name == "x" and b.frozen
        np.testing.assert_array_equal(b.history, a.history)
        assert b.scale == a.scale and b.totals() == a.totals()


def test_amax_beyond_float32_range_counts_as_non_finite():
    s = hq.DelayedScaler()
    s.record_amax(1e300)
    s.update()
    assert s.n_valid == 0 and s.totals()["nonfinite_amax_events"] == 1


def test_numpy_scalars_and_zero_d_arrays_are_tensors_of_one_element():
    s = _scaler_with_window_max(2.0)
    y = s.quantize(np.float32(1.3))
    assert y.shape == () and y.dtype == F32
    assert y == hq.fake_quant(np.array([1.3], F32), 7.5, clip=15.0)[0]
    assert s.step_stats()["n"] == 1


# ---------------------------------------------------------------- ScalerGroup

def test_scaler_group_updates_reports_and_checkpoints_all_scalers():
    g = hq.ScalerGroup()
    names = ["layers.0.q_proj.input", "layers.0.q_proj.weight", "layers.1.q_proj.input"]
    for n in names:
        g.add(hq.DelayedScaler(window=4, name=n))
    assert g.names() == names and len(g) == 3 and [s.name for s in g] == names
    assert "layers.0.q_proj.weight" in g and g[names[1]].name == names[1]
    for i, s in enumerate(g):
        s.quantize(np.array([1.0 + i, -0.5], F32))
    g.update()
    assert [s.scale for s in g] == [15.0, 7.5, 5.0]
    g[names[0]].quantize(np.array([3.0, 0.1], F32))  # 2x past its window max: clips
    rows = g.diagnostics()
    assert [r["name"] for r in rows] == names
    r0 = rows[0]
    assert r0["clipped"] == 1 and r0["clipped_fraction"] == 0.5 and r0["saturated"]
    assert r0["headroom"] == 3.0 and r0["amax"] == 3.0 and r0["scale"] == 15.0
    assert r0["n_valid"] == 1 and rows[1]["n"] == 0 and rows[1]["clipped_fraction"] == 0.0
    g.update()
    assert g.summary()[0]["saturation_events"] == 1

    sd = g.state_dict()
    h = hq.ScalerGroup(hq.DelayedScaler(window=4, name=n) for n in names)
    h.load_state_dict(sd)
    for a, b in zip(g, h):
        np.testing.assert_array_equal(a.history, b.history)
        assert a.scale == b.scale

    g.set_frozen(True)
    assert all(s.frozen for s in g)
    with pytest.raises(ValueError, match="already"):
        g.add(hq.DelayedScaler(name=names[0]))
    with pytest.raises(ValueError, match="name"):
        g.add(hq.DelayedScaler())
    with pytest.raises(TypeError):
        g.add("scaler")
    with pytest.raises(KeyError):
        g["nope"]
    with pytest.raises(ValueError, match="missing"):
        h.load_state_dict({names[0]: sd[names[0]]})
    h.load_state_dict({names[0]: sd[names[0]]}, strict=False)


def test_quantize_codes_without_mask_gives_the_same_codes_and_statistics():
    x = np.float32([0.5, 3.0, -5.0, 1e-9, np.nan, 0.7])
    out = []
    for return_mask in (True, False):
        s = hq.DelayedScaler(window=4)
        s.observe(np.float32([1.0]))
        s.update()
        codes, scale_inv, mask = s.quantize_codes(x, return_mask=return_mask)
        out.append((codes, scale_inv, s.step_stats()))
        assert (mask is None) == (not return_mask)
    assert np.array_equal(out[0][0], out[1][0]) and out[0][1:] == out[1][1:]
    assert out[0][2]["clipped"] == 2 and out[0][2]["nonfinite"] == 1
