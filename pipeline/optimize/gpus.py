"""One job per GPU of a host: a sweep's job processes claim a GPU each and stay pinned to it.

``+sweep=gpus`` runs a multirun through the joblib launcher with one worker process per visible GPU
(``hydra.launcher.n_jobs=${gpu_count:...}``) and ``gpus.per_job=true``. At the start of every job,
:func:`claim_gpu` (called by ``pipeline/run.py`` before anything imports CUDA or TensorRT) takes an exclusive
``fcntl.flock`` on ``<lock_dir>/gpu-<host>-<id>.lock`` for the first free GPU id and sets
``CUDA_VISIBLE_DEVICES`` to it. The lock file stays open, so the claim lasts as long as the process:

- joblib's (loky) workers are reused across jobs, and a process that has made a CUDA context cannot move it to
  another device, so a worker keeps the GPU it claimed for all its jobs ("one worker per GPU, pinned for its life");
- the lock is the operating system's: it goes when the process ends, however it ends (no stale claims);
- two processes never hold one GPU's lock at once, so two builds or two timed runs never share a GPU; a process that
  finds every GPU held waits up to ``gpus.wait_s`` (a job of submitit's local executor, one process per job, waits
  for a job before it to end) and then fails with the holders' process ids.

Each job records its GPU (:func:`job_gpu`: the id, host, process id, and from NVML the name, UUID and maximum
clocks) in its report's ``environment.job_gpu``; the sweep's comparison lists which job ran on which GPU and checks
from the jobs' start and end times that no two of them overlapped on one GPU.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.core.errors import PipelineError

#: Lock files live here under ``engines_dir`` unless ``gpus.lock_dir`` says otherwise.
LOCK_SUBDIR = ".gpu-locks"


@dataclass
class Claim:
    """This process's GPU: the id it was pinned to and the open (locked) lock file that holds it."""

    id: str
    lock_path: Path
    handle: IO[str] = field(repr=False)
    offered: List[str]
    claimed_at: str
    jobs: int = 0


#: The claim of this process (None until :func:`claim_gpu` succeeds; then kept until the process ends).
_CLAIM: Optional[Claim] = None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def visible_gpus() -> List[str]:
    """The GPU ids this process may hand out: ``CUDA_VISIBLE_DEVICES``'s entries when it is set (an empty value:
    none), else NVML's ordinals ``"0".."N-1"``, else ``[]`` (no NVML, no driver or no GPU)."""
    from pipeline.core.gpu import cuda_visible_entries, nvml  # noqa: PLC0415

    entries = cuda_visible_entries()
    if entries is not None:
        out: List[str] = []
        for entry in entries:
            if entry == "-1":  # CUDA stops at the first invalid ordinal; -1 is the usual "no GPU"
                break
            out.append(entry)
        return out
    pynvml, _ = nvml()
    if pynvml is None:
        return []
    try:
        return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError:
        return []
    finally:
        pynvml.nvmlShutdown()


def gpu_count(ids: Optional[Sequence[Any]] = None) -> int:
    """How many job processes a per-GPU sweep runs: ``len(ids)`` when given, else the visible GPUs, at least 1."""
    if ids:
        return len(list(ids))
    return max(1, len(visible_gpus()))


def register_resolvers() -> None:
    """``${gpu_count:}`` / ``${gpu_count:${gpus.ids}}`` for the sweep preset's ``hydra.launcher.n_jobs``."""
    from omegaconf import OmegaConf  # noqa: PLC0415

    if not OmegaConf.has_resolver("gpu_count"):
        OmegaConf.register_new_resolver("gpu_count", lambda ids=None: gpu_count(ids))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"


def lock_path(lock_dir: str | os.PathLike, gpu_id: str, host: Optional[str] = None) -> Path:
    """``<lock_dir>/gpu-<host>-<id>.lock``: the host is in the name, since ``engines_dir`` may be shared by hosts."""
    return Path(lock_dir) / f"gpu-{_slug(host or socket.gethostname())}-{_slug(gpu_id)}.lock"


