"""Atomic, verified, multi-file training checkpoints.

Layout of a run directory::

    run_dir/checkpoints/
        latest                    one line: the name of the newest complete checkpoint
        step_000100/
            manifest.json         size and SHA-256 of every other file (checked on load)
            model/config.json     the weights, Hugging Face layout (model.save)
            model/model.safetensors
            optimizer.npz         AdamW moments m, v (float32, flat)
            scalers.json          every DelayedScaler's state_dict (history, scale, counters)
            trainer_state.json    step, data position, RNG state, optimizer step count,
                                  saturation counters
            config.toml           the run's resolved TrainConfig

A checkpoint is several files, so it is made atomic as a whole: everything is
written into a temporary directory beside the final one, each file and the
directory are fsync'ed, the directory is renamed into place (one atomic rename on
POSIX), its parent is fsync'ed, and only then is ``latest`` replaced, itself
through a temporary file and ``os.replace``. A process killed at any point leaves
``latest`` naming a complete checkpoint (or no ``latest`` at all before the first
save). Leftover temporary directories are removed by the next save.

Nothing is pickled: arrays go to ``.npz`` read with ``allow_pickle=False``, the rest
to JSON, where Python floats round-trip exactly (float32 values widen to float64
exactly and back).

Example::

    path = write_checkpoint(run_dir + "/checkpoints", "step_000010",
                            lambda tmp: open(os.path.join(tmp, "a.txt"), "w").write("x"))
    verify_checkpoint(path)       # raises CheckpointError when a file is damaged
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid

import numpy as np

MANIFEST = "manifest.json"
LATEST = "latest"
FORMAT = "hif8qat-checkpoint"
VERSION = 1
_TMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, damaged, or does not fit this run."""


# -- small durable-write helpers ---------------------------------------------------------
def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old or the new file, whole."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _walk_files(root: str):
    """Relative paths (with '/') of every regular file under root, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


# -- the atomic save -------------------------------------------------------------------
def write_checkpoint(checkpoints_dir: str, name: str, write_files, *,
                     metadata: dict | None = None, keep: int | None = None) -> str:
    """Write a checkpoint atomically and point ``latest`` at it; return its path.

    ``write_files(tmp_dir)`` writes the checkpoint's files into ``tmp_dir``. Then a
    manifest (sizes + SHA-256) is added, everything is fsync'ed, the directory is
    renamed to ``checkpoints_dir/name`` and ``latest`` is replaced. If a checkpoint
    called ``name`` already exists and verifies, it is kept as it is (a step's state
    is a function of the run, so re-saving the same step would write the same
    bytes) and only ``latest`` is updated. ``keep``: how many newest checkpoints to
    keep; older ones are deleted after ``latest`` moved on.
    """
    os.makedirs(checkpoints_dir, exist_ok=True)
    _remove_stale_temporaries(checkpoints_dir)
    final = os.path.join(checkpoints_dir, name)
    if os.path.isdir(final):
        try:
            verify_checkpoint(final)
        except CheckpointError:
            raise CheckpointError(f"{final} exists but does not verify; move it away "
                                  "before saving this step again") from None
    else:
        tmp = os.path.join(checkpoints_dir, f"{_TMP_PREFIX}{name}-{os.getpid()}-"
                                            f"{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        try:
            write_files(tmp)
            files = {}
            for rel in _walk_files(tmp):
                p = os.path.join(tmp, rel)
                _fsync_file(p)
                files[rel] = {"size": os.path.getsize(p), "sha256": sha256_file(p)}
            manifest = {"format": FORMAT, "version": VERSION, "name": name,
                        "metadata": metadata or {}, "files": files}
            with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            for dirpath, _, _ in os.walk(tmp):
                _fsync_dir(dirpath)
        except BaseException:
            # a failed save leaves no half-written directory behind (a killed process
            # leaves one, which the next save removes); `latest` never moved
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.rename(tmp, final)
        _fsync_dir(checkpoints_dir)
    atomic_write_text(os.path.join(checkpoints_dir, LATEST), name + "\n")
    if keep is not None:
        prune_checkpoints(checkpoints_dir, keep)
    return final


def _remove_stale_temporaries(checkpoints_dir: str) -> None:
    for entry in os.listdir(checkpoints_dir):
        if entry.startswith(_TMP_PREFIX):
            shutil.rmtree(os.path.join(checkpoints_dir, entry), ignore_errors=True)


def list_checkpoints(checkpoints_dir: str) -> list:
    """Names of the complete checkpoints (those with a manifest), oldest first."""
    if not os.path.isdir(checkpoints_dir):
        return []
    names = [e for e in os.listdir(checkpoints_dir)
             if not e.startswith(_TMP_PREFIX) and e != LATEST
             and os.path.isfile(os.path.join(checkpoints_dir, e, MANIFEST))]
    return sorted(names)


def prune_checkpoints(checkpoints_dir: str, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints; never the one ``latest`` names."""
    latest = read_latest_name(checkpoints_dir)
    names = list_checkpoints(checkpoints_dir)
    for name in names[:max(0, len(names) - keep)]:
        if name != latest:
            shutil.rmtree(os.path.join(checkpoints_dir, name), ignore_errors=True)


