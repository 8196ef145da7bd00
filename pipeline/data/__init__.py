"""Data sources: arrays adapted to a model's inputs, for export checks, calibration and evaluation.

``load_dataset(DataConfig, specs, split, num_samples) -> Dataset``. The ``calib`` and ``eval`` splits
never share a sample: calibrating on the samples used to measure accuracy would flatter int8.

Sources (``data.name``):

* ``random``: seeded N(0, 1) floats; token ids uniform in ``[0, vocab)`` with a full attention mask.
  calib and eval come from independent random streams.
* ``digits``: scikit-learn's 8x8 digits. eval = exactly digits_cnn's test split (in order), calib =
  samples of its train split, scaled to [0, 1].
* ``folder``: PNG/JPEG images under ``data.path`` (labels from subfolder names when every image sits
  in one), normalized.
* ``npz``: arrays in ``data.path``: ``inputs``/``x`` or one key per input name; optional ``labels``/``y``.

Data whose per-sample shape does not fit the model input is an error naming both shapes (and the input
and the source), unless ``data.resize=true``: then images are resized (bilinear) and grayscale replicated
to the input's channels, and each adaptation is a line of ``Dataset.notes``. Layout changes that keep
every value (a missing channel axis, channels-last arrays, a flat array of the right size) need no flag;
they are noted too.
* ``text``: English sentences from Python's help texts (``pydoc_data``), tokenized with the model's
  tokenizer where it has one, else a deterministic hash tokenizer.

Only numpy (and scikit-learn / Pillow for their sources) is imported; never torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.data.dataset import Dataset

if TYPE_CHECKING:
    from pipeline.core.config import DataConfig
    from pipeline.core.specs import InputSpec

#: The two uses of data; they never overlap.
SPLITS = ("calib", "eval")


def data_names() -> list[str]:
    """Every name ``data.name`` accepts."""
    from pipeline.data import sources

    return list(sources.SOURCES)


def load_dataset(
    cfg: "DataConfig",
    specs: "list[InputSpec]",
    split: str,
    num_samples: int | None = None,
    *,
    tokenizer: Callable[[list[str], int], dict[str, np.ndarray]] | None = None,
) -> Dataset:
    """Load ``num_samples`` samples of ``split`` from the source ``cfg.name``, adapted to ``specs``.

    Args:
        cfg: the ``data`` config group.
        specs: the model's inputs (``ModelBundle.inputs``).
        split: ``calib`` (calibration) or ``eval`` (checks and accuracy); disjoint.
        num_samples: how many; default ``cfg.calib_samples`` for calib, ``cfg.num_samples`` for eval.
        tokenizer: the model's tokenizer (``ModelBundle.tokenizer``) for the ``text`` source.

    Returns:
        A :class:`Dataset` whose arrays match ``specs`` in name, dtype and per-sample shape.

    Raises:
        PipelineError: unknown source, missing/corrupt file, data that does not fit the model's
            inputs (without ``data.resize=true``) or cannot be adapted to them, fewer samples than asked.
    """
    from pipeline.data import sources

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = num_samples if num_samples is not None else (cfg.calib_samples if split == "calib" else cfg.num_samples)
    if n <= 0:
        key = "data.calib_samples" if split == "calib" else "data.num_samples"
        raise PipelineError(f"asked for {n} {split} samples", f"set {key} to a positive number")
    if not specs:
        raise PipelineError("the model declares no inputs", "check the model (or ONNX file) has graph inputs")
    if cfg.name not in sources.SOURCES:
        raise PipelineError(
            f"unknown data source '{cfg.name}'", f"use one of: {', '.join(sources.SOURCES)} (data=<name>)"
        )
    ds = sources.SOURCES[cfg.name](cfg, list(specs), split, int(n), tokenizer)
    _validate(ds, specs, n)
    return ds


def _validate(ds: Dataset, specs: "list[InputSpec]", n: int) -> None:
    # The contract every source must meet; a violation is a bug in a source, not a user error.
    for spec in specs:
        arr = ds.inputs[spec.name]
        assert arr.shape == (n, *spec.shape), (spec, arr.shape)
        assert arr.dtype == np.dtype(spec.dtype), (spec, arr.dtype)
    assert ds.labels is None or ds.labels.shape == (n,), ds.labels.shape


__all__ = ["SPLITS", "Dataset", "data_names", "load_dataset"]
