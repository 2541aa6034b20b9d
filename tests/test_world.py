"""The embedded benchmark world: determinism, file layouts the evaluator's loaders
read, knowledge items that ask facts the corpus states, commonsense and reasoning
items that are new instances (never corpus text), gold answers that are right (an
independent solver in this file) and balanced over positions."""
import collections
import csv
import glob
import hashlib
import json
import os
import re

import pytest

from hif8qat.world import generate, main_world
from hif8qat.world.generate import _SCRIPTS, SIZES

LETTERS = "ABCDE"


# ---------------------------------------------------------------------------------
# fixtures: one tiny world (seed 0) and one full world, written once per module
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("world_tiny")
    generate(0, str(root), size="tiny")
    return str(root)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("world_full")
    generate(0, str(root), size="full")
    return str(root)


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _jsonl(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _csv_rows(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def _knowledge_rows(root, split):
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "world_knowledge", split, f"*_{split}.csv"))):
        out[os.path.basename(path)[: -len(f"_{split}.csv")]] = _csv_rows(path)
    return out


def _tree_digest(root):
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


# ---------------------------------------------------------------------------------
# determinism and the manifest
# ---------------------------------------------------------------------------------
def test_same_seed_writes_the_same_bytes(tiny, tmp_path):
    generate(0, str(tmp_path / "again"), size="tiny")
    assert _tree_digest(str(tmp_path / "again")) == _tree_digest(tiny)


def test_different_seed_writes_a_different_world(tiny, tmp_path):
    generate(1, str(tmp_path / "other"), size="tiny")
    a, b = (json.loads(_read(os.path.join(r, "manifest.json")))["files"]
            for r in (tiny, str(tmp_path / "other")))
    for rel in ("pretrain.txt", "world_knowledge/test/geography_test.csv",
                "world_commonsense/hellaswag_val.jsonl",
                "world_reasoning/World-Reasoning-Test.jsonl"):
        assert a[rel]["sha256"] != b[rel]["sha256"], rel


def test_manifest_hashes_and_counts_match_the_files(tiny):
    m = json.loads(_read(os.path.join(tiny, "manifest.json")))
    listed = set(m["files"])
    on_disk = {os.path.relpath(p, tiny) for p in glob.glob(os.path.join(tiny, "**", "*"),
                                                           recursive=True)
               if os.path.isfile(p)} - {"manifest.json"}
    assert listed == on_disk
    for rel, info in m["files"].items():
        with open(os.path.join(tiny, rel), "rb") as fh:
            data = fh.read()
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
        assert len(data) == info["bytes"]
    k = _knowledge_rows(tiny, "test")
    assert m["counts"]["world_knowledge"]["test"] == sum(len(v) for v in k.values())
    assert m["counts"]["world_commonsense"]["val"] == len(
        _jsonl(os.path.join(tiny, "world_commonsense", "hellaswag_val.jsonl")))
    assert m["counts"]["world_reasoning"]["test"] == len(
        _jsonl(os.path.join(tiny, "world_reasoning", "World-Reasoning-Test.jsonl")))


def test_item_counts_full_meets_2000_and_tiny_is_about_200(tiny, full):
    for root, lo, hi in ((full, 2000, 10**9), (tiny, 150, 300)):
        m = json.loads(_read(os.path.join(root, "manifest.json")))["counts"]
        assert lo <= m["world_knowledge"]["test"] <= hi
        assert lo <= m["world_commonsense"]["val"] <= hi
        assert lo <= m["world_reasoning"]["test"] <= hi
        for subject, rows in _knowledge_rows(root, "dev").items():
            assert len(rows) == 5, subject      # MMLU's dev split: 5 shots per subject
    assert os.path.getsize(os.path.join(tiny, "pretrain.txt")) < \
        os.path.getsize(os.path.join(full, "pretrain.txt")) / 2


