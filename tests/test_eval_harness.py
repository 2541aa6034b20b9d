"""The lm-eval adapter: lm_eval.simple_evaluate on local task YAMLs (offline fixture files)
gives exactly hq.evaluate's accuracies and per-item log-likelihoods, zero- and few-shot."""
import json
import math
import os
import types

import numpy as np
import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

import hif8qat as hq  # noqa: E402
from hif8qat.eval import ByteTokenizer, evaluate  # noqa: E402
from hif8qat.eval.harness import register, rolling_windows  # noqa: E402


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def hs(i, rng):
    ends = [f"they {w} the {o}" + " [step]" * int(rng.integers(0, 2)) for w, o in
            zip(["paint", "wash", "lift", "fold"], rng.permutation(["car", "dog", "rug", "box"]))]
    return {"ind": i, "activity_label": f"Chore {i % 3}", "ctx_a": f"A person walks in. [title] Step {i}.",
            "ctx_b": "then THEY start", "endings": ends, "label": str(int(rng.integers(0, 4)))}


def arc(i, rng, n):
    labels = [str(k + 1) for k in range(n)] if i % 2 else list("ABCDE"[:n])
    return {"id": f"q{i}", "question": f"Which thing number {i} is right?",
            "choices": {"text": [f"option {'x' * int(rng.integers(1, 6))} {k}" for k in range(n)],
                        "label": labels}, "answerKey": labels[int(rng.integers(0, n))]}


def mmlu(i, rng):
    return {"question": f"  What is {i} plus {i % 3}?  ", "subject": "abstract_algebra",
            "choices": [str(i + k) for k in range(4)], "answer": int(rng.integers(0, 4))}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("harness")
    rng = np.random.default_rng(0)
    (d / "hs").mkdir(), (d / "arc").mkdir(), (d / "mmlu").mkdir()
    files = {
        "hs_val": write_jsonl(d / "hs" / "val.jsonl", [hs(i, rng) for i in range(6)]),
        "hs_train": write_jsonl(d / "hs" / "train.jsonl", [hs(100 + i, rng) for i in range(5)]),
        "arc_test": write_jsonl(d / "arc" / "test.jsonl", [arc(i, rng, 3 + i % 3) for i in range(6)]),
        "arc_train": write_jsonl(d / "arc" / "train.jsonl", [arc(100 + i, rng, 4) for i in range(5)]),
        "mmlu_test": write_jsonl(d / "mmlu" / "test.jsonl", [mmlu(i, rng) for i in range(5)]),
        "mmlu_dev": write_jsonl(d / "mmlu" / "dev.jsonl", [mmlu(50 + i, rng) for i in range(3)]),
    }
    cache = str(d / "hf_cache")
    yamls = d / "yaml"
    yamls.mkdir()
    (yamls / "utils.py").write_text("from lm_eval.tasks.hellaswag.utils import process_docs  # noqa\n")

    def kw(**splits):
        return {"data_files": splits, "cache_dir": cache}

    tasks = {
        "hq_hellaswag": {
            "dataset_path": "json", "dataset_kwargs": kw(train=files["hs_train"], validation=files["hs_val"]),
            "output_type": "multiple_choice", "training_split": "train",
            "validation_split": "validation", "test_split": None,
            "process_docs": "!function utils.process_docs", "doc_to_text": "{{query}}",
            "doc_to_target": "{{label}}", "doc_to_choice": "choices",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]},
        "hq_arc": {
            "dataset_path": "json", "dataset_kwargs": kw(train=files["arc_train"], test=files["arc_test"]),
            "output_type": "multiple_choice", "training_split": "train", "test_split": "test",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_target": "{{choices.label.index(answerKey)}}",
            "doc_to_choice": "{{choices.text}}",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]},
        "hq_mmlu_abstract_algebra": {
            "dataset_path": "json", "dataset_kwargs": kw(dev=files["mmlu_dev"], test=files["mmlu_test"]),
            "output_type": "multiple_choice", "test_split": "test", "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "description": "The following are multiple choice questions (with answers) about abstract algebra.\n\n",
            "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer",
            "metric_list": [{"metric": "acc"}]},
        "hq_mmluc_abstract_algebra": {
            "dataset_path": "json", "dataset_kwargs": kw(dev=files["mmlu_dev"], test=files["mmlu_test"]),
            "output_type": "multiple_choice", "test_split": "test", "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "description": "The following are questions (with answers) about abstract algebra.\n\n",
            "doc_to_text": "Question: {{question.strip()}}\nAnswer:",
            "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]},
    }
    for name, cfg in list(tasks.items()):
        tasks[name + "_2shot"] = dict(cfg, num_fewshot=2)
    for name, cfg in tasks.items():
        lines = [f"task: {name}"]
        for k, v in cfg.items():
            text = json.dumps(v)
            if isinstance(v, str) and v.startswith("!function"):
                text = v
            lines.append(f"{k}: {text}")
        (yamls / f"{name}.yaml").write_text("\n".join(lines) + "\n")

    cfg = hq.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model_dir = d / "model"
    hq.LlamaModel.from_config(cfg, seed=1).save(str(model_dir))
    ours = {"hq_hellaswag": f"hellaswag:{files['hs_val']};fewshot={files['hs_train']}",
            "hq_arc": f"arc:{files['arc_test']};fewshot={files['arc_train']}",
            "hq_mmlu_abstract_algebra": f"mmlu:{d / 'mmlu'}",
            "hq_mmluc_abstract_algebra": f"mmlu_continuation:{d / 'mmlu'}"}
    return types.SimpleNamespace(yamls=str(yamls), model_dir=str(model_dir), ours=ours)