def _try_lock(path: Path) -> Optional[IO[str]]:
    """The open file with an exclusive lock on it, or None when another process holds it."""
    import fcntl  # noqa: PLC0415 - POSIX only

    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open: the lock lives as long as the file
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _holder(path: Path) -> str:
    """Who holds a lock, from what the holder wrote into it (``pid 1234 since <time>``)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "unknown"
    return f"pid {info.get('pid', '?')} since {info.get('claimed_at', '?')}"


def claim_gpu(lock_dir: str | os.PathLike, gpus: Sequence[str], wait_s: float = 600.0, poll_s: float = 0.2,
              log: Any = print) -> Optional[str]:
    """Claim one of ``gpus`` for this process and pin the process to it (``CUDA_VISIBLE_DEVICES``).

    Call it before anything in the process imports CUDA, TensorRT or torch.cuda. A process that already holds a claim
    keeps it (its CUDA context, if any, lives on that GPU) and gets the same id back.

    Args:
        lock_dir: folder of the lock files (created).
        gpus: the ids to try, in order (CUDA ordinals, UUIDs, or fake ids in tests).
        wait_s: how long to wait when every id is held.
        poll_s: the wait between two rounds of tries.
        log: progress messages.

    Returns:
        The id claimed, or None when ``gpus`` is empty (nothing to pin; the job runs as it would alone).

    Raises:
        PipelineError: every GPU stayed held for ``wait_s``: the message names the holders' process ids.
    """
    global _CLAIM
    if _CLAIM is not None:
        _CLAIM.jobs += 1
        return _CLAIM.id
    ids = [str(g) for g in gpus]
    if not ids:
        return None
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline, waited = time.monotonic() + max(float(wait_s), 0.0), False
    while True:
        for gpu_id in ids:
            path = lock_path(lock_dir, gpu_id)
            handle = _try_lock(path)
            if handle is None:
                continue
            claimed_at = _now()
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "gpu": gpu_id,
                                     "claimed_at": claimed_at}) + "\n")
            handle.flush()
            _CLAIM = Claim(gpu_id, path, handle, ids, claimed_at, jobs=1)
            os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA ordinals = NVML's (nvidia-smi's)
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
            log(f"[gpus] pid {os.getpid()} claimed GPU {gpu_id} of {','.join(ids)} ({path})")
            return gpu_id
        if time.monotonic() >= deadline:
            holders = "; ".join(f"GPU {g}: {_holder(lock_path(lock_dir, g))}" for g in ids)
            raise PipelineError(
                f"No free GPU after {wait_s:g} s: all {len(ids)} GPU(s) are held by other job processes ({holders}).",
                f"Run at most {len(ids)} job processes at once (hydra.launcher.n_jobs={len(ids)}, which +sweep=gpus "
                f"sets), raise gpus.wait_s, or remove the lock files in {lock_dir} only if those processes are gone.")
        if not waited:
            log(f"[gpus] pid {os.getpid()}: all {len(ids)} GPU(s) are held; waiting up to {wait_s:g} s")
            waited = True
        time.sleep(poll_s)


def claimed() -> Optional[str]:
    """The id this process is pinned to (None without a claim)."""
    return _CLAIM.id if _CLAIM is not None else None


def _nvml_facts(gpu_id: str) -> Dict[str, Any]:
    """NVML's name, UUID and maximum clocks of the claimed GPU (``{}`` for a fake id or without NVML)."""
    from pipeline.core.gpu import device_facts  # noqa: PLC0415

    facts = device_facts(0)  # CUDA device 0 of this process, i.e. the claimed GPU (CUDA_VISIBLE_DEVICES=<id>)
    if not facts:
        return {}
    keep = ("name", "uuid", "compute_capability", "driver", "max_sm_clock_mhz", "max_mem_clock_mhz", "power_limit_w")
    return {k: facts.get(k) for k in keep}


def job_gpu() -> Optional[Dict[str, Any]]:
    """What a report records of this job's GPU (``environment.job_gpu``), or None when the process claimed none:
    ``{id, host, pid, claimed_at, jobs_in_process, offered, lock, name, uuid, max_sm_clock_mhz, ...}``."""
    if _CLAIM is None:
        return None
    record: Dict[str, Any] = {"id": _CLAIM.id, "host": socket.gethostname(), "pid": os.getpid(),
                              "claimed_at": _CLAIM.claimed_at, "jobs_in_process": _CLAIM.jobs,
                              "offered": list(_CLAIM.offered), "lock": str(_CLAIM.lock_path)}
    record.update(_nvml_facts(_CLAIM.id))
    return record


def pin_job(engines_dir: str | os.PathLike, lock_dir: Optional[str] = None, ids: Optional[Sequence[str]] = None,
            wait_s: float = 600.0, log: Any = print) -> Optional[str]:
    """A sweep job's claim (``gpus.per_job=true``): ``ids`` or :func:`visible_gpus`, locks in ``lock_dir`` or
    ``<engines_dir>/.gpu-locks``. Returns the id, or None where there is no GPU to pin to (said in ``log``)."""
    if _CLAIM is not None:
        return claim_gpu(lock_dir or Path(engines_dir) / LOCK_SUBDIR, [_CLAIM.id], wait_s, log=log)
    offered = [str(i) for i in ids] if ids else visible_gpus()
    if not offered:
        log("[gpus] gpus.per_job=true but no GPU is visible (CUDA_VISIBLE_DEVICES empty, or no NVML/driver): "
            "the job is not pinned")
        return None
    return claim_gpu(Path(lock_dir) if lock_dir else Path(engines_dir) / LOCK_SUBDIR, offered, wait_s, log=log)


def _release_for_tests() -> None:
    """Drop this process's claim (tests only: a real process keeps it until it ends)."""
    global _CLAIM
    if _CLAIM is not None:
        _CLAIM.handle.close()
        _CLAIM = None


