"""Tokenizers for evaluation: byte-level (built in), Hugging Face ``tokenizer.json`` and
SentencePiece ``tokenizer.model`` (both optional extras, imported only when used).

Every tokenizer here exposes the same small interface, the one the evaluator and the
lm-eval adapter need:

* ``encode(text) -> list[int]``: the text's tokens, never any special token;
* ``decode(ids) -> str``;
* ``bos_token_id`` / ``eos_token_id`` (``None`` when the tokenizer has none);
* ``add_bos_token``: whether a BOS token is prepended to every encoded context (the
  checkpoint's own ``tokenizer_config.json`` says so, as the harness follows it);
* ``prefix_token_id``: what an empty context is conditioned on (BOS, else EOS: the
  harness's rule);
* ``vocab_size``.

``tok_encode(tokenizer, text)`` is the harness's ``tok_encode``: ``[BOS] + encode(text)``
when ``add_bos_token``, else ``encode(text)``.

Example::

    >>> tok = ByteTokenizer()
    >>> tok.encode("hé")
    [104, 195, 169]
    >>> tok.decode([104, 195, 169])
    'hé'
"""
from __future__ import annotations

import json
import os

__all__ = ["ByteTokenizer", "HFTokenizer", "SentencePieceTokenizer", "load_tokenizer",
           "tok_encode"]


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255 — the tokenizer of hif8qat's own byte-level models.

    Ids 0..255 are the bytes themselves. A byte-level model may reserve ids above 255 for
    special tokens: pass ``bos_token_id`` / ``eos_token_id`` (each >= 256) and set
    ``vocab_size`` to cover them. By default there are none, so ``vocab_size`` is 256 and
    an empty context (only ``loglikelihood_rolling`` sends one) has nothing to be
    conditioned on, which is an error rather than a silent guess. ``decode`` drops ids
    outside 0..255 (specials) and replaces invalid UTF-8 with U+FFFD.

    Example::

        >>> ByteTokenizer(bos_token_id=256, add_bos_token=True, vocab_size=257).bos_token_id
        256
    """

    def __init__(self, *, bos_token_id=None, eos_token_id=None, add_bos_token=False,
                 vocab_size=None):
        specials = [i for i in (bos_token_id, eos_token_id) if i is not None]
        for i in specials:
            if not isinstance(i, int) or i < 256:
                raise ValueError(f"ByteTokenizer special token ids must be ints >= 256 "
                                 f"(0..255 are the bytes), got {i!r}")
        need = max(specials, default=255) + 1
        if vocab_size is None:
            vocab_size = need
        if vocab_size < need:
            raise ValueError(f"ByteTokenizer vocab_size={vocab_size} does not cover the "
                             f"special token ids {specials}")
        if add_bos_token and bos_token_id is None:
            raise ValueError("ByteTokenizer(add_bos_token=True) needs a bos_token_id (>= 256)")
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.add_bos_token = bool(add_bos_token)
        self.vocab_size = int(vocab_size)

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    @property
    def prefix_token_id(self):
        return self.bos_token_id if self.bos_token_id is not None else self.eos_token_id

    def __repr__(self):
        return (f"ByteTokenizer(bos_token_id={self.bos_token_id}, eos_token_id="
                f"{self.eos_token_id}, add_bos_token={self.add_bos_token})")


def _special_token_content(value):
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


class HFTokenizer:
    """A Hugging Face fast tokenizer read from ``tokenizer.json`` (needs ``tokenizers``).

    Text is encoded without the tokenizer's post-processor (no special tokens); BOS is
    then prepended by the evaluator when ``add_bos_token`` is true. ``add_bos_token`` is
    read from ``tokenizer_config.json``; when the config does not say, it is what the
    tokenizer's own post-processor does (Llama-3's adds ``<|begin_of_text|>``, GPT-2's
    adds nothing) — the same default ``transformers`` ends up with.

    Example::

        tok = HFTokenizer("ckpt/tokenizer.json", "ckpt/tokenizer_config.json")
        tok.encode("Paris")
    """

    def __init__(self, tokenizer_file, config_file=None):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("reading tokenizer.json needs the 'tokenizers' package: "
                              "pip install tokenizers (or pip install hif8qat[hf])") from None
        self._tok = Tokenizer.from_file(os.fspath(tokenizer_file))
        config = _read_json(config_file) if config_file and os.path.exists(config_file) else {}
        self.bos_token_id = self._config_token_id(config, "bos_token")
        self.eos_token_id = self._config_token_id(config, "eos_token")
        if self.bos_token_id is None or self.eos_token_id is None:
            # No config: take them from what the post-processor adds around a text.
            plain = self._tok.encode("a", add_special_tokens=False).ids
            full = self._tok.encode("a", add_special_tokens=True).ids
            if len(full) > len(plain):
                start = full.index(plain[0]) if plain and plain[0] in full else 0
                if self.bos_token_id is None and start > 0:
                    self.bos_token_id = full[0]
                if self.eos_token_id is None and len(full) > start + len(plain):
                    self.eos_token_id = full[-1]
        if "add_bos_token" in config:
            self.add_bos_token = bool(config["add_bos_token"])
        else:
            plain = self._tok.encode("a", add_special_tokens=False).ids
            full = self._tok.encode("a", add_special_tokens=True).ids
            self.add_bos_token = (self.bos_token_id is not None and len(full) > len(plain)
                                  and full[0] == self.bos_token_id)
        if self.add_bos_token and self.bos_token_id is None:
            raise ValueError(f"{config_file}: add_bos_token is true but no bos_token is known")
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def _config_token_id(self, config, key):
        content = _special_token_content(config.get(key))
        if content is None:
            return None
        return self._tok.token_to_id(content)

    def encode(self, text):
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids):
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def prefix_token_id(self):
        return self.bos_token_id if self.bos_token_id is not None else self.eos_token_id

    def __repr__(self):
        return (f"HFTokenizer(vocab_size={self.vocab_size}, bos_token_id={self.bos_token_id}, "
                f"eos_token_id={self.eos_token_id}, add_bos_token={self.add_bos_token})")


class SentencePieceTokenizer:
    """A SentencePiece model read from ``tokenizer.model`` (needs ``sentencepiece``).

    OpenPangu and the original Llama ship this form. BOS/EOS ids are the model's own
    (``bos_id()``/``eos_id()``, -1 meaning none); ``add_bos_token`` comes from
    ``tokenizer_config.json`` and defaults to True, the default of the Llama-style
    SentencePiece tokenizers in ``transformers``.

    Example::

        tok = SentencePieceTokenizer("ckpt/tokenizer.model")
        tok.encode("Paris")
    """

    def __init__(self, model_file, config_file=None):
        try:
            import sentencepiece
        except ImportError:
            raise ImportError("reading tokenizer.model needs the 'sentencepiece' package: "
                              "pip install sentencepiece (or pip install hif8qat[hf])") from None
        self._sp = sentencepiece.SentencePieceProcessor(model_file=os.fspath(model_file))
        config = _read_json(config_file) if config_file and os.path.exists(config_file) else {}
        bos, eos = self._sp.bos_id(), self._sp.eos_id()
        self.bos_token_id = bos if bos >= 0 else None
        self.eos_token_id = eos if eos >= 0 else None
        for key, attr in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id")):
            content = _special_token_content(config.get(key))
            if content is not None:
                piece_id = self._sp.piece_to_id(content)
                if self._sp.id_to_piece(piece_id) == content:  # unknown pieces map to <unk>
                    setattr(self, attr, piece_id)
        self.add_bos_token = (bool(config.get("add_bos_token", True))
                              and self.bos_token_id is not None)
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, text):
        return list(self._sp.encode(text, out_type=int))

    def decode(self, ids):
        return self._sp.decode([int(i) for i in ids])

    @property
    def prefix_token_id(self):
        return self.bos_token_id if self.bos_token_id is not None else self.eos_token_id

    def __repr__(self):
        return (f"SentencePieceTokenizer(vocab_size={self.vocab_size}, bos_token_id="
                f"{self.bos_token_id}, eos_token_id={self.eos_token_id}, "
                f"add_bos_token={self.add_bos_token})")


def tok_encode(tokenizer, text):
    """The tokens of a context as the model sees them: BOS first when the tokenizer adds it."""
    ids = tokenizer.encode(text)
    if tokenizer.add_bos_token:
        return [tokenizer.bos_token_id] + ids
    return ids


def _byte_tokenizer_for(model_dir):
    """A byte-level model's specials: tokenizer_config.json if present, else config.json.

    config.json's bos/eos ids are used only when they lie above the byte range and inside
    the vocabulary (a Llama config's defaults 1 and 2 would be the bytes \\x01 and \\x02).
    """
    tc_path = os.path.join(model_dir, "tokenizer_config.json")
    cfg_path = os.path.join(model_dir, "config.json")
    tc = _read_json(tc_path) if os.path.exists(tc_path) else {}
    cfg = _read_json(cfg_path) if os.path.exists(cfg_path) else {}
    vocab = cfg.get("vocab_size")
    kwargs = {}
    for key in ("bos_token_id", "eos_token_id"):
        value = tc.get(key, cfg.get(key))
        if isinstance(value, list):  # some configs list several EOS ids; the first is EOT
            value = value[0] if value else None
        if isinstance(value, int) and value >= 256 and (vocab is None or value < vocab):
            kwargs[key] = value
    add_bos = bool(tc.get("add_bos_token", False)) and "bos_token_id" in kwargs
    if isinstance(vocab, int) and vocab >= 256:
        need = max([v for v in kwargs.values()], default=255) + 1
        kwargs["vocab_size"] = max(vocab, need)
    return ByteTokenizer(add_bos_token=add_bos, **kwargs)


def load_tokenizer(model_dir):
    """The tokenizer a model directory ships: ``tokenizer.json`` (Hugging Face) first, then
    ``tokenizer.model`` (SentencePiece), else byte-level.

    BOS handling follows the directory's ``tokenizer_config.json`` (``add_bos_token``).

    Example::

        >>> load_tokenizer("/nonexistent-dir-is-an-error")
        Traceback (most recent call last):
        ...
        FileNotFoundError: load_tokenizer: /nonexistent-dir-is-an-error is not a directory
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"load_tokenizer: {model_dir} is not a directory")
    config_file = os.path.join(model_dir, "tokenizer_config.json")
    hf = os.path.join(model_dir, "tokenizer.json")
    sp = os.path.join(model_dir, "tokenizer.model")
    if os.path.exists(hf):
        return HFTokenizer(hf, config_file)
    if os.path.exists(sp):
        return SentencePieceTokenizer(sp, config_file)
    return _byte_tokenizer_for(model_dir)
