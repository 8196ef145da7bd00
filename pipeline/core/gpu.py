"""GPU facts and telemetry through NVML (``pynvml`` from the nvidia-ml-py distribution).

NVML is the library nvidia-smi itself is built on: it reports the device name, compute capability,
driver version, clocks, power, temperature and utilization without a CUDA context and without parsing
a command's text output. ``pynvml`` is imported inside the functions; without it (or without a driver)
every function here says so instead of failing: :func:`device_facts` returns ``None``,
:class:`NvmlSampler` returns ``{"available": False, "reason": ...}``.
"""

from __future__ import annotations

import os
import statistics
import threading
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple

#: Quantities :class:`NvmlSampler` records, with their units in the key.
TELEMETRY_KEYS = ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temperature_c", "gpu_util_pct")

#: NVML clock-event ("throttle") reason bits (nvml.h ``nvmlClocksEventReason*``), by what holds the clock down.
CLOCK_EVENT_BITS = {
    "power_cap": 0x4,            # SwPowerCap: the board's power limit
    "hw_slowdown": 0x8,          # HwSlowdown (power brake or thermal, by the hardware)
    "sw_thermal": 0x20,          # SwThermalSlowdown
    "hw_thermal": 0x40,          # HwThermalSlowdown
    "hw_power_brake": 0x80,      # HwPowerBrakeSlowdown
}


def _text(value: Any) -> str:
    """NVML strings are ``bytes`` in older pynvml releases and ``str`` in newer ones."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def nvml() -> Tuple[Optional[ModuleType], str]:
    """``(pynvml, "")`` with NVML initialized, or ``(None, reason)``.

    ``nvmlInit`` is reference counted by NVML; callers pair it with ``nvmlShutdown``.
    """
    try:
        import pynvml  # noqa: PLC0415 - optional, lazy by design
    except ImportError as err:
        return None, f"pynvml is not installed ({err}); pip install nvidia-ml-py"
    try:
        pynvml.nvmlInit()
    except Exception as err:  # pynvml.NVMLError_LibraryNotFound / DriverNotLoaded and friends
        return None, f"NVML could not start ({type(err).__name__}: {err})"
    return pynvml, ""


def cuda_visible_entries() -> Optional[List[str]]:
    """``CUDA_VISIBLE_DEVICES`` as a list of entries (ordinals or UUIDs), or None when it is not set."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def handle_for_cuda_device(pynvml: ModuleType, index: int = 0) -> Any:
    """NVML's handle of this process's CUDA device ``index``.

    NVML numbers every GPU of the host (PCI bus order) and ignores ``CUDA_VISIBLE_DEVICES``; CUDA numbers only the
    visible ones. A job pinned with ``CUDA_VISIBLE_DEVICES=3`` runs on CUDA device 0, which is NVML's device 3
    (ordinals assume ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, which :mod:`pipeline.optimize.gpus` sets); a UUID entry (or
    the prefix of one, as CUDA accepts) is looked up by UUID.

    Raises:
        pynvml.NVMLError: no such device.
    """
    entries = cuda_visible_entries()
    if entries is None:
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    if index >= len(entries):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
    entry = entries[index]
    if entry.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        if _text(pynvml.nvmlDeviceGetUUID(handle)).startswith(entry):
            return handle
    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)


def _device_facts(pynvml: ModuleType, handle: Any) -> Dict[str, Any]:
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    facts: Dict[str, Any] = {
        "name": _text(pynvml.nvmlDeviceGetName(handle)),
        "compute_capability": f"{major}.{minor}",
        "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
    }
    optional = {
        "max_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "max_mem_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
        "memory_total_bytes": lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
        "uuid": lambda: _text(pynvml.nvmlDeviceGetUUID(handle)),
    }
    for key, read in optional.items():
        try:
            facts[key] = read()
        except pynvml.NVMLError:  # not supported on this board or inside this sandbox
            facts[key] = None
    return facts


