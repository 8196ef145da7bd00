"""Implicit INT8 calibration (TensorRT 8.6 / 10.x): calibrators fed by data batches, with a cache file.

TensorRT asks the calibrator for batches of device pointers, runs the FP32 network on them, and
picks per-tensor scales (entropy = KL divergence, ``IInt8EntropyCalibrator2``; or min/max,
``IInt8MinMaxCalibrator``). The resulting cache file lets a rebuild skip calibration. TensorRT 11
removed this API (INT8 there comes only from Q/DQ nodes in the ONNX): :func:`make_calibrator`
refuses with a hint when the base classes are missing.

The calibrator classes derive from TensorRT's, so they are created inside :func:`make_calibrator`
(TensorRT is only imported there).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pipeline.core.artifacts import write_bytes, write_json
from pipeline.core.errors import PipelineError
from pipeline.trt.dtypes import engine_input_array

#: BuildConfig.calibrator -> TensorRT base class name.
CALIBRATOR_CLASSES = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


def cache_is_usable(cache_path: Optional[Path], fingerprint: Mapping[str, Any]) -> Tuple[bool, str]:
    """Whether an existing calibration cache may be read for this model and calibrator.

    A cache written by this module has a ``.json`` sidecar with the fingerprint (ONNX hash and
    calibrator); a mismatch means other data or another model, so calibration runs again. A cache
    without a sidecar (e.g. written by the quantize stage in TensorRT's format) is trusted.

    Returns:
        ``(usable, reason)``.
    """
    if cache_path is None or not Path(cache_path).is_file():
        return False, "no calibration cache"
    side = Path(str(cache_path) + ".json")
    if not side.is_file():
        return True, f"calibration cache {cache_path} (no sidecar: trusted as given)"
    try:
        old = json.loads(side.read_text())
    except (OSError, ValueError):
        return False, f"unreadable sidecar {side}: calibrating again"
    diff = [k for k in fingerprint if old.get(k) != fingerprint[k]]
    if diff:
        return False, f"calibration cache {cache_path} was made for a different {', '.join(diff)}: calibrating again"
    return True, f"calibration cache {cache_path} matches"


def rebatched(source: Iterable[Mapping[str, np.ndarray]], input_shapes: Mapping[str, Sequence[int]],
              stats: Any) -> Iterator[Dict[str, np.ndarray]]:
    """Re-chunk the calibration samples into batches of exactly the calibration shape.

    TensorRT executes the network at the calibration shape and reads that many samples from
    the device buffers, so every batch must match it exactly. Samples are concatenated and cut
    into full batches; a set smaller than one batch is repeated to fill it (the value
    distribution, which is what entropy/min-max calibration looks at, is unchanged); a
    remainder after at least one full batch is dropped; ``stats.rebatch_note`` and
    ``stats.samples_dropped`` record which happened.
    """
    pending: Dict[str, List[np.ndarray]] = {}
    have, emitted = 0, 0
    names = sorted(input_shapes)
    want = {n: int(input_shapes[n][0]) for n in names}
    target = min(want.values()) if want else 0
    for batch in source:
        for n in names:
            if n not in batch:
                raise PipelineError(f"Calibration batch lacks input {n!r} (has {sorted(batch)}).",
                                    "Check that the data config matches the model's inputs.")
            arr = np.asarray(batch[n])
            if tuple(arr.shape[1:]) != tuple(input_shapes[n][1:]):
                raise PipelineError(f"Calibration input {n!r} has sample shape {arr.shape[1:]}, "
                                    f"the engine expects {tuple(input_shapes[n][1:])}.",
                                    "Check model.input_shape and the data config.")
            pending.setdefault(n, []).append(arr)
        have += int(np.shape(batch[names[0]])[0])
        while have >= target > 0:
            out = {}
            for n in names:
                cat = np.concatenate(pending[n])
                out[n], rest = cat[:target], cat[target:]
                pending[n] = [rest] if len(rest) else []
            have -= target
            emitted += 1
            yield out
    if emitted == 0 and have > 0:
        reps = -(-target // have)
        stats.rebatch_note = f"{have} calibration samples repeated {reps}x to fill one batch of {target}"
        yield {n: np.concatenate(pending[n] * reps)[:target] for n in names}
    elif have > 0:
        stats.samples_dropped = have


def make_calibrator(
    trt: ModuleType,
    kind: str,
    batches: Optional[Iterable[Mapping[str, np.ndarray]]],
    input_shapes: Mapping[str, Sequence[int]],
    cache_path: Optional[Path],
    fingerprint: Mapping[str, Any],
    cuda: Any = None,
    input_dtypes: Optional[Mapping[str, Any]] = None,
) -> Any:
    """A TensorRT INT8 calibrator that feeds ``batches`` and reads/writes ``cache_path``.

    Args:
        trt: the tensorrt module.
        kind: ``entropy`` (IInt8EntropyCalibrator2, TensorRT's recommendation for CNNs) or ``minmax``.
        batches: ``{input name: array}`` dicts of any batch size; re-chunked into batches of exactly
            ``input_shapes`` (see :func:`rebatched`).
        input_shapes: the shape TensorRT calibrates at for each input (batch included).
        cache_path: calibration cache file (read if usable, written after calibration).
        fingerprint: what the cache depends on (ONNX hash, calibrator...), stored beside it.
        cuda: a :class:`pipeline.trt.cuda.CudaApi`; created on first use when None.
        input_dtypes: the network's input dtypes (numpy); each batch is copied in them
            (:func:`pipeline.trt.dtypes.engine_input_array`: int64 ids -> int32 with a range check).
            None: float inputs as float32, others as given.

    Returns:
        The calibrator object (keep a reference until the build finishes).

    Raises:
        PipelineError: unknown ``kind``; this TensorRT has no calibrators (11+); no batches and no cache.
    """
    if kind not in CALIBRATOR_CLASSES:
        raise PipelineError(f"Unknown calibrator {kind!r}.", f"Use build.calibrator= one of {sorted(CALIBRATOR_CLASSES)}.")
    try:
        base = getattr(trt, CALIBRATOR_CLASSES[kind])
    except AttributeError as err:
        raise PipelineError(
            f"This TensorRT ({getattr(trt, '__version__', '?')}) has no {CALIBRATOR_CLASSES[kind]}: implicit INT8 "
            "calibration was removed (TensorRT 11).",
            "Build INT8 from a Q/DQ ONNX: add quantize to stages, or pass build.qdq_onnx=<model.qdq.onnx>.",
        ) from err
    usable, why = cache_is_usable(cache_path, fingerprint)
    if batches is None and not usable:
        raise PipelineError("INT8 calibration needs data batches or a calibration cache; there are neither.",
                            "Pass calibration data (data.calib_samples > 0) or a cache from an earlier build.")

    class PipelineCalibrator(base):  # type: ignore[misc, valid-type]
        """Feeds one batch per ``get_batch`` call from host arrays through device buffers."""

        def __init__(self) -> None:
            base.__init__(self)
            self.kind = kind
            self.cache_path = Path(cache_path) if cache_path else None
            self.cache_note = why
            self.read_cache = usable
            self.rebatch_note = ""
            self._it = rebatched(batches, input_shapes, self) if batches is not None else iter(())
            self._cuda = cuda
            self._own_cuda = cuda is None
            self._stream = None
            self._ptrs: Dict[str, Tuple[int, int]] = {}
            self.batches_used = 0
            self.samples_dropped = 0
            self.cache_written = False

        def get_batch_size(self) -> int:
            # Explicit-batch networks carry the batch in the input shape; TensorRT ignores this
            # value there but requires >= 1.
            return 1

        def _device(self, name: str, arr: np.ndarray) -> int:
            if self._cuda is None:
                from pipeline.trt.cuda import cuda_api  # noqa: PLC0415

                self._cuda = cuda_api()
            if self._stream is None:
                self._stream = self._cuda.create_stream()
            if input_dtypes and name in input_dtypes:
                arr = engine_input_array(name, arr, input_dtypes[name])
            elif np.asarray(arr).dtype.kind == "f":
                arr = np.ascontiguousarray(arr, dtype=np.float32)
            else:
                arr = np.ascontiguousarray(arr)
            ptr, size = self._ptrs.get(name, (0, 0))
            if size < arr.nbytes:
                if ptr:
                    self._cuda.free(ptr)
                ptr, size = self._cuda.malloc(arr.nbytes), arr.nbytes
                self._ptrs[name] = (ptr, size)
            self._cuda.htod(ptr, arr, self._stream)
            return ptr

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            batch = next(self._it, None)
            if batch is None:
                return None  # tells TensorRT the data is exhausted
            missing = [n for n in names if n not in batch]
            if missing:
                raise PipelineError(f"Calibration batch lacks inputs {missing} (has {sorted(batch)}).",
                                    "Check that the data config matches the model's inputs.")
            ptrs = [self._device(n, batch[n]) for n in names]
            self._cuda.synchronize(self._stream)
            self.batches_used += 1
            return ptrs

        def read_calibration_cache(self) -> Optional[bytes]:
            if self.read_cache and self.cache_path is not None and self.cache_path.is_file():
                return self.cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if self.cache_path is None:
                return
            write_bytes(self.cache_path, bytes(cache))
            write_json(Path(str(self.cache_path) + ".json"), dict(fingerprint))
            self.cache_written = True

        def release(self) -> None:
            """Free the device buffers (after the build)."""
            if self._cuda is not None:
                for ptr, _ in self._ptrs.values():
                    self._cuda.free(ptr)
                if self._own_cuda:
                    self._cuda.close()
            self._ptrs.clear()

    return PipelineCalibrator()
