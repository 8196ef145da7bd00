"""The qat stage as a file-to-file step: FP32 ONNX + the quantize stage's statistics + the torch model + labelled
data -> ``<stem>.qat.int8.qdq.onnx`` and ``qat.json`` (FP32, PTQ and QAT accuracy on the eval data).

Usable without Hydra::

    from pipeline.core.config import ModelConfig, QatConfig, QuantConfig
    from pipeline.qat.stage import QatInputs, QatSettings, run
    out = run(QatInputs(ModelConfig(name="digits_cnn"), onnx=..., stats=..., train_data=..., eval_data=...,
                        ptq_qdq=...), QatSettings(QatConfig(epochs=2), QuantConfig()), Path("out"))

The fake quantizers start from the PTQ ranges (the same statistics and calibration method the quantize stage used),
the fine-tune lets the weights adapt to INT8 rounding, and the export goes through the PTQ writer: the Q/DQ nodes sit
where the PTQ ones do, so TensorRT fuses both the same way and builds engines of the same speed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np

from pipeline.core.artifacts import write_json
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.core.config import ModelConfig, QatConfig, QuantConfig

#: Results file of this stage, in the run folder.
RESULTS_NAME = "qat.json"


@dataclass(frozen=True)
class QatInputs:
    """The model (its torch module from the zoo, or a pruned module file), the FP32 ONNX exported from it, the
    quantize stage's statistics, labelled training data, eval data and (for the comparison) the PTQ Q/DQ ONNX."""

    model: "ModelConfig"
    onnx: Path
    stats: Path
    train_data: Path
    eval_data: Path
    ptq_qdq: Optional[Path] = None
    module: Optional[Path] = None
    summary: Optional[Path] = None


@dataclass(frozen=True)
class QatSettings:
    """The fine-tune (``qat``) and the quantization the PTQ ranges came from (``quant``)."""

    qat: "QatConfig"
    quant: "QuantConfig"


@dataclass(frozen=True)
class QatOutputs:
    """The QAT Q/DQ ONNX and ``qat.json``."""

    qdq_onnx: Path
    results: Path
    facts: Dict[str, Any] = field(default_factory=dict)


def _module(inputs: QatInputs) -> Any:
    import torch

    if inputs.module is not None:  # the prune stage's pruned module: its shapes differ from the zoo's
        return torch.load(inputs.module, map_location="cpu", weights_only=False)
    from pipeline.models import build_model

    bundle = build_model(inputs.model)
    if bundle.module is None:
        raise PipelineError("The qat stage trains the torch model; model=onnx is only an ONNX file.",
                            "Run QAT on a zoo or custom torch model (model=<name> or model=custom).")
    return bundle.module


def _labelled(path: Path, what: str) -> Any:
    from pipeline.core.datasets import load_dataset_file

    ds = load_dataset_file(path)
    if len(ds) == 0:
        raise PipelineError(f"The {what} data {path} is empty.", "Draw samples (data.num_samples, qat.train_samples).")
    if ds.labels is None:
        raise PipelineError(f"QAT fine-tunes a classifier on labelled data, but the {what} data has no labels.",
                            "Use data=digits or a labelled folder/npz dataset (class subfolders, __labels__).")
    if len(ds.inputs) != 1:
        raise PipelineError(f"QAT here trains single-input classifiers; the data has {len(ds.inputs)} inputs.",
                            "Quantize multi-input models with the PTQ path (quantize stage) instead.")
    return ds


def _rekeyed(model: Any, masks: Dict[str, Any]) -> Dict[str, Any]:
    """Masks by module name after the fake quantizers wrapped some modules (``name`` -> ``name.module``)."""
    from pipeline.qat.fake_quant import QuantWrapper

    modules = dict(model.named_modules())
    return {(f"{n}.module" if isinstance(modules.get(n), QuantWrapper) else n): m for n, m in masks.items()}


