"""Scores multiple-choice tasks exactly as lm-evaluation-harness does.

The pipeline, top to bottom:

1. tasks.py builds each item's context (description, few-shot shots, query) and its
   choices; every choice is one log-likelihood request ``(context, " " + choice)``.
2. :func:`encode_pair` tokenizes a request as the harness's ``TemplateLM._encode_pair``:
   trailing spaces of the context move to the continuation, context+continuation is
   tokenized whole and split at the length of the tokenized context (BOS first when the
   tokenizer adds it); an empty context is conditioned on the BOS (else EOS) token.
3. :func:`loglikelihood_tokens` scores the requests in batches: the model reads
   ``(context + continuation)[-(max_length + 1):][:-1]`` (left truncation; the
   continuation is never cut) and the log-probabilities of the continuation tokens are
   summed in float64.
4. acc = [argmax ll_i == gold], acc_norm = [argmax ll_i / len(choice_i) == gold] (the
   bare choice's character length), acc_stderr = std(ddof=1) / sqrt(n).

Shared-prefix reuse. The model is causal and has no KV cache, so the logits at position
t depend on tokens 0..t only. A request whose model input is a prefix of another
request's input is therefore answered by that longer row for free: the unique inputs
are sorted, and a sequence that is a prefix of any other is a prefix of its successor in
sorted order, so one linear pass assigns every request to the longest row that
contains it. MMLU's four single-token continuations " A".." D" share one input (the
context), so MMLU costs one row per question instead of four; a choice that extends
another (" cat", " cat food") rides on the longer one.

Packing. For a model whose forward takes ``position_ids`` and ``attention_mask``
(``LlamaModel``), the requests that share a context go further: one row holds the
context once and then every continuation, each placed at the positions right after the
context and masked so that it sees the context and itself only -- what its own causal
row would see. HellaSwag's four endings after a long context then cost one context
instead of four (about 3-4x fewer tokens on the embedded world). The scores equal the
separate rows' up to float rounding (tested in float64 to 1e-12).

Batch invariance. Every row runs at a width that depends on the row alone: its length
rounded up to ``PAD_MULTIPLE`` (32) tokens, padded on the right with token 0, and a
batch holds rows of one width only (longest first). Padding after a sequence cannot
change a causal model's outputs at earlier positions, and the model's numerics at a
position then see the same shapes whatever else is batched, so an item's scores are
bit-identical for any batch size and order (given a model whose forward treats the
rows of a batch independently, which ``LlamaModel`` in hif8 does: its GEMMs do not
depend on the row count). Prefix reuse is limited to rows of the same width for the
same reason. In hif8 precision the scalers are frozen for the run, so no amax depends
on the batch, its order or its padding.

Example::

    import hif8qat as hq
    model = hq.load_model("ckpt", precision="fp32")
    res = hq.evaluate(model, hq.load_tokenizer("ckpt"), ["arc:/data/ARC-Challenge-Test.jsonl"],
                      num_fewshot=0)
    print(res["arc"]["acc"], res["arc"]["acc_norm"])
    res.items["arc"][0].lls        # per-item log-likelihoods, for paired comparisons
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass

import numpy as np

from .tasks import TARGET_DELIMITER, Task, load_task
from .tokenizers import tok_encode

PAD_MULTIPLE = 32

__all__ = ["evaluate", "EvalResult", "ItemRecord", "encode_pair", "encode_request",
           "loglikelihood_tokens", "model_max_length", "evaluation_mode", "format_results"]


# --------------------------------------------------------------------------------------
# Tokenization of a request (the harness's TemplateLM.loglikelihood / _encode_pair).

def encode_pair(tokenizer, context, continuation):
    """(context tokens, continuation tokens) for a non-empty context, split as the harness
    splits them: tokenize context+continuation whole, cut at len(tokenize(context)).

    Example::

        >>> from hif8qat.eval.tokenizers import ByteTokenizer
        >>> encode_pair(ByteTokenizer(), "Q: a ", "b")
        ([81, 58, 32, 97], [32, 98])
    """
    if not context:
        raise ValueError("encode_pair needs a non-empty context (use encode_request)")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:  # the word-boundary space belongs to the continuation
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation)
    context_enc = tok_encode(tokenizer, context)
    return context_enc, whole[len(context_enc):]


def encode_request(tokenizer, context, continuation):
    """Like :func:`encode_pair`, and an empty context is conditioned on the tokenizer's
    prefix token (BOS, else EOS) — unless the continuation already starts with it."""
    if context != "":
        return encode_pair(tokenizer, context, continuation)
    cont = tokenizer.encode(continuation)
    prefix = tokenizer.prefix_token_id
    if cont and cont[0] == prefix:
        return cont[:1], cont[1:]
    if prefix is None:
        raise ValueError("an empty context is conditioned on the BOS/EOS token, and this "
                         f"tokenizer ({tokenizer!r}) has neither")
    return [prefix], cont


# --------------------------------------------------------------------------------------
# Scoring token requests.

def model_max_length(model, max_length=None):
    """The context window used for scoring: ``max_length`` if given, else the model's
    ``config.max_position_embeddings``."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_length is None:
        if limit is None:
            raise ValueError("the model has no config.max_position_embeddings; pass max_length")
        return int(limit)
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) \
            or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the model's "
                         f"max_position_embeddings={limit}")
    return int(max_length)


