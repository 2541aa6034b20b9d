"""The strict safetensors reader/writer: round trips, BF16 widening, and clear errors on
corrupt files (truncated, header past EOF, unknown dtype, overlapping offsets, holes)."""
import json
import struct

import numpy as np
import pytest

from hif8qat.model.safetensors_io import (
    bf16_bits_to_f32, f32_to_bf16_bits, read_checkpoint_dir, read_header, read_safetensors,
    write_checkpoint_dir, write_safetensors,
)


def raw_file(path, header: dict, data: bytes, header_len=None):
    """Write a hand-made safetensors file (header JSON + data) for error tests."""
    raw = json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def test_round_trip_keeps_values_dtypes_and_shapes(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32),
               "b.f16": rng.standard_normal(7).astype(np.float16),
               "c.f64": rng.standard_normal((2, 2, 2)),
               "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
               "empty": np.zeros((0, 4), np.float32),
               "scalar": np.array(3.5, np.float32)}
    write_safetensors(tmp_path / "x.safetensors", tensors)
    back = read_safetensors(tmp_path / "x.safetensors")
    assert list(back) == list(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


def test_file_is_readable_by_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_safetensors(tmp_path / "x.safetensors", {"w": x, "h": x[0].astype(np.float16)})
    back = st.load_file(str(tmp_path / "x.safetensors"))
    np.testing.assert_array_equal(back["w"], x)
    # and the other way round
    st.save_file({"z": x * 2}, str(tmp_path / "y.safetensors"))
    np.testing.assert_array_equal(read_safetensors(tmp_path / "y.safetensors")["z"], x * 2)


def test_bf16_is_widened_exactly_by_a_16_bit_shift():
    bits = np.arange(0, 1 << 16, dtype=np.uint32).astype(np.uint16)
    wide = bf16_bits_to_f32(bits)
    assert wide.dtype == np.float32
    np.testing.assert_array_equal(wide.view(np.uint32) >> 16, bits.astype(np.uint32))
    assert not (wide.view(np.uint32) & 0xFFFF).any()


def test_bf16_write_rounds_to_nearest_even_and_keeps_nan():
    one = np.float32(1.0)
    ulp = np.float32(2.0 ** -7)          # bf16 spacing at 1.0
    x = np.array([one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2 ** -20,
                  -(one + ulp / 2), np.nan, np.inf, -np.inf, 3.4e38, 3.0e38], np.float32)
    got = bf16_bits_to_f32(f32_to_bf16_bits(x))
    assert got[0] == 1.0                              # tie to even (down)
    assert got[1] == one + 2 * ulp                     # tie to even (up)
    assert got[2] == one + ulp                         # above the tie: up
    assert got[3] == -1.0
    assert np.isnan(got[4]) and got[5] == np.inf and got[6] == -np.inf
    assert np.isinf(got[7])                            # past bf16 max + half ulp: inf
    assert abs(got[8] - 3.0e38) <= 3.0e38 * 2.0 ** -8


def test_bf16_rounding_matches_ml_dtypes_on_random_bit_patterns():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bits = np.random.default_rng(5).integers(0, 1 << 32, size=200_000, dtype=np.uint64)
    x = bits.astype(np.uint32).view(np.float32)
    x = x[~np.isnan(x)]
    ref = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(f32_to_bf16_bits(x), ref)


def test_bf16_file_round_trip(tmp_path):
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    write_safetensors(tmp_path / "b.safetensors", {"w": x}, dtype="BF16")
    entries, meta, _ = read_header(tmp_path / "b.safetensors")
    assert entries["w"][0] == "BF16" and meta == {"format": "pt"}
    back = read_safetensors(tmp_path / "b.safetensors")["w"]
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, bf16_bits_to_f32(f32_to_bf16_bits(x)))
    assert np.abs(back - x).max() <= np.abs(x).max() * 2.0 ** -8


