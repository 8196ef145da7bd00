"""Anchor for the sensitivity stage (issue 11): a mixed-precision plan found with ONNX Runtime's ``qdq_loss_debug``.

Usage (CPU; ~15-30 min for minilm on 2 shared cores, ~1 min for digits_cnn)::

    HF_HUB_OFFLINE=1 python benchmarks/sensitivity_anchors.py --model minilm
    python benchmarks/sensitivity_anchors.py --model digits_cnn

Writes ``benchmarks/results/sensitivity_anchor_<model>.json``. What a user without our sensitivity
stage would do with ONNX Runtime's debugging tools:

1. quantize the FP32 model (every MatMul/Gemm/Conv, attention bmm included) with a quantizer:
   ``ours`` = :func:`pipeline.quantize.quantize_onnx` with the default ``QuantConfig`` (entropy,
   per-channel weights), ``ort`` = ``onnxruntime.quantization.quantize_static`` (QDQ, int8, per-channel,
   ``--ort-calib``), both on the same calibration batches;
2. collect per-tensor errors with ``onnxruntime.quantization.qdq_loss_debug``:
   ``modify_model_output_intermediate_tensors`` + ``collect_activations`` on the FP32 and the Q/DQ
   model (the first ``--debug-samples`` calibration samples), ``create_activation_matching`` +
   ``compute_activation_error`` (``qdq_err``: the noise of the Q/DQ pair on a compute node's input;
   ``xmodel_err``: FP32 vs the dequantized tensor, error accumulated so far), and the weights'
   SQNR (``create_weight_matching`` where the weights are stored pre-quantized, as ORT writes them;
   our stage keeps float weights behind a Q/DQ pair, whose DQ output the collection already holds);
3. rank the quantized compute nodes, worst first, by ``output`` = the SQNR of the node's output
   tensor (FP32 model vs Q/DQ model) or ``local`` = the lowest SQNR among the node's own Q/DQ pairs
   (activation ``qdq_err`` and weight SQNR: the noise the node itself adds);
4. return the worst ``k`` to float (``QuantConfig.exclude_nodes`` / ``nodes_to_exclude`` by node name)
   and search ``k`` by bisection (k=0 first, then halving [lo, hi]; the metric is assumed monotone in
   ``k``: every evaluated ``k`` is listed) until the budget holds on the evaluation data.

The budget is the issue's target for the pipeline's own plan: minilm embedding cosine >= 0.99 and
nearest-neighbour agreement >= 0.95 vs FP32; digits_cnn top-1 accuracy within 0.5 points of FP32.
Every metric is Q/DQ evaluated as float math in ONNX Runtime (optimisations off, what TensorRT computes
up to accumulation order) against the FP32 model on the same evaluation samples.
``find_seconds`` = statistics + error collection + search (each search step re-runs the quantizer,
as a user of the public API does, and evaluates), without export and data loading.
Reference rows: full INT8 (k=0) and the hand rule ``quant.keep_float=[ffn]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.accuracy import label_accuracy, task_metrics  # noqa: E402
from pipeline.core.artifacts import write_json  # noqa: E402
from pipeline.core.config import DataConfig, ModelConfig, QuantConfig  # noqa: E402
from pipeline.ort import ort_session, run_first_output  # noqa: E402
from pipeline.quantize import quantize_onnx  # noqa: E402

COMPUTE_OPS = ("Conv", "Gemm", "MatMul")

#: Per-model setup: the pipeline's zoo config (minilm at its configured 128 tokens), data source,
#: sample counts (calib = the data config's default; eval: 256 sentences / digits' whole 397-sample
#: test split), batch, task.
MODELS = {
    "minilm": dict(model=ModelConfig(name="minilm", input_kind="tokens", input_shape=[128]), data="text",
                   calib=128, eval=256, batch=32, task="embedding"),
    "digits_cnn": dict(model=ModelConfig(name="digits_cnn", input_kind="image", input_shape=[1, 8, 8], num_classes=10),
                       data="digits", calib=256, eval=397, batch=64, task="classification"),
}

Feed = Dict[str, np.ndarray]


def batches(inputs: Feed, bs: int) -> List[Feed]:
    """Split ``{name: (N, ...)}`` into feeds of ``bs`` samples."""
    n = len(next(iter(inputs.values())))
    return [{k: v[i:i + bs] for k, v in inputs.items()} for i in range(0, n, bs)]


def setup(args) -> "tuple[Path, int, int]":
    """Offline model hub, the model's work folder, and its calibration / evaluation sample counts."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = MODELS[args.model]
    work = Path(args.workdir) / args.model
    work.mkdir(parents=True, exist_ok=True)
    return work, args.calib or spec["calib"], args.eval or spec["eval"]


