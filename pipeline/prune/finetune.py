"""Fine-tune a pruned classifier to win back the accuracy pruning cost, and measure top-1.

Pruning a trained model (channels or 2:4) lowers its accuracy; a few epochs of training at a small learning rate
recover most of it (the "prune, then fine-tune" recipe of Han et al. 2015 and of NVIDIA's ASP). With 2:4 masks
the pattern stays fixed: gradients of pruned weights are zeroed and the masks re-applied after every step.

Deterministic for a given seed on one machine: ``torch.manual_seed`` for initialisation-like randomness (dropout)
and a numpy ``Generator`` for the shuffling. torch is imported when a function runs.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

import numpy as np

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    import torch
    from torch import nn


def _check_data(x: np.ndarray, y: np.ndarray) -> None:
    if len(x) == 0 or len(x) != len(y):
        raise PipelineError(
            f"need as many labels as samples (and at least one), got {len(x)} samples and {len(y)} labels",
            "pass x shaped (N, ...) in the model's input layout and integer labels y shaped (N,)",
        )


def _check_settings(epochs: int, lr: float, batch_size: int) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise PipelineError(f"epochs={epochs!r} must be a positive integer", "pass e.g. epochs=3")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise PipelineError(f"lr={lr!r} must be a positive number", "pass e.g. lr=1e-3 (Adam)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PipelineError(f"batch_size={batch_size!r} must be a positive integer", "pass e.g. batch_size=64")


def finetune(
    model: "nn.Module",
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    masks: Optional[Mapping[str, "torch.Tensor"]] = None,
    weight_decay: float = 0.0,
) -> Dict[str, Any]:
    """Train a classifier in place with cross-entropy and Adam; keep 2:4 ``masks`` fixed if given.

    Args:
        model: a torch classifier returning logits (N, classes); trained in place, returned to eval mode.
        x: float32 inputs (N, ...) in the model's input layout, e.g. (N, 1, 8, 8).
        y: integer labels (N,).
        epochs: passes over the data.
        lr: Adam learning rate (default 1e-3: a fine-tune, not a training from scratch).
        batch_size: samples per step; the last batch of an epoch may be smaller.
        seed: seeds torch (dropout) and the numpy shuffling.
        masks: ``{module qualified name: bool mask}`` from :func:`pipeline.prune.sparsity.apply_24`: masked
            weights get no gradient and are zeroed again after every step.
        weight_decay: Adam's L2 penalty.

    Returns:
        ``loss`` (mean training loss per epoch), ``steps`` (optimizer steps), ``seconds`` (wall time),
        ``epochs``, ``lr``, ``batch_size``, ``seed``.

    Raises:
        PipelineError: empty or mismatched data, or non-positive epochs / lr / batch size.
    """
    import torch
    from torch import nn

    from pipeline.prune.sparsity import keep_masks, reapply

    _check_data(x, y)
    _check_settings(epochs, lr, batch_size)
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xt = torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: x may be read-only
    yt = torch.from_numpy(np.array(y, dtype=np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    hooks = keep_masks(model, masks) if masks else []
    losses, steps = [], 0
    model.train()
    try:
        for _ in range(epochs):
            total = 0.0
            perm = rng.permutation(len(xt))
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                idx_t = torch.from_numpy(idx)
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(xt[idx_t]), yt[idx_t])
                loss.backward()
                opt.step()
                if masks:
                    reapply(model, masks)
                total += loss.item() * len(idx)
                steps += 1
            losses.append(total / len(xt))
    finally:
        for h in hooks:
            h.remove()
        model.eval()
    return {"loss": losses, "steps": steps, "seconds": time.perf_counter() - start, "epochs": epochs,
            "lr": lr, "batch_size": batch_size, "seed": seed}


def top1(model: "nn.Module", x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy, a fraction in [0, 1], of ``model`` (put in eval mode) on inputs ``x`` with labels ``y``.

    Args:
        model: a torch classifier returning logits (N, classes).
        x: float32 inputs (N, ...) in the model's input layout.
        y: integer labels (N,).
        batch_size: samples per forward pass.
    """
    import torch

    _check_data(x, y)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.array(x[i:i + batch_size], dtype=np.float32))
            correct += int((model(xb).argmax(1).numpy() == np.asarray(y[i:i + batch_size])).sum())
    return correct / len(x)
