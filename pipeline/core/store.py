"""Artifacts between stages: JSON sidecars, content hashes, and one content-addressed store.

Every artifact a stage writes gets a sidecar ``<file>.json`` saying what it is and how it was made:

    {"kind": "onnx", "producer": "export", "inputs": {"calib_data": {"path": ..., "sha256": ...}},
     "config": {...the config subset that shaped it...}, "versions": {...}, "gpu": "NVIDIA H200" | null,
     "key": "<store key>", "sha256": "<content hash of the file>", "created": "<UTC ISO time>"}

Expensive artifacts (ONNX, Q/DQ ONNX, calibration cache; engines have their own cache in ``pipeline.trt``)
live in a store keyed by a hash of everything that shaped them (input hashes + config + versions + the
stage's own code). Hydra gives every run a new folder, so resuming an interrupted run is reuse: the
same command finds the finished stages' entries in the store and links them into its new folder.

Store entries are directories ``<root>/<stage>/<name>-<key>/`` filled in a temporary directory and
renamed into place when complete, so a parallel sweep job or a Ctrl-C never exposes half an entry.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

from pipeline.core.artifacts import apply_umask, file_sha256, short_hash, write_json

#: Name of the file that marks a store entry complete (written last, inside the temporary directory).
ENTRY_MANIFEST = "entry.json"


def sidecar_path(path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def is_sidecar(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the sidecar of a file beside it (``x.onnx.json`` next to ``x.onnx``)."""
    p = Path(path)
    return p.suffix == ".json" and p.with_suffix("").suffix != "" and p.with_suffix("").exists()


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of what a file holds.

    ``.npz`` files are hashed by their arrays (name, dtype, shape, bytes), not their bytes on disk:
    a zip records write times, and the same samples must give the same key on every run.
    """
    p = Path(path)
    if p.suffix != ".npz":
        return file_sha256(p)
    import zipfile

    import numpy as np

    h = hashlib.sha256()
    try:
        with np.load(p, allow_pickle=False) as data:
            for name in sorted(data.files):
                arr = np.ascontiguousarray(data[name])
                h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
                h.update(arr.tobytes())
    except (OSError, ValueError, zipfile.BadZipFile):
        return file_sha256(p)  # not an .npz of arrays: the stage that reads it says so
    return h.hexdigest()


def read_sidecar(path: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """The sidecar of ``path`` as a dict, or None when it has none (or it is unreadable)."""
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_sidecar(path: str | os.PathLike, *, kind: str, producer: str, inputs: Mapping[str, Any] | None = None,
                  config: Mapping[str, Any] | None = None, versions: Mapping[str, Any] | None = None,
                  key: str = "", gpu: str | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``<path>.json`` describing the artifact at ``path`` (which must exist).

    Args:
        path: the artifact.
        kind: what it is (``onnx``, ``qdq_onnx``, ``calib_cache``, ``dataset``, ``results``...).
        producer: the stage (or step) that wrote it.
        inputs: ``{name: {"path": str, "sha256": str}}`` of the files it was made from.
        config: the config subset that shaped it.
        versions: tool versions that shaped it.
        key: the store key of the entry it belongs to ("" outside the store).
        gpu: the GPU the artifact is tied to (engines, GPU measurements), else None.
        extra: anything a consumer needs to use the file alone (e.g. the model's input specs).
    """
    doc: Dict[str, Any] = {
        "kind": kind,
        "producer": producer,
        "file": Path(path).name,
        "sha256": content_hash(path),
        "inputs": dict(inputs or {}),
        "config": dict(config or {}),
        "versions": dict(versions or {}),
        "gpu": gpu,
        "key": key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    doc.update(dict(extra or {}))
    return write_json(sidecar_path(path), doc)


def complete_sidecar(path: str | os.PathLike, *, kind: str, producer: str, inputs: Mapping[str, Any],
                     config: Mapping[str, Any], versions: Mapping[str, Any], key: str = "",
                     gpu: str | None = None) -> Path:
    """Write ``path``'s sidecar, keeping what the stage itself put there (e.g. the model description).

    Fields the stage left empty (inputs, config, versions, gpu, key) are filled from the orchestrator's view.
    """
    old = read_sidecar(path) or {}
    extra = {k: v for k, v in old.items()
             if k not in ("kind", "producer", "file", "sha256", "inputs", "config", "versions", "gpu", "key", "created")}
    return write_sidecar(path, kind=old.get("kind") or kind, producer=old.get("producer") or producer,
                         inputs=old.get("inputs") or inputs, config=old.get("config") or config,
                         versions={**versions, **(old.get("versions") or {})}, key=key,
                         gpu=old.get("gpu") or gpu, extra=extra)


def input_record(path: str | os.PathLike) -> Dict[str, str]:
    """``{"path", "sha256"}`` of an input file (the sidecar's hash when it has one and it is current)."""
    return {"path": str(path), "sha256": content_hash(path)}


def source_hash(*packages: str) -> str:
    """Hash of the Python source of ``pipeline`` sub-packages (e.g. ``"export", "models"``).

    Part of every store key, so a code change in a stage never reuses what older code produced.
    """
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in sorted(packages):
        base = root / pkg
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
        for f in files:
            if f.is_file():
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def store_key(stage: str, inputs: Mapping[str, Any], config: Mapping[str, Any], versions: Mapping[str, Any]) -> str:
    """The key of what ``stage`` makes from ``inputs`` under ``config`` and ``versions``."""
    return short_hash({"stage": stage, "inputs": {k: v.get("sha256") if isinstance(v, Mapping) else v
                                                  for k, v in inputs.items()},
                       "config": config, "versions": versions}, n=16)


@dataclass(frozen=True)
class Store:
    """A content-addressed folder of stage outputs, shared by runs, sweep jobs and containers.

    Attributes:
        root: the store's folder (``<engines_dir>/artifacts`` by default).
    """

    root: Path

    def entry_dir(self, stage: str, name: str, key: str) -> Path:
        """Where the entry of ``stage`` for ``key`` lives."""
        return self.root / stage / f"{name}-{key}"

    def lookup(self, stage: str, name: str, key: str) -> Optional[Path]:
        """The complete entry for ``key``, or None."""
        d = self.entry_dir(stage, name, key)
        return d if (d / ENTRY_MANIFEST).is_file() else None

    @contextlib.contextmanager
    def filling(self, stage: str, name: str, key: str) -> Iterator[Path]:
        """Yield a temporary directory to write an entry into; publish it when the block succeeds.

        On an exception (a failed stage, Ctrl-C) the temporary directory is removed and nothing is
        published. When another process published the same key first, its entry is kept.
        """
        final = self.entry_dir(stage, name, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        apply_umask(tmp, directory=True)
        try:
            yield tmp
            write_json(tmp / ENTRY_MANIFEST, {"stage": stage, "name": name, "key": key,
                                              "files": sorted(p.name for p in tmp.iterdir())})
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / ENTRY_MANIFEST).is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def link_or_copy(src: Path, dst: Path) -> Path:
    """Put ``src`` at ``dst`` as a hard link (no copy of large ONNX files), else a copy; atomic."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return dst
