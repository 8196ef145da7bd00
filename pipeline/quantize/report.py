"""Comparison of calibration algorithms x weight granularities, as plain data (+ optional figures).

One ONNX Runtime statistics pass over the calibration data feeds every algorithm; each variant is
then written as a Q/DQ model in memory, run on the held-out evaluation data and compared with FP32.
The returned dict is JSON-ready for the report stage (``report.json`` -> ``quantization.comparison``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.core.artifacts import atomic_path
from pipeline.core.errors import PipelineError
from pipeline.quantize.calibrate import METHODS, amax_from_stats
from pipeline.quantize.scales import quant_error_of_hist, quant_error_of_values, weight_qparams

#: Default variants: each algorithm, the percentile one at the three usual percentiles.
DEFAULT_METHODS = ("max", "percentile@99.9", "percentile@99.99", "percentile@99.999", "entropy", "mse")
GRANULARITIES = ("per_channel", "per_tensor")


def parse_method(spec: str) -> Tuple[str, float]:
    """``"percentile@99.9"`` -> ``("percentile", 99.9)``; ``"entropy"`` -> ``("entropy", 99.99)``."""
    name, _, p = spec.partition("@")
    if name not in METHODS:
        raise PipelineError(f"unknown calibration method {spec!r}", f"use one of {', '.join(METHODS)} "
                            "(percentile@P for a given percentile)")
    return name, float(p) if p else 99.99


def _coarse(hist: np.ndarray, edges: np.ndarray, bins: int) -> Tuple[List[float], List[int]]:
    """Fold a fine histogram to ``bins`` bins (len(hist) must be a multiple) for the report."""
    f = max(1, len(hist) // bins)
    h = hist[: (len(hist) // f) * f].reshape(-1, f).sum(axis=1)
    return edges[:: f][: len(h) + 1].tolist(), h.astype(int).tolist()


@dataclass
class _VariantRun:
    """What every variant of :func:`compare_calibrations` shares: the model, its statistics, the
    held-out feeds and the FP32 reference outputs on them."""

    model: Any
    cfg: Any
    stats: Dict[str, Any]
    float_tensors: set
    eval_feeds: List[Dict[str, np.ndarray]]
    reference: np.ndarray
    eval_labels: Optional[np.ndarray]
    task: str
    execution: str


def _check_granularities(granularities: Sequence[str]) -> None:
    for g in granularities:
        if g not in GRANULARITIES:
            raise PipelineError(f"unknown granularity {g!r}", f"use {' or '.join(GRANULARITIES)}")


def _variant_amaxes(stats: Dict[str, Any], variants: Sequence[Tuple[str, float]]) -> Dict[str, Dict[str, float]]:
    """Variant label (``max``, ``percentile@99.9``...) -> per-tensor threshold, tensor units."""
    amaxes: Dict[str, Dict[str, float]] = {}
    for name, p in variants:
        key = name if name != "percentile" else f"percentile@{p:g}"
        amaxes[key] = {t: amax_from_stats(s, name, p) for t, s in stats.items()}
    return amaxes


def _variant_jobs(labels: Sequence[str], granularities: Sequence[str],
                  asymmetric: bool) -> List[Tuple[str, str, bool]]:
    """``(label, granularity, symmetric)`` per variant: every label x granularity, symmetric, plus one
    asymmetric run (entropy, else the first label) at the first granularity when asked."""
    jobs = [(key, g, True) for key in labels for g in granularities]
    if asymmetric:
        key = "entropy" if "entropy" in labels else next(iter(labels))
        jobs.append((key, granularities[0], False))
    return jobs


def _run_variant(run: _VariantRun, key: str, amax: Dict[str, float], gran: str, sym: bool) -> Dict[str, object]:
    """Write one variant as a Q/DQ model in memory, evaluate it against FP32: its result row."""
    from pipeline.core.accuracy import task_metrics
    from pipeline.core.config import QuantConfig
    from pipeline.ort import ort_session, run_first_output
    from pipeline.quantize.api import act_qparams_from, plan_for_config
    from pipeline.quantize.qdq import qdq_onnx_from_onnx

    t0 = time.perf_counter()
    vcfg = QuantConfig(**{**run.cfg.__dict__, "per_channel": gran == "per_channel", "symmetric": sym})
    plan = plan_for_config(run.model, vcfg, float_tensors=run.float_tensors)
    qmodel = qdq_onnx_from_onnx(run.model, plan, act_qparams_from(run.stats, amax, plan.activations, sym))
    test = run_first_output(ort_session(qmodel, optimize=run.execution != "simulated"), run.eval_feeds)
    m = task_metrics(run.reference, test, run.eval_labels, run.task)
    name, _, p = key.partition("@")
    return {"method": name, "percentile": float(p) if p else None, "label": key, "granularity": gran,
            "scheme": "symmetric int8" if sym else "asymmetric uint8", "metrics": m,
            "seconds": time.perf_counter() - t0}


def _tensor_rows(stats: Dict[str, Any], amaxes: Dict[str, Dict[str, float]]) -> List[Dict[str, object]]:
    """Per activation: its range, each method's threshold and clipping/rounding error."""
    tensors = []
    for t, s in stats.items():
        errs = {k: quant_error_of_hist(s.hist, s.edges, a[t]).to_dict() for k, a in amaxes.items()}
        tensors.append({"name": t, "min": s.min, "max": s.max, "amax": {k: a[t] for k, a in amaxes.items()},
                        "error": errs})
    return tensors