# ---------------------------------------------------------------------------------
# the evaluator's loaders read every benchmark, few-shot pools included
# ---------------------------------------------------------------------------------
def test_benchmarks_load_with_the_evaluator_loaders(tiny):
    tasks = pytest.importorskip("hif8qat.eval.tasks")
    know = tasks.load_task("mmlu_continuation:" + os.path.join(tiny, "world_knowledge"))
    rows = _knowledge_rows(tiny, "test")
    assert [s.name for s in know.subtasks] == [f"mmlu_continuation_{s}" for s in sorted(rows)]
    assert len(know.items) == sum(len(r) for r in rows.values())
    for sub in know.subtasks:
        assert len(sub.fewshot_pool) == 5
        assert sub.description.startswith("The following are questions (with answers) about ")
    first = know.subtasks[0].items[0]
    row = rows[sorted(rows)[0]][0]
    assert first.query == f"Question: {row[0]}\nAnswer:"
    assert first.choices[first.gold] == row[1 + LETTERS.index(row[5])]

    cs = tasks.load_task("hellaswag:" + os.path.join(tiny, "world_commonsense"))
    raw = _jsonl(os.path.join(tiny, "world_commonsense", "hellaswag_val.jsonl"))
    assert len(cs.items) == len(raw)
    assert len(cs.fewshot_pool) == len(
        _jsonl(os.path.join(tiny, "world_commonsense", "hellaswag_train.jsonl")))
    it = cs.items[0]
    assert it.query == f"{raw[0]['activity_label']}: {raw[0]['ctx_a']} " \
                       f"{raw[0]['ctx_b'].capitalize()}"
    assert it.choices[it.gold] == raw[0]["endings"][raw[0]["label"]]
    # capitalize() lower-cases all but the first letter: ctx_b must hold no name
    assert all(r["ctx_b"] == r["ctx_b"].lower() for r in raw)

    arc = tasks.load_task("arc:" + os.path.join(tiny, "world_reasoning"))
    raw = _jsonl(os.path.join(tiny, "world_reasoning", "World-Reasoning-Test.jsonl"))
    assert len(arc.items) == len(raw)
    assert len(arc.fewshot_pool) == len(
        _jsonl(os.path.join(tiny, "world_reasoning", "World-Reasoning-Train.jsonl")))
    for item, r in zip(arc.items, raw):
        assert item.choices[item.gold] == next(c["text"] for c in r["question"]["choices"]
                                               if c["label"] == r["answerKey"])
    # five-shot contexts can be built for every task
    for task in (know, cs, arc):
        assert len(task.contexts(num_fewshot=5, limit=3)) >= 3


def test_registered_task_names_generate_the_world_on_first_use(tmp_path, monkeypatch):
    tasks = pytest.importorskip("hif8qat.eval.tasks")
    import hif8qat.world.tasks as wt
    monkeypatch.setenv("HIF8QAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HIF8QAT_WORLD_SEED", raising=False)
    for name in ("world_knowledge", "world_commonsense", "world_reasoning"):
        assert name in tasks.registered_tasks() and name + "_tiny" in tasks.registered_tasks()
    assert not (tmp_path / "cache").exists()          # registering generated nothing
    task = tasks.load_task("world_reasoning_tiny")
    root = wt.world_dir(0, "tiny")
    assert root.startswith(str(tmp_path / "cache"))
    assert len(task.items) == SIZES["tiny"].reasoning_test
    stamp = os.path.getmtime(os.path.join(root, "pretrain.txt"))
    tasks.load_task("world_knowledge_tiny")           # cached: not written again
    assert os.path.getmtime(os.path.join(root, "pretrain.txt")) == stamp
    # a damaged cache is noticed and rewritten
    with open(os.path.join(root, "world_commonsense", "hellaswag_val.jsonl"), "a") as fh:
        fh.write("garbage\n")
    assert not wt.verify_world(root)
    task = tasks.load_task("world_commonsense_tiny")
    assert wt.verify_world(root) and len(task.items) == SIZES["tiny"].commonsense_test
    specs = wt.task_specs(0, "tiny")
    assert specs["world_knowledge"] == "mmlu_continuation:" + os.path.join(root, "world_knowledge")