@pytest.fixture(scope="module")
def harness_run(setup):
    """One simple_evaluate over every fixture task, zero-shot and 2-shot (set per task in
    the YAMLs, so the harness is started once)."""
    from lm_eval.tasks import TaskManager
    HiF8QatLM = register()
    lm = HiF8QatLM(pretrained=setup.model_dir, precision="fp32", batch_size=8)
    names = list(setup.ours) + [t + "_2shot" for t in setup.ours]
    with pytest.MonkeyPatch.context() as mp:
        # metadata only: collecting it shells out to pip and imports torch (seconds)
        import lm_eval.evaluator as harness_evaluator
        mp.setattr(harness_evaluator, "add_env_info", lambda results: None)
        out = lm_eval.simple_evaluate(model=lm, tasks=names,
                                      task_manager=TaskManager(include_path=setup.yamls,
                                                               include_defaults=False),
                                      log_samples=True, bootstrap_iters=0,
                                      random_seed=None, numpy_random_seed=None,
                                      torch_random_seed=None, fewshot_random_seed=1234)
    return lm, out


@pytest.mark.parametrize("num_fewshot", [0, 2])
def test_simple_evaluate_matches_hq_evaluate(setup, harness_run, num_fewshot):
    lm, out = harness_run
    res = evaluate(lm.model, lm.tokenizer, setup.ours, num_fewshot=num_fewshot, batch_size=8)
    for task in setup.ours:
        name = task if num_fewshot == 0 else task + "_2shot"
        theirs = out["results"][name]
        mine = res[task]
        assert theirs["acc,none"] == mine["acc"], name
        if "acc_norm,none" in theirs:
            assert theirs["acc_norm,none"] == mine["acc_norm"], name
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        assert len(samples) == mine["n"]
        for s, rec in zip(samples, res.items[task]):
            # the same prompts, and the same log-likelihoods to the last bit
            lls = [float(r[0][0]) for r in s["resps"]]
            assert lls == list(rec.lls), (name, s["doc_id"])
    # the fixtures are not degenerate: scores vary between items
    assert any(0 < res[t]["acc"] < 1 for t in setup.ours)


def test_registered_by_name_and_constructed_from_a_directory(setup):
    from lm_eval.api.registry import get_model
    cls = register()
    assert get_model("hif8qat") is cls
    lm = cls.create_from_arg_string(f"pretrained={setup.model_dir},precision=fp32,batch_size=4")
    assert lm.batch_size == 4 and lm.model.precision == "fp32"
    assert isinstance(lm.tokenizer, ByteTokenizer) and lm.max_length == 512
    with pytest.raises(ValueError, match="pretrained"):
        cls()


class NextByteModel:
    """Predicts byte (t + 1) % 256 after byte t with logit 4 (all others 0)."""

    def __init__(self, max_len=16):
        self.config = types.SimpleNamespace(max_position_embeddings=max_len, vocab_size=258)
        self.precision = "fp32"

    def forward(self, tokens, targets=None):
        logits = np.zeros(tokens.shape + (258,), np.float32)
        nxt = (tokens % 256 + 1) % 256
        np.put_along_axis(logits, nxt[..., None], 4.0, axis=-1)
        return logits, None


def req(*args):
    return types.SimpleNamespace(args=args)


def test_rolling_windows_match_lm_eval_windows():
    from lm_eval import utils
    rng = np.random.default_rng(0)
    for n, L in [(1, 4), (4, 4), (5, 4), (10, 4), (23, 7), (7, 1)]:
        toks = [int(t) for t in rng.integers(0, 100, n)]
        theirs = [utils.make_disjoint_window(w) for w in
                  utils.get_rolling_token_windows(token_list=toks, prefix_token=999,
                                                  max_seq_len=L, context_len=1)]
        ours = rolling_windows(toks, 999, L)
        # what the model sees and what is scored must agree (the split may differ)
        view = lambda ws: [((c + t)[-(L + 1):][:-1], t) for c, t in ws]  # noqa: E731
        assert view(ours) == view(theirs)


def test_loglikelihood_rolling_by_hand():
    lm = register()(model=NextByteModel(max_len=4), tokenizer=ByteTokenizer(eos_token_id=257),
                    batch_size=2)
    p_hit = 4 - math.log(math.exp(4) + 257)      # log-prob of the predicted byte
    p_miss = -math.log(math.exp(4) + 257)
    # "abcdef" after EOS(257): a is a miss (257 -> byte 2), b..f are hits
    (ll,) = lm.loglikelihood_rolling([req("abcdef")])
    assert ll == pytest.approx(p_miss + 5 * p_hit, abs=1e-9)
    ll_pair = lm.loglikelihood([req("ab", "cd"), req("", "ab")])
    assert ll_pair[0][0] == pytest.approx(2 * p_hit) and ll_pair[0][1] is True
    assert ll_pair[1][0] == pytest.approx(p_miss + p_hit) and ll_pair[1][1] is False


def test_generate_until_is_greedy_and_stops():
    lm = register()(model=NextByteModel(max_len=16), tokenizer=ByteTokenizer(), batch_size=2)
    out = lm.generate_until([req("abc", {"until": ["g"], "max_gen_toks": 10}),
                             req("x", {"until": ["\n\n"], "max_gen_toks": 3})])
    assert out == ["def", "yz{"]
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([req("a", {"do_sample": True})])


def test_constructed_from_an_exported_hif8_directory(setup, tmp_path):
    model = hq.load_model(setup.model_dir)
    hq.calibrate(model, [np.arange(64).reshape(2, 32) % 256])
    hq.export_hif8(model, tmp_path / "q")
    lm = register()(pretrained=str(tmp_path / "q"), batch_size=4)
    assert lm.model.precision == "hif8"
    (ll, greedy), = lm.loglikelihood([req("Question: a?\nAnswer:", " yes")])
    assert math.isfinite(ll) and ll < 0