def _weight_rows(model, plan) -> List[Dict[str, object]]:
    """Per quantized weight: quantization error with per-channel vs per-tensor scales."""
    from onnx import numpy_helper

    weights = []
    inits = {i.name: i for i in model.graph.initializer}
    for w, slot in plan.weights.items():
        arr = numpy_helper.to_array(inits[w])
        axis = slot.axis if slot.axis is not None else 0
        weights.append({"name": w, "shape": list(arr.shape), "axis": axis,
                        "per_channel": quant_error_of_values(arr, weight_qparams(arr, axis)).to_dict(),
                        "per_tensor": quant_error_of_values(arr, weight_qparams(arr, None)).to_dict()})
    return weights


def _spread(amaxes: Dict[str, Dict[str, float]], t: str) -> float:
    """How much the methods disagree on tensor ``t``: largest over smallest positive threshold."""
    vals = [a[t] for a in amaxes.values() if a[t] > 0]
    return max(vals) / min(vals) if vals else 0.0


def _histogram_rows(stats: Dict[str, Any], amaxes: Dict[str, Dict[str, float]], max_histograms: int,
                    histogram_bins: int) -> List[Dict[str, object]]:
    """|x| histograms of the ``max_histograms`` tensors where the methods disagree most."""
    hists = []
    for t in sorted(stats, key=lambda name: _spread(amaxes, name), reverse=True)[:max_histograms]:
        s = stats[t]
        edges, counts = _coarse(s.hist, s.edges, histogram_bins)
        hists.append({"name": t, "edges": edges, "counts": counts, "abs": True,
                      "thresholds": {k: a[t] for k, a in amaxes.items()}})
    return hists


def _reference_row(ref: np.ndarray, eval_labels: Optional[np.ndarray]) -> Dict[str, object]:
    """The FP32 reference: backend, sample count, and its label accuracy when labels are given."""
    from pipeline.core.accuracy import label_accuracy

    return {"backend": "onnxruntime-cpu", "precision": "fp32", "samples": int(len(ref)),
            **({"accuracy": label_accuracy(ref, eval_labels)} if eval_labels is not None else {})}