def prepare(name: str, workdir: Path, calib: int, evals: int):
    """Export the zoo model (opset 17) and load disjoint calibration / evaluation data through the pipeline."""
    from pipeline.data import load_dataset
    from pipeline.export import export_onnx
    from pipeline.models import build_model

    spec = MODELS[name]
    bundle = build_model(spec["model"])
    onnx_path = workdir / f"{name}.onnx"
    export_onnx(bundle, onnx_path, opset=17)
    dc = DataConfig(name=spec["data"], seed=0, calib_samples=calib, num_samples=evals)
    cal = load_dataset(dc, bundle.inputs, "calib", calib, tokenizer=bundle.tokenizer)
    ev = load_dataset(dc, bundle.inputs, "eval", evals, tokenizer=bundle.tokenizer)
    return onnx_path, cal, ev


# ------------------------------------------------------------------------------------------ budget
def budget_for(task: str, ref_accuracy: Optional[float]) -> Dict[str, float]:
    """The issue's accuracy budget: embedding cosine / NN agreement, or top-1 within 0.5 points of FP32."""
    if task == "embedding":
        return {"embedding_cosine": 0.99, "nn_agreement": 0.95}
    return {"accuracy": round(float(ref_accuracy) - 0.005, 6)}


def meets(metrics: Dict[str, object], budget: Dict[str, float]) -> bool:
    """Whether every budgeted metric is at or above its floor."""
    return all(float(metrics[k]) >= v for k, v in budget.items())  # type: ignore[arg-type]


def short(metrics: Dict[str, object]) -> Dict[str, object]:
    """The metrics a row keeps (cosine, NN agreement, top-1 agreement, accuracy)."""
    keys = ("embedding_cosine", "output_cosine", "output_cosine_min", "nn_agreement", "top1_agreement", "accuracy")
    return {k: round(float(metrics[k]), 6) for k in keys if k in metrics}  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ quantizers
def glob_escape(name: str) -> str:
    """A node name as an fnmatch pattern matching only itself (``QuantConfig.exclude_nodes`` takes patterns)."""
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def ours_quantizer(onnx_path: Path, cal_b: Sequence[Feed], work: Path, calib: Optional[str] = None
                   ) -> Callable[[List[str], List[str]], Path]:
    """``(exclude_nodes, keep_float) -> Q/DQ path`` with our quantize stage, default ``QuantConfig``
    (``calib`` overrides its calibration method).

    ``cache_all_tensors=False``: the TensorRT cache's extra tensors do not change the Q/DQ model.
    """
    method = calib or QuantConfig().calib

    def run(exclude: List[str], keep_float: List[str]) -> Path:
        cfg = QuantConfig(calib=method, exclude_nodes=[glob_escape(n) for n in exclude], keep_float=list(keep_float),
                          cache_all_tensors=False)
        out = work / f"ours_{method}_k{len(exclude)}_{'-'.join(keep_float) or 'x'}.onnx"
        quantize_onnx(onnx_path, cal_b, cfg, out, progress=False)
        return out
    return run


