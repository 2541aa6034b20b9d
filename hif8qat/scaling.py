"""Delayed tensor scaling (DTS): one scaler per quantized tensor role, and a group of them.

The semantics are those of ``shared/docs/delayed-scaling.md``; the state machine and
the fused cast live in C (``csrc/scaling.c``), this module validates arguments, owns
the names and the checkpoint format.

A training step with one scaler::

    s = hq.DelayedScaler(window=64, algo="max", fmax=15.0, name="layers.0.mlp.input")
    x_hat = s.quantize(x)          # cast with the scale from *previous* steps' amaxes
    ...                            # (every micro-batch: the staging amax is a running max)
    s.update()                     # once per optimizer step: history <- amax, new scale

The scale used at step t comes from amaxes seen before t ("delayed"), so the cast costs
one pass over the data; with ``algo="max"`` over a 64-step window, a tensor whose amax
jumps rarely exceeds the estimate ("amax saturation"), and ``step_stats()`` says when
it does (``headroom`` > 1, ``clipped`` > 0).
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from . import _C

__all__ = ["DelayedScaler", "ScalerGroup"]

_ALGOS = ("max", "most_recent")
_STES = ("masked", "identity")
_ROUNDINGS = {"nearest": 0, "stochastic": 1}
_MAX_WINDOW = 1 << 20
_MAX_MARGIN = 126.0
_HIF8_MAX = 32768.0
# recipe fields whose difference changes the scale after load_state_dict
_RECIPE_FIELDS = ("window", "algo", "fmax", "margin", "clip")
_COUNTER_FIELDS = ("amax", "headroom", "clipped", "zero_flushed", "nonfinite", "n")
_EVENT_FIELDS = ("steps", "saturation_events", "nonfinite_amax_events")


def _is_int(v) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, (numbers.Real, np.floating, np.integer)) and not isinstance(
        v, (bool, np.bool_))


def _check_recipe(window, algo, fmax, margin, clip, ste):
    """Validates a recipe: TypeError for a wrong type, ValueError for a bad value."""
    if not _is_int(window):
        raise TypeError(f"window must be an int >= 1, got {window!r}")
    if not 1 <= int(window) <= _MAX_WINDOW:
        raise ValueError(f"window must be in [1, {_MAX_WINDOW}], got {window}")
    if not isinstance(algo, str) or algo not in _ALGOS:
        raise ValueError(f"algo must be one of {_ALGOS}, got {algo!r}")
    if not _is_real(fmax):
        raise TypeError(f"fmax must be a real number, got {fmax!r}")
    if not (math.isfinite(fmax) and 0.0 < fmax <= _HIF8_MAX and np.float32(fmax) > 0):
        raise ValueError(f"fmax must be finite, > 0 and <= 32768 (the largest HiF8 value), "
                         f"got {fmax!r}; use 15.0 for activations/weights, 224.0 for gradients")
    if not _is_real(margin):
        raise TypeError(f"margin must be a real number, got {margin!r}")
    if not (math.isfinite(margin) and 0.0 <= margin <= _MAX_MARGIN):
        raise ValueError(f"margin must be finite and in [0, {_MAX_MARGIN:g}], got {margin!r}")
    if not isinstance(clip, (bool, np.bool_)):
        raise TypeError(f"clip must be a bool, got {clip!r}")
    if not isinstance(ste, str) or ste not in _STES:
        raise ValueError(f"ste must be one of {_STES}, got {ste!r}")


def _as_input(x, what="x") -> np.ndarray:
    if isinstance(x, (np.float32, np.float64)):  # a NumPy scalar: a 0-d array
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray of float32 or float64, got "
                        f"{type(x).__name__}; wrap it with np.asarray(..., dtype=np.float32)")
    if x.dtype != np.float32 and x.dtype != np.float64:
        raise TypeError(f"{what} must be float32 or float64, got dtype {x.dtype}; "
                        f"convert with {what}.astype(np.float32)")
    if not (x.flags.c_contiguous and x.flags.aligned and x.dtype.isnative):
        x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
    return x


def _rounding_code(rounding) -> int:
    try:
        return _ROUNDINGS[rounding]
    except (KeyError, TypeError):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}") from None


def _check_seed(seed) -> int:
    if not _is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return int(seed)


class DelayedScaler:
    """The delayed-scaling state of one tensor: amax history, scale, diagnostics.

    Args:
        window: amax_history length W (>= 1); the paper's fix uses 64.
        algo: "max" (max over the window) or "most_recent".
        fmax: the window amax is mapped onto this value (15 for activations and
            weights, 224 for gradients); rounded to float32.
        margin: the scale is divided by 2**margin (more room above the estimate).
        clip: clamp x*scale to +-fmax before encoding (True), or let values above
            fmax use HiF8's range up to 32768 (False; then "clipped" means saturated,
            |x*scale| >= 40960).
        ste: "masked" (the gradient is zero where the clamp changed the code) or
            "identity" (passes everywhere).
        name: the tensor's role in the model, for diagnostics and ScalerGroup keys.

    Example:
        >>> import numpy as np, hif8qat as hq
        >>> s = hq.DelayedScaler(window=4, name="demo")
        >>> x = np.array([0.5, -2.0, 3.0], dtype=np.float32)
        >>> x_hat = s.quantize(x)        # empty history: scaled by this tensor's own amax
        >>> s.update()                   # history [3.0] -> scale 15/3
        5.0
        >>> s.history
        array([3.], dtype=float32)
    """

    def __init__(self, window: int = 64, algo: str = "max", fmax: float = 15.0,
                 margin: float = 0.0, clip: bool = True, ste: str = "masked", name: str = ""):
        _check_recipe(window, algo, fmax, margin, clip, ste)
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        self._state = _C.ScalerState(int(window), algo, float(fmax), float(margin), bool(clip),
                                     ste)
        self.name = name

    # ---- the recipe (read-only: build a new scaler to change it) ----
    window = property(lambda self: self._state.window, doc="amax history length W")
    algo = property(lambda self: self._state.algo, doc='"max" or "most_recent"')
    fmax = property(lambda self: self._state.fmax, doc="target of the amax (float32 value)")
    margin = property(lambda self: self._state.margin, doc="scale divided by 2**margin")
    clip = property(lambda self: self._state.clip, doc="clamp x*scale to +-fmax")
    ste = property(lambda self: self._state.ste, doc='"masked" or "identity"')

    def recipe(self) -> dict:
        """The recipe as a plain dict (what a log or a checkpoint records)."""
        return {"window": self.window, "algo": self.algo, "fmax": self.fmax,
                "margin": self.margin, "clip": self.clip, "ste": self.ste}

    # ---- the state ----
    @property
    def scale(self) -> float:
        """The current multiplier (a float32 value); 1.0 until the first update."""
        return self._state.scale

    @property
    def scale_inv(self) -> float:
        """1.0f / scale, computed in float32."""
        return self._state.scale_inv

    @property
    def history(self) -> np.ndarray:
        """The amax history, float32, oldest first (a copy; n_valid entries)."""
        return self._state.history()

    @property
    def n_valid(self) -> int:
        """How many entries of the window are filled."""
        return self._state.n_valid

    @property
    def staging_amax(self) -> float:
        """Running max of |x| since the last update (+inf after a NaN/Inf input)."""
        return self._state.staging_amax

    @property
    def amax_estimate(self) -> float:
        """max(history) for algo "max", the newest entry for "most_recent"; 0 if empty."""
        return self._state.amax_estimate

    @property
    def frozen(self) -> bool:
        """Evaluation mode: quantize with the current scale and record nothing.

        A frozen scaler with an empty history raises RuntimeError on quantize: a score
        must not depend on batch size, order or padding, so calibrate first."""
        return self._state.frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"frozen must be a bool, got {value!r}")
        self._state.frozen = bool(value)

    # ---- one step ----
    def quantize(self, x: np.ndarray, return_mask: bool = False, *, rounding: str = "nearest",
                 seed: int = 0):
        """Fake-quantizes x with the delayed scale and records its amax.

        x_hat = decode(encode(clamp(x*scale, +-fmax))) * scale_inv, same shape and dtype
        as x (float32 or float64; scale_inv is 1/scale in the input's precision). With an
        empty history the scale comes from x's own amax (current scaling). NaN stays NaN;
        NaN/Inf make this step's amax +inf. An empty x gives an empty result and records
        nothing (like a step where the tensor did not run). Amaxes are kept as float32
        (the history's type): a float64 amax beyond the float32 range counts as non-finite.

        Returns x_hat, or (x_hat, mask) with return_mask: mask (bool) is True where the
        straight-through gradient passes (not clipped; all True for ste="identity").

        Example:
            >>> import numpy as np, hif8qat as hq
            >>> s = hq.DelayedScaler(window=8)
            >>> x_hat, mask = s.quantize(np.ones(4, np.float32), return_mask=True)
        """
        x = _as_input(x)
        values, _, mask, _, _ = self._state.cast(x, True, False, bool(return_mask),
                                                 _rounding_code(rounding), _check_seed(seed))
        return (values, mask) if return_mask else values

    def quantize_codes(self, x: np.ndarray, *, rounding: str = "nearest", seed: int = 0,
                       return_mask: bool = True):
        """Same bookkeeping as quantize, for the W8A8 GEMM: returns (codes, scale_inv, mask).

        codes (uint8) = to_hif8(clamp(x*scale, +-fmax)); scale_inv = 1.0f/scale used (a
        Python float holding a float32 value); mask as in quantize(return_mask=True), or
        None with ``return_mask=False`` (a cast whose STE mask is never used, e.g. of dY).

        Example:
            >>> import numpy as np, hif8qat as hq
            >>> codes, scale_inv, mask = hq.DelayedScaler().quantize_codes(np.ones(4, np.float32))
            >>> codes, scale_inv
            (array([47, 47, 47, 47], dtype=uint8), 0.06666667014360428)
        """
        x = _as_input(x)
        _, codes, mask, _, scale_inv = self._state.cast(
            x, False, True, bool(return_mask), _rounding_code(rounding), _check_seed(seed))
        return codes, scale_inv, mask

    def observe(self, x: np.ndarray) -> None:
        """Calibrate mode: records x's amax (for the next update) without casting.

        Used during the BF16 warm-up and for post-training calibration, so that QAT or
        evaluation starts from a full window. RuntimeError if the scaler is frozen."""
        self._state.observe(_as_input(x))

    def record_amax(self, amax: float) -> None:
        """Folds an amax computed elsewhere (e.g. after a MAX all-reduce) into the staging
        amax. amax >= 0; +inf and NaN (taken as +inf) are accepted, negative is an error."""
        if not _is_real(amax):
            raise TypeError(f"amax must be a real number, got {amax!r}")
        amax = float(amax)
        if amax < 0.0:
            raise ValueError(f"amax must be >= 0 (or +inf / NaN), got {amax!r}")
        self._state.record_amax(amax)

    def update(self) -> float:
        """Closes the step (once per optimizer step) and returns the new scale.

        Staging amax 0: nothing changes (the tensor did not run). Not finite: the history
        and scale are kept and totals()["nonfinite_amax_events"] grows. Otherwise it is
        pushed into the window and scale = (fmax / amax_estimate) / 2**margin in float32,
        clamped to [2^-126, 2^126]. The step counters are reset (see last_step_stats)."""
        return self._state.update()

    # ---- diagnostics ----
    def step_stats(self) -> dict:
        """Counters of the current step (since the last update): amax (the staging amax),
        headroom (max over quantize calls of call amax * scale used / fmax; > 1 means the
        estimate lagged the data), clipped, zero_flushed, nonfinite, n."""
        return self._state.counters("step")

    def last_step_stats(self) -> dict:
        """step_stats() of the step closed by the most recent update()."""
        return self._state.counters("last_step")

    def totals(self) -> dict:
        """The counters summed over the scaler's life (amax and headroom: the largest
        seen), plus steps, saturation_events (steps with a clipped element) and
        nonfinite_amax_events."""
        d = self._state.counters("total")
        st = self._state
        d.update(steps=st.steps, saturation_events=st.saturation_events,
                 nonfinite_amax_events=st.nonfinite_amax_events)
        return d

    def __repr__(self) -> str:
        return (f"DelayedScaler(name={self.name!r}, window={self.window}, algo={self.algo!r}, "
                f"fmax={self.fmax:g}, margin={self.margin:g}, clip={self.clip}, "
                f"ste={self.ste!r}, scale={self.scale:.7g}, n_valid={self.n_valid}"
                f"{', frozen' if self.frozen else ''})")

    # ---- checkpointing ----
    def __getstate__(self) -> dict:  # pickle and copy.deepcopy
        return {"recipe": self.recipe(), "name": self.name, "frozen": self.frozen,
                "state": self.state_dict()}

    def __setstate__(self, d: dict) -> None:
        self.__init__(name=d["name"], **d["recipe"])
        self.load_state_dict(d["state"])
        self.frozen = d["frozen"]

    def state_dict(self) -> dict:
        """Recipe, scale, history (oldest first), n_valid and counters as plain values."""
        return {
            "name": self.name,
            "recipe": self.recipe(),
            "scale": self.scale,
            "history": self.history,
            "n_valid": self.n_valid,
            "staging_amax": self.staging_amax,
            "step": self.step_stats(),
            "totals": self.totals(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores the state from `state`, keeping this scaler's recipe.

        Same recipe: exact restore (a resumed run continues bit-identically). A different
        window keeps the newest min(n_valid, window) amaxes and recomputes the scale; any
        other recipe difference also recomputes the scale, with a warning. Missing or
        malformed fields raise ValueError and leave the scaler unchanged."""
        parsed = _parse_state(state)
        rec = parsed["recipe"]
        mine = self.recipe()
        history = parsed["history"]
        differs = [k for k in _RECIPE_FIELDS if k != "window" and _recipe_value(rec, k) !=
                   _recipe_value(mine, k)]
        recompute = bool(differs) or rec["window"] != self.window
        if rec["window"] != self.window:
            history = history[max(0, len(history) - self.window):]
        if differs:
            warnings.warn(f"scaler {self.name!r}: checkpoint recipe differs in "
                          f"{', '.join(f'{k} ({rec[k]!r} -> {mine[k]!r})' for k in differs)}; "
                          "keeping this scaler's recipe and recomputing the scale from the "
                          "restored history", stacklevel=2)
        st = self._state
        st.set_state(history, parsed["scale"])
        if recompute:
            st.recompute_scale()
        step, tot = parsed["step"], parsed["totals"]
        st.set_counters("step", parsed["staging_amax"], step["headroom"], step["clipped"],
                        step["zero_flushed"], step["nonfinite"], step["n"])
        st.set_counters("total", tot["amax"], tot["headroom"], tot["clipped"],
                        tot["zero_flushed"], tot["nonfinite"], tot["n"])
        st.set_events(tot["steps"], tot["saturation_events"], tot["nonfinite_amax_events"])


def _recipe_value(recipe: dict, key: str):
    v = recipe[key]
    if key in ("fmax", "margin"):
        return float(np.float32(v))
    if key == "clip":
        return bool(v)
    return v


def _field(d: dict, key: str, where: str):
    if key not in d:
        raise ValueError(f"scaler state dict: missing field {where}{key!r}")
    return d[key]


def _nonneg_int(v, name: str) -> int:
    if not _is_int(v) or int(v) < 0:
        raise ValueError(f"scaler state dict: {name} must be an int >= 0, got {v!r}")
    return int(v)


def _nonneg_real(v, name: str, allow_inf: bool = False) -> float:
    if not _is_real(v) or math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"scaler state dict: {name} must be a real number >= 0, got {v!r}")
    return float(v)


