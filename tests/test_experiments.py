"""Demo, ablation grids, reports and the eval command line (issue 9).

The end-to-end tests run ``hif8qat demo --quick`` once (module fixture, a private cache
folder) and check its table against the runs' own files, recomputed here from scratch:
accuracies from eval.json's per-item scores, loss APE from the two log.jsonl files,
saturation events from the per-scaler clipped fractions of the log.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from hif8qat.experiments import ablate, demo, eval_cli, plots
from hif8qat.experiments import report as rep

TASKS = ("world_knowledge", "world_commonsense", "world_reasoning")


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hq-cache"))
    old = os.environ.get("HIF8QAT_CACHE")
    os.environ["HIF8QAT_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("HIF8QAT_CACHE", None)
    else:
        os.environ["HIF8QAT_CACHE"] = old


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory, cache_dir):
    out = str(tmp_path_factory.mktemp("demo") / "quick")
    rc = demo.main_demo(["--quick", "--out", out, "--cache-dir", cache_dir,
                         "--no-progress", "--no-plots"])
    assert rc == 0
    with open(os.path.join(out, "report.json"), encoding="utf-8") as fh:
        saved = json.load(fh)
    return out, saved


def _read_log(path):
    with open(os.path.join(path, "log.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _read_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _ape(run_log, ref_log, qat_only):
    """Independent loss APE: pair the losses step by step, in float64."""
    ref = {r["step"]: r["loss"] for r in ref_log}
    terms = [abs(r["loss"] - ref[r["step"]]) / ref[r["step"]] for r in run_log
             if (not qat_only or r["phase"] == "qat")]
    return 100 * sum(terms) / len(terms)


# ------------------------------------------------------------------------ the demo
def test_demo_quick_writes_seven_runs_with_matched_references(quick_demo):
    out, saved = quick_demo
    names = [r["name"] for r in saved["rows"]]
    assert names == ["P0-pretrained-bf16", "P1-ptq-hif8", "R0-bf16", "R1-final",
                     "R2-most-recent", "R3-aggressive", "R4-bf16-aggressive"]
    refs = {r["name"]: r["reference"] for r in saved["rows"]}
    assert refs == {"P0-pretrained-bf16": None, "P1-ptq-hif8": "P0-pretrained-bf16",
                    "R0-bf16": None, "R1-final": "R0-bf16", "R2-most-recent": "R0-bf16",
                    "R3-aggressive": "R4-bf16-aggressive", "R4-bf16-aggressive": "R0-bf16"}
    assert saved["tasks"] == list(TASKS)
    for name in names[2:]:
        d = os.path.join(out, name)
        for f in ("config.toml", "log.jsonl", "summary.json", "eval.json", "report.md"):
            assert os.path.isfile(os.path.join(d, f)), (name, f)
        assert os.path.isdir(os.path.join(d, "checkpoints"))
    assert os.path.isfile(os.path.join(out, "report.md"))
    # the one-knob differences between the runs, read back from their resolved configs
    from hif8qat.train import TrainConfig
    cfg = {n: TrainConfig.from_toml(os.path.join(out, n, "config.toml")) for n in names[2:]}
    diff = lambda a, b: {d for d in cfg[a].differences(cfg[b]) if d != "run_dir"}  # noqa: E731
    assert diff("R1-final", "R2-most-recent") == {"activation.algo", "weight.algo"}
    assert diff("R1-final", "R3-aggressive") == {"lr"}
    assert diff("R0-bf16", "R4-bf16-aggressive") == {"lr"}
    assert diff("R0-bf16", "R1-final") <= {"precision", "activation.algo", "activation.window",
                                           "weight.algo", "weight.window"}
    assert cfg["R1-final"].bf16_warmup_steps > 0 and cfg["R1-final"].activation.algo == "max"


def test_demo_table_values_match_the_runs_own_files(quick_demo):
    out, saved = quick_demo
    rows = {r["name"]: r for r in saved["rows"]}
    for name, row in rows.items():
        ev = _read_json(os.path.join(out, name, "eval.json"))
        for t in TASKS:
            correct = ev["tasks"][t]["items"]["correct"]
            assert row[f"acc_{t}"] == pytest.approx(100 * np.mean(correct), abs=1e-9)
            assert row[f"n_{t}"] == len(correct) > 0
            # the evaluator's own metric agrees with the per-item scores
            assert ev["tasks"][t]["acc"] == pytest.approx(np.mean(correct), abs=1e-12)
        ref = row["reference"]
        for t in TASKS:
            if ref is None:
                assert row[f"drop_{t}"] is None
                continue
            drop = rows[ref][f"acc_{t}"] - row[f"acc_{t}"]
            assert row[f"drop_{t}"] == pytest.approx(drop, abs=1e-9)
            assert row[f"drop_low_{t}"] <= row[f"drop_{t}"] + 1e-9 <= row[f"drop_high_{t}"] + 2e-9
            if rows[ref][f"acc_{t}"] > 0:
                assert row[f"rel_drop_{t}"] == pytest.approx(100 * drop / rows[ref][f"acc_{t}"])
    # loss APE, recomputed from the two logs
    for name in ("R1-final", "R2-most-recent", "R3-aggressive"):
        run_log = _read_log(os.path.join(out, name))
        ref_log = _read_log(os.path.join(out, rows[name]["reference"]))
        assert [r["step"] for r in run_log] == [r["step"] for r in ref_log]
        assert [r["lr"] for r in run_log] == [r["lr"] for r in ref_log]  # one schedule
        assert rows[name]["ape_qat"] == pytest.approx(_ape(run_log, ref_log, True), rel=1e-12)
        assert rows[name]["ape_all"] == pytest.approx(_ape(run_log, ref_log, False), rel=1e-12)
        # the warm-up runs in bf16 like the baseline, so its steps are bit-identical there
        warm = [r for r in run_log if r["phase"] == "bf16_warmup"]
        assert warm and all(r["loss"] == ref_log[r["step"] - 1]["loss"] for r in warm)
        # saturation events: QAT steps x scalers that clipped, from the per-scaler fields
        events = sum(1 for r in run_log if r["phase"] == "qat"
                     for s in r["scalers"].values() if s["clipped_fraction"] > 0)
        assert rows[name]["saturation_events"] == events
        summary = _read_json(os.path.join(out, name, "summary.json"))
        assert summary["saturation"]["events"] == events
        assert rows[name]["train_time_s"] == summary["wall_time_s"]
    for name in ("R0-bf16", "P0-pretrained-bf16", "P1-ptq-hif8"):
        assert rows[name]["ape_qat"] is None
    # knowledge items share facts: the interval is the cluster bootstrap over facts
    from hif8qat.eval import paired_bootstrap
    from hif8qat.world.tasks import knowledge_fact_ids
    r1 = _read_json(os.path.join(out, "R1-final", "eval.json"))["tasks"]["world_knowledge"]
    r0 = _read_json(os.path.join(out, "R0-bf16", "eval.json"))["tasks"]["world_knowledge"]
    facts = knowledge_fact_ids(r1["items"]["source"])
    assert facts is not None and len(set(facts)) < len(facts)
    d = paired_bootstrap(r0["items"]["correct"], r1["items"]["correct"], groups=facts)
    assert rows["R1-final"]["drop_low_world_knowledge"] == pytest.approx(100 * d["low"])
    assert rows["R1-final"]["drop_high_world_knowledge"] == pytest.approx(100 * d["high"])
    assert any("resamples facts" in n for n in saved["notes"])
    assert knowledge_fact_ids(r1["items"]["source"][:1] + ["elsewhere.csv:3"]) is None


def test_report_reproduces_the_demo_table(quick_demo, capsys):
    out, saved = quick_demo
    table = rep.compare(out)
    assert json.loads(json.dumps(table.rows, default=str)) == saved["rows"]
    assert rep.main_report([out]) == 0
    printed = capsys.readouterr().out
    assert table.to_markdown().splitlines()[0] in printed
    for row in saved["rows"]:
        assert f"| {row['label']} |" in printed
    # the Python API re-export is the same function
    import hif8qat.report as hr
    assert hr.compare is rep.compare
    again = hr.compare([os.path.join(out, "R0-bf16"), os.path.join(out, "R1-final")])
    assert again["R1-final"]["drop_world_knowledge"] == pytest.approx(
        table["R1-final"]["drop_world_knowledge"])


def test_report_table_object(quick_demo):
    out, _ = quick_demo
    table = rep.compare(out)
    assert len(table) == 7 and table[0]["name"] == "P0-pretrained-bf16"
    md = table.to_markdown()
    assert repr(table) == md and md.count("\n|") >= 8
    assert "knowledge acc %" in md and "loss APE QAT %" in md
    with pytest.raises(KeyError, match="no run named"):
        table["nope"]
    pd = pytest.importorskip("pandas")
    df = table.to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df.index) == [r["name"] for r in table.rows]


def test_demo_rerun_skips_finished_runs_and_uses_the_cache(quick_demo, cache_dir):
    out, saved = quick_demo
    stamps = {n: os.stat(os.path.join(out, n, f)).st_mtime_ns
              for n in ("R0-bf16", "R1-final") for f in ("log.jsonl", "eval.json")}
    lines = []
    table = demo.run_demo(out, quick=True, cache_dir=cache_dir, progress=False, plots=False,
                          log=lines.append)
    assert any("cached" in line for line in lines)
    assert sum("skipped" in line for line in lines) == 5
    assert stamps == {n: os.stat(os.path.join(out, n, f)).st_mtime_ns
                      for n in ("R0-bf16", "R1-final") for f in ("log.jsonl", "eval.json")}
    assert [r["acc_world_reasoning"] for r in table.rows] == \
        [r["acc_world_reasoning"] for r in saved["rows"]]
    # --only runs (here: skips) just the named stages; the table still shows them all
    lines = []
    table = demo.run_demo(out, quick=True, cache_dir=cache_dir, progress=False, plots=False,
                          only=["R1", "P0-pretrained-bf16"], log=lines.append)
    assert sum("skipped" in line for line in lines) == 1 and len(table) == 7
    with pytest.raises(ValueError, match="unknown demo stage"):
        demo.run_demo(out, quick=True, cache_dir=cache_dir, only="R9", log=lines.append)


def test_demo_stages_in_parallel_processes_give_identical_results(quick_demo, cache_dir,
                                                                   tmp_path):
    """--jobs 2 runs stages in two spawned processes with one thread each: the same bits as
    the fixture's one process with all threads (losses, scales, every log-likelihood)."""
    out, _ = quick_demo
    par = str(tmp_path / "par")
    lines = []
    demo.run_demo(par, quick=True, cache_dir=cache_dir, progress=False, plots=False,
                  only=["R1", "R2", "P1"], jobs=2, log=lines.append)
    assert any("stages at a time" in line for line in lines)
    for name in ("R1-final", "R2-most-recent", "P1-ptq-hif8"):
        mine = _read_json(os.path.join(par, name, "eval.json"))["tasks"]
        ref = _read_json(os.path.join(out, name, "eval.json"))["tasks"]
        assert {t: mine[t]["items"]["lls"] for t in TASKS} == \
            {t: ref[t]["items"]["lls"] for t in TASKS}
        if name[0] == "R":
            strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "step_time_s")}
                                  for r in rows]
            assert strip(_read_log(os.path.join(par, name))) == \
                strip(_read_log(os.path.join(out, name)))