def ort_quantizer(onnx_path: Path, cal_b: Sequence[Feed], work: Path, method: str
                  ) -> Callable[[List[str], List[str]], Path]:
    """``(nodes_to_exclude, keep_float) -> Q/DQ path`` with ORT's ``quantize_static`` (QDQ, int8, per-channel)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(cal_b)

        def get_next(self):
            return next(self.it, None)

    def run(exclude: List[str], keep_float: List[str]) -> Path:
        if keep_float:
            raise ValueError("keep_float rules are ours; pass ORT node names")
        out = work / f"ort_{method}_k{len(exclude)}.onnx"
        quantize_static(str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(COMPUTE_OPS), per_channel=True, nodes_to_exclude=list(exclude),
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
        return out
    return run


# ------------------------------------------------------------------------------------------ qdq_loss_debug
class _Reader:
    """A ``CalibrationDataReader``-shaped iterable over feeds (``collect_activations`` iterates it)."""

    def __init__(self, feeds: Sequence[Feed]):
        self.feeds = list(feeds)

    def __iter__(self):
        return iter(self.feeds)


def collect(model_path: Path, feeds: Sequence[Feed], ops: Sequence[str], work: Path) -> Dict[str, List[np.ndarray]]:
    """Every float input/output of ``ops`` nodes, per feed (``modify_model_output_intermediate_tensors``)."""
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    aug = work / f"{model_path.stem}.debug.onnx"
    modify_model_output_intermediate_tensors(str(model_path), str(aug), op_types_for_saving=list(ops))
    acts = collect_activations(str(aug), _Reader(feeds))
    aug.unlink()
    return acts


def quantized_compute_nodes(qdq_path: Path) -> List[dict]:
    """Compute nodes of the Q/DQ model with a dequantized input: ``{name, op, inputs, output}``."""
    import onnx

    m = onnx.load(str(qdq_path), load_external_data=False)
    dq_out = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [{"name": n.name, "op": n.op_type, "inputs": list(n.input), "output": n.output[0]}
            for n in m.graph.node if n.op_type in COMPUTE_OPS and any(i in dq_out for i in n.input)]


def weight_sqnr(fp32_path: Path, qdq_path: Path, q_acts: Dict[str, List[np.ndarray]]) -> Dict[str, float]:
    """SQNR (dB) of every quantized weight: ``create_weight_matching`` (weights stored as int8, ORT's
    layout), else the collected output of the weight's DequantizeLinear (float weight behind Q/DQ)."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.qdq_loss_debug import (compute_signal_to_quantization_noice_ratio,
                                                          compute_weight_error, create_weight_matching)

    out = compute_weight_error(create_weight_matching(str(fp32_path), str(qdq_path)))
    if out:
        return {k: float(v) for k, v in out.items()}
    inits = {i.name: i for i in onnx.load(str(fp32_path)).graph.initializer}
    suffix = "_DequantizeLinear_Output"
    for name, vals in q_acts.items():
        if name.endswith(suffix) and name[:-len(suffix)] in inits:
            w = numpy_helper.to_array(inits[name[:-len(suffix)]])
            out[name[:-len(suffix)]] = float(compute_signal_to_quantization_noice_ratio(w, vals[0]))
    return out


def tensor_errors(fp32_path: Path, qdq_path: Path, feeds: Sequence[Feed], work: Path) -> Dict[str, object]:
    """Per-tensor and per-node SQNR (dB) of ``qdq_path`` vs ``fp32_path`` on ``feeds``.

    Returns:
        ``{activations: {tensor: {qdq_err, xmodel_err}}, weights: {tensor: sqnr}, nodes: [{name, op,
        output_sqnr, local_sqnr}]}``; higher SQNR = smaller error.
    """
    from onnxruntime.quantization.qdq_loss_debug import (compute_activation_error,
                                                          compute_signal_to_quantization_noice_ratio,
                                                          create_activation_matching)

    f_acts = collect(fp32_path, feeds, COMPUTE_OPS, work)
    # QuantizeLinear too: its input is the pre-Q/DQ tensor that create_activation_matching pairs.
    q_acts = collect(qdq_path, feeds, (*COMPUTE_OPS, "QuantizeLinear"), work)
    act_err = compute_activation_error(create_activation_matching(q_acts, f_acts))
    w_err = weight_sqnr(fp32_path, qdq_path, q_acts)
    suffix = "_DequantizeLinear_Output"
    nodes = []
    for n in quantized_compute_nodes(qdq_path):
        # ORT renames a quantized graph output's producer tensor to ``<output>_QuantizeLinear_Input``.
        f_name = n["output"][:-len("_QuantizeLinear_Input")] if n["output"].endswith("_QuantizeLinear_Input") \
            else n["output"]
        out_sqnr = compute_signal_to_quantization_noice_ratio(f_acts[f_name], q_acts[n["output"]])
        local = []
        for i in n["inputs"]:
            base = i[:-len(suffix)] if i.endswith(suffix) else i
            if base in act_err:
                local.append(act_err[base]["qdq_err"])
            elif base in w_err:
                local.append(w_err[base])
        nodes.append({"name": n["name"], "op": n["op"], "output_sqnr": round(float(out_sqnr), 3),
                      "local_sqnr": round(float(min(local)), 3) if local else None})
    return {"activations": {k: {e: round(float(v), 3) for e, v in d.items()} for k, d in act_err.items()},
            "weights": {k: round(v, 3) for k, v in w_err.items()}, "nodes": nodes}