def onnx_top1(onnx_path: Path, x: np.ndarray, labels: np.ndarray, batch: int = 256) -> float:
    """Top-1 of an ONNX classifier on ONNX Runtime (CPU, graph optimizations off: Q/DQ simulated as written)."""
    from pipeline.core.accuracy import label_accuracy
    from pipeline.ort.runner import run_first_output
    from pipeline.ort.session import ort_session

    sess = ort_session(onnx_path, optimize=False)
    name = sess.get_inputs()[0].name
    return label_accuracy(run_first_output(sess, [{name: x[i:i + batch]} for i in range(0, len(x), batch)]), labels)


def _placement(path: Path) -> List[str]:
    """The (node, input) pairs a Q/DQ ONNX quantizes: what TensorRT fuses."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sorted(f"{n.name}:{i}" for n in m.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                  for i, t in enumerate(n.input) if t in dq)


def run(inputs: QatInputs, settings: QatSettings, out: Path) -> QatOutputs:
    """QAT of ``inputs.model`` into ``out``; see the module docstring.

    Raises:
        PipelineError: no labels, empty data, a model=onnx, or what the fake-quant attachment or export refuses
            (modules that do not match the ONNX nodes, statistics from a split graph, asymmetric quantization).
    """
    from pipeline.prune.finetune import finetune
    from pipeline.qat import attach_fake_quant, ptq_ranges, qat_qdq_onnx

    qat, out = settings.qat, Path(out)
    if qat.epochs < 1:
        raise PipelineError(f"qat.epochs={qat.epochs}: QAT needs at least one epoch.", "Set qat.epochs=2.")
    train, evals = _labelled(inputs.train_data, "training"), _labelled(inputs.eval_data, "eval")
    x_train = np.ascontiguousarray(next(iter(train.inputs.values())), dtype=np.float32)
    x_eval = np.ascontiguousarray(next(iter(evals.inputs.values())), dtype=np.float32)
    y_eval = np.asarray(evals.labels)
    model = _module(inputs)
    ranges = ptq_ranges(inputs.onnx, inputs.stats, settings.quant)
    from pipeline.prune.sparsity import masks_of_24

    sparse = masks_of_24(model)  # a 2:4 model (prune.sparse24) keeps its pattern through QAT
    wrapped = attach_fake_quant(model, ranges.onnx_path, ranges.amaxes, cfg=ranges.cfg, placement=ranges.plan)
    t0 = time.perf_counter()
    history = finetune(model, x_train, np.asarray(train.labels), epochs=qat.epochs, lr=qat.lr,
                       batch_size=qat.batch_size, seed=qat.seed, masks=_rekeyed(model, sparse) or None)
    from pipeline.export.stage import input_specs, read_summary

    specs = input_specs(read_summary(inputs.summary)) if inputs.summary else None
    qdq = qat_qdq_onnx(model, ranges, out, stem=Path(inputs.onnx).name.removesuffix(".onnx"), input_specs=specs)
    n = len(x_eval)
    facts: Dict[str, Any] = {
        "config": asdict(qat), "quant_calib": settings.quant.calib, "qdq_onnx": qdq.name,
        "wrapped": [{k: w.get(k) for k in ("module", "node", "amax", "matched_by")} for w in wrapped],
        "sparse24_layers_kept": sorted(sparse),
        "finetune": {**history, "samples": len(x_train), "seconds": round(time.perf_counter() - t0, 3)},
        "fp32": {"metric": "top1", "value": onnx_top1(inputs.onnx, x_eval, y_eval), "samples": n},
        "qat": {"metric": "top1", "value": onnx_top1(qdq, x_eval, y_eval), "samples": n},
    }
    if inputs.ptq_qdq is not None and Path(inputs.ptq_qdq).is_file():
        facts["ptq"] = {"metric": "top1", "value": onnx_top1(inputs.ptq_qdq, x_eval, y_eval), "samples": n,
                        "onnx": Path(inputs.ptq_qdq).name}
        facts["same_placement"] = _placement(inputs.ptq_qdq) == _placement(qdq)
        if not facts["same_placement"]:
            facts["notes"] = ["the QAT Q/DQ ONNX quantizes other node inputs than the PTQ one: check qat.json"]
    results = write_json(out / RESULTS_NAME, facts)
    return QatOutputs(qdq, results, facts)
