"""scikit-learn's 8x8 handwritten digits and the one fixed train/test split the pipeline uses.

The ``digits_cnn`` model trains on the train split and reports its accuracy on the test split;
``data=digits`` serves exactly that test split for evaluation (and draws calibration samples from the
train split), so an accuracy measured after quantization is comparable with the one at training time.
Only numpy and scikit-learn are needed (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: Samples in scikit-learn's digits data set.
DIGITS_TOTAL = 1797
#: Training samples; the remaining 397 form the test split.
DIGITS_TRAIN = 1400
#: Seed of the split permutation. Fixed on purpose: changing it changes the test split and thereby
#: every accuracy number recorded against it (and the digits_cnn cache key).
DIGITS_SPLIT_SEED = 20240601
#: Pixel values in the data set run from 0 to this value.
DIGITS_MAX = 16.0


@dataclass(frozen=True)
class DigitsSplit:
    """The fixed split, images scaled to [0, 1].

    Attributes:
        train_x / test_x: float32 (N, 8, 8) images in [0, 1].
        train_y / test_y: int64 (N,) labels 0-9.
        train_idx / test_idx: indices into scikit-learn's sample order.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray


@lru_cache(maxsize=1)
def digits_split() -> DigitsSplit:
    """Load scikit-learn's digits (shipped inside the package, no download) and split them.

    Returns:
        The 1400 / 397 train/test split, deterministic across runs and machines.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / DIGITS_MAX).astype(np.float32)
    labels = data.target.astype(np.int64)
    if len(images) != DIGITS_TOTAL:  # a different scikit-learn data file would silently move the split
        raise AssertionError(f"expected {DIGITS_TOTAL} digits, scikit-learn returned {len(images)}")
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(DIGITS_TOTAL)
    train_idx, test_idx = np.sort(perm[:DIGITS_TRAIN]), np.sort(perm[DIGITS_TRAIN:])
    split = DigitsSplit(
        images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], train_idx, test_idx
    )
    for arr in (split.train_x, split.train_y, split.test_x, split.test_y):
        arr.setflags(write=False)  # shared through the cache: nobody may modify it in place
    return split
