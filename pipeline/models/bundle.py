"""A model ready to export (:class:`ModelBundle`) and the input names the zoo uses.

Kept apart from the registry in ``__init__.py`` so the builders (``zoo.py``, ``custom.py``) import it without
importing the package that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from pipeline.core.specs import InputSpec

if TYPE_CHECKING:  # only for type checkers: never import torch at module import time
    import torch


#: Inputs that carry token ids (int64) in token models, and the attention mask that goes with them.
TOKEN_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
#: Name of the single input of image and custom models.
IMAGE_INPUT = "input"


@dataclass
class ModelBundle:
    """A model ready to export, with what the rest of the pipeline needs to know about it.

    Attributes:
        name: zoo name (``model.name``).
        module: torch module in eval mode, or None for ``onnx`` (then ``onnx_path`` is set).
        inputs: input descriptions, in the module's positional-argument order.
        output_names: ONNX output names, in the module's output order.
        task: ``classification`` (logits), ``embedding`` (one vector per sample) or ``features``.
        num_classes: number of classes for classifiers, else None.
        notes: human-readable facts for the report (architecture, weights, accuracy).
        metrics: numbers known before deployment, e.g. ``{"test_accuracy": 0.97}`` for digits_cnn.
        onnx_path: for ``onnx``: the source file.
        tokenizer: for token models with a real tokenizer (minilm): callable
            ``(texts: list[str], seq_len: int) -> dict[str, np.ndarray]``; the ``text`` data source
            uses it. None means the data source's hash tokenizer.
    """

    name: str
    module: "torch.nn.Module | None"
    inputs: list[InputSpec]
    output_names: list[str]
    task: str = "features"
    num_classes: int | None = None
    notes: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    onnx_path: str | None = None
    tokenizer: Callable[..., dict[str, Any]] | None = None

    def parameters(self) -> int:
        """Number of parameters of the torch module (0 without one)."""
        if self.module is None:
            return 0
        return int(sum(p.numel() for p in self.module.parameters()))
