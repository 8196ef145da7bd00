"""A TensorRT logger that keeps errors and warnings, so a failed build can say what TensorRT said, and the builder's
2:4 sparsity lines (INFO on 8.6/10: which layers were eligible for sparse math, which got a sparse tactic)."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, Callable, Dict, Iterable, List, Tuple

#: Prefixes of the builder's sparsity lines -> the key :func:`sparsity_from_log` files their layers under.
SPARSITY_LINES = {"(Sparsity) Layers eligible for sparse math:": "eligible",
                  "(Sparsity) TRT inference plan picked sparse implementation for layers:": "picked"}


def sparsity_from_log(messages: Iterable[Tuple[str, str]]) -> Dict[str, List[str]]:
    """``{"eligible": [layer, ...], "picked": [...]}`` from the builder's sparsity lines ({} when it printed none).

    A layer name is the engine layer (fused names joined by `` + ``); the lists are comma-separated in the log.
    """
    out: Dict[str, List[str]] = {}
    for _, msg in messages:
        for prefix, key in SPARSITY_LINES.items():
            if msg.startswith(prefix):
                rest = msg[len(prefix):].strip()
                out[key] = [n.strip() for n in rest.split(", ") if n.strip()] if rest else []
    return out


def recording_logger(trt: ModuleType, echo: Callable[[str], None]) -> Any:
    """A ``trt.ILogger`` subclass instance: ``messages`` holds ``(severity, text)`` of errors and warnings.

    Args:
        trt: the tensorrt module (the class derives from its ``ILogger``, so it is made here).
        echo: where errors are printed as they happen.
    """
    base = trt.ILogger

    class Logger(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.messages: List[Tuple[str, str]] = []

        def log(self, severity: Any, msg: str, _str: Any = str, _finalizing: Any = sys.is_finalizing) -> None:
            # TensorRT objects kept for the process (timing caches) are destroyed at interpreter exit
            # and log then, when module globals may already be gone: the defaults bind what is needed.
            if _finalizing():
                return
            sev = _str(severity).rsplit(".", 1)[-1]
            if sev in ("INTERNAL_ERROR", "ERROR", "WARNING") or msg.startswith("(Sparsity)"):
                self.messages.append((sev, msg))
            if sev in ("INTERNAL_ERROR", "ERROR"):
                echo(f"[TensorRT {sev}] {msg}")

    return Logger()
