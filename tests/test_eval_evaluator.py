"""The evaluator against hand-computed scores and an independent per-request reference,
on small deterministic stand-in models with the model's forward signature."""
import json
import math
import types

import numpy as np
import pytest

import hif8qat as hq
from hif8qat.eval import ByteTokenizer, evaluate, paired_bootstrap, acc_stderr
from hif8qat.eval.evaluator import encode_pair, encode_request, loglikelihood_tokens
from hif8qat.eval.tasks import load_task


class UniformModel:
    """Every next token equally likely: ll(continuation) = -len(tokens) * log(V)."""

    def __init__(self, vocab=256, max_len=512):
        self.config = types.SimpleNamespace(max_position_embeddings=max_len, vocab_size=vocab)
        self.precision = "fp32"
        self.rows_seen = 0

    def forward(self, tokens, targets=None):
        self.rows_seen += tokens.shape[0]
        return np.zeros(tokens.shape + (self.config.vocab_size,), np.float32), None


class FirstTokenBigram:
    """logits[b, t] = A[tokens[b, t]] + F[tokens[b, 0]]: depends on the current token and on
    the first token of the row, so BOS and left truncation change the scores."""

    def __init__(self, vocab=257, max_len=512, seed=0):
        rng = np.random.default_rng(seed)
        self.A = rng.standard_normal((vocab, vocab)).astype(np.float32) * 2
        self.F = rng.standard_normal((vocab, vocab)).astype(np.float32)
        self.config = types.SimpleNamespace(max_position_embeddings=max_len, vocab_size=vocab)
        self.precision = "fp32"
        self.batches = []

    def forward(self, tokens, targets=None):
        self.batches.append(tokens.shape)
        return self.A[tokens] + self.F[tokens[:, :1]], None


def reference_ll(model, ctx, cont, max_length):
    """One request at a time, no batching or reuse: float64 log-softmax of the model's
    logits for the row (ctx + cont)[-(max_length+1):][:-1]."""
    row = (list(ctx) + list(cont))[-(max_length + 1):][:-1]
    logits, _ = model.forward(np.array([row], dtype=np.int64))
    x = logits[0].astype(np.float64)
    total = 0.0
    for j, tok in enumerate(cont):
        p = len(row) - len(cont) + j
        z = x[p] - x[p].max()
        total += z[tok] - math.log(np.exp(z).sum())
    return total


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def arc_file(tmp_path, name, choices_and_gold):
    recs = []
    for i, (choices, gold) in enumerate(choices_and_gold):
        labels = list("ABCDE"[:len(choices)])
        recs.append({"id": f"q{i}", "question": f"Q{i}?", "answerKey": labels[gold],
                     "choices": {"text": list(choices), "label": labels}})
    return write_jsonl(tmp_path / name, recs)


# ----------------------------------------------------------------------------- hand-computed

def test_uniform_model_scores_worked_by_hand(tmp_path):
    # Uniform model: ll_i = -(1 + len(c_i)) log 256 (a byte per char, plus the space), so
    # acc picks the first shortest choice and acc_norm (divided by len(c_i), without the
    # space) the first longest.
    items = [(["aa", "b", "cccc"], 1),     # shortest is b -> acc 1; longest cccc -> norm 0
             (["aa", "b", "cccc"], 2),     # acc 0; norm 1
             (["xy", "zw", "q"], 0),       # shortest q (2) -> acc 0; longest first xy -> norm 1
             (["xy", "zw", "q"], 2)]       # acc 1; norm 0
    path = arc_file(tmp_path, "t.jsonl", items)
    res = evaluate(UniformModel(), ByteTokenizer(), f"arc:{path}", batch_size=3)
    m = res["arc"]
    assert m["acc"] == 0.5 and m["acc_norm"] == 0.5 and m["n"] == 4 and m["num_fewshot"] == 0
    assert m["acc_stderr"] == pytest.approx(np.std([1, 0, 0, 1], ddof=1) / 2)
    rec = res.items["arc"][0]
    assert rec.lls == pytest.approx((-3 * math.log(256), -2 * math.log(256), -5 * math.log(256)))
    assert (rec.pred, rec.pred_norm, rec.correct, rec.correct_norm) == (1, 2, True, False)
    assert [r.correct for r in res.items["arc"]] == [True, False, False, True]
    assert [r.correct_norm for r in res.items["arc"]] == [False, True, True, False]