def _parse_state(state) -> dict:
    """Checks a scaler state dict completely before anything is changed."""
    if not isinstance(state, dict):
        raise ValueError(f"scaler state dict must be a dict, got {type(state).__name__}")
    recipe = _field(state, "recipe", "")
    if not isinstance(recipe, dict):
        raise ValueError(f"scaler state dict: recipe must be a dict, got {recipe!r}")
    for k in _RECIPE_FIELDS:
        _field(recipe, k, "recipe.")
    try:
        _check_recipe(recipe["window"], recipe["algo"], recipe["fmax"], recipe["margin"],
                      recipe["clip"], recipe.get("ste", "masked"))
    except (TypeError, ValueError) as e:  # a malformed checkpoint is a ValueError
        raise ValueError(f"scaler state dict: recipe: {e}") from None
    recipe = dict(recipe, window=int(recipe["window"]))

    scale = _field(state, "scale", "")
    if not _is_real(scale) or not math.isfinite(scale) or not scale > 0:
        raise ValueError(f"scaler state dict: scale must be finite and > 0, got {scale!r}")
    with np.errstate(over="ignore", under="ignore"):
        scale32 = np.float32(scale)
    if not (np.isfinite(scale32) and scale32 > 0):
        raise ValueError(f"scaler state dict: "
                         f"scale must be a finite float32 value > 0, got {scale!r}")

    n_valid = _nonneg_int(_field(state, "n_valid", ""), "n_valid")
    raw = _field(state, "history", "")
    try:
        history = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"scaler state dict: history must be a 1-D array of amaxes, got "
                         f"{type(raw).__name__}") from None
    if history.ndim != 1:
        raise ValueError(f"scaler state dict: history must be 1-D, got shape {history.shape}")
    if len(history) != n_valid:
        raise ValueError(f"scaler state dict: history has {len(history)} entries but "
                         f"n_valid is {n_valid}")
    if n_valid > recipe["window"]:
        raise ValueError(f"scaler state dict: n_valid {n_valid} exceeds its window "
                         f"{recipe['window']}")
    with np.errstate(over="ignore", under="ignore"):
        history = history.astype(np.float32)
    if not (np.all(np.isfinite(history)) and np.all(history > 0)):
        raise ValueError("scaler state dict: history entries must be finite float32 values "
                         "> 0 (zeros and non-finite amaxes are never inserted)")

    staging = _nonneg_real(_field(state, "staging_amax", ""), "staging_amax", allow_inf=True)
    out = {"recipe": recipe, "scale": float(scale), "history": history,
           "staging_amax": staging}
    for part, extra in (("step", ()), ("totals", _EVENT_FIELDS)):
        d = _field(state, part, "")
        if not isinstance(d, dict):
            raise ValueError(f"scaler state dict: {part} must be a dict, got {d!r}")
        parsed = {}
        for k in _COUNTER_FIELDS + extra:
            v = _field(d, k, part + ".")
            if k == "amax":
                parsed[k] = _nonneg_real(v, f"{part}.{k}", allow_inf=True)
            elif k == "headroom":
                parsed[k] = _nonneg_real(v, f"{part}.{k}")
            else:
                parsed[k] = _nonneg_int(v, f"{part}.{k}")
        out[part] = parsed
    return out


