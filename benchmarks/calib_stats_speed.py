"""Speed of the one statistics pass (``collect_stats``) vs ONNX Runtime's ``quantize_static``, same data.

Usage (CPU; about 10 minutes on 2 cores with the defaults)::

    HF_HUB_OFFLINE=1 python benchmarks/calib_stats_speed.py --baseline-rev 2355775

MiniLM (all-MiniLM-L6-v2, real weights) exported through the pipeline at sequence length 128, 200
calibration sentences drawn by ``pipeline.data`` (``data=text``, seed 0), batch size 1 (the pipeline's
default ``batch_size``). Variants, run round-robin ``--repeats`` times so that load from other processes
spreads over all of them:

- ``ours_cache_all_false`` / ``ours_cache_all_true``: ``collect_stats`` on the tensors the quantize stage
  observes with :class:`QuantConfig` defaults and that ``cache_all_tensors`` (``default_variant`` says which
  one the default is). Session creation included.
- ``before_*``: the same calls with ``pipeline/quantize/stats.py`` as of ``--baseline-rev`` (loaded from
  git), to measure a change on the same machine in the same minutes; its histograms are compared with
  today's bit for bit (``identical_to_baseline``).
- ``ort_minmax`` / ``ort_entropy``: ``onnxruntime.quantization.quantize_static`` (QDQ, int8 activations and
  weights, per-channel, ``op_types_to_quantize`` = the default ``QuantConfig.op_types``), whole call
  (augmenting, calibrating, writing the Q/DQ model). Entropy flushes every 20 batches
  (``CalibMaxIntermediateOutputs``) so that memory stays bounded.

Also one serial breakdown of each of our variants and of the former default (session creation, ORT
runs, histogram updates, taken apart in one thread). Writes ``benchmarks/results/calib_stats_speed.json``: command, versions, cores,
date, seconds per variant (every repeat, min, median) and process CPU seconds.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.artifacts import write_json  # noqa: E402
from pipeline.core.config import DataConfig, ModelConfig, QuantConfig  # noqa: E402

Feed = Dict[str, np.ndarray]


def prepare(workdir: Path, seq: int, samples: int):
    """MiniLM ONNX (pipeline export, opset 17) and ``samples`` calibration feeds of batch 1."""
    from pipeline.data import load_dataset
    from pipeline.export import export_onnx
    from pipeline.models import build_model

    bundle = build_model(ModelConfig(name="minilm", input_kind="tokens", input_shape=[seq], pretrained=True))
    onnx_path = workdir / "minilm.onnx"
    if not onnx_path.is_file():
        export_onnx(bundle, onnx_path, opset=17)
    dc = DataConfig(name="text", seed=0, calib_samples=samples)
    cal = load_dataset(dc, bundle.inputs, "calib", samples, tokenizer=bundle.tokenizer)
    n = len(next(iter(cal.inputs.values())))
    feeds = [{k: v[i:i + 1] for k, v in cal.inputs.items()} for i in range(n)]
    return onnx_path, feeds, cal.description


def observed(model, cfg: QuantConfig, onnx_path: Path) -> List[str]:
    """The tensors the quantize stage observes under ``cfg`` (same calls as quantize_onnx)."""
    from pipeline.quantize.api import _float_tensor_set, _initial_plan, _observed_tensors

    plan = _initial_plan(model, cfg, _float_tensor_set(model), onnx_path)
    return _observed_tensors(model, plan, cfg)


def baseline_module(rev: str):
    """``pipeline/quantize/stats.py`` as of git ``rev``, imported as a separate module."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:pipeline/quantize/stats.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "stats_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("stats_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["stats_baseline"] = mod
    spec.loader.exec_module(mod)
    return mod


def ort_quantize_static(onnx_path: Path, feeds: List[Feed], method: str, ops: List[str], out: Path) -> None:
    """ONNX Runtime ``quantize_static`` (QDQ, int8/int8, per-channel weights) with ``method`` calibration."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    extra = {"CalibMaxIntermediateOutputs": 20} if method != "MinMax" else {}
    quantize_static(str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=ops,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method), extra_options=extra)


def breakdown(mod, model, names: List[str], feeds: List[Feed]) -> Dict[str, float]:
    """Serial, one thread: seconds in session creation, ORT runs and histogram updates."""
    t0 = time.perf_counter()
    groups = mod.same_value_groups(model, names) if hasattr(mod, "same_value_groups") else {n: [n] for n in names}
    sess = mod._session_with_outputs(model, list(groups), 0)
    t_sess = time.perf_counter() - t0
    out_names = [o.name for o in sess.get_outputs()]
    stats = {n: mod.TensorStats(n) for n in groups}
    t_run = t_hist = 0.0
    elements = 0
    for feed in feeds:
        t0 = time.perf_counter()
        values = dict(zip(out_names, sess.run(out_names, feed)))
        t_run += time.perf_counter() - t0
        values.update(feed)
        t0 = time.perf_counter()
        for n, s in stats.items():
            if n in values:
                s.update(values[n])
                elements += values[n].size
        t_hist += time.perf_counter() - t0
    return {"session_seconds": round(t_sess, 3), "ort_run_seconds": round(t_run, 3),
            "histogram_seconds": round(t_hist, 3), "tensors_observed": len(names),
            "tensors_binned": len(groups), "elements_binned_per_batch": elements // len(feeds)}


def timed(fn: Callable[[], object]) -> Dict[str, float]:
    """Wall and process-CPU seconds of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return {"wall": time.perf_counter() - w, "cpu": time.process_time() - c}


def summary(runs: List[Dict[str, float]]) -> Dict[str, object]:
    walls = [r["wall"] for r in runs]
    return {"seconds": [round(w, 3) for w in walls], "min_seconds": round(min(walls), 3),
            "median_seconds": round(statistics.median(walls), 3),
            "cpu_seconds": [round(r["cpu"], 3) for r in runs]}


def identical(a: Dict[str, object], b: Dict[str, object]) -> bool:
    """Same tensors with bit-identical min, max, range, count and histogram."""
    return list(a) == list(b) and all(
        (x.min, x.max, x.range_max, x.count) == (y.min, y.max, y.range_max, y.count)
        and np.array_equal(x.hist, y.hist) for x, y in zip(a.values(), b.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/calib_stats_speed")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-rev", default=None, help="git revision whose stats.py is timed as before_*")
    ap.add_argument("--no-entropy", action="store_true", help="skip ORT quantize_static Entropy")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "calib_stats_speed.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnx
    import onnxruntime

    from pipeline.quantize import stats as ours

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    onnx_path, feeds, description = prepare(work, args.seq, args.samples)
    model = onnx.load(str(onnx_path))
    default_cfg = QuantConfig()
    names = {"cache_all_false": observed(model, QuantConfig(cache_all_tensors=False), onnx_path),
             "cache_all_true": observed(model, QuantConfig(cache_all_tensors=True), onnx_path)}
    before = baseline_module(args.baseline_rev) if args.baseline_rev else None
    results: Dict[str, Dict[str, object]] = {}

    def collect(mod, key):
        results[key] = mod.collect_stats(model, feeds, names[key.split("_", 1)[1]], progress=False)

    variants: Dict[str, Callable[[], object]] = {}
    for key in names:
        variants[f"ours_{key}"] = (lambda k=key: collect(ours, f"ours_{k}"))
        if before is not None:
            variants[f"before_{key}"] = (lambda k=key: collect(before, f"before_{k}"))
    ops = list(default_cfg.op_types)
    variants["ort_minmax"] = lambda: ort_quantize_static(onnx_path, feeds, "MinMax", ops, work / "ort_minmax.onnx")
    if not args.no_entropy:
        variants["ort_entropy"] = lambda: ort_quantize_static(onnx_path, feeds, "Entropy", ops,
                                                              work / "ort_entropy.onnx")
    runs: Dict[str, List[Dict[str, float]]] = {k: [] for k in variants}
    for r in range(args.repeats):
        for key, fn in variants.items():
            if key == "ort_entropy" and r > 0:
                continue  # one run: it is far slower, and only a reference
            runs[key].append(timed(fn))
            print(f"repeat {r} {key:24s} {runs[key][-1]['wall']:7.2f} s", flush=True)
    rows = {k: summary(v) for k, v in runs.items()}
    for key in names:
        rows[f"ours_{key}"]["tensors_observed"] = len(names[key])
        rows[f"ours_{key}"]["breakdown_serial"] = breakdown(ours, model, names[key], feeds)
        if before is not None:
            rows[f"ours_{key}"]["identical_to_baseline"] = identical(results[f"ours_{key}"], results[f"before_{key}"])
    if before is not None:  # where the time of the former default (every float tensor) went
        rows["before_cache_all_true"]["breakdown_serial"] = breakdown(before, model, names["cache_all_true"], feeds)
    result = {
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], os.getcwd())] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": f"minilm (all-MiniLM-L6-v2 real weights), ONNX opset 17, sequence {args.seq}",
        "data": description, "calib_samples": len(feeds), "batch_size": 1,
        "default_quant_config": {"cache_all_tensors": default_cfg.cache_all_tensors, "calib": default_cfg.calib,
                                 "op_types": ops, "num_bins": default_cfg.num_bins},
        "default_variant": f"ours_cache_all_{str(default_cfg.cache_all_tensors).lower()}",
        "baseline_rev": args.baseline_rev,
        "environment": {"python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
                        "onnxruntime": onnxruntime.__version__, "cpu": platform.processor() or platform.machine(),
                        "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
                        "load_average_at_end": list(os.getloadavg())},
        "variants": rows,
    }
    write_json(Path(args.out), result)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