@pytest.mark.parametrize("argv, needle", [
    (["--jobs", "0"], "--jobs"), (["--jobs", "x"], "--jobs")])
def test_demo_bad_jobs_exit_2(argv, needle, capsys):
    assert demo.main_demo(argv) == 2
    assert needle in capsys.readouterr().err


def test_eval_cli_scores_a_run_directory_like_the_demo(quick_demo, tmp_path, capsys):
    out, saved = quick_demo
    dest = str(tmp_path / "r1.json")
    s = demo.QUICK
    rc = eval_cli.main_eval([os.path.join(out, "R1-final"), "--tasks", "world_reasoning_tiny",
                             "--precision", "hif8", "--limit", str(s.eval_limit),
                             "--batch-size", "7", "--out", dest, "--no-progress"])
    assert rc == 0
    mine = rep.load_eval(dest)["tasks"]["world_reasoning_tiny"]["items"]
    demo_items = rep.load_eval(os.path.join(out, "R1-final"))["tasks"]["world_reasoning"]["items"]
    # same final weights and frozen scalers: the same log-likelihoods, whatever the batch
    assert mine["lls"] == demo_items["lls"]
    assert "world_reasoning_tiny" in capsys.readouterr().out


# ------------------------------------------------------------------------ ablation
def _tiny_grid(tmp_path, steps=4, n_seeds=2):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log.\n" * 60)
    grid = tmp_path / "grid.toml"
    grid.write_text(f"""
out_dir = "{tmp_path / 'abl'}"
[config]
data = "corpus.txt"
steps = {steps}
batch_size = 2
seq_len = 16
lr = 1e-3
precision = "hif8"
bf16_warmup_steps = 1
checkpoint_every = 2
progress = false
[config.model_config]
vocab_size = 256
hidden_size = 16
intermediate_size = 32
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
max_position_embeddings = 32
[grid]
"activation.algo" = ["max", "most_recent"]
seed = {list(range(n_seeds))}
[[runs]]
name = "bf16"
precision = "bf16"
""")
    return str(grid)


