"""Run a TensorRT engine: deserialize it, bind inputs in the engine's dtypes, device buffers, one stream.

:class:`EngineSession` is what the timed loop drives (device-resident buffers, ``set_tensor_address``
once, ``execute_async_v3``); :func:`engine_runner` wraps it as a Polygraphy ``BaseRunner`` so the
accuracy check runs the engine and ONNX Runtime (Polygraphy's ``OnnxrtRunner``) through one
interface. Every input is converted to the dtype the *engine* declares by
:func:`pipeline.trt.dtypes.engine_input_array` (int64 ids -> int32 with a range check, bool,
float32 -> float16), and output buffers use the engine's output dtypes.

``tensorrt`` is passed in (or imported through :func:`pipeline.trt.features.import_tensorrt`);
Polygraphy is imported inside :func:`engine_runner`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.trt.dtypes import engine_inputs


def load_engine(trt: ModuleType, plan_path: str | Path, logger: Any = None) -> Any:
    """Deserialize ``plan_path``.

    Raises:
        PipelineError: TensorRT refused the file (another version or GPU built it).
    """
    plan_path = Path(plan_path)
    runtime = trt.Runtime(logger or trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise PipelineError(f"TensorRT could not deserialize {plan_path} (built by another version or GPU?).",
                            "Rebuild it: build.force_rebuild=true.")
    return engine


def engine_io(trt: ModuleType, engine: Any) -> Tuple[List[str], Dict[str, np.dtype], Dict[str, np.dtype]]:
    """``(names, input dtypes, output dtypes)`` of an engine's I/O tensors, dtypes as numpy dtypes."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    ins: Dict[str, np.dtype] = {}
    outs: Dict[str, np.dtype] = {}
    for n in names:
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
        (ins if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT else outs)[n] = dtype
    return names, ins, outs


class EngineSession:
    """An engine, one execution context, device buffers for every I/O tensor, one stream.

    Args:
        trt: the tensorrt module.
        engine: a deserialized ``ICudaEngine``.
        inputs: host arrays in the model's dtypes; converted to the engine's, shapes set on the context.
        cuda: :class:`pipeline.trt.cuda.CudaApi`.

    Raises:
        PipelineError: a missing input, a value that does not fit the engine's dtype, an output with a
            data-dependent shape.
    """

    def __init__(self, trt: ModuleType, engine: Any, inputs: Mapping[str, np.ndarray], cuda: Any):
        self.trt, self.engine, self.cuda = trt, engine, cuda
        self.context = engine.create_execution_context()
        self.stream = cuda.create_stream()
        self.names, self.input_dtypes, self.output_dtypes = engine_io(trt, engine)
        self.inputs: Dict[str, np.ndarray] = {}
        self.outputs: Dict[str, np.ndarray] = {}
        self.ptrs: Dict[str, int] = {}
        self._allocate(engine_inputs(inputs, self.input_dtypes))
        self.copy_inputs()
        cuda.synchronize(self.stream)

    def _allocate(self, converted: Mapping[str, np.ndarray]) -> None:
        """Pinned host and device buffers for ``converted`` inputs' shapes; addresses set once."""
        for n, arr in converted.items():
            host = self.cuda.pinned(arr.shape, arr.dtype)
            host[...] = arr
            self.inputs[n] = host
            self.context.set_input_shape(n, tuple(arr.shape))
        for n, dtype in self.output_dtypes.items():
            shape = tuple(self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise PipelineError(f"Output {n!r} has a data-dependent shape {shape}.",
                                    "This runner times engines with static output shapes only.")
            self.outputs[n] = self.cuda.pinned(shape, dtype)
        for n in self.names:
            host = self.inputs[n] if n in self.inputs else self.outputs[n]
            self.ptrs[n] = self.cuda.malloc(host.nbytes)
            self.context.set_tensor_address(n, self.ptrs[n])

    def bind(self, feed: Mapping[str, np.ndarray]) -> None:
        """New input values (converted to the engine's dtypes); buffers are reallocated only when shapes change."""
        converted = engine_inputs(feed, self.input_dtypes)
        if any(converted[n].shape != self.inputs[n].shape for n in converted):
            self.close()
            self.inputs, self.outputs = {}, {}
            self._allocate(converted)
        else:
            for n, arr in converted.items():
                self.inputs[n][...] = arr
        self.copy_inputs()

    def copy_inputs(self) -> None:
        """Pinned host inputs -> device (async on the session's stream)."""
        for n, host in self.inputs.items():
            self.cuda.htod(self.ptrs[n], host, self.stream)

    def copy_outputs(self) -> None:
        """Device outputs -> pinned host (async on the session's stream)."""
        for n, host in self.outputs.items():
            self.cuda.dtoh(host, self.ptrs[n], self.stream)

    def execute(self) -> None:
        """Enqueue one inference."""
        if not self.context.execute_async_v3(self.stream):
            raise PipelineError("TensorRT execute_async_v3 failed.", "Check the TensorRT log above.")

    def infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Bind ``feed``, run once, and return copies of every output (in the engine's dtypes)."""
        self.bind(feed)
        self.execute()
        self.copy_outputs()
        self.cuda.synchronize(self.stream)
        return OrderedDict((n, np.array(h, copy=True)) for n, h in self.outputs.items())

    def close(self) -> None:
        """Free device buffers."""
        for p in self.ptrs.values():
            self.cuda.free(p)
        self.ptrs.clear()


def engine_runner(trt: ModuleType, engine: Any, cuda: Any, feed_dtypes: Optional[Mapping[str, Any]] = None,
                  name: str = "tensorrt") -> Any:
    """A Polygraphy ``BaseRunner`` over :class:`EngineSession` (the engine's side of the accuracy check).

    Polygraphy's own ``TrtRunner`` is not used: it requires feeds already in the engine's dtypes
    ("Received unexpected dtype: int64. Expected int32" for a BERT engine on TensorRT 8.6), and
    casts, when asked to, without a range check. This runner declares the *model's* dtypes
    (``feed_dtypes``), so the same feed dicts go to ONNX Runtime and to the engine, and converts
    them itself with the checks of :mod:`pipeline.trt.dtypes`.

    Args:
        trt: the tensorrt module.
        engine: a deserialized engine.
        cuda: :class:`pipeline.trt.cuda.CudaApi`.
        feed_dtypes: input name -> dtype the feeds come in (default: the engine's own dtypes).
        name: the runner's name in the comparison.
    """
    from polygraphy.backend.base import BaseRunner  # noqa: PLC0415
    from polygraphy.common import TensorMetadata  # noqa: PLC0415

    class EngineRunner(BaseRunner):
        def __init__(self) -> None:
            super().__init__(name=name, prefix="pipeline-trt-runner")
            self.session: Optional[EngineSession] = None

        def activate_impl(self) -> None:
            self.session = None

        def get_input_metadata_impl(self) -> Any:
            meta = TensorMetadata()
            _, ins, _ = engine_io(trt, engine)
            for n, dtype in ins.items():
                shape = [None if int(d) < 0 else int(d) for d in engine.get_tensor_shape(n)]
                meta.add(n, dtype=np.dtype((feed_dtypes or {}).get(n, dtype)), shape=shape)
            return meta

        def infer_impl(self, feed_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
            start = time.perf_counter()
            if self.session is None:
                self.session = EngineSession(trt, engine, feed_dict, cuda)
            outs = self.session.infer(feed_dict)
            self.inference_time = time.perf_counter() - start
            return outs

        def deactivate_impl(self) -> None:
            if self.session is not None:
                self.session.close()
            self.session = None

    return EngineRunner()
