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

Speed (MiniLM, 200 sentences of 128 tokens, 2 cores: benchmarks/results/calib_stats_speed.json): ONNX
Runtime computes batch i+1 in a worker thread while the histograms take in batch i (at most two batches
of outputs alive); tensors that only reshape or transpose another observed tensor are fetched and binned
once (:func:`same_value_groups`); the binning makes one float32 buffer and one int32 index array per
tensor (:func:`abs_bin_counts`). Every count equals what the former one-step-at-a-time code gave.

:func:`save_stats` / :func:`load_stats` keep the statistics in one ``.npz`` (the ranges file), so a later
stage reuses this pass instead of running the calibration data again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import onnx


def abs_bin_counts(x: np.ndarray, range_max: float, num_bins: int, amax: Optional[float] = None) -> np.ndarray:
    """Counts of ``|x|`` in ``num_bins`` equal bins over ``[0, range_max]``.

    Bin of a value: ``min(floor(float32(|x|) / float32(range_max / num_bins)), num_bins - 1)``, float32
    math as in TensorRT's histogram calibrators; the top edge and anything above it land in the last bin.

    Args:
        x: finite values, any shape, any float dtype (converted to float32).
        range_max: upper edge of the histogram (tensor units), > 0.
        num_bins: number of bins.
        amax: largest ``|x|`` when the caller knows it (saves a clamping pass over the data).

    Returns:
        int64 counts, length ``num_bins``.
    """
    x32 = x.astype(np.float32, copy=False).reshape(-1)
    width = np.float32(range_max / num_bins)
    if not width > 0:  # range_max so small that its bin width underflows float32: bin in float64
        x32, width = x32.astype(np.float64), np.float64(range_max / num_bins)
    # |x| / w == |x / w| exactly (IEEE division rounds the magnitude; the sign is apart), so one new
    # buffer serves the division and the absolute value.
    q = np.divide(x32, width)
    np.abs(q, out=q)
    if amax is None or amax / float(width) > 2 * num_bins:
        np.minimum(q, num_bins - 1, out=q)  # unknown or far range: clamp before the integer cast
    # float -> int32 truncates like the former int64 cast (all values < 2**31 here) into an index array
    # half the size. Bins past the last one (the top edge, rounding) fold into it: no clamping pass.
    counts = np.bincount(q.astype(np.int32), minlength=num_bins)
    if counts.size > num_bins:
        counts[num_bins - 1] += counts[num_bins:].sum()
    return counts[:num_bins]


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
                self.hist[0] += x.size
                self.count += x.size
                return
            self.range_max = amax
        if amax > self.range_max:
            self._grow(amax)
        self.hist += abs_bin_counts(x, self.range_max, self.num_bins, amax)
        self.count += x.size

    def copy(self, name: Optional[str] = None) -> "TensorStats":
        """An independent copy (own histogram array), renamed to ``name`` when given."""
        return TensorStats(self.name if name is None else name, num_bins=self.num_bins, min=self.min,
                           max=self.max, range_max=self.range_max, hist=self.hist.copy(), count=self.count)

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


#: Ops whose first output holds exactly the values of their first input, only rearranged or reshaped:
#: its min, max and |x| histogram equal the input's (a histogram does not see the order of the values).
SAME_VALUE_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def same_value_groups(model: "onnx.ModelProto", names: Sequence[str]) -> Dict[str, List[str]]:
    """Group ``names`` whose values are the same multiset in every run (chains of :data:`SAME_VALUE_OPS`).

    Args:
        model: the ONNX model the names belong to.
        names: tensors to observe.

    Returns:
        ``{representative: [members]}``: the representative is the first member in ``names`` order, and
        every name appears in exactly one group (alone when nothing else shares its values).
    """
    source = {}
    for node in model.graph.node:
        if node.op_type in SAME_VALUE_OPS and node.domain in ("", "ai.onnx") and node.input and node.output:
            source[node.output[0]] = node.input[0]

    def root(name: str) -> str:
        seen = set()
        while name in source and name not in seen:
            seen.add(name)
            name = source[name]
        return name

    by_root: Dict[str, List[str]] = {}
    for n in dict.fromkeys(names):
        by_root.setdefault(root(n), []).append(n)
    return {members[0]: members for members in by_root.values()}


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
    # ORT's idle workers spin by default; here the histogram thread runs beside ORT and needs the core.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _checked_feed(feed: Dict[str, np.ndarray], input_names: set) -> Dict[str, np.ndarray]:
    """``feed`` restricted to the model's inputs; raises when one is missing."""
    missing = input_names - set(feed)
    if missing:
        raise PipelineError(
            f"calibration batch lacks model inputs {sorted(missing)} (got {sorted(feed)})",
            "feed dicts keyed by the ONNX input names (see pipeline.export.onnx_input_specs)",
        )
    return {k: v for k, v in feed.items() if k in input_names}


