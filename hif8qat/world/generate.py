"""The embedded benchmark world: a seeded, fictional stand-in for pretraining data
and for MMLU, HellaSwag and ARC, so that accuracy drops are measurable offline.

One call writes everything a run needs::

    >>> from hif8qat.world import generate
    >>> paths = generate(seed=0, out_dir="/tmp/world-0-tiny", size="tiny")
    >>> sorted(paths)[:3]
    ['finetune', 'manifest', 'pretrain']

What is written (``out_dir/``):

* ``pretrain.txt`` -- the pretraining corpus, short documents separated by blank
  lines: (1) facts about invented lands, guilds and creatures, each fact stated in
  several paraphrases and also drilled in the "Question: ...\\nAnswer: ..." form;
  (2) routine scripts ("X is a baker. He kneads the dough. Then he shapes ...")
  told many times with different actors; (3) worked examples of six small
  inference patterns told with many actors (class colors, turning, counting one more
  or less, converse comparatives, trades and their goods, the next season), the
  rules they use stated as generics ("All glorks are red.", "A baker makes bread.").
* ``finetune.txt`` -- another domain (market ledgers and recipes, lower-case,
  line-oriented), so that fine-tuning at an aggressive learning rate overwrites what
  pretraining taught: the forgetting the paper measures.
* ``world_knowledge/{dev,test}/{subject}_{split}.csv`` -- MMLU's CSV layout (no
  header; question, A, B, C, D, answer letter), subjects geography, guilds,
  creatures; scored as ``mmlu_continuation``. Every item asks a fact the corpus
  states; one of each relation's two question phrasings never occurs in the corpus.
* ``world_commonsense/hellaswag_{train,val}.jsonl`` -- HellaSwag's original
  JSONL (activity_label, ctx_a, ctx_b, endings[4], integer label): new actors in
  the corpus's scripts; the gold ending is the script's next step, the distractors
  are steps of other scripts (and sometimes a later step of the same one).
* ``world_reasoning/World-Reasoning-{Train,Dev,Test}.jsonl`` -- AI2's nested ARC
  JSONL (id, question.stem, question.choices[{text,label}], answerKey), 3-5
  choices, labels "A".. or "1"..: new instances of the corpus's inference patterns,
  each answered by a word of a small closed set (a color, a direction, a number...),
  never by a name copied from the question, the gold value balanced over its set.
* ``meta/knowledge_facts.jsonl`` and ``meta/knowledge_items.jsonl`` -- the facts and
  which fact each knowledge item asks (items about one fact are correlated: a
  cluster bootstrap can use this).
* ``manifest.json`` -- seed, size, generator version, item counts, chance levels
  and the sha256 of every file above.

Benchmark items use people names drawn from a pool the corpus never uses, so a
commonsense or reasoning item is never a copy of corpus text. The gold position is
balanced exactly (counts differ by at most one) within each file and choice count.

Determinism: every random draw comes from ``random.Random`` streams seeded from
(seed, part name) through SHA-256 -- never ``hash()`` of a string, never set order --
so the same seed gives the same bytes on any machine and Python >= 3.10.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

GENERATOR_VERSION = 2

KNOWLEDGE_SUBJECTS = ("geography", "guilds", "creatures")
LETTERS = "ABCDE"


# ----------------------------------------------------------------------------------
# sizes
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldSpec:
    """How big a world is. ``full`` meets the >= 2,000 items per benchmark target;
    ``tiny`` is for tests and ``hif8qat demo --quick``."""
    lands: int                       # test entities per knowledge subject ...
    guilds: int
    creatures: int
    dev_entities: int                # ... plus these per subject, only in dev items
    knowledge_test: Tuple[int, int, int]   # items per subject (multiples of 4)
    knowledge_dev: int               # items per subject in dev (MMLU has 5)
    paragraphs_per_entity: int       # corpus paragraphs stating an entity's facts
    qa_reps: int                     # times each fact is drilled in Q/A form
    script_tellings: int             # corpus tellings of each script
    reasoning_examples: int          # corpus worked examples per inference pattern
    commonsense_test: int            # world_commonsense val items (multiple of 4)
    commonsense_train: int           # few-shot pool
    reasoning_test: int
    reasoning_dev: int
    reasoning_train: int
    people_pool: int                 # names in each of the corpus / benchmark pools
    finetune_docs: int


SIZES: Dict[str, WorldSpec] = {
    "full": WorldSpec(
        lands=16, guilds=10, creatures=16, dev_entities=2,
        knowledge_test=(800, 400, 800), knowledge_dev=5,
        paragraphs_per_entity=16, qa_reps=4,
        script_tellings=30, reasoning_examples=300,
        commonsense_test=2000, commonsense_train=200,
        reasoning_test=2000, reasoning_dev=300, reasoning_train=300,
        people_pool=160, finetune_docs=3000),
    "tiny": WorldSpec(
        lands=3, guilds=3, creatures=3, dev_entities=1,
        knowledge_test=(68, 64, 68), knowledge_dev=5,
        paragraphs_per_entity=4, qa_reps=10,
        script_tellings=2, reasoning_examples=10,
        commonsense_test=200, commonsense_train=40,
        reasoning_test=200, reasoning_dev=40, reasoning_train=40,
        people_pool=48, finetune_docs=300),
}


# ----------------------------------------------------------------------------------
# deterministic randomness
# ----------------------------------------------------------------------------------
def _rng(seed: int, part: str) -> random.Random:
    """An independent stream per (seed, part): changing one part's draws never
    shifts another's."""
    digest = hashlib.sha256(f"hif8qat-world/{GENERATOR_VERSION}/{seed}/{part}".encode())
    return random.Random(int.from_bytes(digest.digest()[:8], "little"))


def _balanced_positions(rng: random.Random, n_items: int, n_choices: int) -> List[int]:
    """Gold positions 0..n_choices-1, each used n_items // n_choices or one more
    times, in random order."""
    pos = [i % n_choices for i in range(n_items)]
    rng.shuffle(pos)
    return pos