def test_fewshot_scores_match_the_independent_reference(tmp_path):
    rng = np.random.default_rng(1)
    items = [([f"c{k}{'x' * int(rng.integers(0, 4))}" for k in range(4)], int(rng.integers(0, 4)))
             for _ in range(9)]
    path = arc_file(tmp_path, "t.jsonl", items)
    model, tok = FirstTokenBigram(), ByteTokenizer()
    task = load_task(f"arc:{path}")
    for k in (0, 2):
        res = evaluate(model, tok, f"arc:{path}", num_fewshot=k, batch_size=4)
        contexts = task.contexts(num_fewshot=k)
        n_correct = n_norm = 0
        for item, ctx, rec in zip(task.items, contexts, res.items["arc"]):
            ctx_t = list(ctx.encode())
            lls = [reference_ll(model, ctx_t, list((" " + c).encode()), 512) for c in item.choices]
            assert rec.lls == pytest.approx(lls, abs=1e-9)
            n_correct += int(np.argmax(lls)) == item.gold
            n_norm += int(np.argmax(np.array(lls) / [len(c) for c in item.choices])) == item.gold
        assert res["arc"]["acc"] == n_correct / 9 and res["arc"]["acc_norm"] == n_norm / 9
        assert res["arc"]["num_fewshot"] == k
    # few-shot contexts really differ from zero-shot ones
    assert task.contexts(num_fewshot=2)[0] != task.contexts(num_fewshot=0)[0]


# ----------------------------------------------------------------------------- tokenization

def test_encode_pair_moves_trailing_context_spaces_to_the_continuation():
    tok = ByteTokenizer()
    assert encode_pair(tok, "Answer: ", "Paris") == (list(b"Answer:"), list(b" Paris"))
    assert encode_pair(tok, "Answer:", " Paris") == (list(b"Answer:"), list(b" Paris"))
    bos = ByteTokenizer(bos_token_id=256, add_bos_token=True)
    assert encode_pair(bos, "Q", " a") == ([256] + list(b"Q"), list(b" a"))
    # an empty context is conditioned on the BOS token
    assert encode_request(bos, "", "hi") == ([256], list(b"hi"))
    with pytest.raises(ValueError, match="neither"):
        encode_request(tok, "", "hi")


def test_bos_on_and_off(tmp_path):
    path = arc_file(tmp_path, "t.jsonl", [(["yes", "no", "maybe"], 0), (["up", "down", "x"], 2)])
    model = FirstTokenBigram()
    task = load_task(f"arc:{path}")
    scores = {}
    for add_bos in (False, True):
        tok = ByteTokenizer(bos_token_id=256, add_bos_token=add_bos)
        res = evaluate(model, tok, f"arc:{path}")
        for item, rec in zip(task.items, res.items["arc"]):
            ctx = ([256] if add_bos else []) + list(item.query.encode())
            ref = [reference_ll(model, ctx, list((" " + c).encode()), 512) for c in item.choices]
            assert rec.lls == pytest.approx(ref, abs=1e-9)
        scores[add_bos] = [r.lls for r in res.items["arc"]]
    assert scores[True] != scores[False]  # the first token matters to this model


def test_left_truncation_keeps_the_last_max_length_tokens(tmp_path):
    path = arc_file(tmp_path, "t.jsonl", [(["short", "longer one"], 1)])
    model = FirstTokenBigram()
    task = load_task(f"arc:{path}")
    res = evaluate(model, ByteTokenizer(), f"arc:{path}", max_length=12)
    item = task.items[0]
    ctx = list(item.query.encode())   # "Question: Q0?\nAnswer:" is 21 bytes > 12
    for choice, ll in zip(item.choices, res.items["arc"][0].lls):
        cont = list((" " + choice).encode())
        row = (ctx + cont)[-13:][:-1]
        assert len(row) == 12 and row[-1] == cont[-2]
        assert ll == pytest.approx(reference_ll(model, ctx, cont, 12), abs=1e-9)
    # by hand for the first position of the short choice: the row is the last 12 tokens
    cont = list(b" short")
    row = (ctx + cont)[-13:][:-1]
    x = (model.A[row[6]] + model.F[row[0]]).astype(np.float64)  # predicts cont[0] = " "
    lp0 = x[cont[0]] - np.log(np.exp(x - x.max()).sum()) - x.max()
    assert row[6] == ctx[-1] and lp0 < 0
    with pytest.raises(ValueError, match="never truncated"):
        loglikelihood_tokens(model, [(ctx, list(range(13)))], max_length=12)
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        evaluate(model, ByteTokenizer(), f"arc:{path}", max_length=10_000)