def ranking(nodes: List[dict], key: str) -> List[str]:
    """Node names, worst (lowest SQNR) first; nodes without a value go last."""
    return [n["name"] for n in sorted(nodes, key=lambda n: (n[key] is None, n[key] if n[key] is not None else 0.0))]


# ------------------------------------------------------------------------------------------ search
class Evaluator:
    """Quantize with a node list in float and score on the evaluation data; results cached by list."""

    def __init__(self, quantize: Callable[[List[str], List[str]], Path], ev_b: Sequence[Feed], ref: np.ndarray,
                 labels: Optional[np.ndarray], task: str, budget: Dict[str, float]):
        self.quantize, self.ev_b, self.ref, self.labels, self.task, self.budget = quantize, ev_b, ref, labels, task, budget
        self.cache: Dict[tuple, dict] = {}

    def metrics_of(self, qpath: Path) -> Dict[str, object]:
        """Q/DQ simulated in float (ORT optimisations off) vs the FP32 outputs."""
        out = run_first_output(ort_session(qpath, optimize=False), self.ev_b)
        return task_metrics(self.ref, out, self.labels, self.task)

    def step(self, exclude: List[str], keep_float: Sequence[str] = (), qpath: Optional[Path] = None) -> dict:
        """``{k, metrics, meets, seconds}`` for ``exclude`` in float; ``qpath``: already quantized."""
        key = (tuple(exclude), tuple(keep_float))
        if key not in self.cache:
            t0 = time.perf_counter()
            q = qpath or self.quantize(list(exclude), list(keep_float))
            m = self.metrics_of(q)
            self.cache[key] = {"k": len(exclude), "metrics": short(m), "meets": meets(m, self.budget),
                               "seconds": round(time.perf_counter() - t0, 3)}
            print(f"  k={len(exclude):3d} {keep_float or ''} {short(m)} meets={self.cache[key]['meets']} "
                  f"{self.cache[key]['seconds']:.1f}s", flush=True)
        return self.cache[key]


def bisect_plan(order: List[str], ev: Evaluator) -> dict:
    """Smallest ``k`` whose worst-``k``-in-float plan meets the budget, by bisection on [0, len(order)].

    ``k = len(order)`` (every compute node in float, i.e. FP32) meets it by definition and is never
    quantized (there would be nothing to quantize).
    """
    steps = [ev.step([])]
    lo, hi = 0, len(order)
    if steps[0]["meets"]:
        hi = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        s = ev.step(order[:mid])
        steps.append(s)
        lo, hi = (lo, mid) if s["meets"] else (mid, hi)
    final = next((s for s in steps if s["k"] == hi), None)
    return {"k": hi, "float_nodes": order[:hi], "metrics": final["metrics"] if final else "FP32 (every node in float)",
            "meets": True, "steps": steps, "evaluations": len(steps),
            "search_seconds": round(sum(s["seconds"] for s in steps), 3)}


def ffn_node_names(onnx_path: Path) -> List[str]:
    """Names of the nodes our structural ``keep_float=[ffn]`` rule keeps in float."""
    import onnx

    from pipeline.quantize.placement import keep_float_nodes

    m = onnx.load(str(onnx_path), load_external_data=False)
    return [m.graph.node[i].name for i in sorted(keep_float_nodes(m, ["ffn"]))]