def test_ablate_resumes_after_an_interruption_without_redoing_finished_runs(tmp_path):
    grid = _tiny_grid(tmp_path)
    done = []

    def interrupt(name, run_dir):
        done.append(name)
        raise KeyboardInterrupt("simulated interruption after the first run")

    with pytest.raises(KeyboardInterrupt):
        ablate.run_grid(grid, progress=False, log=lambda *_: None, on_run_done=interrupt)
    first = os.path.join(str(tmp_path / "abl"), done[0])
    stamps = {f: os.stat(os.path.join(first, f)).st_mtime_ns
              for f in ("log.jsonl", "summary.json", "config.toml")}
    # a second run cut in the middle: only its first checkpoint exists
    names = ablate.expand_grid(ablate.load_grid(grid))[1]
    second_name, _, second_cfg = names[1]
    from hif8qat.train import Trainer
    t = Trainer(second_cfg)
    t.step(), t.step()
    t.save_checkpoint()
    t.step()                     # logged, never checkpointed: redone on resume

    result = ablate.run_grid(grid, progress=False, log=lambda *_: None)
    assert result["skipped"] == [done[0]]
    assert result["trained"] == [n for n, _, _ in names[1:]]
    assert stamps == {f: os.stat(os.path.join(first, f)).st_mtime_ns
                      for f in ("log.jsonl", "summary.json", "config.toml")}
    log = _read_log(os.path.join(str(tmp_path / "abl"), second_name))
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    # the summary table covers every run; hif8 runs are matched to the bf16 run per seed
    rows = {r["name"]: r for r in result["table"].rows}
    assert set(rows) == {n for n, _, _ in names}
    assert rows["algo=max,seed=0"]["reference"] == "bf16"    # the bf16 run has seed 0
    assert rows["algo=max,seed=1"]["reference"] is None      # no bf16 run with seed 1
    assert rows["bf16"]["reference"] is None
    # run again with everything done: nothing is trained
    third = ablate.run_grid(grid, progress=False, log=lambda *_: None)
    assert third["trained"] == [] and len(third["skipped"]) == len(names)


