"""The measurements of the sensitivity stage, on the cut-and-resume engine of :mod:`pipeline.sensitivity.segments`.

- :meth:`Sweep.one_at_a_time`: the task metric with only one layer quantized, for every layer, in one forward
  walk: the FP32 tensors crossing each layer's cut are computed once; each layer runs only the graph from
  itself on.
- :meth:`Sweep.choose_methods`: each activation tensor's calibration method, chosen where it is first quantized
  (:meth:`Sweep.choose_method`), in one FP32 walk.
- :meth:`Sweep.all_but_one`: the task metric with every layer but one quantized (the walk carries the
  quantized prefix instead).
- :meth:`Sweep.layer_errors`: every layer's output against FP32 (SNR, cosine, max abs) with everything
  quantized, in one pass over the samples.
- :meth:`Sweep.evaluate`: the metric of any set of quantized layers (the search's question).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from pipeline.quantize.scales import QParams, activation_qparams
from pipeline.sensitivity.segments import (Chunks, FrontierWalk, GraphIndex, Quantization, build_piece, chunked,
                                           piece_session, run_piece, stacked, suffix_output)

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.quantize.stats import TensorStats
    from pipeline.sensitivity.items import Layer


@dataclass
class Calibration:
    """Per-tensor thresholds: candidates from each method, the chosen one and why.

    Attributes:
        candidates: tensor -> {method: amax}.
        chosen: tensor -> method.
        local_error: tensor -> {method: relative squared error of the first consumer's output}.
        follows: tensor -> tensor whose threshold it takes (a max pool's output takes its input's).
    """

    candidates: Dict[str, Dict[str, float]]
    chosen: Dict[str, str]
    local_error: Dict[str, Dict[str, float]] = field(default_factory=dict)
    follows: Dict[str, str] = field(default_factory=dict)

    def method(self, tensor: str) -> str:
        """The method in use for ``tensor`` (its leader's, for a follower)."""
        return self.chosen[self.follows.get(tensor, tensor)]

    def amax(self, tensor: str, method: Optional[str] = None) -> float:
        """The threshold of ``tensor`` under ``method`` (default: the one in use); followers take their leader's."""
        leader = self.follows.get(tensor, tensor)
        return self.candidates[leader][method or self.chosen[leader]]


class Sweep:
    """Sensitivity measurements of one model on one set of samples.

    Args:
        index: the indexed FP32 model.
        layers: quantized layers (:func:`pipeline.sensitivity.items.quantized_layers`).
        stats: activation statistics of the calibration pass (min/max for asymmetric parameters).
        calibration: per-tensor thresholds (methods may still change through :meth:`choose_method`).
        feeds: graph inputs, all samples.
        metric: ``outputs -> metrics dict`` against the FP32 reference (:func:`pipeline.core.accuracy.task_metrics`).
        symmetric: symmetric int8 activations (else uint8 with a zero point).
        batch: samples per ORT call; threads: ORT intra-op threads (0: ORT's choice).
        fixed: quantized sites that are not ranked (pooling and residual-add inputs, by default): quantized
            whenever "everything" is (all-INT8, all-but-one, plans), left out of one-at-a-time runs.
    """

    def __init__(self, index: GraphIndex, layers: Sequence["Layer"], stats: Mapping[str, "TensorStats"],
                 calibration: Calibration, feeds: Mapping[str, np.ndarray], metric, symmetric: bool = True,
                 batch: int = 32, threads: int = 0, fixed: Sequence["Layer"] = ()):
        self.index, self.layers, self.stats = index, list(layers), stats
        self.fixed = list(fixed)
        self.calibration, self.metric = calibration, metric
        self.chunks = chunked({k: v for k, v in feeds.items() if k in index.inputs}, batch)
        self.symmetric, self.threads = symmetric, threads
        self.output = index.outputs[0]

    # ------------------------------------------------------------------------------------ quantization
    def qparams(self, tensor: str, method: Optional[str] = None) -> QParams:
        """Activation parameters of ``tensor`` under ``method`` (default: the chosen one)."""
        amax = self.calibration.amax(tensor, method)
        s = self.stats[tensor]
        return activation_qparams(amax, s.min, s.max, self.symmetric)

    def quantization(self, layers: Optional[Iterable["Layer"]] = None) -> Quantization:
        """The slots of ``layers`` (default: every layer and the fixed sites) with the current thresholds."""
        q = Quantization()
        for ly in self.layers + self.fixed if layers is None else layers:
            for slot, tensor in ly.activations:
                q.act[slot] = (tensor, self.qparams(tensor))
            for slot, name, axis in ly.weights:
                q.weight[slot] = (name, axis)
        return q

    # ---------------------------------------------------------------------------------------- metrics
    def reference(self) -> np.ndarray:
        """The FP32 output over every sample (what all metrics compare with)."""
        return self.run_full(Quantization())

    def run_full(self, quant: Quantization) -> np.ndarray:
        """The graph's first output with ``quant``'s slots fake-quantized."""
        piece = build_piece(self.index, 0, len(self.index.nodes), quant, [self.output])
        return stacked(run_piece(piece_session(piece, self.threads), self.chunks), self.output)

    def outputs(self, float_labels: Iterable[str] = ()) -> np.ndarray:
        """The output over every sample with every layer quantized except ``float_labels``."""
        keep = set(float_labels)
        return self.run_full(self.quantization([ly for ly in self.layers if ly.label not in keep] + self.fixed))

    def evaluate(self, float_labels: Iterable[str] = ()) -> Dict[str, object]:
        """Metrics with every layer quantized except ``float_labels``."""
        return self.metric(self.outputs(float_labels))

    # ------------------------------------------------------------------------------------------ sweeps
    def one_at_a_time(self, progress: bool = True) -> List[Dict[str, object]]:
        """Metrics with only each layer quantized, in graph order.

        Returns:
            One dict per layer: ``metrics`` and ``seconds`` (its suffix run).
        """
        walk = FrontierWalk(self.index, self.chunks, Quantization(), self.threads)
        out = []
        for ly, frontier in self._walk(walk, "one at a time", progress):
            t0 = time.perf_counter()
            y = suffix_output(self.index, frontier, ly.index, self.quantization([ly]), self.output, self.threads)
            out.append({"metrics": self.metric(y), "seconds": time.perf_counter() - t0})
        return out

    def choose_methods(self, methods: Sequence[str], progress: bool = True) -> None:
        """Choose every activation's method (:meth:`choose_method`) in one FP32 walk, without suffix runs."""
        walk = FrontierWalk(self.index, self.chunks, Quantization(), self.threads)
        for ly, frontier in self._walk(walk, "calibration", progress, self.layers + self.fixed):
            for _, tensor in ly.activations:
                if tensor not in self.calibration.local_error and tensor not in self.calibration.follows:
                    self.choose_method(ly, tensor, frontier, methods)

    def all_but_one(self, progress: bool = True) -> List[Dict[str, object]]:
        """Metrics with every layer quantized but each one in turn, in graph order."""
        full = self.quantization()
        walk = FrontierWalk(self.index, self.chunks, full, self.threads)
        out = []
        for ly, frontier in self._walk(walk, "all but one", progress):
            t0 = time.perf_counter()
            y = suffix_output(self.index, frontier, ly.index, full.without(ly.slots), self.output, self.threads)
            out.append({"metrics": self.metric(y), "seconds": time.perf_counter() - t0})
        return out

    def _walk(self, walk: FrontierWalk, desc: str, progress: bool, layers: Optional[Sequence["Layer"]] = None):
        """Yield ``(layer, frontier at its cut)`` in graph order, with a progress bar naming the layer."""
        from tqdm import tqdm

        layers = sorted(layers, key=lambda ly: ly.index) if layers is not None else self.layers
        bar = tqdm(layers, desc=desc, unit="layer", disable=not progress, leave=False)
        for ly in bar:
            bar.set_postfix_str(ly.label[-40:], refresh=False)
            yield ly, walk.advance(ly.index)

    # ----------------------------------------------------------------------------------- calibration
    def choose_method(self, layer: "Layer", tensor: str, frontier: Chunks, methods: Sequence[str],
                      samples: int = 64) -> str:
        """Pick ``tensor``'s method: the smallest error of ``layer``'s output with only ``tensor`` quantized.

        Error = sum of squared differences / sum of squares of the FP32 output, on the first ``samples``
        samples of the frontier. Methods whose thresholds coincide are timed once.
        """
        cal = self.calibration
        cands = {m: cal.candidates[tensor][m] for m in methods if m in cal.candidates[tensor]}
        sub, n = [], 0
        for c in frontier:  # whole batches, at least ``samples`` samples
            if n >= samples:
                break
            sub.append(c)
            n += _samples_in(c, tensor)
        start, stop = layer.index, layer.index + 1
        ref = stacked(run_piece(piece_session(build_piece(self.index, start, stop, Quantization(), [layer.output]),
                                              self.threads), sub), layer.output).astype(np.float64)
        power = float((ref ** 2).sum()) or 1.0
        errors: Dict[str, float] = {}
        seen: Dict[float, float] = {}
        for m, amax in cands.items():
            if amax not in seen:
                slots = [s for s, t in layer.activations if t == tensor]
                q = Quantization({s: (tensor, self.qparams(tensor, m)) for s in slots})
                piece = build_piece(self.index, start, stop, q, [layer.output])
                y = stacked(run_piece(piece_session(piece, self.threads), sub), layer.output)
                seen[amax] = float(((y - ref) ** 2).sum()) / power
            errors[m] = seen[amax]
        best = min(errors, key=lambda m: (errors[m], m != cal.chosen[tensor]))
        cal.local_error[tensor] = errors
        cal.chosen[tensor] = best
        return best

    # ------------------------------------------------------------------------------------ layer errors
    def layer_errors(self, float_labels: Iterable[str] = ()) -> Dict[str, Dict[str, float]]:
        """Each layer's output vs FP32 with every layer (but ``float_labels``) quantized, in one pass.

        Returns:
            label -> ``{snr_db, cosine, max_abs}`` (cosine: mean over samples of the flattened output's cosine).
        """
        keep = set(float_labels)
        names = list(dict.fromkeys(ly.output for ly in self.layers if ly.output))
        n = len(self.index.nodes)
        ref_s = piece_session(build_piece(self.index, 0, n, Quantization(), names), self.threads)
        q = self.quantization([ly for ly in self.layers if ly.label not in keep] + self.fixed)
        test_s = piece_session(build_piece(self.index, 0, n, q, names), self.threads)
        acc = {t: np.zeros(4) for t in names}  # signal power, noise power, sum of cosines, max abs
        total = 0
        for feed in self.chunks:
            total += len(next(iter(feed.values())))
            refs = dict(zip(names, ref_s.run(names, _only(ref_s, feed))))
            tests = dict(zip(names, test_s.run(names, _only(test_s, feed))))
            for t in names:
                a = refs[t].reshape(len(refs[t]), -1).astype(np.float64)
                b = tests[t].reshape(len(tests[t]), -1).astype(np.float64)
                d = b - a
                norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
                cos = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
                acc[t] += [(a ** 2).sum(), (d ** 2).sum(), cos.sum(), 0.0]
                acc[t][3] = max(acc[t][3], float(np.abs(d).max()) if d.size else 0.0)
        out = {}
        for ly in self.layers:
            sig, noise, cos, mx = acc[ly.output]
            # None where the SNR is unbounded (no error: a float layer; or no signal), so the JSON stays strict.
            snr = float(10 * np.log10(sig / noise)) if noise > 0 and sig > 0 else None
            out[ly.label] = {"snr_db": snr, "cosine": float(cos / max(total, 1)), "max_abs": float(mx)}
        return out


def _only(session, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feed.items() if k in names}


def candidate_thresholds(stats: Mapping[str, "TensorStats"], tensors: Iterable[str], methods: Sequence[str],
                         percentile: float) -> Dict[str, Dict[str, float]]:
    """tensor -> {method: amax} for every method (tensor units)."""
    from pipeline.quantize.api import amaxes_from_stats

    observed = {t: stats[t] for t in tensors}
    by_method = {m: amaxes_from_stats(observed, m, percentile) for m in methods}
    return {t: {m: by_method[m][t] for m in methods} for t in observed}


def _samples_in(chunk: Dict[str, np.ndarray], tensor: str) -> int:
    """Samples in one batch of a frontier: the leading dimension of ``tensor`` (a batch-major activation), else
    of the largest array (a frontier may also carry scalars and shape tensors)."""
    value = chunk.get(tensor)
    if value is None or np.ndim(value) == 0:
        value = max(chunk.values(), key=np.size)
    return int(np.shape(value)[0]) if np.ndim(value) else 1
