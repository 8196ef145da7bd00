"""Streaming activation statistics: per-tensor min/max and |x| histograms in bounded memory.

The calibration data is run through ONNX Runtime once, batch by batch, with the tensors we want to
calibrate added as extra graph outputs. Each batch updates a fixed-size histogram per tensor and is
then dropped, so memory is ``O(tensors x num_bins)`` whatever the number of batches.

Histogram of ``|x|`` over ``[0, range_max)`` with ``num_bins`` equal bins, the layout TensorRT's
entropy calibrator and NVIDIA's pytorch-quantization ``HistogramCalibrator`` use for symmetric
quantization. The range is set by the first batch; when a later batch exceeds it the range doubles
(as often as needed) and pairs of adjacent bins are merged. Bin edges stay aligned, so re-binning is
exact: no count moves to a wrong bin, unlike interpolating re-binning (ONNX Runtime's
``HistogramCollector.merge_histogram``) which smears counts. The price is that the data may fill only
just over half of the bins (>= 1024 of 2048) when a late batch forces a doubling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence

import numpy as np

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import onnx


@dataclass
class TensorStats:
    """Running statistics of one tensor.

    Attributes:
        name: ONNX tensor name.
        num_bins: histogram bins (fixed).
        min: smallest value seen (tensor units).
        max: largest value seen (tensor units).
        range_max: upper edge of the |x| histogram (tensor units); bin width = range_max / num_bins.
        hist: counts of |x| per bin, int64, length ``num_bins``.
        count: number of elements seen.
    """

    name: str
    num_bins: int = 2048
    min: float = float("inf")
    max: float = float("-inf")
    range_max: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    count: int = 0

    def __post_init__(self) -> None:
        if self.hist.size == 0:
            self.hist = np.zeros(self.num_bins, dtype=np.int64)

    @property
    def amax(self) -> float:
        """Largest |x| seen (tensor units)."""
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    @property
    def edges(self) -> np.ndarray:
        """Bin edges, ``num_bins + 1`` values from 0 to ``range_max``."""
        return np.arange(self.num_bins + 1, dtype=np.float64) * (self.range_max / self.num_bins)

    def update(self, x: np.ndarray) -> None:
        """Add one batch of values (any shape, any float dtype)."""
        x = np.asarray(x)
        if x.size == 0:
            return
        a = np.abs(x.astype(np.float32, copy=False)).ravel()
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise PipelineError(
                f"tensor {self.name!r} holds NaN or Inf values during calibration",
                "check the calibration inputs (normalisation, dtype) and that the FP32 model is finite on them",
            )
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        amax = max(abs(lo), abs(hi))
        if self.range_max <= 0.0:
            # First non-zero batch fixes the initial range; an all-zero tensor keeps waiting.
            if amax == 0.0:
                self.hist[0] += a.size
                self.count += a.size
                return
            self.range_max = amax
        if amax > self.range_max:
            self._grow(amax)
        width = self.range_max / self.num_bins
        # floor(|x| / width), with the top edge (|x| == range_max) falling into the last bin.
        idx = np.minimum((a / np.float32(width)).astype(np.int64), self.num_bins - 1)
        self.hist += np.bincount(idx, minlength=self.num_bins)
        self.count += a.size

    def _grow(self, amax: float) -> None:
        """Double ``range_max`` until it covers ``amax``, merging adjacent bins each time."""
        factor = 1
        while self.range_max * factor < amax:
            factor *= 2
        # The 2048-bin histogram folds by groups of ``factor`` bins; the folded counts land in the
        # lower num_bins/factor bins of the new layout.
        n = self.num_bins
        if factor >= n:
            merged = np.zeros(n, dtype=np.int64)
            merged[0] = self.hist.sum()
        else:
            merged = np.zeros(n, dtype=np.int64)
            merged[: n // factor] = self.hist.reshape(n // factor, factor).sum(axis=1)
        self.hist = merged
        self.range_max *= factor

    def to_dict(self, with_hist: bool = False) -> dict:
        """Plain-dict view (``with_hist`` adds the counts)."""
        d = {"name": self.name, "min": self.min, "max": self.max, "amax": self.amax,
             "range_max": self.range_max, "num_bins": self.num_bins, "count": self.count}
        if with_hist:
            d["hist"] = self.hist.tolist()
        return d


def float_tensor_names(model: "onnx.ModelProto") -> List[str]:
    """Names of every float activation in the graph (graph inputs and node outputs, not weights)."""
    import onnx

    inits = {i.name for i in model.graph.initializer}
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    names = [i.name for i in model.graph.input if i.name not in inits]
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        names.extend(o for o in node.output if o)
    return [n for n in names if types.get(n) in float_types]


def _session_with_outputs(model: "onnx.ModelProto", names: Sequence[str], threads: int):
    """An ORT session on a copy of ``model`` where ``names`` are also graph outputs."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    graph_inputs = {i.name for i in m.graph.input}
    for n in names:
        if n not in existing and n not in graph_inputs:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    opts = ort.SessionOptions()
    # Graph optimisations would fuse nodes away and with them the tensors we asked for.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def collect_stats(
    onnx_model: "str | Path | onnx.ModelProto",
    batches: Iterable[Dict[str, np.ndarray]],
    tensor_names: Optional[Sequence[str]] = None,
    num_bins: int = 2048,
    threads: int = 0,
    progress: bool = True,
) -> Dict[str, TensorStats]:
    """Run the calibration batches through ONNX Runtime and stream per-tensor statistics.

    Args:
        onnx_model: FP32 ONNX path or loaded model.
        batches: iterable of feeds ``{input_name: array}``; consumed once.
        tensor_names: tensors to observe; default every float activation (:func:`float_tensor_names`).
        num_bins: histogram bins per tensor.
        threads: ORT intra-op threads (0 = ORT default, all cores).
        progress: show a tqdm progress bar.

    Returns:
        ``{tensor_name: TensorStats}`` in the order of ``tensor_names``.

    Raises:
        PipelineError: no batch arrived, or a feed does not match the model's inputs.
    """
    import onnx

    model = onnx.load(str(onnx_model)) if isinstance(onnx_model, (str, Path)) else onnx_model
    names = list(tensor_names) if tensor_names is not None else float_tensor_names(model)
    stats = {n: TensorStats(n, num_bins=num_bins) for n in names}
    sess = _session_with_outputs(model, names, threads)
    out_names = [o.name for o in sess.get_outputs()]
    input_names = {i.name for i in sess.get_inputs()}
    from tqdm import tqdm

    n_batches = 0
    for feed in tqdm(batches, desc="calibrating", unit="batch", disable=not progress, leave=False):
        missing = input_names - set(feed)
        if missing:
            raise PipelineError(
                f"calibration batch lacks model inputs {sorted(missing)} (got {sorted(feed)})",
                "feed dicts keyed by the ONNX input names (see pipeline.export.onnx_input_specs)",
            )
        feed = {k: v for k, v in feed.items() if k in input_names}
        try:
            outs = sess.run(out_names, feed)
        except Exception as err:  # ORT raises its own exception types for bad shapes/dtypes
            raise PipelineError(
                f"ONNX Runtime failed on a calibration batch: {err}",
                "check the calibration arrays' shapes and dtypes against the model inputs",
            ) from err
        values = dict(zip(out_names, outs))
        values.update(feed)
        for n in names:
            if n in values:
                stats[n].update(values[n])
        n_batches += 1
    if n_batches == 0:
        raise PipelineError(
            "the calibration set is empty: no batch arrived",
            "pass at least one calibration batch (data.calib_samples > 0)",
        )
    return stats
