"""The prune stage as a file-to-file step: a torch model -> pruned (and/or 2:4-sparse) fine-tuned model, its ONNX,
and ``prune.json`` with what it cost and what it bought.

Usable without Hydra::

    from pipeline.core.config import ModelConfig, PruneConfig
    from pipeline.prune.stage import PruneInputs, PruneSettings, run
    out = run(PruneInputs(ModelConfig(name="digits_resnet"), train_data=..., eval_data=...),
              PruneSettings(PruneConfig(channels=0.5, finetune_epochs=5)), Path("out"))
    out.onnx, out.results     # out/digits_resnet.pruned.onnx, out/prune.json

Steps: build the model, measure it (parameters, MACs, roofline time of its ONNX on the configured hardware,
accuracy on the eval data), prune the channels with the smallest L1 norm (for real, Torch-Pruning's DepGraph) and/or
mask 2:4, fine-tune on the labelled training data with the masks fixed, measure again, and export the pruned model
through the export stage's own path (same checks and summary) so the stages after it (analyze, quantize, build,
profile) run on it. Accuracy is top-1 against the labels when the data has them, else top-1 agreement with the
unpruned model (random-weight models: a structural check, not an accuracy claim).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np

from pipeline.core.artifacts import write_json
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.core.config import HardwareConfig, ModelConfig, PrecisionConfig, PruneConfig

#: Results file of this stage, in the run folder.
RESULTS_NAME = "prune.json"
#: Summary of the pruned model's export (the stages after prune read it like export.json).
SUMMARY_NAME = "prune.export.json"


@dataclass(frozen=True)
class PruneInputs:
    """The model to prune, labelled training samples (fine-tune), eval samples, and optionally a profile's
    ``measurement.json`` whose per-layer times steer the per-layer ratios."""

    model: "ModelConfig"
    train_data: Optional[Path] = None
    eval_data: Optional[Path] = None
    layer_times: Optional[Path] = None


@dataclass(frozen=True)
class PruneSettings:
    """How to prune, and what the roofline prediction is for (hardware, precision, batch) and the export opset."""

    prune: "PruneConfig"
    precision: Optional["PrecisionConfig"] = None
    hardware: Optional["HardwareConfig"] = None
    batch_size: int = 1
    opset: int = 17


@dataclass(frozen=True)
class PruneOutputs:
    """The pruned ONNX, its export summary, the pruned torch module (``torch.save``) and ``prune.json``."""

    onnx: Path
    summary: Path
    module: Path
    results: Path
    facts: Dict[str, Any] = field(default_factory=dict)


def round_to_for(prune: "PruneConfig", precision: Optional[str]) -> int:
    """``prune.round_to``, or the Tensor Core multiple of the precision (32 for INT8, 8 otherwise)."""
    if prune.round_to is not None:
        if prune.round_to < 1:
            raise PipelineError(f"prune.round_to={prune.round_to} is not a channel multiple.",
                                "Use 8 (FP16 Tensor Cores), 32 (INT8) or null for the precision's own.")
        return int(prune.round_to)
    return 32 if precision == "int8" else 8


def _check(prune: "PruneConfig") -> None:
    if not 0.0 <= prune.channels < 1.0:
        raise PipelineError(f"prune.channels={prune.channels} is not a share of channels in [0, 1).",
                            "Use e.g. prune.channels=0.25 (remove a quarter of each layer's channels).")
    if prune.channels == 0.0 and not prune.sparse24:
        raise PipelineError("The prune stage has nothing to do: prune.channels=0 and prune.sparse24=false.",
                            "Set prune.channels=0.25 (L1 channel pruning) and/or prune.sparse24=true (2:4 sparsity).")
    if prune.finetune_epochs < 0:
        raise PipelineError(f"prune.finetune_epochs={prune.finetune_epochs} is negative.", "Use 0 or more.")


def _load(path: Optional[Path], specs: List[Any]) -> Optional[Any]:
    if path is None:
        return None
    from pipeline.core.datasets import load_dataset_file

    ds = load_dataset_file(path, [s.name for s in specs])
    if len(ds) == 0:
        raise PipelineError(f"The dataset {path} is empty.", "Draw samples with data.num_samples / data.calib_samples > 0.")
    return ds


def _single_input(ds: Any, specs: List[Any]) -> np.ndarray:
    if len(specs) != 1:
        raise PipelineError(f"The prune stage fine-tunes and scores single-input classifiers; this model has "
                            f"{len(specs)} inputs ({', '.join(s.name for s in specs)}).",
                            "Set prune.finetune_epochs=0 and use a data source without labels, or prune a classifier.")
    return np.ascontiguousarray(ds.inputs[specs[0].name], dtype=np.float32)


def _feeds(ds: Any, specs: List[Any]) -> Dict[str, np.ndarray]:
    """The dataset's arrays in the model's input order and dtypes."""
    return {sp.name: np.ascontiguousarray(ds.inputs[sp.name], dtype=np.dtype(sp.dtype)) for sp in specs}


def _outputs(model: Any, feeds: Dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    import torch

    model.eval()
    n = len(next(iter(feeds.values())))
    with torch.no_grad():
        outs = [model(*(torch.from_numpy(a[i:i + batch]) for a in feeds.values())) for i in range(0, n, batch)]
    outs = [o[0] if isinstance(o, (tuple, list)) else o for o in outs]
    return np.concatenate([o.numpy() for o in outs])


def _score(model: Any, feeds: Dict[str, np.ndarray], labels: Optional[np.ndarray], reference: np.ndarray,
           task: str) -> Dict[str, Any]:
    """Top-1 against labels; without labels, top-1 agreement (classifiers) or the mean output cosine (others)
    with the unpruned model."""
    from pipeline.core.accuracy import cosine_per_sample, label_accuracy, top1_agreement

    out, n = _outputs(model, feeds), len(reference)
    if labels is not None:
        return {"metric": "top1", "value": label_accuracy(out, labels), "samples": n}
    if task == "classification":
        return {"metric": "top1_agreement_with_unpruned", "value": top1_agreement(out, reference), "samples": n}
    return {"metric": "output_cosine_with_unpruned", "value": float(np.mean(cosine_per_sample(reference, out))),
            "samples": n}


def _predicted(onnx: Path, summary: Path, settings: PruneSettings, sparse: bool = False) -> Optional[Dict[str, Any]]:
    """Roofline of an ONNX on the configured hardware (None where the hardware has no peak for the precision);
    ``sparse``: at the 2:4 sparse Tensor Core peaks (the pruned model with ``prune.sparse24``)."""
    if settings.hardware is None or settings.precision is None:
        return None
    import json

    from pipeline.analyze.stage import AnalyzeInputs, AnalyzeSettings
    from pipeline.analyze.stage import run as analyze
    from pipeline.core.errors import StageSkipped

    with tempfile.TemporaryDirectory() as tmp:
        try:
            res = analyze(AnalyzeInputs(onnx, summary), AnalyzeSettings(settings.hardware, settings.precision,
                                                                         settings.batch_size, sparse), Path(tmp))
        except StageSkipped:
            return None
        d = json.loads(res.results.read_text())
    a = d["analysis"]
    return {"hardware": d["hardware"].get("name"), "precision": settings.precision.name, "sparse_peaks": sparse,
            "batch_size": settings.batch_size, "flops": (a.get("totals") or {}).get("flops"),
            "bytes": (a.get("totals") or {}).get("bytes"), "predicted_latency_s": a.get("predicted_latency_s")}


def _layer_ratios(inputs: PruneInputs, prune: "PruneConfig") -> Dict[str, float]:
    if inputs.layer_times is None:
        return {}
    import json

    from pipeline.prune.channels import module_times_from_onnx, ratios_from_latency

    path = Path(inputs.layer_times)
    try:
        # {ONNX node: seconds}: the profile stage attributes each engine (or ONNX Runtime) layer's time to its nodes.
        meas = json.loads(path.read_text())
        node_times = {str(k): float(v) for k, v in (meas.get("layer_times") or {}).items() if v is not None}
        if not node_times and meas.get("engine_layers"):  # ONNX Runtime profiles fill engine_layers only
            from pipeline.trt.layers import onnx_layer_times

            node_times = onnx_layer_times(meas["engine_layers"])
    except (OSError, ValueError, AttributeError) as err:
        raise PipelineError(f"prune.layer_times={path} is not a readable measurement.json ({err}).",
                            "Point it at the measurement.json of a profile run of the same model.") from err
    times = module_times_from_onnx(node_times)
    if not times:
        raise PipelineError(f"No layer of {path} maps to a module of the model.",
                            "Pass the measurement.json of a profile run of this same model (TensorRT with "
                            "profile.layer_times=true, or ONNX Runtime).")
    return ratios_from_latency(times, prune.channels, prune.max_layer_ratio)


def _measure(model: Any, bundle: Any, name: str, stem: str, settings: PruneSettings, out: Path,
             x: Optional[Dict[str, np.ndarray]],
             labels: Optional[np.ndarray], reference: Optional[np.ndarray], summary_name: str) -> Dict[str, Any]:
    """Export ``model`` through the export stage's path and measure it: parameters, roofline, accuracy."""
    from pipeline.export.stage import ExportSettings, export_bundle

    exported = export_bundle(replace(bundle, module=model), name, ExportSettings(settings.opset, settings.batch_size),
                             out, stem=stem, summary_name=summary_name, producer="prune")
    facts: Dict[str, Any] = {"onnx": exported.onnx.name, "summary": exported.summary.name,
                             "parameters": int(sum(p.numel() for p in model.parameters())),
                             "roofline": _predicted(exported.onnx, exported.summary, settings,
                                                    sparse=stem.endswith(".pruned") and settings.prune.sparse24)}
    if x is not None and reference is not None:
        facts["accuracy"] = _score(model, x, labels, reference, bundle.task)
    return facts