def run_quantizer(name: str, quantize, onnx_path: Path, ev: Evaluator, debug_feeds, work: Path,
                  ref_seconds: float, rankings: Sequence[str]) -> dict:
    """Full INT8 model, its per-tensor errors, one bisection per ranking, and the keep_float=[ffn] row."""
    t0 = time.perf_counter()
    q0 = quantize([], [])
    quant_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    errors = tensor_errors(onnx_path, q0, debug_feeds, work)
    err_s = time.perf_counter() - t0
    print(f"{name}: quantize {quant_s:.1f}s, qdq_loss_debug errors {err_s:.1f}s, {len(errors['nodes'])} nodes", flush=True)
    ev.step([], qpath=q0)  # k=0 = the model just written: evaluate it without quantizing again
    searches = []
    for key in rankings:
        order = ranking(errors["nodes"], f"{key}_sqnr")
        print(f"{name} / ranking by {key} SQNR, worst first: {order[:6]}...", flush=True)
        s = bisect_plan(order, ev)
        s.update(quantizer=name, ranking=key, float_layers=s["k"],
                 find_seconds=round(ref_seconds + quant_s + err_s + s["search_seconds"], 3))
        print(f"{name} / {key}: k={s['k']} {s['metrics']} in {s['find_seconds']:.1f}s", flush=True)
        searches.append(s)
    ffn = ffn_node_names(onnx_path)
    ffn_row = None
    if ffn:
        ours = name.startswith("ours")
        ffn_row = ev.step([], ["ffn"]) if ours else ev.step(ffn)
        ffn_row = dict(ffn_row, float_layers=len(ffn), placement="keep_float=[ffn]" if ours
                       else "keep_float=[ffn] nodes as nodes_to_exclude")
    return {"quantize_seconds": round(quant_s, 3), "error_seconds": round(err_s, 3),
            "quantized_compute_nodes": len(errors["nodes"]), "errors": errors,
            "full_int8": dict(ev.cache[((), ())], float_layers=0), "keep_float_ffn": ffn_row, "searches": searches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm")
    ap.add_argument("--calib", type=int, default=None, help="calibration samples (default: per model)")
    ap.add_argument("--eval", type=int, default=None, help="evaluation samples (default: per model)")
    ap.add_argument("--debug-samples", type=int, default=32,
                    help="calibration samples run through qdq_loss_debug (every tensor of them is kept in memory)")
    ap.add_argument("--quantizers", default="ours,ort",
                    help="ours (our quantize stage, default QuantConfig), ours-<calib> (e.g. ours-max: another "
                         "calibration method) and/or ort (quantize_static)")
    ap.add_argument("--ort-calib", default="MinMax", help="quantize_static's calibrate_method (MinMax, Entropy...)")
    ap.add_argument("--rankings", default="output,local")
    ap.add_argument("--workdir", default="/tmp/sensitivity_anchors")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work, n_cal, n_ev = setup(args)
    spec = MODELS[args.model]
    onnx_path, cal, ev_data = prepare(args.model, work, n_cal, n_ev)
    bs = spec["batch"]
    cal_b, ev_b = batches(cal.inputs, bs), batches(ev_data.inputs, bs)
    debug_feeds = batches({k: v[:args.debug_samples] for k, v in cal.inputs.items()}, bs)
    labels = ev_data.labels if spec["task"] == "classification" else None
    t0 = time.perf_counter()
    ref = run_first_output(ort_session(onnx_path), ev_b)
    ref_s = time.perf_counter() - t0
    ref_acc = label_accuracy(ref, labels) if labels is not None else None
    budget = budget_for(spec["task"], ref_acc)
    print(f"{args.model}: FP32 reference {ref_s:.1f}s, budget {budget}", flush=True)
    results = {}
    for name in args.quantizers.split(","):
        if name == "ort":
            quantize = ort_quantizer(onnx_path, cal_b, work, args.ort_calib)
        else:  # ours, or ours-<calib> (e.g. ours-max)
            quantize = ours_quantizer(onnx_path, cal_b, work, name.split("-", 1)[1] if "-" in name else None)
        ev = Evaluator(quantize, ev_b, ref, labels, spec["task"], budget)
        results[name] = run_quantizer(name, quantize, onnx_path, ev, debug_feeds, work, ref_s, args.rankings.split(","))

    import onnxruntime

    result = {
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], os.getcwd())] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": args.model, "task": spec["task"], "model_config": vars(spec["model"]) if hasattr(spec["model"], "__dict__") else None,
        "calib_samples": n_cal, "eval_samples": int(len(ref)), "debug_samples": args.debug_samples, "batch": bs,
        "data": [cal.description, ev_data.description], "budget": budget,
        "reference": {"fp32_accuracy": ref_acc, "fp32_eval_seconds": round(ref_s, 3)},
        "quantizers": {"ours": "pipeline.quantize.quantize_onnx, default QuantConfig (entropy, per-channel, bmm); "
                               "ours-<calib>: the same with QuantConfig.calib=<calib>",
                       "ort": f"onnxruntime.quantization.quantize_static QDQ int8 per-channel {args.ort_calib}, "
                              f"op_types {list(COMPUTE_OPS)}"},
        "execution": "Q/DQ simulated in float: ONNX Runtime CPU, graph optimisations off",
        "find_seconds": "FP32 reference on the eval data + full-INT8 quantization (statistics) + qdq_loss_debug "
                        "error collection + every search step (quantize + evaluate)",
        "environment": {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "results": results,
    }
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"sensitivity_anchor_{args.model}.json"
    write_json(out, result)
    print("wrote", out)


if __name__ == "__main__":
    main()
