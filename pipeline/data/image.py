"""Image adaptation in numpy: bilinear resize and channel replication to fit a model's input."""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import PipelineError

#: ImageNet per-channel mean and standard deviation (RGB, for images scaled to [0, 1]).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Half-pixel centres, clamped at 0 (torch's bilinear with align_corners=False, no antialias).
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (..., H, W) float images to ``size`` = (H', W') with bilinear interpolation.

    Matches ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (no
    antialiasing), so a model sees the same pixels whether the data was resized here or in torch.

    Args:
        x: float array whose last two axes are height and width.
        size: output (height, width) in pixels.

    Returns:
        float32 array (..., H', W').
    """
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x.copy()
    y0, y1, wy = _source_index(size[0], h)
    x0, x1, wx = _source_index(size[1], w)
    top = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return (top[..., x0] * (1 - wx) + top[..., x1] * wx).astype(np.float32)


def adapt_images(x: np.ndarray, shape: tuple[int, ...], source: str) -> np.ndarray:
    """Fit (N, C0, H0, W0) float images to a per-sample ``shape`` (C, H, W) or (H, W).

    Resizes bilinearly and replicates a single channel to C channels (grayscale -> RGB).

    Args:
        x: float images, (N, C0, H0, W0).
        shape: the model's per-sample input shape.
        source: name used in error messages (e.g. ``digits``).

    Raises:
        PipelineError: channel counts that cannot be replicated, or a non-image input shape.
    """
    if len(shape) == 2:  # (H, W) models take single-channel images without a channel axis
        if x.shape[1] != 1:
            raise PipelineError(
                f"{source}: {x.shape[1]}-channel images cannot feed an input shaped (H,W)={tuple(shape)}",
                "use single-channel images, or a model whose input is (C,H,W)",
            )
        return resize_bilinear(x[:, 0], (shape[0], shape[1]))
    if len(shape) != 3 or min(shape) <= 0:
        raise PipelineError(
            f"{source} provides images, but the model input is shaped {tuple(shape)} (not C,H,W)",
            "use data=random or data=npz with arrays of the model's shape",
        )
    c, h, w = shape
    if x.shape[1] not in (1, c):
        raise PipelineError(
            f"{source}: {x.shape[1]}-channel images cannot be adapted to a {c}-channel input",
            f"provide {c}-channel (or single-channel) images, or change model.input_shape",
        )
    out = resize_bilinear(x, (h, w))
    if out.shape[1] != c:
        out = np.repeat(out, c, axis=1)  # grayscale -> C identical channels
    return np.ascontiguousarray(out, dtype=np.float32)
