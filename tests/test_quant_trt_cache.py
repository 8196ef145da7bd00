"""TensorRT calibration cache: format details and round trip."""

from __future__ import annotations

import struct

import pytest

from pipeline.core.errors import PipelineError
from pipeline.quantize.trt_cache import (
    calibration_cache_text,
    hex_to_scale,
    read_calibration_cache,
    scale_to_hex,
    trt_version_code,
    write_calibration_cache,
)


def test_hex_is_big_endian_float32_bits():
    assert scale_to_hex(1.0) == "3f800000"
    assert scale_to_hex(0.5) == "3f000000"
    assert hex_to_scale("3f800000") == 1.0
    # ModelOpt's reader: struct.unpack("!f", bytes.fromhex(v))
    assert struct.unpack("!f", bytes.fromhex(scale_to_hex(0.1)))[0] == pytest.approx(0.1)
    assert hex_to_scale("800000") == struct.unpack(">f", bytes.fromhex("00800000"))[0]


def test_version_codes():
    assert trt_version_code("8.6.1") == 8601
    assert trt_version_code("8.5.3.1") == 8503
    assert trt_version_code("10.3.0") == 100300
    assert trt_version_code("10.13.2") == 101302


def test_text_layout_scale_is_amax_over_127():
    text = calibration_cache_text({"input": 127.0, "/conv/Conv_output_0": 2.54}, "8.6.1", "EntropyCalibration2")
    lines = text.splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert lines[1] == "input: 3f800000"
    name, value = lines[2].split(": ")
    assert name == "/conv/Conv_output_0" and hex_to_scale(value) == pytest.approx(0.02)
    assert text.endswith("\n")
    with pytest.raises(ValueError):
        calibration_cache_text({"x": 1.0}, algorithm="KL")


def test_round_trip_and_errors(tmp_path):
    amaxes = {"a": 1.0, "b: with colon": 3.3, "zero": 0.0}
    p = write_calibration_cache(tmp_path / "m.calib.cache", amaxes, "10.3.0", "MinMaxCalibration")
    header, scales = read_calibration_cache(p)
    assert header == "TRT-100300-MinMaxCalibration"
    assert scales["a"] == pytest.approx(1 / 127, rel=1e-7)
    assert scales["b: with colon"] == pytest.approx(3.3 / 127, rel=1e-6)
    assert scales["zero"] > 0  # TensorRT rejects a zero scale
    (tmp_path / "bad").write_text("hello\n")
    with pytest.raises(PipelineError, match="not a TensorRT calibration cache"):
        read_calibration_cache(tmp_path / "bad")
    (tmp_path / "bad2").write_text("TRT-8601-EntropyCalibration2\nx: zz\n")
    with pytest.raises(PipelineError, match="bad scale"):
        read_calibration_cache(tmp_path / "bad2")


def test_importing_the_quantize_package_stays_light():
    import subprocess
    import sys

    code = ("import sys, pipeline.quantize, pipeline.quantize.report, pipeline.quantize.api; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
