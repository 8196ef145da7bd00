"""Pruning, 2:4 sparsity and QAT on the CPU (issue 13): the real pipeline, one run folder per configuration.

Each configuration is one ``python pipeline/run.py ...`` (a subprocess, exactly as a user types it) for
``data=digits precision=int8 backend=onnxruntime`` with the stages
``[prune,analyze,quantize,qat,profile,report]`` (``[export,analyze,quantize,qat,profile,report]`` for the
unpruned model), ``prune.finetune_epochs=5 qat.epochs=2 data.num_samples=397`` (the whole digits test split)
and ``profile.duration_s=3``. Every run gets its own folder under ``--work`` and its own artifact store
(``engines_dir=<run>/engines``), so every stage runs (no reuse) and the stage wall times are real.

Configurations per model: unpruned; L1 channel pruning 0.25 / 0.5 / 0.75 with per-layer ranking; 0.5 with
``prune.global_ranking=true``; 0.5 steered by measured latency (``prune.layer_times=``, first with the unpruned
run's ``measurement.json`` as is, then with a file whose ``layer_times`` are built from that measurement's ONNX
Runtime per-node times, see ``derive_layer_times``); 0.5 with ``prune.round_to=8`` (the INT8 default is 32);
``prune.sparse24=true``. On digits_resnet, four quantization variants of the 0.75-pruned model look for a PTQ that
loses accuracy (``quant.per_channel=false``, ``quant.calib=max``, both, ``quant.calib=percentile
quant.percentile=90``).

Per row: parameters, FLOPs and the roofline latency (analysis.json), the ONNX Runtime median latency at batch 1
(measurement.json: the model the profile stage measured, the QAT Q/DQ ONNX, since the qat stage hands its Q/DQ
model on), top-1 of the unpruned FP32 model, the pruned model before and after its fine-tune (prune.json), PTQ
INT8 and QAT INT8 (qat.json), the prune and qat stage wall times (run.json), and the exact command line.

    python benchmarks/prune_qat_table.py --work /tmp/prune_qat     # ~6 min on 2 cores -> results/prune_qat_digits.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.environment import cpu_model  # noqa: E402

COMMON = ["data=digits", "precision=int8", "backend=onnxruntime", "prune.finetune_epochs=5", "qat.epochs=2",
          "data.num_samples=397", "profile.duration_s=3"]
PRUNE_STAGES = "stages=[prune,analyze,quantize,qat,profile,report]"
DENSE_STAGES = "stages=[export,analyze,quantize,qat,profile,report]"
#: Quantization variants tried on the 0.75-pruned digits_resnet, looking for a PTQ that loses accuracy.
PTQ_VARIANTS = {
    "per_tensor": ["quant.per_channel=false"],
    "max": ["quant.calib=max"],
    "per_tensor_max": ["quant.per_channel=false", "quant.calib=max"],
    "percentile90": ["quant.calib=percentile", "quant.percentile=90"],
}



def _read(path: Path) -> Optional[Dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else None


def run_pipeline(name: str, model: str, overrides: List[str], work: Path) -> Dict[str, Any]:
    """One ``pipeline/run.py`` in ``work/<model>/<name>`` (fresh folder and store); returns the row's facts."""
    run_dir = work / model / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    argv = ["python", "pipeline/run.py", f"model={model}", *overrides, f"hydra.run.dir={run_dir}",
            f"engines_dir={run_dir}/engines"]
    env = dict(os.environ, MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="")
    load = _loadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    (run_dir / "stdout.txt").write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
    row: Dict[str, Any] = {"name": name, "model": model, "command": shlex.join(argv), "run_dir": str(run_dir),
                           "returncode": res.returncode, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                           "loadavg_before": load}
    row.update(collect(run_dir))
    print(f"  {model:14s} {name:22s} rc={res.returncode} {wall:6.1f} s wall {cpu:6.1f} s cpu  (load {load})", flush=True)
    return row


def _sparse24_of(path: Path) -> Optional[Dict[str, Any]]:
    if not path.is_file():
        return None
    from pipeline.prune.sparsity import check_24, summary_24

    s = summary_24(check_24(path))
    return {k: s[k] for k in ("checked", "sparse_24", "violating", "share_24")}