def test_sharded_directory_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {f"t{i}": rng.standard_normal((10, 10)).astype(np.float32) for i in range(5)}
    files = write_checkpoint_dir(tmp_path, tensors, max_shard_bytes=900)
    assert "model.safetensors.index.json" in files and len(files) == 4
    back, dtypes = read_checkpoint_dir(tmp_path)
    assert set(back) == set(tensors) and set(dtypes.values()) == {"F32"}
    for k in tensors:
        np.testing.assert_array_equal(back[k], tensors[k])


def test_index_naming_a_tensor_its_shard_lacks_is_an_error(tmp_path):
    write_checkpoint_dir(tmp_path, {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)},
                         max_shard_bytes=12)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["c"] = index["weight_map"]["a"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="'c'"):
        read_checkpoint_dir(tmp_path)


def test_index_shard_outside_directory_is_rejected(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../evil.safetensors"}}))
    with pytest.raises(ValueError, match="plain file name"):
        read_checkpoint_dir(tmp_path)


def test_missing_checkpoint_says_pickles_are_not_read(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(FileNotFoundError, match="not read"):
        read_checkpoint_dir(tmp_path)


# ------------------------------------------------------------------ corrupt files
def test_file_shorter_than_length_prefix(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="shorter than the 8-byte"):
        read_safetensors(tmp_path / "x.safetensors")


def test_header_length_past_eof(tmp_path):
    p = raw_file(tmp_path / "x.safetensors", {}, b"", header_len=10_000)
    with pytest.raises(ValueError, match="past the end of the file"):
        read_safetensors(p)


def test_absurd_header_length(tmp_path):
    p = raw_file(tmp_path / "x.safetensors", {}, b"", header_len=1 << 60)
    with pytest.raises(ValueError, match="exceeds"):
        read_header(p)


def test_header_not_json(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(ValueError, match="not valid UTF-8 JSON"):
        read_header(p)


def test_truncated_data_buffer(tmp_path):
    x = np.arange(16, dtype=np.float32)
    write_safetensors(tmp_path / "x.safetensors", {"w": x})
    full = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(full[:-5])
    with pytest.raises(ValueError, match=r"'w'.*past the data buffer.*truncated"):
        read_safetensors(tmp_path / "x.safetensors")


def test_unknown_dtype_names_the_tensor(tmp_path):
    p = raw_file(tmp_path / "x.safetensors",
                 {"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0\0")
    with pytest.raises(ValueError, match=r"'w'.*unknown or unsupported dtype 'F8_E4M3'"):
        read_safetensors(p)


def test_overlapping_offsets(tmp_path):
    p = raw_file(tmp_path / "x.safetensors",
                 {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12))
    with pytest.raises(ValueError, match="overlap"):
        read_safetensors(p)


def test_hole_in_data_buffer(tmp_path):
    p = raw_file(tmp_path / "x.safetensors",
                 {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8))
    with pytest.raises(ValueError, match="hole"):
        read_safetensors(p)


def test_trailing_bytes_after_last_tensor(tmp_path):
    p = raw_file(tmp_path / "x.safetensors",
                 {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(9))
    with pytest.raises(ValueError, match="trailing bytes"):
        read_safetensors(p)


def test_offsets_disagreeing_with_shape(tmp_path):
    p = raw_file(tmp_path / "x.safetensors",
                 {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(ValueError, match="need 12"):
        read_safetensors(p)


@pytest.mark.parametrize("entry, msg", [
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "shape"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "begin <= end"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, "data_offsets"),
    ("nope", "JSON object"),
])
def test_malformed_entries(tmp_path, entry, msg):
    p = raw_file(tmp_path / "x.safetensors", {"a": entry}, bytes(4))
    with pytest.raises(ValueError, match=msg):
        read_safetensors(p)


def test_writer_rejects_unknown_dtype_and_object_arrays(tmp_path):
    with pytest.raises(ValueError, match="unknown safetensors dtype"):
        write_safetensors(tmp_path / "x.safetensors", {"a": np.ones(2)}, dtype="F12")
    with pytest.raises(TypeError, match="cannot store"):
        write_safetensors(tmp_path / "x.safetensors", {"a": np.array(["s"], dtype=object)})
    assert not (tmp_path / "x.safetensors").exists()