def test_ablate_matches_hif8_runs_to_the_bf16_run_with_the_same_config(tmp_path):
    grid = _tiny_grid(tmp_path, steps=2, n_seeds=1)
    result = ablate.run_grid(grid, progress=False, log=lambda *_: None)
    rows = {r["name"]: r for r in result["table"].rows}
    # seed 0 is the base seed, so the bf16 run matches both hif8 runs of seed 0
    assert rows["algo=max,seed=0"]["reference"] == "bf16"
    assert rows["algo=most_recent,seed=0"]["reference"] == "bf16"
    run_log = _read_log(os.path.join(result["out_dir"], "algo=max,seed=0"))
    ref_log = _read_log(os.path.join(result["out_dir"], "bf16"))
    assert rows["algo=max,seed=0"]["ape_all"] == pytest.approx(_ape(run_log, ref_log, False))
    assert os.path.isfile(os.path.join(result["out_dir"], "report.md"))


def test_shipped_grid_is_valid():
    here = os.path.dirname(ablate.__file__)
    grid = ablate.load_grid(os.path.join(here, "grids", "dts_tiny.toml"))
    out_dir, runs, ev = ablate.expand_grid(grid, resolve_world=False)
    assert len(runs) == 11 and ev["tasks"][0] == "world_knowledge_tiny"
    algos = {cfg.activation.algo for _, _, cfg in runs if cfg.precision == "hif8"}
    assert algos == {"max", "most_recent"}


