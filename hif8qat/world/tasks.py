"""The world's benchmarks as built-in task names for ``hq.evaluate``.

Importing this module registers, with the evaluator's registry
(:func:`hif8qat.eval.tasks.register_task`):

=======================  =====================  ==============================
name                     format                 files
=======================  =====================  ==============================
``world_knowledge``      ``mmlu_continuation``  ``world_knowledge/{dev,test}/``
``world_commonsense``    ``hellaswag``          ``world_commonsense/hellaswag_val.jsonl``
``world_reasoning``      ``arc``                ``world_reasoning/World-Reasoning-Test.jsonl``
=======================  =====================  ==============================

and the same names with a ``_tiny`` suffix for the tiny world (``--quick`` runs).
Nothing is generated at import: the world is written the first time a task is
loaded, into a cache folder, and reused after that (a world is a few MB and takes
about a second to write). The cache folder is ``$HIF8QAT_CACHE/world-v{version}-
seed{seed}-{size}`` or, without that variable, ``~/.cache/hif8qat/...``; the seed of
the registered names is ``$HIF8QAT_WORLD_SEED`` (default 0).

Example::

    >>> import hif8qat.world.tasks as wt
    >>> root = wt.world_dir(seed=0, size="tiny")          # generated once, then cached
    >>> wt.task_specs(seed=0, size="tiny")["world_reasoning"]  # doctest: +ELLIPSIS
    'arc:.../world_reasoning/World-Reasoning-Test.jsonl'
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

from .generate import GENERATOR_VERSION, SIZES, generate

TASK_NAMES = ("world_knowledge", "world_commonsense", "world_reasoning")
TASK_FORMATS = {"world_knowledge": "mmlu_continuation", "world_commonsense": "hellaswag",
                "world_reasoning": "arc"}


def cache_root() -> str:
    """Folder that holds generated worlds: $HIF8QAT_CACHE or ~/.cache/hif8qat."""
    root = os.environ.get("HIF8QAT_CACHE")
    if not root:
        root = os.path.join(os.path.expanduser("~"), ".cache", "hif8qat")
    return root


def default_seed() -> int:
    raw = os.environ.get("HIF8QAT_WORLD_SEED", "0")
    try:
        seed = int(raw)
    except ValueError:
        raise ValueError(f"HIF8QAT_WORLD_SEED must be a non-negative integer, got {raw!r}") \
            from None
    if seed < 0:
        raise ValueError(f"HIF8QAT_WORLD_SEED must be a non-negative integer, got {raw!r}")
    return seed


def verify_world(root: str) -> bool:
    """True when ``root`` holds a complete world whose files match its manifest
    (same generator version, every listed file present with the listed sha256)."""
    path = os.path.join(root, "manifest.json")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return False
    if manifest.get("version") != GENERATOR_VERSION or not manifest.get("files"):
        return False
    for rel, info in manifest["files"].items():
        full = os.path.join(root, rel)
        try:
            if os.path.getsize(full) != info["bytes"]:
                return False
            h = hashlib.sha256()
            with open(full, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except (OSError, KeyError, TypeError):
            return False
        if h.hexdigest() != info.get("sha256"):
            return False
    return True


def world_dir(seed: int | None = None, size: str = "full", cache_dir: str | None = None) -> str:
    """Path of the generated world (seed, size), generating it on first use.

    A damaged or outdated cached world is regenerated. Generation writes to a
    temporary folder that is renamed into place, so concurrent processes never see a
    half-written world.
    """
    if seed is None:
        seed = default_seed()
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    base = cache_dir or cache_root()
    final = os.path.join(base, f"world-v{GENERATOR_VERSION}-seed{seed}-{size}")
    if verify_world(final):
        return final
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".world-{seed}-{size}-", dir=base)
    try:
        generate(seed, tmp, size=size)
        if os.path.exists(final):        # stale or damaged: replace it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:                  # another process put a world there first
            if not verify_world(final):
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def task_paths(root: str) -> dict:
    """{task name: path handed to the loader} for a world folder."""
    return {"world_knowledge": os.path.join(root, "world_knowledge"),
            "world_commonsense": os.path.join(root, "world_commonsense", "hellaswag_val.jsonl"),
            "world_reasoning": os.path.join(root, "world_reasoning",
                                            "World-Reasoning-Test.jsonl")}


def task_specs(seed: int | None = None, size: str = "full", root: str | None = None) -> dict:
    """{task name: "FORMAT:PATH" spec string} for the world (generated if needed),
    usable anywhere a task spec is accepted (``hq.evaluate``, ``hif8qat eval --tasks``)."""
    root = root or world_dir(seed, size)
    return {name: f"{TASK_FORMATS[name]}:{path}" for name, path in task_paths(root).items()}


def register_world_tasks() -> None:
    """Register world_* (full world) and world_*_tiny with the evaluator's registry.
    Paths are callables, so nothing is generated until a task is loaded."""
    from ..eval.tasks import register_task

    for size, suffix in (("full", ""), ("tiny", "_tiny")):
        for name in TASK_NAMES:
            def path(name=name, size=size):
                return task_paths(world_dir(None, size))[name]
            register_task(name + suffix, TASK_FORMATS[name], path)


register_world_tasks()


def knowledge_fact_ids(sources):
    """The fact each world_knowledge item probes, from its ``source`` ("file:line"), or
    None when the sources are not a generated world's knowledge items.

    About twelve items probe each fact (forward, inverse and held-out wordings), so they
    are not independent: a paired bootstrap should resample facts, not items
    (``paired_bootstrap(..., groups=knowledge_fact_ids(sources))``).
    """
    sources = list(sources)
    if not sources:
        return None
    tables = {}
    out = []
    for src in sources:
        path, _, line = str(src).rpartition(":")
        split_dir = os.path.dirname(path)                      # .../world_knowledge/test
        root = os.path.dirname(os.path.dirname(split_dir))
        split = os.path.basename(split_dir)
        name = os.path.basename(path)
        suffix = f"_{split}.csv"
        if not line.isdigit() or not name.endswith(suffix) or \
                os.path.basename(os.path.dirname(split_dir)) != "world_knowledge":
            return None
        if root not in tables:
            meta = os.path.join(root, "meta", "knowledge_items.jsonl")
            if not os.path.isfile(meta):
                return None
            with open(meta, encoding="utf-8") as fh:
                tables[root] = {(r["split"], r["subject"], r["row"]): r["fact_id"]
                                for r in map(json.loads, fh) if r}
        fact = tables[root].get((split, name[:-len(suffix)], int(line) - 1))
        if fact is None:
            return None
        out.append(int(fact))
    return out
