"""CPU peak from ``/proc/cpuinfo``: cores x clock x FMA units x SIMD lanes x 2.

The seed's worked example (note 4.1): an 8-core Haswell at 3.0 GHz has 2 FMA units, each 8 FP32
lanes wide (AVX2), so 3.0e9 x 8 x 2 x 8 x 2 = 0.768 TFLOPS FP32 and, with 4 FP64 lanes, 0.384
TFLOPS FP64. cpuinfo names the instruction sets but not how many vector units a core has, so
that number comes from :data:`SIMD_TABLE` and every spec records the row it used in
``detection["assumption"]``. Memory bandwidth is never in cpuinfo: it is an estimate, labelled so.

Every function takes the text it parses as an argument, so tests use real cpuinfo text.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional

from pipeline.core.config import HardwareConfig, UnitSpec
from pipeline.core.errors import PipelineError

#: JEDEC DDR4-3200: 3200 MT/s x 8 bytes per 64-bit channel = 25.6 GB/s per channel.
DDR4_3200_GBS_PER_CHANNEL = 25.6
#: Channels assumed when estimating bandwidth: a desktop's two. Servers have 6-12 (set
#: ``hardware.memory_bandwidth_gbs``), and a VM slice shares its host's.
ASSUMED_CHANNELS = 2


@dataclass(frozen=True)
class CpuInfo:
    """What ``/proc/cpuinfo`` (and the cpufreq max, where readable) says about this CPU.

    Attributes:
        arch: ``x86_64``, ``aarch64`` or ``unknown``.
        vendor: ``GenuineIntel``, ``AuthenticAMD``, the ARM implementer code, or "".
        model_name: marketing name where given.
        family: x86 CPU family (AMD Zen 4 is 25, Zen 5 is 26), or None.
        model: x86 model number, or None.
        logical_cpus: ``processor`` entries.
        physical_cores: distinct (physical id, core id) pairs, or None when cpuinfo cannot tell.
        clock_mhz: the clock used for the peak, MHz (0 when unknown).
        clock_source: where ``clock_mhz`` came from.
        flags: x86 ``flags`` or ARM ``Features``.
    """

    arch: str
    vendor: str
    model_name: str
    family: Optional[int]
    model: Optional[int]
    logical_cpus: int
    physical_cores: Optional[int]
    clock_mhz: float
    clock_source: str
    flags: FrozenSet[str]


@dataclass(frozen=True)
class SimdProfile:
    """Vector throughput of one core, per clock.

    Attributes:
        isa: the instruction set the row stands for.
        fma_units: FMA-capable vector pipes per core (a separate multiplier + adder counts as one).
        fp32_lanes / fp64_lanes: lanes per pipe.
        int8_macs_per_unit: int8 multiply-accumulates per pipe per clock through a dot-product
            instruction (VNNI ``vpdpbusd``, ARM ``sdot``), or 0 when the CPU has none.
        int8_isa: the dot-product instruction set, or "".
        assumption: what cpuinfo cannot tell and was assumed.
        source: where the row's numbers come from.
    """

    isa: str
    fma_units: int
    fp32_lanes: int
    fp64_lanes: int
    int8_macs_per_unit: int
    int8_isa: str
    assumption: str
    source: str


_INTEL_OPT = "Intel 64 and IA-32 Architectures Optimization Reference Manual"
_AGNER = "Agner Fog, The microarchitecture of Intel, AMD and VIA CPUs"

#: One row per SIMD generation: (isa, fma_units, fp32_lanes, fp64_lanes, assumption, source).
SIMD_TABLE: Dict[str, tuple] = {
    "avx512": (2, 16, 8, "2 FMA-512 units per core (Xeon Scalable Gold 6xxx/Platinum); Xeon Silver/"
               "Bronze, some Gold 5xxx and client Ice/Tiger Lake have 1 FMA-512 unit: half this peak",
               f"{_INTEL_OPT} (Skylake-SP: FMA on ports 0+1 fused and port 5)"),
    "avx512_zen4": (2, 8, 4, "AMD Zen 4 runs 512-bit ops on two 256-bit FMA pipes (same FLOPs/clk as AVX2)",
                    "AMD Software Optimization Guide for Family 19h (Zen 4)"),
    "avx512_zen5": (2, 16, 8, "AMD Zen 5 desktop/server: full 512-bit FMA pipes; mobile Zen 5 double-pumps"
                    " 256-bit pipes: half this peak", "AMD Software Optimization Guide for Family 1Ah (Zen 5)"),
    "avx2_fma": (2, 8, 4, "2 FMA-256 units per core (Haswell..Alder Lake P-cores, Zen 2-3)",
                 f"seed note 4.1 (Haswell: 2 FMA x 8 FP32 lanes x 2 = 32 FLOPs/clk); {_INTEL_OPT}"),
    "avx2_fma_zen1": (2, 4, 2, "AMD Zen/Zen+ split 256-bit ops into two 128-bit halves", _AGNER),
    "avx": (1, 8, 4, "no FMA: one 256-bit multiplier + one 256-bit adder per core (Sandy/Ivy Bridge),"
            " counted as one FMA-equivalent pipe", f"{_INTEL_OPT} (Sandy Bridge: 16 FP32 FLOPs/clk)"),
    "sse2": (1, 4, 2, "no FMA: one 128-bit multiplier + one 128-bit adder per core",
             f"{_INTEL_OPT} (Core/Nehalem: 8 FP32 FLOPs/clk)"),
    "sve": (2, 4, 2, "2 FMA pipes of 128-bit SVE vectors (Neoverse N2/V2); cpuinfo has no vector length:"
            " Neoverse V1 (Graviton3) has 2 x 256-bit (double this), A64FX 2 x 512-bit",
            "Arm Neoverse N2/V2 software optimization guides"),
    "asimd": (2, 4, 2, "2 NEON FMA pipes of 128 bits (Cortex-A76/A78, Neoverse N1); Neoverse V1/V2 and"
              " Apple cores have 4: double this", "Arm Cortex-A78 / Neoverse N1 software optimization guides"),
    "scalar": (1, 1, 1, "no SIMD flag recognised: one scalar FMA per clock", "derived"),
}


def parse_cpuinfo(text: str, max_freq_khz: Optional[str] = None) -> CpuInfo:
    """Parse ``/proc/cpuinfo`` text.

    Args:
        text: the file's content.
        max_freq_khz: content of ``/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq`` (kHz),
            or None where unreadable. Preferred for the clock; else the model name's ``@ 3.00GHz``
            (base clock); else the highest ``cpu MHz`` (the current clock, may be below the max).
    """
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    procs: List[Dict[str, str]] = []
    header: Dict[str, str] = {}
    for block in blocks:
        entry: Dict[str, str] = {}
        for line in block.splitlines():
            if ":" not in line:
                continue
            key, _, value = line.partition(":")
            entry[key.strip().lower()] = value.strip()
        if entry.get("processor", "").isdigit():
            procs.append(entry)
        else:  # ARM puts "Hardware"/"Revision" in a trailing block
            header.update(entry)
    first = procs[0] if procs else header
    flags_text = first.get("flags") or first.get("features") or header.get("features", "")
    flags = frozenset(flags_text.split())
    if "vendor_id" in first or any(f in flags for f in ("sse2", "avx")):
        arch = "x86_64"
    elif "cpu implementer" in first or "asimd" in flags or "fp" in flags:
        arch = "aarch64"
    else:
        arch = "unknown"
    vendor = first.get("vendor_id") or first.get("cpu implementer", "")
    model_name = first.get("model name") or header.get("model name") or header.get("hardware", "")
    family = int(first["cpu family"]) if first.get("cpu family", "").isdigit() else None
    model = int(first["model"]) if first.get("model", "").isdigit() else None
    logical = max(len(procs), 1)

    pairs = {(p.get("physical id"), p.get("core id")) for p in procs}
    if procs and all("physical id" in p and "core id" in p for p in procs):
        physical: Optional[int] = len(pairs)
    elif procs and all("cpu cores" in p for p in procs) and "physical id" in first:
        sockets = {p.get("physical id") for p in procs}
        physical = int(first["cpu cores"]) * len(sockets)
    else:
        physical = None

    clock, source = 0.0, "unknown"
    if max_freq_khz and max_freq_khz.strip().isdigit() and int(max_freq_khz) > 0:
        clock, source = int(max_freq_khz) / 1000.0, "cpufreq cpuinfo_max_freq"
    else:
        ghz = re.search(r"@\s*([0-9.]+)\s*GHz", model_name, flags=re.IGNORECASE)
        mhz = [float(p["cpu mhz"]) for p in procs if _is_float(p.get("cpu mhz"))]
        if ghz:
            clock, source = float(ghz.group(1)) * 1000.0, "model name (base clock)"
        elif mhz:
            clock, source = max(mhz), "cpu MHz (current clock; may be below max boost)"
    return CpuInfo(arch, vendor, model_name, family, model, logical, physical, clock, source, flags)


def _is_float(value: Optional[str]) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def simd_profile(info: CpuInfo) -> SimdProfile:
    """Pick the :data:`SIMD_TABLE` row for ``info``'s flags (and AMD family for Zen 1/4/5)."""
    f = info.flags
    amd = info.vendor == "AuthenticAMD"
    if "avx512f" in f:
        if amd and info.family == 25:
            row = "avx512_zen4"
        elif amd and (info.family or 0) >= 26:
            row = "avx512_zen5"
        else:
            row = "avx512"
    elif "avx2" in f and "fma" in f:
        row = "avx2_fma_zen1" if amd and info.family == 23 and (info.model or 0) < 0x30 else "avx2_fma"
    elif "avx" in f:
        row = "avx"
    elif "sse2" in f:
        row = "sse2"
    elif "sve" in f:
        row = "sve"
    elif "asimd" in f:
        row = "asimd"
    else:
        row = "scalar"
    units, fp32, fp64, assumption, source = SIMD_TABLE[row]

    # int8 dot products: 4 int8 MACs per 32-bit lane per instruction.
    int8_macs, int8_isa = 0, ""
    if "avx512_vnni" in f:
        int8_macs, int8_isa = fp32 * 4, "avx512_vnni (vpdpbusd)"
    elif "avx_vnni" in f:
        int8_macs, int8_isa = 8 * 4, "avx_vnni (256-bit vpdpbusd)"
    elif "asimddp" in f:
        int8_macs, int8_isa = fp32 * 4, "asimddp (sdot)"
    return SimdProfile(row, units, fp32, fp64, int8_macs, int8_isa, assumption, source)


