"""What a TensorRT build asks for: flags and network mode per precision, decided from detected features.

Pure data and decisions (no TensorRT call), so every version path is tested on the CPU.

Precision paths (decided by :func:`plan_build` from detected features, not version strings):

=========  =====================================  ===============================================
precision  TensorRT 8.6 / 10.x (weakly typed)      TensorRT 11 (strongly typed only)
=========  =====================================  ===============================================
fp32       TF32 flag cleared                       as parsed (FP32 ONNX), TF32 cleared if present
tf32       TF32 flag                               TF32 flag if present
fp16       FP16 flag                               ONNX converted to FP16 (unsafe ops kept FP32)
bf16       BF16 flag (10+); error on 8.6           ONNX converted to BF16 (unsafe ops kept FP32)
int8       Q/DQ ONNX + INT8, or calibrator + INT8  Q/DQ ONNX only; error for calibration
fp8        FP8 Q/DQ + FP8 flag (10+, sm >= 8.9)    FP8 Q/DQ ONNX only; error on 8.6
best       every precision flag present            Q/DQ ONNX as typed, else FP16 conversion
=========  =====================================  ===============================================

A mixed-precision plan (the sensitivity stage's float layers) adds, on the implicit INT8 path only,
``OBEY_PRECISION_CONSTRAINTS`` and per-layer FP16/FP32 constraints (:mod:`pipeline.trt.layer_precision`);
on 11 it must come as a Q/DQ ONNX (``quant.plan``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from pipeline.core.config import BuildConfig
from pipeline.core.errors import PipelineError
from pipeline.trt.features import GpuInfo, TrtFeatures

#: FP8 tensor cores exist from compute capability 8.9 (Ada) and 9.0 (Hopper).
FP8_MIN_CC = (8, 9)


@dataclass
class BuildPlan:
    """What the build will ask TensorRT for (pure data: tested without TensorRT).

    Attributes:
        precision: requested precision name.
        set_flags: BuilderFlag names to set.
        clear_flags: BuilderFlag names to clear (TF32 for strict fp32).
        network_flags: NetworkDefinitionCreationFlag names.
        strongly_typed: the network takes its types from the ONNX.
        calibrator: ``entropy``/``minmax`` for implicit INT8, else None.
        typed_conversion: ``fp16``/``bf16`` when the ONNX must be converted first (TensorRT 11).
        explicit_quantization: the ONNX carries Q/DQ nodes.
        input_format: ``fp16`` when the network's float inputs become FP16 (``build.input_format``), else None.
        notes: decisions a reader of the report should know.
    """

    precision: str
    set_flags: List[str] = field(default_factory=list)
    clear_flags: List[str] = field(default_factory=list)
    network_flags: List[str] = field(default_factory=list)
    strongly_typed: bool = False
    calibrator: Optional[str] = None
    typed_conversion: Optional[str] = None
    explicit_quantization: bool = False
    input_format: Optional[str] = None
    notes: List[str] = field(default_factory=list)


def _cc_tuple(cc: Optional[str]) -> Tuple[int, int]:
    try:
        major, minor = str(cc).split(".")[:2]
        return int(major), int(minor)
    except (ValueError, AttributeError):
        return (0, 0)


def plan_build(
    features: TrtFeatures,
    precision: str,
    build: BuildConfig,
    has_qdq: bool,
    has_calibration: bool,
    qdq_types: Sequence[str] = ("int8",),
    gpu: Optional[GpuInfo] = None,
) -> BuildPlan:
    """Decide flags and network mode for ``precision`` on this TensorRT, or explain why it cannot.

    Args:
        features: detected TensorRT capabilities.
        precision: fp32, tf32, fp16, bf16, int8, fp8 or best.
        build: build settings (sparse_weights, calibrator).
        has_qdq: the ONNX to build contains QuantizeLinear/DequantizeLinear nodes.
        has_calibration: calibration batches or a usable calibration cache are available.
        qdq_types: quantized types in the Q/DQ nodes (``int8``, ``fp8``).
        gpu: the target GPU (FP8 needs compute capability >= 8.9).

    Returns:
        :class:`BuildPlan`.

    Raises:
        PipelineError: the path is impossible on this TensorRT or GPU; the hint names the path
            this version allows.
    """
    if precision not in _PATHS:
        raise PipelineError(f"Unknown precision {precision!r}.", "Use precision=fp32|tf32|fp16|bf16|int8|fp8|best.")
    d = _Decision(features, BuildPlan(precision=precision, explicit_quantization=has_qdq), build, has_qdq,
                  has_calibration, tuple(qdq_types), gpu)
    if features.explicit_batch_flag:
        d.p.network_flags.append("EXPLICIT_BATCH")
    _PATHS[precision](d)
    _sparsity(d)
    _input_format(d)
    return d.p


@dataclass
class _Decision:
    """The inputs of :func:`plan_build` and the plan being filled in, shared by the per-precision paths."""

    f: TrtFeatures
    p: BuildPlan
    build: BuildConfig
    has_qdq: bool
    has_calibration: bool
    qdq_types: Tuple[str, ...]
    gpu: Optional[GpuInfo]

    @property
    def ver(self) -> str:
        return self.f.library_version

    def has(self, flag: str) -> bool:
        return flag in self.f.precision_flags

    def strongly_typed(self, note: str) -> None:
        self.p.strongly_typed = True
        if self.f.strongly_typed_flag:
            self.p.network_flags.append("STRONGLY_TYPED")
        self.p.notes.append(note)


def _fp32(d: _Decision) -> None:
    if d.has("TF32"):
        d.p.clear_flags.append("TF32")  # TF32 is on by default in TensorRT: strict FP32 turns it off
    if d.f.strongly_typed_only:
        d.strongly_typed("strongly typed network: FP32 ONNX builds in FP32")


def _tf32(d: _Decision) -> None:
    if d.has("TF32"):
        d.p.set_flags.append("TF32")
    else:
        d.p.notes.append(f"TensorRT {d.ver} has no TF32 flag: FP32 math mode is the library's default")
    if d.f.strongly_typed_only:
        d.strongly_typed("strongly typed network: FP32 ONNX, TF32 math for matmul/conv")


def _half(d: _Decision) -> None:
    precision = d.p.precision
    flag = precision.upper()
    if d.has(flag):
        d.p.set_flags.append(flag)
        if precision == "fp16" and d.has("TF32"):
            d.p.notes.append("FP16 flag: TensorRT may still pick FP32/TF32 kernels where they are faster")
    elif d.f.strongly_typed_only:
        d.p.typed_conversion = precision
        d.strongly_typed(f"TensorRT {d.ver} is strongly typed: the ONNX was converted to {flag} "
                         "(numerically unsafe ops kept in FP32)")
    else:
        raise PipelineError(
            f"precision={precision} is not available on TensorRT {d.ver} (no BuilderFlag.{flag}).",
            "BF16 needs TensorRT 10+ (the NGC TensorRT 10 image in docker/); on this version use "
            "precision=fp16 or precision=tf32.",
        )


def _int8(d: _Decision) -> None:
    p = d.p
    if d.has_qdq:
        if "fp8" in d.qdq_types and "int8" not in d.qdq_types:
            raise PipelineError("precision=int8 but the Q/DQ ONNX quantizes to FP8.", "Use precision=fp8.")
        if d.f.strongly_typed_only:
            d.strongly_typed("explicit quantization: INT8 from the Q/DQ nodes (strongly typed)")
        else:
            p.set_flags.append("INT8")
            if d.has("FP16"):
                p.set_flags.append("FP16")  # layers left unquantized run FP16 rather than FP32
            p.notes.append("explicit quantization: INT8 where the Q/DQ nodes say, FP16 elsewhere")
    elif d.f.implicit_int8:
        if not d.has_calibration:
            raise PipelineError(
                "precision=int8 without a Q/DQ ONNX needs calibration data or a calibration cache.",
                "Set data.calib_samples > 0, pass a cache, or run the quantize stage for a Q/DQ ONNX.",
            )
        p.set_flags.append("INT8")
        if d.has("FP16"):
            # Layers without INT8 kernels (or where FP16 is faster) may fall back to FP16, as
            # `trtexec --int8 --fp16` allows; otherwise they would run in FP32.
            p.set_flags.append("FP16")
        p.calibrator = d.build.calibrator
        p.notes.append(f"implicit INT8 calibration ({d.build.calibrator}), FP16 fallback for other layers")
    else:
        raise PipelineError(
            f"precision=int8 needs a Q/DQ ONNX on TensorRT {d.ver}: implicit INT8 calibration "
            "(int8_calibrator) was removed in TensorRT 11.",
            "Add quantize to stages (it writes <model>.int8.qdq.onnx), or pass build.qdq_onnx=<Q/DQ ONNX>.",
        )


def _fp8(d: _Decision) -> None:
    if not (d.has("FP8") or d.f.strongly_typed_only):
        raise PipelineError(
            f"precision=fp8 is not available on TensorRT {d.ver} (no FP8 support; its ONNX parser "
            "also stops at opset 17, and FP8 Q/DQ needs opset 19).",
            "Use TensorRT 10+ on an Ada/Hopper GPU (docker/ NGC image) with an FP8 Q/DQ ONNX, "
            "or precision=int8 / fp16 here.",
        )
    gpu = d.gpu
    if gpu is not None and _cc_tuple(gpu.compute_capability) < FP8_MIN_CC:
        raise PipelineError(f"precision=fp8 needs compute capability >= 8.9; {gpu.name} is {gpu.compute_capability}.",
                            "Use precision=int8 or fp16 on this GPU.")
    if not d.has_qdq or "fp8" not in d.qdq_types:
        raise PipelineError("precision=fp8 needs an ONNX with FP8 Q/DQ nodes (opset 19).",
                            "Quantize the model to FP8 (e.g. NVIDIA ModelOpt) and pass build.qdq_onnx=<fp8 ONNX>.")
    if d.f.strongly_typed_only:
        d.strongly_typed("explicit FP8 quantization from the Q/DQ nodes (strongly typed)")
    else:
        d.p.set_flags += ["FP8"] + (["FP16"] if d.has("FP16") else [])


def _best(d: _Decision) -> None:
    p = d.p
    if d.f.strongly_typed_only:
        if d.has_qdq:
            d.strongly_typed("best on a strongly typed TensorRT: the Q/DQ ONNX's types")
        else:
            p.typed_conversion = "fp16"
            d.strongly_typed("best on a strongly typed TensorRT: FP16 conversion (no Q/DQ ONNX given)")
        return
    for flag in ("TF32", "FP16", "BF16"):
        if d.has(flag):
            p.set_flags.append(flag)
    if d.has_qdq:
        p.set_flags.append("INT8")
    elif d.f.implicit_int8 and d.has_calibration:
        p.set_flags.append("INT8")
        p.calibrator = d.build.calibrator
    else:
        p.notes.append("best without Q/DQ ONNX or calibration data: INT8 left out")


def _sparsity(d: _Decision) -> None:
    if not d.build.sparse_weights:
        return
    if not d.f.sparse_weights:
        raise PipelineError(f"build.sparse_weights=true, but TensorRT {d.ver} has no SPARSE_WEIGHTS flag.",
                            "Set build.sparse_weights=false.")
    d.p.set_flags.append("SPARSE_WEIGHTS")
    d.p.notes.append("2:4 sparse tactics allowed: TensorRT uses them only on layers whose weights are 2:4 sparse")


#: ``build.input_format`` values: the TensorRT dtype each sets on the network's float inputs.
INPUT_FORMATS = {"fp16": "float16"}


def _input_format(d: _Decision) -> None:
    fmt = d.build.input_format
    if fmt is None or str(fmt).lower() in ("", "fp32", "none"):
        return
    fmt = str(fmt).lower()
    if fmt == "int8":
        raise PipelineError("build.input_format=int8 is not offered: an INT8 input needs the host to quantize every "
                            "batch with the first Q node's scale, which the runtime and the accuracy check do not do.",
                            "Use build.input_format=fp16 (half the input bytes, no FP32 input reformat).")
    if fmt not in INPUT_FORMATS:
        raise PipelineError(f"Unknown build.input_format {fmt!r}.", f"Use one of {sorted(INPUT_FORMATS)} or null.")
    if d.p.strongly_typed:
        raise PipelineError(f"build.input_format={fmt} on TensorRT {d.ver}: the network is strongly typed, so its "
                            "input types come from the ONNX and cannot be set at build time.",
                            "Export the ONNX with float16 inputs, or leave build.input_format=null.")
    d.p.input_format = fmt
    d.p.notes.append(f"network float inputs in {fmt.upper()} (linear): no FP32 input reformat, half the input bytes")


#: Precision name -> the path that fills in the plan.
_PATHS = {"fp32": _fp32, "tf32": _tf32, "fp16": _half, "bf16": _half, "int8": _int8, "fp8": _fp8, "best": _best}