def collect(run_dir: Path) -> Dict[str, Any]:
    """What the run folder says: stages, sizes, roofline, measured latency, accuracies, wall times."""
    run = _read(run_dir / "run.json") or {}
    stages = run.get("stages") or {}
    out: Dict[str, Any] = {"stages": {k: {"status": v.get("status"), "seconds": v.get("seconds"),
                                          **({"reason": v["reason"]} if v.get("reason") and v.get("status") in
                                             ("failed", "skipped") else {})}
                                      for k, v in stages.items() if v.get("status") != "not requested"}}
    prune, qat = _read(run_dir / "prune.json"), _read(run_dir / "qat.json")
    analysis, meas = _read(run_dir / "analysis.json"), _read(run_dir / "measurement.json")
    export = _read(run_dir / "export.json")
    if prune:
        ch = prune.get("channels") or {}
        out["parameters"] = prune["pruned"]["parameters"]
        out["parameters_unpruned"] = prune["dense"]["parameters"]
        out["top1_fp32_unpruned"] = prune["dense"]["accuracy"]["value"]
        out["top1_pruned_before_finetune"] = prune["accuracy_before_finetune"]["value"]
        out["top1_pruned_after_finetune"] = prune["pruned"]["accuracy"]["value"]
        out["round_to"] = prune.get("round_to")
        out["prune_seconds_in_stage"] = prune.get("prune_seconds")
        out["finetune_seconds"] = round((prune.get("finetune") or {}).get("seconds") or 0.0, 3)
        if ch:
            out["macs_torch_pruning"] = [ch.get("macs_before"), ch.get("macs_after")]
            out["channels"] = {ly["name"]: f"{ly['out_before']}->{ly['out_after']}" for ly in ch.get("layers", [])}
            out["per_layer_ratios"] = {k: round(v, 3) for k, v in (ch.get("per_layer") or {}).items()}
            out["prune_warnings"] = ch.get("warnings") or []
        if prune.get("sparse24"):
            out["sparse24_pruned_onnx"] = {k: prune["sparse24"]["check"][k] for k in
                                           ("checked", "sparse_24", "violating", "share_24")}
    elif export:
        out["parameters"] = out["parameters_unpruned"] = export.get("parameters")
    if qat:
        out["top1_fp32"] = qat["fp32"]["value"]  # the FP32 model QAT started from (the pruned one after prune)
        out["top1_ptq"] = (qat.get("ptq") or {}).get("value")
        out["top1_qat"] = qat["qat"]["value"]
        out["qat_finetune_seconds"] = (qat.get("finetune") or {}).get("seconds")
        out["quant_calib"] = qat.get("quant_calib")
        out["same_placement"] = qat.get("same_placement")
        if not prune:
            out["top1_fp32_unpruned"] = qat["fp32"]["value"]
        if prune and prune.get("sparse24"):
            # Does the model the later stages use (the QAT Q/DQ ONNX) still hold 2:4?
            out["sparse24_qat_qdq_onnx"] = _sparse24_of(run_dir / qat["qdq_onnx"])
    if analysis:
        a = analysis["analysis"]
        out["flops"] = a["totals"]["flops"]
        out["macs"] = a["totals"]["macs"]
        out["roofline_us"] = round(a["predicted_latency_s"] * 1e6, 2) if a.get("predicted_latency_s") else None
        out["roofline_peak"] = a.get("peak_key")
    if meas:
        m = meas["measured"]
        lat = m["latency_ms"]
        out["ort_bs1_ms"] = {k: round(lat[k], 4) for k in ("median", "p90", "min")}
        out["ort_iterations"] = m.get("iterations")
        out["measured_model"] = m.get("measured_model")
        out["precision_executed"] = m.get("precision_executed")
        kinds: Dict[str, int] = {}
        for ly in meas.get("engine_layers") or []:
            if "Conv" in ly.get("layer_type", "") or ly.get("layer_type") in ("Gemm", "MatMul", "MatMulInteger"):
                kinds[ly["layer_type"]] = kinds.get(ly["layer_type"], 0) + 1
        out["ort_compute_kernels"] = kinds  # QLinearConv would be integer; Conv/FusedConv are float
    stages_s = {k: v.get("seconds") for k, v in stages.items() if v.get("status") == "ran"}
    out["prune_stage_s"], out["qat_stage_s"] = stages_s.get("prune"), stages_s.get("qat")
    return out