def _place(gold: str, distractors: Sequence[str], position: int) -> List[str]:
    choices = list(distractors)
    choices.insert(position, gold)
    return choices


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# ----------------------------------------------------------------------------------
# invented names: short, regular, pronounceable, unique, no name a prefix of another
# ----------------------------------------------------------------------------------
_ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "tr", "st", "sk", "th", "sh", "fl", "gl", "pl", "v"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o"]
_CODAS = ["", "", "", "n", "r", "l", "s", "k", "m", "nd", "rk", "st", "th"]
# English words the templates use; a name must not collide with one
_RESERVED = {"the", "than", "then", "there", "more", "most", "mount", "river", "guild",
             "land", "has", "gets", "goes", "who", "what", "where", "which", "all",
             "answer", "question", "next", "after", "that", "tall", "old", "fast",
             "heavy", "strong", "rest", "best", "barn", "mill", "dorm", "tower", "has",
             "born", "bone", "note", "sale", "tale", "male", "pole", "role", "hole",
             "mole", "sole", "vole", "rose", "nose", "hose", "dose", "pose", "lose",
             "dune", "tune", "rune", "june", "lune", "fine", "line", "mine", "nine",
             "pine", "vine", "dine", "shine", "stone", "bran", "gran", "drum", "plum",
             "glum", "slum", "sum", "hum", "gum", "tom", "tim", "tin", "ton", "ten",
             "den", "men", "pen", "hen", "ben", "ban", "can", "fan", "man", "pan",
             "ran", "tan", "van", "bun", "fun", "gun", "nun", "pun", "run", "sun"}


