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


@pytest.mark.parametrize("preset, fixed, grid", [
    ("throughput", {"precision": "int8"},
     {"batch_size": "256,1024,2048", "build.input_format": "null,fp16", "profile.streams": "1,2"}),
    ("latency", {"batch_size": 1},
     {"precision": "fp16,int8", "build.optimization_level": "3,5", "build.input_format": "null,fp16",
      "profile.cuda_graph": "false,true"}),
])
def test_the_target_presets_define_their_grids(preset, fixed, grid):
    from hydra import compose, initialize_config_module

    from pipeline.core.config import register_configs

    register_configs()
    with initialize_config_module(config_module="pipeline.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+sweep={preset}", "optimize.target_throughput=85000"],
                      return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == grid
    for key, value in fixed.items():
        assert cfg[key] == value if key == "batch_size" else cfg[key].name == value
    assert cfg.optimize.target_throughput == 85000 and cfg.optimize.target_latency_ms is None


def test_a_sweep_through_the_joblib_launcher_ends_in_the_front_and_the_pick(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install hydra-joblib-launcher")
    from tests.test_pipeline_e2e import FAST, _run

    res = _run(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "batch_size=1,8", "model=digits_cnn",
                "data=digits", "backend=onnxruntime", "precision=fp32", "optimize.target_throughput=1e12", *FAST],
               tmp_path)
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
    (verdict,) = comp["targets"]  # an unreachable target: missed, about the best run, with its evidence
    assert verdict["target"] == "throughput_samples_s" and not verdict["met"] and verdict["run"] == best
    assert verdict["evidence"] and "**missed**" in md

    # The same sweep aggregated again from its folder, against another target (python -m pipeline.optimize).
    from pipeline.optimize.__main__ import main

    assert main([str(tmp_path / "sweep"), "--target-latency-ms", "1e6", "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "comparison.json").read_text())
    (lat,) = again["targets"]
    assert lat["met"] and again["rows"][lat["run"]]["batch"] == 1 and len(again["rows"]) == 2
    assert main([str(tmp_path / "nothing-here")]) == 2


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


def _tel(power=695.0, limit=700.0, clock=1860.0, max_clock=1980.0, capped=0.8):
    return {"available": True, "power_w": {"median": power}, "power_limit_w": limit, "sm_clock_mhz": {"median": clock},
            "max_sm_clock_mhz": max_clock, "clock_limited": {"power_cap": capped, "sw_thermal": 0.0}}


def test_a_missed_throughput_target_names_the_power_limit_and_the_clock():
    from pipeline.optimize.targets import check_targets, targets_markdown

    rows = [dict(_row(25.0, 80000.0, 2048), gpu_telemetry=_tel(), pct_of_peak=31.0,
                 explain_breakdown={"share_of_gap": {"memory": 0.6, "compute": 0.3, "overhead": 0.1},
                                    "gap_sum_s": 0.008, "bound_sum_s": 0.016}),
            dict(_row(0.26, 3800.0, 1), gpu_telemetry=_tel(power=300.0, capped=0.0), explain_layers=57,
                 kernel_floor={"layers": 55, "fastest_s": 4.9e-6, "median_bound_s": 2.0e-7}),
            _row(20.0, 99000.0, 2048, acc="FAIL (1 of 1 checks)")]
    thr, lat = check_targets(rows, target_throughput=85000, target_latency_ms=0.25)
    assert thr["run"] == 0 and not thr["met"] and thr["value"] == 80000.0  # the failed faster run does not count
    ev = " | ".join(thr["evidence"])
    assert "695 W of the 700 W limit (99%), at the power limit" in ev and "in 80% of NVML samples" in ev
    assert "1860 MHz, 94% of the 1980 MHz" in ev
    assert "31.0% of the dense peak" in ev and "33.0% of it at the measured 1860 MHz" in ev
    assert "memory 60%, compute 30%, overhead 10%" in ev and "128,000 samples/s" in ev
    assert lat["run"] == 1 and not lat["met"] and "below the power limit" in " ".join(lat["evidence"])
    assert "57 engine layers share 0.260 ms end to end, 4.6 us each, 23x the median layer's roofline bound of 0.20 us" \
        in lat["evidence"][-1] and "fastest compute/memory layer takes 4.9 us" in lat["evidence"][-1]
    assert not any("per kernel" in e for e in thr["evidence"])
    md = "\n".join(targets_markdown([thr, lat], lambda i: f"run{i}"))
    assert "throughput_samples_s >= 85,000 samples/s: **missed**, best 80,000 samples/s (run0)" in md
    assert "batch1_latency_ms <= 0.25 ms: **missed**, best 0.260 ms (run1)" in md


def test_met_targets_carry_no_evidence_and_no_eligible_run_says_so():
    from pipeline.optimize.targets import check_targets

    (met,) = check_targets([dict(_row(0.2, 5000.0, 1), gpu_telemetry=_tel())], target_latency_ms=0.25)
    assert met["met"] and met["evidence"] == []
    (none,) = check_targets([_row(1.0, 10.0, 8)], target_latency_ms=0.25)
    assert none["run"] is None and not none["met"] and "none at batch 1" in none["evidence"][0]
    assert check_targets([_row(1.0, 10.0)]) == []


def test_nvml_summary_counts_the_samples_each_clock_reason_held_the_clock_down():
    from pipeline.core.gpu import CLOCK_EVENT_BITS, summarize

    samples = [{"power_w": 690.0, "clock_event_reasons": CLOCK_EVENT_BITS["power_cap"]},
               {"power_w": 700.0, "clock_event_reasons": CLOCK_EVENT_BITS["power_cap"] | CLOCK_EVENT_BITS["sw_thermal"]},
               {"power_w": 200.0, "clock_event_reasons": 0}, {"power_w": 650.0}]
    out = summarize(samples)
    assert out["power_w"] == {"min": 200.0, "median": 670.0, "max": 700.0}
    assert out["clock_limited"]["power_cap"] == pytest.approx(2 / 3)
    assert out["clock_limited"]["sw_thermal"] == pytest.approx(1 / 3) and out["clock_limited"]["hw_thermal"] == 0.0
    assert "clock_limited" not in summarize([{"power_w": 1.0}])
