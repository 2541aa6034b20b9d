"""Multiple-choice tasks as lm-evaluation-harness builds them: file loaders, prompts,
few-shot selection and assembly (``shared/docs/eval-conventions.md``, to the letter).

A task spec is ``"FORMAT:PATH"`` (optionally ``"FORMAT:PATH;fewshot=PATH"``) or a name
registered with :func:`register_task`. Formats:

=====================  ===============================================================
``hellaswag``          HellaSwag: original JSONL (int ``label``) or the Hugging Face
                       copy (Parquet/JSON/JSONL, string ``label``). acc, acc_norm.
``arc``                ARC: AI2's nested JSONL or the Hugging Face flat copy; 3–5
                       choices, labels "A"–"E" or "1"–"5". acc, acc_norm.
``mmlu``               MMLU: ``dev/ val/ test/`` folders of ``{subject}_{split}.csv``
                       (no header), or Hugging Face Parquet/JSON. Scored " A"… " D". acc.
``mmlu_continuation``  MMLU scored on the choice texts. acc, acc_norm.
=====================  ===============================================================

What is scored (per item): the context (description + few-shot shots + query) and one
continuation per choice, ``" " + choice`` (target delimiter " ").

Few-shot, as the harness does it:

* MMLU (both variants): the first k items of the subject's ``dev`` split, in order.
* HellaSwag and ARC: ``random.Random(1234)``, one draw per scored item *in item order*
  (the generator's state runs on from item to item, so the shots an item gets depend on
  its position and on ``limit``, as in the harness). The pool is the ``;fewshot=`` file
  if given, else the task's training file found beside the eval file, else the eval
  file itself. Each draw takes k items; or, when the harness's config has
  ``fewshot_split == test_split`` (always for HellaSwag, whose official config sets
  neither; for ARC when the pool is the eval file itself), k+1 items, of which those
  equal to the item being scored are dropped and the first k kept.

Shots are ``query + " " + gold choice`` joined by "\\n\\n", followed by "\\n\\n" and the
item's query; MMLU puts its description in front.

Example::

    task = load_task("arc:/data/ARC-Challenge/ARC-Challenge-Test.jsonl")
    for item, context in zip(task.items, task.contexts(num_fewshot=5)):
        ...
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import random
import re
from dataclasses import dataclass, field

__all__ = ["Item", "Task", "TaskSpec", "load_task", "register_task", "registered_tasks",
           "parse_task_spec", "hellaswag_preprocess", "FORMATS", "FEWSHOT_RANDOM_SEED",
           "TARGET_DELIMITER", "FEWSHOT_DELIMITER"]

FEWSHOT_RANDOM_SEED = 1234
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
FORMATS = ("hellaswag", "arc", "mmlu", "mmlu_continuation")
MMLU_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True, eq=False)
class Item:
    """One scored question: ``query`` (the prompt text), ``choices`` (bare texts; the
    continuation scored is ``" " + choice``), ``gold`` (index), ``doc`` (the raw record,
    compared by value to exclude an item from its own shots), ``source`` ("file:line")."""
    query: str
    choices: tuple
    gold: int
    doc: dict
    source: str
    subject: str = ""

    def shot(self):
        """The few-shot form of this item: query, target delimiter, gold choice."""
        return self.query + TARGET_DELIMITER + self.choices[self.gold]


@dataclass
class Task:
    """A loaded task: its items in file order, its few-shot pool and how to sample it.

    A task with subjects (MMLU) is a group: ``subtasks`` holds one Task per subject (each
    with its own description and dev pool), and ``items`` is their concatenation.
    """
    name: str
    format: str
    items: list
    fewshot_pool: list = field(default_factory=list)
    sampler: str = "random"          # "random" (seed 1234) or "first_n"
    fewshot_excludes_item: bool = False  # harness: fewshot_split == test_split
    description: str = ""
    metrics: tuple = ("acc", "acc_norm")
    subtasks: list = field(default_factory=list)
    path: str = ""

    def limited(self, limit):
        """The items scored under ``limit`` (int count, or a fraction in (0, 1), as lm-eval)."""
        return self.items[:_limit_count(limit, len(self.items))]

    def contexts(self, num_fewshot=0, limit=None):
        """The context string of every scored item (few-shot shots included), in order."""
        if self.subtasks:
            out = []
            for sub in self.subtasks:
                out.extend(sub.contexts(num_fewshot, limit))
            return out
        items = self.limited(limit)
        shots = self.fewshot_examples(num_fewshot, items)
        return [self.description + (FEWSHOT_DELIMITER.join(s.shot() for s in sh)
                                    + FEWSHOT_DELIMITER if sh else "") + item.query
                for item, sh in zip(items, shots)]

    def fewshot_examples(self, num_fewshot, items):
        """The shots of each item in ``items``, exactly as the harness's samplers pick them
        (lm-eval 0.4.13 ``ContextSampler.sample`` / ``FirstNSampler.sample``)."""
        if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
            raise ValueError(f"num_fewshot must be an int >= 0, got {num_fewshot!r}")
        if num_fewshot == 0:
            return [[] for _ in items]
        pool = self.fewshot_pool
        if self.sampler == "first_n":
            out = []
            for item in items:
                candidates = ([s for s in pool if s.doc != item.doc]
                              if self.fewshot_excludes_item else pool)
                if num_fewshot > len(candidates):
                    raise ValueError(f"{self.name}: {num_fewshot}-shot needs {num_fewshot} "
                                     f"few-shot (dev) items, the pool has {len(candidates)}")
                out.append(list(candidates[:num_fewshot]))
            return out
        draw = num_fewshot + 1 if self.fewshot_excludes_item else num_fewshot
        if draw > len(pool):
            raise ValueError(f"{self.name}: {num_fewshot}-shot draws {draw} items from a "
                             f"few-shot pool of {len(pool)}; give a larger pool "
                             f"(FORMAT:PATH;fewshot=TRAIN_FILE) or fewer shots")
        # One generator for the whole task, drawn from item after item: an item's shots
        # depend on the items scored before it, as in the harness.
        rnd = random.Random(FEWSHOT_RANDOM_SEED)
        out = []
        for item in items:
            # random.sample picks positions from the population size alone, so sampling
            # indices consumes the generator exactly as sampling the docs does.
            picked = [pool[i] for i in rnd.sample(range(len(pool)), draw)]
            if self.fewshot_excludes_item:
                picked = [s for s in picked if s.doc != item.doc][:num_fewshot]
                if len(picked) < num_fewshot:  # the item occurred twice among the draws
                    rest = [s for s in pool if s.doc != item.doc]
                    if num_fewshot > len(rest):
                        raise ValueError(f"{self.name}: {num_fewshot}-shot needs "
                                         f"{num_fewshot} items other than {item.source}")
                    picked = [rest[i] for i in rnd.sample(range(len(rest)), num_fewshot)]
            out.append(picked)
        return out


def _limit_count(limit, n):
    if limit is None:
        return n
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0 \
            or (isinstance(limit, float) and math.isnan(limit)):
        raise ValueError(f"limit must be a positive int or a fraction in (0, 1), got {limit!r}")
    if isinstance(limit, float) and limit < 1.0:
        return int(math.ceil(n * limit))
    return min(int(limit), n)


# --------------------------------------------------------------------------------------
# Reading records: JSONL / JSON / Parquet / CSV, each record with its "file:line" source.

def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got "
                                 f"{type(rec).__name__}")
            yield rec, f"{path}:{lineno}"


def _read_json_array(path):
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of records (or JSON lines)")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: record {i}: expected a JSON object")
        yield rec, f"{path}:record {i}"


def _read_parquet(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow "
                          "(or use the JSONL/CSV layout)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own types for corrupt files
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    for i, rec in enumerate(table.to_pylist()):
        yield rec, f"{path}:row {i}"


def read_records(path):
    """Records of a JSONL, JSON or Parquet file, each with its "file:line" (or row)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    if path.endswith(".parquet"):
        return list(_read_parquet(path))
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if path.endswith(".json") and head.startswith(b"["):
        return list(_read_json_array(path))
    return list(_read_jsonl(path))


