"""The export stage as a file-to-file step: a model (zoo, custom, or an ONNX file) -> ``<model>.onnx`` + ``export.json``.

Usable without Hydra::

    from pipeline.core.config import ModelConfig
    from pipeline.export.stage import ExportInputs, ExportSettings, run
    out = run(ExportInputs(ModelConfig(name="resnet18")), ExportSettings(opset=17), Path("out"))
    out.onnx, out.summary   # out/resnet18.onnx, out/export.json

``export.json`` holds what every later stage needs to know about the model without torch: its input
specs (per sample), outputs, task, classes, parameters, opset and the ONNX Runtime vs torch check. The
ONNX file's sidecar carries the same model description, so the file alone is enough for later stages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

from pipeline.core.artifacts import write_json
from pipeline.core.store import write_sidecar

if TYPE_CHECKING:
    from pipeline.core.config import ModelConfig
    from pipeline.core.specs import InputSpec

#: Results file of this stage, in the run folder.
SUMMARY_NAME = "export.json"


@dataclass(frozen=True)
class ExportInputs:
    """What the export stage reads: the model description (zoo name, custom class file, or ONNX file)."""

    model: "ModelConfig"


@dataclass(frozen=True)
class ExportSettings:
    """How to export: ONNX opset (17: TensorRT 8.6's parser stops there) and the check batch size."""

    opset: int = 17
    batch_size: int = 1


@dataclass(frozen=True)
class ExportOutputs:
    """What it writes: the checked, shape-inferred ONNX and the model summary (both with sidecars)."""

    onnx: Path
    summary: Path


def model_name(model: "ModelConfig") -> str:
    """File-name stem of a model: the zoo name, or an ONNX file's stem for ``model=onnx``."""
    from pipeline.core.errors import PipelineError

    if model.name == "onnx":
        if not model.onnx_path:
            raise PipelineError("model=onnx needs a file.", "Pass model.onnx_path=/path/to/model.onnx.")
        return Path(model.onnx_path).stem
    return model.name


def run(inputs: ExportInputs, settings: ExportSettings, out: Path) -> ExportOutputs:
    """Export (or import) the model into ``out``; see the module docstring."""
    from pipeline.models import build_model

    return export_bundle(build_model(inputs.model), model_name(inputs.model), settings, out)


def export_bundle(bundle: Any, name: str, settings: ExportSettings, out: Path, stem: str = "",
                  summary_name: str = SUMMARY_NAME, producer: str = "export") -> ExportOutputs:
    """Export a built model (:class:`pipeline.models.ModelBundle`) to ``out/<stem or name>.onnx`` and its summary.

    The prune and qat stages export their changed torch modules through this same path (same exporter, same
    checks, same summary), under their own ``stem`` (``resnet18.pruned``) and ``summary_name``.
    """
    from pipeline.export import export_onnx, onnx_from_file

    onnx_path = Path(out) / f"{stem or name}.onnx"
    if bundle.module is None:  # model=onnx: validate and import the file
        res = onnx_from_file(bundle.onnx_path, onnx_path)
    else:
        res = export_onnx(bundle, onnx_path, opset=settings.opset, batch_size=settings.batch_size)
    summary = {
        "name": name,
        # The bundle's specs have every dimension filled (model.input_shape fills an ONNX file's dynamic ones).
        "inputs": [s.to_dict() for s in bundle.inputs],
        "outputs": list(res.output_names),
        "task": bundle.task,
        "num_classes": bundle.num_classes,
        "notes": bundle.notes,
        "metrics": dict(bundle.metrics or {}),
        "has_tokenizer": bundle.tokenizer is not None,  # data=text uses the model's own tokenizer
        "parameters": res.parameters,
        "opset": res.opset,
        "check": dict(res.check),
        "warnings": list(res.warnings or []),
    }
    summary_path = write_json(Path(out) / summary_name, summary)
    write_sidecar(onnx_path, kind="onnx", producer=producer, config={"opset": settings.opset},
                  extra={"model": summary})
    return ExportOutputs(onnx=onnx_path, summary=summary_path)


def read_summary(path: Path) -> Dict[str, Any]:
    """An ``export.json`` as a dict."""
    return json.loads(Path(path).read_text())


def input_specs(summary: Dict[str, Any]) -> List["InputSpec"]:
    """The model's input specs from an export summary."""
    from pipeline.core.specs import InputSpec

    return [InputSpec(name=d["name"], shape=tuple(d["shape"]), dtype=d.get("dtype", "float32"),
                      vocab_size=d.get("vocab_size")) for d in summary["inputs"]]


def summary_from_onnx(onnx_path: Path, model: "ModelConfig") -> Dict[str, Any]:
    """The export summary of an ONNX file made elsewhere: from its sidecar, else read from the file.

    A file without a sidecar is described like ``model=onnx`` describes a user's file (its inputs, with
    ``model.input_shape`` filling dynamic dimensions; the task guessed from its outputs).
    """
    from dataclasses import replace

    from pipeline.core.store import read_sidecar
    from pipeline.models import build_model

    side = read_sidecar(onnx_path) or {}
    if isinstance(side.get("model"), dict):
        return dict(side["model"])
    bundle = build_model(replace(model, name="onnx", onnx_path=str(onnx_path)))
    return {"name": Path(onnx_path).stem, "inputs": [s.to_dict() for s in bundle.inputs],
            "outputs": list(bundle.output_names), "task": bundle.task, "num_classes": bundle.num_classes,
            "notes": bundle.notes, "metrics": dict(bundle.metrics or {}), "parameters": None, "opset": None,
            "check": {}, "warnings": [f"{onnx_path} has no sidecar: inputs and task were read from the file"]}