def device_facts(index: int = 0) -> Optional[Dict[str, Any]]:
    """Name, compute capability, driver, max clocks, power limit, memory and UUID of CUDA device ``index``
    (through ``CUDA_VISIBLE_DEVICES``: :func:`handle_for_cuda_device`).

    Returns:
        ``{name, compute_capability, driver, max_sm_clock_mhz, max_mem_clock_mhz, power_limit_w,
        memory_total_bytes, uuid}`` (MHz, W, bytes; None where the board does not report one), or None
        without NVML or without that GPU.
    """
    pynvml, _ = nvml()
    if pynvml is None:
        return None
    try:
        return _device_facts(pynvml, handle_for_cuda_device(pynvml, index))
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def all_device_facts() -> Tuple[List[Dict[str, Any]], str]:
    """:func:`device_facts` of every GPU NVML sees, in NVML (PCI bus) order.

    Returns:
        ``(facts, reason)``: one dict per GPU (keys as :func:`device_facts`) and, when the list is
        empty, why (pynvml missing, no driver, no GPU); ``reason`` is ``""`` when GPUs were found.
    """
    pynvml, reason = nvml()
    if pynvml is None:
        return [], reason
    try:
        count = pynvml.nvmlDeviceGetCount()
        facts = [_device_facts(pynvml, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
    except pynvml.NVMLError as err:
        return [], f"NVML could not list the GPUs ({type(err).__name__}: {err})"
    finally:
        pynvml.nvmlShutdown()
    return facts, "" if facts else "NVML lists no GPU"


def gpu_names() -> List[str]:
    """``"<name>, <driver>"`` for every GPU NVML sees (empty without NVML or a GPU)."""
    pynvml, _ = nvml()
    if pynvml is None:
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        return [f"{_text(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)))}, {driver}"
                for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError:
        return []
    finally:
        pynvml.nvmlShutdown()


def read_sample(pynvml: ModuleType, handle: Any) -> Dict[str, float]:
    """One reading of :data:`TELEMETRY_KEYS` (quantities the board does not report are left out)."""
    reads = {
        "sm_clock_mhz": lambda: float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        "mem_clock_mhz": lambda: float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
        "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # NVML reports milliwatts
        "temperature_c": lambda: float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
        "gpu_util_pct": lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
        "clock_event_reasons": lambda: int(_clock_reasons(pynvml)(handle)),
    }
    out: Dict[str, float] = {}
    for key, read in reads.items():
        try:
            out[key] = read()
        except pynvml.NVMLError:
            continue
    return out


def _clock_reasons(pynvml: ModuleType) -> Any:
    """NVML's current clock-event reasons call (renamed from ``...ClocksThrottleReasons`` in newer drivers)."""
    return getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
        pynvml.nvmlDeviceGetCurrentClocksThrottleReasons


def summarize(samples: List[Dict[str, float]]) -> Dict[str, Any]:
    """Per quantity ``{min, median, max}`` over the samples that report it, and ``clock_limited``: for each
    :data:`CLOCK_EVENT_BITS` reason, the fraction of samples in which it held the SM clock down."""
    out: Dict[str, Any] = {}
    for key in TELEMETRY_KEYS:
        xs = [s[key] for s in samples if key in s]
        if xs:
            out[key] = {"min": min(xs), "median": float(statistics.median(xs)), "max": max(xs)}
    reasons = [int(s["clock_event_reasons"]) for s in samples if "clock_event_reasons" in s]
    if reasons:
        out["clock_limited"] = {name: sum(1 for r in reasons if r & bit) / len(reasons)
                                for name, bit in CLOCK_EVENT_BITS.items()}
    return out


class NvmlSampler:
    """Sample clocks, power, temperature and utilization in a background thread while a block runs.

    Usage::

        with NvmlSampler() as s:
            timed_loop(...)
        measured["gpu_telemetry"] = s.result()

    Args:
        index: CUDA device index of this process (mapped to NVML's through ``CUDA_VISIBLE_DEVICES``).
        period_s: sampling period, seconds (NVML's power and utilization counters update about every
            20 ms or slower, so shorter periods repeat values).

    ``result()`` is ``{available: True, device, driver, samples, period_ms, <quantity>: {min, median,
    max}}``, or ``{available: False, reason}`` without NVML or a GPU; nothing raises.
    """

    def __init__(self, index: int = 0, period_s: float = 0.02):
        # At least 1 ms: a zero period would spin a core next to the timed loop.
        self.index, self.period_s = index, max(float(period_s), 1e-3)
        self.samples: List[Dict[str, float]] = []
        self._reason = ""
        self._pynvml: Optional[ModuleType] = None
        self._handle: Any = None
        self._facts: Dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "NvmlSampler":
        pynvml, self._reason = nvml()
        if pynvml is None:
            return self
        try:
            self._handle = handle_for_cuda_device(pynvml, self.index)
            self._facts = _device_facts(pynvml, self._handle)
        except pynvml.NVMLError as err:
            self._reason = f"NVML has no GPU {self.index} ({err})"
            pynvml.nvmlShutdown()
            return self
        self._pynvml = pynvml
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(read_sample(self._pynvml, self._handle))
            self._stop.wait(self.period_s)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.samples.append(read_sample(self._pynvml, self._handle))  # the state at the block's end
        if self._pynvml is not None:
            self._pynvml.nvmlShutdown()
            self._pynvml = None

    def result(self) -> Dict[str, Any]:
        """The telemetry dict (see the class docstring)."""
        if not self._facts:
            return {"available": False, "reason": self._reason or "the sampler did not run"}
        out: Dict[str, Any] = {"available": True, "device": self._facts.get("name"), "uuid": self._facts.get("uuid"),
                               "driver": self._facts.get("driver"), "samples": len(self.samples),
                               "period_ms": self.period_s * 1e3,
                               "max_sm_clock_mhz": self._facts.get("max_sm_clock_mhz"),
                               "power_limit_w": self._facts.get("power_limit_w")}
        out.update(summarize(self.samples))
        return out

