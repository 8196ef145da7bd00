"""A recording stand-in for the ``tensorrt`` module, shaped like 8.6, 10.x or 11.x.

TensorRT cannot run on a CPU, so this is the one place the tests fake a library: it records which
API calls each version path makes (flags set, calibrator attached, network flags) so the CPU tests
can check the build stage chooses the right path by feature detection. The surface follows the
real bindings: 11 drops BuilderFlag.FP16/BF16/INT8/FP8, the calibrator classes and
``int8_calibrator``, and ``EXPLICIT_BATCH``; 8.6 has no BF16/FP8 flags and no STRONGLY_TYPED.

Other test files load this module by path (``load_fake``).
"""

from __future__ import annotations

import enum
import importlib.util
import json
import types
from pathlib import Path
from typing import Any, List, Tuple


def load_fake():
    """This module, imported by path (works whatever pytest's import mode)."""
    spec = importlib.util.spec_from_file_location("trt_fake_module", Path(__file__))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_fake_trt(version: str) -> types.ModuleType:
    """A fake ``tensorrt`` module for ``version`` in {"8.6", "10", "11"}; ``trt.calls`` records calls."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = {"8.6": "8.6.1", "10": "10.3.0", "11": "11.0.0"}[version]
    calls: List[Tuple[str, Any]] = []
    trt.calls = calls

    flags = ["TF32", "FP16", "INT8", "SPARSE_WEIGHTS", "REFIT", "OBEY_PRECISION_CONSTRAINTS",
             "PREFER_PRECISION_CONSTRAINTS"]
    if major >= 10:
        flags += ["BF16", "FP8"]
    if major >= 11:
        flags = [f for f in flags if f not in ("FP16", "BF16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS",
                                               "PREFER_PRECISION_CONSTRAINTS")]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags, start=0)
    net_flags = ["EXPLICIT_BATCH"] if major < 11 else []
    if major >= 10:
        net_flags.append("STRONGLY_TYPED")
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", net_flags, start=0)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE"], start=0)
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"], start=0)
    trt.LayerInformationFormat = enum.IntEnum("LayerInformationFormat", ["ONELINE", "JSON"], start=0)
    trt.TacticSource = enum.IntEnum("TacticSource", ["CUBLAS", "CUBLAS_LT", "CUDNN", "EDGE_MASK_CONVOLUTIONS",
                                                     "JIT_CONVOLUTIONS"], start=0)

    # The preview features each version's bindings list (8.6: FASTER_DYNAMIC_SHAPES_0805 on by default).
    previews = {"8.6": ["FASTER_DYNAMIC_SHAPES_0805", "DISABLE_EXTERNAL_TACTIC_SOURCES_FOR_CORE_0805",
                        "PROFILE_SHARING_0806"],
                "10": ["PROFILE_SHARING_0806", "ALIASED_PLUGIN_IO_10_03"], "11": ["ALIASED_PLUGIN_IO_10_03"]}[version]
    trt.PreviewFeature = enum.IntEnum("PreviewFeature", previews, start=0)
    # Set True to make serialized timing caches carry an entry the fake cannot read back, as
    # TensorRT 8.6.0 does with Myelin entries ("The timing cache will not be used!").
    trt.unreadable_timing_cache = False

    class ILogger:
        def __init__(self):
            calls.append(("ILogger.__init__", None))

    trt.ILogger = ILogger
    trt.ILogger.Severity = enum.Enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])  # str() -> "Severity.ERROR", as pybind11 prints

    trt.DataType = enum.IntEnum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL"], start=0)
    trt.float32, trt.float16, trt.int8, trt.int32, trt.bool = (trt.DataType.FLOAT, trt.DataType.HALF,
                                                               trt.DataType.INT8, trt.DataType.INT32,
                                                               trt.DataType.BOOL)

    trt.TensorFormat = enum.IntEnum("TensorFormat", ["LINEAR", "CHW2", "HWC8", "CHW4"], start=0)

    class Tensor:
        def __init__(self, name, shape, dtype=trt.DataType.FLOAT):
            self.name, self.shape, self.dtype = name, shape, dtype
            self._ready = True

        def __setattr__(self, key, value):
            if getattr(self, "_ready", False) and key in ("dtype", "allowed_formats"):
                calls.append((f"tensor.{key}", (self.name, value.name if hasattr(value, "name") else value)))
            object.__setattr__(self, key, value)

    class ILayer:
        """A network layer; 8.6/10 have per-layer precision (``precision``, ``set_output_type``), 11 not."""

        def __init__(self, name, outputs):
            self.name, self.outputs = name, outputs

        @property
        def num_outputs(self):
            return len(self.outputs)

        def get_output(self, i):
            return self.outputs[i]

    if major < 11:
        def _set_precision(self, dtype):
            calls.append(("layer.precision", (self.name, dtype.name)))
            self._precision = dtype

        def set_output_type(self, index, dtype):
            calls.append(("set_output_type", (self.name, index, dtype.name)))
            self.outputs[index].dtype = dtype

        ILayer.precision = property(lambda self: getattr(self, "_precision", trt.DataType.FLOAT), _set_precision)
        ILayer.set_output_type = set_output_type
    trt.ILayer = ILayer

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs: List[Tensor] = []
            self.layers: List[ILayer] = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            import onnx

            calls.append(("parse_from_file", path))
            m = onnx.load(path, load_external_data=False)
            inits = {i.name for i in m.graph.initializer}
            for vi in m.graph.input:
                if vi.name not in inits:
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
                    self.network.inputs.append(Tensor(vi.name, dims))
            self._add_layers(m.graph.node)
            return True

        def _add_layers(self, nodes):
            """Layers named as the ONNX parser names them: the node's name (``node_of_<output>`` when the
            node has none), made unique with ``_<counter>``; Gemm makes a second (bias) layer under the same
            name, Shape an INT32 output, Constant no layer at all."""
            taken, counter = set(), [0]

            def unique(base):
                name = base
                while name in taken:
                    name, counter[0] = f"{base}_{counter[0]}", counter[0] + 1
                taken.add(name)
                return name

            for n in nodes:
                if n.op_type == "Constant":
                    continue
                base = n.name or f"node_of_{n.output[0]}"
                dtype = trt.DataType.INT32 if n.op_type == "Shape" else trt.DataType.FLOAT
                self.network.layers.append(ILayer(unique(base), [Tensor(n.output[0], [], dtype)]))
                if n.op_type == "Gemm":
                    self.network.layers.append(ILayer(unique(base), [Tensor(n.output[0] + "_bias", [])]))

        def get_error(self, i):  # pragma: no cover - parse never fails here
            return ""

    trt.OnnxParser = OnnxParser

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return b"TCACHE" + (b"+MYELIN" if trt.unreadable_timing_cache else b"") + b"-v1"

    class IBuilderConfig:
        def __init__(self, logger=None):
            self.flags = set()
            self.profiles = []
            self._timing_cache = None
            self._logger = logger
            self._previews = {name: name == "FASTER_DYNAMIC_SHAPES_0805" for name in previews}

        def set_preview_feature(self, feature, enable):
            calls.append(("set_preview_feature", (feature.name, enable)))
            self._previews[feature.name] = bool(enable)

        def get_preview_feature(self, feature):
            return self._previews[feature.name]

        def set_flag(self, f):
            calls.append(("set_flag", f.name))
            self.flags.add(f.name)

        def clear_flag(self, f):
            calls.append(("clear_flag", f.name))
            self.flags.discard(f.name)

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", size))

        def add_optimization_profile(self, p):
            calls.append(("add_optimization_profile", dict(p.shapes)))
            self.profiles.append(p)

        def create_timing_cache(self, blob):
            calls.append(("create_timing_cache", len(blob)))
            if b"MYELIN" in bytes(blob) and self._logger is not None:
                sev = trt.ILogger.Severity
                self._logger.log(sev.ERROR, "1: [myelinCache.h::deserializeFromBuffer::52] Error Code 1: Myelin "
                                            "(Myelin error from unknown graph)")
                self._logger.log(sev.ERROR, "4: The timing cache will not be used!")
                return TimingCache(b"")
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            self._timing_cache = cache
            return True

        def get_timing_cache(self):
            return self._timing_cache

        def set_tactic_sources(self, mask):
            calls.append(("set_tactic_sources", mask))
            return True

        def __setattr__(self, name, value):
            if name in ("builder_optimization_level", "int8_calibrator", "profiling_verbosity"):
                calls.append((name, value))
            object.__setattr__(self, name, value)

    IBuilderConfig.builder_optimization_level = 3
    IBuilderConfig.profiling_verbosity = None
    if major < 11:
        IBuilderConfig.int8_calibrator = None

        def set_calibration_profile(self, p):
            calls.append(("set_calibration_profile", dict(p.shapes)))

        IBuilderConfig.set_calibration_profile = set_calibration_profile
    trt.IBuilderConfig = IBuilderConfig

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            self.shapes[name] = (list(mn), list(opt), list(mx))

    trt.builders = []  # every Builder made, in order

    class Builder:
        def __init__(self, logger):
            self.logger = logger
            trt.builders.append(self)

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return IBuilderConfig(self.logger)

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network", sorted(config.flags)))
            cal = getattr(config, "int8_calibrator", None)
            if cal is not None:  # exercise the calibrator the way TensorRT does
                cached = cal.read_calibration_cache()
                if cached is None:
                    names = [t.name for t in network.inputs]
                    while cal.get_batch(names) is not None:
                        calls.append(("calibration_batch", None))
                    cal.write_calibration_cache(b"TRT-8600-EntropyCalibration2\ninput: 3c010a14\n")
                else:
                    calls.append(("calibration_cache_read", len(cached)))
            return b"PLAN:" + json.dumps(sorted(config.flags)).encode()

    if major < 11:
        Builder.platform_has_fast_fp16 = True
    trt.Builder = Builder

    class Inspector:
        def get_engine_information(self, fmt):
            return json.dumps({"Layers": [{"Name": "/conv/Conv + /relu/Relu", "LayerType": "CaskConvolution"}],
                               "Bindings": ["input", "output"]})

    class ICudaEngine:
        num_io_tensors = 0

        def create_engine_inspector(self):
            return Inspector()

    trt.ICudaEngine = ICudaEngine

    class IExecutionContext:
        def execute_async_v3(self, stream):  # pragma: no cover - never run on the CPU
            raise RuntimeError("fake")

    trt.IExecutionContext = IExecutionContext

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            calls.append(("deserialize_cuda_engine", len(blob)))
            return ICudaEngine()

    trt.Runtime = Runtime

    if major < 11:
        class IInt8EntropyCalibrator2:
            def __init__(self):
                calls.append(("IInt8EntropyCalibrator2.__init__", None))

        class IInt8MinMaxCalibrator:
            def __init__(self):
                calls.append(("IInt8MinMaxCalibrator.__init__", None))

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        trt.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator
    return trt


class FakeCuda:
    """Host-memory stand-in for :class:`pipeline.trt.cuda.CudaApi` (records copies)."""

    name = "fake"

    def __init__(self):
        self.mem, self.next, self.copies = {}, 4096, 0

    def malloc(self, nbytes):
        self.next += nbytes + 256
        self.mem[self.next] = bytearray(nbytes)
        return self.next

    def free(self, ptr):
        self.mem.pop(ptr, None)

    def create_stream(self):
        return 7

    def htod(self, dst, src, stream):
        self.copies += 1
        self.last = src.copy()
        self.mem[dst][: src.nbytes] = src.tobytes()

    def synchronize(self, stream):
        pass


def test_fake_versions_differ_like_the_real_ones():
    v86, v10, v11 = (make_fake_trt(v) for v in ("8.6", "10", "11"))
    assert hasattr(v86.BuilderFlag, "FP16") and not hasattr(v86.BuilderFlag, "BF16")
    assert hasattr(v10.BuilderFlag, "FP8") and hasattr(v10.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    assert not hasattr(v11.BuilderFlag, "INT8") and not hasattr(v11, "IInt8EntropyCalibrator2")
    assert not hasattr(v11.IBuilderConfig, "int8_calibrator")
