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


def _sidecar(cache_path: Path) -> Path:
    """The JSON file beside a calibration cache that holds its fingerprint."""
    return Path(str(cache_path) + ".json")


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
    side = _sidecar(Path(cache_path))
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


def _calibrator_base(trt: ModuleType, kind: str) -> type:
    """TensorRT's calibrator base class for ``kind``, chosen by feature detection.

    Raises:
        PipelineError: unknown ``kind``; this TensorRT has no such class (11+ removed implicit INT8).
    """
    if kind not in CALIBRATOR_CLASSES:
        raise PipelineError(f"Unknown calibrator {kind!r}.", f"Use build.calibrator= one of {sorted(CALIBRATOR_CLASSES)}.")
    name = CALIBRATOR_CLASSES[kind]
    if not hasattr(trt, name):
        raise PipelineError(
            f"This TensorRT ({getattr(trt, '__version__', '?')}) has no {name}: implicit INT8 "
            "calibration was removed (TensorRT 11).",
            "Build INT8 from a Q/DQ ONNX: add quantize to stages, or pass build.qdq_onnx=<model.qdq.onnx>.",
        )
    return getattr(trt, name)


def _device_ready_array(name: str, arr: np.ndarray, input_dtypes: Optional[Mapping[str, Any]]) -> np.ndarray:
    """``arr`` as a C-contiguous host array in the dtype the network input ``name`` takes.

    Known network dtypes win (int64 ids -> int32 with a range check); otherwise floats go as float32,
    the precision TensorRT calibrates in, and other dtypes as given.
    """
    if input_dtypes and name in input_dtypes:
        return engine_input_array(name, arr, input_dtypes[name])
    if np.asarray(arr).dtype.kind == "f":
        return np.ascontiguousarray(arr, dtype=np.float32)
    return np.ascontiguousarray(arr)


class _DeviceStaging:
    """Copies host batches into device buffers for TensorRT: one buffer per input, reused across
    batches and regrown only when a batch needs more bytes.

    The CUDA API and its stream are created on first use, so a calibrator that only reads a cache
    never touches the GPU; an API created here is closed by :meth:`release`, one passed in is not.
    """

    def __init__(self, cuda: Any, input_dtypes: Optional[Mapping[str, Any]]) -> None:
        self.cuda = cuda
        self.own_cuda = cuda is None
        self.stream: Any = None
        self.input_dtypes = input_dtypes
        self.ptrs: Dict[str, Tuple[int, int]] = {}  # input name -> (device pointer, capacity in bytes)

    def _api(self) -> Any:
        if self.cuda is None:
            from pipeline.trt.cuda import cuda_api  # noqa: PLC0415

            self.cuda = cuda_api()
        if self.stream is None:
            self.stream = self.cuda.create_stream()
        return self.cuda

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.ptrs.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr, size = self.cuda.malloc(nbytes), nbytes
            self.ptrs[name] = (ptr, size)
        return ptr

    def stage(self, names: Sequence[str], batch: Mapping[str, np.ndarray]) -> List[int]:
        """Device pointers holding ``batch[n]`` for each of ``names``, in that order, copies finished.

        Raises:
            PipelineError: ``batch`` lacks one of ``names``; an array does not fit its input dtype.
        """
        missing = [n for n in names if n not in batch]
        if missing:
            raise PipelineError(f"Calibration batch lacks inputs {missing} (has {sorted(batch)}).",
                                "Check that the data config matches the model's inputs.")
        ptrs = []
        for n in names:
            cuda = self._api()
            arr = _device_ready_array(n, batch[n], self.input_dtypes)
            ptr = self._buffer(n, arr.nbytes)
            cuda.htod(ptr, arr, self.stream)
            ptrs.append(ptr)
        # TensorRT reads the buffers as soon as get_batch returns: the async copies must be done.
        self.cuda.synchronize(self.stream)
        return ptrs

    def release(self) -> None:
        """Free the device buffers, and close the CUDA API if it was created here."""
        if self.cuda is not None:
            for ptr, _ in self.ptrs.values():
                self.cuda.free(ptr)
            if self.own_cuda:
                self.cuda.close()
        self.ptrs.clear()


class _CacheFile:
    """The calibration cache file plus its fingerprint sidecar (see :func:`cache_is_usable`)."""

    def __init__(self, path: Optional[Path], fingerprint: Mapping[str, Any]) -> None:
        self.path = path
        self.fingerprint = fingerprint

    def read(self) -> Optional[bytes]:
        """The cache bytes, or None when there is no file (TensorRT then calibrates)."""
        if self.path is not None and self.path.is_file():
            return self.path.read_bytes()
        return None

    def write(self, cache: Any) -> bool:
        """Write TensorRT's cache and the sidecar (atomically); False when there is no path."""
        if self.path is None:
            return False
        write_bytes(self.path, bytes(cache))
        write_json(_sidecar(self.path), dict(self.fingerprint))
        return True


def _calibrator_class(base: type) -> type:
    """A subclass of TensorRT's calibrator ``base`` (made per call: ``base`` comes from the tensorrt
    module in hand); the work is done by :func:`rebatched`, :class:`_DeviceStaging`, :class:`_CacheFile`."""

    class PipelineCalibrator(base):  # type: ignore[misc, valid-type]
        """Feeds one batch per ``get_batch`` call from host arrays through device buffers; its
        counters and notes (``batches_used``, ``cache_note``...) go into the engine sidecar."""

        def __init__(self, kind: str, batches: Optional[Iterable[Mapping[str, np.ndarray]]],
                     input_shapes: Mapping[str, Sequence[int]], cache: _CacheFile, staging: _DeviceStaging,
                     read_cache: bool, cache_note: str) -> None:
            base.__init__(self)  # TensorRT's bindings require the base constructor to run
            self.kind = kind
            self.cache_path = cache.path
            self.cache_note = cache_note
            self.read_cache = read_cache
            self.rebatch_note = ""
            self.batches_used = 0
            self.samples_dropped = 0
            self.cache_written = False
            self._cache = cache
            self._staging = staging
            # rebatched() records rebatch_note / samples_dropped on this object as it goes
            self._it = rebatched(batches, input_shapes, self) if batches is not None else iter(())

        def get_batch_size(self) -> int:
            # Explicit-batch networks carry the batch in the input shape; TensorRT ignores this
            # value there but requires >= 1.
            return 1

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            batch = next(self._it, None)
            if batch is None:
                return None  # tells TensorRT the data is exhausted
            ptrs = self._staging.stage(names, batch)
            self.batches_used += 1
            return ptrs

        def read_calibration_cache(self) -> Optional[bytes]:
            return self._cache.read() if self.read_cache else None

        def write_calibration_cache(self, cache: Any) -> None:
            if self._cache.write(cache):
                self.cache_written = True

        def release(self) -> None:
            """Free the device buffers (after the build)."""
            self._staging.release()

    return PipelineCalibrator


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
    base = _calibrator_base(trt, kind)
    usable, why = cache_is_usable(cache_path, fingerprint)
    if batches is None and not usable:
        raise PipelineError("INT8 calibration needs data batches or a calibration cache; there are neither.",
                            "Pass calibration data (data.calib_samples > 0) or a cache from an earlier build.")
    cache = _CacheFile(Path(cache_path) if cache_path else None, fingerprint)
    return _calibrator_class(base)(kind, batches, input_shapes, cache, _DeviceStaging(cuda, input_dtypes),
                                  usable, why)