# ---------------------------------------------------------------------------------
# knowledge: every item asks a fact the corpus states
# ---------------------------------------------------------------------------------
def test_knowledge_items_ask_facts_the_pretraining_corpus_states(tiny):
    corpus = _read(os.path.join(tiny, "pretrain.txt"))
    facts = {f["id"]: f for f in _jsonl(os.path.join(tiny, "meta", "knowledge_facts.jsonl"))}
    meta = _jsonl(os.path.join(tiny, "meta", "knowledge_items.jsonl"))
    for split in ("test", "dev"):
        rows = _knowledge_rows(tiny, split)
        for m in (m for m in meta if m["split"] == split):
            row = rows[m["subject"]][m["row"]]
            question, gold = row[0], row[1 + LETTERS.index(row[5])]
            fact = facts[m["fact_id"]]
            assert fact["split"] == split and fact["subject"] == m["subject"]
            assert fact["statement"] in corpus, fact["statement"]
            entity = fact["entity"]
            if m["form"] == "inverse":     # "Drask is the capital of which land?" -> land
                assert fact["value"] in question and entity in gold
            else:
                assert entity in question and gold == fact["value"]
                # the fact is stated in at least three wordings in the corpus
                sentences = [s for s in re.split(r"(?<=[.?])\s+", corpus)
                             if entity in s and fact["value"].lower() in s.lower()]
                assert len(set(sentences)) >= 3, (entity, fact["value"])
            assert len(set(row[1:5])) == 4      # four distinct choices
            if m["form"] == "forward":     # the drilled phrasing is in the corpus ...
                assert f"Question: {question}\nAnswer: {gold}" in corpus
            if m["form"] == "heldout":     # ... the held-out one never is
                assert question not in corpus


def test_knowledge_distractors_are_of_the_gold_answers_type(tiny):
    facts = _jsonl(os.path.join(tiny, "meta", "knowledge_facts.jsonl"))
    meta = _jsonl(os.path.join(tiny, "meta", "knowledge_items.jsonl"))
    rows = _knowledge_rows(tiny, "test")
    by_relation = collections.defaultdict(set)
    for f in facts:
        by_relation[f["relation"]].add(f["value"])
    fid = {f["id"]: f for f in facts}
    for m in (m for m in meta if m["split"] == "test"):
        row, fact = rows[m["subject"]][m["row"]], fid[m["fact_id"]]
        if m["form"] == "inverse":
            kind = {f["entity"] for f in facts if f["relation"] == fact["relation"]}
            assert all(any(e in c for e in kind) for c in row[1:5]), row
        elif fact["relation"] in ("capital", "river", "peak", "good", "leader", "craft"):
            assert set(row[1:5]) <= by_relation[fact["relation"]], row
        elif fact["relation"] == "hall":
            assert set(row[1:5]) <= by_relation["capital"], row


# ---------------------------------------------------------------------------------
# commonsense and reasoning: new instances, never corpus text
# ---------------------------------------------------------------------------------
def _names_in(text):
    return set(re.findall(r"\b[A-Z][a-z]+\b", text))


def test_commonsense_items_are_new_instances_of_taught_scripts(tiny):
    corpus = _read(os.path.join(tiny, "pretrain.txt"))
    corpus_words = set(re.findall(r"[A-Za-z]+", corpus))
    for split in ("val", "train"):
        for r in _jsonl(os.path.join(tiny, "world_commonsense", f"hellaswag_{split}.jsonl")):
            gold = r["endings"][r["label"]]
            query = f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}"
            assert f"{query} {gold}" not in corpus
            assert r["ctx_a"] not in corpus
            actor = r["ctx_a"].split(" is ")[0]
            assert actor not in corpus_words, actor        # a new actor
            # the pattern is taught: the previous step is followed by the gold step
            last = r["ctx_a"].rsplit(". ", 1)[-1]
            prev = last.split(" ", 1)[1] if last.startswith(("He ", "She ")) \
                else last.split(" he ", 1)[-1].split(" she ", 1)[-1]
            # (with any variant and pronoun: the slots of the script are wildcards)
            script = next(sc for sc in _SCRIPTS if sc.label == r["activity_label"])
            slots = set(script.variants) | {"his", "her"}

            def pattern(text):
                out = []
                for w in text.split(" "):
                    core = w.rstrip(".")
                    slot = core in slots or (core.endswith("s") and core[:-1] in slots)
                    out.append(r"\w+" + re.escape(w[len(core):]) if slot else re.escape(w))
                return " ".join(out)
            taught = re.search(pattern(prev) + r" (Then|Next|After that) (he|she) "
                               + pattern(gold), corpus)
            assert taught, (prev, gold)
            assert len(set(r["endings"])) == 4