def read_latest_name(checkpoints_dir: str):
    """The name ``latest`` points at, or None when there is no ``latest`` yet."""
    p = os.path.join(checkpoints_dir, LATEST)
    if not os.path.isfile(p):
        return None
    with open(p, "r", encoding="utf-8") as fh:
        name = fh.read().strip()
    if not name or "/" in name or os.sep in name or name.startswith("."):
        raise CheckpointError(f"{p} is damaged (holds {name!r}); list the checkpoints in "
                              f"{checkpoints_dir} and resume from one by name")
    return name


def latest_checkpoint(checkpoints_dir: str) -> str:
    """Path of the checkpoint ``latest`` names (CheckpointError when there is none)."""
    name = read_latest_name(checkpoints_dir)
    if name is None:
        raise CheckpointError(f"no checkpoint in {checkpoints_dir} (no 'latest' pointer): "
                              "the run saved none yet")
    return os.path.join(checkpoints_dir, name)


def verify_checkpoint(path: str) -> dict:
    """Check the manifest: every file present with its size and SHA-256. -> manifest."""
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with open(mpath, "r", encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST}: incomplete "
                              "(interrupted save?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mpath} is damaged: {e}") from None
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT
            or not isinstance(manifest.get("files"), dict)):
        raise CheckpointError(f"{mpath} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {manifest.get('version')} "
                              f"is not supported (this hif8qat reads version {VERSION})")
    for rel, info in manifest["files"].items():
        p = os.path.join(path, *rel.split("/"))
        if not os.path.isfile(p):
            raise CheckpointError(f"checkpoint {path} is damaged: {rel} is missing")
        size = os.path.getsize(p)
        if size != info.get("size"):
            raise CheckpointError(f"checkpoint {path} is damaged: {rel} has {size} bytes, "
                                  f"the manifest says {info.get('size')}")
        if sha256_file(p) != info.get("sha256"):
            raise CheckpointError(f"checkpoint {path} is damaged: {rel} fails its SHA-256 "
                                  "check")
    return manifest


# -- JSON for state dicts with NumPy values -------------------------------------------------
def to_jsonable(obj):
    """Nested dict/list with NumPy arrays and scalars -> JSON-safe, dtype-tagged values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot checkpoint an array of dtype {obj.dtype}")
        return {"__ndarray__": obj.ravel().tolist(), "dtype": obj.dtype.str,
                "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {"__npscalar__": obj.item(), "dtype": obj.dtype.str}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}")


def from_jsonable(obj):
    """Inverse of to_jsonable (arrays and NumPy scalars come back with their dtype)."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=np.dtype(obj["dtype"])).reshape(
                obj["shape"])
        if "__npscalar__" in obj:
            return np.dtype(obj["dtype"]).type(obj["__npscalar__"])
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    return obj


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(to_jsonable(obj), fh, indent=1, sort_keys=True, allow_nan=True)


def read_json(path: str):
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return from_jsonable(json.load(fh))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is damaged: {e}") from None


# -- the training state ----------------------------------------------------------------------
def save_training_checkpoint(checkpoints_dir: str, step: int, *, model, optimizer_state: dict,
                             scaler_state: dict | None, trainer_state: dict,
                             config_toml: str, keep: int | None = None) -> str:
    """Write everything a bit-identical resume needs as checkpoint ``step_{step:06d}``."""
    def write_files(tmp):
        model.save(os.path.join(tmp, "model"))
        arrays = {k: v for k, v in optimizer_state.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in optimizer_state.items() if not isinstance(v, np.ndarray)}
        with open(os.path.join(tmp, "optimizer.npz"), "wb") as fh:
            np.savez(fh, **arrays)
        write_json(os.path.join(tmp, "optimizer.json"), scalars)
        if scaler_state is not None:
            write_json(os.path.join(tmp, "scalers.json"), scaler_state)
        write_json(os.path.join(tmp, "trainer_state.json"), trainer_state)
        with open(os.path.join(tmp, "config.toml"), "w", encoding="utf-8") as fh:
            fh.write(config_toml)

    return write_checkpoint(checkpoints_dir, f"step_{step:06d}", write_files,
                            metadata={"step": int(step)}, keep=keep)


def load_training_checkpoint(path: str) -> dict:
    """Verify and read a checkpoint written by save_training_checkpoint.

    Returns dict(step, model_dir, optimizer (arrays + scalars), scalers (or None),
    trainer_state, config_toml). The weights stay on disk (``model_dir``) for the
    model's own loader.
    """
    manifest = verify_checkpoint(path)
    files = manifest["files"]
    for required in ("optimizer.npz", "optimizer.json", "trainer_state.json", "config.toml"):
        if required not in files:
            raise CheckpointError(f"checkpoint {path} lacks {required}")
    try:
        with np.load(os.path.join(path, "optimizer.npz"), allow_pickle=False) as z:
            optimizer = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}/optimizer.npz is unreadable: {e}") from None
    optimizer.update(read_json(os.path.join(path, "optimizer.json")))
    scalers = None
    if "scalers.json" in files:
        scalers = read_json(os.path.join(path, "scalers.json"))
    trainer_state = read_json(os.path.join(path, "trainer_state.json"))
    with open(os.path.join(path, "config.toml"), "r", encoding="utf-8") as fh:
        config_toml = fh.read()
    return {"step": int(manifest.get("metadata", {}).get("step", trainer_state.get("step", 0))),
            "model_dir": os.path.join(path, "model"), "optimizer": optimizer,
            "scalers": scalers, "trainer_state": trainer_state, "config_toml": config_toml}
