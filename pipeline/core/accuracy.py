"""One accuracy module: every comparison of a model's outputs against a reference.

Three questions, three entry points over shared primitives (flattened rows, cosine, argmax agreement):

* :func:`allclose_outputs` - the export check (ONNX Runtime vs torch, all outputs): passes when
  ``max|actual - reference| <= atol + rtol * max|reference|``.
* :func:`precision_check` - an engine (or any backend) against the FP32 ONNX on ONNX Runtime, with a
  tolerance per precision (:data:`TOLERANCES`): relative L2 for float precisions, cosine and top-1
  agreement for quantized ones.
* :func:`task_metrics` - INT8 against FP32 in the terms of the task: top-1 agreement, output cosine,
  nearest-neighbour agreement (embeddings), accuracy with a Wilson interval when labels exist.

:func:`compare_runners` runs a runner under test and a reference runner over the same batches with
Polygraphy's ``Comparator.run`` (both runners are Polygraphy ``BaseRunner`` s: ``pipeline.trt``'s engine
runner and Polygraphy's ``OnnxrtRunner``) and applies :func:`precision_check` to the first outputs
concatenated over every batch. Polygraphy's ``Comparator.compare_accuracy`` is not used for the
verdict: it judges each batch on its own with element-wise atol/rtol, while the tolerances here are
statistics over every sample (top-1 agreement and cosine over the whole evaluation set).

Only numpy is imported at module level; Polygraphy and ONNX Runtime inside the functions.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from polygraphy.backend.base import BaseRunner

#: Accuracy limits per precision: relative L2 error of the outputs (||test - ref|| / ||ref||) for
#: float precisions; cosine similarity and top-1 agreement (classifiers) for quantized ones.
TOLERANCES: Dict[str, Dict[str, float]] = {
    "fp32": {"rel_l2": 1e-4},
    "tf32": {"rel_l2": 5e-3},
    "fp16": {"rel_l2": 1e-2},
    "bf16": {"rel_l2": 5e-2},
    "int8": {"cosine": 0.99, "top1_agreement": 0.99},
    "fp8": {"cosine": 0.99, "top1_agreement": 0.99},
    "best": {"cosine": 0.99, "top1_agreement": 0.99},
}

#: Nearest-neighbour agreement an embedding model's quantized engine must keep against FP32 (each sample's nearest
#: neighbour among the checked samples, by cosine): the retrieval-level counterpart of top-1 agreement.
EMBEDDING_MIN_NN_AGREEMENT = 0.95


# ------------------------------------------------------------------------------------------- primitives
def rows(x: np.ndarray) -> np.ndarray:
    """``x`` as float64 rows, one per sample (leading dimension); a scalar is one row of one value."""
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1) if x.ndim else x.reshape(1, 1)


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose argmax is the same in ``a`` and ``b`` (both already as :func:`rows`)."""
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def cosine_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between matching rows of the flattened outputs (1.0 where both are all zero)."""
    a, b = rows(a), rows(b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = dot / (na * nb)
    return np.where((na == 0) & (nb == 0), 1.0, np.nan_to_num(c))


def label_hits(outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per sample, whether the argmax of its flattened output is its integer label (bool array)."""
    return rows(outputs).argmax(1) == np.asarray(labels).reshape(-1)


