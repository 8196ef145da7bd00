"""``digits_cnn``: a small CNN trained on scikit-learn's 8x8 digits, with a cached state dict.

Training is deterministic (seeded initialisation and shuffling, fixed recipe) and takes a few seconds
on a CPU. The trained weights are cached under :func:`cache_dir` in a file named by a hash of the
recipe, so changing the recipe (or the split) retrains instead of loading stale weights.

This module imports torch at module level; it is imported only when the model is built.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.core.artifacts import atomic_path, short_hash
from pipeline.data.digits import DIGITS_SPLIT_SEED, DIGITS_TRAIN, digits_split

#: Everything that determines the trained weights. Bump ``version`` when the architecture changes.
RECIPE: dict[str, Any] = {
    "version": 1,
    "arch": "conv16-conv32-pool-conv64-pool-fc64-fc10",
    "epochs": 20,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "split_seed": DIGITS_SPLIT_SEED,
    "train_samples": DIGITS_TRAIN,
}


#: The ResNet-style model on the same data (residual adds, a projection shortcut and BatchNorm: what channel pruning
#: must keep consistent). Bump ``version`` when the architecture changes.
RESNET_RECIPE: dict[str, Any] = {**RECIPE, "version": 1, "arch": "stem32-basic32-basic64s2-basic128s2-gap-fc10"}


def cache_dir() -> Path:
    """Per-user cache folder: ``$TRT_PIPELINE_CACHE``, else ``$XDG_CACHE_HOME/trt-pipeline``, else
    ``~/.cache/trt-pipeline``."""
    if os.environ.get("TRT_PIPELINE_CACHE"):
        return Path(os.environ["TRT_PIPELINE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "trt-pipeline"


class DigitsCNN(nn.Module):
    """Three 3x3 convolutions and two linear layers for (N, 1, 8, 8) inputs in [0, 1] -> 10 logits."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 2 * 2, 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsResNet(nn.Module):
    """A small ResNet for (N, 1, 8, 8) digits: 3x3 stem, three BasicBlocks (32, 64 and 128 channels, the last two
    with stride 2 and 1x1 projection shortcuts), global average pooling and a linear classifier -> 10 logits."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        from pipeline.models.vision import BasicBlock  # noqa: PLC0415

        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(32, 32)
        self.layer2 = BasicBlock(32, 64, stride=2)  # 8x8 -> 4x4
        self.layer3 = BasicBlock(64, 128, stride=2)  # 4x4 -> 2x2
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


#: Architecture name -> (class, recipe).
ARCHS: dict[str, tuple[type, dict[str, Any]]] = {"cnn": (DigitsCNN, RECIPE), "resnet": (DigitsResNet, RESNET_RECIPE)}


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on images ``x`` (N, 8, 8) with labels ``y``."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.array(x))[:, None])
    return float((logits.argmax(1).numpy() == y).mean())


def train(seed: int, arch: str = "cnn") -> tuple[nn.Module, dict[str, float]]:
    """Train a fresh :class:`DigitsCNN` (``arch="cnn"``, :data:`RECIPE`) or :class:`DigitsResNet` (``"resnet"``,
    :data:`RESNET_RECIPE`) on the train split.

    Args:
        seed: initialisation and shuffling seed.
        arch: ``cnn`` or ``resnet``.

    Returns:
        The model in eval mode and ``{"test_accuracy", "train_accuracy", "train_seconds"}``.
    """
    threads = torch.get_num_threads()
    # One thread: tiny convolutions gain nothing from more, lose a lot when the cores are busy, and
    # the summation order (hence the weights) no longer depends on the machine's core count.
    torch.set_num_threads(1)
    try:
        return _train(seed, arch)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int, arch: str) -> tuple[nn.Module, dict[str, float]]:
    cls, recipe = ARCHS[arch]
    split = digits_split()
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = cls()
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.array(split.train_x))[:, None]
    y = torch.from_numpy(np.array(split.train_y))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe["lr"] * 3, total_steps=recipe["epochs"] * -(-len(x) // recipe["batch_size"])
    )
    model.train()
    for _ in range(recipe["epochs"]):
        for idx in torch.randperm(len(x), generator=gen).split(recipe["batch_size"]):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    metrics = {
        "test_accuracy": evaluate(model, split.test_x, split.test_y),
        "train_accuracy": evaluate(model, split.train_x, split.train_y),
        "train_seconds": round(seconds, 3),
    }
    return model.eval(), metrics


def cache_file(seed: int, arch: str = "cnn") -> Path:
    """Where the weights for ``seed`` and the current recipe of ``arch`` are cached."""
    recipe = ARCHS[arch][1]
    stem = "digits_cnn" if arch == "cnn" else f"digits_{arch}"
    return cache_dir() / f"{stem}-{short_hash({'recipe': recipe, 'seed': seed})}.pt"


def load_or_train(seed: int, arch: str = "cnn") -> tuple[nn.Module, dict[str, Any]]:
    """Load the cached trained model for ``seed``, training (and caching) it first if needed.

    Args:
        seed: initialisation and shuffling seed (``model.seed``).
        arch: ``cnn`` (:class:`DigitsCNN`) or ``resnet`` (:class:`DigitsResNet`).

    Returns:
        The model in eval mode and its metrics, plus ``"cached": True|False`` and ``"cache_file"``.
    """
    path = cache_file(seed, arch)
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model = ARCHS[arch][0]()
            model.load_state_dict(blob["state_dict"])
            return model.eval(), {**blob["metrics"], "cached": True, "cache_file": str(path)}
        except Exception:  # noqa: BLE001 - a corrupt or foreign cache file is retrained, not fatal
            pass
    model, metrics = train(seed, arch)
    with atomic_path(path) as tmp:  # concurrent runs may train at once; the rename keeps the file whole
        torch.save({"state_dict": model.state_dict(), "metrics": metrics}, tmp)
    return model, {**metrics, "cached": False, "cache_file": str(path)}