def usable_cpus() -> Optional[int]:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 ``cpu.max`` quota."""
    count: Optional[int] = None
    if hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            limit = max(1, int(int(quota) // int(period)))
            count = min(count, limit) if count else limit
    except (OSError, ValueError):
        pass
    return count


def cpu_config(
    info: CpuInfo,
    usable: Optional[int] = None,
    overrides: Optional[HardwareConfig] = None,
) -> tuple[HardwareConfig, Dict[str, object]]:
    """Build the CPU's :class:`HardwareConfig` (units fp32_simd, fp64_simd, int8_simd) and detection.

    Args:
        info: parsed cpuinfo.
        usable: CPUs this process may use (caps the core count), or None for no cap.
        overrides: non-zero ``sm_count`` (cores), ``clock_mhz_max``, ``memory_bandwidth_gbs`` and
            non-empty ``units`` replace what detection finds.
    """
    prof = simd_profile(info)
    cores = info.physical_cores or info.logical_cpus
    core_source = "physical cores" if info.physical_cores else "logical CPUs (cpuinfo has no core ids)"
    if usable is not None and usable < cores:
        cores, core_source = usable, f"{usable} CPUs usable by this process (affinity/cgroup)"
    clock, clock_source = info.clock_mhz, info.clock_source
    bandwidth = ASSUMED_CHANNELS * DDR4_3200_GBS_PER_CHANNEL
    bw_source = (f"estimated: {ASSUMED_CHANNELS} channels x {DDR4_3200_GBS_PER_CHANNEL} GB/s (JEDEC DDR4-3200,"
                 " 3200 MT/s x 8 bytes); not measured")
    cfg_units: Dict[str, UnitSpec] = {}
    if overrides is not None:
        if overrides.sm_count > 0:
            cores, core_source = overrides.sm_count, "hardware.sm_count (given)"
        if overrides.clock_mhz_max > 0:
            clock, clock_source = overrides.clock_mhz_max, "hardware.clock_mhz_max (given)"
        if overrides.memory_bandwidth_gbs > 0:
            bandwidth, bw_source = overrides.memory_bandwidth_gbs, "hardware.memory_bandwidth_gbs (given)"
        cfg_units = dict(overrides.units)
    if clock <= 0:
        raise PipelineError(
            "cannot tell this CPU's clock from /proc/cpuinfo or cpufreq",
            hint="pass it: hardware=cpu hardware.clock_mhz_max=<MHz>",
        )
    src = f"{prof.source}; clock from {clock_source}"
    if not cfg_units:
        cfg_units = {
            "fp32_simd": UnitSpec("fp32", "simd", prof.fma_units, prof.fp32_lanes, clock, 1.0,
                                  f"{prof.isa}: {prof.fma_units} FMA units x {prof.fp32_lanes} FP32 lanes; {src}"),
            "fp64_simd": UnitSpec("fp64", "simd", prof.fma_units, prof.fp64_lanes, clock, 1.0,
                                  f"{prof.isa}: {prof.fma_units} FMA units x {prof.fp64_lanes} FP64 lanes; {src}"),
        }
        if prof.int8_macs_per_unit:
            cfg_units["int8_simd"] = UnitSpec(
                "int8", "simd", prof.fma_units, prof.int8_macs_per_unit, clock, 1.0,
                f"{prof.int8_isa}: {prof.fma_units} units x {prof.int8_macs_per_unit} int8 MAC/clk; {src}",
            )
    name = overrides.name if overrides is not None and overrides.name not in ("auto", "") else "cpu"
    cfg = HardwareConfig(
        name=name,
        kind="cpu",
        vendor_names=[info.model_name] if info.model_name else [],
        sm_count=int(cores),
        clock_mhz_max=clock,
        memory_bandwidth_gbs=bandwidth,
        l2_mb=0.0,
        compute_capability=None,
        units=cfg_units,
        sources={"simd": prof.source, "bandwidth": bw_source},
        notes="CPU peaks: cores x clock x FMA units x lanes x 2; memory bandwidth "
        + ("given" if "given" in bw_source else "ESTIMATED"),
    )
    int8_note = (
        f"int8 through {prof.int8_isa}" if prof.int8_macs_per_unit
        else "no VNNI/dot-product flag: no int8 peak; int8 layers are bounded with fp32_simd"
    )
    detection: Dict[str, object] = {
        "method": "cpuinfo",
        "model_name": info.model_name,
        "arch": info.arch,
        "logical_cpus": info.logical_cpus,
        "physical_cores": info.physical_cores,
        "cores_used": int(cores),
        "cores_source": core_source,
        "clock_mhz": clock,
        "clock_source": clock_source,
        "simd": prof.isa,
        "assumption": f"{prof.assumption}; {int8_note}",
        "memory_bandwidth": bw_source,
    }
    return cfg, detection


def cpu_config_from_cpuinfo(
    text: str,
    max_freq_khz: Optional[str] = None,
    usable: Optional[int] = None,
    overrides: Optional[HardwareConfig] = None,
):
    """``(HardwareConfig, detection)`` of the CPU that ``text`` (``/proc/cpuinfo`` content) describes.

    :func:`pipeline.analyze.hardware.cpu_spec_from_cpuinfo` turns it into peaks.
    """
    return cpu_config(parse_cpuinfo(text, max_freq_khz), usable, overrides)


def detect_cpu_config(overrides: Optional[HardwareConfig] = None):
    """``(HardwareConfig, detection)`` of this machine's CPU (reads /proc/cpuinfo and cpufreq).

    Raises:
        PipelineError: /proc/cpuinfo is unreadable (not Linux) and no clock was given.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError as err:
        if overrides is not None and overrides.units and overrides.sm_count > 0:
            text = ""
        else:
            raise PipelineError(
                f"cannot read /proc/cpuinfo ({err})",
                hint="describe the CPU: hardware=cpu hardware.sm_count=<cores> hardware.clock_mhz_max=<MHz>"
                " and hardware.units (see conf/hardware/cpu.yaml)",
            ) from err
    try:
        max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
    except OSError:
        max_freq = None  # containers and VMs often hide cpufreq
    return cpu_config_from_cpuinfo(text, max_freq, usable_cpus(), overrides)


__all__ = [
    "CpuInfo",
    "SIMD_TABLE",
    "SimdProfile",
    "cpu_config",
    "cpu_config_from_cpuinfo",
    "detect_cpu_config",
    "parse_cpuinfo",
    "simd_profile",
    "usable_cpus",
]
