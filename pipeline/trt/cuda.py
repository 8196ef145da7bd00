"""Device memory, streams, events and CUDA graphs for the calibrator and the TensorRT runtime.

One small interface (:class:`CudaApi`, plain-int pointers and stream handles, so a host-memory fake
stands in for it in CPU tests) over the CUDA bindings a TensorRT machine has:

1. **pycuda** (the design's choice): memory, pinned host buffers, streams, events, and CUDA graphs
   where this pycuda has stream capture (``Stream.begin_capture``);
2. **Polygraphy's CUDA wrapper** (``polygraphy.cuda``, installed with Polygraphy) when pycuda is
   missing: memory, copies and streams only (it has no events), enough for INT8 calibration.

Nothing here imports a CUDA binding at module level.
"""

from __future__ import annotations

import atexit
import ctypes
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from pipeline.core.errors import PipelineError


class CudaApi:
    """Minimal CUDA surface: all pointers and stream handles are plain ints.

    ``has_events`` says whether ``create_event``/``record``/``elapsed_ms``/``wait`` work (the timed loop
    needs them; the calibrator needs only memory, copies and a stream).
    """

    name = "abstract"
    has_events = True

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


class PolygraphyCudaApi(CudaApi):
    """Polygraphy's CUDA wrapper (``polygraphy.cuda``): device memory, copies and streams; no events.

    Host buffers are ordinary (pageable) numpy arrays: the wrapper has no pinned allocator, and the
    calibrator, the only user without pycuda, copies synchronously anyway.
    """

    name = "polygraphy-cuda"
    has_events = False

    def __init__(self) -> None:
        from polygraphy import cuda as pcuda  # noqa: PLC0415

        self._pcuda = pcuda
        self._w = pcuda.wrapper()
        self._streams: List[int] = []

    def malloc(self, nbytes: int) -> int:
        return int(self._w.malloc(max(int(nbytes), 1)))

    def free(self, ptr: int) -> None:
        self._w.free(ptr)

    def create_stream(self) -> int:
        s = int(self._w.create_stream())
        self._streams.append(s)
        return s

    def htod(self, dst: int, src: np.ndarray, stream: int) -> None:
        src = np.ascontiguousarray(src)
        self._w.memcpy(dst, src.ctypes.data, src.nbytes, self._pcuda.MemcpyKind.HostToDevice, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream: int) -> None:
        self._w.memcpy(dst.ctypes.data, src, dst.nbytes, self._pcuda.MemcpyKind.DeviceToHost, stream)

    def synchronize(self, stream: int) -> None:
        self._w.stream_synchronize(stream)

    def pinned(self, shape, dtype) -> np.ndarray:
        return np.empty(tuple(shape), dtype)

    def close(self) -> None:
        for s in self._streams:
            self._w.destroy_stream(s)
        self._streams.clear()


#: Bindings tried in order by :func:`cuda_api`.
_BACKENDS: Dict[str, Callable[[], CudaApi]] = {"pycuda": PycudaApi, "polygraphy": PolygraphyCudaApi}


def cuda_api(prefer: Optional[str] = None, events: bool = False) -> CudaApi:
    """First CUDA binding that works here (pycuda, then Polygraphy's wrapper).

    Args:
        prefer: try this one first (``pycuda`` or ``polygraphy``).
        events: the caller times with CUDA events: only bindings that have them qualify.

    Raises:
        PipelineError: none of them works (no CUDA runtime, no GPU, or no binding with events).
    """
    order = list(_BACKENDS)
    if prefer in _BACKENDS:
        order.remove(prefer)
        order.insert(0, prefer)
    errors = []
    for name in order:
        if events and not getattr(_BACKENDS[name], "has_events", True):
            errors.append(f"{name}: no CUDA events")
            continue
        try:
            return _BACKENDS[name]()
        except Exception as err:  # ImportError, missing libcudart, no device
            errors.append(f"{name}: {type(err).__name__}: {err}")
    raise PipelineError("No CUDA binding could allocate device memory" + (" and time with events" if events else "")
                        + " (" + "; ".join(errors) + ").",
                        "Install pycuda (`pip install pycuda`) on a machine with an NVIDIA driver.")


class CudaGraph:
    """Capture work enqueued on a stream once, then replay it with one launch.

    Replays skip the per-launch CPU cost of TensorRT's enqueue; capture needs one normal enqueue first
    (TensorRT allocates lazily on the first run), and may fail for engines with data-dependent shapes,
    in which case callers fall back to plain enqueues.

    pycuda's stream capture (``Stream.begin_capture`` / ``end_capture`` / ``Graph.get_exec_graph``) is
    used where the installed pycuda has it. Older pycuda builds and Polygraphy's wrapper have no graph
    API, so the driver's five graph calls (``libcuda``, present wherever a driver is) are kept as the
    smallest ctypes fallback; the stream handles are the same objects to the driver either way.

    Args:
        stream: the stream handle (int).
        cuda: the :class:`CudaApi` that created the stream (its pycuda stream object is used when it has one).
    """

    def __init__(self, stream: int, cuda: Optional[CudaApi] = None):
        streams = getattr(cuda, "_streams", None)  # PycudaApi keeps its pycuda Stream objects by handle
        py_stream = streams.get(stream) if isinstance(streams, dict) else None
        self._py_stream = py_stream if hasattr(py_stream, "begin_capture") else None
        self._exec: Any = None
        if self._py_stream is None:
            self._cu = ctypes.CDLL("libcuda.so.1")
            self.stream = ctypes.c_void_p(stream)
            self.graph = ctypes.c_void_p()
            self.exec = ctypes.c_void_p()

    @property
    def route(self) -> str:
        """``pycuda`` or ``libcuda-ctypes``."""
        return "pycuda" if self._py_stream is not None else "libcuda-ctypes"

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with CUDA driver error {status}")

    def capture(self, enqueue: Callable[[], Any]) -> None:
        """Capture what ``enqueue()`` puts on the stream (global capture mode, the strictest)."""
        if self._py_stream is not None:
            self._py_stream.begin_capture()
            try:
                enqueue()
            finally:
                graph = self._py_stream.end_capture()
            self._exec = graph.get_exec_graph()
            return
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
        if self._py_stream is not None:
            self._exec.launch(self._py_stream)
            return
        self._check(self._cu.cuGraphLaunch(self.exec, self.stream), "cuGraphLaunch")

    def close(self) -> None:
        """Destroy the executable graph and the graph."""
        if self._py_stream is not None:
            self._exec = None
            return
        if self.exec.value:
            self._cu.cuGraphExecDestroy(self.exec)
        if self.graph.value:
            self._cu.cuGraphDestroy(self.graph)
        self.exec, self.graph = ctypes.c_void_p(), ctypes.c_void_p()