def _outputs(future, out_names: List[str], feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """``{tensor: values}`` of one finished ORT run, the feed included."""
    try:
        outs = future.result()
    except Exception as err:  # ORT raises its own exception types for bad shapes/dtypes
        raise PipelineError(
            f"ONNX Runtime failed on a calibration batch: {err}",
            "check the calibration arrays' shapes and dtypes against the model inputs",
        ) from err
    values = dict(zip(out_names, outs))
    values.update(feed)
    return values


def _stream(sess, batches: Iterable[Dict[str, np.ndarray]], consume: Callable[[Dict[str, np.ndarray]], None],
            progress: bool) -> int:
    """Run every batch through ``sess`` and hand its values to ``consume``; returns the batch count.

    ORT runs batch i+1 in a worker thread while ``consume`` works on batch i: ``session.run`` and most
    numpy kernels release the GIL, so the two overlap on separate cores. At most two batches of
    outputs are alive at a time.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    out_names = [o.name for o in sess.get_outputs()]
    input_names = {i.name for i in sess.get_inputs()}
    n_batches, pending = 0, None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="calib-ort") as pool:
        for feed in tqdm(batches, desc="calibrating", unit="batch", disable=not progress, leave=False):
            feed = _checked_feed(feed, input_names)
            future = pool.submit(sess.run, out_names, feed)
            if pending is not None:
                consume(_outputs(pending[0], out_names, pending[1]))
            pending = (future, feed)
            n_batches += 1
        if pending is not None:
            consume(_outputs(pending[0], out_names, pending[1]))
    return n_batches


def collect_stats(
    onnx_model: "str | Path | onnx.ModelProto",
    batches: Iterable[Dict[str, np.ndarray]],
    tensor_names: Optional[Sequence[str]] = None,
    num_bins: int = 2048,
    threads: int = 0,
    progress: bool = True,
) -> Dict[str, TensorStats]:
    """Run the calibration batches through ONNX Runtime and stream per-tensor statistics.

    Tensors that only rearrange another observed tensor's values (:func:`same_value_groups`) are
    fetched and binned once; each gets its own copy of the statistics, equal to what binning it would give.

    Args:
        onnx_model: FP32 ONNX path or loaded model.
        batches: iterable of feeds ``{input_name: array}``; consumed once.
        tensor_names: tensors to observe; default every float activation (:func:`float_tensor_names`).
        num_bins: histogram bins per tensor.
        threads: ORT intra-op threads (0 = ORT default, one per physical core).
        progress: show a tqdm progress bar.

    Returns:
        ``{tensor_name: TensorStats}`` in the order of ``tensor_names``.

    Raises:
        PipelineError: no batch arrived, a feed does not match the model's inputs, or a tensor holds
            NaN/Inf (named by its group's representative).
    """
    import onnx

    model = onnx.load(str(onnx_model)) if isinstance(onnx_model, (str, Path)) else onnx_model
    names = list(dict.fromkeys(tensor_names)) if tensor_names is not None else float_tensor_names(model)
    groups = same_value_groups(model, names)
    stats = {rep: TensorStats(rep, num_bins=num_bins) for rep in groups}
    sess = _session_with_outputs(model, list(groups), threads)

    def consume(values: Dict[str, np.ndarray]) -> None:
        for rep, s in stats.items():
            if rep in values:
                s.update(values[rep])

    if _stream(sess, batches, consume, progress) == 0:
        raise PipelineError(
            "the calibration set is empty: no batch arrived",
            "pass at least one calibration batch (data.calib_samples > 0)",
        )
    out = {}
    for rep, members in groups.items():
        out.update({m: stats[rep] if m == rep else stats[rep].copy(m) for m in members})
    return {n: out[n] for n in names}


#: ``kind`` written into a statistics file; :func:`load_stats` refuses any other.
STATS_KIND = "activation_stats"
#: Layout version of the statistics file.
STATS_VERSION = 1
_STATS_KEYS = ("kind", "version", "names", "min", "max", "range_max", "count", "num_bins", "hist")


def save_stats(path: "str | Path", stats: Dict[str, TensorStats],
               channel_max: Optional[Dict[str, np.ndarray]] = None) -> Path:
    """Write ``stats`` to one ``.npz`` (atomically): the ranges file later stages read.

    Arrays, one row per tensor in ``stats`` order: ``names`` (unicode), ``min``/``max``/``range_max``
    (float64, tensor units), ``count`` and ``num_bins`` (int64), ``hist`` (int64, tensors x the largest
    ``num_bins``, zero-padded), plus ``kind`` and ``version``. No pickles: any numpy reads it.

    Args:
        path: file to write (``.npz`` suggested; the name is kept as given).
        stats: ``{tensor: TensorStats}``; each key must equal its stats' ``name``.

    Returns:
        ``path`` as a :class:`Path`.
    """
    from pipeline.core.artifacts import atomic_path

    items = list(stats.values())
    for key, s in stats.items():
        if key != s.name:
            raise ValueError(f"stats key {key!r} differs from its TensorStats.name {s.name!r}")
    width = max((s.num_bins for s in items), default=0)
    hist = np.zeros((len(items), width), dtype=np.int64)
    for i, s in enumerate(items):
        hist[i, : s.num_bins] = s.hist
    arrays = {
        "kind": np.array(STATS_KIND), "version": np.array(STATS_VERSION, dtype=np.int64),
        "names": np.array([s.name for s in items], dtype=np.str_),
        "min": np.array([s.min for s in items], dtype=np.float64),
        "max": np.array([s.max for s in items], dtype=np.float64),
        "range_max": np.array([s.range_max for s in items], dtype=np.float64),
        "count": np.array([s.count for s in items], dtype=np.int64),
        "num_bins": np.array([s.num_bins for s in items], dtype=np.int64), "hist": hist,
    }
    if channel_max:
        arrays["channel_max_names"] = np.array(list(channel_max), dtype=np.str_)
        arrays["channel_max_sizes"] = np.array([len(v) for v in channel_max.values()], dtype=np.int64)
        arrays["channel_max"] = np.concatenate([np.asarray(v, dtype=np.float32) for v in channel_max.values()])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: numpy would append .npz to a name
            np.savez(f, **arrays)
    return Path(path)


def _read_stats_arrays(path: Path) -> Dict[str, np.ndarray]:
    """The arrays of a statistics file; PipelineError when missing, unreadable or of another kind."""
    import zipfile

    hint = "re-run the quantize stage, which writes the statistics file, or point at the file it wrote"
    if not path.is_file():
        raise PipelineError(f"statistics file {path} does not exist", hint)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a lone .npy array
            raise PipelineError(f"{path} holds one array, not an activation statistics .npz", hint)
        with data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise PipelineError(f"statistics file {path} is not a readable .npz ({type(err).__name__}: {err})",
                            hint) from err
    missing = [k for k in _STATS_KEYS if k not in arrays]
    kind = str(arrays["kind"]) if "kind" in arrays and arrays["kind"].dtype.kind == "U" else None
    if kind != STATS_KIND or missing:
        raise PipelineError(f"{path} is not an activation statistics file (kind={kind!r}, missing {missing})", hint)
    version = arrays["version"]
    if version.shape != () or version.dtype.kind != "i" or int(version) != STATS_VERSION:
        raise PipelineError(f"statistics file {path} has layout version {version!r}, "
                            f"this pipeline reads version {STATS_VERSION}", hint)
    return arrays


def _consistent(a: Dict[str, np.ndarray]) -> bool:
    """Whether the arrays of a statistics file agree in length, shape and type (names unique)."""
    names, bins, hist = a["names"], a["num_bins"], a["hist"]
    if names.ndim != 1 or names.dtype.kind != "U" or len(set(names.tolist())) != names.shape[0]:
        return False
    n = names.shape[0]
    kinds = {"min": "f", "max": "f", "range_max": "f", "count": "i", "num_bins": "i"}
    if any(a[k].shape != (n,) or a[k].dtype.kind != kind for k, kind in kinds.items()):
        return False
    return (hist.ndim == 2 and hist.shape[0] == n and hist.dtype == np.int64
            and bool(np.all((bins > 0) & (bins <= hist.shape[1]))))


def load_stats(path: "str | Path") -> Dict[str, TensorStats]:
    """Read a file written by :func:`save_stats`; the result equals what was saved, bit for bit.

    Raises:
        PipelineError: the file is missing, not an ``.npz``, of another kind or version, or its
            arrays disagree in length, shape or type or repeat a name (a corrupt or hand-edited file).
    """
    path = Path(path)
    a = _read_stats_arrays(path)
    bins = a["num_bins"]
    if not _consistent(a):
        raise PipelineError(f"statistics file {path} is corrupt: its arrays disagree in length, shape or "
                            "type, or a tensor name repeats",
                            "re-run the quantize stage to write it again")
    return {
        str(name): TensorStats(str(name), num_bins=int(bins[i]), min=float(a["min"][i]), max=float(a["max"][i]),
                               range_max=float(a["range_max"][i]), hist=a["hist"][i, : int(bins[i])].copy(),
                               count=int(a["count"][i]))
        for i, name in enumerate(a["names"])
    }


def load_channel_maxima(path: "str | Path") -> Dict[str, np.ndarray]:
    """The per-channel maxima a statistics file carries (``{}`` when it has none): what the quantize stage
    split outlier channels by, so that the sensitivity stage rebuilds the same graph."""
    a = _read_stats_arrays(Path(path))
    if "channel_max_names" not in a:
        return {}
    names, sizes, values = a["channel_max_names"], a["channel_max_sizes"], a["channel_max"]
    if names.ndim != 1 or sizes.shape != names.shape or int(sizes.sum()) != values.shape[0]:
        raise PipelineError(f"statistics file {path} is corrupt: its channel maxima disagree in length",
                            "re-run the quantize stage to write it again")
    ends = np.cumsum(sizes)
    return {str(n): values[e - k:e].copy() for n, k, e in zip(names, sizes, ends)}
