"""One sweep over every GPU of a host, on the CPU: the GPU claims across real processes (fake GPU ids), a real
Hydra multirun through the joblib launcher pinned one worker per (fake) GPU, the per-engine build lock across two
processes with the recording fake TensorRT, the timing-cache merge, and the data-parallel orchestration with an
injected timing function."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.optimize import gpus as G

REPO = Path(__file__).resolve().parent.parent


def _py(code: str, env: dict | None = None) -> subprocess.Popen:
    """A Python child in the repository (pipes for stdin/stdout/stderr)."""
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


# ----------------------------------------------------------------------------------------- visible GPUs
def test_visible_gpus_follow_cuda_visible_devices_and_count_at_least_one(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3,GPU-abc")
    assert G.visible_gpus() == ["2", "3", "GPU-abc"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,2")  # CUDA stops at an invalid ordinal
    assert G.visible_gpus() == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert G.visible_gpus() == [] and G.gpu_count() == 1  # no GPU: one job process
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML: nothing to hand out
    assert G.visible_gpus() == []
    assert G.gpu_count(["a", "b", "c"]) == 3


def test_the_gpus_preset_runs_one_joblib_worker_per_gpu():
    from hydra import compose, initialize_config_module

    from pipeline.core.config import register_configs

    register_configs()
    G.register_resolvers()
    with initialize_config_module(config_module="pipeline.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+sweep=[gpus,engine]", "gpus.ids=[0,1,2]"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 3
    assert cfg.gpus.per_job is True and list(cfg.gpus.ids) == ["0", "1", "2"]
    assert dict(cfg.hydra.sweeper.params)["precision"] == "fp16,int8"  # composes with the engine grid


# ------------------------------------------------------------------------------------------ the claims
_HOLD = """
import json, sys
from pipeline.optimize.gpus import claim_gpu
from pipeline.core.errors import PipelineError
try:
    got = claim_gpu({lock!r}, {ids!r}, wait_s={wait}, poll_s=0.05, log=lambda m: None)
    again = claim_gpu({lock!r}, {ids!r}, wait_s=0)  # a second job of the same worker keeps its GPU
    import os
    print(json.dumps({{"id": got, "again": again, "env": os.environ["CUDA_VISIBLE_DEVICES"], "pid": os.getpid()}}),
          flush=True)
except PipelineError as err:
    print(json.dumps({{"error": err.message, "hint": err.hint}}), flush=True)
    sys.exit(3)