def _best(rows: List[Dict[str, object]], primary: str) -> Optional[Dict[str, object]]:
    """The variant with the highest primary metric (first on ties), summarised; None without rows."""
    if not rows:
        return None
    best = max(rows, key=lambda r: float(r["metrics"][primary]))  # type: ignore[index]
    return {"label": best["label"], "granularity": best["granularity"], "scheme": best["scheme"],
            primary: best["metrics"][primary]}  # type: ignore[index]


def compare_calibrations(
    onnx_path,
    calib_batches: Iterable[Dict[str, np.ndarray]],
    eval_batches: Iterable[Dict[str, np.ndarray]],
    eval_labels: Optional[np.ndarray] = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    granularities: Sequence[str] = GRANULARITIES,
    cfg=None,
    task: str = "auto",
    asymmetric: bool = True,
    execution: str = "simulated",
    max_histograms: int = 6,
    histogram_bins: int = 256,
    progress: bool = True,
) -> Dict[str, object]:
    """Evaluate every calibration method x weight granularity against FP32 on held-out data.

    Args:
        onnx_path: FP32 ONNX model.
        calib_batches: non-empty calibration feeds (consumed once).
        eval_batches: held-out feeds (kept in memory; evaluated once per variant).
        eval_labels: labels for ``eval_batches`` (accuracy + 95 % CI), optional.
        methods: calibration variants (``max``, ``entropy``, ``mse``, ``percentile@99.99``...).
        granularities: weight granularities, ``per_channel`` and/or ``per_tensor``.
        cfg: :class:`~pipeline.core.config.QuantConfig` for placement options (default settings if None).
        task: ``auto``/``classification``/``embedding`` (the primary metric).
        asymmetric: add one uint8-activation variant (entropy unless absent, per channel).
        execution: ``simulated`` (Q/DQ as float math, ORT optimisations off: what TensorRT computes up
            to accumulation order) or ``onnxruntime`` (ORT's fused integer CPU kernels; on CPUs
            without VNNI their uint8 x int8 path can saturate, which shows up as lost accuracy).
        max_histograms: histograms reported, the tensors where the methods disagree most.
        histogram_bins: bins per reported histogram (folded from the 2048 collected).
        progress: progress bars.

    Returns:
        Plain dict: ``results`` (one row per variant: method, percentile, granularity, scheme,
        metrics, seconds), ``best``, ``primary``, ``reference``, ``tensors`` (per-tensor thresholds and
        clipping/rounding error per method), ``weights`` (per-channel vs per-tensor error),
        ``histograms`` (counts, edges and each method's threshold), ``plan``, ``seconds``.
    """
    from tqdm import tqdm

    from pipeline.core.config import QuantConfig
    from pipeline.ort import ort_session, run_first_output
    from pipeline.quantize.api import _load, plan_for_config
    from pipeline.quantize.stats import collect_stats, float_tensor_names

    cfg = cfg or QuantConfig()
    variants = [parse_method(m) for m in methods]
    _check_granularities(granularities)
    model = _load(onnx_path)
    float_tensors = set(float_tensor_names(model))
    ev = list(eval_batches)
    if not ev:
        raise PipelineError("the evaluation set is empty", "pass held-out evaluation batches")

    t0 = time.perf_counter()
    # One statistics pass, over the activations of the default plan, feeds every method's thresholds.
    plan0 = plan_for_config(model, cfg, float_tensors=float_tensors)
    stats = collect_stats(model, calib_batches, list(plan0.activations), num_bins=cfg.num_bins, progress=progress)
    t_stats = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = run_first_output(ort_session(model), ev)
    t_ref = time.perf_counter() - t0

    amaxes = _variant_amaxes(stats, variants)
    run = _VariantRun(model, cfg, stats, float_tensors, ev, ref, eval_labels, task, execution)
    jobs = _variant_jobs(list(amaxes), granularities, asymmetric)
    rows = [_run_variant(run, key, amaxes[key], gran, sym)
            for key, gran, sym in tqdm(jobs, desc="variants", unit="model", disable=not progress, leave=False)]
    primary = str(rows[0]["metrics"]["primary"]) if rows else "output_cosine"  # type: ignore[index]
    return {
        "primary": primary,
        "task": task,
        "execution": execution,
        "reference": _reference_row(ref, eval_labels),
        "results": rows,
        "best": _best(rows, primary),
        "tensors": _tensor_rows(stats, amaxes),
        "weights": _weight_rows(model, plan0),
        "histograms": _histogram_rows(stats, amaxes, max_histograms, histogram_bins),
        "plan": plan0.to_dict(),
        "seconds": {"statistics": t_stats, "reference": t_ref,
                    "variants": float(sum(float(r["seconds"]) for r in rows))},  # type: ignore[arg-type]
    }


