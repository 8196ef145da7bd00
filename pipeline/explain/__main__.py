"""``python -m pipeline.explain RUN_A [RUN_B] [--onnx A.onnx [B.onnx]] [--out DIR]``.

A run folder holds the profile's ``measurement.json`` (or a ``report.json``) and the engine sidecar
(``*.plan.json``, else the one next to the engine that ``engine.json`` names). The ONNX is the sidecar's
``built_from`` when that file exists, else ``--onnx``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from pipeline.core.errors import PipelineError


def _first(folder: Path, *names: str) -> Optional[Path]:
    for n in names:
        hits = sorted(folder.glob(n))
        if hits:
            return hits[0]
    return None


def engine_run(folder: Path, onnx: Optional[Path] = None, label: str = ""):
    """The :class:`EngineRun` of a run folder."""
    from pipeline.explain.stage import EngineRun

    folder = Path(folder)
    meas = _first(folder, "measurement.json", "report.json")
    if meas is None:
        raise PipelineError(f"{folder} has no measurement.json or report.json", "point at a profiled run's folder")
    measured = json.loads(meas.read_text()).get("measured") or {}
    if measured.get("backend") == "onnxruntime":  # no engine: the model ONNX Runtime ran is in the folder
        model = folder / str(measured.get("measured_model") or "")
        return EngineRun(meas, None, Path(onnx) if onnx else model, label)
    side = _first(folder, "*.plan.json")
    if side is None and (folder / "engine.json").is_file():
        record = json.loads((folder / "engine.json").read_text())
        cand = Path(record.get("engine", "") + ".json")
        # The engine's own sidecar; else the copy the build stage keeps inside engine.json (a committed run folder).
        side = cand if cand.is_file() else folder / "engine.json" if isinstance(record.get("sidecar"), dict) else None
    if side is None:
        raise PipelineError(f"{folder} has no engine sidecar (*.plan.json)", "copy engines/<engine>.plan.json there")
    if onnx is None:
        built = json.loads(side.read_text()).get("built_from")
        onnx = Path(built) if built and Path(built).is_file() else _first(folder, "*.onnx")
    if onnx is None:
        raise PipelineError(f"no ONNX for {folder}", "pass --onnx with the model the engine was built from")
    return EngineRun(meas, side, Path(onnx), label)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.explain", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="one or two run folders (B is compared against A)")
    ap.add_argument("--onnx", nargs="*", type=Path, default=[], help="ONNX per run (default: from the sidecar)")
    ap.add_argument("--labels", nargs="*", default=[], help="names of the engines in the tables")
    ap.add_argument("--dims", nargs="*", default=[], metavar="NAME=VALUE", help="symbolic dims, e.g. sequence=128")
    ap.add_argument("--hardware", default=None, help="hardware file name (default: the sidecar's)")
    ap.add_argument("--out", type=Path, default=Path("explain"))
    args = ap.parse_args(argv)
    from pipeline.explain.stage import ExplainInputs, ExplainSettings, run

    try:
        if len(args.runs) > 2:
            raise PipelineError("at most two runs", "pass RUN_A [RUN_B]")
        runs = [engine_run(r, args.onnx[i] if i < len(args.onnx) else None,
                           args.labels[i] if i < len(args.labels) else "") for i, r in enumerate(args.runs)]
        dims = {k: int(v) for k, _, v in (d.partition("=") for d in args.dims)}
        out = run(ExplainInputs(runs[0], runs[1] if len(runs) > 1 else None), ExplainSettings(dims, args.hardware),
                  args.out)
    except PipelineError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out.results}, {out.markdown}" + "".join(f", {f}" for f in out.figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
