"""How a report was made: versions, machine, GPU, command line, git commit."""

from __future__ import annotations

import datetime as _dt
import platform
import shutil
import socket
import subprocess
import sys
from importlib import metadata

from pipeline.core.config import REPO_ROOT

#: Distributions whose versions every report records (absent ones are recorded as null).
PACKAGES = (
    "trt-pipeline", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "hydra-core", "omegaconf",
    "polygraphy", "tensorrt", "tensorrt-bindings", "pycuda", "cuda-python", "matplotlib", "scikit-learn",
)


def package_versions() -> dict[str, str | None]:
    """Installed version of each package in :data:`PACKAGES` (None when absent)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    # The GPU sandbox puts TensorRT on the path without a distribution record: ask the module.
    if out.get("tensorrt") is None and "tensorrt" in sys.modules:
        out["tensorrt"] = getattr(sys.modules["tensorrt"], "__version__", None)
    return out


def git_commit() -> str | None:
    """HEAD of the project's git checkout, with ``-dirty`` when it has local changes; None outside git."""
    if not shutil.which("git") or not (REPO_ROOT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_names() -> list[str]:
    """``"<name>, <driver>"`` for each NVIDIA GPU, from NVML (empty without a driver or nvidia-ml-py)."""
    from pipeline.core.gpu import gpu_names as nvml_gpu_names

    return nvml_gpu_names()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def now_utc() -> str:
    """The current UTC time, ISO 8601 to the millisecond (the run's ``started_at`` / ``finished_at``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def job_gpu() -> dict | None:
    """The GPU this process was pinned to by a per-GPU sweep (``gpus.per_job``), or None.

    Read through ``sys.modules``: a process that never imported :mod:`pipeline.optimize.gpus` claimed no GPU.
    """
    gpus = sys.modules.get("pipeline.optimize.gpus")
    return gpus.job_gpu() if gpus is not None else None


def environment(command_line: str = "", config: dict | None = None) -> dict:
    """Everything a reader needs to reproduce a report (``finished_at`` is added when the stages end)."""
    pinned = job_gpu()
    return {
        "started_at": now_utc(),
        "command_line": command_line or " ".join(["python", *sys.argv]),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "gpus": gpu_names(),
        "git_commit": git_commit(),
        "packages": package_versions(),
        **({"job_gpu": pinned} if pinned is not None else {}),
        "config": config,
    }
