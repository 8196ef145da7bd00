"""A TensorRT logger that keeps errors and warnings, so a failed build can say what TensorRT said."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, Callable, List, Tuple


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
            if sev in ("INTERNAL_ERROR", "ERROR", "WARNING"):
                self.messages.append((sev, msg))
            if sev in ("INTERNAL_ERROR", "ERROR"):
                echo(f"[TensorRT {sev}] {msg}")

    return Logger()
