"""Theoretical peaks of a processor, from ``conf/hardware/*.yaml`` or detected at run time.

Every peak follows one formula (seed note 4.1, REFERENCE.md)::

    ops/s = clock (Hz) x SMs (or CPU cores) x units per SM x FMA per clock per unit x 2

because one fused multiply-add is two operations. Tensor Core units use the *tensor-rated* clock
(H100 SXM: 1830 MHz, not the 1980 MHz max boost that NVML reports); 2:4 structured sparsity
multiplies Tensor Core peaks by ``sparse_speedup`` (2 on Ampere/Ada/Hopper) and is reported apart
from the dense peak, which is the one the roofline uses unless asked.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import subprocess
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


def resolve_hardware(cfg: Optional[HardwareConfig] = None, smi_timeout_s: float = 10.0) -> HardwareSpec:
    """Turn the ``hardware`` config group into peaks.

    Args:
        cfg: ``kind: gpu`` is used as given; ``kind: cpu`` detects this CPU (non-zero fields of
            ``cfg`` override detection); ``kind: auto`` (default) asks ``nvidia-smi`` for the GPU,
            matches its name against ``vendor_names`` of every hardware file and falls back to
            this CPU (with ``detection["note"]`` saying why) when there is no GPU or no file for it.
        smi_timeout_s: seconds to wait for ``nvidia-smi``.

    Raises:
        PipelineError: an unknown ``kind``, or a config without the numbers the formula needs.
    """
    cfg = _as_config(cfg if cfg is not None else HardwareConfig())
    if cfg.kind == "gpu":
        return spec_from_config(cfg, {"method": "config", "file": f"conf/hardware/{cfg.name}.yaml"})
    if cfg.kind == "cpu":
        from pipeline.analyze.cpu import detect_cpu

        return detect_cpu(overrides=cfg)
    if cfg.kind != "auto":
        raise PipelineError(
            f"hardware kind '{cfg.kind}' is not one of auto, gpu, cpu",
            hint="set kind: gpu in the hardware file (or use hardware=auto)",
        )
    return _resolve_auto(smi_timeout_s)


def _resolve_auto(timeout_s: float) -> HardwareSpec:
    from pipeline.analyze.cpu import detect_cpu

    gpus, why = detect_nvidia_gpus(timeout_s)
    if not gpus:
        spec = detect_cpu()
        spec.detection["note"] = f"no NVIDIA GPU found ({why}); analysed against this CPU"
        return spec
    index = _visible_index(len(gpus))
    gpu = gpus[index]
    configs = {}
    for name in hardware_names():
        cfg = load_hardware_config(name)
        if cfg.kind == "gpu":
            configs[name] = cfg
    match = match_gpu_name(gpu["name"], configs)
    if match is None:
        spec = detect_cpu()
        note = (
            f"GPU '{gpu['name']}' has no conf/hardware file (no vendor_names entry matches);"
            " analysed against this CPU instead"
        )
        spec.detection.update({"note": note, "gpu": gpu})
        log.warning("%s. Add conf/hardware/<name>.yaml with vendor_names: ['%s'] or pass hardware=<file>.",
                    note, gpu["name"])
        return spec
    file_name, vendor_name = match
    cfg = configs[file_name]
    detection: Dict[str, Any] = {
        "method": "nvidia-smi",
        "reported_name": gpu["name"],
        "gpu_index": index,
        "gpus": [g["name"] for g in gpus],
        "file": f"conf/hardware/{file_name}.yaml",
        "vendor_name": vendor_name,
    }
    for key in ("memory_total_mib", "max_sm_clock_mhz", "compute_cap"):
        if gpu.get(key) is not None:
            detection[key] = gpu[key]
    notes = []
    clock = gpu.get("max_sm_clock_mhz")
    if clock is not None and cfg.clock_mhz_max and abs(clock - cfg.clock_mhz_max) > 1:
        notes.append(
            f"nvidia-smi max SM clock {clock:g} MHz differs from the file's {cfg.clock_mhz_max:g} MHz;"
            " peaks use the file's (datasheet) clocks"
        )
    cc = gpu.get("compute_cap")
    if cc and cfg.compute_capability and str(cc) != str(cfg.compute_capability):
        notes.append(f"compute capability {cc} differs from the file's {cfg.compute_capability}")
    if notes:
        detection["note"] = "; ".join(notes)
    return spec_from_config(cfg, detection)


def _visible_index(count: int) -> int:
    """Index of the first GPU in CUDA_VISIBLE_DEVICES (numeric form), else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if visible.isdigit() and int(visible) < count:
        return int(visible)
    return 0


#: Fields asked of nvidia-smi, in order; compute_cap needs driver 510+, so it is retried without.
_SMI_FIELDS = ("name", "memory.total", "clocks.max.sm", "compute_cap")


def parse_nvidia_smi_csv(text: str, fields: tuple = _SMI_FIELDS) -> List[Dict[str, Any]]:
    """Parse ``nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`` output, one GPU a line.

    Returns:
        One dict per GPU with ``name`` and, where present and numeric, ``memory_total_mib``,
        ``max_sm_clock_mhz`` (MHz) and ``compute_cap`` (string).
    """
    keys = {"name": "name", "memory.total": "memory_total_mib", "clocks.max.sm": "max_sm_clock_mhz",
            "compute_cap": "compute_cap"}
    gpus = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if not row or not row[0].strip():
            continue
        gpu: Dict[str, Any] = {}
        for field_name, value in zip(fields, row):
            key = keys.get(field_name, field_name)
            value = value.strip()
            if key == "name" or key == "compute_cap":
                gpu[key] = value if value and "N/A" not in value else None
            else:
                try:
                    gpu[key] = float(value.split()[0])
                except (ValueError, IndexError):
                    gpu[key] = None
        if gpu.get("name"):
            gpus.append(gpu)
    return gpus


def detect_nvidia_gpus(timeout_s: float = 10.0) -> tuple[List[Dict[str, Any]], str]:
    """Ask ``nvidia-smi`` which GPUs this machine has.

    Returns:
        (gpus, reason): the parsed GPUs (see :func:`parse_nvidia_smi_csv`) and, when the list is
        empty, why (no binary, driver error, timeout).
    """
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return [], "nvidia-smi not on PATH"
    last_error = ""
    for fields in (_SMI_FIELDS, _SMI_FIELDS[:3], _SMI_FIELDS[:1]):
        cmd = [binary, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            return [], f"nvidia-smi failed: {err}"
        if proc.returncode == 0:
            gpus = parse_nvidia_smi_csv(proc.stdout, fields)
            return gpus, "" if gpus else "nvidia-smi listed no GPU"
        last_error = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        last_error = last_error[0]
    return [], f"nvidia-smi failed: {last_error}"


def _token_match(needle: str, haystack: str) -> bool:
    # Whole-token match so that "A10" does not select "A100" and "L4" does not select "L40S".
    pattern = r"(?<![A-Za-z0-9])" + re.escape(needle) + r"(?![A-Za-z0-9])"
    return re.search(pattern, haystack, flags=re.IGNORECASE) is not None


def match_gpu_name(reported: str, configs: Dict[str, HardwareConfig]) -> Optional[tuple[str, str]]:
    """Which hardware file describes the GPU nvidia-smi calls ``reported``.

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
    "detect_nvidia_gpus",
    "hardware_names",
    "load_hardware",
    "load_hardware_config",
    "match_gpu_name",
    "parse_nvidia_smi_csv",
    "peak_from_unit",
    "peak_ops_per_s",
    "resolve_hardware",
    "spec_from_config",
]
