"""Bad run configs fail before any work, with what to do next (run_pipeline's edge checks)."""

from __future__ import annotations

import pytest

from pipeline.core.config import DataConfig, PipelineConfig, PrecisionConfig, QuantConfig
from pipeline.core.errors import PipelineError
from pipeline.orchestrate import run_pipeline


def _fails(tmp_path, **kw) -> PipelineError:
    cfg = PipelineConfig(output_dir=str(tmp_path / "out"), engines_dir=str(tmp_path / "engines"), **kw)
    with pytest.raises(PipelineError) as err:
        run_pipeline(cfg)
    assert not (tmp_path / "out").exists(), "validation must fail before anything is written"
    return err.value


def test_no_stage_is_an_error(tmp_path):
    err = _fails(tmp_path, stages=[])
    assert "No stage requested" in err.message and "stages=[export" in err.hint


def test_folder_and_npz_data_need_an_existing_path(tmp_path):
    err = _fails(tmp_path, data=DataConfig(name="folder"))
    assert "data=folder needs data.path" in err.message and "images/" in err.hint
    err = _fails(tmp_path, data=DataConfig(name="npz", path=str(tmp_path / "nope.npz")))
    assert "does not exist" in err.message
    # Not checked when no stage reads data.
    cfg = PipelineConfig(output_dir=str(tmp_path / "a"), data=DataConfig(name="folder"), stages=["export", "analyze"])
    from pipeline.orchestrate import validate as _validate

    _validate(cfg)


def test_unknown_data_source_is_an_error(tmp_path):
    err = _fails(tmp_path, data=DataConfig(name="imagenet"))
    assert "Unknown data source 'imagenet'" in err.message and "random" in err.hint


def test_quant_op_types_must_be_ops_the_quantize_stage_handles(tmp_path):
    int8 = PrecisionConfig(name="int8", weight_bytes=1, activation_bytes=1, peak="int8_tensor")
    err = _fails(tmp_path, precision=int8, quant=QuantConfig(op_types=["Conv", "Nope"]))
    assert "not ['Nope']" in err.message and "quant.op_types=[Conv,Gemm,MatMul]" in err.hint
    err = _fails(tmp_path, precision=int8, quant=QuantConfig(op_types=[]))
    assert "the list is empty" in err.message


def test_calibration_data_that_does_not_fit_the_model_fails_the_run_naming_both_shapes(tmp_path):
    import numpy as np

    from pipeline.core.config import BackendConfig, ModelConfig

    np.savez(tmp_path / "calib.npz", inputs=np.zeros((8, 1, 7, 7), np.float32))
    model = ModelConfig(name="custom", input_kind="image", input_shape=[3, 16, 16], num_classes=4,
                        builder={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3})
    int8 = PrecisionConfig(name="int8", weight_bytes=1, activation_bytes=1, peak="int8_tensor")
    cfg = PipelineConfig(output_dir=str(tmp_path / "out"), engines_dir=str(tmp_path / "engines"), model=model,
                         precision=int8, backend=BackendConfig(name="onnxruntime"), stages=["export", "quantize"],
                         data=DataConfig(name="npz", path=str(tmp_path / "calib.npz"), num_samples=4, calib_samples=4))
    with pytest.raises(PipelineError) as err:
        run_pipeline(cfg)
    assert "[1, 7, 7]" in err.value.message and "[3, 16, 16]" in err.value.message and "'input'" in err.value.message
    assert "data.resize=true" in err.value.hint


def test_report_alone_points_at_the_re_render_command(tmp_path):
    err = _fails(tmp_path, stages=["report"])
    assert "nothing to report" in err.message and "python -m pipeline.report" in err.hint
