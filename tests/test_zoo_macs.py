"""The zoo's exported ONNX, costed by the analyze stage, matches the published MAC counts."""

from __future__ import annotations

import pytest

from pipeline.analyze import layer_costs
from pipeline.core.config import ModelConfig
from pipeline.export import export_onnx
from pipeline.models import build_model


def _gmacs(name: str, tmp_path, **kw) -> float:
    bundle = build_model(ModelConfig(name=name, input_shape=[3, 224, 224], **kw))
    res = export_onnx(bundle, tmp_path / f"{name}.onnx", opset=17, batch_size=1)
    return sum(layer.macs for layer in layer_costs(res.onnx_path, batch_size=1)) / 1e9


@pytest.mark.slow
def test_resnet50_is_4_1_gmacs(tmp_path):
    # He et al. 2016, Table 1: 3.8e9 FLOPs (multiply-adds) for the original; the torchvision variant
    # (stride on the 3x3) is 4.1 GMACs, the figure torchvision and most papers publish.
    assert _gmacs("resnet50", tmp_path) == pytest.approx(4.1, rel=0.02)


def test_mobilenet_v2_is_300_mmacs(tmp_path):
    # Sandler et al. 2018, Table 4: MobileNetV2 (1.0, 224): 300M multiply-adds.
    assert _gmacs("mobilenet_v2", tmp_path) * 1e3 == pytest.approx(300, rel=0.03)


def test_resnet18_is_1_8_gmacs(tmp_path):
    # torchvision model table: ResNet-18 1.81 GFLOPs (counted as multiply-adds).
    assert _gmacs("resnet18", tmp_path) == pytest.approx(1.81, rel=0.02)