# ----------------------------------------------------------------------------- batching

def test_batch_size_and_order_do_not_change_scores(tmp_path):
    rng = np.random.default_rng(2)
    items = [([f"opt{k}" + "z" * int(rng.integers(0, 6)) for k in range(4)], k % 4) for k in range(13)]
    path = arc_file(tmp_path, "t.jsonl", items)
    model = FirstTokenBigram()
    runs = [evaluate(model, ByteTokenizer(), f"arc:{path}", num_fewshot=1, batch_size=b)
            for b in (1, 5, 16)]
    lls = [[r.lls for r in run.items["arc"]] for run in runs]
    assert lls[0] == lls[1] == lls[2]
    assert runs[0].config["model_rows"] == runs[2].config["model_rows"]


def test_shared_prefix_reuse_runs_one_row_per_mmlu_question(tmp_path):
    import csv
    (tmp_path / "test").mkdir()
    with open(tmp_path / "test" / "algebra_test.csv", "w", newline="") as f:
        csv.writer(f).writerows([[f"What is {i}?", "1", "2", "3", "4", "ABCD"[i % 4]] for i in range(7)])
    model = FirstTokenBigram()
    res = evaluate(model, ByteTokenizer(), f"mmlu:{tmp_path}", batch_size=4)
    # " A" .. " D" are two bytes; the model input (context + " ") is the same for all four.
    assert res.config["requests"] == 28 and res.config["model_rows"] == 7
    assert sum(shape[0] for shape in model.batches) == 7
    task = load_task(f"mmlu:{tmp_path}")
    for item, rec in zip(task.items, res.items["mmlu"]):
        ctx = list(task.subtasks[0].description.encode() + item.query.encode())
        ref = [reference_ll(model, ctx, list((" " + c).encode()), 512) for c in item.choices]
        assert rec.lls == pytest.approx(ref, abs=1e-9)
    assert res["mmlu"]["acc_norm"] is None
    assert res.subtasks["mmlu"]["mmlu_algebra"]["n"] == 7


def test_a_choice_that_extends_another_rides_on_its_row():
    model = FirstTokenBigram()
    reqs = [([1, 2, 3], [4]), ([1, 2, 3], [4, 5, 6]), ([1, 2], [3, 4]), ([9], [8])]
    stats = {}
    out = loglikelihood_tokens(model, reqs, batch_size=2, max_length=64, stats=stats)
    assert stats == {"requests": 4, "rows": 2, "nonfinite": 0}
    for (ctx, cont), (ll, _) in zip(reqs, out):
        assert ll == pytest.approx(reference_ll(model, ctx, cont, 64), abs=1e-9)


def test_is_greedy_and_nonfinite_logits_are_reported():
    class Peaked(UniformModel):
        def forward(self, tokens, targets=None):
            logits = np.zeros(tokens.shape + (256,), np.float32)
            logits[..., 7] = 5.0
            logits[tokens[:, 0] == 99, 0, 9] = np.nan  # whichever batch row holds it
            return logits, None
    stats = {}
    out = loglikelihood_tokens(Peaked(), [([1], [7, 7]), ([1], [7, 8]), ([99], [3])], stats=stats)
    assert out[0][1] is True and out[1][1] is False
    assert math.isnan(out[2][0]) and stats["nonfinite"] == 1


# ----------------------------------------------------------------------------- hif8 freezing

class FakeScaler:
    def __init__(self, name, n_valid):
        self.name, self.n_valid, self.frozen = name, n_valid, False


class FakeGroup(list):
    def set_frozen(self, value):
        for s in self:
            s.frozen = value


def test_hif8_evaluation_freezes_scalers_and_restores_them(tmp_path):
    path = arc_file(tmp_path, "t.jsonl", [(["a", "bb"], 0)])
    model = FirstTokenBigram()
    model.precision = "hif8"
    model.scalers = FakeGroup([FakeScaler("l.input", 3), FakeScaler("l.weight", 1)])
    model.scalers[1].frozen = True
    seen = []
    inner = model.forward
    model.forward = lambda t, targets=None: (seen.append([s.frozen for s in model.scalers]), inner(t))[1]
    evaluate(model, ByteTokenizer(), f"arc:{path}")
    assert seen and all(f == [True, True] for f in seen)
    assert [s.frozen for s in model.scalers] == [False, True]
    model.scalers[0].n_valid = 0
    with pytest.raises(RuntimeError, match=r"empty amax history.*hq.calibrate"):
        evaluate(model, ByteTokenizer(), f"arc:{path}")
    assert [s.frozen for s in model.scalers] == [False, True]


