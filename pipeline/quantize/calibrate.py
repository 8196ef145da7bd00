"""Calibration algorithms: plain functions from a |x| histogram (or min/max) to a clipping threshold.

Every function takes the statistics of one tensor (:class:`~pipeline.quantize.stats.TensorStats`, or
the raw ``hist``/``edges`` arrays) and returns ``amax``, the clipping threshold in tensor units; the
symmetric int8 scale is then ``amax / 127`` (see :mod:`pipeline.quantize.scales`).

- ``max``: the largest |x| seen (min-max calibration).
- ``percentile``: the smallest bin edge below which ``p`` % of the |x| mass lies.
- ``entropy``: TensorRT's KL-divergence method (Migacz, "8-bit Inference with TensorRT", GTC 2017;
  the same loop as NVIDIA pytorch-quantization ``calib/histogram.py::_compute_amax_entropy``): for
  each candidate threshold ``i`` bins (from 128 to 2048), fold the outliers into the last kept bin
  (P), quantize the kept bins to 128 levels and expand back over the non-empty bins (Q), and keep the
  threshold with the smallest KL(P || Q). Vectorised here over all candidates with cumulative sums.
- ``mse``: the threshold that minimizes the expected squared error of fake-quantizing the histogram's
  bin centres (clipping + rounding), as in pytorch-quantization ``_compute_amax_mse``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.quantize.stats import TensorStats

#: Names accepted by :func:`amax_from_stats` (``QuantConfig.calib``).
METHODS = ("max", "percentile", "entropy", "mse")


def amax_max(stats: "TensorStats") -> float:
    """Min-max calibration: the largest |x| seen, tensor units."""
    return float(stats.amax)


def amax_percentile(hist: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    """Percentile calibration on a |x| histogram.

    Args:
        hist: counts per bin (length B).
        edges: bin edges (length B + 1), tensor units.
        percentile: in (0, 100], e.g. 99.99.

    Returns:
        The right edge of the first bin where the cumulative share reaches ``percentile`` %, so
        at least ``percentile`` % of the values lie inside ``[-amax, amax]``; 0 for an empty histogram.
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    total = hist.sum()
    if total == 0:
        return 0.0
    cdf = np.cumsum(hist, dtype=np.float64) / total
    idx = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12, side="left"))
    idx = min(idx, len(hist) - 1)
    return float(edges[idx + 1])