def _field(rec, key, source, kind=None):
    if key not in rec or rec[key] is None:
        raise ValueError(f"{source}: missing field {key!r}")
    value = rec[key]
    if kind is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"{source}: field {key!r} must be {names}, got "
                         f"{type(value).__name__} {value!r}")
    return value


# --------------------------------------------------------------------------------------
# HellaSwag

def hellaswag_preprocess(text):
    """The harness's HellaSwag cleanup: strip, " [title]" -> ". ", drop [..] spans,
    double spaces -> one."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_item(rec, source):
    activity = _field(rec, "activity_label", source, str)
    ctx_a = _field(rec, "ctx_a", source, str)
    ctx_b = _field(rec, "ctx_b", source, str)
    endings = _field(rec, "endings", source, (list, tuple))
    if len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        raise ValueError(f"{source}: 'endings' must be a list of at least 2 strings")
    label = rec.get("label")
    if label is None or label == "":
        raise ValueError(f"{source}: HellaSwag item has no label — the test split is "
                         "unlabeled and cannot be scored; use the validation split")
    if isinstance(label, bool) or not isinstance(label, (int, str)) \
            or (isinstance(label, str) and not label.strip().isdigit()):
        raise ValueError(f"{source}: 'label' must be an int or a digit string, got {label!r}")
    gold = int(label)
    if not 0 <= gold < len(endings):
        raise ValueError(f"{source}: label {gold} out of range for {len(endings)} endings")
    query = hellaswag_preprocess(activity + ": " + ctx_a + " " + ctx_b.capitalize())
    return Item(query, tuple(hellaswag_preprocess(e) for e in endings), gold, rec, source)


# --------------------------------------------------------------------------------------
# ARC

def arc_item(rec, source):
    question = _field(rec, "question", source)
    if isinstance(question, dict):  # AI2's nested layout
        stem = _field(question, "stem", source + " (question)", str)
        raw_choices = _field(question, "choices", source + " (question)", (list, tuple))
        texts, labels = [], []
        for c in raw_choices:
            if not isinstance(c, dict) or not isinstance(c.get("text"), str) \
                    or c.get("label") is None:
                raise ValueError(f"{source}: each choice must be {{'text': str, 'label': ...}}")
            texts.append(c["text"])
            labels.append(str(c["label"]))
    elif isinstance(question, str):  # Hugging Face flat layout
        stem = question
        choices = _field(rec, "choices", source, dict)
        texts, labels = choices.get("text"), choices.get("label")
        if not isinstance(texts, (list, tuple)) or not isinstance(labels, (list, tuple)) \
                or len(texts) != len(labels) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{source}: 'choices' must be {{'text': [str], 'label': [...]}} "
                             "of equal lengths")
        texts, labels = list(texts), [str(x) for x in labels]
    else:
        raise ValueError(f"{source}: 'question' must be a string (flat layout) or an object "
                         f"with 'stem' and 'choices' (nested layout), got "
                         f"{type(question).__name__}")
    if len(texts) < 2:
        raise ValueError(f"{source}: ARC item needs at least 2 choices, got {len(texts)}")
    key = rec.get("answerKey")
    if key is None or str(key) == "":
        raise ValueError(f"{source}: ARC item has no answerKey (unlabeled split?)")
    key = str(key)
    if key not in labels:
        raise ValueError(f"{source}: answerKey {key!r} is not one of the choice labels {labels}")
    return Item("Question: " + stem + "\nAnswer:", tuple(texts), labels.index(key), rec, source)


# --------------------------------------------------------------------------------------
# MMLU

def _mmlu_answer(value, source):
    if isinstance(value, bool):
        raise ValueError(f"{source}: answer must be A-D or 0-3, got {value!r}")
    if isinstance(value, int):
        gold = value
    elif isinstance(value, str) and value.strip() in MMLU_LETTERS:
        gold = MMLU_LETTERS.index(value.strip())
    elif isinstance(value, str) and value.strip().isdigit():
        gold = int(value.strip())
    else:
        raise ValueError(f"{source}: answer must be a letter A-D or an int 0-3, got {value!r}")
    if not 0 <= gold < 4:
        raise ValueError(f"{source}: answer {value!r} out of range (4 choices)")
    return gold


def mmlu_item(rec, source, subject, continuation):
    question = _field(rec, "question", source, str)
    choices = _field(rec, "choices", source, (list, tuple))
    if len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{source}: MMLU 'choices' must be 4 strings, got {choices!r}")
    gold = _mmlu_answer(_field(rec, "answer", source), source)
    if continuation:
        return Item("Question: " + question.strip() + "\nAnswer:", tuple(choices), gold,
                    rec, source, subject)
    query = question.strip() + "".join(f"\n{letter}. {c}" for letter, c in
                                       zip(MMLU_LETTERS, choices)) + "\nAnswer:"
    return Item(query, MMLU_LETTERS, gold, rec, source, subject)


def _read_mmlu_csv(path):
    """Rows (question, A, B, C, D, answer letter), no header; quoted fields may span lines."""
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        start = 1
        try:
            for row in reader:
                source = f"{path}:{start}"
                start = reader.line_num + 1
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 6:
                    raise ValueError(f"{source}: MMLU CSV row needs 6 columns (question, A, "
                                     f"B, C, D, answer), got {len(row)}")
                out.append(({"question": row[0], "choices": row[1:5], "answer": row[5]},
                            source))
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return out


def _mmlu_description(subject, continuation):
    name = subject.replace("_", " ")
    if continuation:
        return f"The following are questions (with answers) about {name}.\n\n"
    return f"The following are multiple choice questions (with answers) about {name}.\n\n"


def _mmlu_csv_split(root, split):
    """{subject: [(record, source)]} from root/split/{subject}_{split}.csv."""
    out = {}
    for path in sorted(glob.glob(os.path.join(root, split, f"*_{split}.csv"))):
        subject = os.path.basename(path)[: -len(f"_{split}.csv")]
        out[subject] = _read_mmlu_csv(path)
    return out


def _split_files(root, split):
    """Hugging Face layout files of one split under root (recursively): split-*.parquet,
    split.parquet, split.json(l)."""
    found = []
    for ext in ("parquet", "jsonl", "json"):
        for pattern in (f"{split}-*.{ext}", f"{split}.{ext}"):
            found += glob.glob(os.path.join(root, "**", pattern), recursive=True)
    return sorted(set(found))


def _mmlu_hf_split(root, split):
    """{subject: [(record, source)]}: subject from the 'subject' column, else the file's
    folder (the per-subject configs of the Hugging Face copy)."""
    out = {}
    for path in _split_files(root, split):
        folder = os.path.basename(os.path.dirname(path))
        if os.path.abspath(os.path.dirname(path)) == os.path.abspath(root) or folder == "all":
            folder = None
        for rec, source in read_records(path):
            subject = rec.get("subject") or folder
            if not subject:
                raise ValueError(f"{source}: MMLU record has no 'subject' (and the file is "
                                 "not in a per-subject folder)")
            out.setdefault(subject, []).append((rec, source))
    return out


def load_mmlu(path, continuation=False, name=None):
    """MMLU from a CSV folder tree (dev/ val/ test/) or Hugging Face files; one subtask
    per subject, few-shot from the subject's dev split (first_n)."""
    path = os.fspath(path)
    fmt = "mmlu_continuation" if continuation else "mmlu"
    name = name or fmt
    if os.path.isfile(path):  # one subject's CSV: .../test/{subject}_test.csv
        base = os.path.basename(path)
        m = re.match(r"(.+)_(dev|val|test)\.csv$", base)
        if not m:
            raise ValueError(f"{path}: an MMLU CSV file must be named {{subject}}_{{split}}.csv")
        subject = m.group(1)  # the file itself is scored, whichever split it is
        root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        test = {subject: _read_mmlu_csv(path)}
        dev_file = os.path.join(root, "dev", f"{subject}_dev.csv")
        dev = {subject: _read_mmlu_csv(dev_file)} if os.path.exists(dev_file) else {}
    elif glob.glob(os.path.join(path, "test", "*_test.csv")):
        test, dev = _mmlu_csv_split(path, "test"), _mmlu_csv_split(path, "dev")
    elif os.path.isdir(path):
        test, dev = _mmlu_hf_split(path, "test"), _mmlu_hf_split(path, "dev")
        if not test:
            raise FileNotFoundError(f"{path}: no MMLU test split found (expected test/"
                                    "{subject}_test.csv files or test-*.parquet / test.jsonl)")
    else:
        raise FileNotFoundError(f"no such file or directory: {path}")
    subtasks = []
    for subject in sorted(test):
        items = [mmlu_item(r, s, subject, continuation) for r, s in test[subject]]
        pool = [mmlu_item(r, s, subject, continuation) for r, s in dev.get(subject, [])]
        subtasks.append(Task(name=f"{name}_{subject}", format=fmt, items=items,
                             fewshot_pool=pool, sampler="first_n",
                             description=_mmlu_description(subject, continuation),
                             metrics=("acc", "acc_norm") if continuation else ("acc",),
                             path=path))
    items = [it for sub in subtasks for it in sub.items]
    return Task(name=name, format=fmt, items=items, sampler="first_n",
                metrics=("acc", "acc_norm") if continuation else ("acc",),
                subtasks=subtasks, path=path)