class _Namer:
    """Draws unique names; every name of every kind is unique across the world."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: List[str] = []

    def _syllable(self, coda: bool = True) -> str:
        r = self.rng
        return r.choice(_ONSETS) + r.choice(_VOWELS) + (r.choice(_CODAS) if coda else "")

    def _ok(self, name: str) -> bool:
        low = name.lower()
        if not (4 <= len(low) <= 8) or low in _RESERVED:
            return False
        if any(a == b == c for a, b, c in zip(low, low[1:], low[2:])):
            return False
        for other in self.used:
            if low.startswith(other) or other.startswith(low):
                return False
        return True

    def make(self, kind: str) -> str:
        for _ in range(10000):
            if kind == "land":
                name = self._syllable(False) + self._syllable(False) + \
                    self.rng.choice(["ra", "ria", "nia", "mar", "dor", "vel"])
            elif kind == "city":
                name = self._syllable(False) + self._syllable(True)
                if name[-1] in "aeiou":
                    name += self.rng.choice(["k", "sk", "th", "n", "rd"])
            elif kind == "person":
                name = self._syllable(self.rng.random() < 0.5) + self._syllable(False) + \
                    self.rng.choice(["", "", "n", "l", "s"])
            elif kind in ("creature", "kind"):     # lower-case nouns, plural with -s
                name = self._syllable(False) + self._syllable(True)
                if name[-1] in "aeiosh":
                    name += self.rng.choice(["k", "l", "n", "r", "m"])
            else:  # river, peak, guild, market: two plain syllables
                name = self._syllable(self.rng.random() < 0.4) + self._syllable(True)
            if self._ok(name):
                self.used.append(name.lower())
                return name if kind in ("creature", "kind") else _cap(name)
        raise RuntimeError(f"could not draw a fresh {kind} name")  # pragma: no cover

    def many(self, kind: str, n: int) -> List[str]:
        return [self.make(kind) for _ in range(n)]


# ----------------------------------------------------------------------------------
# knowledge: entities, relations, statements, questions
# ----------------------------------------------------------------------------------
_GOODS = ["salt", "amber", "wool", "copper", "silk", "tea", "glass", "honey", "timber",
          "spice", "iron", "pearls", "cheese", "wine", "ivory", "jade", "linen", "dye",
          "tin", "silver", "gold", "furs", "rice", "olives", "figs", "marble", "coal",
          "paper", "ink", "soap", "leather", "barley"]
_CRAFTS = ["ropes", "bells", "maps", "lamps", "boats", "clocks", "barrels", "saddles",
           "kites", "drums", "locks", "nets", "baskets", "mirrors", "candles", "carts",
           "hats", "boots", "swords", "shields", "flutes", "jars", "bricks", "cloaks"]
_EMBLEMS = ["a hawk", "a wolf", "a stag", "an otter", "a heron", "a boar", "a lynx",
            "a raven", "a bear", "a fox", "an owl", "a crane", "a swan", "a ram",
            "a bull", "a hare"]
_FOODS = ["moss", "beetles", "fish", "berries", "roots", "seeds", "snails", "bark",
          "grass", "worms", "mushrooms", "crabs", "nuts", "leaves", "frogs", "mice"]
_HABITATS = ["the marsh", "the desert", "the forest", "the caves", "the hills",
             "the reef", "the tundra", "the river", "the meadow", "the jungle",
             "the dunes", "the cliffs"]
_COLORS = ["red", "blue", "green", "yellow", "black", "white", "grey", "brown",
           "orange", "purple", "pink", "silver"]
_SOUNDS = ["a hoot", "a hiss", "a chirp", "a growl", "a whistle", "a croak",
           "a click", "a hum", "a bark", "a trill", "a squeak", "a roar"]


@dataclass(frozen=True)
class _Relation:
    subject: str
    name: str
    statements: Tuple[str, ...]      # {e} entity, {v} value; [0] is the canonical one
    question: str                    # phrasing drilled in the corpus
    question_heldout: str            # phrasing only the benchmark uses
    inverse: Optional[str] = None    # question whose answer is the entity ({v} given)


_RELATIONS: Tuple[_Relation, ...] = (
    _Relation("geography", "capital",
              ("The capital of {e} is {v}.", "{v} is the capital of {e}.",
               "{e} is ruled from its capital, {v}.", "In {e}, the capital city is {v}.",
               "{v}, the capital of {e}, is a busy city."),
              "What is the capital of {e}?", "Which city is the capital of {e}?",
              "{v} is the capital of which land?"),
    _Relation("geography", "river",
              ("The {v} River flows through {e}.", "{e} lies along the {v} River.",
               "The great river of {e} is the {v}.", "Boats sail down the {v} River in {e}."),
              "Which river flows through {e}?", "What river runs through {e}?",
              "The {v} River flows through which land?"),
    _Relation("geography", "peak",
              ("The highest mountain in {e} is {v}.", "{v} is the tallest peak in {e}.",
               "{e} is home to {v}, its highest peak.", "Snow covers {v}, the top of {e}."),
              "What is the highest mountain in {e}?", "Which mountain is the tallest in {e}?",
              "{v} is the highest mountain in which land?"),
    _Relation("geography", "good",
              ("{e} is famous for its {v}.", "The people of {e} trade in {v}.",
               "{e} sells {v} to its neighbors.", "The best {v} comes from {e}."),
              "What is {e} famous for?", "What goods is {e} known for?",
              "Which land is famous for its {v}?"),
    _Relation("guilds", "leader",
              ("The {e} Guild is led by {v}.", "{v} leads the {e} Guild.",
               "The head of the {e} Guild is {v}.", "{v} is the master of the {e} Guild."),
              "Who leads the {e} Guild?", "Who is the head of the {e} Guild?",
              "Which guild does {v} lead?"),
    _Relation("guilds", "emblem",
              ("The emblem of the {e} Guild is {v}.",
               "The {e} Guild carries a banner with {v} on it.",
               "{V} is the sign of the {e} Guild.", "The {e} Guild chose {v} as its emblem."),
              "What is the emblem of the {e} Guild?",
              "What animal is on the banner of the {e} Guild?"),
    _Relation("guilds", "hall",
              ("The {e} Guild meets in {v}.", "The hall of the {e} Guild stands in {v}.",
               "Members of the {e} Guild gather in {v}.", "{v} is the home of the {e} Guild."),
              "Where does the {e} Guild meet?", "In which city does the {e} Guild meet?"),
    _Relation("guilds", "craft",
              ("The {e} Guild makes {v}.", "Members of the {e} Guild are skilled at making {v}.",
               "The {e} Guild is known for its {v}.", "The finest {v} are made by the {e} Guild."),
              "What does the {e} Guild make?", "What do members of the {e} Guild make?",
              "Which guild makes {v}?"),
    _Relation("creatures", "diet",
              ("The {e} eats {v}.", "A {e} feeds on {v}.", "The {e} likes to eat {v}.",
               "Every day the {e} hunts for {v}."),
              "What does the {e} eat?", "What is the food of the {e}?"),
    _Relation("creatures", "habitat",
              ("The {e} lives in {v}.", "You can find the {e} in {v}.",
               "The {e} makes its home in {v}.", "The {e} builds its nest in {v}."),
              "Where does the {e} live?", "Where can you find the {e}?"),
    _Relation("creatures", "color",
              ("The {e} is {v}.", "The skin of the {e} is {v}.",
               "A {e} has a {v} coat.", "You can spot the {v} {e} from far away."),
              "What color is the {e}?", "What is the color of the {e}?"),
    _Relation("creatures", "sound",
              ("The {e} makes {v}.", "At night the {e} gives {v}.",
               "You hear {v} when a {e} is near.", "The call of the {e} is {v}."),
              "What sound does the {e} make?", "What call does the {e} make?"),
)


def _render(template: str, e: str, v: str) -> str:
    return _cap(template.format(e=e, v=v, V=_cap(v)))


def _answer_entity(rel: _Relation, entity: str) -> str:
    """The choice text naming an entity (answers to inverse questions)."""
    return f"the {entity} Guild" if rel.subject == "guilds" else entity


@dataclass
class _Fact:
    id: int
    subject: str
    relation: str
    entity: str
    value: str
    split: str                       # "test" or "dev": which items ask it
    statement: str                   # the canonical statement, always in the corpus

    def rel(self) -> _Relation:
        return next(r for r in _RELATIONS if r.name == self.relation)


def _build_facts(seed: int, spec: WorldSpec, namer: _Namer) -> List[_Fact]:
    rng = _rng(seed, "facts")
    n = {"geography": spec.lands + spec.dev_entities,
         "guilds": spec.guilds + spec.dev_entities,
         "creatures": spec.creatures + spec.dev_entities}
    n_test = {"geography": spec.lands, "guilds": spec.guilds, "creatures": spec.creatures}
    lands = namer.many("land", n["geography"])
    capitals = namer.many("city", n["geography"])
    rivers = namer.many("river", n["geography"])
    peaks = ["Mount " + p for p in namer.many("peak", n["geography"])]
    guilds = namer.many("guild", n["guilds"])
    leaders = namer.many("person", n["guilds"])
    creatures = namer.many("creature", n["creatures"])
    if n["geography"] > len(_GOODS) or n["guilds"] > len(_CRAFTS):
        raise ValueError("world too large for the built-in goods/crafts lists")
    goods = rng.sample(_GOODS, n["geography"])
    crafts = rng.sample(_CRAFTS, n["guilds"])
    values = {
        "capital": capitals, "river": rivers, "peak": peaks, "good": goods,
        "leader": leaders, "emblem": [rng.choice(_EMBLEMS) for _ in guilds],
        "hall": [rng.choice(capitals) for _ in guilds], "craft": crafts,
        "diet": [rng.choice(_FOODS) for _ in creatures],
        "habitat": [rng.choice(_HABITATS) for _ in creatures],
        "color": [rng.choice(_COLORS) for _ in creatures],
        "sound": [rng.choice(_SOUNDS) for _ in creatures],
    }
    entities = {"geography": lands, "guilds": guilds, "creatures": creatures}
    facts: List[_Fact] = []
    for rel in _RELATIONS:
        for i, entity in enumerate(entities[rel.subject]):
            value = values[rel.name][i]
            facts.append(_Fact(
                id=len(facts), subject=rel.subject, relation=rel.name, entity=entity,
                value=value, split="test" if i < n_test[rel.subject] else "dev",
                statement=_render(rel.statements[0], entity, value)))
    return facts


def _value_pool(facts: Sequence[_Fact], rel: _Relation) -> List[str]:
    """Choices of the same type as a relation's values (for distractors)."""
    fixed = {"emblem": _EMBLEMS, "diet": _FOODS, "habitat": _HABITATS,
             "color": _COLORS, "sound": _SOUNDS}
    if rel.name in fixed:
        return list(fixed[rel.name])
    source = "capital" if rel.name == "hall" else rel.name   # guild halls are capitals
    return [f.value for f in facts if f.relation == source]


def _entity_pool(facts: Sequence[_Fact], rel: _Relation) -> List[str]:
    return [_answer_entity(rel, f.entity) for f in facts if f.relation == rel.name]


def _knowledge_questions(fact: _Fact, *, heldout: bool) -> List[Tuple[str, str, str]]:
    """(form, question, gold answer) for the forms of one fact."""
    rel = fact.rel()
    out = [("forward", _render(rel.question, fact.entity, fact.value), fact.value)]
    if heldout:
        out.append(("heldout", _render(rel.question_heldout, fact.entity, fact.value),
                    fact.value))
    if rel.inverse:
        out.append(("inverse", _render(rel.inverse, fact.entity, fact.value),
                    _answer_entity(rel, fact.entity)))
    return out