def test_reasoning_items_are_new_instances_never_in_the_corpus(tiny):
    corpus = _read(os.path.join(tiny, "pretrain.txt"))
    corpus_words = set(re.findall(r"[A-Za-z]+", corpus))
    for split in ("Test", "Dev", "Train"):
        for r in _jsonl(os.path.join(tiny, "world_reasoning", f"World-Reasoning-{split}.jsonl")):
            stem = r["question"]["stem"]
            assert stem not in corpus
            people = _names_in(stem) - {"All", "Who", "What", "Where", "Which", "How", "When",
                                        "Is", "Then"}
            assert people and not (people & corpus_words), people
            texts = [c["text"] for c in r["question"]["choices"]]
            assert 3 <= len(texts) <= 5 and len(set(texts)) == len(texts)


def _gold(r):
    return next(c["text"] for c in r["question"]["choices"] if c["label"] == r["answerKey"])


def test_reasoning_answers_come_from_small_closed_sets_balanced_over_values(full):
    """Answers are words the corpus uses often (never a name copied from the question),
    and within a pattern every answer value is gold equally often: no answer prior
    beats chance."""
    rows = _jsonl(os.path.join(full, "world_reasoning", "World-Reasoning-Test.jsonl"))
    by_pattern = collections.defaultdict(collections.Counter)
    for r in rows:
        gold = _gold(r)
        assert not _names_in(gold), gold
        for c in r["question"]["choices"]:
            assert not _names_in(c["text"]), c
        by_pattern[r["id"].split("_")[2]][gold] += 1
    assert len(by_pattern) == 6
    for pattern, counts in by_pattern.items():
        assert 4 <= len(counts) <= 20, (pattern, counts)
        assert max(counts.values()) - min(counts.values()) <= 1, (pattern, counts)


_CLOCKWISE = ["north", "east", "south", "west"]
_SEASONS = ["spring", "summer", "autumn", "winter"]


def _rules(corpus):
    """The rules the corpus teaches as generics: {trade: goods}, {kind: color}."""
    trades = dict(re.findall(r"\bA (\w+) makes (\w+)\.", corpus))
    colors = dict(re.findall(r"\bAll (\w+)s are (\w+)\.", corpus))
    assert len(trades) >= 5 and len(colors) >= 5
    return trades, colors


def _solve(stem, rules):
    """An independent solver for the six reasoning patterns, given the corpus's rules."""
    trades, colors = rules
    m = re.match(r"What color is (\w+), who is a (\w+)\?$", stem)
    if m:
        return colors[m.group(2)]
    m = re.match(r"Which way does (\w+) face after turning (right|around|left) from (\w+)\?$",
                 stem)
    if m:
        step = {"right": 1, "around": 2, "left": -1}[m.group(2)]
        return _CLOCKWISE[(_CLOCKWISE.index(m.group(3)) + step) % 4]
    m = re.match(r"How many (\w+) does (\w+) have after (finding one more than|losing one of) "
                 r"(\d)\?$", stem)
    if m:
        return str(int(m.group(4)) + (1 if m.group(3).startswith("finding") else -1))
    m = re.match(r"What is (\w+), next to (\w+) who is (\w+)\?$", stem)
    if m:           # the other one is Xer: this one is the converse
        converse = {}
        for a, b in (("taller", "shorter"), ("older", "younger"), ("faster", "slower"),
                     ("heavier", "lighter"), ("stronger", "weaker")):
            converse[a], converse[b] = b, a
        return converse[m.group(3)]
    m = re.match(r"What does (\w+) make, who is a (\w+)\?$", stem)
    if m:
        return trades[m.group(2)]
    m = re.match(r"What is (\w+), who makes (\w+)\?$", stem)
    if m:
        (trade,) = [t for t, goods in trades.items() if goods == m.group(2)]
        return "a " + trade
    m = re.match(r"(\w+) harvests one season after sowing\. When does \1 harvest, after "
                 r"sowing in (\w+)\?$", stem)
    if m:
        return "in " + _SEASONS[(_SEASONS.index(m.group(2)) + 1) % 4]
    raise AssertionError(f"no solver pattern matches {stem!r}")


