"""Datasets as files: the calibration and evaluation samples every data-using stage reads.

The orchestrator draws the samples once per run (``data/calib.npz``, ``data/eval.npz``, each with a
sidecar naming the source) so that quantize, profile and later stages read the very same arrays, and a
stage started from another run's folder sees what that run saw. Arrays keep the names of the model's
inputs; labels, when the source has them, are stored under ``__labels__``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List

import numpy as np

from pipeline.core.artifacts import atomic_path
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.data import Dataset

LABELS_KEY = "__labels__"
META_KEY = "__meta__"


def save_dataset(ds: "Dataset", path: Path) -> Path:
    """Write ``ds`` to ``path`` (``.npz``, atomically)."""
    arrays = dict(ds.inputs)
    if ds.labels is not None:
        arrays[LABELS_KEY] = np.asarray(ds.labels)
    meta = {"name": ds.name, "description": ds.description, "notes": list(ds.notes)}
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return Path(path)


def load_dataset_file(path: Path, input_names: List[str] | None = None) -> "Dataset":
    """Read a dataset written by :func:`save_dataset` (or any ``.npz`` keyed by input names).

    Raises:
        PipelineError: missing or unreadable file, or an input the model needs is not in it.
    """
    from pipeline.data import Dataset

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"Dataset file {path} does not exist.",
                            "Point inputs.calib_data / inputs.eval_data at an .npz written by a run (data/*.npz).")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays: Dict[str, np.ndarray] = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise PipelineError(f"Dataset {path} is not an .npz file of arrays ({type(err).__name__}).",
                            "Give an .npz written by numpy.savez (one array per model input, optional "
                            "__labels__), or drop inputs.*_data to draw samples from data=...") from err
    meta = {}
    if META_KEY in arrays:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    labels = arrays.pop(LABELS_KEY, None)
    missing = [n for n in (input_names or []) if n not in arrays]
    if missing:
        raise PipelineError(f"Dataset {path} has no array for the model input(s) {missing} (it has {sorted(arrays)}).",
                            "Use a dataset made for this model, or drop inputs.*_data to draw new samples.")
    return Dataset(name=meta.get("name", path.stem), inputs=arrays, labels=labels,
                   description=meta.get("description", f"samples from {path}"), notes=list(meta.get("notes") or []))
