"""A small, strictly validating reader and writer of the safetensors format (no pickle).

The format (https://huggingface.co/docs/safetensors): 8 bytes little-endian u64 N,
then N bytes of JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {str: str}}``, then one data buffer; offsets are relative to the
buffer, little-endian, C order. This reader checks everything it relies on: the
header length against the file size, the JSON, every entry's dtype, shape and offsets
(inside the buffer, matching the shape's byte size, not overlapping, no holes) and
raises ``ValueError`` naming the file, the tensor and the problem.

NumPy has no bfloat16, so BF16 tensors are read as uint16 and widened to float32 by a
16-bit shift (exact), and written from float32 with round-to-nearest-even.

Example::

    write_safetensors("w.safetensors", {"a": np.ones((2, 3), np.float32)}, dtype="BF16")
    tensors = read_safetensors("w.safetensors")   # {"a": float32 (2, 3)}
"""
from __future__ import annotations

import json
import os
import re
from typing import Optional

import numpy as np

# safetensors dtype name -> NumPy dtype of the stored bytes
DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024   # the reference implementation's limit
INDEX_NAME = "model.safetensors.index.json"


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact: bf16 is the top half of a float32)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN."""
    u = np.asarray(x, dtype=np.float32, order="C").view(np.uint32)  # keeps 0-d shape
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, (u >> np.uint32(16)) | np.uint32(0x0040), rounded)
    return rounded.astype(np.uint16)


def read_header(path) -> tuple[dict, dict, int]:
    """Parse and validate a safetensors header -> (entries, metadata, data_start).

    entries: {name: (dtype str, shape tuple, begin, end)} with offsets relative to the
    data buffer, which starts at byte ``data_start``.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size < 8:
        raise ValueError(f"{path}: not a safetensors file: {size} bytes, shorter than the "
                         "8-byte header length (truncated?)")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte "
                             "limit (corrupt file, or not safetensors)")
        if 8 + n > size:
            raise ValueError(f"{path}: header length {n} runs past the end of the file "
                             f"({size} bytes): truncated or corrupt")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"{path}: __metadata__ must map strings to strings")
    data_start = 8 + n
    buffer_size = size - data_start
    entries = {}
    for name, e in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(e, dict):
            raise ValueError(f"{where}: entry must be a JSON object")
        dtype = e.get("dtype")
        if dtype not in DTYPES:
            raise ValueError(f"{where}: unknown or unsupported dtype {dtype!r} "
                             f"(supported: {', '.join(DTYPES)})")
        shape = e.get("shape")
        if not isinstance(shape, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ValueError(f"{where}: shape must be a list of non-negative ints, got {shape!r}")
        offs = e.get("data_offsets")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(
                isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise ValueError(f"{where}: data_offsets must be [begin, end] ints, got {offs!r}")
        begin, end = offs
        if not 0 <= begin <= end:
            raise ValueError(f"{where}: data_offsets {offs} are not 0 <= begin <= end")
        if end > buffer_size:
            raise ValueError(f"{where}: data_offsets end {end} is past the data buffer "
                             f"({buffer_size} bytes): truncated or corrupt file")
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        if end - begin != nbytes:
            raise ValueError(f"{where}: data_offsets span {end - begin} bytes but dtype "
                             f"{dtype} and shape {shape} need {nbytes}")
        entries[name] = (dtype, tuple(shape), begin, end)
    # the buffer must be covered exactly: sorted by begin, each starts where the last ended
    pos, prev = 0, None
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin < pos:
            raise ValueError(f"{path}: tensor {name!r} data_offsets [{begin}, {end}] overlap "
                             f"tensor {prev!r} (which ends at {pos})")
        if begin > pos:
            raise ValueError(f"{path}: hole in the data buffer before tensor {name!r} "
                             f"(bytes {pos}..{begin} belong to no tensor)")
        pos, prev = end, name
    if pos != buffer_size:
        raise ValueError(f"{path}: data buffer is {buffer_size} bytes but the tensors cover "
                         f"{pos}: trailing bytes or a corrupt header")
    return entries, metadata, data_start


def read_safetensors(path, names=None, widen_bf16: bool = True) -> dict:
    """Read tensors -> {name: ndarray}. BF16 comes back as float32 (widened exactly)
    unless ``widen_bf16=False`` (then uint16 bits); F16/F32/F64 keep their dtype.

    ``names`` restricts the read to those tensors (a KeyError names a missing one).
    """
    path = os.fspath(path)
    entries, _, data_start = read_header(path)
    if names is None:
        names = list(entries)
    out = {}
    with open(path, "rb") as f:
        for name in names:
            if name not in entries:
                raise KeyError(f"{path}: no tensor named {name!r}")
            dtype, shape, begin, end = entries[name]
            arr = np.empty(shape, dtype=DTYPES[dtype])
            f.seek(data_start + begin)
            got = f.readinto(memoryview(arr.reshape(-1).view(np.uint8)))
            if got != end - begin:
                raise ValueError(f"{path}: tensor {name!r}: read {got} of {end - begin} bytes "
                                 "(file changed or truncated while reading)")
            if dtype == "BF16" and widen_bf16:
                arr = bf16_bits_to_f32(arr)
            elif arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("="))
            out[name] = arr
    return out


def _stored(name, arr, dtype):
    """(safetensors dtype, little-endian bytes-compatible array) for one tensor."""
    arr = np.asarray(arr)
    if dtype is None:
        if arr.dtype == np.float32:
            dtype = "F32"
        else:
            dtype = {v.str: k for k, v in DTYPES.items() if k != "BF16"}.get(
                arr.dtype.newbyteorder("<").str if arr.dtype.byteorder != "|" else arr.dtype.str)
            if dtype is None:
                raise TypeError(f"tensor {name!r}: cannot store dtype {arr.dtype} in safetensors")
    if dtype not in DTYPES:
        raise ValueError(f"tensor {name!r}: unknown safetensors dtype {dtype!r} "
                         f"(supported: {', '.join(DTYPES)})")
    if dtype == "BF16":
        if arr.dtype.kind != "f":
            raise TypeError(f"tensor {name!r}: BF16 output needs a floating array, got {arr.dtype}")
        data = f32_to_bf16_bits(arr.astype(np.float32, copy=False))
    else:
        data = np.asarray(arr, dtype=DTYPES[dtype], order="C")   # (ascontiguousarray makes 0-d 1-d)
    return dtype, data


def write_safetensors(path, tensors: dict, metadata: Optional[dict] = None,
                      dtype: Optional[str] = None) -> None:
    """Write {name: array} to ``path`` (atomically: a temp file, then rename).

    ``dtype`` (e.g. "F32", "BF16", "F16") converts every tensor; None keeps each array's
    own dtype. ``metadata`` must map str to str ({"format": "pt"} is what transformers
    expects and is the default).
    """
    path = os.fspath(path)
    if metadata is None:
        metadata = {"format": "pt"}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("metadata must map str to str")
    header = {"__metadata__": dict(metadata)}
    blobs = []
    offset = 0
    for name, arr in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        st_dtype, data = _stored(name, arr, dtype)
        nbytes = data.nbytes
        header[name] = {"dtype": st_dtype, "shape": list(data.shape),
                        "data_offsets": [offset, offset + nbytes]}
        blobs.append(data)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)          # keep the data buffer 8-byte aligned
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for data in blobs:
                f.write(memoryview(data.reshape(-1).view(np.uint8)))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_index(path) -> dict:
    """Read a sharded checkpoint's ``model.safetensors.index.json`` -> {tensor: shard file}."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            index = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise ValueError(f"{path}: needs a \"weight_map\" object mapping tensor names to "
                         "shard file names")
    for shard in set(wm.values()):
        if os.path.basename(shard) != shard or shard in (".", ".."):
            raise ValueError(f"{path}: shard name {shard!r} must be a plain file name")
    return wm


def read_checkpoint_dir(directory, widen_bf16: bool = True) -> tuple[dict, dict]:
    """All tensors of a HF directory (single file or sharded) -> (tensors, {name: stored dtype})."""
    directory = os.fspath(directory)
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, INDEX_NAME)
    if os.path.exists(index):
        weight_map = read_index(index)
        shards = {}
        for name, shard in weight_map.items():
            shards.setdefault(shard, []).append(name)
    elif os.path.exists(single):
        shards = {"model.safetensors": None}
    else:
        raise FileNotFoundError(f"{directory}: no model.safetensors or {INDEX_NAME} "
                                "(pickled pytorch_model.bin checkpoints are not read: "
                                "convert them to safetensors)")
    tensors, dtypes = {}, {}
    for shard, names in shards.items():
        shard_path = os.path.join(directory, shard)
        if not os.path.exists(shard_path):
            raise FileNotFoundError(f"{index}: shard {shard!r} is missing")
        entries, _, _ = read_header(shard_path)
        if names is not None:
            missing = [n for n in names if n not in entries]
            if missing:
                raise ValueError(f"{shard_path}: the index places {missing[0]!r} here but the "
                                 "shard does not contain it")
        for n in (names if names is not None else entries):
            dtypes[n] = entries[n][0]
        tensors.update(read_safetensors(shard_path, names=names, widen_bf16=widen_bf16))
    return tensors, dtypes


def write_checkpoint_dir(directory, tensors: dict, dtype: Optional[str] = None,
                         max_shard_bytes: Optional[int] = None) -> list:
    """Write tensors as ``model.safetensors``, or as shards + index when they exceed
    ``max_shard_bytes``. Returns the file names written."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    itemsize = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
    sizes = {n: np.asarray(a).size * (itemsize[dtype] if dtype in itemsize
                                      else np.asarray(a).dtype.itemsize)
             for n, a in tensors.items()}
    total = sum(sizes.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        write_safetensors(os.path.join(directory, "model.safetensors"), tensors, dtype=dtype)
        _remove_stale(directory, keep={"model.safetensors"})
        return ["model.safetensors"]
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be > 0, got {max_shard_bytes}")
    groups, cur, cur_size = [], [], 0
    for n in tensors:
        if cur and cur_size + sizes[n] > max_shard_bytes:
            groups.append(cur)
            cur, cur_size = [], 0
        cur.append(n)
        cur_size += sizes[n]
    groups.append(cur)
    files, weight_map = [], {}
    for i, names in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(os.path.join(directory, fname), {n: tensors[n] for n in names},
                          dtype=dtype)
        files.append(fname)
        weight_map.update({n: fname for n in names})
    with open(os.path.join(directory, INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")
    _remove_stale(directory, keep=set(files) | {INDEX_NAME})
    return files + [INDEX_NAME]


_OUR_FILES = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$")


def _remove_stale(directory, keep):
    """Delete weight files an earlier save left in ``directory`` (a stale index or shard
    would otherwise be read instead of, or mixed with, the new weights)."""
    for name in os.listdir(directory):
        if _OUR_FILES.match(name) and name not in keep:
            os.remove(os.path.join(directory, name))