# --------------------------------------------------------------------------------------
# HellaSwag and ARC files: eval file, few-shot pool.

_TRAIN_NAMES = {
    # the eval file's name -> where its training split lies beside it
    "hellaswag": [("hellaswag_val.jsonl", "hellaswag_train.jsonl"),
                  ("validation", "train")],
    "arc": [("-Test.jsonl", "-Train.jsonl"), ("test", "train")],
}


def _find_eval_file(path, fmt):
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    if fmt == "hellaswag":
        candidates = glob.glob(os.path.join(path, "hellaswag_val.jsonl")) \
            or _split_files(path, "validation")
    else:
        candidates = glob.glob(os.path.join(path, "*-Test.jsonl")) or _split_files(path, "test")
    if len(candidates) != 1:
        raise FileNotFoundError(f"{path}: expected one {fmt} evaluation file "
                                f"(hellaswag_val.jsonl / validation-*.parquet for HellaSwag, "
                                f"*-Test.jsonl / test-*.parquet for ARC), found "
                                f"{sorted(candidates) or 'none'}; pass the file itself")
    return candidates[0]


def _sibling_train_file(path, fmt):
    d, base = os.path.split(path)
    for eval_part, train_part in _TRAIN_NAMES[fmt]:
        if eval_part in base:
            cand = os.path.join(d, base.replace(eval_part, train_part))
            if cand != path and os.path.isfile(cand):
                return cand
            if "-" in base and base.startswith(eval_part):  # test-00000-of-00001.parquet
                matches = sorted(glob.glob(os.path.join(d, f"{train_part}-*")))
                if len(matches) == 1:
                    return matches[0]
    return None


