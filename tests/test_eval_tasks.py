"""Task loaders, prompts and few-shot selection (eval-conventions.md), on fixture files
the tests write in every published layout."""
import json
import os
import random

import pytest

from hif8qat.eval import tasks as T
from hif8qat.eval.tasks import load_task, register_task


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def hs_record(i, label=0, **over):
    rec = {"ind": i, "activity_label": f"Activity {i}", "ctx_a": f"Someone does thing {i}.",
           "ctx_b": "then THEY", "endings": [f"end a{i}.", f"end b{i}.", f"end c{i}.", f"end d{i}."],
           "source_id": f"s{i}", "split": "val", "split_type": "indomain", "label": label}
    rec.update(over)
    return rec


def arc_flat(i, n_choices=4, numeric=False, key_index=1):
    labels = [str(k + 1) for k in range(n_choices)] if numeric else list("ABCDE"[:n_choices])
    return {"id": f"q{i}", "question": f"What is {i}?",
            "choices": {"text": [f"answer {i}.{k}" for k in range(n_choices)], "label": labels},
            "answerKey": labels[key_index]}


def arc_nested(i, n_choices=4, numeric=False, key_index=1):
    flat = arc_flat(i, n_choices, numeric, key_index)
    return {"id": flat["id"], "question": {"stem": flat["question"], "choices": [
        {"text": t, "label": lab} for t, lab in zip(flat["choices"]["text"], flat["choices"]["label"])]},
        "answerKey": flat["answerKey"]}


