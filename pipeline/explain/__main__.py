"""``python -m pipeline.explain RUN_A [RUN_B] [--onnx A.onnx [B.onnx]] [--out DIR]``.

A run folder holds the profile's ``measurement.json`` (or a ``report.json``) and the engine sidecar
(``*.plan.json``, else the one next to the engine that ``engine.json`` names). The ONNX is the sidecar's
``built_from`` when that file exists, else ``--onnx``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.errors import PipelineError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.explain", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="one or two run folders (B is compared against A)")
    ap.add_argument("--onnx", nargs="*", type=Path, default=[], help="ONNX per run (default: from the sidecar)")
    ap.add_argument("--labels", nargs="*", default=[], help="names of the engines in the tables")
    ap.add_argument("--dims", nargs="*", default=[], metavar="NAME=VALUE", help="symbolic dims, e.g. sequence=128")
    ap.add_argument("--hardware", default=None, help="hardware file name (default: the sidecar's)")
    ap.add_argument("--out", type=Path, default=Path("explain"))
    args = ap.parse_args(argv)
    from pipeline.explain.stage import ExplainInputs, ExplainSettings, engine_run, run

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
