"""The quantize stage: calibrate an FP32 ONNX model and write its INT8 Q/DQ twin + calibration cache.

``quantize_onnx`` is what the pipeline calls; ``compare_calibrations`` evaluates every algorithm and
weight granularity on held-out data for the comparison report. Statistics are collected once (one
ONNX Runtime pass over the calibration batches) and shared by every algorithm.
"""

from __future__ import annotations

import glob
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence

import numpy as np

from pipeline.core.artifacts import atomic_path
from pipeline.core.errors import PipelineError
from pipeline.quantize.calibrate import METHODS, amax_from_stats
from pipeline.quantize.qdq import QdqPlan, plan_qdq, qdq_onnx_from_onnx
from pipeline.quantize.scales import QParams, activation_qparams
from pipeline.quantize.stats import TensorStats, collect_stats, float_tensor_names
from pipeline.quantize.trt_cache import write_calibration_cache

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from pipeline.core.config import QuantConfig
    from pipeline.quantize.split import SplitRecord, SplitRule

Feed = Dict[str, np.ndarray]


@dataclass
class QuantResult:
    """What the quantize stage produced.

    Attributes:
        qdq_onnx_path: the Q/DQ ONNX model.
        calibration_cache_path: TensorRT calibration cache (None when not written).
        algorithm: calibration method used for activations.
        settings: the settings that shaped the result (symmetric, per_channel, percentile, ...).
        ranges: ``{tensor: {amax, min, max, scale, zero_point}}`` for every Q/DQ'd activation
            (tensor units).
        seconds: wall times, seconds: ``statistics`` (the ORT calibration pass), ``thresholds``,
            ``sensitivity``, ``write``, ``evaluate``, ``total``.
        plan: where Q/DQ went (:meth:`QdqPlan.to_dict`).
        calib_batches: calibration batches consumed.
        calib_samples: calibration samples (sum of batch sizes).
        metrics: INT8 vs FP32 on the evaluation batches (:func:`pipeline.core.accuracy.task_metrics`), or None.
            Top level: Q/DQ simulated in float (what TensorRT computes); ``onnxruntime_int8_kernels``:
            the same model on ORT's fused integer CPU kernels (can differ: see README notes on U8S8).
        float_nodes: layers kept in float by the precision plan (``quant.plan``): ``{node, source}``.
        splits: activations whose outlier channels were split before calibration
            (:class:`pipeline.quantize.split.SplitRecord` as dicts: channels split and added, amax before/after).
        kept_float: compute nodes kept in float by the structural ``cfg.keep_float`` rules, in graph
            order: ``{node, op_type, rule, reason}`` (rule: ``ffn``, ``attention_scores``, ``first``,
            ``last``, ``+``-joined when several matched; reason: what was seen on the graph).
    """

    qdq_onnx_path: Path
    calibration_cache_path: Optional[Path]
    algorithm: str
    settings: Dict[str, object]
    ranges: Dict[str, Dict[str, float]]
    seconds: Dict[str, float]
    plan: Dict[str, object]
    calib_batches: int
    calib_samples: int
    metrics: Optional[Dict[str, object]] = None
    float_nodes: List[Dict[str, object]] = field(default_factory=list)
    kept_float: List[Dict[str, str]] = field(default_factory=list)
    splits: List[Dict[str, object]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready dict for the report's ``quantization`` section."""
        d = asdict(self)
        d["qdq_onnx_path"] = str(self.qdq_onnx_path)
        d["calibration_cache_path"] = str(self.calibration_cache_path) if self.calibration_cache_path else None
        d["num_quantized_nodes"] = len(self.plan.get("quantized_nodes", []))
        return d


class _Recorder:
    """Pass batches through while counting them and keeping the first ``keep`` samples."""

    def __init__(self, batches: Iterable[Feed], keep: int):
        self.batches, self.keep = batches, keep
        self.count, self.samples, self.kept = 0, 0, []  # type: ignore[var-annotated]
        self._kept_samples = 0

    def __iter__(self):
        for feed in self.batches:
            n = len(next(iter(feed.values()))) if feed else 0
            self.count += 1
            self.samples += n
            if self._kept_samples < self.keep:
                self.kept.append(feed)
                self._kept_samples += n
            yield feed


def read_precision_plan(path, onnx_path) -> Dict[str, object]:
    """The sensitivity stage's plan file (``quant.plan``), refused when it was made for another model."""
    from pipeline.core.store import content_hash
    from pipeline.quantize.mixed import read_plan

    mixed = read_plan(Path(path))
    if mixed.get("onnx_sha256") not in (None, content_hash(Path(onnx_path))):
        raise PipelineError(f"the precision plan {path} was made for another ONNX model (model {mixed.get('model')!r})",
                            "run the sensitivity stage on this model, or pass the plan made for it")
    return mixed


def _load(onnx_path) -> "onnx.ModelProto":
    import onnx

    p = Path(onnx_path)
    if not p.is_file():
        raise PipelineError(f"ONNX model not found: {p}", "run the export stage first or fix the path")
    try:
        return onnx.load(str(p))
    except Exception as err:  # onnx raises DecodeError and friends
        raise PipelineError(f"cannot read ONNX model {p}: {err}", "re-export the model") from err


def plan_for_config(model: "onnx.ModelProto", cfg: "QuantConfig", extra_exclude: Sequence[str] = (),
                    float_tensors: Optional[set] = None) -> QdqPlan:
    """:func:`plan_qdq` with the placement options of a :class:`QuantConfig`."""
    return plan_qdq(model, op_types=tuple(cfg.op_types), per_channel=cfg.per_channel,
                    residual_add=cfg.residual_add, pooling=cfg.pooling, quantize_bmm=cfg.quantize_bmm,
                    exclude_nodes=list(cfg.exclude_nodes) + list(extra_exclude), float_tensors=float_tensors,
                    keep_float=list(getattr(cfg, "keep_float", []) or []))


#: Ops whose output values are a subset of their input values: the output can reuse the input's scale.
SCALE_PRESERVING_OPS = ("MaxPool", "GlobalMaxPool")


def max_pool_pairs(model, tensors) -> Dict[str, str]:
    """Max-pool output -> input, for pools whose input and output are both in ``tensors``."""
    return {n.output[0]: n.input[0] for n in model.graph.node
            if n.op_type in SCALE_PRESERVING_OPS and n.input and n.output
            and n.input[0] in tensors and n.output[0] in tensors}


def share_scales_through_max_pools(model, amaxes: Dict[str, float]) -> List[str]:
    """Give each max-pool output the amax of its input, where both are quantized (in place).

    A max pool only selects input values, so the input's range covers the output exactly. With equal
    scales TensorRT runs DQ -> MaxPool -> Q as one INT8 pooling (the DQ/Q pair folds away); with two
    different scales it has to requantize, and on TensorRT 8.6 the pool then ran in higher precision
    (ResNet-50, H100: the max pool took 0.20 ms of a 4.5 ms batch of 256).

    Returns:
        The output tensors whose amax was changed.
    """
    changed = []
    for dst, src in max_pool_pairs(model, amaxes).items():
        if amaxes[dst] != amaxes[src]:
            amaxes[dst] = amaxes[src]
            changed.append(dst)
    return changed


def amaxes_from_stats(stats: Dict[str, TensorStats], method: str, percentile: float = 99.99) -> Dict[str, float]:
    """Per-tensor thresholds (tensor units) from one calibration method."""
    return {n: amax_from_stats(s, method, percentile) for n, s in stats.items()}


def act_qparams_from(stats: Dict[str, TensorStats], amaxes: Dict[str, float], tensors: Iterable[str],
                     symmetric: bool) -> Dict[str, QParams]:
    """Activation Q/DQ parameters for ``tensors``."""
    return {t: activation_qparams(amaxes[t], stats[t].min, stats[t].max, symmetric) for t in tensors}


def _check_cfg(cfg: "QuantConfig") -> None:
    if cfg.calib not in METHODS:
        raise PipelineError(f"unknown calibration method quant.calib={cfg.calib!r}",
                            f"use one of {', '.join(METHODS)}")
    if cfg.calib == "percentile" and not 0 < cfg.percentile <= 100:
        raise PipelineError(f"quant.percentile={cfg.percentile} is outside (0, 100]", "use e.g. 99.99")
    from pipeline.quantize.placement import check_rules

    check_rules(list(getattr(cfg, "keep_float", []) or []))
    if cfg.num_bins < 256:
        raise PipelineError(f"quant.num_bins={cfg.num_bins} is too small for entropy calibration",
                            "use 2048 (TensorRT's value)")


def split_rule(cfg: "QuantConfig", mixed: Optional[Dict[str, object]] = None) -> Optional["SplitRule"]:
    """The outlier-split rule in force: a precision plan's (its tensor names depend on it; a plan without
    ``split_outliers`` was made on the unsplit graph, one without ``split_min_gain`` with no minimum gain), else
    ``cfg.split_outliers`` / ``cfg.split_min_gain``; None splits nothing."""
    from pipeline.quantize.split import SplitRule

    if mixed is not None:
        q = mixed.get("split_outliers")
        return SplitRule(float(q), float(mixed.get("split_min_gain") or 1.0)) if q else None
    return SplitRule(float(cfg.split_outliers), float(cfg.split_min_gain)) if cfg.split_outliers else None


def _split(model, cfg: "QuantConfig", rule: Optional["SplitRule"], full_plan: QdqPlan, float_tensors: set,
           calib_batches: List[Feed], onnx_path):
    """Split the outlier channels of the placement's activations (nothing when ``rule`` is None); the model,
    placement and float tensors after it, what was split, the per-channel maxima (saved with the statistics)
    and the seconds it took."""
    if not rule:
        return model, full_plan, float_tensors, [], {}, {}
    from pipeline.quantize.split import split_for_placement

    t0 = time.perf_counter()
    model, splits, maxima = split_for_placement(model, full_plan.activations, calib_batches, rule)
    if splits:
        float_tensors = _float_tensor_set(model)
        full_plan = _initial_plan(model, cfg, float_tensors, onnx_path)
    return model, full_plan, float_tensors, splits, maxima, {"split": time.perf_counter() - t0}


def _save_stats(path: Path, stats: Dict[str, TensorStats], maxima: Dict[str, np.ndarray]) -> None:
    from pipeline.quantize.stats import save_stats

    save_stats(path, stats, channel_max=maxima)


def _float_tensor_set(model: "onnx.ModelProto") -> set:
    return set(float_tensor_names(model))


def _initial_plan(model: "onnx.ModelProto", cfg: "QuantConfig", float_tensors: set, onnx_path) -> QdqPlan:
    """The Q/DQ plan of ``cfg``; raises when it quantizes nothing (the INT8 build would be FP32)."""
    plan = plan_for_config(model, cfg, float_tensors=float_tensors)
    if not plan.activations and not plan.weights:
        raise PipelineError(f"nothing to quantize in {onnx_path}: no {'/'.join(cfg.op_types)} node with float inputs",
                            "check quant.op_types / quant.exclude_nodes, or use a higher precision")
    return plan


def _observed_tensors(model: "onnx.ModelProto", plan: QdqPlan, cfg: "QuantConfig") -> List[str]:
    """Tensors to collect statistics for: the plan's activations, plus every float tensor when the
    TensorRT cache should cover them all (``cfg.cache_all_tensors``)."""
    observe = list(plan.activations)
    if cfg.cache_all_tensors:
        observe += [t for t in float_tensor_names(model) if t not in plan.activations]
    return observe


def _thresholds(model: "onnx.ModelProto", plan: QdqPlan, stats: Dict[str, TensorStats],
                cfg: "QuantConfig", methods: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Per-activation amax (tensor units) from ``cfg.calib`` or, per tensor, the method a precision plan chose;
    with symmetric activations each max pool's output takes its input's amax
    (:func:`share_scales_through_max_pools` says why)."""
    methods = methods or {}
    amaxes = {t: amax_from_stats(stats[t], methods.get(t, cfg.calib), cfg.percentile) for t in plan.activations}
    if cfg.symmetric:
        share_scales_through_max_pools(model, amaxes)
    return amaxes


def _write_qdq_model(model: "onnx.ModelProto", plan: QdqPlan, qparams: Dict[str, QParams],
                     out_path: Path) -> "onnx.ModelProto":
    """Build the Q/DQ model and save it atomically to ``out_path``."""
    import onnx

    qmodel = qdq_onnx_from_onnx(model, plan, qparams)
    with atomic_path(out_path) as tmp:
        onnx.save(qmodel, str(tmp))
    return qmodel


def _write_cache(cache_path, amaxes: Dict[str, float], observe: Sequence[str], stats: Dict[str, TensorStats],
                 cfg: "QuantConfig") -> Optional[Path]:
    """Write the TensorRT calibration cache: the Q/DQ thresholds plus one for each other observed tensor."""
    cache_amaxes = dict(amaxes)
    for t in observe:  # tensors outside the Q/DQ plan still need a range for TensorRT's implicit path
        if t not in cache_amaxes:
            cache_amaxes[t] = amax_from_stats(stats[t], cfg.calib, cfg.percentile)
    return write_calibration_cache(cache_path, cache_amaxes, cfg.trt_version, cfg.cache_algorithm)


def _evaluate(model: "onnx.ModelProto", qmodel: "onnx.ModelProto", eval_batches: Iterable[Feed],
              eval_labels: Optional[np.ndarray], task: str) -> Dict[str, object]:
    """INT8 vs FP32 metrics on the evaluation feeds, simulated and on ORT's integer kernels."""
    from pipeline.core.accuracy import task_metrics
    from pipeline.ort import ort_session, run_first_output

    ev = list(eval_batches)
    ref = run_first_output(ort_session(model), ev)
    # "simulated": Q/DQ evaluated as float math (ORT optimisations off), which is what TensorRT
    # computes up to accumulation order; the second run uses ORT's fused integer CPU kernels.
    test = run_first_output(ort_session(qmodel, optimize=False), ev)
    metrics = task_metrics(ref, test, eval_labels, task)
    metrics["execution"] = "simulated"
    kern = task_metrics(ref, run_first_output(ort_session(qmodel), ev), eval_labels, task)
    metrics["onnxruntime_int8_kernels"] = kern
    return metrics


def _ranges(plan: QdqPlan, stats: Dict[str, TensorStats], amaxes: Dict[str, float],
            qparams: Dict[str, QParams]) -> Dict[str, Dict[str, float]]:
    """``{tensor: {amax, min, max, scale, zero_point}}`` of every Q/DQ'd activation (tensor units)."""
    return {t: {"amax": amaxes[t], "min": stats[t].min, "max": stats[t].max,
                "scale": float(np.asarray(qparams[t].scale)), "zero_point": int(np.asarray(qparams[t].zero_point))}
            for t in plan.activations}


def _settings(cfg: "QuantConfig") -> Dict[str, object]:
    """The settings that shaped the result, for :attr:`QuantResult.settings`."""
    return {"calib": cfg.calib, "percentile": cfg.percentile, "symmetric": cfg.symmetric,
            "per_channel": cfg.per_channel, "num_bins": cfg.num_bins, "op_types": list(cfg.op_types),
            "quantize_bmm": cfg.quantize_bmm, "residual_add": cfg.residual_add, "pooling": cfg.pooling,
            "exclude_nodes": list(cfg.exclude_nodes), "keep_float": list(cfg.keep_float),
            "split_outliers": cfg.split_outliers, "split_min_gain": cfg.split_min_gain,
            "activation_dtype": "int8" if cfg.symmetric else "uint8",
            "weight_dtype": "int8", "weight_granularity": "per_channel" if cfg.per_channel else "per_tensor",
            "activation_granularity": "per_tensor"}


def quantize_onnx(
    onnx_path,
    calib_batches: Iterable[Feed],
    cfg: "QuantConfig",
    out_path,
    eval_batches: Optional[Iterable[Feed]] = None,
    eval_labels: Optional[np.ndarray] = None,
    cache_path=None,
    task: str = "auto",
    progress: bool = True,
    stats_path=None,
) -> QuantResult:
    """Calibrate ``onnx_path`` on ``calib_batches`` and write the INT8 Q/DQ model.

    Args:
        onnx_path: FP32 ONNX model.
        calib_batches: non-empty iterable of feeds ``{input_name: array}`` (consumed once).
        cfg: quantization settings (algorithm, granularity, placement).
        out_path: where the Q/DQ ONNX goes (``<model>.int8.qdq.onnx``).
        eval_batches: optional held-out feeds; when given, INT8 is compared with FP32 on them.
        eval_labels: optional labels for ``eval_batches`` (accuracy with a confidence interval).
        cache_path: TensorRT calibration cache path; default ``<onnx stem>.calib.cache`` next to
            ``out_path``.
        task: ``auto`` / ``classification`` / ``embedding`` (which metric is primary).
        progress: show progress bars.
        stats_path: where to save the activation statistics (:func:`pipeline.quantize.stats.save_stats`), or
            None.

    Returns:
        :class:`QuantResult`.

    Raises:
        PipelineError: empty calibration set, unknown algorithm, unreadable model, nothing to quantize.
    """
    _check_cfg(cfg)
    t_start = time.perf_counter()
    model = _load(onnx_path)
    float_tensors = _float_tensor_set(model)
    mixed = read_precision_plan(cfg.plan, onnx_path) if cfg.plan else None
    original = model
    full_plan = _initial_plan(model, cfg, float_tensors, onnx_path)
    rule = split_rule(cfg, mixed)
    if rule:
        calib_batches = list(calib_batches)  # read twice: channel maxima, then statistics
    model, full_plan, float_tensors, splits, maxima, seconds = _split(model, cfg, rule, full_plan, float_tensors,
                                                                      calib_batches, onnx_path)
    # Statistics cover the full placement, so that the file serves the sensitivity stage whatever the plan;
    # a split activation's original tensor too (TensorRT's implicit path builds from the unsplit ONNX).
    observe = _observed_tensors(model, full_plan, cfg) + [r.tensor for r in splits]
    plan = full_plan if mixed is None else plan_for_config(
        model, cfg, extra_exclude=[glob.escape(n) for n in mixed["float_layers"]], float_tensors=float_tensors)
    rec = _Recorder(calib_batches, keep=0)
    t0 = time.perf_counter()
    stats = collect_stats(model, rec, observe, num_bins=cfg.num_bins, progress=progress)
    if stats_path is not None:
        _save_stats(Path(stats_path), stats, maxima)
    seconds["statistics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    amaxes = _thresholds(model, plan, stats, cfg, (mixed or {}).get("calibration"))
    seconds["thresholds"] = time.perf_counter() - t0
    float_nodes = [{"node": n, "source": "precision plan"} for n in (mixed or {}).get("float_layers", [])]

    t0 = time.perf_counter()
    qparams = act_qparams_from(stats, amaxes, plan.activations, cfg.symmetric)
    out_path = Path(out_path)
    qmodel = _write_qdq_model(model, plan, qparams, out_path)
    if cache_path is None:
        cache_path = out_path.parent / f"{Path(onnx_path).stem}.calib.cache"
    cache_written = _write_cache(cache_path, amaxes, observe, stats, cfg)
    seconds["write"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = None if eval_batches is None else _evaluate(original, qmodel, eval_batches, eval_labels, task)
    seconds["evaluate"] = time.perf_counter() - t0 if eval_batches is not None else 0.0
    seconds["total"] = time.perf_counter() - t_start
    return QuantResult(
        qdq_onnx_path=out_path, calibration_cache_path=cache_written, algorithm=cfg.calib, settings=_settings(cfg),
        ranges=_ranges(plan, stats, amaxes, qparams), seconds=seconds, plan=plan.to_dict(),
        calib_batches=rec.count, calib_samples=rec.samples, metrics=metrics,
        float_nodes=float_nodes, kept_float=list(plan.kept_float), splits=[r.to_dict() for r in splits])
