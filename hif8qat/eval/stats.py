"""Uncertainty of accuracies: the harness's standard error, and a paired bootstrap for
the difference between two runs scored on the same items (BF16 vs HiF8, QAT vs PTQ).

Pairing matters: two runs on the same 2,000 items disagree on far fewer items than two
independent samples would, so the interval of the difference is much narrower than the
two stderrs suggest — that is what lets the demo resolve a drop under one point.

Example::

    >>> import numpy as np
    >>> a = np.array([1, 1, 0, 1, 0, 1, 1, 1]); b = np.array([1, 0, 0, 1, 0, 1, 1, 0])
    >>> round(acc_stderr(a), 4)
    0.1637
    >>> d = paired_bootstrap(a, b, n_resamples=2000, seed=0)
    >>> d["diff"]
    0.25
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["acc_stderr", "paired_bootstrap", "correct_vector"]


def _as_scores(x, name):
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D per-item scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: no items to score")
    return arr


def acc_stderr(correct):
    """Standard error of a mean of per-item scores: std(ddof=1) / sqrt(n), as the
    harness's ``mean_stderr``. NaN for a single item (no spread can be estimated)."""
    arr = _as_scores(correct, "correct")
    if arr.size < 2:
        return float("nan")
    return float(np.std(arr, ddof=1) / math.sqrt(arr.size))


def correct_vector(result, task, norm=False):
    """Per-item 0/1 scores of ``task`` from an EvalResult (``acc`` or ``acc_norm``)."""
    records = result.items[task]
    return np.array([r.correct_norm if norm else r.correct for r in records], dtype=np.float64)


def _pair(a, b):
    """Accept two score vectors, or two EvalResult item lists checked to be the same items."""
    if len(a) and hasattr(a[0], "gold"):
        if len(a) != len(b) or any((x.source, x.gold) != (y.source, y.gold)
                                   for x, y in zip(a, b)):
            raise ValueError("paired comparison needs the same items in the same order "
                             "in both runs (same task, limit and file)")
        return (np.array([x.correct for x in a], dtype=np.float64),
                np.array([y.correct for y in b], dtype=np.float64))
    return a, b


def paired_bootstrap(a, b, n_resamples=10000, confidence=0.95, seed=0, groups=None):
    """Bootstrap interval of mean(a) - mean(b) over items resampled *jointly*.

    ``a`` and ``b``: per-item scores (0/1) of two runs on the same items, or two lists of
    :class:`~hif8qat.eval.evaluator.ItemRecord` (checked to be the same items). Returns
    ``{"diff", "low", "high", "confidence", "n", "p_value", "n_resamples", "n_groups"}``
    with ``p_value`` the two-sided bootstrap p-value of "no difference" (twice the smaller
    tail of the resampled differences around 0, floored at 1 / n_resamples).

    ``groups`` (one label per item, optional): items that are not independent -- several
    questions probing one fact -- are resampled together (a cluster bootstrap: draw whole
    groups with replacement, the difference is their pooled mean). Without it every item
    is its own group, which understates the uncertainty when items share a cause.

    Example::

        d = paired_bootstrap(res_bf16.items["arc"], res_hif8.items["arc"])
        print(f"{100*d['diff']:+.2f} points [{100*d['low']:+.2f}, {100*d['high']:+.2f}]")
    """
    a, b = _pair(a, b)
    a, b = _as_scores(a, "a"), _as_scores(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {a.size} and {b.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n_resamples = int(n_resamples)
    delta = a - b
    if groups is None:
        sums, counts = delta, np.ones_like(delta)
    else:
        labels = np.asarray(groups)
        if labels.shape != delta.shape:
            raise ValueError(f"groups must give one label per item ({delta.size}), got "
                             f"shape {labels.shape}")
        _, inverse = np.unique(labels, return_inverse=True)
        sums = np.bincount(inverse, weights=delta)
        counts = np.bincount(inverse).astype(np.float64)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    G = sums.size
    chunk = max(1, 2_000_000 // G)  # bound the index matrix's memory
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, G, size=(stop - start, G))
        diffs[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    tail = min(np.mean(diffs <= 0.0), np.mean(diffs >= 0.0))
    p_value = min(1.0, max(2.0 * tail, 1.0 / n_resamples))
    return {"diff": float(delta.mean()), "low": float(low), "high": float(high),
            "confidence": confidence, "n": int(delta.size), "p_value": float(p_value),
            "n_resamples": n_resamples, "n_groups": int(G)}
