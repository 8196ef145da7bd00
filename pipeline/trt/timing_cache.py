"""Timing caches: one file per GPU and TensorRT version, kept in memory across builds of one process.

A timing cache holds the kernel timings of earlier builds, so a rebuild skips most tactic timing.
TensorRT 8.6.0 writes caches it cannot read back (Myelin entries); those are detected and not saved.
Several processes (the jobs of a sweep) share one file: a save holds the file's lock, merges what another
process saved since this build read the file (``ITimingCache.combine``) and replaces the file whole (write, then
rename), so no save loses another's timings and no reader sees half a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from pipeline.core.artifacts import file_lock, write_bytes
from pipeline.trt.features import GpuInfo, TrtFeatures


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


def timing_cache_path(engines_dir: Path, features: TrtFeatures, gpu: GpuInfo) -> Path:
    """Timing caches hold kernel timings for one GPU and TensorRT version: one file per pair."""
    return Path(engines_dir) / f"timing-{_slug(gpu.name)}-trt{features.library_version}.cache"


#: What TensorRT logs when it drops a timing cache it cannot deserialize (8.6.0: Myelin entries),
#: while ``set_timing_cache`` still returns True.
_CACHE_REJECTED = "timing cache will not be used"


def _cache_messages(logger: Any, since: int) -> List[str]:
    return [m for _, m in logger.messages[since:] if "timing cache" in m.lower() or "myelin" in m.lower()]


#: Timing caches of this process's builds, by cache file: a later build in the same process (a
#: Hydra sweep, several precisions, the benchmark) takes the cache object from memory, which works
#: even where TensorRT cannot deserialize its own file (8.6.0). Each cache is kept with the builder
#: whose config created it: a TensorRT 8.6 cache must not outlive that builder (a segfault on the H200).
_PROCESS_TIMING_CACHES: Dict[str, Tuple[Any, Any]] = {}


_RETIRED_TIMING_CACHES: List[Tuple[Any, Any]] = []


def forget_process_timing_caches() -> None:
    """Stop reusing the in-memory timing caches (the next build reads the cache file, as a new process would).

    The objects stay alive until the process ends: clearing them mid-process segfaulted on the H200.
    """
    _RETIRED_TIMING_CACHES.extend(_PROCESS_TIMING_CACHES.values())
    _PROCESS_TIMING_CACHES.clear()


def attach_timing_cache(config: Any, blob: bytes, logger: Any) -> Tuple[Any, bool, str]:
    """Give ``config`` a timing cache made from ``blob`` (empty: a fresh cache).

    Returns:
        ``(cache, loaded, note)``: the cache object attached; loaded is True when a non-empty
        cache was accepted; note says why not when TensorRT refused it (the build then starts
        from an empty cache).
    """
    since = len(logger.messages)
    tcache = config.create_timing_cache(blob)
    # ignore_mismatch=False: a cache from another device or version is rejected, not trusted.
    ok = bool(config.set_timing_cache(tcache, False))
    msgs = _cache_messages(logger, since)
    if any(_CACHE_REJECTED in m.lower() for m in msgs):
        return tcache, False, "TensorRT rejected the timing cache: " + "; ".join(msgs)[:300]
    if blob and not ok:
        return tcache, False, "TensorRT did not accept the timing cache (set_timing_cache returned False)"
    return tcache, bool(blob) and ok, ""


def merge_cache_file(config: Any, cache_file: Path, logger: Any) -> bool:
    """Combine the timings in ``cache_file`` (another process may have saved it since this build read it) into the
    build's cache. False, and nothing changed, without a file, where this TensorRT has no ``combine``, or when
    TensorRT refuses the file or the merge."""
    live = config.get_timing_cache()
    combine = getattr(live, "combine", None)
    if combine is None or not cache_file.is_file():
        return False
    blob = cache_file.read_bytes()
    if not blob:
        return False
    since = len(logger.messages)
    try:
        other = config.create_timing_cache(blob)
        if any(_CACHE_REJECTED in m.lower() for m in _cache_messages(logger, since)):
            return False
        return bool(combine(other, False))  # ignore_mismatch=False: never take another device's timings
    except Exception:  # noqa: BLE001 - a merge is a bonus; the build's own cache is still saved
        return False


def save_timing_cache(builder: Any, config: Any, cache_file: Path, logger: Any) -> Tuple[bool, str]:
    """Write the build's timing cache to ``cache_file`` if TensorRT can read it back.

    TensorRT 8.6.0 serializes caches whose Myelin entries it cannot deserialize; such a cache
    would be rejected whole by every later build (and replace a good one), so it is read back in
    a scratch builder config first and written (atomically) only when that load succeeds.

    The file's lock (``<cache>.lock``) is held from the merge with the file's timings (:func:`merge_cache_file`) to
    the rename, so concurrent saves by the jobs of a sweep add up instead of the last one winning.

    Returns:
        ``(saved, note)``; the note says why nothing was written.
    """
    with file_lock(cache_file.with_name(cache_file.name + ".lock")):
        merge_cache_file(config, cache_file, logger)
        blob = bytes(config.get_timing_cache().serialize())
        _, loaded, note = attach_timing_cache(builder.create_builder_config(), blob, logger)
        if not loaded:
            kept = "the previous cache file is kept" if cache_file.is_file() else "no cache file is written"
            return False, (f"this build's timing cache could not be read back ({note or 'empty cache'}); {kept}: "
                           "the next build times its kernels again")
        write_bytes(cache_file, blob)
    return True, ""


@dataclass
class TimingCacheUse:
    """How one build used the timing cache (the sidecar's ``timing_cache`` entry).

    Attributes:
        path: the cache file (None: caching off or unsupported).
        owner / cache: the builder that created the cache object, and the object.
        loaded: a non-empty cache was accepted.
        source: ``memory`` (this process), ``file`` or None.
        note: why a cache file was refused.
        bytes_in: size of the cache file read, bytes.
        saved / save_note: whether this build's cache was written, and why not.
    """

    path: Optional[Path] = None
    owner: Any = None
    cache: Any = None
    loaded: bool = False
    source: Optional[str] = None
    note: str = ""
    bytes_in: int = 0
    saved: bool = False
    save_note: str = ""

    def to_dict(self) -> Dict[str, Any]:
        """The sidecar entry."""
        return {"path": str(self.path) if self.path else None, "loaded": self.loaded, "source": self.source,
                "note": self.note, "bytes_in": self.bytes_in if self.path is not None else 0,
                "saved": self.saved, "save_note": self.save_note}


def use_timing_cache(config: Any, builder: Any, cache_file: Optional[Path], logger: Any,
                     log: Callable[[str], None]) -> TimingCacheUse:
    """Attach this process's cache for ``cache_file`` (else the file's, else a fresh one) to ``config``."""
    use = TimingCacheUse(path=cache_file, owner=builder)
    if cache_file is None:
        return use
    held = _PROCESS_TIMING_CACHES.get(str(cache_file))
    if held is not None and bool(config.set_timing_cache(held[1], False)):
        (use.owner, use.cache), use.loaded, use.source = held, True, "memory"
        return use
    blob = cache_file.read_bytes() if cache_file.is_file() else b""
    use.bytes_in = len(blob)
    use.cache, use.loaded, use.note = attach_timing_cache(config, blob, logger)
    use.source = "file" if use.loaded else None
    if use.note:
        log(f"[build] {use.note}")
    return use


def keep_timing_cache(use: TimingCacheUse, builder: Any, config: Any, logger: Any, log: Callable[[str], None]) -> None:
    """After a successful build: keep the cache for this process and save it when TensorRT can read it back."""
    if use.path is None:
        return
    _PROCESS_TIMING_CACHES[str(use.path)] = (use.owner, use.cache)
    use.saved, use.save_note = save_timing_cache(builder, config, use.path, logger)
    if use.save_note:
        log(f"[build] {use.save_note}")
