"""Anchors for the prune stage (issue 13): our channel pruning and 2:4 masks against torch's own pruning utilities
and NVIDIA ModelOpt's sparsity, same models, same data, same fine-tune.

Models: digits_resnet and digits_cnn with their trained weights (``pipeline.models.digits.load_or_train``, seed 0,
the pipeline's default), data: the fixed digits split (``pipeline.data.digits.digits_split``: 1400 train / 397
test). Every variant fine-tunes with ``pipeline.prune.finetune.finetune`` (Adam, lr 1e-3, batch 64, seed 0,
5 epochs) on the 1400 training images, under ``torch.set_num_threads(1)``.

- ``ours_l1_0.5``: ``pipeline.prune.channels.prune_channels`` (L1, Torch-Pruning DepGraph), ratio 0.5, round_to=8.
- ``torch_ln_structured_0.5``: ``torch.nn.utils.prune.ln_structured(module, "weight", amount=0.5, n=1, dim=0)`` on
  every Conv/Linear except the classifier (the layers ``prune_channels`` prunes), the same fine-tune with torch's
  masks in place (forward pre-hooks: ``weight = weight_orig * weight_mask``), then ``prune.remove``. The channels
  are zeroed, not removed: parameters, MACs and the exported ONNX keep their sizes.
- ``ours_24``: ``pipeline.prune.sparsity.apply_24`` + the fine-tune with the masks (``finetune(masks=...)``).
- ``ours_24_classifier_dense``: the same with the classifier left dense (``apply_24(skip=[classifier])``), the layers
  ModelOpt masks, for an equal comparison.
- ``modelopt_24``: ``modelopt.torch.sparsity.sparsify(model, mode="sparse_magnitude", config={"verbose": False})``
  + the same fine-tune (ModelOpt multiplies the weight by its mask in every forward), then
  ``modelopt.torch.sparsity.export``. ModelOpt is not a dependency of this project: it runs in a child process
  of another interpreter (``--modelopt-python``, default ``/tmp/mo/bin/python``, the environment of
  ``quant_anchor_modelopt.py``), which writes the fine-tuned state dict and the masks; a failure is recorded.

For each: top-1 on the 397 test images before and after the fine-tune, parameters (all and non-zero), MACs
(``torch_pruning.utils.count_ops_and_params`` at batch 1), the exported ONNX (``torch.onnx.export``, opset 17,
dynamic batch, checked against torch on ONNX Runtime) timed on ONNX Runtime's CPU provider at batch 1 and 64
(all graph optimisations, ORT's default threads; per round a fixed warm-up then a fixed number of timed runs;
the variants are timed round-robin over 5 rounds, median of all timed runs), and the wall time (prune or mask +
fine-tune). The 2:4 masks of ours and ModelOpt are compared position by position.

    python benchmarks/prune_anchors.py        # ~1-2 min on 2 cores -> results/prune_anchors_digits.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.environment import cpu_model  # noqa: E402

ARCHS = {"digits_resnet": "resnet", "digits_cnn": "cnn"}
EPOCHS, RATIO, ROUND_TO, SEED = 5, 0.5, 8, 0
RUNS = {1: (100, 1500), 64: (10, 150)}  # batch -> (warm-up runs, timed runs) per round
ROUNDS = 5


# ----------------------------------------------------------------------------- shared (both interpreters)



def data() -> Dict[str, np.ndarray]:
    from pipeline.data.digits import digits_split

    s = digits_split()
    return {"x_train": np.ascontiguousarray(s.train_x[:, None]), "y_train": np.asarray(s.train_y),
            "x_test": np.ascontiguousarray(s.test_x[:, None]), "y_test": np.asarray(s.test_y)}


def trained(model: str):
    from pipeline.models.digits import load_or_train

    m, _ = load_or_train(SEED, ARCHS[model])
    return m.eval()


def top1(m, d) -> float:
    from pipeline.prune.finetune import top1 as _top1

    return _top1(m, d["x_test"], d["y_test"])


def finetune(m, d, masks=None) -> Dict[str, Any]:
    import torch

    from pipeline.prune.finetune import finetune as _finetune

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        h = _finetune(m, d["x_train"], d["y_train"], epochs=EPOCHS, seed=SEED, masks=masks)
    finally:
        torch.set_num_threads(threads)
    return {"seconds": round(h["seconds"], 3), "loss_first_last": [round(h["loss"][0], 5), round(h["loss"][-1], 5)],
            "steps": h["steps"]}


# ----------------------------------------------------------------------------- ModelOpt child


def modelopt_child(model: str, out: Path) -> int:
    """Runs under the ModelOpt interpreter: sparsify, fine-tune, export; writes result.json, state.pt, masks.npz."""
    t_imp = time.perf_counter()
    import torch

    import modelopt
    import modelopt.torch.sparsity as mts

    import_s = time.perf_counter() - t_imp
    d = data()
    m = trained(model)
    res: Dict[str, Any] = {"modelopt": modelopt.__version__, "torch": torch.__version__, "import_seconds": round(import_s, 2),
                           "python": sys.executable}
    t0 = time.perf_counter()
    m = mts.sparsify(m, mode="sparse_magnitude", config={"verbose": False})
    res["sparsify_seconds"] = round(time.perf_counter() - t0, 3)
    masks = {n: mod._weight_mask.cpu().numpy() for n, mod in m.named_modules()
             if getattr(mod, "_weight_mask", None) is not None and not bool(mod._weight_mask.all())}
    res["masked_layers"] = sorted(masks)
    res["top1_before_finetune"] = top1(m, d)
    res["finetune"] = finetune(m, d)
    res["top1_after_finetune_masked"] = top1(m, d)
    t1 = time.perf_counter()
    m = mts.export(m)
    res["export_seconds"] = round(time.perf_counter() - t1, 3)
    res["type_after_export"] = type(m).__name__
    res["top1_after_finetune"] = top1(m, d)
    res["wall_seconds"] = round(res["sparsify_seconds"] + res["finetune"]["seconds"] + res["export_seconds"], 3)
    # The plain state dict (ModelOpt's export leaves standard modules with the masked weights).
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith("_")}
    torch.save(sd, out / "state.pt")
    np.savez(out / "masks.npz", **masks)
    (out / "result.json").write_text(json.dumps(res, indent=1))
    return 0


def run_modelopt(model: str, python: str, d, work: Path) -> Dict[str, Any]:
    """The ModelOpt variant through the child interpreter; ``{"error": ...}`` when it cannot run."""
    import torch

    if not Path(python).is_file():
        return {"error": f"no ModelOpt interpreter at {python} (see benchmarks/quant_anchor_modelopt.py for the "
                         "/tmp/mo environment)"}
    out = work / f"modelopt_{model}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [python, str(Path(__file__).resolve()), "--modelopt-child", model, "--child-out", str(out)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    if res.returncode != 0 or not (out / "result.json").is_file():
        return {"error": f"child exited {res.returncode}", "stderr_tail": res.stderr[-3000:], "command": shlex.join(cmd)}
    r = json.loads((out / "result.json").read_text())
    r["child_process_seconds"] = round(time.perf_counter() - t0, 2)
    r["command"] = shlex.join(cmd)
    m = trained(model)
    missing, unexpected = m.load_state_dict(torch.load(out / "state.pt", map_location="cpu"), strict=False)
    if missing or unexpected:
        r["state_dict_mismatch"] = {"missing": list(missing), "unexpected": list(unexpected)}
    r["module"] = m.eval()
    r["masks"] = {k: v.astype(bool) for k, v in np.load(out / "masks.npz").items()}
    return r


# ----------------------------------------------------------------------------- measurement


def counts(m) -> Dict[str, int]:
    import torch
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(m, torch.zeros(1, 1, 8, 8))
    ps = list(m.parameters())
    return {"parameters": int(sum(p.numel() for p in ps)), "nonzero_parameters": int(sum(int((p != 0).sum()) for p in ps)),
            "macs": int(macs), "params_torch_pruning": int(params)}


def export_onnx(m, path: Path, d) -> Dict[str, Any]:
    import onnx
    import onnxruntime as ort
    import torch

    m.eval()
    torch.onnx.export(m, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
    model = onnx.load(str(path))
    weights = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = d["x_test"][:64]
    with torch.no_grad():
        ref = m(torch.from_numpy(np.array(x))).numpy()
    got = sess.run(None, {"input": x})[0]
    from pipeline.prune.sparsity import check_24, summary_24

    s24 = summary_24(check_24(model))
    return {"onnx_initializer_elements": weights, "onnx_max_abs_diff_vs_torch": float(np.abs(ref - got).max()),
            "onnx_bytes": path.stat().st_size, "onnx_24": {k: s24[k] for k in ("checked", "sparse_24", "share_24")}}


def time_sessions(paths: Dict[str, Path], d) -> Dict[str, Dict[str, Any]]:
    """Median latency per model at batch 1 and 64: ORT CPU, fixed warm-up and runs, models round-robin."""
    import onnxruntime as ort

    sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    feeds = {b: {"input": np.ascontiguousarray(d["x_test"][:b])} for b in RUNS}
    times: Dict[str, Dict[int, List[float]]] = {k: {b: [] for b in RUNS} for k in paths}
    for _ in range(ROUNDS):
        for k, sess in sessions.items():
            for b, (warm, runs) in RUNS.items():
                for _ in range(warm):
                    sess.run(None, feeds[b])
                for _ in range(runs):
                    t = time.perf_counter()
                    sess.run(None, feeds[b])
                    times[k][b].append(time.perf_counter() - t)
    return {k: {f"bs{b}_median_ms": round(float(np.median(v[b])) * 1e3, 4) for b in RUNS} |
            {f"bs{b}_p90_ms": round(float(np.percentile(v[b], 90)) * 1e3, 4) for b in RUNS} |
            {"runs_per_batch": {f"bs{b}": len(v[b]) for b in RUNS}} for k, v in times.items()}


# ----------------------------------------------------------------------------- variants


def variant(name: str, m, d, make: Callable[[Any], Dict[str, Any]]) -> Dict[str, Any]:
    """``make(m)`` prunes/masks ``m`` in place and returns the masks (or {}); then score, fine-tune, score."""
    t0 = time.perf_counter()
    facts: Dict[str, Any] = {"name": name}
    extra = make(m) or {}
    facts["prune_seconds"] = round(time.perf_counter() - t0, 3)
    facts["top1_before_finetune"] = top1(m, d)
    facts["finetune"] = finetune(m, d, masks=extra.pop("masks", None))
    post = extra.pop("after_finetune", None)
    if post:
        post(m)
    facts["top1_after_finetune"] = top1(m, d)
    facts["wall_seconds"] = round(time.perf_counter() - t0, 3)
    facts.update(extra)
    return facts


def ours_l1(m) -> Dict[str, Any]:
    import torch

    from pipeline.prune.channels import prune_channels

    r = prune_channels(m, torch.zeros(1, 1, 8, 8), RATIO, round_to=ROUND_TO)
    return {"channels": {ly["name"]: f"{ly['out_before']}->{ly['out_after']}" for ly in r.layers},
            "warnings": r.warnings}


def torch_ln(m) -> Dict[str, Any]:
    import torch
    from torch import nn
    from torch.nn.utils import prune as tprune

    from pipeline.prune.channels import output_layers

    skip = set(output_layers(m, torch.zeros(1, 1, 8, 8)))
    pruned = []
    for name, mod in m.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and name not in skip:
            tprune.ln_structured(mod, "weight", amount=RATIO, n=1, dim=0)
            pruned.append(name)

    def remove(model) -> None:
        for name, mod in model.named_modules():
            if name in pruned:
                tprune.remove(mod, "weight")

    return {"pruned_layers": pruned, "classifier_kept": sorted(skip), "after_finetune": remove}


def ours_24(m) -> Dict[str, Any]:
    from pipeline.prune.sparsity import apply_24

    r = apply_24(m)
    return {"masks": r.masks, "masked_layers": sorted(r.masks), "skipped": dict(r.skipped),
            "_masks_np": {k: v.cpu().numpy().astype(bool) for k, v in r.masks.items()}}


def ours_24_like_modelopt(m) -> Dict[str, Any]:
    """Ours on the layers ModelOpt masks: the classifier left dense (ModelOpt's ASP rule skips weights whose output
    count is not a multiple of 8 or input count not a multiple of 16: the 10-class classifier, the 1-channel stem)."""
    import torch

    from pipeline.prune.channels import output_layers
    from pipeline.prune.sparsity import apply_24

    r = apply_24(m, skip=output_layers(m, torch.zeros(1, 1, 8, 8)))
    return {"masks": r.masks, "masked_layers": sorted(r.masks), "skipped": dict(r.skipped)}


def compare_masks(ours: Dict[str, np.ndarray], mo: Dict[str, np.ndarray]) -> Dict[str, Any]:
    both = sorted(set(ours) & set(mo))
    per = {}
    for k in both:
        a, b = ours[k], mo[k]
        per[k] = {"shape": list(a.shape), "identical_positions": float((a == b).mean()),
                  "kept_positions_identical": float((a & b).sum() / max(1, a.sum())),
                  "groups_of_4_identical": float(np.all(np.moveaxis(a == b, 1, -1).reshape(-1, 4), axis=1).mean())}
    total = sum(ours[k].size for k in both)
    return {"layers_both": both, "only_ours": sorted(set(ours) - set(mo)), "only_modelopt": sorted(set(mo) - set(ours)),
            "per_layer": per,
            "identical_positions_weighted": (sum(per[k]["identical_positions"] * ours[k].size for k in both) / total
                                             if total else None)}


def run_model(model: str, mo_python: str, work: Path) -> Dict[str, Any]:
    d = data()
    base = trained(model)
    rows: Dict[str, Dict[str, Any]] = {"unpruned": {"name": "unpruned", "top1_before_finetune": top1(base, d),
                                                    "top1_after_finetune": None, "wall_seconds": None}}
    modules = {"unpruned": base}
    for name, make in (("ours_l1_0.5", ours_l1), ("torch_ln_structured_0.5", torch_ln), ("ours_24", ours_24),
                       ("ours_24_classifier_dense", ours_24_like_modelopt)):
        m = copy.deepcopy(base)
        rows[name] = variant(name, m, d, make)
        modules[name] = m
        print(f"  {model} {name}: top1 {rows[name]['top1_before_finetune']:.4f} -> {rows[name]['top1_after_finetune']:.4f}",
              flush=True)
    ours_masks = rows["ours_24"].pop("_masks_np")
    try:
        mo = run_modelopt(model, mo_python, d, work)
    except Exception as err:  # noqa: BLE001 - recorded, the other rows still count
        mo = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
    if "error" in mo:
        rows["modelopt_24"] = {"name": "modelopt_24", **mo}
        print(f"  {model} modelopt_24: {mo['error']}", flush=True)
    else:
        modules["modelopt_24"] = mo.pop("module")
        mo_masks = mo.pop("masks")
        rows["modelopt_24"] = {"name": "modelopt_24", **mo, "masks_vs_ours": compare_masks(ours_masks, mo_masks)}
        # Same masks + the same fine-tune (seed, data order, Adam): how far apart do the fine-tuned weights end up?
        a = modules["ours_24_classifier_dense"].state_dict()
        b = modules["modelopt_24"].state_dict()
        rows["modelopt_24"]["max_abs_weight_diff_vs_ours_24_classifier_dense"] = max(
            float((a[k].float() - b[k].float()).abs().max()) for k in a if k in b and a[k].is_floating_point())
        # Ours re-scored on ModelOpt's layers only: the same layers masked, for an equal comparison.
        print(f"  {model} modelopt_24: top1 {mo['top1_before_finetune']:.4f} -> {mo['top1_after_finetune']:.4f}",
              flush=True)
    paths = {}
    for name, m in modules.items():
        rows[name].update(counts(m))
        paths[name] = work / f"{model}.{name}.onnx"
        rows[name].update(export_onnx(m, paths[name], d))
    lat = time_sessions(paths, d)
    for name in paths:
        rows[name]["ort"] = lat[name]
    return {"model": model, "weights": "pipeline.models.digits.load_or_train(seed=0)", "rows": list(rows.values())}


def markdown(models: List[Dict[str, Any]]) -> str:
    head = ("| model | variant | top-1 before FT | top-1 after FT | params (non-zero / total) | MMACs | ORT bs1 ms "
            "| ORT bs64 ms | wall s |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for md in models:
        for r in md["rows"]:
            if "error" in r:
                lines.append(f"| {md['model']} | {r['name']} | error: {r['error'][:120]} | | | | | | |")
                continue
            f = lambda v, s="{:.4f}": "-" if v is None else s.format(v)  # noqa: E731
            ort = r.get("ort", {})
            lines.append(f"| {md['model']} | {r['name']} | {f(r.get('top1_before_finetune'))} | "
                         f"{f(r.get('top1_after_finetune'))} | {r['nonzero_parameters']:,} / {r['parameters']:,} | "
                         f"{r['macs'] / 1e6:.3f} | {f(ort.get('bs1_median_ms'), '{:.3f}')} | "
                         f"{f(ort.get('bs64_median_ms'), '{:.3f}')} | {f(r.get('wall_seconds'), '{:.1f}')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="digits_resnet,digits_cnn")
    ap.add_argument("--modelopt-python", default="/tmp/mo/bin/python")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "prune_anchors_digits.json")
    ap.add_argument("--modelopt-child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.modelopt_child:
        return modelopt_child(args.modelopt_child, args.child_out)
    import onnxruntime
    import torch
    import torch_pruning

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prune-anchors-") as tmp:
        models = [run_model(m, args.modelopt_python, Path(tmp)) for m in args.models.split(",")]
    result = {
        "benchmark": "prune_anchors",
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], os.getcwd())] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "torch_pruning": torch_pruning.__version__, "onnxruntime": onnxruntime.__version__},
        "settings": {"ratio": RATIO, "round_to": ROUND_TO, "finetune_epochs": EPOCHS, "finetune": "pipeline.prune."
                     "finetune.finetune (Adam lr 1e-3, batch 64, seed 0), torch.set_num_threads(1)",
                     "ort_runs": {f"bs{b}": {"warmup": w, "timed": r, "rounds": ROUNDS} for b, (w, r) in RUNS.items()},
                     "ort_threads": "ONNX Runtime default (2 cores)", "onnx": "torch.onnx.export opset 17, dynamo=False"},
        "total_seconds": round(time.perf_counter() - t0, 1),
        "models": models,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(markdown(models))
    print(f"\nwrote {args.out} ({result['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