def write_mmlu_csv(root, subject, split, rows):
    d = os.path.join(root, split)
    os.makedirs(d, exist_ok=True)
    import csv
    with open(os.path.join(d, f"{subject}_{split}.csv"), "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


# ----------------------------------------------------------------------------- HellaSwag

def test_hellaswag_preprocessing_matches_the_harness_rules(tmp_path):
    rec = hs_record(0, label=2, activity_label="Home and Garden",
                    ctx_a="[header] How to rake leaves. [title] Pick a rake.",
                    ctx_b="you SHOULD choose a wide rake.",
                    endings=["[step] Rake the   leaves. ", "Rake [title] now", "x", "y"])
    task = load_task("hellaswag:" + write_jsonl(tmp_path / "hellaswag_val.jsonl", [rec]))
    item = task.items[0]
    # Worked by hand: capitalize() lowercases the rest of ctx_b; " [title]" -> ". ";
    # [..] spans removed; one pass of "  " -> " " (so three spaces become two).
    assert item.query == ("Home and Garden: How to rake leaves.. Pick a rake. "
                          "You should choose a wide rake.")
    assert item.choices == (" Rake the  leaves.", "Rake. now", "x", "y")
    assert item.gold == 2


def test_hellaswag_int_and_string_labels_load_the_same_items(tmp_path):
    recs = [hs_record(i, label=i % 4) for i in range(5)]
    a = load_task("hellaswag:" + write_jsonl(tmp_path / "hellaswag_val.jsonl", recs))
    b = load_task("hellaswag:" + write_jsonl(tmp_path / "hf.jsonl",
                                             [dict(r, label=str(r["label"])) for r in recs]))
    with open(tmp_path / "hf_array.json", "w") as f:
        json.dump([dict(r, label=str(r["label"])) for r in recs], f)
    c = load_task("hellaswag:" + str(tmp_path / "hf_array.json"))
    for t in (b, c):
        assert [(i.query, i.choices, i.gold) for i in t.items] == \
            [(i.query, i.choices, i.gold) for i in a.items]


def test_hellaswag_parquet_layout(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    recs = [dict(hs_record(i, label=i % 4), label=str(i % 4)) for i in range(3)]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "validation-00000-of-00001.parquet")
    task = load_task(f"hellaswag:{tmp_path}")  # a directory: finds the validation file
    assert [i.gold for i in task.items] == [0, 1, 2]
    assert task.items[1].source.endswith("validation-00000-of-00001.parquet:row 1")


def test_unlabeled_hellaswag_test_split_is_a_clear_error(tmp_path):
    recs = [hs_record(0), {k: v for k, v in hs_record(1).items() if k != "label"}]
    path = write_jsonl(tmp_path / "hellaswag_test.jsonl", recs)
    with pytest.raises(ValueError, match=r"hellaswag_test.jsonl:2: .*no label.*unlabeled"):
        load_task("hellaswag:" + path)
    path = write_jsonl(tmp_path / "hf_test.jsonl", [hs_record(0, label="")])
    with pytest.raises(ValueError, match=r"hf_test.jsonl:1: .*unlabeled"):
        load_task("hellaswag:" + path)


def test_malformed_rows_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(hs_record(0)) + "\n\n" + "{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not valid JSON"):
        load_task(f"hellaswag:{path}")
    path.write_text(json.dumps(hs_record(0)) + "\n" + json.dumps(hs_record(1, endings="abc")) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'endings' must be"):
        load_task(f"hellaswag:{path}")
    path.write_text(json.dumps({k: v for k, v in hs_record(0).items() if k != "ctx_b"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field 'ctx_b'"):
        load_task(f"hellaswag:{path}")
    path.write_text(json.dumps(hs_record(0, label=7)) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: label 7 out of range"):
        load_task(f"hellaswag:{path}")
    with pytest.raises(FileNotFoundError):
        load_task(f"hellaswag:{tmp_path}/missing.jsonl")


# ----------------------------------------------------------------------------- ARC

@pytest.mark.parametrize("n_choices", [3, 5])
@pytest.mark.parametrize("numeric", [False, True])
def test_arc_nested_and_flat_layouts_agree(tmp_path, n_choices, numeric):
    flat = [arc_flat(i, n_choices, numeric, key_index=i % n_choices) for i in range(4)]
    nested = [arc_nested(i, n_choices, numeric, key_index=i % n_choices) for i in range(4)]
    a = load_task("arc:" + write_jsonl(tmp_path / "flat.jsonl", flat))
    b = load_task("arc:" + write_jsonl(tmp_path / "ARC-Challenge-Test.jsonl", nested))
    assert [(i.query, i.choices, i.gold) for i in a.items] == \
        [(i.query, i.choices, i.gold) for i in b.items]
    assert a.items[2].query == "Question: What is 2?\nAnswer:"
    assert a.items[2].choices == tuple(f"answer 2.{k}" for k in range(n_choices))
    assert [i.gold for i in a.items] == [k % n_choices for k in range(4)]


def test_arc_bad_answer_key_names_file_and_line(tmp_path):
    recs = [arc_flat(0), dict(arc_flat(1), answerKey="Z")]
    with pytest.raises(ValueError, match=r"x.jsonl:2: answerKey 'Z' is not one of"):
        load_task("arc:" + write_jsonl(tmp_path / "x.jsonl", recs))
    recs = [dict(arc_flat(0), answerKey="")]
    with pytest.raises(ValueError, match=r"y.jsonl:1: .*no answerKey"):
        load_task("arc:" + write_jsonl(tmp_path / "y.jsonl", recs))


def test_arc_finds_its_training_split_for_fewshot(tmp_path):
    write_jsonl(tmp_path / "ARC-Challenge-Train.jsonl", [arc_nested(100 + i) for i in range(6)])
    test = write_jsonl(tmp_path / "ARC-Challenge-Test.jsonl", [arc_nested(i) for i in range(3)])
    task = load_task("arc:" + test)
    assert len(task.fewshot_pool) == 6 and not task.fewshot_excludes_item
    own = load_task("arc:" + test + ";fewshot=" + test)
    assert own.fewshot_excludes_item


# ----------------------------------------------------------------------------- MMLU

def mmlu_tree(root):
    write_mmlu_csv(root, "abstract_algebra", "dev", [
        [f"Dev q{i}?", "a", "b", "c", "d", "ABCD"[i % 4]] for i in range(5)])
    write_mmlu_csv(root, "abstract_algebra", "test", [
        ["  What is\n1+1?  ", "1", "2", "3", "4", "B"],
        ["Second?", "w", "x", "y", "z", "D"]])
    write_mmlu_csv(root, "world_history", "dev", [["H dev?", "p", "q", "r", "s", "A"]])
    write_mmlu_csv(root, "world_history", "test", [["H test?", "p", "q", "r", "s", "C"]])
    return root


def test_mmlu_csv_prompts_and_first_n_fewshot(tmp_path):
    task = load_task(f"mmlu:{mmlu_tree(str(tmp_path))}")
    assert [s.name for s in task.subtasks] == ["mmlu_abstract_algebra", "mmlu_world_history"]
    assert task.metrics == ("acc",)
    item = task.items[0]
    assert item.query == "What is\n1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"
    assert item.choices == ("A", "B", "C", "D") and item.gold == 1
    ctx = task.subtasks[0].contexts(num_fewshot=2)[1]
    assert ctx == ("The following are multiple choice questions (with answers) about "
                   "abstract algebra.\n\n"
                   "Dev q0?\nA. a\nB. b\nC. c\nD. d\nAnswer: A\n\n"
                   "Dev q1?\nA. a\nB. b\nC. c\nD. d\nAnswer: B\n\n"
                   "Second?\nA. w\nB. x\nC. y\nD. z\nAnswer:")
    with pytest.raises(ValueError, match="2-shot needs 2"):
        task.subtasks[1].contexts(num_fewshot=2)


def test_mmlu_continuation_prompts(tmp_path):
    task = load_task(f"mmlu_continuation:{mmlu_tree(str(tmp_path))}")
    assert task.metrics == ("acc", "acc_norm")
    sub = task.subtasks[1]
    assert sub.items[0].choices == ("p", "q", "r", "s") and sub.items[0].gold == 2
    assert sub.contexts(num_fewshot=1) == [
        "The following are questions (with answers) about world history.\n\n"
        "Question: H dev?\nAnswer: p\n\nQuestion: H test?\nAnswer:"]


def test_mmlu_csv_errors_name_file_and_line(tmp_path):
    root = str(tmp_path)
    write_mmlu_csv(root, "x", "test", [["q1", "a", "b", "c", "d", "A"],
                                       ["multi\nline", "a", "b", "c", "d", "A"],
                                       ["q3", "a", "b", "c", "d"]])
    with pytest.raises(ValueError, match=r"x_test.csv:4: MMLU CSV row needs 6 columns"):
        load_task(f"mmlu:{root}")
    write_mmlu_csv(root, "x", "test", [["q1", "a", "b", "c", "d", "A"], ["q2", "a", "b", "c", "d", "F"]])
    with pytest.raises(ValueError, match=r"x_test.csv:2: answer must be"):
        load_task(f"mmlu:{root}")


def test_mmlu_hf_parquet_layout_matches_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    csv_task = load_task(f"mmlu:{mmlu_tree(str(tmp_path / 'csv'))}")
    hf = tmp_path / "hf" / "all"
    hf.mkdir(parents=True)
    rows = {"test": [], "dev": []}
    for split in rows:
        for sub in csv_task.subtasks:
            subject = sub.name[len("mmlu_"):]
            src = sub.items if split == "test" else sub.fewshot_pool
            for it in src:
                rows[split].append({"question": it.doc["question"], "subject": subject,
                                    "choices": list(it.doc["choices"]),
                                    "answer": "ABCD".index(it.doc["answer"])})
        pq.write_table(pa.Table.from_pylist(rows[split]), hf / f"{split}-00000-of-00001.parquet")
    hf_task = load_task(f"mmlu:{tmp_path / 'hf'}")
    assert hf_task.contexts(num_fewshot=1) == csv_task.contexts(num_fewshot=1)
    assert [i.gold for i in hf_task.items] == [i.gold for i in csv_task.items]


# ----------------------------------------------------------------------------- few-shot

def independent_harness_sampler(pool_docs, eval_docs, k, exclude):
    """The harness's draw, written out from its description: one Random(1234) for the task,
    per item sample(pool, k+1 if exclude else k), drop the item itself, keep k."""
    rnd = random.Random(1234)
    out = []
    for doc in eval_docs:
        if exclude:
            picked = [d for d in rnd.sample(pool_docs, k + 1) if d != doc][:k]
        else:
            picked = rnd.sample(pool_docs, k)
        out.append(picked)
    return out


@pytest.mark.parametrize("same_file", [True, False])
def test_random_fewshot_follows_the_seeded_harness_draw(tmp_path, same_file):
    test = write_jsonl(tmp_path / "test.jsonl", [arc_flat(i) for i in range(12)])
    train = write_jsonl(tmp_path / "train.jsonl", [arc_flat(100 + i) for i in range(9)])
    task = load_task(f"arc:{test};fewshot={test if same_file else train}")
    shots = task.fewshot_examples(3, task.items)
    pool_docs = [it.doc for it in task.fewshot_pool]
    expected = independent_harness_sampler(pool_docs, [it.doc for it in task.items], 3, same_file)
    assert [[s.doc for s in sh] for sh in shots] == expected
    if same_file:
        assert all(it.doc not in [s.doc for s in sh] for it, sh in zip(task.items, shots))


def test_random_fewshot_matches_lm_eval_sampler(tmp_path):
    samplers = pytest.importorskip("lm_eval.api.samplers")
    path = write_jsonl(tmp_path / "hellaswag_val.jsonl", [hs_record(i, label=i % 4) for i in range(10)])
    task = load_task(f"hellaswag:{path}")
    sampler = samplers.ContextSampler([it.doc for it in task.items], rnd=1234)
    theirs = [sampler.sample(n=4, eval_doc=it.doc) for it in task.items]
    ours = task.fewshot_examples(4, task.items)
    assert [[s.doc for s in sh] for sh in ours] == [list(t) for t in theirs]


def test_fewshot_context_is_shots_joined_by_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "hellaswag_val.jsonl", [hs_record(i, label=i % 4) for i in range(6)])
    task = load_task(f"hellaswag:{path}")
    shots = task.fewshot_examples(2, task.items)
    ctxs = task.contexts(num_fewshot=2)
    for item, sh, ctx in zip(task.items, shots, ctxs):
        assert ctx == (sh[0].query + " " + sh[0].choices[sh[0].gold] + "\n\n"
                       + sh[1].query + " " + sh[1].choices[sh[1].gold] + "\n\n" + item.query)
    assert task.contexts(num_fewshot=0) == [it.query for it in task.items]
    # limit scores the first items, and their shots are the first draws of the generator
    assert task.contexts(num_fewshot=2, limit=3) == ctxs[:3]


# ----------------------------------------------------------------------------- specs, registry

def test_registered_names_resolve_lazily(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return write_jsonl(tmp_path / "t.jsonl", [arc_flat(i) for i in range(3)])

    register_task("unit_test_reasoning", "arc", make)
    assert "unit_test_reasoning" in T.registered_tasks() and not calls
    task = load_task("unit_test_reasoning")
    assert task.name == "unit_test_reasoning" and len(task.items) == 3 and calls == [1]


def test_bad_specs_say_what_to_do():
    with pytest.raises(ValueError, match="unknown task format 'squad'"):
        load_task("squad:/x")
    with pytest.raises(ValueError, match="FORMAT:PATH"):
        load_task("no_such_task_name")
    with pytest.raises(ValueError, match="unknown task format"):
        register_task("x", "bogus", "/p")
    with pytest.raises(TypeError):
        load_task(3)
    with pytest.raises(ValueError, match="limit"):
        T._limit_count(-1, 10)
