"""The profile path goes through TrtFeatures: no TensorRT is a skip, a TensorRT without name-based I/O an error."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import ProfileConfig
from pipeline.core.errors import PipelineError, StageSkipped
from pipeline.trt import profile_engine

_spec = importlib.util.spec_from_file_location("trt_fake_module", Path(__file__).parent / "test_trt_fake.py")
_fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fake)


def test_without_tensorrt_the_stage_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    with pytest.raises(StageSkipped, match="TensorRT is not importable"):
        profile_engine(tmp_path / "x.plan", {"x": np.zeros((1, 2), np.float32)}, ProfileConfig())


def test_tensorrt_without_name_based_io_is_refused_by_feature(tmp_path):
    trt = _fake.make_fake_trt("8.6")
    del trt.IExecutionContext.execute_async_v3  # an older TensorRT: bindings by index only
    with pytest.raises(PipelineError) as err:
        profile_engine(tmp_path / "x.plan", {"x": np.zeros((1, 2), np.float32)}, ProfileConfig(), trt=trt)
    assert "execute_async_v3" in err.value.message and "8.5" in err.value.hint


def test_importing_the_packages_loads_no_runtime():
    import subprocess

    code = ("import sys, pipeline.trt, pipeline.ort, pipeline.core.accuracy, pipeline.core.gpu, pipeline.profile; "
            "print(sorted(m for m in ('tensorrt', 'pycuda', 'onnxruntime', 'torch', 'polygraphy', 'pynvml') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"
