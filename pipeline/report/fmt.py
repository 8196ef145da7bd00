"""Number formatting shared by the Markdown, HTML and comparison renderers.

Conventions: SI (decimal) prefixes everywhere, so 1 GB = 1e9 bytes and 1 TFLOPS = 1e12 FLOP/s, the
way GPU datasheets state peaks and bandwidths. Missing values render as an em dash.
"""

from __future__ import annotations

import math
from typing import Any, Optional

MISSING = "—"

_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _num(value: Any) -> Optional[float]:
    """``value`` as a finite float, or None (None, bools, strings and NaN are not numbers here)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def is_integer_precision(key: Optional[str]) -> bool:
    """Whether a precision or peak key (``int8``, ``int8_tensor``, ``int4``...) counts integer ops.

    Integer throughput is quoted in OPS (TOPS), floating point in FLOPS (TFLOPS).
    """
    return bool(key) and str(key).lower().lstrip("u").startswith("int")


def fmt_si(value: Any, unit: str = "", decimals: int = 2, max_prefix: str = "P") -> str:
    """Scale by the largest SI prefix not above ``max_prefix`` that keeps the mantissa >= 1.

    ``fmt_si(3.64e9, "FLOPs")`` -> ``"3.64 GFLOPs"``; ``fmt_si(512, "B", 0)`` -> ``"512 B"``.
    """
    v = _num(value)
    if v is None:
        return MISSING
    limit = {prefix: factor for factor, prefix in _PREFIXES}.get(max_prefix, 1e15)
    for factor, prefix in _PREFIXES:
        if factor <= limit and abs(v) >= factor:
            return f"{v / factor:.{decimals}f} {prefix}{unit}".rstrip()
    return f"{v:.{decimals}f} {unit}".rstrip()


def fmt_ops_per_s(value: Any, integer: bool = False) -> str:
    """Throughput of arithmetic: ``312e12`` -> ``"312.0 TFLOPS"`` (``"312.0 TOPS"`` if ``integer``).

    Capped at tera so that GPU numbers read like datasheets (``1979.0 TFLOPS``, not ``2.0 PFLOPS``).
    """
    return fmt_si(value, "OPS" if integer else "FLOPS", decimals=1, max_prefix="T")


def fmt_count(value: Any, unit: str = "") -> str:
    """Counts such as FLOPs, MACs or parameters: ``11.69e6`` -> ``"11.69 M"``."""
    return fmt_si(value, unit, decimals=2)


def fmt_bytes(value: Any) -> str:
    """Bytes with SI prefixes: ``44.7e6`` -> ``"44.70 MB"``."""
    v = _num(value)
    if v is not None and abs(v) < 1000:
        return f"{v:.0f} B"
    return fmt_si(value, "B", decimals=2)


def fmt_bandwidth(value: Any) -> str:
    """Bytes per second: ``3.35e12`` -> ``"3350.0 GB/s"`` (GB/s is how datasheets quote memory)."""
    v = _num(value)
    if v is None:
        return MISSING
    return f"{v / 1e9:.1f} GB/s"


def fmt_time(seconds: Any) -> str:
    """Durations with 4 significant digits in s, ms, µs or ns: ``1.2345e-3`` -> ``"1.234 ms"``."""
    v = _num(seconds)
    if v is None:
        return MISSING
    if v == 0:
        return "0 s"
    for factor, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if abs(v) >= factor:
            return f"{v / factor:.4g} {unit}"
    return f"{v / 1e-9:.4g} ns"


def fmt_ms(ms: Any) -> str:
    """A latency given in milliseconds, always in ms with 3 decimals (comparable down a column)."""
    v = _num(ms)
    return MISSING if v is None else f"{v:.3f} ms"


def fmt_pct(value: Any, decimals: int = 1) -> str:
    """A percentage already scaled to 0-100: ``12.345`` -> ``"12.3%"``."""
    v = _num(value)
    return MISSING if v is None else f"{v:.{decimals}f}%"


def fmt_intensity(value: Any) -> str:
    """Arithmetic intensity, FLOP per byte moved."""
    v = _num(value)
    return MISSING if v is None else f"{v:.3g} FLOP/B"


def fmt_value(value: Any) -> str:
    """Generic cell: numbers with 4 significant digits, bools as yes/no, None as a dash."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_value(v) for v in value) if value else MISSING
    return str(value)
