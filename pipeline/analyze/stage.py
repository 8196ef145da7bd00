"""The analyze stage as a file-to-file step: ``<model>.onnx`` -> ``analysis.json`` (FLOPs, bytes, peaks, roofline).

Usable without Hydra: ``run(AnalyzeInputs(onnx, summary), AnalyzeSettings(hardware, precision, batch), out)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional

from pipeline.core.artifacts import write_json
from pipeline.core.errors import PipelineError, StageSkipped

if TYPE_CHECKING:
    from pipeline.analyze.hardware import HardwareSpec
    from pipeline.core.config import HardwareConfig, PrecisionConfig

#: Results file of this stage, in the run folder.
RESULTS_NAME = "analysis.json"


@dataclass(frozen=True)
class AnalyzeInputs:
    """The ONNX to analyze and, optionally, its export summary (values of symbolic dims such as a sequence)."""

    onnx: Path
    summary: Optional[Path] = None


@dataclass(frozen=True)
class AnalyzeSettings:
    """Which processor and precision the theory is for, at which batch size; ``sparse``: 2:4 Tensor Core peaks."""

    hardware: "HardwareConfig"
    precision: "PrecisionConfig"
    batch_size: int = 1
    sparse: bool = False
    dims: Dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AnalyzeOutputs:
    """``analysis.json``: ``{"hardware": ..., "analysis": ...}`` (the Analysis dict with its layers)."""

    results: Path


def symbolic_dims(onnx_path: Path, summary: Optional[dict]) -> Dict[str, int]:
    """Values for the ONNX inputs' symbolic non-batch dimensions (e.g. a dynamic sequence length)."""
    import onnx

    if not summary:
        return {}
    by_name = {s["name"]: s for s in summary.get("inputs", [])}
    dims: Dict[str, int] = {}
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    for inp in graph.input:
        spec = by_name.get(inp.name)
        if spec is None:
            continue
        for i, d in enumerate(inp.type.tensor_type.shape.dim[1:]):
            if d.dim_param and i < len(spec["shape"]) and int(spec["shape"][i]) > 0:
                dims[d.dim_param] = int(spec["shape"][i])
    return dims


def run(inputs: AnalyzeInputs, settings: AnalyzeSettings, out: Path,
        hardware: "HardwareSpec | None" = None) -> AnalyzeOutputs:
    """Cost every node of ``inputs.onnx`` and put it on the roofline of ``settings.hardware``.

    Args:
        hardware: an already resolved spec (skips detecting the machine again).

    Raises:
        StageSkipped: the hardware has no peak for the precision (e.g. fp16 on a CPU).
    """
    from pipeline.analyze import analyze_onnx, resolve_hardware
    from pipeline.export.stage import read_summary

    hw = hardware or resolve_hardware(settings.hardware)
    try:
        hw.peak_for(settings.precision)
    except PipelineError as err:
        raise StageSkipped(f"{err.message} Pass hardware=<gpu> (e.g. hardware=h100_sxm) to see the theoretical "
                           f"model of {settings.precision.name} on a GPU.") from err
    summary = read_summary(inputs.summary) if inputs.summary else None
    dims = dict(settings.dims) or symbolic_dims(inputs.onnx, summary)
    analysis = analyze_onnx(inputs.onnx, hw, settings.precision, settings.batch_size,
                            sparse=settings.sparse, dims=dims or None)
    path = write_json(Path(out) / RESULTS_NAME, {"hardware": hw.to_dict(), "analysis": analysis.to_dict()})
    return AnalyzeOutputs(results=path)