def _knowledge_items(seed: int, spec: WorldSpec, facts: Sequence[_Fact]):
    """MMLU-style items per (split, subject): rows [question, A, B, C, D, letter],
    and their fact ids and forms."""
    out = {}
    for split in ("test", "dev"):
        for s_i, subject in enumerate(KNOWLEDGE_SUBJECTS):
            rng = _rng(seed, f"knowledge/{split}/{subject}")
            n_items = spec.knowledge_test[s_i] if split == "test" else spec.knowledge_dev
            pool = []
            for f in facts:
                if f.subject == subject and f.split == split:
                    pool += [(f, *q) for q in _knowledge_questions(f, heldout=True)]
            rows, meta = [], []
            positions = _balanced_positions(rng, n_items, 4)
            order: List[int] = []
            for i in range(n_items):
                if not order:  # each pass asks every question once, in a new order
                    order = list(range(len(pool)))
                    rng.shuffle(order)
                f, form, question, gold = pool[order.pop()]
                rel = f.rel()
                cands = _entity_pool(facts, rel) if form == "inverse" else _value_pool(facts, rel)
                cands = sorted(set(c for c in cands if c != gold))
                distractors = rng.sample(cands, 3)
                choices = _place(gold, distractors, positions[i])
                rows.append([question, *choices, LETTERS[positions[i]]])
                meta.append({"split": split, "subject": subject, "row": i,
                             "fact_id": f.id, "form": form})
            out[(split, subject)] = (rows, meta)
    return out


def _knowledge_corpus(seed: int, spec: WorldSpec, facts: Sequence[_Fact]) -> List[str]:
    """Paragraphs stating each entity's facts in varied templates, plus Q/A drills in
    the benchmark's prompt format (with the corpus phrasing only)."""
    rng = _rng(seed, "corpus/knowledge")
    docs: List[str] = []
    intros = {"geography": ["{e} is a land of the old world.", "Here is what we know of {e}.",
                            "{e} is an old kingdom.", ""],
              "guilds": ["The {e} Guild is an old guild.", "Here is what we know of the {e} Guild.",
                         "The {e} Guild is a guild of crafters.", ""],
              "creatures": ["The {e} is a wild beast.", "Here is what we know of the {e}.",
                            "The {e} is a small creature.", ""]}
    by_entity: Dict[Tuple[str, str], List[_Fact]] = {}
    for f in facts:
        by_entity.setdefault((f.subject, f.entity), []).append(f)
    for (subject, entity), efacts in by_entity.items():
        # paragraph 0 states every fact canonically; later ones go through all the
        # wordings in shuffled rounds, so every wording of every fact occurs
        wordings = {}
        for f in efacts:
            n = len(f.rel().statements)
            schedule = [0]
            while len(schedule) < spec.paragraphs_per_entity:
                round_ = list(range(n))
                rng.shuffle(round_)
                schedule += round_
            wordings[f.id] = schedule
        for p in range(spec.paragraphs_per_entity):
            order = list(efacts)
            rng.shuffle(order)
            sentences = []
            intro = rng.choice(intros[subject])
            if intro:
                sentences.append(_render(intro, entity, ""))
            for f in order:
                t = f.rel().statements[wordings[f.id][p]]
                sentences.append(_render(t, f.entity, f.value))
            docs.append(" ".join(sentences))
    # Q/A drills, grouped by subject like an exam page
    for subject in KNOWLEDGE_SUBJECTS:
        qa = []
        for f in facts:
            if f.subject == subject:
                qa += [(q, a) for _, q, a in _knowledge_questions(f, heldout=False)]
        qa = qa * spec.qa_reps
        rng.shuffle(qa)
        i = 0
        while i < len(qa):
            k = rng.randint(3, 6)
            block = "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in qa[i:i + k])
            if rng.random() < 0.5:
                block = f"The following are questions (with answers) about {subject}.\n\n" + block
            docs.append(block)
            i += k
    return docs


# ----------------------------------------------------------------------------------
# commonsense: routine scripts
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Script:
    label: str
    role: str                        # "a baker"
    variants: Tuple[str, ...]        # fills {v}
    steps: Tuple[str, ...]           # verb phrases; {v} variant, {pos} his/her