sys.stdin.read()  # hold the claim until the parent closes stdin
"""


def _holder(lock: Path, ids, wait: float) -> subprocess.Popen:
    return _py(_HOLD.format(lock=str(lock), ids=list(ids), wait=wait))


def test_two_gpus_three_processes_two_claims_and_a_clear_refusal(tmp_path):
    lock = tmp_path / "locks"
    ids = ["fake0", "fake1"]
    a, b = _holder(lock, ids, 5), _holder(lock, ids, 5)
    ra, rb = json.loads(a.stdout.readline()), json.loads(b.stdout.readline())
    try:
        assert {ra["id"], rb["id"]} == {"fake0", "fake1"}  # distinct GPUs
        for r in (ra, rb):
            assert r["again"] == r["id"] and r["env"] == r["id"]  # pinned (CUDA_VISIBLE_DEVICES), and kept
        c = _holder(lock, ids, 0.5)  # both held: waits 0.5 s, then fails naming the holders
        out, err = c.communicate(timeout=60)
        assert c.returncode == 3, err
        rc = json.loads(out)
        assert "No free GPU after 0.5 s: all 2 GPU(s) are held" in rc["error"]
        assert f"pid {ra['pid']}" in rc["error"] and f"pid {rb['pid']}" in rc["error"]
        assert "hydra.launcher.n_jobs=2" in rc["hint"]

        d = _holder(lock, ids, 30)  # waits for a GPU to be freed...
        time.sleep(0.5)
        assert d.poll() is None
        a.stdin.close()  # ...the first holder ends (its lock goes with it)
        a.wait(timeout=30)
        rd = json.loads(d.stdout.readline())
        assert rd["id"] == ra["id"]
        d.stdin.close()
        d.wait(timeout=30)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.stdin.close()
                p.wait(timeout=30)


def test_the_lock_files_name_the_host(tmp_path):
    assert G.lock_path(tmp_path, "GPU-1a/2", host="node 7").name == "gpu-node-7-GPU-1a-2.lock"


def test_a_claim_in_this_process_pins_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # fake ids: no NVML facts
    try:
        assert G.pin_job(tmp_path, ids=["fakeA"], log=lambda m: None) == "fakeA"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "fakeA" and G.claimed() == "fakeA"
        assert G.pin_job(tmp_path, ids=["other"], log=lambda m: None) == "fakeA"  # the process cannot move
        rec = G.job_gpu()
        assert rec["id"] == "fakeA" and rec["pid"] == os.getpid() and rec["jobs_in_process"] == 2
        assert Path(rec["lock"]).parent == tmp_path / ".gpu-locks" and "name" not in rec

        from pipeline.core.environment import environment

        env = environment("cmd")
        assert env["job_gpu"]["id"] == "fakeA" and dt.datetime.fromisoformat(env["started_at"])
    finally:
        G._release_for_tests()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert G.job_gpu() is None and G.pin_job(tmp_path, ids=None, log=lambda m: None) is None  # no GPU visible


# ----------------------------------------------------------------------------- the comparison's GPUs
def _row(gid, start, end, pid=1, host="h", **gpu):
    t = "2025-01-01T12:00:{:06.3f}+00:00"
    return {"gpu": {"id": gid, "host": host, "pid": pid, **gpu} if gid is not None else None,
            "started_at": t.format(start), "finished_at": t.format(end)}


def test_overlaps_on_one_gpu_are_found_and_other_gpus_may_run_together():
    rows = [_row("0", 1, 5), _row("1", 2, 6), _row("0", 5, 9), _row("0", 8.5, 10), _row(None, 0, 1),
            _row("0", 1, 2, host="other")]
    ov = G.overlaps(rows)
    assert ov["pairs"] == [(2, 3)] and ov["checked"] == 5  # back to back (5 then 5) is no overlap
    md = "\n".join(G.gpus_markdown(rows, lambda i: f"job{i}"))
    assert "## GPUs" in md and "**overlap**: job2 and job3 ran on GPU 0 at the same time" in md
    assert "1 job(s) recorded no GPU: job4" in md and "GPU 0 on other" in md
    clean = G.gpus_markdown([_row("0", 1, 2, name="NVIDIA H200", uuid="GPU-9f", max_sm_clock_mhz=1980),
                             _row("0", 2, 3)], str)
    assert "- GPU 0 on h (NVIDIA H200, GPU-9f, max SM 1980 MHz)" in clean
    assert "no two jobs overlapped on one GPU (2 job(s) checked" in "\n".join(clean)
    assert G.gpus_markdown([_row(None, 0, 1)], str) == []


# ---------------------------------------------------------------- a real multirun, one worker per GPU
def test_a_sweep_through_joblib_pins_one_worker_per_gpu_and_lists_the_gpus(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install hydra-joblib-launcher")
    from tests.test_pipeline_e2e import FAST, _run

    res = _run(["-m", "+sweep=gpus", "gpus.ids=[fake0,fake1]", "batch_size=1,2,4,8", "model=digits_cnn",
                "data=digits", "backend=onnxruntime", "precision=fp32", "stages=[export,analyze,profile,report]",
                *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "n_jobs=2" in res.stdout + res.stderr  # the preset's ${gpu_count:${gpus.ids}}
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/report.json"))]
    assert len(reports) == 4
    jobs = [(r["environment"]["job_gpu"], r["environment"]["started_at"], r["environment"]["finished_at"])
            for r in reports]
    assert {g["id"] for g, _, _ in jobs} <= {"fake0", "fake1"}
    by_pid: dict = {}
    by_id: dict = {}
    for g, _, _ in jobs:
        by_pid.setdefault(g["pid"], set()).add(g["id"])
        by_id.setdefault(g["id"], set()).add(g["pid"])
    assert all(len(v) == 1 for v in by_pid.values())  # a worker never changed GPU
    assert all(len(v) == 1 for v in by_id.values())  # a GPU was never shared by two workers
    assert set(by_id) == {"fake0", "fake1"}  # both workers took jobs
    for gid in by_id:  # jobs on one GPU ran one after another
        spans = sorted((dt.datetime.fromisoformat(s), dt.datetime.fromisoformat(e)) for g, s, e in jobs
                       if g["id"] == gid)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    comp = json.loads((tmp_path / "sweep" / "comparison.json").read_text())
    assert comp["gpu_overlaps"] == [] and all(r["gpu"]["id"] in by_id for r in comp["rows"])
    md = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "## GPUs" in md and "no two jobs overlapped on one GPU (4 job(s) checked" in md
    for gid in by_id:
        assert f"- GPU {gid} on " in md
    assert "| accuracy | gpu |" in md  # the table's gpu column
    assert list((tmp_path / "engines" / ".gpu-locks").glob("gpu-*-fake*.lock"))


# ------------------------------------------------------------------- the engine cache across processes
_BUILD = """
import hashlib, json, sys, time, importlib.util
from pathlib import Path
spec = importlib.util.spec_from_file_location("trt_fake", "tests/test_trt_fake.py")
fake = importlib.util.module_from_spec(spec); spec.loader.exec_module(fake)
from pipeline.core.config import BuildConfig, PrecisionConfig
from pipeline.trt import GpuInfo, engine_from_onnx
trt = fake.make_fake_trt("8.6")
build = trt.Builder.build_serialized_network
def slow(self, network, config):  # a build long enough for the other process to ask meanwhile
    time.sleep(1.5)
    return build(self, network, config)