def _model_inputs(requests, max_length):
    """Each request's model input (left-truncated) and the number of continuation tokens."""
    inputs, n_cont = [], []
    for i, (ctx, cont) in enumerate(requests):
        if len(cont) == 0:
            raise ValueError(f"request {i}: the continuation has no tokens")
        if len(ctx) == 0:
            raise ValueError(f"request {i}: the context has no tokens (condition on BOS/EOS)")
        if len(cont) > max_length:
            raise ValueError(f"request {i}: continuation of {len(cont)} tokens exceeds "
                             f"max_length={max_length}; it is never truncated")
        whole = list(ctx) + list(cont)
        inputs.append(tuple(int(t) for t in whole[-(max_length + 1):][:-1]))
        n_cont.append(len(cont))
    return inputs, n_cont


def padded_length(n, max_length, pad_multiple=PAD_MULTIPLE):
    """The width a row of ``n`` tokens is run at: n rounded up to ``pad_multiple``, at most
    ``max_length``. It depends on the row alone, never on the rows batched with it."""
    return min(-(-n // pad_multiple) * pad_multiple, max(max_length, n))


def _host_rows(inputs, max_length, pad_multiple):
    """Model rows to run and, per input, the row that answers it.

    Inputs are grouped by padded width; within a width, an input that is a prefix of
    another is answered by the longer one. In lexicographic order a sequence that is a
    prefix of some other sequence is a prefix of its immediate successor (anything
    sorted between them shares the prefix), so a backward pass over the sorted unique
    inputs finds each one's longest extension. Returns (rows, widths, row of each input),
    rows sorted widest first.
    """
    by_width = {}
    for seq in set(inputs):
        by_width.setdefault(padded_length(len(seq), max_length, pad_multiple), []).append(seq)
    rows, widths, row_of_seq = [], [], {}
    for width in sorted(by_width, reverse=True):
        unique = sorted(by_width[width])
        host = list(range(len(unique)))
        for i in range(len(unique) - 2, -1, -1):
            a, b = unique[i], unique[i + 1]
            if len(a) <= len(b) and b[:len(a)] == a:
                host[i] = host[i + 1]
        kept = sorted(set(host), key=lambda r: (-len(unique[r]), unique[r]))
        index = {r: len(rows) + k for k, r in enumerate(kept)}
        rows += [unique[r] for r in kept]
        widths += [width] * len(kept)
        for i, seq in enumerate(unique):
            row_of_seq[seq] = index[host[i]]
    return rows, widths, [row_of_seq[seq] for seq in inputs]


def _packed_rows(inputs, keys, max_length, pad_multiple):
    """Model rows that each hold a shared prefix and several continuations.

    Inputs with the same key (the request's context) are one group: their longest common
    prefix P is run once, followed by every distinct suffix, each suffix attending to P
    and to itself only and positioned right after P (see ``_row_arrays``). A suffix that
    is a prefix of another suffix rides on it, as in ``_host_rows``. A row grows to at
    most ``2 * max_length`` tokens; a group with more starts another row with P again.
    Returns (rows, widths, place of each input): a row is (prefix, [suffixes]); a place
    is (row, len(P), row offset of the input's suffix).
    """
    groups = {}
    for seq, key in zip(inputs, keys):
        groups.setdefault(key, set()).add(seq)
    cap = 2 * max_length
    rows, place_of_seq = [], {}
    for key in sorted(groups, key=lambda k: (len(k), k)):
        unique = sorted(groups[key])
        plen = len(_common_prefix(unique))
        if plen == 0:     # nothing shared (left truncation cut it): one row each
            for seq in unique:
                place_of_seq[seq] = (len(rows), len(seq), 0)
                rows.append((seq, []))
            continue
        prefix = unique[0][:plen]
        suffixes = [seq[plen:] for seq in unique]            # sorted, unique
        host = list(range(len(suffixes)))
        for i in range(len(suffixes) - 2, -1, -1):
            a, b = suffixes[i], suffixes[i + 1]
            if b[:len(a)] == a:
                host[i] = host[i + 1]
        current, width, offsets = None, cap, {}
        for h in sorted(set(host), key=lambda r: (-len(suffixes[r]), suffixes[r])):
            if current is None or width + len(suffixes[h]) > cap:
                current = (prefix, [])
                rows.append(current)
                width = plen
            offsets[h] = (len(rows) - 1, width)
            current[1].append(suffixes[h])
            width += len(suffixes[h])
        for i, seq in enumerate(unique):
            row, off = offsets[host[i]]
            place_of_seq[seq] = (row, plen, off)
    lengths = [len(p) + sum(map(len, s)) for p, s in rows]
    order = sorted(range(len(rows)), key=lambda r: (-lengths[r], rows[r][0], rows[r][1]))
    new_index = {r: k for k, r in enumerate(order)}
    rows = [rows[r] for r in order]
    widths = [padded_length(lengths[r], max_length, pad_multiple) for r in order]
    places = []
    for seq in inputs:
        row, plen, off = place_of_seq[seq]
        places.append((new_index[row], plen, off))
    return rows, widths, places


def _common_prefix(seqs):
    first, last = min(seqs), max(seqs)     # the LCP of a set is the LCP of its extremes
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _row_arrays(row, width):
    """tokens, position_ids (width,) and attention mask (width, width) of a packed row.

    The prefix is causal; suffix j sits at positions len(P).. and sees the prefix and
    its own earlier tokens. Padding positions see only themselves (nothing real sees
    them), so they never touch a scored position.
    """
    prefix, suffixes = row
    tokens = np.zeros(width, dtype=np.int64)
    pos = np.zeros(width, dtype=np.int64)
    seg = np.full(width, -2, dtype=np.int64)                 # -2 padding, -1 prefix
    n = len(prefix)
    tokens[:n], pos[:n], seg[:n] = prefix, np.arange(n), -1
    for j, s in enumerate(suffixes):
        tokens[n:n + len(s)], pos[n:n + len(s)], seg[n:n + len(s)] = s, \
            np.arange(len(prefix), len(prefix) + len(s)), j
        n += len(s)
    i, k = np.arange(width)[:, None], np.arange(width)[None, :]
    visible = (seg[None, :] == -1) | ((seg[None, :] == seg[:, None]) & (seg[:, None] >= 0))
    mask = ((k <= i) & visible) | (i == k)
    return tokens, pos, mask


def supports_packing(model):
    """Whether ``model.forward`` takes ``position_ids`` and ``attention_mask``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    return "position_ids" in params and "attention_mask" in params


def _continuation_logprobs(logits, b_idx, t_idx, targets, chunk_elements=1 << 24):
    """log softmax(logits[b, t])[target] in float64 and argmax == target, per position;
    in chunks, so a large vocabulary never needs one (positions, V) float64 array."""
    vocab = logits.shape[-1]
    step = max(1, chunk_elements // max(vocab, 1))
    logprob = np.empty(len(targets), dtype=np.float64)
    greedy = np.empty(len(targets), dtype=bool)
    for lo in range(0, len(targets), step):
        hi = min(len(targets), lo + step)
        x = logits[b_idx[lo:hi], t_idx[lo:hi]].astype(np.float64)          # (n, V)
        tgt = targets[lo:hi]
        with np.errstate(invalid="ignore", over="ignore"):
            m = np.max(x, axis=1, keepdims=True)
            lse = np.log(np.sum(np.exp(x - m), axis=1)) + m[:, 0]
            logprob[lo:hi] = x[np.arange(hi - lo), tgt] - lse
        greedy[lo:hi] = np.argmax(x, axis=1) == tgt
    return logprob, greedy


def loglikelihood_tokens(model, requests, batch_size=16, max_length=None, stats=None,
                         pad_multiple=PAD_MULTIPLE, pack=None):
    """Score token requests: for each ``(context_tokens, continuation_tokens)``, the sum of
    the continuation's log-probabilities (float64) and whether every continuation token
    was the model's argmax — the harness's ``(logprob, is_greedy)``.

    ``pack`` (default: when the model supports it, see :func:`supports_packing`) runs the
    requests that share a context as one row: the context once, then every continuation
    with its own positions and an attention mask that hides the other continuations.
    The scores are those of separate rows up to float rounding (the same sums in
    another order); with ``pack=False`` every request has its own causal row.

    ``stats`` (a dict, optional) receives ``requests`` and ``rows`` (model rows run after
    shared-prefix reuse and packing) and ``nonfinite`` (requests whose log-likelihood is
    NaN/inf).

    Example::

        lls = loglikelihood_tokens(model, [([1, 5, 9], [7, 3])], batch_size=1)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(pad_multiple, bool) or not isinstance(pad_multiple, (int, np.integer)) \
            or pad_multiple < 1:
        raise ValueError(f"pad_multiple must be a positive int, got {pad_multiple!r}")
    max_length = model_max_length(model, max_length)
    inputs, n_cont = _model_inputs(requests, max_length)
    if pack is None:
        pack = supports_packing(model)
    elif pack and not supports_packing(model):
        raise ValueError("pack=True needs a model whose forward takes position_ids and "
                         "attention_mask (hq.LlamaModel does)")
    if pack:
        keys = [tuple(int(t) for t in ctx) for ctx, _ in requests]
        rows, widths, places = _packed_rows(inputs, keys, max_length, int(pad_multiple))
    else:
        rows, widths, row_of = _host_rows(inputs, max_length, int(pad_multiple))
        places = [(k, len(rows[k]), 0) for k in row_of]   # causal rows: positions map 1:1
    by_row = [[] for _ in rows]
    for r, (k, _, _) in enumerate(places):
        by_row[k].append(r)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)

    # Batches never mix widths: every row runs at its own padded width, whatever else is
    # in its batch, so its scores are the same for any batch size and order.
    batches, start = [], 0
    while start < len(rows):
        stop = start
        while stop < len(rows) and stop - start < batch_size and widths[stop] == widths[start]:
            stop += 1
        batches.append((start, stop))
        start = stop

    results = [None] * len(requests)
    for start, stop in batches:
        batch = rows[start:stop]
        width = widths[start]
        if pack:
            arrays = [_row_arrays(row, width) for row in batch]
            tokens = np.stack([a[0] for a in arrays])
            extra = dict(position_ids=np.stack([a[1] for a in arrays]),
                         attention_mask=np.stack([a[2] for a in arrays]))
        else:
            tokens = np.zeros((len(batch), width), dtype=np.int64)
            for b, row in enumerate(batch):
                tokens[b, :len(row)] = row
            extra = {}
        if vocab is not None and tokens.size and int(tokens.max()) >= vocab:
            raise ValueError(f"token id {int(tokens.max())} >= the model's vocab_size={vocab}: "
                             "tokenizer and model do not match")
        logits, _ = model.forward(tokens, **extra)
        logits = np.asarray(logits)
        if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
            raise ValueError(f"model.forward returned logits of shape {logits.shape}, "
                             f"expected ({tokens.shape[0]}, {tokens.shape[1]}, vocab)")
        # Gather every scored position of the batch; each request's positions are
        # contiguous, in order, so its sum never depends on what else is in the batch.
        b_idx, t_idx, targets, spans = [], [], [], []
        for b in range(len(batch)):
            for r in by_row[start + b]:
                L, C = len(inputs[r]), n_cont[r]
                _, plen, off = places[r]
                spans.append((r, len(targets), len(targets) + C))
                b_idx += [b] * C
                # logits at input position t predict token t+1; in a packed row the
                # input's positions past the shared prefix live at its suffix's offset
                t_idx += [t if t < plen else off + t - plen for t in range(L - C, L)]
                targets += [int(t) for t in requests[r][1]]
        logprob, greedy = _continuation_logprobs(logits, np.asarray(b_idx), np.asarray(t_idx),
                                                 np.asarray(targets))
        for r, lo, hi in spans:
            results[r] = (float(np.sum(logprob[lo:hi])), bool(np.all(greedy[lo:hi])))
    if stats is not None:
        stats["requests"] = stats.get("requests", 0) + len(requests)
        stats["rows"] = stats.get("rows", 0) + len(rows)
        stats["nonfinite"] = stats.get("nonfinite", 0) + sum(
            not math.isfinite(ll) for ll, _ in results)
    return results


# --------------------------------------------------------------------------------------
# Evaluation mode: frozen scalers, no calibration.

@contextlib.contextmanager
def evaluation_mode(model):
    """Freeze a hif8 model's scalers (no history updates, no amax from padding) and turn
    calibration off for the duration; restore both afterwards."""
    scalers = getattr(model, "scalers", None)
    calibrating = getattr(model, "calibrating", None)
    previous = None
    if getattr(model, "precision", None) == "hif8" and scalers is not None and len(scalers):
        empty = [s.name for s in scalers if s.n_valid == 0]
        if empty:
            raise RuntimeError(f"evaluating in hif8 precision needs scales, and {len(empty)} "
                               f"of {len(scalers)} scalers have an empty amax history "
                               f"({', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''}): "
                               "calibrate first (hq.calibrate(model, batches)) or train, "
                               "or evaluate in 'fp32'/'bf16'")
        previous = [s.frozen for s in scalers]
        scalers.set_frozen(True)
    if calibrating:
        model.calibrating = False
    try:
        yield model
    finally:
        if previous is not None:
            for s, was in zip(scalers, previous):
                s.frozen = was
        if calibrating:
            model.calibrating = calibrating


# --------------------------------------------------------------------------------------
# Results.

@dataclass(frozen=True)
class ItemRecord:
    """One scored item: its log-likelihoods per choice and the verdicts."""
    task: str
    subtask: str
    index: int          # position among the task's scored items
    source: str         # "file:line"
    lls: tuple
    gold: int
    pred: int
    pred_norm: int
    correct: bool
    correct_norm: bool
    choice_lengths: tuple
    is_greedy: tuple


class _RecordsByTask(dict):
    """``result.items[task]`` is the task's list of records; calling it,
    ``result.items()``, is still the mapping's ``items()`` (so dict code keeps working)."""

    def __init__(self, owner):
        super().__init__()
        self._owner = owner

    def __call__(self):
        return dict.items(self._owner)


class EvalResult(dict):
    """``{task: metrics}`` plus ``items[task]`` (list of :class:`ItemRecord`; also
    reachable as ``records[task]``), ``subtasks[task]`` (``{subtask: metrics}`` for groups
    such as MMLU) and ``config`` (the run's settings, model rows run, requests).

    ``result.items()`` still yields ``(task, metrics)`` pairs as for any dict.
    """

    def __init__(self):
        super().__init__()
        self.items = _RecordsByTask(self)
        self.records = self.items
        self.subtasks = {}
        self.config = {}


def _sample_stderr(values):
    n = len(values)
    if n < 2:
        return float("nan")
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(n))


