"""An lm-evaluation-harness model (``lm_eval.api.model.LM``) backed by hif8qat, registered
under the name ``"hif8qat"`` so the harness itself can drive our models.

``lm-eval`` is an optional extra, imported only when the adapter is first used. The
adapter scores with the same code as :func:`hif8qat.evaluate` (request encoding, left
truncation, batched scoring with shared-prefix reuse, frozen scalers in hif8), so the
harness's numbers and ours agree exactly.

* ``loglikelihood``: ``(context, continuation)`` -> ``(sum of log-probs, is_greedy)``.
* ``loglikelihood_rolling``: ``(text,)`` -> total log-prob of the text conditioned on
  the prefix token (BOS, else EOS), in disjoint windows of ``max_length`` tokens, each
  window seeing the ``max_length`` tokens before its last prediction (the harness's
  rolling windows with context_len 1). The text is encoded without BOS: the prefix
  token plays that role.
* ``generate_until``: greedy decoding, stopping at any ``until`` string or at EOS or
  after ``max_gen_toks`` tokens; the context is left-truncated to leave room for them.
  Sampling (``do_sample=True``) is refused rather than silently made greedy.

Example::

    import lm_eval
    from hif8qat.eval.harness import HiF8QatLM
    lm = HiF8QatLM(pretrained="ckpt", precision="fp32", batch_size=16)
    out = lm_eval.simple_evaluate(model=lm, tasks=["arc_challenge"], num_fewshot=0)

or by name, once ``hif8qat.eval.harness.register()`` has run in the process:
``lm_eval.simple_evaluate(model="hif8qat", model_args="pretrained=ckpt,precision=hif8")``.
"""
from __future__ import annotations

import numpy as np

from .evaluator import encode_request, evaluation_mode, loglikelihood_tokens, model_max_length
from .tokenizers import load_tokenizer, tok_encode

__all__ = ["register", "rolling_windows"]  # and HiF8QatLM, built on first access

_CLASS = None


def rolling_windows(tokens, prefix_token, max_length):
    """(context, continuation) token pairs that predict every token of ``tokens`` exactly
    once, conditioned on ``prefix_token``: windows of up to ``max_length`` predicted
    tokens, each with the full ``max_length`` tokens of input the model can take.

    >>> rolling_windows([10, 11, 12, 13, 14], 1, 3)
    [([1], [10, 11, 12]), ([11, 12], [13, 14])]
    """
    seq = [prefix_token] + list(tokens)
    out = []
    for start in range(0, len(tokens), max_length):
        end = min(start + max_length, len(tokens))     # predicts tokens[start:end]
        first = max(0, end - max_length)               # input is seq[first:end]
        out.append((seq[first:start + 1], seq[start + 1:end + 1]))
    return out


