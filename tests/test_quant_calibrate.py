"""Calibration algorithms against hand-computed cases and a literal transliteration of TensorRT's loop."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from pipeline.quantize.calibrate import (
    amax_entropy,
    amax_from_stats,
    amax_mse,
    amax_percentile,
    fake_quant_symmetric,
    kl_divergences,
    mse_curve,
)
from pipeline.quantize.stats import TensorStats


def _reference_kl(bins, nq, start):
    """The KL loop as NVIDIA pytorch-quantization writes it (histogram.py), one candidate at a time."""
    bins = np.asarray(bins, dtype=float)
    out = []
    for i in range(start, len(bins) + 1):
        p = bins[:i].copy()
        p[i - 1] += bins[i:].sum()
        space = np.linspace(0, i, num=nq + 1)
        dig = np.digitize(range(i), space) - 1
        dig[bins[:i] == 0] = -1
        dens = np.zeros(nq)
        for j, d in enumerate(dig):
            if d != -1:
                dens[d] += bins[j]
        for k, v in Counter(dig).items():
            if k != -1:
                dens[k] /= v
        q = np.array([dens[d] if d != -1 else 0.0 for d in dig])
        p, q = p / p.sum(), q / q.sum()
        m = p > 0
        out.append(np.inf if np.any(q[m] == 0) else float((p[m] * np.log(p[m] / q[m])).sum()))
    return np.array(out)


def test_kl_hand_computed_tiny_histogram():
    # bins [4, 2, 0, 2], 2 quantization bins, candidates i = 2, 3, 4 (worked out in the comments).
    cand, kl = kl_divergences(np.array([4.0, 2, 0, 2]), num_quant_bins=2, start_bin=2)
    assert cand.tolist() == [2, 3, 4]
    # i=2: P = [4, 4]/8, Q = [4, 2]/6 -> 0.5 ln(0.75) + 0.5 ln(1.5) = 0.5 ln(1.125)
    assert kl[0] == pytest.approx(0.5 * math.log(1.125), abs=1e-12)
    # i=3: the outliers fold into bin 2, which is empty, so Q has no mass there -> inf
    assert math.isinf(kl[1])
    # i=4: P = [.5, .25, 0, .25], Q = [3, 3, 0, 2]/8 -> 0.5 ln(4/3) + 0.25 ln(2/3)
    assert kl[2] == pytest.approx(0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3), abs=1e-12)
    edges = np.arange(5.0)
    assert amax_entropy(np.array([4.0, 2, 0, 2]), edges, num_quant_bins=2, start_bin=2,
                        zero_bin_tweak=False, max_clipped_fraction=None) == 4.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_vectorised_matches_reference_loop(seed):
    rng = np.random.default_rng(seed)
    n = 400
    h = rng.poisson(np.exp(-np.arange(n) / 50) * 40).astype(float)
    h[rng.random(n) < 0.25] = 0
    cand, kl = kl_divergences(h, 128, 128)
    ref = _reference_kl(h, 128, 128)
    assert np.array_equal(np.isfinite(kl), np.isfinite(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(kl[fin], ref[fin], rtol=0, atol=1e-12)


def test_entropy_clips_a_lone_outlier_but_not_a_uniform_distribution():
    edges = np.linspace(0, 2048, 2049)
    uniform = np.full(2048, 100.0)
    assert amax_entropy(uniform, edges) == 2048.0
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal(200_000))
    x[0] = 40.0  # one far outlier: max calibration wastes ~90 % of the int8 grid on it
    hist, edges = np.histogram(x, 2048, (0, 40.0))
    a = amax_entropy(hist, edges)
    assert 2.5 < a < 8.0


def test_entropy_guard_against_one_hot_degenerate_histogram():
    # Values far from zero (bins 1500-1599): TensorRT's bare search takes a KL = 0 candidate that
    # clips 99.9 % of them; the guard (clip at most 5 %) refuses it.
    h = np.zeros(2048)
    h[1500:1600] = np.arange(1, 101)  # not flat, so no other candidate reaches KL = 0
    h[700] = 1  # one small value: candidate 701 keeps only it, P and Q are one-hot, KL = 0
    edges = np.arange(2049.0)
    assert amax_entropy(h, edges, max_clipped_fraction=None) == 701.0
    assert amax_entropy(h, edges) >= 1595


def test_percentile_hand_computed():
    hist = np.array([90, 9, 1, 0])
    edges = np.array([0.0, 1, 2, 3, 4])
    assert amax_percentile(hist, edges, 90) == 1.0
    assert amax_percentile(hist, edges, 99) == 2.0
    assert amax_percentile(hist, edges, 99.9) == 3.0
    assert amax_percentile(hist, edges, 100) == 3.0
    with pytest.raises(ValueError):
        amax_percentile(hist, edges, 0)


def test_mse_curve_matches_direct_fake_quant_and_picks_interior_threshold():
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal(100_000))
    hist, edges = np.histogram(x, 512, (0, x.max()))
    amaxes, errs = mse_curve(hist, edges, start_bin=128, stride=64)
    centres = (edges[:-1] + edges[1:]) / 2
    for a, e in zip(amaxes, errs):
        direct = ((fake_quant_symmetric(centres, a) - centres) ** 2 * hist).sum() / hist.sum()
        assert e == pytest.approx(direct, rel=1e-9)
    a = amax_mse(hist, edges)
    # Clipping a Gaussian's tail at ~3-4.5 sigma beats covering the max for 8 bits.
    assert 2.5 < a < x.max()


def test_amax_from_stats_dispatch_and_cap():
    s = TensorStats("t", num_bins=2048)
    s.update(np.linspace(-3, 3, 10001, dtype=np.float32))
    assert amax_from_stats(s, "max") == pytest.approx(3.0)
    for m in ("percentile", "entropy", "mse"):
        assert 0 < amax_from_stats(s, m) <= 3.0 + 1e-6
    assert amax_from_stats(s, "percentile", 50.0) == pytest.approx(1.5, abs=0.01)
    with pytest.raises(ValueError):
        amax_from_stats(s, "kl")