# ------------------------------------------------------------------------ bad input
def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, needle", [
    (["--seed", "-1"], "--seed"),
    (["--bogus"], "unrecognized arguments"),
])
def test_demo_bad_arguments_exit_2(argv, needle, capsys):
    assert demo.main_demo(argv) == 2
    assert needle in capsys.readouterr().err


def test_ablate_bad_grids_exit_2_with_one_line(tmp_path, capsys):
    assert ablate.main_ablate([str(tmp_path / "missing.toml")]) == 2
    assert "not found" in _one_line_error(capsys)
    cases = {
        "unknown top-level key": ("[config]\nsteps=2\n[grdi]\nlr=[1]\n", "grdi"),
        "bad value": (f"[config]\ndata='{tmp_path / 'x.txt'}'\nmodel_dir='m'\n[grid]\n"
                      "lr=[-1.0]\n", "lr"),
        "unknown field": (f"[config]\ndata='{tmp_path / 'x.txt'}'\nmodel_dir='m'\n[grid]\n"
                          "learning_rate=[1e-3]\n", "learning_rate"),
        "empty axis": (f"[config]\ndata='{tmp_path / 'x.txt'}'\nmodel_dir='m'\n[grid]\n"
                       "lr=[]\n", "non-empty list"),
        "not toml": ("[config\n", "not valid TOML"),
        "unknown task": (f"[config]\ndata='{tmp_path / 'x.txt'}'\nmodel_dir='m'\n[eval]\n"
                         "tasks=['nope']\n", "nope"),
        "bad world ref": ("[config]\ndata='world:nothing'\nmodel_dir='m'\n", "world:"),
    }
    for what, (text, needle) in cases.items():
        p = tmp_path / "g.toml"
        p.write_text(text)
        assert ablate.main_ablate([str(p), "--dry-run"]) == 2, what
        assert needle in _one_line_error(capsys), what


def test_report_and_eval_bad_arguments_exit_2(tmp_path, capsys):
    assert rep.main_report([str(tmp_path / "nope")]) == 2
    assert "not a directory" in _one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert rep.main_report([str(tmp_path / "empty")]) == 2
    assert "neither a run directory" in _one_line_error(capsys)
    assert eval_cli.main_eval([str(tmp_path), "--tasks", "world_reasoning_tiny",
                               "--precision", "int4"]) == 2
    assert "--precision" in _one_line_error(capsys)
    assert eval_cli.main_eval([str(tmp_path), "--tasks", "no_such_task"]) == 2
    assert "no_such_task" in _one_line_error(capsys)
    assert eval_cli.main_eval([str(tmp_path), "--tasks", "world_reasoning_tiny",
                               "--limit", "0"]) == 2
    _one_line_error(capsys)
    assert eval_cli.main_eval([str(tmp_path), "--tasks", "world_reasoning_tiny"]) == 2
    assert "neither a model directory" in _one_line_error(capsys)