def _metrics(records, metrics, num_fewshot):
    correct = [1.0 if r.correct else 0.0 for r in records]
    correct_norm = [1.0 if r.correct_norm else 0.0 for r in records]
    out = {"acc": float(np.mean(correct)) if records else float("nan"),
           "acc_stderr": _sample_stderr(correct),
           "acc_norm": None, "acc_norm_stderr": None,
           "n": len(records), "num_fewshot": num_fewshot,
           "nonfinite": sum(not all(math.isfinite(x) for x in r.lls) for r in records)}
    if "acc_norm" in metrics:
        out["acc_norm"] = float(np.mean(correct_norm)) if records else float("nan")
        out["acc_norm_stderr"] = _sample_stderr(correct_norm)
    return out


def _task_key(spec, task, used):
    key = spec if isinstance(spec, str) and ":" not in spec else task.name
    if key in used:
        key = spec if isinstance(spec, str) else f"{task.name}_{len(used)}"
    return key


def evaluate(model, tokenizer, tasks, num_fewshot=0, limit=None, batch_size=16,
             max_length=None):
    """Score ``tasks`` with ``model`` as lm-evaluation-harness would.

    ``tasks``: a spec (``"hellaswag:/path/val.jsonl"``, ``"arc:/path/test.jsonl"``,
    ``"mmlu:/path/data_dir"``, ``"mmlu_continuation:/path"``, a registered name, a
    :class:`~hif8qat.eval.tasks.Task`) or a list of them, or a dict ``{key: spec}``.
    ``limit``: score only the first ``limit`` items of each (sub)task. ``max_length``:
    the context window (default ``model.config.max_position_embeddings``).

    Returns an :class:`EvalResult`: ``{task: {"acc", "acc_stderr", "acc_norm",
    "acc_norm_stderr", "n", "num_fewshot", "nonfinite"}}`` (acc_norm is None where the
    harness does not report it: MMLU), with ``.items[task]`` the per-item records and
    ``.subtasks[task]`` the per-subject metrics of MMLU. A group's acc is the
    micro-average over its items and its stderr the per-item formula over all of them.

    In hif8 precision the model's scalers are frozen for the run (restored afterwards);
    a model whose scalers were never calibrated is an error pointing to hq.calibrate.

    Example::

        res = evaluate(model, tok, "mmlu_continuation:/data/mmlu", num_fewshot=5, limit=50)
    """
    if isinstance(tasks, dict):
        named = list(tasks.items())
    else:
        specs = [tasks] if isinstance(tasks, (str, Task)) else list(tasks)
        named, used = [], set()
        for spec in specs:
            task = load_task(spec)
            key = _task_key(spec, task, used)
            used.add(key)
            named.append((key, task))
    loaded = [(key, load_task(spec)) for key, spec in named]
    if not loaded:
        raise ValueError("evaluate: no tasks given")

    # Build every request of every task first, so batching and prefix reuse span tasks.
    plan = []      # (key, subtask, metrics, items, first request index)
    requests = []
    for key, task in loaded:
        for sub in (task.subtasks or [task]):
            items = sub.limited(limit)
            contexts = sub.contexts(num_fewshot, limit)
            plan.append((key, sub, items, len(requests)))
            for item, context in zip(items, contexts):
                for choice in item.choices:
                    requests.append(encode_request(tokenizer, context,
                                                   TARGET_DELIMITER + choice))

    stats = {}
    with evaluation_mode(model):
        scores = loglikelihood_tokens(model, requests, batch_size=batch_size,
                                      max_length=max_length, stats=stats)

    result = EvalResult()
    result.config = {"num_fewshot": num_fewshot, "limit": limit, "batch_size": batch_size,
                     "max_length": model_max_length(model, max_length),
                     "precision": getattr(model, "precision", None),
                     "tokenizer": repr(tokenizer), "requests": stats["requests"],
                     "model_rows": stats["rows"]}
    for key, task in loaded:
        result.items[key] = []
    per_sub = {}
    for key, sub, items, first in plan:
        k = first
        records = []
        for item in items:
            n = len(item.choices)
            lls = tuple(ll for ll, _ in scores[k:k + n])
            greedy = tuple(g for _, g in scores[k:k + n])
            k += n
            lengths = tuple(float(len(c)) for c in item.choices)
            pred = int(np.argmax(lls))
            pred_norm = int(np.argmax(np.asarray(lls) / np.asarray(lengths)))
            records.append(ItemRecord(task=key, subtask=sub.name,
                                      index=len(result.items[key]) + len(records),
                                      source=item.source, lls=lls, gold=item.gold,
                                      pred=pred, pred_norm=pred_norm,
                                      correct=pred == item.gold,
                                      correct_norm=pred_norm == item.gold,
                                      choice_lengths=lengths, is_greedy=greedy))
        result.items[key].extend(records)
        per_sub.setdefault(key, []).append((sub, records))
    for key, task in loaded:
        result[key] = _metrics(result.items[key], task.metrics, num_fewshot)
        if task.subtasks:
            result.subtasks[key] = {sub.name: _metrics(records, sub.metrics, num_fewshot)
                                    for sub, records in per_sub[key]}
    return result


def format_results(result):
    """A plain-text table of an :class:`EvalResult` (one line per task)."""
    lines = [f"{'task':<28} {'n':>6} {'acc':>8} {'± stderr':>9} {'acc_norm':>9} {'± stderr':>9}"]
    for key, m in result.items() if isinstance(result, dict) else []:
        norm = "-" if m["acc_norm"] is None else f"{m['acc_norm']:.4f}"
        norm_se = "-" if m["acc_norm_stderr"] is None else f"{m['acc_norm_stderr']:.4f}"
        lines.append(f"{key:<28} {m['n']:>6} {m['acc']:>8.4f} {m['acc_stderr']:>9.4f} "
                     f"{norm:>9} {norm_se:>9}")
    return "\n".join(lines)
