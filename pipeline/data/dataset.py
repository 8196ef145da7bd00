"""Model-ready samples (:class:`Dataset`), apart from the source registry so the sources import it alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np


@dataclass
class Dataset:
    """Model-ready samples.

    Attributes:
        name: source name (``data.name``).
        inputs: one array per model input name, leading sample dimension, dtype and per-sample
            shape exactly as the model's :class:`InputSpec` says.
        labels: int64 class labels (N,) where the source has them, else None.
        description: where the samples came from and how they were adapted (for the report).
        notes: one line per adaptation of the data to the model (resized, channels replicated, layout
            changed, mask filled...), for the console and the report; empty when the data fit as stored.
    """

    name: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    description: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(len(next(iter(self.inputs.values())))) if self.inputs else 0

    def batches(self, batch_size: int, drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Yield input dicts of ``batch_size`` samples, in order (feeds for a runtime or calibrator).

        Args:
            batch_size: samples per batch (> 0).
            drop_last: skip a final batch smaller than ``batch_size`` (for fixed-batch engines).
        """
        for start, stop in self._ranges(batch_size, drop_last):
            yield {k: v[start:stop] for k, v in self.inputs.items()}

    def labeled_batches(
        self, batch_size: int, drop_last: bool = False
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Like :meth:`batches`, yielding ``(inputs, labels or None)`` pairs (for accuracy)."""
        for start, stop in self._ranges(batch_size, drop_last):
            labels = None if self.labels is None else self.labels[start:stop]
            yield {k: v[start:stop] for k, v in self.inputs.items()}, labels

    def _ranges(self, batch_size: int, drop_last: bool) -> Iterator[tuple[int, int]]:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        stop_at = n - n % batch_size if drop_last else n
        for start in range(0, stop_at, batch_size):
            yield start, min(start + batch_size, n)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description: name, samples, input shapes/dtypes, labels, description, notes."""
        return {
            "name": self.name,
            "num_samples": len(self),
            "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.inputs.items()},
            "labels": self.labels is not None,
            "description": self.description,
            "notes": list(self.notes),
        }
