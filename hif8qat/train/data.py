"""Token streams and deterministic batches.

Sources
  * ``.txt`` (any other extension is read as text too): UTF-8 bytes through the
    built-in byte-level tokenizer (token = byte value, vocab 256).
  * ``.npy``: a 1-D integer array of token ids.
  * ``.npz``: ``tokens`` (1-D ints) and, optionally, ``loss_mask`` (same length,
    bool): positions whose *target* has a False mask are ignored by the loss (their
    target becomes -100), e.g. the prompt part of a fine-tuning example.

Batches
  The stream is cut into ``n_chunks = (len(tokens) - 1) // seq_len`` chunks of
  ``seq_len + 1`` tokens (chunk i starts at ``i * seq_len``; inputs are its first
  seq_len tokens, targets the last seq_len, already shifted). Each epoch visits
  every chunk once, in an order drawn from ``(seed, epoch)``; batch k is the k-th
  run of ``batch_size`` chunks in that endless sequence. So a batch depends on
  (seed, k) only: a baseline and a QAT run with the same seed see the same
  batches in the same order, whatever their grad_accum_steps, and the data
  position is the single integer k (``state_dict()``).

Example::

    >>> tokens = encode_bytes("hello world, " * 100)
    >>> batches = TokenBatches(tokens, seq_len=16, batch_size=4, seed=0)
    >>> x, y = batches.next_batch()
    >>> x.shape, y.shape, bool((x[:, 1:] == y[:, :-1]).all())
    ((4, 16), (4, 16), True)
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

IGNORE_INDEX = -100  # target value the model's loss skips
BYTE_VOCAB_SIZE = 256


def encode_bytes(text: str) -> np.ndarray:
    """Byte-level tokenizer: UTF-8 bytes as int64 token ids in [0, 256)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def decode_bytes(tokens) -> str:
    """Inverse of encode_bytes (invalid UTF-8 sequences become U+FFFD)."""
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("decode_bytes: byte tokens must lie in [0, 256)")
    return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def load_tokens(path: str, tokenizer: str = "byte"):
    """Read a token file; return (tokens int64 1-D, loss_mask bool 1-D or None)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    mask = None
    if ext == ".npy":
        try:
            tokens = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a NumPy token array ({e})") from None
    elif ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                if "tokens" not in z.files:
                    raise ValueError(f"{path}: an .npz data file needs a 'tokens' array "
                                     f"(found {z.files})")
                tokens = z["tokens"]
                mask = z["loss_mask"] if "loss_mask" in z.files else None
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: unreadable .npz file ({e})") from None
    else:
        if tokenizer != "byte":
            raise ValueError(f"unknown tokenizer {tokenizer!r}: only 'byte' is built in")
        with open(path, "rb") as fh:
            raw = fh.read()
        tokens = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: token array must be 1-D, got shape {tokens.shape}")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"{path}: token ids must be integers, got dtype {tokens.dtype}")
    tokens = tokens.astype(np.int64)
    if tokens.size and tokens.min() < 0:
        raise ValueError(f"{path}: token ids must be >= 0 (found {int(tokens.min())})")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != tokens.shape:
            raise ValueError(f"{path}: loss_mask shape {mask.shape} differs from tokens "
                             f"shape {tokens.shape}")
        mask = mask.astype(bool)
    return tokens, mask


class TokenBatches:
    """Deterministic, checkpointable batches of (inputs, targets) from one stream.

    ``next_batch()`` -> ``(inputs, targets)``, both int64 (batch_size, seq_len);
    ignored targets are -100. ``state_dict()``/``load_state_dict()`` hold the data
    position (batches served so far) and the seed, which fix every later batch.
    """

    def __init__(self, tokens, seq_len: int, batch_size: int, seed: int = 0,
                 loss_mask=None):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise ValueError(f"tokens must be a 1-D integer array, got {tokens.dtype} "
                             f"shape {tokens.shape}")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, "
                             f"{batch_size}")
        self.tokens = tokens.astype(np.int64, copy=False)
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.n_chunks = (len(self.tokens) - 1) // self.seq_len
        if self.n_chunks < 1:
            raise ValueError(f"the data holds {len(self.tokens)} tokens: too few for one "
                             f"sequence of seq_len={self.seq_len} (needs seq_len + 1)")
        if loss_mask is not None:
            loss_mask = np.asarray(loss_mask, dtype=bool)
            if loss_mask.shape != self.tokens.shape:
                raise ValueError("loss_mask must have the shape of tokens")
        self.loss_mask = loss_mask
        self.batches_served = 0
        self._fingerprint = None
        self._order_epoch = -1
        self._order = None

    @property
    def max_token(self) -> int:
        return int(self.tokens.max())

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            # one generator per (seed, epoch): the order never depends on history
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 0x5EED]))
            self._order = rng.permutation(self.n_chunks)
            self._order_epoch = epoch
        return self._order

    def chunk_ids(self, batch_index: int) -> np.ndarray:
        """Chunk indices of batch ``batch_index`` (0-based)."""
        start = batch_index * self.batch_size
        ids = np.empty(self.batch_size, dtype=np.int64)
        for j in range(self.batch_size):
            epoch, pos = divmod(start + j, self.n_chunks)
            ids[j] = self._epoch_order(epoch)[pos]
        return ids

    def batch(self, batch_index: int):
        """Batch ``batch_index`` without moving the data position."""
        ids = self.chunk_ids(batch_index)
        offsets = ids[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        chunk = self.tokens[offsets]                       # (B, T+1)
        inputs = np.ascontiguousarray(chunk[:, :-1])
        targets = np.ascontiguousarray(chunk[:, 1:])
        if self.loss_mask is not None:
            keep = self.loss_mask[offsets[:, 1:]]
            targets = np.where(keep, targets, IGNORE_INDEX).astype(np.int64)
        return inputs, targets

    def next_batch(self):
        out = self.batch(self.batches_served)
        self.batches_served += 1
        return out

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the tokens and loss mask: a resumed run must read the same data."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.tokens.astype("<i8", copy=False).tobytes())
            if self.loss_mask is not None:
                h.update(b"mask")
                h.update(np.packbits(self.loss_mask).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def state_dict(self) -> dict:
        return {"batches_served": int(self.batches_served), "seed": self.seed,
                "seq_len": self.seq_len, "batch_size": self.batch_size,
                "n_tokens": int(len(self.tokens)), "sha256": self.fingerprint}

    def load_state_dict(self, d: dict) -> None:
        keys = ("seed", "seq_len", "batch_size", "n_tokens", "sha256")
        for key in keys:
            if key not in d:
                raise ValueError(f"data state is missing {key!r}")
        mine = self.state_dict()
        for key in keys:
            if d[key] != mine[key]:
                raise ValueError(f"data state does not match this data: {key} was "
                                 f"{d[key]}, now {mine[key]} (different data file or config)")
        served = d.get("batches_served")
        if isinstance(served, bool) or not isinstance(served, int) or served < 0:
            raise ValueError(f"data state has a bad batches_served: {served!r}")
        self.batches_served = served


def split_micro_batches(inputs, targets, grad_accum_steps: int):
    """Split a step's batch into grad_accum_steps micro-batches along the batch axis,
    each with its share of the step's non-ignored target tokens.

    Returns a list of ``(inputs, targets, weight)`` with weights summing to 1 when the
    step has any non-ignored target: weight_i = n_i / sum(n) where n_i counts the
    targets != -100 of micro-batch i. Because the model's loss is the mean over a
    micro-batch's own non-ignored targets, sum_i weight_i * loss_i is the mean over
    the whole step's, exactly what one big batch would compute.
    """
    b = inputs.shape[0]
    if b % grad_accum_steps:
        raise ValueError(f"batch of {b} does not split into {grad_accum_steps} micro-batches")
    m = b // grad_accum_steps
    counts = [int((targets[i * m:(i + 1) * m] != IGNORE_INDEX).sum())
              for i in range(grad_accum_steps)]
    total = sum(counts)
    out = []
    for i in range(grad_accum_steps):
        w = counts[i] / total if total else 0.0
        out.append((inputs[i * m:(i + 1) * m], targets[i * m:(i + 1) * m], w))
    return out
