"""pipeline.trt.calibrator.make_calibrator driven the way TensorRT drives it, on the recording fake
``tensorrt`` (test_trt_fake.py) and a host-memory CUDA: base-class choice, device buffers, cache."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.trt.calibrator import make_calibrator

_spec = importlib.util.spec_from_file_location("trt_fake_module", Path(__file__).parent / "test_trt_fake.py")
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)


class CountingCuda(fake.FakeCuda):
    """FakeCuda that also counts allocations and whether it was closed."""

    def __init__(self):
        super().__init__()
        self.mallocs, self.closed = [], False

    def malloc(self, nbytes):
        self.mallocs.append(nbytes)
        return super().malloc(nbytes)

    def close(self):
        self.closed = True


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float64)


def test_base_class_follows_kind_and_is_constructed():
    for kind, base in (("entropy", "IInt8EntropyCalibrator2"), ("minmax", "IInt8MinMaxCalibrator")):
        trt = fake.make_fake_trt("10")
        cal = make_calibrator(trt, kind, [{"x": _x(2)}], {"x": [2, 3]}, None, {}, cuda=CountingCuda())
        assert isinstance(cal, getattr(trt, base)) and cal.kind == kind
        assert [n for n, _ in trt.calls] == [f"{base}.__init__"] and cal.get_batch_size() == 1


def test_unknown_kind_and_tensorrt_without_calibrators_are_refused_with_a_hint():
    with pytest.raises(PipelineError, match="Unknown calibrator 'percentile'") as err:
        make_calibrator(fake.make_fake_trt("8.6"), "percentile", [], {"x": [2, 3]}, None, {})
    assert "entropy" in err.value.hint and "minmax" in err.value.hint
    with pytest.raises(PipelineError, match="has no IInt8EntropyCalibrator2") as err:
        make_calibrator(fake.make_fake_trt("11"), "entropy", [], {"x": [2, 3]}, None, {})
    assert "qdq_onnx" in err.value.hint


def test_device_buffers_are_reused_then_freed_and_a_given_cuda_stays_open():
    """Five samples at calibration batch 2: two float32 batches through one 24-byte buffer, one
    sample dropped; the copies are float32 whatever the host dtype."""
    cuda = CountingCuda()
    cal = make_calibrator(fake.make_fake_trt("8.6"), "entropy", [{"x": _x(3)}, {"x": _x(2, 1)}], {"x": [2, 3]},
                          None, {}, cuda=cuda)
    first, second = cal.get_batch(["x"]), cal.get_batch(["x"])
    assert first == second and len(first) == 1 and cal.get_batch(["x"]) is None
    assert cuda.mallocs == [2 * 3 * 4] and cuda.copies == 2 and cuda.last.dtype == np.float32
    assert np.array_equal(cuda.last, np.concatenate([_x(3), _x(2, 1)])[2:4].astype(np.float32))
    assert (cal.batches_used, cal.samples_dropped) == (2, 1)
    cal.release()
    assert cuda.mem == {} and not cuda.closed


def test_batch_lacking_an_input_is_refused():
    cal = make_calibrator(fake.make_fake_trt("8.6"), "entropy", [{"x": _x(2)}], {"x": [2, 3]}, None, {},
                          cuda=CountingCuda())
    with pytest.raises(PipelineError, match=r"lacks inputs \['mask'\]"):
        cal.get_batch(["x", "mask"])


def test_cache_is_written_with_its_fingerprint_and_read_back_only_when_it_matches(tmp_path):
    cache = tmp_path / "calib.cache"
    fp = {"onnx_sha256": "abc", "calibrator": "entropy"}
    cal = make_calibrator(fake.make_fake_trt("8.6"), "entropy", [{"x": _x(2)}], {"x": [2, 3]}, cache, fp,
                          cuda=CountingCuda())
    assert cal.read_calibration_cache() is None and not cal.read_cache  # no file yet: calibrate
    cal.write_calibration_cache(memoryview(b"TRT-cache"))
    assert cal.cache_written and cache.read_bytes() == b"TRT-cache"
    assert json.loads(Path(str(cache) + ".json").read_text()) == fp
    again = make_calibrator(fake.make_fake_trt("8.6"), "entropy", None, {"x": [2, 3]}, cache, fp)
    assert again.read_cache and again.read_calibration_cache() == b"TRT-cache" and "matches" in again.cache_note
    other = make_calibrator(fake.make_fake_trt("8.6"), "entropy", [{"x": _x(2)}], {"x": [2, 3]}, cache,
                            dict(fp, onnx_sha256="def"), cuda=CountingCuda())
    assert other.read_calibration_cache() is None and "different onnx_sha256" in other.cache_note


def test_without_a_cache_path_nothing_is_written_and_no_data_no_cache_is_refused(tmp_path):
    cal = make_calibrator(fake.make_fake_trt("8.6"), "minmax", [{"x": _x(2)}], {"x": [2, 3]}, None, {},
                          cuda=CountingCuda())
    cal.write_calibration_cache(b"TRT-cache")
    assert not cal.cache_written and cal.cache_path is None and list(tmp_path.iterdir()) == []
    with pytest.raises(PipelineError, match="needs data batches or a calibration cache"):
        make_calibrator(fake.make_fake_trt("8.6"), "minmax", None, {"x": [2, 3]}, tmp_path / "none.cache", {})