def kl_divergences(hist: np.ndarray, num_quant_bins: int = 128, start_bin: int = 128, stride: int = 1
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """KL(P || Q) of TensorRT's entropy calibration for every candidate threshold.

    Candidate ``i`` keeps the first ``i`` bins (threshold = ``edges[i]``). P is those bins with the
    mass of all bins ``>= i`` added to bin ``i - 1``; Q quantizes bins ``[0, i)`` into
    ``num_quant_bins`` groups (bin ``j`` in group ``g`` when ``g*i/nq <= j < (g+1)*i/nq``), then
    spreads each group's mass evenly over its non-empty bins (empty bins stay empty in Q). Both are
    normalised. ``inf`` where P has mass and Q has none (outliers folded into an empty bin).

    Args:
        hist: |x| histogram counts (length B). Callers apply the zero-bin tweak themselves.
        num_quant_bins: quantization levels on one side (128 for int8).
        start_bin: first candidate (>= num_quant_bins).
        stride: step between candidates, bins.

    Returns:
        ``(candidates, kl)``: candidate bin counts ``i`` and their divergences (nats).
    """
    b = np.asarray(hist, dtype=np.float64)
    n = len(b)
    start = max(start_bin, num_quant_bins)
    cand = np.arange(start, n + 1, stride, dtype=np.int64)
    if cand.size == 0:
        return cand, np.zeros(0)
    total = b.sum()
    csum = np.concatenate([[0.0], np.cumsum(b)])                       # C[k] = sum b[:k]
    nz = np.concatenate([[0], np.cumsum(b > 0)]).astype(np.float64)    # non-empty bins in b[:k]
    with np.errstate(divide="ignore", invalid="ignore"):
        blogb = np.where(b > 0, b * np.log(np.where(b > 0, b, 1.0)), 0.0)
    clogc = np.concatenate([[0.0], np.cumsum(blogb)])

    # Group boundaries ceil(g * i / nq) in exact integer arithmetic, shape (C, nq + 1).
    g = np.arange(num_quant_bins + 1, dtype=np.int64)
    bounds = (g[None, :] * cand[:, None] + num_quant_bins - 1) // num_quant_bins
    gsum = csum[bounds[:, 1:]] - csum[bounds[:, :-1]]                  # mass per group
    gnz = nz[bounds[:, 1:]] - nz[bounds[:, :-1]]                       # non-empty bins per group

    last = b[cand - 1]
    outliers = total - csum[cand]
    p_last = last + outliers
    # sum_j P_j log P_j over kept bins (unnormalised P; sum P = total).
    plogp = clogc[cand - 1] + np.where(p_last > 0, p_last * np.log(np.where(p_last > 0, p_last, 1.0)), 0.0)
    # sum_j P_j log Q_j: Q is constant (gsum/gnz) over a group's non-empty bins; the P mass on those
    # bins is gsum, plus the outliers for the last group (bin i-1 always sits in the last group).
    pmass = gsum.copy()
    pmass[:, -1] += outliers
    with np.errstate(divide="ignore", invalid="ignore"):
        logq = np.where(gnz > 0, np.log(np.where(gsum > 0, gsum, 1.0) / np.where(gnz > 0, gnz, 1.0)), 0.0)
    plogq = (np.where(gnz > 0, pmass, 0.0) * logq).sum(axis=1)
    qtotal = csum[cand]  # sum Q = sum b[:i]
    # KL = sum p log p - sum p log q with p = P / total, q = Q / qtotal.
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (plogp - plogq) / total - np.log(total) + np.log(qtotal)
    kl = np.where((last == 0) & (outliers > 0), np.inf, kl)
    kl = np.where(qtotal > 0, kl, np.inf)
    return cand, kl


def amax_entropy(hist: np.ndarray, edges: np.ndarray, num_quant_bins: int = 128,
                 start_bin: int = 128, stride: int = 1, zero_bin_tweak: bool = True,
                 max_clipped_fraction: "float | None" = 0.05) -> float:
    """TensorRT-style entropy (KL) calibration threshold, tensor units.

    Args:
        hist: |x| histogram (TensorRT uses 2048 bins).
        edges: bin edges (len(hist) + 1).
        num_quant_bins: 128 for int8.
        start_bin: smallest candidate, bins.
        stride: candidate step, bins.
        zero_bin_tweak: replace bin 0 by bin 1 first, as pytorch-quantization does, so that the exact
            zeros after a ReLU (often half the tensor) do not dominate the divergence.
        max_clipped_fraction: ignore candidates that would clip more than this share of the values
            (None: TensorRT's exact search). Our guard for a degenerate case of the method: when
            the values sit far from zero (e.g. a global-average-pool output in [0.2, 0.9]), a
            threshold below all of them puts every value in the last kept bin, P and Q are both
            one-hot there, and KL = 0 "wins" although it clips everything.

    Returns:
        ``edges[i*]`` for the candidate ``i*`` with the smallest divergence (the last such on ties,
        favouring less clipping); the histogram's top edge when it has too few bins to search.
    """
    h = np.asarray(hist, dtype=np.float64).copy()
    if h.sum() == 0:
        return 0.0
    if zero_bin_tweak and len(h) > 1:
        h[0] = h[1]
    cand, kl = kl_divergences(h, num_quant_bins, start_bin, stride)
    if max_clipped_fraction is not None and cand.size:
        clipped = 1.0 - np.cumsum(h)[cand - 1] / h.sum()
        kl = np.where(clipped > max_clipped_fraction, np.inf, kl)
    if cand.size == 0 or not np.isfinite(kl).any():
        return float(edges[-1])
    best = np.flatnonzero(kl == kl[np.isfinite(kl)].min())[-1]
    return float(edges[cand[best]])


def fake_quant_symmetric(x: np.ndarray, amax: float, qmax: int = 127) -> np.ndarray:
    """Symmetric fake quantization: ``clip(round(x / s), -qmax, qmax) * s`` with ``s = amax / qmax``."""
    if amax <= 0:
        return np.zeros_like(x)
    s = amax / qmax
    return np.clip(np.round(x / s), -qmax, qmax) * s


def mse_curve(hist: np.ndarray, edges: np.ndarray, start_bin: int = 128, stride: int = 1,
              qmax: int = 127) -> Tuple[np.ndarray, np.ndarray]:
    """Expected squared quantization error of the histogram for each candidate threshold.

    Each bin stands for its centre; error = mean over values of (fake_quant(c) - c)^2, which counts
    both clipping (c > amax) and rounding (c <= amax).

    Returns:
        ``(amaxes, mse)``: candidate thresholds ``edges[i]`` (tensor units) and errors (units^2).
    """
    h = np.asarray(hist, dtype=np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    n = len(h)
    cand = np.arange(min(start_bin, n), n + 1, stride)
    cand = cand[cand > 0]
    amaxes = edges[cand]
    total = h.sum()
    errs = np.empty(len(cand))
    nzb = h > 0
    c, w = centres[nzb], h[nzb]
    # Chunked so that memory stays bounded for 2048 candidates x 2048 bins.
    for k in range(0, len(cand), 256):
        a = amaxes[k:k + 256, None]
        s = a / qmax
        q = np.clip(np.round(c[None, :] / s), -qmax, qmax) * s
        errs[k:k + 256] = ((q - c[None, :]) ** 2 * w[None, :]).sum(axis=1) / max(total, 1.0)
    return amaxes, errs


def amax_mse(hist: np.ndarray, edges: np.ndarray, start_bin: int = 128, stride: int = 1) -> float:
    """Threshold minimizing :func:`mse_curve` (the last on ties), tensor units."""
    if np.asarray(hist).sum() == 0:
        return 0.0
    amaxes, errs = mse_curve(hist, edges, start_bin, stride)
    best = np.flatnonzero(errs == errs.min())[-1]
    return float(amaxes[best])


def amax_from_stats(stats: "TensorStats", method: str, percentile: float = 99.99) -> float:
    """Dispatch to one algorithm; the threshold never exceeds the largest |x| seen.

    Args:
        stats: one tensor's statistics.
        method: one of :data:`METHODS`.
        percentile: for ``percentile``.

    Returns:
        ``amax`` in tensor units (0 for a tensor that was all zeros).
    """
    if method == "max":
        return amax_max(stats)
    if method == "percentile":
        a = amax_percentile(stats.hist, stats.edges, percentile)
    elif method == "entropy":
        a = amax_entropy(stats.hist, stats.edges)
    elif method == "mse":
        a = amax_mse(stats.hist, stats.edges)
    else:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    return float(min(a, stats.amax))