trt.Builder.build_serialized_network = slow
print("ready", flush=True)
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.01)
logs = []
art = engine_from_onnx(sys.argv[1], PrecisionConfig(name="fp16"), BuildConfig(), 2, sys.argv[2], "tiny",
                       gpu=GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "test"), trt=trt, log=logs.append)
print(json.dumps({"builds": sum(1 for n, _ in trt.calls if n == "build_serialized_network"), "hit": art.cache_hit,
                  "sha": hashlib.sha256(art.plan_path.read_bytes()).hexdigest(), "logs": logs}), flush=True)
"""


def test_two_processes_wanting_one_engine_build_it_once(tmp_path):
    from tests.test_trt_build import tiny_onnx

    onnx_path = tiny_onnx(tmp_path / "tiny.onnx")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD, str(onnx_path), str(tmp_path / "engines"), str(go)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO))) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()  # both ask at once
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(o["builds"] for o in outs) == 1  # one build_serialized_network in total
    assert sorted(o["hit"] for o in outs) == [False, True] and outs[0]["sha"] == outs[1]["sha"]
    waiter = next(o for o in outs if o["hit"])
    assert any("another process is building" in m for m in waiter["logs"])
    assert any(m.startswith("[build] cache hit") for m in waiter["logs"])
    plans = list((tmp_path / "engines").glob("*.plan"))
    assert len(plans) == 1 and Path(str(plans[0]) + ".json").is_file()
    assert not list((tmp_path / "engines").glob(".*.tmp*"))  # no temporary file left behind


def test_a_timing_cache_save_merges_what_another_process_saved(tmp_path):
    from pipeline.trt.timing_cache import merge_cache_file

    class Cache:
        def __init__(self, blob=b""):
            self.blob, self.merged = blob, []

        def combine(self, other, ignore_mismatch):
            self.merged.append((other.blob, ignore_mismatch))
            return True

    class Config:
        def __init__(self):
            self.live = Cache(b"mine")

        def get_timing_cache(self):
            return self.live

        def create_timing_cache(self, blob):
            if blob == b"bad":
                logger.messages.append(("ERROR", "The timing cache will not be used!"))
            return Cache(blob)

    class Logger:
        messages: list = []

    logger, cfg, path = Logger(), Config(), tmp_path / "timing.cache"
    assert merge_cache_file(cfg, path, logger) is False  # no file yet
    path.write_bytes(b"theirs")
    assert merge_cache_file(cfg, path, logger) is True and cfg.live.merged == [(b"theirs", False)]
    path.write_bytes(b"bad")
    assert merge_cache_file(cfg, path, logger) is False and len(cfg.live.merged) == 1  # refused: not combined
    cfg.live = object()  # a TensorRT without ITimingCache.combine: the save just replaces the file
    assert merge_cache_file(cfg, path, logger) is False


# ------------------------------------------------------------------------------ data-parallel timing
RATES = {"a": 100.0, "b": 90.0}


def fake_job(gpu_id, seconds, start):
    """Stands in for the TensorRT timing: unequal setup times, then a window of ``seconds`` after the barrier."""
    time.sleep(1.0 if gpu_id == "b" else 0.0)
    if gpu_id == "bad":
        raise RuntimeError("no such GPU")
    start()
    t0 = time.time()
    time.sleep(seconds)
    return {"throughput_samples_s": RATES[gpu_id], "pinned": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "window": [t0, time.time()]}


def test_data_parallel_sums_the_gpus_against_one_gpu_times_n():
    from pipeline.optimize.dataparallel import aggregate, data_parallel, summary_lines

    res = data_parallel(["a", "b"], fake_job, 0.3, setup_timeout_s=60, log=lambda m: None)
    assert res["single"]["gpu"] == "a" and res["single_samples_s"] == 100.0
    assert [r["pinned"] for r in res["per_gpu"]] == ["a", "b"]  # each child pinned before the job ran
    assert res["sum_samples_s"] == 190.0 and res["ideal_samples_s"] == 200.0 and res["scaling"] == pytest.approx(0.95)
    ov = res["overlap"]
    assert ov["start_spread_s"] < 0.5 and ov["share"] > 0.5  # b's 1 s longer setup did not shift its window
    assert len({r["pid"] for r in res["per_gpu"]}) == 2
    assert "scaling 0.950" in summary_lines(res)[-1]
    assert aggregate({"gpu": "a", "throughput_samples_s": 50.0},
                     [{"gpu": g, "throughput_samples_s": 50.0} for g in "abcd"])["scaling"] == 1.0


def test_a_failing_gpu_frees_the_others_and_is_named():
    from pipeline.optimize.dataparallel import aggregate, run_on_gpus

    t0 = time.monotonic()
    results = run_on_gpus(["a", "bad"], fake_job, 0.2, setup_timeout_s=60)
    assert time.monotonic() - t0 < 30  # the barrier was broken, not waited out
    assert "no such GPU" in results[1]["error"] and "BrokenBarrierError" in results[0]["error"]
    with pytest.raises(PipelineError, match="GPU bad: RuntimeError: no such GPU"):
        aggregate(results[0], results)


def test_the_dataparallel_command_says_what_is_missing(tmp_path, capsys, monkeypatch):
    from pipeline.optimize.dataparallel import main

    assert main([str(tmp_path / "none.plan"), "--gpus", "0"]) == 2
    assert "engine not found" in capsys.readouterr().err
    plan = tmp_path / "e.plan"
    plan.write_bytes(b"x")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main([str(plan)]) == 2  # the visible GPUs: none
    assert "no GPU to time on" in capsys.readouterr().err