def tiny_llama(seed=0):
    cfg = hq.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128)
    return hq.LlamaModel.from_config(cfg, seed=seed)


def calibrated_hif8(model, rng):
    model.calibrating = True
    model.forward(rng.integers(0, 256, size=(2, 32)))
    model.calibrating = False
    model.scalers.update()
    model.set_precision("hif8")
    return model


def test_real_model_hif8_scores_identical_for_batch_sizes_1_and_16(tmp_path):
    rng = np.random.default_rng(3)
    items = [([f"w{k}" + "q" * int(rng.integers(0, 5)) for k in range(4)], k % 4) for k in range(10)]
    path = arc_file(tmp_path, "t.jsonl", items)
    model = calibrated_hif8(tiny_llama(), rng)
    # Precondition (the model's part): rows of one batch are computed independently.
    toks = rng.integers(0, 256, size=(4, 32))
    model.scalers.set_frozen(True)
    rows_independent = all(np.array_equal(model.forward(toks[i:i + 1])[0][0], model.forward(toks)[0][i])
                           for i in range(4))
    model.scalers.set_frozen(False)
    if not rows_independent:
        pytest.xfail("LlamaModel.forward in hif8 is not row-independent (an fp32 matmul over "
                     "all B*T rows, e.g. the LM head; a per-sequence matmul fixes it)")
    a = evaluate(model, ByteTokenizer(), f"arc:{path}", num_fewshot=1, batch_size=1)
    b = evaluate(model, ByteTokenizer(), f"arc:{path}", num_fewshot=1, batch_size=16)
    assert [r.lls for r in a.items["arc"]] == [r.lls for r in b.items["arc"]]
    assert all(not s.frozen for s in model.scalers)


def test_real_model_fp32_scores_agree_across_batch_sizes(tmp_path):
    # fp32 runs NumPy's BLAS, whose rounding may depend on the row count: close, not bitwise.
    rng = np.random.default_rng(4)
    items = [([f"w{k}" + "q" * int(rng.integers(0, 5)) for k in range(4)], k % 4) for k in range(10)]
    path = arc_file(tmp_path, "t.jsonl", items)
    model = tiny_llama()
    a = evaluate(model, ByteTokenizer(), f"arc:{path}", num_fewshot=1, batch_size=1)
    b = evaluate(model, ByteTokenizer(), f"arc:{path}", num_fewshot=1, batch_size=16)
    for ra, rb in zip(a.items["arc"], b.items["arc"]):
        assert ra.lls == pytest.approx(rb.lls, rel=1e-5)


def test_uncalibrated_hif8_model_is_a_clear_error(tmp_path):
    path = arc_file(tmp_path, "t.jsonl", [(["a", "bb"], 0)])
    model = tiny_llama()
    model.set_precision("hif8")
    with pytest.raises(RuntimeError, match="calibrate"):
        evaluate(model, ByteTokenizer(), f"arc:{path}")


# ----------------------------------------------------------------------------- stats