def test_reasoning_gold_answers_are_correct_by_an_independent_solver(tiny, full):
    for root in (tiny, full):
        rules = _rules(_read(os.path.join(root, "pretrain.txt")))
        for split in ("Test", "Dev", "Train"):
            for r in _jsonl(os.path.join(root, "world_reasoning",
                                         f"World-Reasoning-{split}.jsonl")):
                assert _solve(r["question"]["stem"], rules) == _gold(r), r


def test_reasoning_corpus_examples_are_correct_too(tiny):
    corpus = _read(os.path.join(tiny, "pretrain.txt"))
    rules = _rules(corpus)
    qa = re.findall(r"Question: (.+)\nAnswer: (.+)", corpus)
    worked = [(q, a) for q, a in qa if re.search(
        r"What color is \w+, who|Which way |How many |, next to |What does \w+ make, who|"
        r", who makes |harvests ", q)]
    assert len(worked) >= 0.6 * 6 * SIZES["tiny"].reasoning_examples
    for q, a in worked:
        assert _solve(q, rules) == a, (q, a)
    # the same inferences told as statements: "... So <conclusion>."
    told = re.findall(r"((?:[^\n.?]+\. ){1,2})So ([^\n]+)\.", corpus)
    assert len(told) >= 0.2 * 6 * SIZES["tiny"].reasoning_examples


# ---------------------------------------------------------------------------------
# gold positions
# ---------------------------------------------------------------------------------
def _assert_balanced(positions, n_choices, what):
    counts = collections.Counter(positions)
    assert set(counts) <= set(range(n_choices))
    full_counts = [counts.get(i, 0) for i in range(n_choices)]
    assert max(full_counts) - min(full_counts) <= 1, (what, full_counts)


@pytest.mark.parametrize("world", ["tiny", "full"])
def test_gold_answer_is_balanced_over_positions(world, request):
    root = request.getfixturevalue(world)
    for subject, rows in _knowledge_rows(root, "test").items():
        _assert_balanced([LETTERS.index(r[5]) for r in rows], 4, subject)
    for split in ("val", "train"):
        rows = _jsonl(os.path.join(root, "world_commonsense", f"hellaswag_{split}.jsonl"))
        _assert_balanced([r["label"] for r in rows], 4, split)
    for split in ("Test", "Dev", "Train"):
        by_n = collections.defaultdict(list)
        for r in _jsonl(os.path.join(root, "world_reasoning", f"World-Reasoning-{split}.jsonl")):
            labels = [c["label"] for c in r["question"]["choices"]]
            by_n[len(labels)].append(labels.index(r["answerKey"]))
        assert set(by_n) == {3, 4, 5}
        for n, pos in by_n.items():
            _assert_balanced(pos, n, (split, n))


def test_reasoning_uses_both_label_styles(full):
    rows = _jsonl(os.path.join(full, "world_reasoning", "World-Reasoning-Test.jsonl"))
    first = collections.Counter(r["question"]["choices"][0]["label"] for r in rows)
    assert first["A"] > first["1"] > 0


# ---------------------------------------------------------------------------------
# the fine-tuning corpus is another domain
# ---------------------------------------------------------------------------------
def test_finetune_corpus_is_a_different_domain(tiny):
    pre = _read(os.path.join(tiny, "pretrain.txt"))
    ft = _read(os.path.join(tiny, "finetune.txt"))
    assert "Question:" not in ft and "Answer:" not in ft
    grams = lambda text, n=12: {text[i:i + n] for i in range(0, len(text) - n)}
    shared = grams(ft) & grams(pre)
    assert len(shared) / len(grams(ft)) < 0.02
    # different surface statistics: the fine-tuning text is lower-case and numeric
    upper = lambda t: sum(c.isupper() for c in t) / len(t)
    digits = lambda t: sum(c.isdigit() for c in t) / len(t)
    assert upper(ft) < upper(pre) / 5 and digits(ft) > 5 * digits(pre)


# ---------------------------------------------------------------------------------
# arguments and the command line
# ---------------------------------------------------------------------------------
def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="seed must be >= 0"):
        generate(-1, str(tmp_path / "w"))
    with pytest.raises(TypeError, match="seed must be an integer"):
        generate("0", str(tmp_path / "w"))
    with pytest.raises(TypeError, match="seed must be an integer"):
        generate(True, str(tmp_path / "w"))
    with pytest.raises(ValueError, match="size must be one of"):
        generate(0, str(tmp_path / "w"), size="huge")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        generate(0, str(tmp_path / "file"), size="tiny")


