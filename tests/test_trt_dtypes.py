"""Inputs bound in the dtype the engine declares (pure numpy, the conversion every TensorRT run uses)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.trt.dtypes import engine_input_array, engine_inputs


def test_int64_ids_become_int32_with_values_kept():
    ids = np.array([[0, 101, 30521, 2**31 - 1], [-(2**31), 5, 6, 7]], np.int64)
    out = engine_input_array("input_ids", ids, np.int32)
    assert out.dtype == np.int32 and out.flags.c_contiguous
    assert out.tolist() == ids.tolist()


def test_int32_overflow_names_the_input_the_range_found_and_int32s():
    ids = np.array([[1, 2**31], [3, -5]], np.int64)
    with pytest.raises(PipelineError) as err:
        engine_input_array("input_ids", ids, "int32")
    msg = err.value.message
    assert "'input_ids'" in msg and f"[-5, {2**31}]" in msg and "[-2147483648, 2147483647]" in msg
    assert "input_ids" in err.value.hint


def test_bool_mask_from_bool_and_from_01_integers():
    mask = np.array([[1, 1, 0, 0]], np.int64)
    assert engine_input_array("attention_mask", mask, np.bool_).tolist() == [[True, True, False, False]]
    b = np.array([True, False])
    assert engine_input_array("m", b, np.bool_) is not None and engine_input_array("m", b, np.bool_).dtype == np.bool_
    with pytest.raises(PipelineError, match="other than 0 and 1"):
        engine_input_array("attention_mask", np.array([0, 2]), np.bool_)
    assert engine_input_array("m", b, np.int32).tolist() == [1, 0]  # bool -> int32 mask


def test_float32_data_to_float16_inputs_and_its_range():
    x = np.array([[0.5, -1.25, 65504.0]], np.float32)
    out = engine_input_array("pixel_values", x, np.float16)
    assert out.dtype == np.float16 and out.tolist() == [[0.5, -1.25, 65504.0]]
    with pytest.raises(PipelineError) as err:
        engine_input_array("pixel_values", np.array([1e6, np.inf], np.float32), np.float16)
    assert "'pixel_values'" in err.value.message and "1000000.0" in err.value.message
    assert engine_input_array("x", np.array([np.inf], np.float32), np.float16).tolist() == [np.inf]


def test_same_dtype_is_passed_through_and_floats_never_truncate_to_integers():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert engine_input_array("x", x, np.float32) is x
    assert engine_input_array("x", x.T, np.float32).flags.c_contiguous
    with pytest.raises(PipelineError, match="would truncate"):
        engine_input_array("input_ids", np.array([1.5]), np.int32)


def test_engine_inputs_keeps_engine_inputs_only_and_reports_missing():
    feed = {"input_ids": np.zeros((2, 4), np.int64), "attention_mask": np.ones((2, 4), np.int64),
            "labels": np.zeros(2, np.int64)}
    out = engine_inputs(feed, {"input_ids": np.dtype(np.int32), "attention_mask": np.dtype(np.int32)})
    assert sorted(out) == ["attention_mask", "input_ids"] and all(a.dtype == np.int32 for a in out.values())
    with pytest.raises(PipelineError, match=r"needs inputs \['token_type_ids'\]"):
        engine_inputs(feed, {"token_type_ids": np.dtype(np.int32)})


def test_calibrator_copies_batches_in_the_network_dtypes():
    import importlib.util
    from pathlib import Path

    from pipeline.trt.calibrator import make_calibrator

    spec = importlib.util.spec_from_file_location("trt_fake_module", Path(__file__).parent / "test_trt_fake.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    cuda = fake.FakeCuda()
    ids = np.array([[5, 7, 9, 11], [1, 2, 3, 4]], np.int64)
    cal = make_calibrator(fake.make_fake_trt("8.6"), "entropy", [{"ids": ids}], {"ids": [2, 4]}, None, {},
                          cuda=cuda, input_dtypes={"ids": np.dtype(np.int32)})
    assert cal.get_batch(["ids"]) is not None
    assert cuda.last.dtype == np.int32 and cuda.last.tolist() == ids.tolist()
    too_big = make_calibrator(fake.make_fake_trt("8.6"), "entropy", [{"ids": ids * 2**33}], {"ids": [2, 4]}, None, {},
                              cuda=fake.FakeCuda(), input_dtypes={"ids": np.dtype(np.int32)})
    with pytest.raises(PipelineError, match="'ids'"):
        too_big.get_batch(["ids"])