def test_eval_cli_hif8_needs_scales(quick_demo, cache_dir, capsys):
    model_dir = demo.pretrained_model(demo.QUICK, 0, cache_dir, progress=False)["model_dir"]
    assert eval_cli.main_eval([model_dir, "--tasks", "world_reasoning_tiny",
                               "--precision", "hif8"]) == 2
    assert "--calibrate-data" in _one_line_error(capsys)


# ------------------------------------------------------------------------ metrics, plots
def test_loss_ape_against_a_hand_computation():
    ref = [{"step": 1, "loss": 2.0, "phase": "bf16"}, {"step": 2, "loss": 4.0, "phase": "bf16"},
           {"step": 3, "loss": 5.0, "phase": "bf16"}]
    run = [{"step": 1, "loss": 2.0, "phase": "bf16_warmup"},
           {"step": 2, "loss": 5.0, "phase": "qat"}, {"step": 3, "loss": 4.0, "phase": "qat"}]
    assert rep.loss_ape(run, ref, "qat") == pytest.approx(100 * (1 / 4 + 1 / 5) / 2)
    assert rep.loss_ape(run, ref, None) == pytest.approx(100 * (0 + 1 / 4 + 1 / 5) / 3)
    assert rep.loss_ape(run, [], "qat") is None


def test_saturation_stats_count_scaler_steps_that_clipped():
    log = [{"phase": "bf16_warmup", "saturated": 0, "scalers": {"a": {"clipped_fraction": 0}}},
           {"phase": "qat", "saturated": 2, "scalers": {"a": {"clipped_fraction": 0.5},
                                                        "b": {"clipped_fraction": 0.1}}},
           {"phase": "qat", "saturated": 0, "scalers": {"a": {"clipped_fraction": 0.0},
                                                        "b": {"clipped_fraction": 0.0}}}]
    st = rep.saturation_stats(log)
    assert st["saturation_events"] == 2 and st["saturated_steps"] == 1
    assert st["clipped_fraction"] == pytest.approx(100 * 0.6 / 4)
    assert st["max_clipped_fraction"] == pytest.approx(50.0)
    assert math.isclose(rep.saturation_stats([])["clipped_fraction"], 0.0)


def test_plots_write_pngs(quick_demo, tmp_path):
    pytest.importorskip("matplotlib")
    out, _ = quick_demo
    table = rep.compare(out)
    paths = plots.plot_table(table, str(tmp_path), log=lambda *_: None)
    names = {os.path.basename(p) for p in paths}
    assert {"loss.png", "headroom.png", "accuracy.png", "loss_curves.png"} <= names
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    layers = plots.layer_headroom(_read_log(os.path.join(out, "R2-most-recent")))
    assert layers and all(len(steps) == len(hs) for steps, hs, _ in layers.values())


def test_report_plots_the_hessian_density_over_time(tmp_path):
    pytest.importorskip("matplotlib")
    import json as _json
    from hif8qat.experiments import plots
    grid = list(np.linspace(-1, 3, 50))
    with open(tmp_path / "hessian.jsonl", "w") as fh:
        for step, centre in [(10, 0.5), (20, 1.5)]:
            dens = list(np.exp(-(np.array(grid) - centre) ** 2 / 0.1) + 1e-6)
            fh.write(_json.dumps({"step": step, "phase": "qat", "grid": grid, "density": dens}) + "\n")
    recs = plots.read_hessian_log(str(tmp_path))
    assert [r["step"] for r in recs] == [10, 20]
    path = plots.plot_hessian_density(str(tmp_path))
    assert path and os.path.getsize(path) > 1000
    assert plots.plot_hessian_density(str(tmp_path / "nowhere")) is None
    (tmp_path / "hessian.jsonl").write_text("{broken\n")
    with pytest.raises(ValueError, match="hessian.jsonl:1"):
        plots.read_hessian_log(str(tmp_path))