# ------------------------------------------------------------------------------ the sweep's comparison
def _time(text: Any) -> Optional[float]:
    """Seconds since the epoch of an ISO 8601 time (None when missing or unreadable)."""
    if not text:
        return None
    try:
        return _dt.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def gpu_key(row: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    """``(host, id)`` of the GPU a comparison row's job was pinned to (None without one)."""
    gpu = row.get("gpu") or {}
    return (str(gpu.get("host") or "?"), str(gpu["id"])) if gpu.get("id") is not None else None


def overlaps(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Pairs of jobs that ran on one GPU at the same time, from their ``started_at`` / ``finished_at``.

    Returns:
        ``{pairs: [(i, j), ...], checked: jobs with a GPU and both times, unchecked: jobs with a GPU but no times}``;
        two jobs overlap when each started before the other finished.
    """
    spans: Dict[Tuple[str, str], List[Tuple[int, float, float]]] = {}
    unchecked = 0
    for i, row in enumerate(rows):
        key = gpu_key(row)
        if key is None:
            continue
        start, end = _time(row.get("started_at")), _time(row.get("finished_at"))
        if start is None or end is None:
            unchecked += 1
            continue
        spans.setdefault(key, []).append((i, start, end))
    pairs = []
    for jobs in spans.values():
        jobs.sort(key=lambda s: s[1])
        for a in range(len(jobs)):
            for b in range(a + 1, len(jobs)):
                if jobs[b][1] < jobs[a][2] and jobs[a][1] < jobs[b][2]:
                    pairs.append((jobs[a][0], jobs[b][0]))
    return {"pairs": sorted(pairs), "checked": sum(len(v) for v in spans.values()), "unchecked": unchecked}


def gpu_label(gpu: Optional[Mapping[str, Any]]) -> str:
    """Short text for the comparison table's ``gpu`` column: the id and NVML's name."""
    if not gpu or gpu.get("id") is None:
        return "-"
    return str(gpu["id"]) + (f" {gpu['name']}" if gpu.get("name") else "")


def _clock(row: Mapping[str, Any]) -> str:
    tel = row.get("gpu_telemetry") or {}
    sm = (tel.get("sm_clock_mhz") or {}).get("median") if tel.get("available") else None
    return f", median SM clock {sm:.0f} MHz" if sm else ""


def _hms(text: Any) -> str:
    t = str(text or "?")
    return t[11:23] if len(t) >= 19 else t


def gpus_markdown(rows: Sequence[Mapping[str, Any]], label: Callable[[int], str]) -> List[str]:
    """The comparison's "GPUs" section (``[]`` when no job was pinned to a GPU): each GPU with its NVML facts and
    the jobs it ran (process, start and end, the clock NVML sampled while it was timed), then the overlap check."""
    by_gpu: Dict[Tuple[str, str], List[int]] = {}
    for i, row in enumerate(rows):
        key = gpu_key(row)
        if key is not None:
            by_gpu.setdefault(key, []).append(i)
    if not by_gpu:
        return []
    hosts = sorted({h for h, _ in by_gpu})
    md = ["", "## GPUs", "",
          f"{sum(len(v) for v in by_gpu.values())} job(s) on {len(by_gpu)} GPU(s) of {', '.join(hosts)}, one job "
          "process per GPU (gpus.per_job):", ""]
    for (host, gid), idx in sorted(by_gpu.items()):
        g = rows[idx[0]]["gpu"]
        facts = [str(g[k]) for k in ("name", "uuid") if g.get(k)]
        for key, what in (("max_sm_clock_mhz", "max SM"), ("max_mem_clock_mhz", "max memory")):
            if g.get(key):
                facts.append(f"{what} {float(g[key]):.0f} MHz")
        md.append(f"- GPU {gid} on {host} " + (f"({', '.join(facts)})" if facts
                                               else "(no NVML facts: a fake id, or no NVML)"))
        for i in sorted(idx, key=lambda i: _time(rows[i].get("started_at")) or 0.0):
            r = rows[i]
            md.append(f"  - {label(i)}: pid {r['gpu'].get('pid', '?')}, {_hms(r.get('started_at'))} to "
                      f"{_hms(r.get('finished_at'))} UTC{_clock(r)}")
    ov = overlaps(rows)
    if ov["pairs"]:
        md.append("- **overlap**: " + "; ".join(f"{label(a)} and {label(b)} ran on GPU {gpu_key(rows[a])[1]} at the "
                                                f"same time" for a, b in ov["pairs"]))
    else:
        md.append(f"- no two jobs overlapped on one GPU ({ov['checked']} job(s) checked by their start and end times"
                  + (f"; {ov['unchecked']} without both times not checked" if ov["unchecked"] else "") + ")")
    unpinned = [i for i, r in enumerate(rows) if gpu_key(r) is None]
    if unpinned:
        md.append(f"- {len(unpinned)} job(s) recorded no GPU: " + ", ".join(label(i) for i in unpinned))
    return md
