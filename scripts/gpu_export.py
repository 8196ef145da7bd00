#!/usr/bin/env python
"""Export zoo models to ONNX (opset 17, dynamic batch) for the GPU sandbox's TensorRT 8.6.

Run with the torch interpreter: ``gpukit-torch scripts/gpu_export.py outputs/gpu/onnx resnet50 mobilenet_v2``.
Uses the pipeline's own export (``pipeline.export.export_onnx``: checked against ONNX Runtime, IR <= 9
so the sandbox's onnx 1.17 loads it); falls back to a plain ``torch.onnx.export`` if that is missing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(out_dir: str, *names: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from pipeline.core.config import ModelConfig
    from pipeline.models import build_model

    summary = {}
    for name in names:
        t0 = time.perf_counter()
        bundle = build_model(ModelConfig(name=name, pretrained=False))
        path = out / f"{name}.onnx"
        try:
            from pipeline.export import export_onnx

            res = export_onnx(bundle, path, opset=17, batch_size=2)
            summary[name] = {"onnx": str(path), "opset": res.opset, "ir_version": res.ir_version,
                             "check_passed": res.check.get("passed"), "parameters": res.parameters}
        except ImportError as err:  # export module not there yet: inline, same settings
            import torch

            x = torch.zeros((2, *bundle.inputs[0].shape))  # InputSpec.shape is per sample
            torch.onnx.export(bundle.module.eval(), (x,), str(path), dynamo=False, opset_version=17,
                              input_names=[bundle.inputs[0].name], output_names=list(bundle.output_names),
                              dynamic_axes={bundle.inputs[0].name: {0: "batch"}})
            summary[name] = {"onnx": str(path), "inline_export": str(err)}
        summary[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(name, summary[name], flush=True)
    (out / "export.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
