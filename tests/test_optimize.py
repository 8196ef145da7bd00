"""The engine search: Pareto front and pick over a sweep's runs, the sweep preset, and a real multirun through a
local Hydra launcher (joblib: one process per job) ending in one comparison with the front and the pick."""

import json

import pytest

from pipeline.optimize.pareto import eligible, pareto_front, pick


def _row(ms, tput, batch=8, acc="pass"):
    return {"measured_median_ms": ms, "throughput_samples_s": tput, "batch": batch, "accuracy": acc}


def test_front_keeps_only_runs_no_other_beats_on_both_axes():
    rows = [_row(1.0, 100, 1), _row(2.0, 300), _row(2.5, 250), _row(4.0, 400), _row(3.0, 900, acc="FAIL (1 of 2 checks)"),
            _row(None, None)]
    assert pareto_front(rows) == [0, 1, 3]  # 2 is beaten by 1; 4 failed its accuracy; 5 was not measured
    assert [eligible(r) for r in rows] == [True, True, True, True, False, False]


def test_ties_do_not_dominate():
    rows = [_row(1.0, 100), _row(1.0, 100)]
    assert pareto_front(rows) == [0, 1]


def test_pick_is_the_highest_throughput_within_the_latency_limit():
    rows = [_row(1.0, 100, 1), _row(2.0, 300), _row(4.0, 400), _row(3.0, 900, acc="FAIL (1 of 2 checks)")]
    p = pick(rows)
    assert p["throughput"] == 2 and p["latency"] == 0 and "1 run(s) left out" in p["why"]
    assert pick(rows, max_latency_ms=2.5)["throughput"] == 1
    none = pick([_row(1.0, 1, acc="FAIL (1 of 1 checks)")])
    assert none["throughput"] is None and none["why"].startswith("no run is eligible")


def test_the_sweep_preset_defines_the_grid():
    from hydra import compose, initialize_config_module

    from pipeline.core.config import register_configs

    register_configs()
    with initialize_config_module(config_module="pipeline.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+sweep=engine"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    assert params == {"batch_size": "1,32,256", "precision": "fp16,int8", "profile.cuda_graph": "false,true",
                      "profile.streams": "1,2"}


def test_a_sweep_through_the_joblib_launcher_ends_in_the_front_and_the_pick(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install hydra-joblib-launcher")
    from tests.test_pipeline_e2e import FAST, _run

    res = _run(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "batch_size=1,8", "model=digits_cnn",
                "data=digits", "backend=onnxruntime", "precision=fp32", *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    comp = json.loads((tmp_path / "sweep" / "comparison.json").read_text())
    rows = comp["rows"]
    assert sorted(r["batch"] for r in rows) == [1, 8]
    assert comp["pareto_front"] and set(comp["pareto_front"]) <= {0, 1}
    best = comp["pick"]["throughput"]
    assert rows[best]["throughput_samples_s"] == max(r["throughput_samples_s"] for r in rows)
    assert rows[comp["pick"]["latency"]]["batch"] == 1
    for r in rows:  # each job's command reruns that job alone
        assert " -m " not in r["command_line"] and f"batch_size={r['batch']}" in r["command_line"]
    md = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "Pareto front" in md and "## Pick" in md


def test_with_several_streams_the_achieved_rate_comes_from_the_throughput():
    from pipeline.analyze.hardware import load_hardware
    from pipeline.core.config import HardwareConfig, ProfileConfig, precision_config
    from pipeline.profile.stage import ProfileSettings, achieved_vs_peak

    hw = load_hardware("h200")
    settings = ProfileSettings("tensorrt", ProfileConfig(streams=2), precision_config("int8"), HardwareConfig(name="h200"),
                               256)
    analysis = {"analysis": {"totals": {"flops": 1e12}}}
    peak = hw.peak_for(precision_config("int8")).ops_per_s_dense
    for streams, expected_s in ((2, 256 / 80000.0), (1, 6.0e-3)):
        m = {"batch_size": 256, "throughput_samples_s": 80000.0, "latency_ms": {"median": 6.0}, "streams": streams,
             "precision_executed": "int8"}
        achieved_vs_peak(m, analysis, settings, hw)
        assert m["achieved_ops_per_s"] == pytest.approx(1e12 / expected_s)
        assert m["pct_of_peak"] == pytest.approx(100 * 1e12 / expected_s / peak)