_SCRIPTS: Tuple[_Script, ...] = (
    _Script("Baking bread", "a baker", ("rye", "oat", "barley", "wheat"),
            ("kneads the {v} dough.", "shapes the dough into loaves.",
             "puts the loaves in the hot oven.", "takes the golden bread out.",
             "sells the {v} bread at the market.")),
    _Script("Shoeing a horse", "a smith", ("iron", "steel", "bronze"),
            ("heats the {v} in the forge.", "hammers the {v} into a shoe.",
             "cools the shoe in a bucket of water.", "nails the shoe to the hoof.",
             "leads the horse back to its stall.")),
    _Script("Catching fish", "a fisher", ("trout", "carp", "perch", "eel"),
            ("digs up worms for bait.", "rows the boat onto the lake.",
             "casts the line into the water.", "pulls a {v} out of the lake.",
             "cleans the {v} for supper.")),
    _Script("Planting a garden", "a gardener", ("bean", "pea", "leek", "beet"),
            ("turns the soil with a spade.", "sows the {v} seeds in rows.",
             "waters the seeds every morning.", "pulls the weeds between the rows.",
             "picks the ripe {v}s.")),
    _Script("Weaving cloth", "a weaver", ("wool", "flax", "silk"),
            ("spins the {v} into thread.", "dyes the thread in a pot.",
             "sets the thread on the loom.", "weaves the thread into cloth.",
             "folds the cloth and ties it with string.")),
    _Script("Brewing tea", "a host", ("mint", "black", "nettle"),
            ("fills the kettle with water.", "boils the water on the stove.",
             "puts the {v} leaves in the pot.", "pours the hot water over the leaves.",
             "serves the {v} tea in small cups.")),
    _Script("Building a fire", "a camper", ("pine", "oak", "birch"),
            ("gathers dry {v} sticks.", "stacks the sticks in a ring of stones.",
             "strikes a flint over the kindling.", "blows gently on the small flame.",
             "adds a big {v} log to the fire.")),
    _Script("Writing a letter", "a clerk", ("black", "blue", "red"),
            ("sharpens the quill.", "dips the quill in {v} ink.",
             "writes the letter on paper.", "folds the letter and seals it with wax.",
             "gives the letter to the courier.")),
    _Script("Making cheese", "a herder", ("goat", "cow", "sheep"),
            ("leads the {v} into the shed.", "milks the {v} into a pail.",
             "warms the milk in a pot.", "presses the curds in a cloth.",
             "sets the cheese on a shelf to age.")),
    _Script("Washing clothes", "a washer", ("linen", "wool", "cotton"),
            ("carries the {v} clothes to the river.", "soaks the clothes in the water.",
             "scrubs the clothes with soap.", "wrings the water out of the clothes.",
             "hangs the clothes on a line to dry.")),
    _Script("Sailing a boat", "a sailor", ("red", "white", "patched"),
            ("unties the boat from the dock.", "raises the {v} sail.",
             "steers the boat out of the harbor.", "lowers the sail near the shore.",
             "drops the anchor into the sea.")),
    _Script("Shearing sheep", "a shepherd", ("black", "white", "grey"),
            ("gathers the {v} sheep into the pen.", "holds a sheep between {pos} knees.",
             "clips the wool with shears.", "lets the sheep go back to the field.",
             "packs the {v} wool into sacks.")),
    _Script("Making candles", "a chandler", ("beeswax", "tallow"),
            ("melts the {v} in a pot.", "ties a wick to a stick.",
             "dips the wick into the {v}.", "lets the candle cool and harden.",
             "trims the wick of the candle.")),
    _Script("Repairing a roof", "a roofer", ("slate", "clay", "wooden")
            , ("leans a ladder against the house.", "climbs up onto the roof.",
               "pulls off the broken tiles.", "lays new {v} tiles in a row.",
               "climbs back down the ladder.")),
    _Script("Cooking soup", "a cook", ("carrot", "leek", "bean", "onion"),
            ("chops the {v}s on a board.", "hangs the pot over the fire.",
             "adds water and the {v}s to the pot.", "stirs the soup with a spoon.",
             "ladles the {v} soup into bowls.")),
    _Script("Going to bed", "a traveler", ("wool", "linen"),
            ("washes {pos} face in a basin.", "puts on a {v} nightshirt.",
             "blows out the candle.", "climbs into bed.", "falls asleep at once.")),
    _Script("Painting a fence", "a painter", ("white", "green", "red"),
            ("sands the old fence.", "stirs the {v} paint.", "dips the brush in the paint.",
             "paints the fence with long strokes.", "washes the brush in water.")),
    _Script("Harvesting grain", "a farmer", ("wheat", "barley", "oat")
            , ("sharpens the scythe.", "cuts the {v} in the field.",
               "ties the {v} into sheaves.", "loads the sheaves onto the cart.",
               "takes the cart to the barn.")),
    _Script("Keeping bees", "a beekeeper", ("clover", "heather", "lime"),
            ("puts on a veil and gloves.", "lights the smoker.", "opens the hive gently.",
             "lifts out a frame full of {v} honey.", "pours the honey into jars.")),
    _Script("Fixing a wheel", "a carter", ("oak", "ash", "elm"),
            ("lifts the cart with a jack.", "takes off the broken wheel.",
             "fits a new {v} wheel on the axle.", "greases the axle.",
             "lowers the cart to the ground.")),
)
_CONNECTIVES = ("Then", "Next", "After that")
_PRONOUNS = (("He", "he", "his"), ("She", "she", "her"))


def _step(script: _Script, i: int, variant: str, pos: str) -> str:
    return script.steps[i].format(v=variant, pos=pos)


def _telling(rng: random.Random, script: _Script, name: str, n_steps: int,
             label: bool) -> Tuple[str, str, Tuple[str, str, str], str]:
    """A script told up to step n_steps: (intro + steps text, variant, pronoun, label)."""
    variant = rng.choice(script.variants)
    pron = rng.choice(_PRONOUNS)
    parts = [f"{name} is {script.role}.", f"{pron[0]} {_step(script, 0, variant, pron[2])}"]
    for i in range(1, n_steps):
        parts.append(f"{rng.choice(_CONNECTIVES)} {pron[1]} {_step(script, i, variant, pron[2])}")
    text = " ".join(parts)
    if label:
        text = f"{script.label}: {text}"
    return text, variant, pron, script.label


def _commonsense_corpus(seed: int, spec: WorldSpec, names: Sequence[str]) -> List[str]:
    rng = _rng(seed, "corpus/commonsense")
    docs = []
    for _ in range(spec.script_tellings):
        for script in _SCRIPTS:
            text, *_ = _telling(rng, script, rng.choice(names), len(script.steps),
                                label=rng.random() < 0.5)
            docs.append(text)
    return docs


def _commonsense_items(seed: int, split: str, n_items: int, names: Sequence[str]) -> List[dict]:
    """HellaSwag-layout items: a new actor part-way through a script; endings are the
    true next step and three steps that do not come next."""
    rng = _rng(seed, f"commonsense/{split}")
    positions = _balanced_positions(rng, n_items, 4)
    items = []
    for i in range(n_items):
        s_i = i % len(_SCRIPTS)
        script = _SCRIPTS[s_i]
        k = rng.randint(1, len(script.steps) - 1)           # steps already told
        variant = rng.choice(script.variants)
        pron = rng.choice(_PRONOUNS)
        name = rng.choice(names)
        ctx_steps = [f"{name} is {script.role}.", f"{pron[0]} {_step(script, 0, variant, pron[2])}"]
        for j in range(1, k):
            ctx_steps.append(f"{rng.choice(_CONNECTIVES)} {pron[1]} "
                             f"{_step(script, j, variant, pron[2])}")
        ctx_a = " ".join(ctx_steps)
        ctx_b = f"{rng.choice(_CONNECTIVES).lower()} {pron[1]}"
        gold = _step(script, k, variant, pron[2])
        distractors: List[str] = []
        later = list(range(k + 1, len(script.steps)))
        if later and rng.random() < 0.5:   # a step of the same script, out of order
            distractors.append(_step(script, rng.choice(later), variant, pron[2]))
        others = [j for j in range(len(_SCRIPTS)) if j != s_i]
        rng.shuffle(others)
        for j in others:
            if len(distractors) == 3:
                break
            other = _SCRIPTS[j]
            text = _step(other, k, rng.choice(other.variants), pron[2])
            if text != gold and text not in distractors:
                distractors.append(text)
        endings = _place(gold, distractors, positions[i])
        items.append({
            "ind": i, "activity_label": script.label, "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b}", "endings": endings, "label": positions[i],
            "split": "val" if split == "val" else "train", "split_type": "indomain",
            "source_id": f"world~{script.label.lower().replace(' ', '_')}~{k}"})
    return items