def test_acc_stderr_is_sample_std_over_sqrt_n():
    x = np.array([1, 0, 1, 1, 0, 1, 1], dtype=float)
    assert acc_stderr(x) == pytest.approx(math.sqrt(((x - x.mean()) ** 2).sum() / 6) / math.sqrt(7))
    assert math.isnan(acc_stderr([1.0]))


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.7).astype(float)
    b = a.copy()
    flip = rng.choice(2000, 40, replace=False)   # b loses 40 items a got right or wrong
    b[flip] = 0.0
    d = paired_bootstrap(a, b, n_resamples=4000, seed=1)
    delta = a - b
    se = delta.std(ddof=1) / math.sqrt(2000)
    assert d["diff"] == pytest.approx(delta.mean())
    assert d["low"] < d["diff"] < d["high"]
    # the percentile interval is close to the normal one for the paired differences
    assert d["high"] - d["low"] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert d["p_value"] < 0.01
    same = paired_bootstrap(a, a, n_resamples=100)
    assert (same["diff"], same["low"], same["high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap(a, b[:10])


# ----------------------------------------------------------------------------- tokenizers

def test_cluster_bootstrap_resamples_whole_groups():
    rng = np.random.default_rng(0)
    # 40 groups of 10 items whose differences are identical within a group: 400 items
    # that carry the information of 40, so the interval must be ~sqrt(10) x wider
    per_group = rng.integers(0, 2, size=40)
    a = np.repeat(per_group, 10).astype(float)
    b = np.repeat(rng.integers(0, 2, size=40), 10).astype(float)
    groups = np.repeat(np.arange(40), 10)
    flat = paired_bootstrap(a, b, n_resamples=4000, seed=1)
    clus = paired_bootstrap(a, b, n_resamples=4000, seed=1, groups=groups)
    assert clus["diff"] == flat["diff"] and clus["n_groups"] == 40 and flat["n_groups"] == 400
    ratio = (clus["high"] - clus["low"]) / (flat["high"] - flat["low"])
    assert 2.3 < ratio < 4.3
    # singleton groups are the item bootstrap, draw for draw
    same = paired_bootstrap(a, b, n_resamples=500, seed=2, groups=np.arange(400))
    assert same == {**paired_bootstrap(a, b, n_resamples=500, seed=2)}
    with pytest.raises(ValueError, match="one label per item"):
        paired_bootstrap(a, b, groups=groups[:-1])


def test_load_tokenizer_byte_level_reads_specials_from_config(tmp_path):
    from hif8qat.eval import load_tokenizer
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 258, "bos_token_id": 256,
                                                      "eos_token_id": 257}))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, ByteTokenizer)
    assert (tok.bos_token_id, tok.eos_token_id, tok.add_bos_token) == (256, 257, False)
    # a Llama config's default ids 1 and 2 would be bytes, not specials
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 256, "bos_token_id": 1,
                                                      "eos_token_id": 2}))
    assert load_tokenizer(tmp_path).prefix_token_id is None
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 258, "bos_token_id": 256}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    tok = load_tokenizer(tmp_path)
    assert tok.add_bos_token and encode_pair(tok, "hi", " x") == ([256, 104, 105], [32, 120])
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(ValueError, match=">= 256"):
        ByteTokenizer(bos_token_id=3)


def hf_tokenizer_dir(tmp_path, config):
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Question: what is the answer?\nAnswer: yes no maybe"] * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    from tokenizers import decoders
    tok.decoder = decoders.ByteLevel()
    tok.save(str(tmp_path / "tokenizer.json"))
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("config,expect_bos", [
    (None, True),                                                   # post-processor adds <s>
    ({"add_bos_token": False, "bos_token": "<s>", "eos_token": "</s>"}, False),
    ({"add_bos_token": True, "bos_token": {"content": "<s>"}}, True)])
def test_hf_tokenizer_json_bos_follows_the_config(tmp_path, config, expect_bos):
    from hif8qat.eval import HFTokenizer, load_tokenizer
    tok = load_tokenizer(hf_tokenizer_dir(tmp_path, config))
    assert isinstance(tok, HFTokenizer)
    assert tok.bos_token_id == 1 and tok.add_bos_token is expect_bos
    ids = tok.encode("Answer: yes")
    assert 1 not in ids and tok.decode(ids) == "Answer: yes"
    ctx, cont = encode_pair(tok, "Question: what?\nAnswer:", " yes")
    assert (ctx[0] == 1) is expect_bos and tok.decode(cont) == " yes"
    whole = tok.encode("Question: what?\nAnswer: yes")
    assert (ctx + cont)[int(expect_bos):] == whole


def sp_tokenizer_dir(tmp_path, config):
    spm = pytest.importorskip("sentencepiece")
    import io
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["Question: what is the answer?", "Answer: yes no maybe"] * 50),
        model_writer=model, vocab_size=40, model_type="bpe", character_coverage=1.0)
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("config,expect_bos", [(None, True), ({"add_bos_token": False}, False)])
def test_sentencepiece_tokenizer_bos_follows_the_config(tmp_path, config, expect_bos):
    from hif8qat.eval import SentencePieceTokenizer, load_tokenizer
    tok = load_tokenizer(sp_tokenizer_dir(tmp_path, config))
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.add_bos_token is expect_bos
    ctx, cont = encode_pair(tok, "Question: what?\nAnswer:", " yes")
    assert (ctx[0] == 1) is expect_bos and len(cont) >= 1
    assert tok.decode(tok.encode("Answer: yes")) == "Answer: yes"
    # scoring through the evaluator uses these tokens
    model = FirstTokenBigram(vocab=tok.vocab_size)
    (ll, _), = loglikelihood_tokens(model, [(ctx, cont)], max_length=64)
    assert ll == pytest.approx(reference_ll(model, ctx, cont, 64), abs=1e-9)


