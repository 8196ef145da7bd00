"""What a model takes: one :class:`InputSpec` per input (per sample, no batch dimension).

Shared by the zoo, the data sources, the export stage and the graph layer, so none of them imports another for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class InputSpec:
    """One model input, per sample (no batch dimension).

    Attributes:
        name: ONNX input name.
        shape: per-sample shape, e.g. ``(3, 224, 224)`` or ``(128,)``; ``-1`` marks a dimension an
            ONNX file leaves dynamic (other than batch).
        dtype: numpy dtype name, ``float32`` or ``int64`` for zoo models.
        vocab_size: for token-id inputs: ids must lie in ``[0, vocab_size)``; None otherwise or
            when unknown.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    vocab_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the report's ``model.inputs`` entries)."""
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.vocab_size is not None:
            d["vocab_size"] = self.vocab_size
        return d