def label_accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose argmax is their label (top-1 accuracy, 0..1)."""
    return float(label_hits(outputs, labels).mean())


def nearest_neighbours(x: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row."""
    r = rows(x)
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    sim = r @ r.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def nn_agreement_among(reference: np.ndarray, test: np.ndarray, queries: np.ndarray) -> float:
    """Nearest-neighbour agreement of the rows ``queries``, each row's neighbour searched among *all* rows.

    Agreement falls as the candidate set grows (more near-ties for INT8 noise to reorder), so a subset's own
    agreement (:func:`task_metrics` on the subset alone) overstates what a larger deployment set keeps; this
    measures the subset's queries against the whole pool instead.
    """
    queries = np.asarray(queries)
    if len(reference) < 3 or len(queries) == 0:
        raise ValueError(f"nearest-neighbour agreement needs at least 3 rows and 1 query, got {len(reference)} rows "
                         f"and {len(queries)} queries")
    return float((nearest_neighbours(reference)[queries] == nearest_neighbours(test)[queries]).mean())


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """95 % (default ``z``) Wilson score interval of a proportion; (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ------------------------------------------------------------------------------------------- export check
def _allclose_one(ref: np.ndarray, act: np.ndarray, atol: float, rtol: float) -> Dict[str, Any]:
    ref = np.asarray(ref, dtype=np.float64)
    act = np.asarray(act, dtype=np.float64)
    if ref.shape != act.shape:
        return {"max_abs_diff": float("inf"), "rel_l2": float("inf"), "max_abs_ref": 0.0, "passed": False,
                "error": f"shape {list(act.shape)} != reference {list(ref.shape)}"}
    finite = bool(np.isfinite(ref).all() and np.isfinite(act).all())
    diff = float(np.abs(act - ref).max()) if ref.size and finite else (0.0 if finite else float("inf"))
    max_ref = float(np.abs(ref).max()) if ref.size and finite else 0.0
    norm = float(np.linalg.norm(ref)) if finite else 0.0
    rel = float(np.linalg.norm(act - ref) / norm) if norm > 0 else (0.0 if diff == 0 else float("inf"))
    return {"max_abs_diff": diff, "rel_l2": rel, "max_abs_ref": max_ref,
            "passed": finite and diff <= atol + rtol * max_ref}


def allclose_outputs(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray], names: Sequence[str],
                     atol: float, rtol: float) -> Dict[str, Any]:
    """Compare every output element-wise (the export stage's ONNX Runtime vs torch check).

    An output passes when ``max|actual - reference| <= atol + rtol * max|reference|`` and both are
    finite. The tolerance scales with the output's largest magnitude, not per element, because
    outputs of random-weight networks have near-zero entries whose relative error means nothing.

    Returns:
        ``{max_abs_diff, rel_l2, atol, rtol, passed, outputs: {name: {max_abs_diff, rel_l2,
        max_abs_ref, passed, error?}}}``; top-level values are the maxima over outputs.
    """
    per = {name: _allclose_one(ref, act, atol, rtol) for name, ref, act in zip(names, reference, actual)}
    return {
        "max_abs_diff": max((p["max_abs_diff"] for p in per.values()), default=0.0),
        "rel_l2": max((p["rel_l2"] for p in per.values()), default=0.0),
        "atol": atol,
        "rtol": rtol,
        "passed": bool(per) and all(p["passed"] for p in per.values()),
        "outputs": per,
    }


# ------------------------------------------------------------------------------------------- precision check
def int8_verdict(metrics: Mapping[str, Any], task: Optional[str]) -> Dict[str, Any]:
    """INT8-vs-FP32 task metrics (:func:`task_metrics`) with ``passed`` against ``TOLERANCES["int8"]``.

    Top-1 agreement is a check only for classifiers: the arg-max of an embedding or a feature map means
    nothing. Nothing measured is not a pass.
    """
    limits = TOLERANCES["int8"]
    out = dict(metrics)
    checks = []
    tolerance: Dict[str, Any] = {"min_cosine": limits["cosine"]}
    if out.get("output_cosine") is not None:
        checks.append(out["output_cosine"] >= limits["cosine"])
    if task == "classification" and out.get("top1_agreement") is not None:
        checks.append(out["top1_agreement"] >= limits["top1_agreement"])
        tolerance["min_top1_agreement"] = limits["top1_agreement"]
    out["tolerance"] = tolerance
    out["passed"] = bool(checks) and all(checks)
    return out


def precision_check(ref: np.ndarray, test: np.ndarray, precision: str, task: Optional[str] = None) -> Dict[str, Any]:
    """Accuracy of ``test`` against ``ref`` with the precision's tolerance, in the terms of the model's task.

    Args:
        ref: reference output (ONNX Runtime, FP32), leading dimension = batch.
        test: output under test, same shape.
        precision: selects :data:`TOLERANCES` (unknown names get the FP32 limit).
        task: the export summary's task. ``classification`` or unknown (None): top-1 agreement of 2-D outputs is
            checked. ``embedding``: the arg-max of an embedding means nothing, so nearest-neighbour agreement
            (:func:`nearest_neighbours` over the samples, 3 or more) is checked instead, against
            :data:`EMBEDDING_MIN_NN_AGREEMENT` for quantized precisions. ``features``: neither.

    Returns:
        ``{rel_l2, cosine, max_abs, top1_agreement? | nn_agreement?, ref_max_abs, tolerance, passed,
        failed_checks, task}``; ``top1_agreement`` only for 2-D outputs with more than one class.

    Raises:
        PipelineError: the shapes differ.
    """
    if ref.shape != test.shape:
        raise PipelineError(f"Engine output shape {test.shape} differs from ONNX Runtime's {ref.shape}.",
                            "Rebuild the engine from the same ONNX (build.force_rebuild=true).")
    r, t = rows(ref), rows(test)
    out: Dict[str, Any] = {
        "rel_l2": float(np.linalg.norm(r - t) / (np.linalg.norm(r) + 1e-30)),
        "cosine": float(cosine_per_sample(r, t).mean()),
        "max_abs": float(np.max(np.abs(r - t))) if r.size else 0.0,
    }
    tol = dict(TOLERANCES.get(precision, TOLERANCES["fp32"]))
    if task == "embedding":
        tol.pop("top1_agreement", None)
        if len(r) >= 3:
            out["nn_agreement"] = float((nearest_neighbours(r) == nearest_neighbours(t)).mean())
            if "cosine" in tol:
                tol["nn_agreement"] = EMBEDDING_MIN_NN_AGREEMENT
    elif task in (None, "auto", "classification") and ref.ndim == 2 and ref.shape[1] > 1:
        out["top1_agreement"] = top1_agreement(r, t)
    else:
        tol.pop("top1_agreement", None)
    failed = []
    for key, limit in tol.items():
        if key not in out:
            continue
        ok = out[key] <= limit if key == "rel_l2" else out[key] >= limit
        if not ok:
            failed.append(f"{key}={out[key]:.4g} (limit {limit:g})")
    ref_max = float(np.max(np.abs(r))) if r.size else 0.0
    if ref_max < 1e-6:
        # Relative metrics divide by the reference: on near-zero outputs (e.g. a random-weight
        # network whose activations vanish) they measure noise, and FP16 flushes values < 6e-8 to 0.
        failed.append(f"reference outputs are ~0 (max |ref| = {ref_max:.3g}): relative metrics are meaningless; "
                      "check the model's weights/inputs")
    out.update(ref_max_abs=ref_max, tolerance=dict(tol), passed=not failed, failed_checks=failed, task=task)
    return out


# ------------------------------------------------------------------------------------------- task metrics
def primary_task(task: str, labels: Optional[np.ndarray]) -> str:
    """Resolve ``auto`` to ``classification`` (top-1 metrics); embedding models pass ``embedding``."""
    if task != "auto":
        return task
    return "classification"


def task_metrics(reference: np.ndarray, test: np.ndarray, labels: Optional[np.ndarray] = None,
                 task: str = "auto") -> Dict[str, object]:
    """Metrics of ``test`` against the FP32 ``reference`` outputs (same samples, same order).

    The quantize stage passes the *first* output of both models over the same evaluation batches:

    - ``top1_agreement``: share of samples whose argmax matches FP32 (classifiers).
    - ``output_cosine``: mean over samples of the cosine between the flattened outputs
      (``embedding_cosine``: the same, for embedding models).
    - ``nn_agreement``: share of samples whose nearest neighbour (cosine, itself excluded) in the
      evaluation set is the same as in FP32: does retrieval still return the same item?
    - ``accuracy`` with a 95 % Wilson interval when labels exist.

    Args:
        reference: FP32 outputs, shape (N, ...).
        test: quantized-model outputs, same shape.
        labels: integer class labels (N,), optional.
        task: ``classification``, ``embedding`` or ``auto`` (= classification; embedding models must
            say so, since an output shape alone does not tell logits from embeddings).

    Returns:
        Plain dict: ``samples``, ``output_cosine``, ``output_cosine_min``, ``top1_agreement``,
        ``nn_agreement`` (N >= 3), ``embedding_cosine`` (embedding task), ``accuracy`` +
        ``accuracy_ci95`` and ``reference_accuracy`` (with labels), ``max_abs_diff``, ``primary``.

    Raises:
        ValueError: the shapes differ.
        PipelineError: the label count differs from the sample count.
    """
    if reference.shape != test.shape:
        raise ValueError(f"output shapes differ: {reference.shape} vs {test.shape}")
    n = len(reference)
    cos = cosine_per_sample(reference, test)
    ref2, test2 = rows(reference), rows(test)
    out: Dict[str, object] = {
        "samples": n,
        "output_cosine": float(cos.mean()),
        "output_cosine_min": float(cos.min()),
        "top1_agreement": top1_agreement(ref2, test2),
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
        correct = int(label_hits(test2, labels).sum())
        lo, hi = wilson_interval(correct, n)
        out["accuracy"] = correct / n
        out["accuracy_ci95"] = [lo, hi]
        out["reference_accuracy"] = label_accuracy(ref2, labels)
    out["primary"] = {"classification": "accuracy" if labels is not None else "top1_agreement",
                      "embedding": "embedding_cosine"}.get(task, "output_cosine")
    return out


# ------------------------------------------------------------------------------------------- runners
def _stack(arrays: List[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays[0].ndim else np.stack(arrays)


def run_over_batches(runners: Sequence["BaseRunner"], batches: Sequence[Mapping[str, np.ndarray]]
                     ) -> List[Tuple[str, np.ndarray]]:
    """Run every runner on every batch with Polygraphy's ``Comparator.run``; first outputs, concatenated.

    Args:
        runners: Polygraphy runners with distinct names (each is activated and deactivated here).
        batches: feed dicts in the dtypes the *model* declares (runners convert for their backend).

    Returns:
        ``[(output name, outputs of every batch concatenated along the batch axis)]``, one per runner,
        in ``runners`` order. The output is the reference runner's first output name where runners
        disagree on order (the first runner's output list decides).

    Raises:
        PipelineError: two runners share a name; a runner failed (the message names it).
    """
    from polygraphy.comparator import Comparator  # noqa: PLC0415
    from polygraphy.exception import PolygraphyException  # noqa: PLC0415
    from polygraphy.logger import G_LOGGER  # noqa: PLC0415

    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        # Comparator.run keys results by runner name: a repeated name would silently drop a runner.
        raise PipelineError(f"The runners of one comparison need distinct names, got {names}.",
                            "Pass name=... to the runner factories.")
    feeds = [dict(b) for b in batches]
    # Polygraphy logs every iteration's tensors at INFO; the pipeline prints its own summary.
    quiet = G_LOGGER.verbosity(G_LOGGER.WARNING) if hasattr(G_LOGGER, "verbosity") else contextlib.nullcontext()
    try:
        with quiet:
            results = Comparator.run(list(runners), data_loader=feeds)
    except PipelineError:
        raise
    except PolygraphyException as err:
        raise PipelineError(f"A runner failed during the accuracy check: {err}",
                            "check the inputs the model accepts (names, shapes, dtypes)") from err
    except Exception as err:  # ONNX Runtime's pybind errors share no useful base class
        raise PipelineError(f"{type(err).__name__} while running the accuracy check: {err}",
                            "check the input values/shapes the model accepts") from err
    per_runner = dict(results.items())
    first = per_runner[runners[0].name][0]
    name = next(iter(first.keys()))
    out = []
    for runner in runners:
        iters = per_runner[runner.name]
        have = list(iters[0].keys())
        key = name if name in have else have[0]
        out.append((key, _stack([np.asarray(it[key]) for it in iters])))
    return out


def compare_runners(test: "BaseRunner", reference: "BaseRunner", batches: Sequence[Mapping[str, np.ndarray]],
                    precision: str, task: Optional[str] = None) -> Dict[str, Any]:
    """:func:`precision_check` of ``test``'s first output against ``reference``'s, over every sample.

    Args:
        test: the runner under test (e.g. ``pipeline.trt.EngineRunner``).
        reference: the reference runner (e.g. Polygraphy's ``OnnxrtRunner`` on the FP32 ONNX).
        batches: feed dicts; outputs are concatenated before comparing, so top-1 agreement and cosine
            are over every sample.
        precision: selects the tolerance (:data:`TOLERANCES`).
        task: the model's task (:func:`precision_check`).

    Returns:
        :func:`precision_check`'s dict plus ``output``, ``batches``, ``samples``, ``runner``.

    Raises:
        PipelineError: no batches; a runner failed; output shapes differ.
    """
    if not batches:
        raise PipelineError("No input batches for the accuracy check.", "Set data.num_samples >= 1.")
    (ref_name, ref), (name, out) = run_over_batches([reference, test], batches)
    res = precision_check(ref, out.astype(np.float32, copy=False), precision, task)
    res.update(output=ref_name, batches=len(batches), samples=int(out.shape[0]) if out.ndim else 1,
               runner=test.name)
    return res


def compare_with_onnxruntime(test: "BaseRunner", batches: Sequence[Mapping[str, np.ndarray]],
                             onnx_path: str | Path, precision: str, task: Optional[str] = None) -> Dict[str, Any]:
    """:func:`compare_runners` with ONNX Runtime (CPU, the FP32 ONNX) as the reference.

    Returns:
        As :func:`compare_runners`, plus ``reference = "onnxruntime (CPU, FP32 ONNX)"``.
    """
    from pipeline.ort import onnxrt_runner  # noqa: PLC0415 - onnxruntime is heavy

    if not batches:
        raise PipelineError("No input batches for the accuracy check.", "Set data.num_samples >= 1.")
    res = compare_runners(test, onnxrt_runner(onnx_path, batches[0]), batches, precision, task)
    res["reference"] = "onnxruntime (CPU, FP32 ONNX)"
    return res