# ----------------------------------------------------------------------------- packing

def packing_requests(rng):
    """Contexts with several continuations: distinct, one extending another, a duplicate,
    a lone request, and contexts long enough to be left-truncated at max_length 24."""
    reqs = []
    for g in range(6):
        ctx = list(rng.integers(1, 256, size=int(rng.integers(3, 30))))
        conts = [list(rng.integers(1, 256, size=int(rng.integers(1, 6)))) for _ in range(4)]
        conts.append(conts[0] + [7, 9])          # extends choice 0
        conts.append(list(conts[1]))             # duplicate of choice 1
        reqs += [(ctx, c) for c in conts]
    reqs.append(([5, 6], [8]))
    return reqs


def test_packed_scores_equal_separate_rows_in_float64():
    """One row per context (context once, every continuation beside it) must score
    exactly what one causal row per request scores: float64 leaves only rounding."""
    cfg = tiny_llama().config
    model = hq.LlamaModel.from_config(cfg, seed=1, dtype=np.float64)
    reqs = packing_requests(np.random.default_rng(5))
    stats_p, stats_s = {}, {}
    packed = loglikelihood_tokens(model, reqs, batch_size=4, max_length=24, stats=stats_p)
    separate = loglikelihood_tokens(model, reqs, batch_size=4, max_length=24, stats=stats_s,
                                    pack=False)
    for (lp, gp), (ls, gs), (ctx, cont) in zip(packed, separate, reqs):
        assert lp == pytest.approx(ls, rel=1e-12, abs=1e-12)
        assert gp == gs
        assert ls == pytest.approx(reference_ll(model, ctx, cont, 24), rel=1e-12)
    assert stats_p["rows"] < stats_s["rows"]


def test_a_long_group_is_split_over_rows_that_each_repeat_the_context():
    cfg = tiny_llama().config
    model = hq.LlamaModel.from_config(cfg, seed=2, dtype=np.float64)
    ctx = list(range(1, 9))
    reqs = [(ctx, [100 + i] * 7) for i in range(6)]          # 8 + 6 * 6 > 2 * 16
    stats = {}
    out = loglikelihood_tokens(model, reqs, batch_size=8, max_length=16, stats=stats)
    assert stats["rows"] == 2
    for (ll, _), (c, cont) in zip(out, reqs):
        assert ll == pytest.approx(reference_ll(model, c, cont, 16), rel=1e-12)


@pytest.mark.parametrize("precision", ["bf16", "hif8"])
def test_packed_scores_do_not_depend_on_batch_size(tmp_path, precision):
    rng = np.random.default_rng(6)
    items = [([f"w{k}" + "q" * int(rng.integers(0, 5)) for k in range(4)], k % 4) for k in range(9)]
    path = arc_file(tmp_path, "t.jsonl", items)
    model = tiny_llama()
    if precision == "hif8":
        calibrated_hif8(model, rng)
    else:
        model.set_precision(precision)
    runs = [evaluate(model, ByteTokenizer(), f"arc:{path}", num_fewshot=1, batch_size=b)
            for b in (1, 4, 16)]
    lls = [[r.lls for r in run.items["arc"]] for run in runs]
    assert lls[0] == lls[1] == lls[2]
    assert runs[0].config["model_rows"] == 9               # one row per question
    # and they are the separate rows' scores up to rounding
    sep = loglikelihood_tokens(model, [encode_request(ByteTokenizer(), "Question: x?\nAnswer:",
                                                       " w0")], pack=False)
    pk = loglikelihood_tokens(model, [encode_request(ByteTokenizer(), "Question: x?\nAnswer:",
                                                      " w0")])
    assert pk[0][0] == pytest.approx(sep[0][0], rel=1e-4)


def test_pack_true_needs_a_model_that_takes_masks():
    with pytest.raises(ValueError, match="position_ids and attention_mask"):
        loglikelihood_tokens(UniformModel(), [([1], [2])], pack=True)