def _build_class():
    try:
        from lm_eval.api.model import LM
    except ImportError:
        raise ImportError("the lm-eval adapter needs lm-evaluation-harness: "
                          "pip install lm-eval (install torch first to keep a CPU build), "
                          "or pip install hif8qat[eval]") from None

    class HiF8QatLM(LM):
        """hif8qat model as an lm-eval ``LM``.

        Either ``pretrained`` (a model directory, loaded with ``hq.load_model`` in
        ``precision`` (default "fp32") — or an ``hq.export_hif8`` directory, loaded as
        its frozen hif8 model — and its tokenizer with ``hq.load_tokenizer``) or ``model`` and
        ``tokenizer`` objects. ``batch_size`` rows per forward; ``max_length`` defaults
        to the model's ``max_position_embeddings``.
        """

        def __init__(self, pretrained=None, precision=None, batch_size=16, max_length=None,
                     model=None, tokenizer=None, **kwargs):
            super().__init__()
            unknown = {k: v for k, v in kwargs.items() if v is not None
                       and k not in ("device", "max_batch_size", "dtype", "trust_remote_code")}
            if unknown:
                raise TypeError(f"HiF8QatLM got unexpected arguments {sorted(unknown)}")
            if model is None:
                if pretrained is None:
                    raise ValueError("HiF8QatLM needs pretrained=<model dir> or model=<object>")
                from hif8qat.model import load_model
                from hif8qat.ptq import is_hif8_checkpoint, load_hif8
                if is_hif8_checkpoint(pretrained):   # an hq.export_hif8 directory
                    model = load_hif8(pretrained, precision=precision or "hif8")
                else:
                    model = load_model(pretrained, precision=precision or "fp32")
            elif precision is not None and getattr(model, "precision", precision) != precision:
                model.set_precision(precision)
            if tokenizer is None:
                if pretrained is None:
                    raise ValueError("pass tokenizer= with model=, or pretrained=<model dir>")
                tokenizer = load_tokenizer(pretrained)
            if batch_size in (None, "auto"):
                batch_size = 16
            self.model = model
            self.tokenizer = tokenizer
            self.batch_size = int(batch_size)
            self.max_length = model_max_length(model, None if max_length is None
                                               else int(max_length))
            self.pretrained = pretrained

        # -- what the harness asks of a model --------------------------------------
        @property
        def tokenizer_name(self):
            return repr(self.tokenizer)

        def get_model_info(self):
            return {"model_num_parameters": int(getattr(self.model, "num_parameters", 0) or 0),
                    "precision": getattr(self.model, "precision", None),
                    "pretrained": str(self.pretrained) if self.pretrained else None}

        def _score(self, token_requests):
            with evaluation_mode(self.model):
                return loglikelihood_tokens(self.model, token_requests,
                                            batch_size=self.batch_size,
                                            max_length=self.max_length)

        def loglikelihood(self, requests, disable_tqdm=False):
            token_requests = [encode_request(self.tokenizer, *req.args) for req in requests]
            return self._score(token_requests) if token_requests else []

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            prefix = self.tokenizer.prefix_token_id
            if prefix is None and requests:
                raise ValueError("loglikelihood_rolling conditions on the BOS/EOS token, and "
                                 f"this tokenizer ({self.tokenizer!r}) has neither")
            windows, owner = [], []
            for i, req in enumerate(requests):
                (text,) = req.args
                for pair in rolling_windows(self.tokenizer.encode(text), prefix,
                                            self.max_length):
                    windows.append(pair)
                    owner.append(i)
            totals = [0.0] * len(requests)
            if windows:
                for i, (ll, _) in zip(owner, self._score(windows)):
                    totals[i] += ll
            return totals

        def generate_until(self, requests, disable_tqdm=False):
            out = []
            with evaluation_mode(self.model):
                for req in requests:
                    context, gen_kwargs = req.args
                    out.append(self._greedy(context, dict(gen_kwargs or {})))
            return out

        def _greedy(self, context, gen_kwargs):
            if gen_kwargs.get("do_sample"):
                raise ValueError("HiF8QatLM.generate_until decodes greedily only; "
                                 "do_sample=True is not supported")
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(gen_kwargs.get("max_gen_toks", 256))
            eos = self.tokenizer.eos_token_id
            tokens = tok_encode(self.tokenizer, context)
            tokens = tokens[-max(1, self.max_length - max_gen):]
            generated = []
            text = ""
            for _ in range(max_gen):
                window = np.asarray([(tokens + generated)[-self.max_length:]], dtype=np.int64)
                logits, _ = self.model.forward(window)
                nxt = int(np.argmax(logits[0, -1]))
                if eos is not None and nxt == eos:
                    break
                generated.append(nxt)
                text = self.tokenizer.decode(generated)
                if any(u and u in text for u in until):
                    break
            for u in until:
                if u and u in text:
                    text = text[:text.index(u)]
            return text

    HiF8QatLM.__module__ = __name__
    return HiF8QatLM


def _get_class():
    global _CLASS
    if _CLASS is None:
        _CLASS = _build_class()
    return _CLASS


def register(name="hif8qat"):
    """Register the adapter with lm-eval's model registry (idempotent); returns the class."""
    cls = _get_class()
    from lm_eval.api import registry
    try:
        existing = registry.get_model(name)
    except Exception:  # not registered yet (the registry raises its own error types)
        existing = None
    if existing is not cls:
        registry.register_model(name)(cls)
    return cls


def __getattr__(name):
    if name == "HiF8QatLM":
        return register()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
