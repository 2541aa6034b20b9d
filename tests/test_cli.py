"""The command line: `hif8qat inspect` and the dispatcher's error handling."""
import os
import subprocess
import sys

import numpy as np
import pytest

import hif8qat as hq
from hif8qat.cli import error_report, main


def test_inspect_prints_the_code_table_and_error_report(capsys):
    assert main(["inspect", "--n", "4096"]) == 0
    out = capsys.readouterr().out
    row6 = next(line for line in out.splitlines() if line.strip().startswith("6_"))
    cells = row6.split()[1:]
    assert float(cells[0xE]) == 32768.0 and cells[0xF] == "inf"      # 0x6E, 0x6F
    assert "SQNR" in out and "est. amax/2" in out and hq.get_isa() in out


def test_error_report_numbers_are_real():
    rows = error_report(n=1 << 14, seed=1)
    by = {(r["data"], r["scaling"]): r for r in rows}
    good = by[("normal σ=1", "amax->fmax")]
    lag = by[("normal σ=1", "est. amax/2")]
    assert good["clipped"] == 0.0 and lag["clipped"] > 0      # a lagging estimate clips
    assert 28 < good["sqnr_db"] < 35                          # ~3 mantissa bits near fmax
    assert by[("normal σ=0.0001", "unscaled")]["zero_flushed"] > 0  # tiny data underflows unscaled


def test_python_dash_m_runs_the_same_command():
    r = subprocess.run([sys.executable, "-m", "hif8qat", "inspect", "--n", "1024"], capture_output=True, text=True)
    assert r.returncode == 0 and "HiF8 code table" in r.stdout


@pytest.mark.parametrize("argv", [["bogus"], ["inspect", "--n", "0"], ["inspect", "--n", "x"], []])
def test_bad_arguments_exit_2_with_one_line(argv):
    r = subprocess.run([sys.executable, "-m", "hif8qat", *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(("hif8qat", "usage"))


def test_inspect_a_model_directory_and_its_safetensors(tmp_path, capsys):
    cfg = hq.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    hq.LlamaModel.from_config(cfg, seed=0).save(str(tmp_path))
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj.weight" in out and "hidden_size=32" in out
    assert main(["inspect", str(tmp_path / "model.safetensors")]) == 0
    assert "12 tensors" in capsys.readouterr().out


def test_inspect_missing_or_corrupt_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 4)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("hif8qat inspect: error:") for e in err)
