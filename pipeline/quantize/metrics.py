"""End-to-end accuracy of a quantized model against its FP32 original, on held-out data.

All metrics compare the *first* model output of the two models over the same evaluation batches:

- ``top1_agreement``: share of samples whose argmax matches FP32 (classifiers).
- ``output_cosine``: mean over samples of the cosine between the flattened outputs.
- ``embedding_cosine``: the same for embedding models (one vector per sample).
- ``nn_agreement``: share of samples whose nearest neighbour (cosine, itself excluded) among the
  evaluation set is the same in INT8 as in FP32: does retrieval still return the same item?
- ``accuracy`` with a 95 % Wilson interval when labels exist.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from pipeline.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

Batches = Iterable[Dict[str, np.ndarray]]


def ort_session(model: "Union[str, Path, bytes, onnx.ModelProto]", threads: int = 0, optimize: bool = True):
    """A CPU ONNX Runtime session for a path, serialized bytes or a ModelProto.

    ``optimize`` keeps ORT's default graph optimisations, which turn Q/DQ pairs into integer kernels
    (QLinearConv, MatMulInteger...): the quantized model then really runs in INT8 on the CPU.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run_first_output(session, batches: Sequence[Dict[str, np.ndarray]]) -> np.ndarray:
    """Run every batch and concatenate the first output along the batch axis."""
    names = {i.name for i in session.get_inputs()}
    out_name = session.get_outputs()[0].name
    outs: List[np.ndarray] = []
    for feed in batches:
        outs.append(session.run([out_name], {k: v for k, v in feed.items() if k in names})[0])
    if not outs:
        raise PipelineError("the evaluation set is empty", "pass at least one evaluation batch")
    return np.concatenate(outs, axis=0)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """95 % (default ``z``) Wilson score interval of a proportion; (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _rows(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def cosine_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between matching rows of the flattened outputs (1.0 where both are all zero)."""
    a, b = _rows(a), _rows(b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = dot / (na * nb)
    return np.where((na == 0) & (nb == 0), 1.0, np.nan_to_num(c))


def nearest_neighbours(x: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row."""
    r = _rows(x)
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    sim = r @ r.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def compare_outputs(reference: np.ndarray, test: np.ndarray, labels: Optional[np.ndarray] = None,
                    task: str = "auto") -> Dict[str, object]:
    """Metrics of ``test`` against the FP32 ``reference`` outputs (same samples, same order).

    Args:
        reference: FP32 outputs, shape (N, ...).
        test: quantized-model outputs, same shape.
        labels: integer class labels (N,), optional.
        task: ``classification``, ``embedding`` or ``auto`` (= classification; embedding models must
            say so, since an output shape alone does not tell logits from embeddings).

    Returns:
        Plain dict: ``samples``, ``output_cosine``, ``top1_agreement``, ``nn_agreement``,
        ``embedding_cosine`` (embedding task), ``accuracy`` + ``accuracy_ci95`` and
        ``reference_accuracy`` (with labels), ``max_abs_diff``, ``primary`` (metric name).
    """
    if reference.shape != test.shape:
        raise ValueError(f"output shapes differ: {reference.shape} vs {test.shape}")
    n = len(reference)
    cos = cosine_per_sample(reference, test)
    ref2, test2 = _rows(reference), _rows(test)
    out: Dict[str, object] = {
        "samples": n,
        "output_cosine": float(cos.mean()),
        "output_cosine_min": float(cos.min()),
        "top1_agreement": float((ref2.argmax(1) == test2.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(ref2 - test2).max()),
    }
    if n >= 3:
        out["nn_agreement"] = float((nearest_neighbours(reference) == nearest_neighbours(test)).mean())
    task = primary_task(task, labels)
    if task == "embedding":
        out["embedding_cosine"] = out["output_cosine"]
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != n:
            raise PipelineError(f"{len(labels)} labels for {n} evaluation samples",
                                "pass one label per evaluation sample")
        correct = int((test2.argmax(1) == labels).sum())
        lo, hi = wilson_interval(correct, n)
        out["accuracy"] = correct / n
        out["accuracy_ci95"] = [lo, hi]
        out["reference_accuracy"] = float((ref2.argmax(1) == labels).mean())
    out["primary"] = {"classification": "accuracy" if labels is not None else "top1_agreement",
                      "embedding": "embedding_cosine"}.get(task, "output_cosine")
    return out


def primary_task(task: str, labels: Optional[np.ndarray]) -> str:
    """Resolve ``auto`` to ``classification`` (top-1 metrics); embedding models pass ``embedding``."""
    if task != "auto":
        return task
    return "classification"
