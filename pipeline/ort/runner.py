"""Run an ONNX model with ONNX Runtime: once, over batches, or as a Polygraphy runner.

:func:`onnxrt_runner` gives ONNX Runtime the runner interface the TensorRT engine runner has
(Polygraphy's ``BaseRunner``: ``with runner:``, ``runner.infer(feed)``), so the accuracy check
(:func:`pipeline.core.accuracy.compare_runners`) treats both backends alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.ort.session import ort_session, validate_inputs


def run_onnxruntime(
    onnx_path: str | os.PathLike,
    inputs: Dict[str, "np.ndarray"],
    threads: int = 0,
    providers: Optional[Sequence[str]] = None,
) -> List["np.ndarray"]:
    """Run the model once and return all outputs (in the model's output order).

    Args:
        onnx_path: ONNX model file.
        inputs: feed dict ``{input name: array}``, validated against the model.
        threads: intra-op threads (0 = ORT default).
        providers: execution providers (default CPU).

    Raises:
        PipelineError: see :func:`ort_session` and :func:`validate_inputs`; or the run itself fails.
    """
    sess = ort_session(onnx_path, threads=threads, providers=providers)
    validate_inputs(sess, inputs)
    try:
        return list(sess.run(None, inputs))
    except Exception as err:  # ORT runtime errors (e.g. a shape mismatch inside the graph)
        raise PipelineError(
            f"ONNX Runtime failed running {onnx_path}: {err}", "check the input values/shapes the model accepts"
        ) from err


def run_first_output(session: Any, batches: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Run every batch and concatenate the first output along the batch axis.

    Feed entries the session has no input for are left out (evaluation sets may carry labels).

    Raises:
        PipelineError: no batches.
    """
    names = {i.name for i in session.get_inputs()}
    out_name = session.get_outputs()[0].name
    outs: List[np.ndarray] = []
    for feed in batches:
        outs.append(session.run([out_name], {k: v for k, v in feed.items() if k in names})[0])
    if not outs:
        raise PipelineError("the evaluation set is empty", "pass at least one evaluation batch")
    return np.concatenate(outs, axis=0)


def onnxrt_runner(onnx_path: str | os.PathLike, example: Optional[Mapping[str, np.ndarray]] = None,
                  threads: int = 0, name: str = "onnxruntime") -> Any:
    """Polygraphy's ``OnnxrtRunner`` over :func:`ort_session` (CPU, full graph optimisations).

    Args:
        onnx_path: the ONNX file.
        example: a feed dict checked against the model first (names, ranks, fixed dims, dtypes), so
            a mismatch fails with the pipeline's message rather than deep inside a run.
        threads: intra-op threads (0 = ORT default).
        name: the runner's name (runner names must differ within one comparison).
    """
    from polygraphy.backend.onnxrt import OnnxrtRunner  # noqa: PLC0415

    sess = ort_session(Path(onnx_path), threads=threads)
    if example is not None:
        validate_inputs(sess, dict(example))
    return OnnxrtRunner(sess, name=name)