def _load_file_task(fmt, path, fewshot_path=None, name=None):
    path = _find_eval_file(os.fspath(path), fmt)
    make = hellaswag_item if fmt == "hellaswag" else arc_item
    items = [make(rec, source) for rec, source in read_records(path)]
    if fewshot_path is None:
        fewshot_path = _sibling_train_file(path, fmt)
    if fewshot_path is None or os.path.abspath(fewshot_path) == os.path.abspath(path):
        pool, same_split = items, True
    else:
        pool = [make(rec, source) for rec, source in read_records(os.fspath(fewshot_path))]
        same_split = False
    return Task(name=name or fmt, format=fmt, items=items, fewshot_pool=pool,
                sampler="random", fewshot_excludes_item=(fmt == "hellaswag" or same_split),
                metrics=("acc", "acc_norm"), path=path)


# --------------------------------------------------------------------------------------
# Specs and the registry of built-in names.

@dataclass(frozen=True)
class TaskSpec:
    """What to load: a format, a path (or a zero-argument callable returning one, for data
    generated on first use) and an optional few-shot file."""
    format: str
    path: object
    fewshot_path: object = None
    name: str = ""


_REGISTRY = {}


def register_task(name, format, path, fewshot_path=None):
    """Make ``name`` usable as a task in :func:`hif8qat.evaluate`.

    ``path`` may be a callable returning the path, resolved when the task is loaded.

    Example::

        register_task("world_knowledge", "mmlu_continuation", lambda: world_dir() + "/knowledge")
    """
    if format not in FORMATS:
        raise ValueError(f"unknown task format {format!r}; expected one of {FORMATS}")
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"task name must be a non-empty string without ':', got {name!r}")
    _REGISTRY[name] = TaskSpec(format, path, fewshot_path, name)


