"""The PTQ ranges a QAT run starts from: placement and activation thresholds, exactly as the quantize stage made them.

QAT must quantize the same tensors with the same activation ranges as the explicit PTQ path, or the fine-tune
optimizes a network TensorRT never builds. So nothing is recomputed here: the placement is the quantize stage's
:func:`pipeline.quantize.api.plan_for_config` (with a precision plan's float layers excluded, as
:func:`pipeline.quantize.quantize_onnx` does) and the thresholds are its ``_thresholds`` (the calibration
method per tensor, max-pool outputs sharing their input's range) on the statistics file the quantize stage
saved (``<model>.calib_stats.npz``) or on statistics collected with :func:`pipeline.quantize.stats.collect_stats`.

No torch here: this module is imported by :mod:`pipeline.qat` at no cost.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Mapping, Tuple, Union

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from pipeline.core.config import QuantConfig
    from pipeline.quantize.qdq import QdqPlan
    from pipeline.quantize.stats import TensorStats

StatsSource = Union[str, Path, Mapping[str, "TensorStats"]]


@dataclass(frozen=True)
class PtqRanges:
    """Where the PTQ path puts Q/DQ on an FP32 ONNX model and with which activation ranges.

    Attributes:
        onnx_path: the FP32 ONNX the placement and the statistics belong to.
        cfg: the quantization settings (placement options, calibration method).
        plan: the Q/DQ placement on ``onnx_path`` (:class:`pipeline.quantize.qdq.QdqPlan`).
        amaxes: activation tensor -> calibrated threshold (tensor units), for every tensor in ``plan.activations``.
        stats: activation tensor -> statistics, for the same tensors.
        extra_exclude: fnmatch patterns kept in float on top of ``cfg.exclude_nodes`` (a precision plan's
            float layers, escaped).
    """

    onnx_path: Path
    cfg: "QuantConfig"
    plan: "QdqPlan"
    amaxes: Dict[str, float]
    stats: Dict[str, "TensorStats"]
    extra_exclude: Tuple[str, ...] = ()

    def placement(self, model: "onnx.ModelProto") -> "QdqPlan":
        """The PTQ placement of ``model`` (an FP32 ONNX with the same graph) under these settings."""
        from pipeline.quantize.api import _float_tensor_set, plan_for_config

        return plan_for_config(model, self.cfg, extra_exclude=self.extra_exclude,
                               float_tensors=_float_tensor_set(model))


def _check_settings(cfg: "QuantConfig") -> None:
    """PipelineError for settings the QAT path cannot reproduce in torch."""
    from pipeline.quantize.api import _check_cfg

    _check_cfg(cfg)
    if not cfg.symmetric:
        raise PipelineError("QAT simulates symmetric int8 activations only (quant.symmetric=false was asked)",
                            "set quant.symmetric=true: TensorRT builds symmetric int8 Q/DQ only")


def _load_stats(stats: StatsSource) -> Dict[str, "TensorStats"]:
    if isinstance(stats, (str, Path)):
        from pipeline.quantize.stats import load_stats

        return load_stats(stats)
    return dict(stats)


def _check_stats(stats: Mapping[str, "TensorStats"], plan: "QdqPlan", tensors: set, where: Path) -> None:
    """The statistics must belong to this (unsplit) graph and cover every activation the placement quantizes."""
    foreign = sorted(t for t in stats if t not in tensors)
    if foreign:
        raise PipelineError(
            f"the statistics hold {len(foreign)} tensors that {where.name} does not have (e.g. {foreign[0]!r}): "
            "they were collected on a graph with split outlier channels, or on another model",
            "QAT simulates the graph as exported: re-run the quantize stage on this ONNX with "
            "quant.split_outliers=null and use the statistics file it writes")
    missing = [t for t in plan.activations if t not in stats]
    if missing:
        raise PipelineError(f"the statistics lack {len(missing)} activations the placement quantizes "
                            f"(e.g. {missing[0]!r})",
                            "re-run the quantize stage with the same quant.* settings and use its statistics file")


def ptq_ranges(fp32_onnx: Union[str, Path], stats: StatsSource, cfg: "QuantConfig") -> PtqRanges:
    """The PTQ placement and activation thresholds of ``fp32_onnx``, as the quantize stage computes them.

    Args:
        fp32_onnx: the FP32 ONNX model (the export stage's ``<model>.onnx``).
        stats: the quantize stage's statistics file (``<model>.calib_stats.npz``) or a dict from
            :func:`pipeline.quantize.stats.collect_stats` on ``fp32_onnx``.
        cfg: the quantization settings the PTQ run used (``quant.*``); ``symmetric`` must be true.

    Returns:
        :class:`PtqRanges`.

    Raises:
        PipelineError: unreadable model or statistics, asymmetric activations, statistics of a split or
            other graph, a precision plan made for another model, nothing to quantize.
    """
    from pipeline.quantize.api import _float_tensor_set, _load, _thresholds, plan_for_config, read_precision_plan

    _check_settings(cfg)
    path = Path(fp32_onnx)
    model = _load(path)
    mixed = read_precision_plan(cfg.plan, path) if cfg.plan else None
    extra = tuple(glob.escape(n) for n in (mixed or {}).get("float_layers", []))
    float_tensors = _float_tensor_set(model)
    plan = plan_for_config(model, cfg, extra_exclude=extra, float_tensors=float_tensors)
    if not plan.activations:
        raise PipelineError(f"nothing to quantize in {path}: no {'/'.join(cfg.op_types)} node with float inputs",
                            "check quant.op_types / quant.exclude_nodes")
    all_stats = _load_stats(stats)
    tensors = {t for n in model.graph.node for t in (*n.input, *n.output)} | {i.name for i in model.graph.input}
    _check_stats(all_stats, plan, tensors, path)
    amaxes = _thresholds(model, plan, all_stats, cfg, (mixed or {}).get("calibration"))
    return PtqRanges(onnx_path=path, cfg=cfg, plan=plan, amaxes=amaxes,
                     stats={t: all_stats[t] for t in plan.activations}, extra_exclude=extra)