def save_comparison_figures(comparison: Dict[str, object], out_dir, prefix: str = "quant") -> List[Path]:
    """Render a comparison as PNGs next to the report.

    Writes ``<prefix>_metric.png`` (primary metric per variant), ``<prefix>_errors.png`` (clipping
    vs rounding error per method, summed over tensors) and ``<prefix>_histograms.png`` (|x|
    histograms with each method's threshold). Returns the written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths: List[Path] = []
    primary = str(comparison["primary"])
    rows = comparison["results"]  # type: ignore[assignment]

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{r['label']}\n{r['granularity']}{'' if r['scheme'].startswith('sym') else chr(10) + 'uint8'}"
              for r in rows]  # type: ignore[index]
    vals = [float(r["metrics"][primary]) for r in rows]  # type: ignore[index]
    ax.bar(range(len(vals)), vals, color=["C0" if "channel" in r["granularity"] else "C1" for r in rows])  # type: ignore[index]
    ax.set_xticks(range(len(vals)), labels, fontsize=7)
    lo = min(vals) if vals else 0
    ax.set_ylim(max(0.0, lo - (1 - lo) * 0.5 - 1e-3), 1.0 + 1e-3)
    ax.set_ylabel(f"{primary} vs FP32")
    ax.set_title("INT8 calibration variants (blue: per-channel weights, orange: per-tensor)")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / f"{prefix}_metric.png"))
    plt.close(fig)

    tensors = comparison["tensors"]  # type: ignore[assignment]
    keys = list(tensors[0]["error"]) if tensors else []  # type: ignore[index]
    clip = [sum(t["error"][k]["clip_mse"] / max(t["max"] - t["min"], 1e-12) ** 2 for t in tensors) for k in keys]  # type: ignore[index]
    rnd = [sum(t["error"][k]["round_mse"] / max(t["max"] - t["min"], 1e-12) ** 2 for t in tensors) for k in keys]  # type: ignore[index]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(keys, rnd, label="rounding")
    ax.bar(keys, clip, bottom=rnd, label="clipping")
    ax.set_ylabel("sum over tensors of MSE / range^2")
    ax.set_title("Activation quantization error by cause")
    ax.legend()
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / f"{prefix}_errors.png"))
    plt.close(fig)

    hists = comparison["histograms"]  # type: ignore[assignment]
    if hists:
        n = len(hists)
        cols = min(3, n)
        rows_n = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.2 * rows_n), squeeze=False)
        for ax, h in zip(axes.ravel(), hists):  # type: ignore[union-attr]
            e = np.asarray(h["edges"])
            ax.stairs(np.maximum(np.asarray(h["counts"]), 0.5), e, fill=True, alpha=0.5)
            for i, (k, a) in enumerate(h["thresholds"].items()):
                ax.axvline(a, color=f"C{i + 1}", lw=1, label=k)
            ax.set_yscale("log")
            ax.set_title(h["name"][-40:], fontsize=8)
            ax.set_xlabel("|x|")
        axes.ravel()[0].legend(fontsize=6)
        for ax in axes.ravel()[n:]:
            ax.axis("off")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"{prefix}_histograms.png"))
        plt.close(fig)
    return paths


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path
