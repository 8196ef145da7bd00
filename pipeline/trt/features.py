"""What the installed TensorRT supports, found by feature detection (never version-string compares).

TensorRT 8.6, 10.x and 11.x differ in ways the build stage must respect:

* 8.6: precision flags (TF32/FP16/INT8, no BF16/FP8), implicit INT8 calibrators, ``EXPLICIT_BATCH``
  network flag, no strongly typed networks.
* 10.x: adds BF16/FP8 flags and ``STRONGLY_TYPED`` networks; calibrators still exist (deprecated).
* 11.x: networks are strongly typed only; the FP16/BF16/INT8/FP8 builder flags, the calibrator API
  and ``platform_has_fast_*`` are gone. Reduced precision must be written into the ONNX (typed
  tensors or Q/DQ nodes).

:func:`detect_features` reads these facts from the module object (class attributes and enum
members exist or not), so the same code works on all three and a recording fake module can stand in
for TensorRT in CPU tests. ``tensorrt`` itself is imported lazily, inside functions.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, FrozenSet, Optional, Tuple

from pipeline.core.errors import PipelineError

#: BuilderFlag members that mean "allow this reduced precision" (weakly typed networks).
PRECISION_FLAG_NAMES = ("TF32", "FP16", "BF16", "INT8", "FP8")
#: BuilderFlag members that make the builder honour per-layer precisions (8.6, 10.x; gone in 11), strongest first.
PRECISION_CONSTRAINT_FLAGS = ("OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")
#: TacticSource members the config may name (lower case in BuildConfig.tactic_sources).
TACTIC_SOURCE_NAMES = ("CUBLAS", "CUBLAS_LT", "CUDNN", "EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS")


@dataclass(frozen=True)
class TrtFeatures:
    """Capabilities of one installed TensorRT, detected from its Python module.

    Attributes:
        bindings_version: ``tensorrt.__version__`` (the Python bindings).
        library_version: version that libnvinfer itself reports (may differ from the bindings:
            the GPU sandbox pairs 8.6.1 bindings with 8.6.0 libraries).
        precision_flags: BuilderFlag precision members present (subset of TF32/FP16/BF16/INT8/FP8).
        explicit_batch_flag: ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` exists (8.x-10.x;
            11 networks are always explicit-batch).
        strongly_typed_flag: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists (10+).
        strongly_typed_only: the weakly typed precision flags are gone (11+): reduced precision
            must come from the ONNX's types or Q/DQ nodes.
        implicit_int8: the builder config takes an ``int8_calibrator`` and the calibrator base
            classes exist (8.6, 10.x).
        sparse_weights: ``BuilderFlag.SPARSE_WEIGHTS`` exists.
        optimization_level: ``IBuilderConfig.builder_optimization_level`` exists (8.6+).
        memory_pool_limit: ``IBuilderConfig.set_memory_pool_limit`` exists (else ``max_workspace_size``).
        timing_cache: the builder config can create and set timing caches.
        calibration_profile: ``IBuilderConfig.set_calibration_profile`` exists (dynamic-shape INT8).
        tactic_sources: TacticSource members present.
        engine_inspector: ``ICudaEngine.create_engine_inspector`` exists.
        tensor_api: name-based I/O (``set_tensor_address``/``execute_async_v3``) exists (8.5+).
        fast_fp16_query: ``Builder.platform_has_fast_fp16`` exists (removed in 11).
        preview_features: ``PreviewFeature`` members present (upper case), settable through
            ``IBuilderConfig.set_preview_feature``.
        precision_constraints: BuilderFlag members among OBEY_/PREFER_PRECISION_CONSTRAINTS present
            (8.6 and 10.x have both; 11 neither).
        layer_precision: ``ILayer.precision`` and ``ILayer.set_output_type`` exist (per-layer
            precision of a weakly typed network; 8.6, 10.x).
    """

    bindings_version: str
    library_version: str
    precision_flags: FrozenSet[str] = frozenset()
    explicit_batch_flag: bool = False
    strongly_typed_flag: bool = False
    strongly_typed_only: bool = False
    implicit_int8: bool = False
    sparse_weights: bool = False
    optimization_level: bool = False
    memory_pool_limit: bool = False
    timing_cache: bool = False
    calibration_profile: bool = False
    tactic_sources: FrozenSet[str] = frozenset()
    engine_inspector: bool = False
    tensor_api: bool = False
    fast_fp16_query: bool = False
    preview_features: FrozenSet[str] = frozenset()
    precision_constraints: FrozenSet[str] = frozenset()
    layer_precision: bool = False

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (sets become sorted lists)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, (set, frozenset)):
                d[k] = sorted(v)
        return d


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for or loaded on (engines are specific to both).

    Attributes:
        name: device name as the driver reports it, e.g. ``NVIDIA H100 80GB HBM3``.
        compute_capability: ``major.minor``, e.g. ``9.0``.
        source: how it was found (nvml, pycuda).
    """

    name: str
    compute_capability: str
    source: str = field(default="", compare=False)


def import_tensorrt() -> ModuleType:
    """Import ``tensorrt`` or raise a PipelineError that says how to get it."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - lazy by design
    except ImportError as err:
        raise PipelineError(
            f"TensorRT is not importable here ({err}).",
            "Run on a GPU machine with TensorRT (the NGC container in docker/, or `pip install tensorrt`), "
            "or use backend=onnxruntime.",
        ) from err
    return trt


def _has(obj: Any, name: str) -> bool:
    try:
        getattr(obj, name)
    except AttributeError:
        return False
    return True


def library_version(trt: ModuleType) -> str:
    """Version libnvinfer reports through ``getInferLibVersion`` (falls back to the bindings' version).

    The bindings may be newer than the library (the GPU sandbox: 8.6.1 over 8.6.0); the library is
    what builds and runs engines, so the sidecar records it. The encoding changed in 10.0 from
    ``major*1000 + minor*100 + patch`` to ``major*10000 + minor*100 + patch``.
    """
    path = _loaded_nvinfer_path()
    if path is not None:
        try:
            lib = ctypes.CDLL(path)
            if _has(lib, "getInferLibMajorVersion"):
                parts = [getattr(lib, f"getInferLib{p}Version")() for p in ("Major", "Minor", "Patch")]
                return ".".join(str(int(p)) for p in parts)
            code = int(lib.getInferLibVersion())
            return decode_lib_version(code)
        except (OSError, AttributeError):
            pass
    return str(getattr(trt, "__version__", "unknown"))


def decode_lib_version(code: int) -> str:
    """Decode ``getInferLibVersion()``: 8600 -> ``8.6.0``; 100300 -> ``10.3.0``; 110000 -> ``11.0.0``."""
    if code >= 100000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def _loaded_nvinfer_path() -> Optional[str]:
    """Path of the libnvinfer already mapped into this process (after ``import tensorrt``)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        m = re.search(r"(/\S*/libnvinfer\.so[.\d]*)$", line)
        if m:
            return m.group(1)
    return None


def detect_features(trt: ModuleType) -> TrtFeatures:
    """Read what ``trt`` (the tensorrt module, or a fake of it) supports.

    Args:
        trt: the imported ``tensorrt`` module.

    Returns:
        :class:`TrtFeatures`.
    """
    bflag = getattr(trt, "BuilderFlag", None)
    nflag = getattr(trt, "NetworkDefinitionCreationFlag", None)
    cfg_cls = getattr(trt, "IBuilderConfig", None)
    precision = frozenset(n for n in PRECISION_FLAG_NAMES if bflag is not None and _has(bflag, n))
    # 11 removed the FP16 flag outright; 10 deprecates nothing of it. "strongly typed only" is the
    # absence of every weak-typing reduced precision flag besides TF32 (a math mode, not a type).
    weak = precision - {"TF32"}
    calib_bases = _has(trt, "IInt8EntropyCalibrator2") or _has(trt, "IInt8MinMaxCalibrator")
    ts = getattr(trt, "TacticSource", None)
    engine_cls = getattr(trt, "ICudaEngine", None)
    ctx_cls = getattr(trt, "IExecutionContext", None)
    layer_cls = getattr(trt, "ILayer", None)
    return TrtFeatures(
        bindings_version=str(getattr(trt, "__version__", "unknown")),
        library_version=library_version(trt),
        precision_flags=precision,
        explicit_batch_flag=nflag is not None and _has(nflag, "EXPLICIT_BATCH"),
        strongly_typed_flag=nflag is not None and _has(nflag, "STRONGLY_TYPED"),
        strongly_typed_only=not weak,
        implicit_int8=cfg_cls is not None and _has(cfg_cls, "int8_calibrator") and calib_bases and "INT8" in precision,
        sparse_weights=bflag is not None and _has(bflag, "SPARSE_WEIGHTS"),
        optimization_level=cfg_cls is not None and _has(cfg_cls, "builder_optimization_level"),
        memory_pool_limit=cfg_cls is not None and _has(cfg_cls, "set_memory_pool_limit"),
        timing_cache=cfg_cls is not None and _has(cfg_cls, "create_timing_cache") and _has(cfg_cls, "set_timing_cache"),
        calibration_profile=cfg_cls is not None and _has(cfg_cls, "set_calibration_profile"),
        tactic_sources=frozenset(n for n in TACTIC_SOURCE_NAMES if ts is not None and _has(ts, n)),
        engine_inspector=engine_cls is not None and _has(engine_cls, "create_engine_inspector"),
        tensor_api=ctx_cls is not None and _has(ctx_cls, "execute_async_v3"),
        fast_fp16_query=_has(getattr(trt, "Builder", None), "platform_has_fast_fp16"),
        preview_features=_enum_members(getattr(trt, "PreviewFeature", None))
        if cfg_cls is not None and _has(cfg_cls, "set_preview_feature") else frozenset(),
        precision_constraints=frozenset(n for n in PRECISION_CONSTRAINT_FLAGS if bflag is not None and _has(bflag, n)),
        layer_precision=layer_cls is not None and _has(layer_cls, "precision") and _has(layer_cls, "set_output_type"),
    )


def _enum_members(enum_cls: Any) -> FrozenSet[str]:
    """Upper-case member names of a TensorRT (pybind11) or Python enum class."""
    if enum_cls is None:
        return frozenset()
    members = getattr(enum_cls, "__members__", None)
    if members is not None:
        return frozenset(str(n) for n in members)
    return frozenset(n for n in dir(enum_cls) if n.isupper() and not n.startswith("_"))


def gpu_info(index: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``index``.

    NVML first (:func:`pipeline.core.gpu.device_facts`: no CUDA context needed), then pycuda.

    Raises:
        PipelineError: no way to query a GPU, or no GPU.
    """
    from pipeline.core.gpu import device_facts, nvml  # noqa: PLC0415

    facts = device_facts(index)
    if facts is not None:
        return GpuInfo(facts["name"], facts["compute_capability"], "nvml")
    pynvml, why = nvml()
    errors = [f"nvml: {why or f'no GPU {index}'}"]
    if pynvml is not None:
        pynvml.nvmlShutdown()
    try:
        import pycuda.driver as cuda  # noqa: PLC0415

        cuda.init()
        dev = cuda.Device(index)
        major, minor = dev.compute_capability()
        return GpuInfo(dev.name(), f"{major}.{minor}", "pycuda")
    except Exception as err:  # ImportError, or pycuda's LogicError/RuntimeError without a GPU
        errors.append(f"pycuda: {err}")
    raise PipelineError("No CUDA GPU could be queried (" + "; ".join(errors) + ").",
                        "Run the build stage on a machine with an NVIDIA GPU and driver (and nvidia-ml-py or pycuda).")


def tensorrt_status() -> Tuple[bool, str]:
    """Whether TensorRT and a GPU are usable here, and why not.

    Cheap: imports tensorrt and queries the GPU name, builds nothing.

    Returns:
        ``(True, "TensorRT <lib version> on <GPU> (sm <cc>)")`` or ``(False, reason)``.
    """
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as err:
        return False, f"TensorRT is not installed ({err})"
    except Exception as err:  # a broken install (missing libnvinfer) raises OSError etc.
        return False, f"TensorRT failed to import ({type(err).__name__}: {err})"
    try:
        gpu = gpu_info()
    except PipelineError as err:
        return False, err.message
    return True, f"TensorRT {library_version(trt)} on {gpu.name} (sm {gpu.compute_capability})"