def test_main_world_writes_a_world_and_rejects_bad_arguments(tmp_path, capsys):
    out = tmp_path / "cli_world"
    assert main_world(["--seed", "3", "--out", str(out), "--size", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "world_reasoning" in printed and "arc:" in printed
    m = json.loads((out / "manifest.json").read_text())
    assert m["seed"] == 3 and m["size"] == "tiny"
    assert main_world(["--size", "huge"]) == 2
    assert main_world(["--seed", "-4", "--out", str(out)]) == 2
    (tmp_path / "f").write_text("x")
    assert main_world(["--out", str(tmp_path / "f"), "--size", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "error" in err


@pytest.mark.parametrize("recipe", ["pretrain", "pretrain_tiny"])
def test_shipped_recipes_load_as_train_configs_on_the_worlds_corpus(recipe, tmp_path,
                                                                    monkeypatch):
    pytest.importorskip("hif8qat.train.config")
    import hif8qat.world as world
    monkeypatch.setenv("HIF8QAT_CACHE", str(tmp_path / "cache"))
    cfg = world.pretrain_config(0, "tiny", recipe=recipe)
    assert os.path.isfile(cfg.data) and cfg.data.endswith("pretrain.txt")
    assert cfg.data.startswith(str(tmp_path / "cache"))
    assert cfg.model_config["vocab_size"] == 256        # byte-level
    assert cfg.seq_len <= cfg.model_config["max_position_embeddings"]
    assert world.finetune_data(0, "tiny").endswith("finetune.txt")
    with pytest.raises(FileNotFoundError, match="no world recipe"):
        world.pretrain_config(0, "tiny", recipe="nope")


# ---------------------------------------------------------------------------------
# the world is learnable: a quick pretraining beats chance on world_knowledge
# ---------------------------------------------------------------------------------
def test_quick_pretraining_of_a_tiny_model_beats_chance_on_world_knowledge(tmp_path,
                                                                           monkeypatch):
    train = pytest.importorskip("hif8qat.train")
    ev = pytest.importorskip("hif8qat.eval")
    if not (hasattr(train, "Trainer") and hasattr(ev, "evaluate")):
        pytest.skip("the trainer / evaluator API is not there yet")
    import hif8qat.world as world
    monkeypatch.setenv("HIF8QAT_CACHE", str(tmp_path / "cache"))
    cfg = world.pretrain_config(0, "tiny", recipe="pretrain_tiny",
                                overrides={"run_dir": str(tmp_path / "run"), "progress": False})
    trainer = train.Trainer(cfg)
    trainer.run()
    res = ev.evaluate(trainer.model, ev.ByteTokenizer(), ["world_knowledge_tiny"],
                      batch_size=64)
    metrics = res["world_knowledge_tiny"]
    n, acc = metrics["n"], metrics["acc"]
    assert n == sum(SIZES["tiny"].knowledge_test)
    # Items about one fact are correlated, so the standard error is the cluster-robust
    # one over facts (never below the binomial one at chance): acc must exceed chance
    # (1/4) by more than 3 of them.
    root = world.world_dir(0, "tiny")
    fact_of = {(m["subject"], m["row"]): m["fact_id"]
               for m in _jsonl(os.path.join(root, "meta", "knowledge_items.jsonl"))
               if m["split"] == "test"}
    per_fact = collections.defaultdict(list)
    for rec in res.items["world_knowledge_tiny"]:
        path, line = rec.source.rsplit(":", 1)
        subject = os.path.basename(path)[: -len("_test.csv")]
        per_fact[fact_of[(subject, int(line) - 1)]].append(float(rec.correct))
    assert sum(len(v) for v in per_fact.values()) == n
    k = len(per_fact)
    se_cluster = (k / (k - 1) * sum((sum(v) - acc * len(v)) ** 2
                                    for v in per_fact.values())) ** 0.5 / n
    se = max(se_cluster, (0.25 * 0.75 / n) ** 0.5)
    assert acc > 0.25 + 3 * se, (metrics, se_cluster, k)
