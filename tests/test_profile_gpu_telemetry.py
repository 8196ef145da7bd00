"""NVML telemetry and GPU facts degrade to a reason, never an error, without NVML or a GPU."""

from __future__ import annotations

import sys

import pytest

from pipeline.core import gpu
from pipeline.core.environment import environment


@pytest.fixture
def no_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError


def test_sampler_without_pynvml_reports_why(no_pynvml):
    with gpu.NvmlSampler(period_s=0.001) as s:
        pass
    res = s.result()
    assert res["available"] is False and "pynvml is not installed" in res["reason"] and "nvidia-ml-py" in res["reason"]
    assert gpu.device_facts() is None and gpu.gpu_names() == []
    assert environment()["gpus"] == []


def test_sampler_here_never_raises():
    # With NVML and a GPU (the GPU sandbox) it samples; on a CPU machine it says why not.
    with gpu.NvmlSampler(period_s=0.005) as s:
        sum(range(10000))
    res = s.result()
    if res["available"]:
        assert res["samples"] >= 1 and res["device"]
    else:
        assert res["reason"] and set(res) == {"available", "reason"}


def test_summary_min_median_max_per_quantity():
    samples = [{"sm_clock_mhz": 1980.0, "power_w": 300.0}, {"sm_clock_mhz": 1755.0, "power_w": 500.0},
               {"sm_clock_mhz": 1830.0}]
    out = gpu.summarize(samples)
    assert out["sm_clock_mhz"] == {"min": 1755.0, "median": 1830.0, "max": 1980.0}
    assert out["power_w"] == {"min": 300.0, "median": 400.0, "max": 500.0}
    assert "temperature_c" not in out


def test_gpu_info_without_nvml_or_pycuda_explains(no_pynvml, monkeypatch):
    from pipeline.core.errors import PipelineError
    from pipeline.trt.features import gpu_info

    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(PipelineError) as err:
        gpu_info()
    assert "nvml:" in err.value.message and "pycuda:" in err.value.message