class ScalerGroup:
    """The scalers of a model, keyed by name (the tensor's role), in insertion order.

    One call updates them all, one table reports them, one dict checkpoints them.

    Call order in a training step: forward/backward (quantize calls) ->
    ``diagnostics()`` (the step just finished) -> ``update()``.

    Example:
        >>> import hif8qat as hq
        >>> g = hq.ScalerGroup()
        >>> q = g.add(hq.DelayedScaler(name="layers.0.q_proj.input"))
        >>> g.update()                       # once per optimizer step
        >>> rows = g.diagnostics()           # one dict per scaler
    """

    def __init__(self, scalers=()):
        self._scalers: dict[str, DelayedScaler] = {}
        for s in scalers:
            self.add(s)

    def add(self, scaler: DelayedScaler) -> DelayedScaler:
        """Adds a scaler under its name (non-empty, unique) and returns it."""
        if not isinstance(scaler, DelayedScaler):
            raise TypeError(f"ScalerGroup.add expects a DelayedScaler, got "
                            f"{type(scaler).__name__}")
        if not scaler.name:
            raise ValueError("a scaler in a group needs a name (its tensor role), e.g. "
                             "DelayedScaler(name='model.layers.0.mlp.up_proj.input')")
        if scaler.name in self._scalers:
            raise ValueError(f"a scaler named {scaler.name!r} is already in the group")
        self._scalers[scaler.name] = scaler
        return scaler

    def __getitem__(self, name: str) -> DelayedScaler:
        try:
            return self._scalers[name]
        except KeyError:
            raise KeyError(f"no scaler named {name!r} in the group "
                           f"({len(self._scalers)} scalers)") from None

    def __contains__(self, name) -> bool:
        return name in self._scalers

    def __len__(self) -> int:
        return len(self._scalers)

    def __iter__(self):
        return iter(list(self._scalers.values()))

    def names(self) -> list:
        """Scaler names in insertion order."""
        return list(self._scalers)

    def update(self) -> None:
        """Updates every scaler once (call exactly once per optimizer step)."""
        for s in self._scalers.values():
            s.update()

    def set_frozen(self, frozen: bool) -> None:
        """Freezes (evaluation) or unfreezes every scaler."""
        for s in self._scalers.values():
            s.frozen = frozen

    def diagnostics(self) -> list:
        """One dict per scaler for the current step (call right before update()):
        name, amax, scale, headroom, clipped, clipped_fraction, zero_flushed, nonfinite,
        n, n_valid, saturated (at least one clipped element)."""
        rows = []
        for name, s in self._scalers.items():
            st = s.step_stats()
            n = st["n"]
            rows.append({
                "name": name, "amax": st["amax"], "scale": s.scale,
                "headroom": st["headroom"], "clipped": st["clipped"],
                "clipped_fraction": st["clipped"] / n if n else 0.0,
                "zero_flushed": st["zero_flushed"], "nonfinite": st["nonfinite"], "n": n,
                "n_valid": s.n_valid, "saturated": st["clipped"] > 0,
            })
        return rows

    def summary(self) -> list:
        """One dict per scaler over its life: name, steps, saturation_events,
        nonfinite_amax_events, clipped_fraction, max headroom."""
        rows = []
        for name, s in self._scalers.items():
            t = s.totals()
            rows.append({
                "name": name, "steps": t["steps"], "saturation_events": t["saturation_events"],
                "nonfinite_amax_events": t["nonfinite_amax_events"],
                "clipped_fraction": t["clipped"] / t["n"] if t["n"] else 0.0,
                "headroom": t["headroom"],
            })
        return rows

    def state_dict(self) -> dict:
        """{name: scaler.state_dict()} in insertion order."""
        return {name: s.state_dict() for name, s in self._scalers.items()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Loads each scaler's state by name. strict: the names must match exactly
        (ValueError listing the differences); otherwise unmatched names are skipped.
        Every entry is checked before any scaler changes."""
        if not isinstance(state, dict):
            raise ValueError(f"ScalerGroup state must be a dict, got {type(state).__name__}")
        missing = [n for n in self._scalers if n not in state]
        unexpected = [n for n in state if n not in self._scalers]
        if strict and (missing or unexpected):
            raise ValueError(f"ScalerGroup state does not match the group: missing "
                             f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                             f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        for name in self._scalers:
            if name in state:
                try:
                    _parse_state(state[name])
                except ValueError as e:
                    raise ValueError(f"scaler {name!r}: {e}") from None
        for name, s in self._scalers.items():
            if name in state:
                s.load_state_dict(state[name])