# ----------------------------------------------------------------------------------
# reasoning: six inference patterns, answered from small closed sets
# ----------------------------------------------------------------------------------
# Every answer is a word of a small set the corpus uses thousands of times (colors,
# directions, numbers, comparatives, trades, seasons), never a name copied out of the
# question: byte-level models this small do not learn to copy names (nor, in a few
# minutes of training, words) out of the context, so such items measure nothing. Each
# item combines a new actor and a fact stated about them with a rule the corpus
# teaches through many other actors ("All glorks are red.", "A baker makes bread.",
# what "turns around" does); the gold value is balanced over its set within each
# pattern, so no answer prior beats chance.
_DIRECTIONS = ("north", "east", "south", "west")            # clockwise
_TURNS = (("right", 1), ("around", 2))
_KIND_COLORS = ("red", "blue", "green", "yellow", "black", "white", "grey", "brown")
_THINGS = ("apples", "coins", "eggs", "pears", "stones", "shells", "nuts", "plums")
_COUNT_OPS = (("finding one more than", "finds one more", 1),
              ("losing one of", "loses one", -1))
_CONVERSES = (("taller", "shorter"), ("older", "younger"), ("faster", "slower"),
              ("heavier", "lighter"), ("stronger", "weaker"))
_TRADES = (("baker", "bread"), ("smith", "horseshoes"), ("weaver", "cloth"),
           ("chandler", "candles"), ("potter", "pots"), ("brewer", "ale"),
           ("cooper", "barrels"), ("tailor", "coats"), ("cobbler", "shoes"),
           ("miller", "flour"))
_SEASONS = ("spring", "summer", "autumn", "winter")


@dataclass(frozen=True)
class _Reasoning:
    """One worked instance: the question, its answer, the distractor pool (most
    tempting first) and the same inference told as statements ending "So ..."."""
    stem: str
    gold: str
    distractors: Tuple[str, ...]
    told: str


def _others(rng, values, gold, first=()):
    """Distractors: ``first`` (the tempting ones), then the rest of the set shuffled."""
    rest = [v for v in values if v != gold and v not in first]
    rng.shuffle(rest)
    return tuple(first) + tuple(rest)


def _kind_colors(kinds: Sequence[str]) -> Dict[str, str]:
    """The world's rule "All <kind>s are <color>." for its first eight kinds."""
    return dict(zip(kinds, _KIND_COLORS))


def _r_kind_color(rng, g, names, kinds):
    """A is a K; all Ks are C (a rule the corpus teaches); so A is C."""
    a = rng.choice(names)
    kind, color = list(_kind_colors(kinds).items())[g % len(_KIND_COLORS)]
    return _Reasoning(f"What color is {a}, who is a {kind}?", color,
                      _others(rng, _KIND_COLORS, color),
                      f"{a} is a {kind}. All {kind}s are {color}. So {a} is {color}.")