def retime(rows: List[Dict[str, Any]], rounds: int = 3, warmup: int = 100, runs: int = 1000) -> None:
    """Time every run's QAT Q/DQ, PTQ Q/DQ and FP32 ONNX again at batch 1, all runs round-robin over ``rounds``
    rounds (fixed warm-up and timed runs per round): the profile stage timed each run alone, 3 s each, and other
    work on the machine at that moment moves its median; interleaving spreads such bursts over every model."""
    import numpy as np
    import onnxruntime as ort

    files: Dict[tuple, Path] = {}
    for i, r in enumerate(rows):
        run_dir = Path(r["run_dir"])
        arts = (_read(run_dir / "run.json") or {}).get("artifacts") or {}
        qat = _read(run_dir / "qat.json") or {}
        for kind, rel in (("qat_qdq", arts.get("qdq_onnx")), ("ptq_qdq", (qat.get("ptq") or {}).get("onnx")),
                          ("fp32", arts.get("onnx"))):
            if r["returncode"] == 0 and rel and (run_dir / rel).is_file():
                files[(i, kind)] = run_dir / rel
    x = {"input": np.load(Path(rows[0]["run_dir"]) / "data" / "eval.npz")["input"][:1]} if files else {}
    sessions = {}
    for key, path in files.items():
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        sessions[key] = (s, {s.get_inputs()[0].name: next(iter(x.values()))})
    times: Dict[tuple, List[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, (s, feed) in sessions.items():
            for _ in range(warmup):
                s.run(None, feed)
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, feed)
                times[key].append(time.perf_counter() - t)
    for (i, kind), v in times.items():
        rows[i].setdefault("retimed_bs1_ms", {})[kind] = {"median": round(float(np.median(v)) * 1e3, 4),
                                                         "min": round(float(np.min(v)) * 1e3, 4), "runs": len(v)}


def derive_layer_times(dense_run: Path, dest: Path) -> Dict[str, Any]:
    """A ``prune.layer_times`` file from an ONNX Runtime profile: its ``layer_times`` is empty (the ONNX Runtime
    profile path fills only ``engine_layers``), so split each ORT kernel's time over its ONNX nodes the way the
    TensorRT path does (``pipeline.trt.layers.onnx_layer_times``, by the nodes' roofline bounds)."""
    from pipeline.trt.layers import onnx_layer_times

    meas = json.loads((dense_run / "measurement.json").read_text())
    analysis = json.loads((dense_run / "analysis.json").read_text())
    times = onnx_layer_times(meas["engine_layers"], analysis["analysis"]["layers"])
    blob = {"layer_times": times, "derived_from": str(dense_run / "measurement.json"),
            "how": "benchmarks/prune_qat_table.py derive_layer_times: engine_layers (ORT profiler, per kernel) split "
                   "over their ONNX nodes by roofline bound (pipeline.trt.layers.onnx_layer_times)",
            "measured_model": meas["measured"].get("measured_model")}
    dest.write_text(json.dumps(blob, indent=1))
    return blob


def configs_for(model: str, work: Path) -> List[tuple]:
    """(name, overrides) in run order; the latency-steered ones need the unpruned run first."""
    p = [PRUNE_STAGES, *COMMON]
    rows = [("unpruned", [DENSE_STAGES, *COMMON])]
    rows += [(f"l1_{r}", [*p, f"prune.channels={r}"]) for r in (0.25, 0.5, 0.75)]
    rows += [("l1_0.5_global", [*p, "prune.channels=0.5", "prune.global_ranking=true"])]
    rows += [("l1_0.5_latency_raw", [*p, "prune.channels=0.5",
                                     f"prune.layer_times={work / model / 'unpruned' / 'measurement.json'}"])]
    rows += [("l1_0.5_latency", [*p, "prune.channels=0.5",
                                 f"prune.layer_times={work / model / 'layer_times_from_ort.json'}"])]
    rows += [("l1_0.5_round8", [*p, "prune.channels=0.5", "prune.round_to=8"])]
    rows += [("sparse24", [*p, "prune.sparse24=true"])]
    if model == "digits_resnet":
        rows += [(f"l1_0.75_{k}", [*p, "prune.channels=0.75", *v]) for k, v in PTQ_VARIANTS.items()]
    return rows


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(rows: List[Dict[str, Any]]) -> str:
    head = ("| model | config | params | MFLOPs | roofline us | ORT bs1 ms (profile stage) | ORT bs1 ms Q/DQ / FP32 "
            "(re-timed) | FP32 unpruned | pruned before FT | pruned after FT | PTQ INT8 | QAT INT8 | prune s | qat s |")
    lines = [head, "|" + "---|" * 2 + "---:|" * 12]
    for r in rows:
        if r["returncode"] != 0:
            failed = [f"{k}: {v.get('reason', '')}" for k, v in r["stages"].items() if v["status"] == "failed"]
            lines.append(f"| {r['model']} | {r['name']} | failed: {'; '.join(failed)[:160]} |" + " |" * 11)
            continue
        rt = r.get("retimed_bs1_ms") or {}
        lines.append(
            f"| {r['model']} | {r['name']} | {_f(r.get('parameters'), '{:,}')} | {_f(r.get('flops') and r['flops'] / 1e6, '{:.2f}')} "
            f"| {_f(r.get('roofline_us'), '{:.1f}')} | {_f((r.get('ort_bs1_ms') or {}).get('median'), '{:.3f}')} "
            f"| {_f(rt.get('qat_qdq', {}).get('median'), '{:.3f}')} / {_f(rt.get('fp32', {}).get('median'), '{:.3f}')} "
            f"| {_f(r.get('top1_fp32_unpruned'))} | {_f(r.get('top1_pruned_before_finetune'))} "
            f"| {_f(r.get('top1_pruned_after_finetune'))} | {_f(r.get('top1_ptq'))} | {_f(r.get('top1_qat'))} "
            f"| {_f(r.get('prune_stage_s'), '{:.1f}')} | {_f(r.get('qat_stage_s'), '{:.1f}')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the run folders (wiped per configuration)")
    ap.add_argument("--models", default="digits_resnet,digits_cnn")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "prune_qat_digits.json")
    args = ap.parse_args()
    work = args.work.resolve()
    t0 = time.perf_counter()
    git_start, load_start = _git(), _loadavg()
    rows: List[Dict[str, Any]] = []
    derived: Dict[str, Any] = {}
    for model in args.models.split(","):
        for name, overrides in configs_for(model, work):
            if name == "l1_0.5_latency":
                blob = derive_layer_times(work / model / "unpruned", work / model / "layer_times_from_ort.json")
                derived[model] = {"file": str(work / model / "layer_times_from_ort.json"),
                                  "nodes": len(blob["layer_times"]), "from": blob["derived_from"]}
            rows.append(run_pipeline(name, model, overrides, work))
    print("re-timing every model round-robin ...", flush=True)
    retime(rows)
    import onnxruntime
    import torch
    import torch_pruning

    result = {
        "benchmark": "prune_qat_table",
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], os.getcwd())] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "torch_pruning": torch_pruning.__version__, "onnxruntime": onnxruntime.__version__},
        "total_seconds": round(time.perf_counter() - t0, 1),
        "git": {"start": git_start, "end": _git()},
        "loadavg": {"start": load_start, "end": _loadavg()},
        "common_overrides": COMMON,
        "layer_times_derived": derived,
        "notes": [
            "ORT bs1 median: the profile stage's ONNX Runtime measurement (CPU, intra-op threads = ORT default, "
            "2 cores) of the model the qat stage handed on (its QAT Q/DQ ONNX). ort_compute_kernels lists the "
            "kernels ORT ran for the convs/Gemm: FusedConv/Conv/Gemm are float kernels between Q/DQ pairs, not "
            "integer ones (no QLinearConv), so 'INT8 on ORT' here is simulated INT8.",
            "top1_fp32_unpruned from prune.json 'dense' (qat.json 'fp32' for the unpruned run); top1_fp32 is the FP32 "
            "model QAT started from (the pruned, fine-tuned one).",
            "Fresh artifact store per run (engines_dir=<run>/engines): no stage is reused, stage seconds are real. The "
            "machine is shared (other sessions' jobs run at times): wall times move with them; cpu_s (user+sys of "
            "the pipeline process) and loadavg_before say when a row was contended. retimed_bs1_ms: every model "
            "timed again round-robin (3 rounds x 1000 runs after 100 warm-up, ORT default threads) after all runs.",
        ],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(rows))
    print(f"\nwrote {args.out} ({result['total_seconds']} s)")
    return 0


def _git() -> Dict[str, Any]:
    """HEAD and the uncommitted files under pipeline/ (other work may change the tree during a run)."""
    def out(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"head": out("rev-parse", "HEAD"), "dirty_pipeline_files": out("status", "--porcelain", "pipeline").splitlines()}


def _loadavg() -> Optional[str]:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