def registered_tasks():
    """Names registered with :func:`register_task`."""
    return sorted(_REGISTRY)


def parse_task_spec(spec):
    """``"FORMAT:PATH[;fewshot=PATH]"`` or a registered name -> TaskSpec."""
    if isinstance(spec, TaskSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a task is a 'FORMAT:PATH' string, a registered name or a Task, "
                        f"got {type(spec).__name__}")
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    fmt, sep, rest = spec.partition(":")
    if not sep:
        raise ValueError(f"unknown task {spec!r}: use FORMAT:PATH with FORMAT one of "
                         f"{FORMATS}, or a registered name ({registered_tasks() or 'none yet'})")
    if fmt not in FORMATS:
        raise ValueError(f"unknown task format {fmt!r} in {spec!r}; expected one of {FORMATS}")
    path, fewshot = rest, None
    if ";fewshot=" in rest:
        path, _, fewshot = rest.partition(";fewshot=")
    if not path:
        raise ValueError(f"task spec {spec!r} has no path")
    return TaskSpec(fmt, path, fewshot or None, "")


def load_task(spec, name=None):
    """Load a task from a spec string, TaskSpec or registered name (a Task passes through)."""
    if isinstance(spec, Task):
        return spec
    ts = parse_task_spec(spec)
    path = ts.path() if callable(ts.path) else ts.path
    fewshot = ts.fewshot_path() if callable(ts.fewshot_path) else ts.fewshot_path
    name = name or ts.name or ts.format
    if ts.format in ("mmlu", "mmlu_continuation"):
        if fewshot is not None:
            raise ValueError("MMLU takes its shots from the dev split beside the test split; "
                             "';fewshot=' is not supported for it")
        return load_mmlu(path, continuation=ts.format == "mmlu_continuation", name=name)
    return _load_file_task(ts.format, path, fewshot, name=name)
