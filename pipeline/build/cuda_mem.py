"""Device memory, streams, events and CUDA graphs for the calibrator and the TensorRT runner.

One small interface (:class:`CudaApi`) over whichever CUDA binding this machine has:

1. **pycuda** (the design's choice; it ships pinned host buffers and events),
2. **Polygraphy's CUDA wrapper** (``polygraphy.cuda``: ctypes over ``libcudart``, always installed
   with Polygraphy), used when pycuda is missing.

CUDA graphs go through the driver API (``libcuda``, present wherever a driver is) with ctypes, so they
work with either binding: the stream handles are the same objects to the driver. Nothing here is
imported at module level except ctypes and numpy.
"""

from __future__ import annotations

import atexit
import ctypes
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from pipeline.errors import PipelineError


class CudaApi:
    """Minimal CUDA surface: all pointers and stream handles are plain ints."""

    name = "abstract"

    def malloc(self, nbytes: int) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def free(self, ptr: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def create_stream(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def htod(self, dst: int, src: np.ndarray, stream: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def dtoh(self, dst: np.ndarray, src: int, stream: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def synchronize(self, stream: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def create_event(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def record(self, event: Any, stream: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def wait(self, event: Any) -> None:  # pragma: no cover - interface
        """Block the host until ``event`` has completed on the GPU."""
        raise NotImplementedError

    def pinned(self, shape, dtype) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release what the API holds (streams, pinned memory)."""


class PycudaApi(CudaApi):
    """pycuda on the device's *primary* context: the one the CUDA runtime (and TensorRT) uses, so
    buffers allocated here are valid inside TensorRT without context juggling."""

    name = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as cuda  # noqa: PLC0415

        cuda.init()
        self._cuda = cuda
        self._ctx = cuda.Device(device).retain_primary_context()
        self._ctx.push()
        self._pushed = True
        self._allocs: Dict[int, Any] = {}
        self._streams: Dict[int, Any] = {}
        # pycuda aborts the interpreter at exit if a pushed context is still on its stack.
        atexit.register(self.close)

    def malloc(self, nbytes: int) -> int:
        a = self._cuda.mem_alloc(max(int(nbytes), 1))
        self._allocs[int(a)] = a
        return int(a)

    def free(self, ptr: int) -> None:
        a = self._allocs.pop(int(ptr), None)
        if a is not None:
            a.free()

    def create_stream(self) -> int:
        s = self._cuda.Stream()
        self._streams[int(s.handle)] = s
        return int(s.handle)

    def htod(self, dst: int, src: np.ndarray, stream: int) -> None:
        self._cuda.memcpy_htod_async(dst, np.ascontiguousarray(src), self._streams[stream])

    def dtoh(self, dst: np.ndarray, src: int, stream: int) -> None:
        self._cuda.memcpy_dtoh_async(dst, src, self._streams[stream])

    def synchronize(self, stream: int) -> None:
        self._streams[stream].synchronize()

    def create_event(self) -> Any:
        return self._cuda.Event()

    def record(self, event: Any, stream: int) -> None:
        event.record(self._streams[stream])

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(end.time_since(start))

    def wait(self, event: Any) -> None:
        event.synchronize()

    def pinned(self, shape, dtype) -> np.ndarray:
        return self._cuda.pagelocked_empty(tuple(shape), dtype)

    def close(self) -> None:
        if not self._pushed:
            return
        for ptr in list(self._allocs):
            self.free(ptr)
        self._streams.clear()
        self._pushed = False
        try:
            self._ctx.pop()
        except Exception:  # pycuda's own errors at interpreter exit: nothing left to release
            pass


class CudartApi(CudaApi):
    """ctypes over ``libcudart`` as located by Polygraphy's CUDA wrapper (``polygraphy.cuda.wrapper``)."""

    name = "polygraphy-cudart"
    _H2D, _D2H = 1, 2

    def __init__(self):
        from polygraphy import cuda as pcuda  # noqa: PLC0415

        self._w = pcuda.wrapper()
        self._h = self._w.handle
        self._h.cudaEventElapsedTime.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_void_p]
        self._pinned: List[int] = []

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with CUDA error {status}")

    def malloc(self, nbytes: int) -> int:
        return int(self._w.malloc(max(int(nbytes), 1)))

    def free(self, ptr: int) -> None:
        self._w.free(ptr)

    def create_stream(self) -> int:
        return int(self._w.create_stream())

    def htod(self, dst: int, src: np.ndarray, stream: int) -> None:
        src = np.ascontiguousarray(src)
        self._check(self._h.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src.ctypes.data),
                                            ctypes.c_size_t(src.nbytes), self._H2D, ctypes.c_void_p(stream)),
                    "cudaMemcpyAsync(H2D)")

    def dtoh(self, dst: np.ndarray, src: int, stream: int) -> None:
        self._check(self._h.cudaMemcpyAsync(ctypes.c_void_p(dst.ctypes.data), ctypes.c_void_p(src),
                                            ctypes.c_size_t(dst.nbytes), self._D2H, ctypes.c_void_p(stream)),
                    "cudaMemcpyAsync(D2H)")

    def synchronize(self, stream: int) -> None:
        self._w.stream_synchronize(stream)

    def create_event(self) -> Any:
        ev = ctypes.c_void_p()
        self._check(self._h.cudaEventCreate(ctypes.byref(ev)), "cudaEventCreate")
        return ev

    def record(self, event: Any, stream: int) -> None:
        self._check(self._h.cudaEventRecord(event, ctypes.c_void_p(stream)), "cudaEventRecord")

    def wait(self, event: Any) -> None:
        self._check(self._h.cudaEventSynchronize(event), "cudaEventSynchronize")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._check(self._h.cudaEventSynchronize(end), "cudaEventSynchronize")
        ms = ctypes.c_float()
        self._check(self._h.cudaEventElapsedTime(ctypes.byref(ms), start, end), "cudaEventElapsedTime")
        return float(ms.value)

    def pinned(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        ptr = ctypes.c_void_p()
        self._check(self._h.cudaMallocHost(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), "cudaMallocHost")
        self._pinned.append(ptr.value)
        buf = (ctypes.c_byte * nbytes).from_address(ptr.value)
        return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def close(self) -> None:
        for p in self._pinned:
            self._h.cudaFreeHost(ctypes.c_void_p(p))
        self._pinned.clear()


#: Bindings tried in order by :func:`cuda_api`.
_BACKENDS: Dict[str, Callable[[], CudaApi]] = {"pycuda": PycudaApi, "polygraphy": CudartApi}


def cuda_api(prefer: Optional[str] = None) -> CudaApi:
    """First CUDA binding that works here (pycuda, then Polygraphy's cudart wrapper).

    Args:
        prefer: try this one first (``pycuda`` or ``polygraphy``).

    Raises:
        PipelineError: none of them works (no CUDA runtime or no GPU).
    """
    order = list(_BACKENDS)
    if prefer in _BACKENDS:
        order.remove(prefer)
        order.insert(0, prefer)
    errors = []
    for name in order:
        try:
            return _BACKENDS[name]()
        except Exception as err:  # ImportError, missing libcudart, no device
            errors.append(f"{name}: {type(err).__name__}: {err}")
    raise PipelineError("No CUDA binding could allocate device memory (" + "; ".join(errors) + ").",
                        "Install pycuda (`pip install pycuda`) on a machine with an NVIDIA driver.")


class CudaGraph:
    """Capture work enqueued on a stream once, then replay it with one launch (driver API via ctypes).

    Replays skip the per-launch CPU cost of TensorRT's enqueue; capture needs one normal enqueue first
    (TensorRT allocates lazily on the first run), and may fail for engines with data-dependent shapes,
    in which case callers fall back to plain enqueues.
    """

    def __init__(self, stream: int):
        self._cu = ctypes.CDLL("libcuda.so.1")
        self.stream = ctypes.c_void_p(stream)
        self.graph = ctypes.c_void_p()
        self.exec = ctypes.c_void_p()

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with CUDA driver error {status}")

    def capture(self, enqueue: Callable[[], Any]) -> None:
        """Capture what ``enqueue()`` puts on the stream (global capture mode 0 is the strictest)."""
        self._check(self._cu.cuStreamBeginCapture_v2(self.stream, 0), "cuStreamBeginCapture")
        try:
            enqueue()
        finally:
            status = self._cu.cuStreamEndCapture(self.stream, ctypes.byref(self.graph))
        self._check(status, "cuStreamEndCapture")
        self._check(self._cu.cuGraphInstantiateWithFlags(ctypes.byref(self.exec), self.graph,
                                                         ctypes.c_ulonglong(0)), "cuGraphInstantiate")

    def launch(self) -> None:
        """Replay the captured work on the stream."""
        self._check(self._cu.cuGraphLaunch(self.exec, self.stream), "cuGraphLaunch")

    def close(self) -> None:
        """Destroy the executable graph and the graph."""
        if self.exec.value:
            self._cu.cuGraphExecDestroy(self.exec)
        if self.graph.value:
            self._cu.cuGraphDestroy(self.graph)
        self.exec, self.graph = ctypes.c_void_p(), ctypes.c_void_p()