def _finetune(model: Any, train: Optional[Any], specs: List[Any], prune: "PruneConfig",
              masks: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if prune.finetune_epochs == 0:
        return {"ran": False, "why": "prune.finetune_epochs=0"}
    if train is None or train.labels is None:
        return {"ran": False, "why": "the training data has no labels (data=random?): pruned without fine-tuning; "
                                     "use data=digits or a labelled folder/npz dataset to recover accuracy"}
    from pipeline.prune.finetune import finetune

    x = _single_input(train, specs)
    history = finetune(model, x, np.asarray(train.labels), epochs=prune.finetune_epochs, lr=prune.lr,
                       batch_size=prune.batch_size, seed=prune.seed, masks=masks)
    return {"ran": True, "samples": len(x), **history}


def run(inputs: PruneInputs, settings: PruneSettings, out: Path) -> PruneOutputs:
    """Prune ``inputs.model`` into ``out``; see the module docstring.

    Raises:
        PipelineError: nothing to do, a model without a torch module (``model=onnx``), an empty dataset, a
            multi-input model asked to fine-tune, or what the pruning itself refuses (bad ratio, no prunable layer).
    """
    import torch

    from pipeline.export.stage import model_name
    from pipeline.models import build_model

    prune, out = settings.prune, Path(out)
    _check(prune)
    bundle = build_model(inputs.model)
    if bundle.module is None:
        raise PipelineError("The prune stage needs the torch model; model=onnx is only an ONNX file.",
                            "Prune a zoo or custom torch model (model=<name> or model=custom), then export it.")
    name, specs = model_name(inputs.model), list(bundle.inputs)
    train, evals = _load(inputs.train_data, specs), _load(inputs.eval_data, specs)
    x = _feeds(evals, specs) if evals is not None else None
    labels = np.asarray(evals.labels) if evals is not None and evals.labels is not None else None
    model = bundle.module.eval()
    reference = _outputs(model, x) if x is not None else None
    dense = _measure(model, bundle, name, f"{name}.dense", settings, out, x, labels, reference, "prune.dense.json")
    t0 = time.perf_counter()
    facts: Dict[str, Any] = {"config": asdict(prune), "round_to": round_to_for(prune, getattr(settings.precision, "name", None)),
                             "dense": dense}
    if prune.channels > 0:
        from pipeline.data.sources import random_inputs
        from pipeline.prune.channels import prune_channels

        example = tuple(torch.from_numpy(a) for a in random_inputs(specs, 1, np.random.default_rng(0)).values())
        result = prune_channels(model, example, prune.channels, global_ranking=prune.global_ranking,
                                round_to=facts["round_to"], per_layer=_layer_ratios(inputs, prune) or None)
        facts["channels"] = result.to_dict()
    masks = None
    if prune.sparse24:
        from pipeline.prune.sparsity import apply_24

        m24 = apply_24(model)
        masks = m24.masks
        facts["sparse24_masks"] = {"layers": sorted(m24.masks), "skipped": dict(m24.skipped)}
    if x is not None and reference is not None:
        facts["accuracy_before_finetune"] = _score(model, x, labels, reference, bundle.task)
    facts["finetune"] = _finetune(model, train, specs, prune, masks)
    model.eval()
    facts["prune_seconds"] = round(time.perf_counter() - t0, 3)
    pruned = _measure(model, bundle, name, f"{name}.pruned", settings, out, x, labels, reference, SUMMARY_NAME)
    facts["pruned"] = pruned
    if prune.sparse24:
        from pipeline.prune.sparsity import check_24, summary_24

        rows = check_24(out / pruned["onnx"])
        facts["sparse24"] = {"check": summary_24(rows), "layers": rows}
    module_path = out / f"{name}.pruned.pt"
    from pipeline.core.artifacts import atomic_path

    with atomic_path(module_path) as tmp:
        torch.save(model, tmp)  # the whole module: its shapes changed, a state dict alone would not load
    results = write_json(out / RESULTS_NAME, {"model": name, **facts, "module": module_path.name})
    return PruneOutputs(out / pruned["onnx"], out / SUMMARY_NAME, module_path, results, facts)
