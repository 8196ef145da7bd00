"""Theoretical peaks of a processor, from ``conf/hardware/*.yaml`` or detected at run time.

Every peak follows one formula (seed note 4.1, REFERENCE.md)::

    ops/s = clock (Hz) x SMs (or CPU cores) x units per SM x FMA per clock per unit x 2

because one fused multiply-add is two operations. Tensor Core units use the *tensor-rated* clock
(H100 SXM: 1830 MHz, not the 1980 MHz max boost that NVML reports); 2:4 structured sparsity
multiplies Tensor Core peaks by ``sparse_speedup`` (2 on Ampere/Ada/Hopper) and is reported apart
from the dense peak, which is the one the roofline uses unless asked.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from pipeline.core.config import CONF_DIR, HardwareConfig, PrecisionConfig, UnitSpec
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

#: Where the hardware group lives (one yaml per processor, plus auto.yaml and cpu.yaml).
HARDWARE_DIR = CONF_DIR / "hardware"

#: Tie-break between equal peaks for ``precision=best``: int8 first because every TensorRT
#: version with Tensor Cores runs explicit-Q/DQ INT8, while FP8 needs Ada/Hopper and TensorRT 9+.
_BEST_ORDER = ("int8", "fp8", "fp16", "bf16", "tf32", "fp32", "fp64")

#: Non-MAC layers (elementwise, norms, softmax, pooling) run on CUDA cores / SIMD lanes, not on
#: Tensor Cores. Their arithmetic in INT8/FP8 engines is done in FP16 or FP32 (dp4a-style INT8
#: rates help only dot products), so each precision falls back along this chain.
_VECTOR_CHAIN = {
    "fp64": ("fp64", "fp32"),
    "fp32": ("fp32",),
    "tf32": ("fp32",),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp16": ("fp16", "fp32"),
    "fp8": ("fp16", "fp32"),
    "int8": ("fp16", "fp32"),
    "int4": ("fp16", "fp32"),
}


@dataclass(frozen=True)
class Peak:
    """One theoretical peak of one unit type.

    Attributes:
        key: the ``units`` key in the hardware file, e.g. ``fp16_tensor``.
        precision: numeric format, e.g. ``fp16``, ``int8``.
        core: ``tensor``, ``cuda`` or ``simd`` (CPU vector unit).
        ops_per_s_dense: dense peak, operations per second (FLOP/s or integer OP/s; 1 FMA = 2 ops).
        ops_per_s_sparse: 2:4 structured-sparse peak in ops/s, or None where the unit has no sparsity.
        formula: the multiplication with its numbers, e.g. ``1830 MHz x 132 SM x 4 units x 512 FMA/clk x 2 = 989.4 TFLOPS``.
        source: where the constants come from (datasheet, whitepaper, "derived").
        note: why this peak stands in for another one (fallbacks), empty otherwise.
    """

    key: str
    precision: str
    core: str
    ops_per_s_dense: float
    ops_per_s_sparse: Optional[float]
    formula: str
    source: str
    note: str = ""

    def ops_per_s(self, sparse: bool = False) -> float:
        """Peak in ops/s: the sparse one when ``sparse`` and the unit has it, else dense."""
        if sparse and self.ops_per_s_sparse is not None:
            return self.ops_per_s_sparse
        return self.ops_per_s_dense

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def peak_ops_per_s(unit: UnitSpec, sm_count: int) -> float:
    """Dense peak of ``unit`` in ops/s: MHz x 1e6 x SMs x units/SM x FMA/clk/unit x 2.

    Args:
        unit: the unit type (clock in MHz).
        sm_count: SMs on a GPU, cores on a CPU.
    """
    return unit.clock_mhz * 1e6 * sm_count * unit.units_per_sm * unit.fma_per_clk_per_unit * 2


def _scaled(value: float, integer: bool) -> str:
    unit = "OPS" if integer else "FLOPS"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(value) >= factor:
            return f"{value / factor:.4g} {prefix}{unit}"
    return f"{value:.4g} {unit}"


def _is_integer_precision(precision: str) -> bool:
    return precision.startswith("int") or precision.startswith("uint")


def peak_from_unit(key: str, unit: UnitSpec, sm_count: int, sm_label: str = "SM") -> Peak:
    """Build a :class:`Peak` (with its formula string) from one ``units`` entry."""
    dense = peak_ops_per_s(unit, sm_count)
    integer = _is_integer_precision(unit.precision)
    per_unit = "lanes" if unit.core == "simd" else "FMA/clk"
    units = "FMA units" if unit.core == "simd" else "units"
    formula = (
        f"{unit.clock_mhz:g} MHz x {sm_count} {sm_label} x {unit.units_per_sm:g} {units}"
        f" x {unit.fma_per_clk_per_unit:g} {per_unit} x 2 = {_scaled(dense, integer)}"
    )
    sparse = None
    if unit.sparse_speedup and unit.sparse_speedup != 1.0:
        sparse = dense * unit.sparse_speedup
        formula += f" dense; x {unit.sparse_speedup:g} (2:4 sparse) = {_scaled(sparse, integer)}"
    return Peak(key, unit.precision, unit.core, dense, sparse, formula, unit.source)


def _precision_of_key(key: str) -> str:
    return key.split("_", 1)[0]


@dataclass
class HardwareSpec:
    """A resolved processor: its peaks, its memory bandwidth and how it was found.

    Attributes:
        name: hardware file name (``h100_sxm``) or ``cpu``.
        kind: ``gpu`` or ``cpu``.
        sm_count: SMs (GPU) or cores used (CPU).
        memory_bandwidth_bytes_s: DRAM bandwidth, bytes per second.
        peaks: peak per ``units`` key.
        detection: how it was found (``method``, names reported, ``assumption``, ``note``...).
        config: the :class:`HardwareConfig` the peaks were computed from.
    """

    name: str
    kind: str
    sm_count: int
    memory_bandwidth_bytes_s: float
    peaks: Dict[str, Peak]
    detection: Dict[str, Any] = field(default_factory=dict)
    config: Optional[HardwareConfig] = None

    def precisions(self) -> List[str]:
        """Numeric formats this processor has a peak for, fastest-first order of ``_BEST_ORDER``."""
        have = {p.precision for p in self.peaks.values()}
        return [p for p in _BEST_ORDER if p in have] + sorted(have - set(_BEST_ORDER))

    def best_peak(self) -> Peak:
        """The fastest dense peak (ties broken int8 > fp8 > fp16 > ...)."""
        rank = {p: i for i, p in enumerate(_BEST_ORDER)}
        return min(
            self.peaks.values(),
            key=lambda p: (-p.ops_per_s_dense, rank.get(p.precision, len(rank)), p.key),
        )

    def peak_for(self, precision: PrecisionConfig) -> Peak:
        """The peak the MAC layers (conv, gemm, matmul) of ``precision`` run at.

        ``precision.peak`` names a ``units`` key. If this processor lacks that key but has the
        same numeric format on another unit (a CPU's ``fp32_simd`` for ``fp32_cuda``), that one is
        used and its ``note`` says so. A CPU without the format (fp16, int8 without VNNI) falls
        back to its FP32 SIMD peak, because ONNX Runtime's CPU kernels then compute in FP32.

        Raises:
            PipelineError: a GPU that lacks the format (fp8 on A100, bf16 on T4).
        """
        key = precision.peak
        if key == "best":
            return self.best_peak()
        if key in self.peaks:
            return self.peaks[key]
        wanted = _precision_of_key(key)
        same = [p for p in self.peaks.values() if p.precision == wanted]
        if same:
            chosen = max(same, key=lambda p: p.ops_per_s_dense)
            return _with_note(chosen, f"{self.name} has no {key}; using {chosen.key}")
        if self.kind == "cpu":
            fallback = self.peaks.get("fp32_simd")
            if fallback is not None:
                return _with_note(
                    fallback,
                    f"this CPU has no {wanted} peak; its {wanted} layers are bounded with fp32_simd"
                    " (ONNX Runtime's CPU kernels compute them in FP32 or without a faster unit)",
                )
        have = ", ".join(self.precisions())
        usable = [p for p in self.precisions() if p in ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")]
        raise PipelineError(
            f"hardware '{self.name}' has no {wanted} peak (precision '{precision.name}' wants"
            f" '{key}'); it has: {have} (units: {', '.join(sorted(self.peaks))})",
            hint=f"choose precision=<{'|'.join(usable) or 'fp32'}> for this processor, or a"
            f" hardware=<file> that has {wanted} (files in {HARDWARE_DIR})",
        )

    def vector_peak_for(self, peak: Peak) -> Peak:
        """The CUDA-core / SIMD peak that non-MAC layers of ``peak``'s precision run at.

        Elementwise, normalization, softmax and pooling layers cannot use Tensor Cores; they run
        on CUDA cores in the same precision where the GPU has a peak for it, else the nearest
        wider format (``_VECTOR_CHAIN``).
        """
        if peak.core != "tensor":
            return peak
        for precision in _VECTOR_CHAIN.get(peak.precision, (peak.precision, "fp32")):
            candidates = [p for p in self.peaks.values() if p.precision == precision and p.core != "tensor"]
            if candidates:
                chosen = max(candidates, key=lambda p: p.ops_per_s_dense)
                if precision == peak.precision:
                    return chosen
                return _with_note(chosen, f"non-MAC {peak.precision} layers bounded with {chosen.key}")
        return _with_note(peak, "no CUDA-core peak listed; non-MAC layers bounded with the Tensor Core peak")

    def ridge_point(self, peak_key: str, sparse: bool = False) -> float:
        """Arithmetic intensity where the roofline bends, FLOP (or OP) per byte of DRAM traffic.

        Layers below it are memory-bound, above it compute-bound.
        """
        if peak_key not in self.peaks:
            raise PipelineError(
                f"hardware '{self.name}' has no peak '{peak_key}'",
                hint=f"use one of: {', '.join(sorted(self.peaks))}",
            )
        return self.peaks[peak_key].ops_per_s(sparse) / self.memory_bandwidth_bytes_s

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict for ``report.json``'s ``hardware`` key."""
        cfg = self.config
        return {
            "name": self.name,
            "kind": self.kind,
            "sm_count": self.sm_count,
            "clock_mhz_max": cfg.clock_mhz_max if cfg else None,
            "memory_bandwidth_bytes_s": self.memory_bandwidth_bytes_s,
            "memory_bandwidth_gbs": self.memory_bandwidth_bytes_s / 1e9,
            "l2_mb": cfg.l2_mb if cfg else None,
            "compute_capability": cfg.compute_capability if cfg else None,
            "peaks": {k: p.to_dict() for k, p in self.peaks.items()},
            "detection": dict(self.detection),
            "sources": dict(cfg.sources) if cfg else {},
            "notes": cfg.notes if cfg else "",
        }


def _with_note(peak: Peak, note: str) -> Peak:
    from dataclasses import replace

    return replace(peak, note=note)


def spec_from_config(cfg: HardwareConfig, detection: Optional[Dict[str, Any]] = None) -> HardwareSpec:
    """Compute every peak of ``cfg`` (a GPU file, or a CPU config built by detection).

    Raises:
        PipelineError: the config lacks SMs, bandwidth or units.
    """
    missing = [
        name
        for name, ok in (
            ("sm_count", cfg.sm_count > 0),
            ("memory_bandwidth_gbs", cfg.memory_bandwidth_gbs > 0),
            ("units", bool(cfg.units)),
        )
        if not ok
    ]
    if missing:
        raise PipelineError(
            f"hardware '{cfg.name}' has no {', '.join(missing)}",
            hint=f"fill them in conf/hardware/{cfg.name}.yaml (see h100_sxm.yaml), or override on the"
            f" command line, e.g. hardware.memory_bandwidth_gbs=900",
        )
    label = "cores" if cfg.kind == "cpu" else "SM"
    peaks = {key: peak_from_unit(key, unit, cfg.sm_count, label) for key, unit in cfg.units.items()}
    return HardwareSpec(
        name=cfg.name,
        kind=cfg.kind,
        sm_count=cfg.sm_count,
        memory_bandwidth_bytes_s=cfg.memory_bandwidth_gbs * 1e9,
        peaks=peaks,
        detection=dict(detection or {"method": "config"}),
        config=cfg,
    )


def hardware_names() -> List[str]:
    """Names of the files in ``conf/hardware`` (without ``.yaml``)."""
    return sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml"))


def load_hardware_config(name: str) -> HardwareConfig:
    """Read ``conf/hardware/<name>.yaml`` merged onto the :class:`HardwareConfig` schema.

    Raises:
        PipelineError: no such file, or a key/type that the schema rejects.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = HARDWARE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise PipelineError(
            f"no hardware file '{name}' in {HARDWARE_DIR}",
            hint=f"use hardware=<{'|'.join(hardware_names())}>, or add conf/hardware/{name}.yaml",
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(HardwareConfig), OmegaConf.load(path))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise PipelineError(
            f"{path} does not match the HardwareConfig schema: {err}",
            hint="compare its keys with pipeline/core/config.py (HardwareConfig, UnitSpec)",
        ) from err
    assert isinstance(cfg, HardwareConfig)
    return cfg


def load_hardware(name: str) -> HardwareSpec:
    """Load a hardware file and resolve it (``auto`` and ``cpu`` detect this machine)."""
    return resolve_hardware(load_hardware_config(name))


def _as_config(cfg: Any) -> HardwareConfig:
    if isinstance(cfg, HardwareConfig):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(HardwareConfig), cfg))


def resolve_hardware(cfg: Optional[HardwareConfig] = None) -> HardwareSpec:
    """Turn the ``hardware`` config group into peaks.

    Args:
        cfg: ``kind: gpu`` is used as given; ``kind: cpu`` detects this CPU (non-zero fields of
            ``cfg`` override detection); ``kind: auto`` (default) asks NVML
            (:func:`pipeline.core.gpu.all_device_facts`) for the GPU, matches its name against
            ``vendor_names`` of every hardware file and falls back to this CPU (with
            ``detection["note"]`` saying why) when there is no GPU or no file for it.

    Raises:
        PipelineError: an unknown ``kind``, or a config without the numbers the formula needs.
    """
    cfg = _as_config(cfg if cfg is not None else HardwareConfig())
    if cfg.kind == "gpu":
        return spec_from_config(cfg, {"method": "config", "file": f"conf/hardware/{cfg.name}.yaml"})
    if cfg.kind == "cpu":
        return detect_cpu(overrides=cfg)
    if cfg.kind != "auto":
        raise PipelineError(
            f"hardware kind '{cfg.kind}' is not one of auto, gpu, cpu",
            hint="set kind: gpu in the hardware file (or use hardware=auto)",
        )
    from pipeline.core.gpu import all_device_facts

    gpus, why = all_device_facts()
    return spec_for_gpus(gpus, why)


def cpu_spec_from_cpuinfo(text: str, max_freq_khz: Optional[str] = None, usable: Optional[int] = None,
                          overrides: Optional[HardwareConfig] = None) -> HardwareSpec:
    """:class:`HardwareSpec` of the CPU that ``text`` (``/proc/cpuinfo`` content) describes."""
    from pipeline.analyze.cpu import cpu_config_from_cpuinfo

    return spec_from_config(*cpu_config_from_cpuinfo(text, max_freq_khz, usable, overrides))


def detect_cpu(overrides: Optional[HardwareConfig] = None) -> HardwareSpec:
    """:class:`HardwareSpec` of this machine's CPU (see :func:`pipeline.analyze.cpu.detect_cpu_config`)."""
    from pipeline.analyze.cpu import detect_cpu_config

    return spec_from_config(*detect_cpu_config(overrides))


def gpu_hardware_configs() -> Dict[str, HardwareConfig]:
    """Every ``kind: gpu`` file of ``conf/hardware``, by file name."""
    configs = {}
    for name in hardware_names():
        cfg = load_hardware_config(name)
        if cfg.kind == "gpu":
            configs[name] = cfg
    return configs


def spec_for_gpus(gpus: List[Dict[str, Any]], why: str = "",
                  configs: Optional[Dict[str, HardwareConfig]] = None) -> HardwareSpec:
    """The peaks of the GPU this process runs on, given what NVML reports about each GPU.

    Args:
        gpus: one dict per GPU in NVML order, with at least ``name`` and, where known,
            ``compute_capability``, ``driver``, ``max_sm_clock_mhz`` (MHz) and ``memory_total_bytes``
            (keys of :func:`pipeline.core.gpu.device_facts`).
        why: why ``gpus`` is empty (goes into the CPU fallback's note).
        configs: the GPU hardware files to match against (default: :func:`gpu_hardware_configs`).

    Returns:
        The matching file's spec with ``detection`` saying how it was found; this CPU's spec with
        ``detection["note"]`` when there is no GPU or no file for it.
    """
    if not gpus:
        spec = detect_cpu()
        spec.detection["note"] = f"no NVIDIA GPU found ({why}); analysed against this CPU"
        return spec
    index = _visible_index(len(gpus))
    gpu = gpus[index]
    configs = gpu_hardware_configs() if configs is None else configs
    match = match_gpu_name(gpu["name"], configs)
    if match is None:
        spec = detect_cpu()
        note = (
            f"GPU '{gpu['name']}' has no conf/hardware file (no vendor_names entry matches);"
            " analysed against this CPU instead"
        )
        spec.detection.update({"note": note, "gpu": dict(gpu)})
        log.warning("%s. Add conf/hardware/<name>.yaml with vendor_names: ['%s'] or pass hardware=<file>.",
                    note, gpu["name"])
        return spec
    file_name, vendor_name = match
    cfg = configs[file_name]
    return spec_from_config(cfg, _gpu_detection(gpus, index, file_name, vendor_name, cfg))


#: NVML facts copied into ``detection`` (units in the key).
_DETECTION_FACTS = ("compute_capability", "driver", "max_sm_clock_mhz", "memory_total_bytes")


def _gpu_detection(gpus: List[Dict[str, Any]], index: int, file_name: str, vendor_name: str,
                   cfg: HardwareConfig) -> Dict[str, Any]:
    """``detection`` of a matched GPU: what NVML reported and where it differs from the file."""
    gpu = gpus[index]
    detection: Dict[str, Any] = {
        "method": "nvml",
        "reported_name": gpu["name"],
        "gpu_index": index,
        "gpus": [g["name"] for g in gpus],
        "file": f"conf/hardware/{file_name}.yaml",
        "vendor_name": vendor_name,
    }
    for key in _DETECTION_FACTS:
        if gpu.get(key) is not None:
            detection[key] = gpu[key]
    notes = []
    clock = gpu.get("max_sm_clock_mhz")
    if clock is not None and cfg.clock_mhz_max and abs(clock - cfg.clock_mhz_max) > 1:
        notes.append(
            f"NVML max SM clock {clock:g} MHz differs from the file's {cfg.clock_mhz_max:g} MHz;"
            " peaks use the file's (datasheet) clocks"
        )
    cc = gpu.get("compute_capability")
    if cc and cfg.compute_capability and str(cc) != str(cfg.compute_capability):
        notes.append(f"compute capability {cc} differs from the file's {cfg.compute_capability}")
    if notes:
        detection["note"] = "; ".join(notes)
    return detection


def _visible_index(count: int) -> int:
    """Index of the first GPU in CUDA_VISIBLE_DEVICES (numeric form), else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if visible.isdigit() and int(visible) < count:
        return int(visible)
    return 0


def _token_match(needle: str, haystack: str) -> bool:
    # Whole-token match so that "A10" does not select "A100" and "L4" does not select "L40S".
    pattern = r"(?<![A-Za-z0-9])" + re.escape(needle) + r"(?![A-Za-z0-9])"
    return re.search(pattern, haystack, flags=re.IGNORECASE) is not None


def match_gpu_name(reported: str, configs: Dict[str, HardwareConfig]) -> Optional[tuple[str, str]]:
    """Which hardware file describes the GPU that NVML calls ``reported``.

    A ``vendor_names`` entry matches as a whole token sequence, case-insensitively; an entry that
    starts with ``!`` excludes names containing the rest (h200.yaml: ``"!H200 NVL"``). The longest
    matching entry across all files wins.

    Returns:
        (file name, matching vendor name), or None.
    """
    best: Optional[tuple[str, str]] = None
    for name, cfg in configs.items():
        excluded = any(v.startswith("!") and _token_match(v[1:], reported) for v in cfg.vendor_names)
        if excluded:
            continue
        for vendor in cfg.vendor_names:
            if vendor.startswith("!") or not _token_match(vendor, reported):
                continue
            if best is None or len(vendor) > len(best[1]):
                best = (name, vendor)
    return best


__all__ = [
    "HARDWARE_DIR",
    "HardwareSpec",
    "Peak",
    "gpu_hardware_configs",
    "hardware_names",
    "load_hardware",
    "load_hardware_config",
    "match_gpu_name",
    "peak_from_unit",
    "peak_ops_per_s",
    "resolve_hardware",
    "spec_for_gpus",
    "spec_from_config",
]