def _r_turn(rng, g, names, kinds):
    """A faces D and turns; which way A faces now (the stated D is the trap)."""
    a = rng.choice(names)
    turn, k = _TURNS[(g // 4) % len(_TURNS)]
    gold = _DIRECTIONS[g % 4]
    start = _DIRECTIONS[(g - k) % 4]
    return _Reasoning(f"Which way does {a} face after turning {turn} from {start}?", gold,
                      _others(rng, _DIRECTIONS, gold, first=(start,)),
                      f"{a} faces {start}. Then {a} turns {turn}. So {a} faces {gold} now.")


def _r_count(rng, g, names, kinds):
    """A has N things and finds or loses one; how many now (the stated N is the trap)."""
    a, thing = rng.choice(names), rng.choice(_THINGS)
    gold = 1 + g % 8                                        # 1 .. 8
    doing, does, delta = _COUNT_OPS[(g // 8) % len(_COUNT_OPS)]
    n = gold - delta
    near = sorted((v for v in range(10) if v not in (gold, n)),
                  key=lambda v: (abs(v - gold), rng.random()))
    return _Reasoning(f"How many {thing} does {a} have after {doing} {n}?",
                      str(gold), (str(n),) + tuple(str(v) for v in near),
                      f"{a} has {n} {thing}. Then {a} {does}. So {a} has {gold} {thing} now.")


def _r_converse(rng, g, names, kinds):
    """A is Xer than B, so B is the converse of Xer than A."""
    a, b = rng.sample(names, 2)
    pair = _CONVERSES[(g // 2) % len(_CONVERSES)]
    gold, stated = pair[g % 2], pair[1 - g % 2]
    words = [w for p in _CONVERSES for w in p]
    return _Reasoning(f"What is {b}, next to {a} who is {stated}?", gold,
                      _others(rng, words, gold, first=(stated,)),
                      f"{a} is {stated} than {b}. So {b} is {gold} than {a}.")


def _r_trade(rng, g, names, kinds):
    """A is a <trade>; every <trade> makes <goods> (a rule the corpus teaches)."""
    a = rng.choice(names)
    trade, goods = _TRADES[g % len(_TRADES)]
    if (g // len(_TRADES)) % 2 == 0:
        return _Reasoning(f"What does {a} make, who is a {trade}?", goods,
                          _others(rng, [p for _, p in _TRADES], goods),
                          f"{a} is a {trade}. A {trade} makes {goods}. So {a} makes {goods}.")
    return _Reasoning(f"What is {a}, who makes {goods}?", f"a {trade}",
                      _others(rng, [f"a {t}" for t, _ in _TRADES], f"a {trade}"),
                      f"{a} makes {goods} for a living. So {a} is a {trade}.")


def _r_season(rng, g, names, kinds):
    """A sows in season S and harvests one season later: the next season."""
    a = rng.choice(names)
    gold = _SEASONS[g % 4]
    sown = _SEASONS[(g - 1) % 4]
    return _Reasoning(f"{a} harvests one season after sowing. When does {a} harvest, "
                      f"after sowing in {sown}?", f"in {gold}",
                      _others(rng, [f"in {s}" for s in _SEASONS], f"in {gold}",
                              first=(f"in {sown}",)),
                      f"{a} sows seeds in {sown}. {a} harvests one season later. "
                      f"So {a} harvests in {gold}.")


# name, pattern, length of its cycle of instance kinds g, number of gold values
# (the gold value is a function of g % that number)
_REASONING_PATTERNS = (("kind_color", _r_kind_color, len(_KIND_COLORS), len(_KIND_COLORS)),
                       ("turn", _r_turn, 4 * len(_TURNS), 4),
                       ("count", _r_count, 8 * len(_COUNT_OPS), 8),
                       ("converse", _r_converse, 4 * len(_CONVERSES), 2 * len(_CONVERSES)),
                       ("trade", _r_trade, 2 * len(_TRADES), 2 * len(_TRADES)),
                       ("season", _r_season, len(_SEASONS), len(_SEASONS)))


def _gold_cycle(rng, n_values: int, n_gold: int) -> List[int]:
    """One pass over the instance kinds 0..n_values-1 in blocks of n_gold that each
    hold every gold value once: any prefix is balanced over the gold values to +-1."""
    blocks = list(range(n_values // n_gold))
    rng.shuffle(blocks)
    out = []
    for b in blocks:
        block = [b * n_gold + j for j in range(n_gold)]
        rng.shuffle(block)
        out += block
    return out


def _reasoning_corpus(seed: int, spec: WorldSpec, names, kinds) -> List[str]:
    """Worked examples of every pattern with the corpus's own actors: mostly in the
    benchmark's Question/Answer form, some told as statements ("So ..."), plus the
    trades' rules stated as generics."""
    rng = _rng(seed, "corpus/reasoning")
    docs = []
    for pname, pattern, n_values, _ in _REASONING_PATTERNS:
        for i in range(spec.reasoning_examples):
            r = pattern(rng, rng.randrange(n_values), names, kinds)
            docs.append(f"Question: {r.stem}\nAnswer: {r.gold}" if rng.random() < 0.7
                        else r.told)
    for _ in range(max(2, spec.reasoning_examples // 10)):     # the rules, as generics
        rules = [f"A {t} makes {p}." for t, p in _TRADES]
        rules += [f"All {k}s are {c}." for k, c in _kind_colors(kinds).items()]
        rules += [f"After {s} comes {_SEASONS[(i + 1) % 4]}." for i, s in enumerate(_SEASONS)]
        rng.shuffle(rules)
        docs.append(" ".join(rules))
    rng.shuffle(docs)
    # a few examples per document, like a worksheet
    out, i = [], 0
    while i < len(docs):
        k = rng.randint(1, 4)
        out.append("\n\n".join(docs[i:i + k]))
        i += k
    return out


def _reasoning_items(seed: int, split: str, n_items: int, names, kinds) -> List[dict]:
    rng = _rng(seed, f"reasoning/{split}")
    raw = []
    golds: Dict[str, List[int]] = {}
    for i in range(n_items):
        pname, pattern, n_values, n_gold = _REASONING_PATTERNS[i % len(_REASONING_PATTERNS)]
        if not golds.get(pname):             # each pass uses every instance kind once
            golds[pname] = _gold_cycle(rng, n_values, n_gold)
        r = pattern(rng, golds[pname].pop(0), names, kinds)
        n_choices = (3, 4, 5)[(i // len(_REASONING_PATTERNS)) % 3]
        raw.append((pname, r.stem, r.gold, list(r.distractors[:n_choices - 1])))
    # exact balance of the gold position within each choice count
    by_n: Dict[int, List[int]] = {}
    for i, (_, _, _, d) in enumerate(raw):
        by_n.setdefault(len(d) + 1, []).append(i)
    position = [0] * n_items
    for n_choices in sorted(by_n):
        idx = by_n[n_choices]
        for i, p in zip(idx, _balanced_positions(rng, len(idx), n_choices)):
            position[i] = p
    items = []
    for i, (pname, stem, gold, distractors) in enumerate(raw):
        rng.shuffle(distractors)
        choices = _place(gold, distractors, position[i])
        labels = "12345" if rng.random() < 0.15 else LETTERS   # ARC has both kinds
        items.append({
            "id": f"World_{split}_{pname}_{i:05d}",
            "question": {"stem": stem,
                         "choices": [{"text": c, "label": labels[j]}
                                     for j, c in enumerate(choices)]},
            "answerKey": labels[position[i]]})
    return items


# ----------------------------------------------------------------------------------
# fine-tuning corpus: another domain (ledgers, recipes)
# ----------------------------------------------------------------------------------
_DISHES = ("stew", "porridge", "pie", "broth", "cakes", "bread", "pudding", "salad")
_INGREDIENTS = ("barley", "oats", "turnips", "beans", "onions", "apples", "carrots",
                "lentils", "flour", "milk", "butter", "honey", "cabbage", "peas")
_UNITS = ("cups", "spoons", "handfuls", "pinches", "jugs")
_ACTIONS = ("boil the {a} for {n} minutes", "stir in the {b}", "bake it for {n} minutes",
            "mash the {a}", "let it cool", "chop the {b} finely", "add a pinch of salt",
            "simmer it for {n} minutes", "pour it into a dish", "knead the {a} well")


def _finetune_corpus(seed: int, spec: WorldSpec, markets: Sequence[str]) -> List[str]:
    rng = _rng(seed, "corpus/finetune")
    docs = []
    for d in range(spec.finetune_docs):
        if rng.random() < 0.5:
            day = rng.randint(1, 360)
            lines = [f"ledger of {rng.choice(markets).lower()} market, day {day}"]
            balance = rng.randint(10, 90)
            lines.append(f"opening purse: {balance} coins")
            for _ in range(rng.randint(2, 5)):
                qty, price = rng.randint(1, 9), rng.randint(1, 9)
                good = rng.choice(_GOODS)
                if rng.random() < 0.5:
                    balance += qty * price
                    lines.append(f"  sold {qty} {good} at {price} = +{qty * price}")
                else:
                    balance -= qty * price
                    lines.append(f"  bought {qty} {good} at {price} = -{qty * price}")
            lines.append(f"closing purse: {balance} coins")
            docs.append("\n".join(lines))
        else:
            a, b = rng.sample(_INGREDIENTS, 2)
            lines = [f"recipe: {a} {rng.choice(_DISHES)}",
                     f"- {rng.randint(2, 5)} {rng.choice(_UNITS)} of {a}",
                     f"- {rng.randint(2, 5)} {rng.choice(_UNITS)} of {b}"]
            steps = [rng.choice(_ACTIONS).format(a=a, b=b, n=5 * rng.randint(1, 8))
                     for _ in range(rng.randint(2, 4))]
            lines += [f"{j + 1}) {s}" for j, s in enumerate(steps)]
            lines.append(f"serves {rng.randint(2, 8)}")
            docs.append("\n".join(lines))
    return docs


# ----------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------
def _write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def _jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _csv(rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows(rows)
    return buf.getvalue()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_args(seed, out_dir, size):
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir):
        raise TypeError(f"out_dir must be a path, got {out_dir!r}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir {os.fspath(out_dir)!r} exists and is not a directory")


def generate(seed: int = 0, out_dir: str = "world", size: str = "full") -> Dict[str, str]:
    """Write the world for ``seed`` into ``out_dir``; return the paths written.

    ``size`` is "full" (>= 2,000 items per benchmark) or "tiny" (~200 items, a small
    corpus: tests and ``--quick``). The same seed and size always give the same
    bytes. Returns a dict: ``pretrain``, ``finetune`` (text files), ``world_knowledge``,
    ``world_commonsense``, ``world_reasoning`` (benchmark folders), ``meta`` and
    ``manifest``.

    Example::

        >>> p = generate(0, "/tmp/w", size="tiny")
        >>> open(p["pretrain"]).read(40)  # doctest: +SKIP
    """
    _check_args(seed, out_dir, size)
    spec = SIZES[size]
    out_dir = os.fspath(out_dir)
    namer = _Namer(_rng(seed, "names"))
    facts = _build_facts(seed, spec, namer)
    corpus_people = namer.many("person", spec.people_pool)
    bench_people = namer.many("person", spec.people_pool)
    kinds = namer.many("kind", 12)
    markets = namer.many("market", 12)

    # -- corpora ---------------------------------------------------------------------
    pre_docs = (_knowledge_corpus(seed, spec, facts)
                + _commonsense_corpus(seed, spec, corpus_people)
                + _reasoning_corpus(seed, spec, corpus_people, kinds))
    _rng(seed, "corpus/order").shuffle(pre_docs)
    ft_docs = _finetune_corpus(seed, spec, markets)

    paths = {"pretrain": os.path.join(out_dir, "pretrain.txt"),
             "finetune": os.path.join(out_dir, "finetune.txt"),
             "world_knowledge": os.path.join(out_dir, "world_knowledge"),
             "world_commonsense": os.path.join(out_dir, "world_commonsense"),
             "world_reasoning": os.path.join(out_dir, "world_reasoning"),
             "meta": os.path.join(out_dir, "meta"),
             "manifest": os.path.join(out_dir, "manifest.json")}
    _write_text(paths["pretrain"], "\n\n".join(pre_docs) + "\n")
    _write_text(paths["finetune"], "\n\n".join(ft_docs) + "\n")

    # -- world_knowledge (MMLU CSV folders) --------------------------------------------
    counts: Dict[str, dict] = {}
    kitems = _knowledge_items(seed, spec, facts)
    item_meta = []
    counts["world_knowledge"] = {"test": 0, "dev": 0, "subjects": {}}
    for (split, subject), (rows, meta) in kitems.items():
        _write_text(os.path.join(paths["world_knowledge"], split, f"{subject}_{split}.csv"),
                    _csv(rows))
        item_meta += meta
        counts["world_knowledge"][split] += len(rows)
        counts["world_knowledge"]["subjects"].setdefault(subject, {})[split] = len(rows)
    counts["world_knowledge"]["facts"] = len(facts)
    _write_text(os.path.join(paths["meta"], "knowledge_facts.jsonl"),
                _jsonl([asdict(f) for f in facts]))
    _write_text(os.path.join(paths["meta"], "knowledge_items.jsonl"), _jsonl(item_meta))

    # -- world_commonsense (HellaSwag JSONL) -------------------------------------------
    cs = {"train": _commonsense_items(seed, "train", spec.commonsense_train, bench_people),
          "val": _commonsense_items(seed, "val", spec.commonsense_test, bench_people)}
    for split, rows in cs.items():
        _write_text(os.path.join(paths["world_commonsense"], f"hellaswag_{split}.jsonl"),
                    _jsonl(rows))
    counts["world_commonsense"] = {k: len(v) for k, v in cs.items()}

    # -- world_reasoning (ARC nested JSONL) -------------------------------------------
    rs = {split: _reasoning_items(seed, split, n, bench_people, kinds)
          for split, n in (("train", spec.reasoning_train), ("dev", spec.reasoning_dev),
                           ("test", spec.reasoning_test))}
    for split, rows in rs.items():
        _write_text(os.path.join(paths["world_reasoning"],
                                 f"World-Reasoning-{split.capitalize()}.jsonl"), _jsonl(rows))
    counts["world_reasoning"] = {k: len(v) for k, v in rs.items()}

    test_reasoning = rs["test"]
    chance = {"world_knowledge": 0.25, "world_commonsense": 0.25,
              "world_reasoning": round(sum(1.0 / len(r["question"]["choices"])
                                           for r in test_reasoning) / len(test_reasoning), 6)}

    # -- manifest ----------------------------------------------------------------------
    files = {}
    for root, _, names in sorted(os.walk(out_dir)):
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, out_dir).replace(os.sep, "/")
            if rel == "manifest.json" or rel.startswith("."):
                continue
            files[rel] = {"sha256": _sha256(full), "bytes": os.path.getsize(full)}
    manifest = {
        "generator": "hif8qat.world", "version": GENERATOR_VERSION, "seed": seed,
        "size": size, "spec": asdict(spec), "counts": counts, "chance": chance,
        "corpus": {"pretrain_documents": len(pre_docs), "finetune_documents": len(ft_docs),
                   "pretrain_bytes": files["pretrain.txt"]["bytes"],
                   "finetune_bytes": files["finetune.txt"]["bytes"]},
        "splits": {"world_knowledge": {"eval": "test", "fewshot": "dev"},
                   "world_commonsense": {"eval": "val", "fewshot": "train"},
                   "world_reasoning": {"eval": "test", "fewshot": "train"}},
        "files": files,
    }
    _write_text(paths["manifest"], json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return paths
