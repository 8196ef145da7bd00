"""QAT on the trained digits CNN: fake quantizers from the PTQ ranges, fine-tune, Q/DQ export placed like PTQ.

The PTQ side is the real quantize stage (:func:`pipeline.quantize.quantize_onnx` on digits calibration samples,
with its statistics file); ONNX Runtime runs every Q/DQ model with graph optimisations off, i.e. Q/DQ as float
math, which is what the fake quantizers compute.
"""

from __future__ import annotations

import copy
import logging
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from torch import nn  # noqa: E402

from pipeline.core.config import DataConfig, ModelConfig, QuantConfig  # noqa: E402
from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.data.digits import digits_split  # noqa: E402
from pipeline.qat import QuantWrapper, attach_fake_quant, module_path, ptq_ranges, qat_paths, qat_qdq_onnx  # noqa: E402
from pipeline.qat.fake_quant import fake_quantize_weight, strip_fake_quant  # noqa: E402
from pipeline.quantize.scales import fake_quantize, symmetric_qparams, weight_qparams  # noqa: E402

CFG = QuantConfig(calib="entropy")
#: Logits of the wrapped torch model vs ONNX Runtime on the PTQ Q/DQ model. Both compute the same float math
#: (fake-quantized inputs and weights, float conv/GEMM), so they agree to float32 rounding: measured max |diff|
#: 7.6e-6 (entropy, max, mse; logits up to ~32). The one exception is a value landing within an ulp of a rounding
#: tie: torch multiplies by 1/scale where QuantizeLinear divides by scale, so one code can differ by one step (seen
#: with percentile calibration: 3 of 397 samples, max |diff| 0.079 = 0.25% of the largest logit).
CLOSE_ATOL = 1e-4
CLOSE_SAMPLES = 0.98
WORST_REL = 0.01


def _ort_logits(model_or_path, x: np.ndarray) -> np.ndarray:
    from pipeline.ort import ort_session, run_first_output

    model = onnx.load(str(model_or_path)) if not isinstance(model_or_path, onnx.ModelProto) else model_or_path
    return run_first_output(ort_session(model, optimize=False), [{"input": x}])


def _torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _finetune(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 2, lr: float = 1e-3) -> None:
    """Adam + cross-entropy, seeded, one thread (deterministic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        order = np.random.default_rng(0)
        model.train()
        for _ in range(epochs):
            for idx in np.array_split(order.permutation(len(x)), max(1, len(x) // 64)):
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
                opt.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The trained digits CNN, its FP32 ONNX (export stage), and its PTQ Q/DQ ONNX + statistics (quantize stage)."""
    from pipeline.data.sources import load_digits
    from pipeline.export.onnx_export import export_onnx
    from pipeline.models.zoo import build_digits_cnn
    from pipeline.quantize import quantize_onnx

    out = tmp_path_factory.mktemp("qat")
    bundle = build_digits_cnn(ModelConfig(name="digits_cnn", input_shape=[1, 8, 8], num_classes=10))
    fp32 = export_onnx(bundle, out / "digits_cnn.onnx").onnx_path
    # Calibration samples as data=digits draws them (256 of the train split, seed 0).
    calib = load_digits(DataConfig(name="digits", calib_samples=256), bundle.inputs, "calib", 256, None)
    stats = out / "digits_cnn.calib_stats.npz"
    ptq = quantize_onnx(fp32, list(calib.batches(32)), CFG, out / "digits_cnn.int8.qdq.onnx", progress=False,
                        stats_path=stats)
    split = digits_split()
    return {"bundle": bundle, "fp32": fp32, "stats": stats, "ptq": ptq, "out": out,
            "test_x": np.array(split.test_x)[:, None], "test_y": np.array(split.test_y),
            "train_x": np.array(split.train_x)[:, None], "train_y": np.array(split.train_y)}


def _wrapped(digits, cfg: QuantConfig = CFG):
    ranges = ptq_ranges(digits["fp32"], digits["stats"], cfg)
    model = copy.deepcopy(digits["bundle"].module)
    records = attach_fake_quant(model, ranges.onnx_path, ranges.amaxes, cfg=cfg, placement=ranges.plan)
    return model, ranges, records


def _qdq_inputs(path) -> set:
    """``(node, input index)`` of every input a DequantizeLinear feeds: where the model is quantized."""
    model = onnx.load(str(path))
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {(n.name, i) for n in model.graph.node if n.op_type != "QuantizeLinear"
            for i, t in enumerate(n.input) if t in dq}


def _scales(path):
    """``({activation: scale}, {weight: per-channel scales})`` of a Q/DQ model's QuantizeLinear nodes."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    acts, weights = {}, {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            (weights if n.input[0] in inits else acts)[n.input[0]] = inits[n.input[1]]
    return acts, weights


# ----------------------------------------------------------------------------- unit level


def test_module_path_follows_torch_scope_names():
    names = {"", "conv1", "fc", "features", "features.0", "classifier", "classifier.1", "layer1", "layer1.0",
             "layer1.0.conv1"}
    assert module_path("/layer1/layer1.0/conv1/Conv", names) == "layer1.0.conv1"
    assert module_path("/conv1/Conv", names) == "conv1"
    assert module_path("/fc/Gemm", names) == "fc"
    assert module_path("/features/features.0/Conv", names) == "features.0"
    assert module_path("/classifier/classifier.1/Gemm", names) == "classifier.1"
    assert module_path("Conv_3", names) is None and module_path("/Conv", names) is None
    assert module_path("/head/Gemm", names) is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's note that dynamo is the default exporter
def test_module_path_resolves_every_node_torch_exports(tmp_path):
    """Nested Sequentials, a ModuleDict and a ModuleList, exported by torch: each Conv's weight is
    ``<module path>.weight`` (no BatchNorm to fold), so the exporter itself checks the mapping."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 1)
            self.downsample = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Sequential(nn.Conv2d(4, 4, 1)))
            self.branch, self.extra = nn.ModuleDict({"a": nn.Conv2d(4, 4, 1)}), nn.ModuleList([nn.Conv2d(4, 4, 1)])

        def forward(self, x):
            return self.extra[0](self.branch["a"](self.downsample(self.conv1(x))))

    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.layer4 = nn.Conv2d(4, 4, 1), nn.Sequential(Block(), Block())

        def forward(self, x):
            return self.layer4(self.stem(x))

    model = Top().eval()
    path = tmp_path / "nested.onnx"
    torch.onnx.export(model, (torch.randn(1, 4, 2, 2),), str(path), dynamo=False, opset_version=17,
                      do_constant_folding=False)
    names = dict(model.named_modules())
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    assert len(convs) == 11
    for node in convs:
        assert f"{module_path(node.name, names)}.weight" == node.input[1], node.name


def test_wrapper_quantizes_like_the_qdq_writer():
    torch.manual_seed(0)
    for layer in (nn.Conv2d(3, 8, 3), nn.Linear(20, 6)):
        w = layer.weight.detach().numpy()
        expected = fake_quantize(w, weight_qparams(w, 0))  # what the Q/DQ ONNX's weight pair computes
        np.testing.assert_array_equal(fake_quantize_weight(layer.weight).detach().numpy(), expected)
    x = np.random.default_rng(0).uniform(-3, 3, (4, 20)).astype(np.float32)
    wrapper = QuantWrapper(nn.Linear(20, 6), amax=2.0)
    xq = fake_quantize(x, symmetric_qparams(2.0))
    ref = xq @ fake_quantize_weight(wrapper.module.weight).detach().numpy().T + wrapper.module.bias.detach().numpy()
    np.testing.assert_allclose(wrapper(torch.from_numpy(x)).detach().numpy(), ref, rtol=1e-6, atol=1e-6)
    assert float(wrapper.input_scale) == float(symmetric_qparams(2.0).scale)


def test_straight_through_estimator_passes_gradients_inside_the_range_only():
    torch.manual_seed(0)
    wrapper = QuantWrapper(nn.Linear(20, 6), amax=1.0)
    x = torch.linspace(-2, 2, 80).reshape(4, 20).requires_grad_()
    wrapper(x).sum().backward()
    # Input: gradient 1 (times the weights) inside [-128, 127] * scale, 0 where clipped.
    inside = (x.detach() >= -128 / 127) & (x.detach() <= 1.0)
    assert torch.all(x.grad[~inside] == 0) and torch.all(x.grad[inside].abs().sum() > 0)
    # Weights: the range covers every weight (amax = max |w|), so the gradient is the one of the quantized weight.
    wq = fake_quantize_weight(wrapper.module.weight).detach().requires_grad_()
    xq = torch.fake_quantize_per_tensor_affine(x.detach(), wrapper.input_scale, wrapper.input_zero_point, -128, 127)
    nn.functional.linear(xq, wq, wrapper.module.bias.detach()).sum().backward()
    torch.testing.assert_close(wrapper.module.weight.grad, wq.grad, rtol=0, atol=0)


def test_import_does_not_load_torch():
    code = "import pipeline.qat, sys; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- digits CNN, PTQ vs fake quant


def test_wrapped_model_matches_the_ptq_qdq_onnx(digits):
    model, ranges, records = _wrapped(digits)
    assert {r["module"] for r in records} == {"features.0", "features.2", "features.4", "features.5", "features.7",
                                              "classifier.1", "classifier.3"}
    assert all(r["matched_by"] == "name" and r["amax"] == ranges.amaxes[r["tensor"]] for r in records)
    x = digits["test_x"]
    got, ref = _torch_logits(model, x), _ort_logits(digits["ptq"].qdq_onnx_path, x)
    diff = np.abs(got - ref).max(axis=1)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98
    assert (diff <= CLOSE_ATOL).mean() >= CLOSE_SAMPLES, np.sort(diff)[-5:]
    assert diff.max() <= WORST_REL * np.abs(ref).max()
    # Not trivially equal to the float model: the fake quantizers change the logits.
    assert np.abs(_torch_logits(digits["bundle"].module, x) - got).max() > 100 * CLOSE_ATOL


def test_layers_are_matched_by_execution_order_when_names_differ(digits):
    class Renamed(nn.Module):  # same layers, other attribute names: the ONNX scope names do not resolve
        def __init__(self, src):
            super().__init__()
            self.body, self.head = copy.deepcopy(src.features), copy.deepcopy(src.classifier)

        def forward(self, x):
            return self.head(self.body(x))

    model = Renamed(digits["bundle"].module)
    ranges = ptq_ranges(digits["fp32"], digits["stats"], CFG)
    records = attach_fake_quant(model, ranges.onnx_path, ranges.amaxes, cfg=CFG, placement=ranges.plan)
    assert [(r["module"], r["matched_by"]) for r in records] == [
        ("body.0", "order"), ("body.2", "order"), ("body.4", "order"), ("body.5", "order"), ("body.7", "order"),
        ("head.1", "order"), ("head.3", "order")]
    x = digits["test_x"]
    got, ref = _torch_logits(model, x), _ort_logits(digits["ptq"].qdq_onnx_path, x)
    assert (np.abs(got - ref).max(axis=1) <= CLOSE_ATOL).mean() >= CLOSE_SAMPLES


def test_unmatched_model_is_refused_with_a_hint(digits):
    other = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    ranges = ptq_ranges(digits["fp32"], digits["stats"], CFG)
    with pytest.raises(PipelineError, match=r"/features/features\.0/Conv") as err:
        attach_fake_quant(other, ranges.onnx_path, ranges.amaxes, cfg=CFG)
    assert err.value.hint and "exported from" in err.value.hint
    assert not any(isinstance(m, QuantWrapper) for m in other.modules())  # nothing half-wrapped


def test_statistics_of_a_split_graph_are_refused(digits, tmp_path):
    from pipeline.quantize import quantize_onnx

    calib = [{"input": digits["train_x"][:128]}]
    cfg = QuantConfig(calib="max", split_outliers=0.5, split_min_gain=1.0)  # splits the Gemm inputs
    res = quantize_onnx(digits["fp32"], calib, cfg, tmp_path / "s.qdq.onnx", progress=False,
                        stats_path=tmp_path / "s.npz")
    assert res.splits
    with pytest.raises(PipelineError, match="split") as err:
        ptq_ranges(digits["fp32"], tmp_path / "s.npz", cfg)
    assert "split_outliers=null" in err.value.hint


# ----------------------------------------------------------------------------- fine-tune and export


@pytest.fixture(scope="module")
def finetuned(digits):
    model, ranges, _ = _wrapped(digits)
    before = copy.deepcopy(model)
    _finetune(model, digits["train_x"], digits["train_y"])
    qdq = qat_qdq_onnx(model, ranges, digits["out"] / "qat")
    return {"model": model, "before": before, "ranges": ranges, "qdq": qdq}


def test_gradients_reach_the_weights_through_the_fake_quantizers(digits):
    model, _, _ = _wrapped(digits)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.from_numpy(digits["train_x"][:64])),
                                       torch.from_numpy(digits["train_y"][:64]))
    loss.backward()
    wrappers = [m for m in model.modules() if isinstance(m, QuantWrapper) and m.quantizes_weight]
    assert len(wrappers) == 5
    for w in wrappers:
        assert w.module.weight.grad is not None and torch.isfinite(w.module.weight.grad).all()
        assert w.module.weight.grad.abs().sum() > 0


def test_qat_qdq_onnx_has_the_ptq_placement_and_activation_scales(digits, finetuned):
    ptq_path, qat_path = digits["ptq"].qdq_onnx_path, finetuned["qdq"]
    assert qat_path == qat_paths(digits["out"] / "qat", "digits_cnn")[1] and qat_paths(digits["out"] / "qat",
                                                                                       "digits_cnn")[0].is_file()
    assert _qdq_inputs(qat_path) == _qdq_inputs(ptq_path) and len(_qdq_inputs(ptq_path)) == 12
    ptq_acts, ptq_weights = _scales(ptq_path)
    qat_acts, qat_weights = _scales(qat_path)
    assert ptq_acts.keys() == qat_acts.keys() and all(np.array_equal(ptq_acts[k], qat_acts[k]) for k in ptq_acts)
    assert ptq_weights.keys() == qat_weights.keys() and len(ptq_weights) == 5
    assert all(not np.array_equal(ptq_weights[k], qat_weights[k]) for k in ptq_weights)  # fine-tuned weights
    assert not list(digits["out"].joinpath("qat").glob(".*"))  # no temporary files left


def test_qat_qdq_onnx_computes_what_the_fine_tuned_wrapped_model_computes(digits, finetuned):
    x = digits["test_x"]
    got, ref = _torch_logits(finetuned["model"], x), _ort_logits(finetuned["qdq"], x)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98
    assert (np.abs(got - ref).max(axis=1) <= CLOSE_ATOL).mean() >= CLOSE_SAMPLES
    assert np.abs(got - _torch_logits(finetuned["before"], x)).max() > 100 * CLOSE_ATOL  # it did train


def test_short_qat_keeps_the_ptq_accuracy(digits, finetuned):
    x, y = digits["test_x"], digits["test_y"]
    ptq_top1 = float((_ort_logits(digits["ptq"].qdq_onnx_path, x).argmax(1) == y).mean())
    qat_top1 = float((_ort_logits(finetuned["qdq"], x).argmax(1) == y).mean())
    logging.getLogger(__name__).info("digits top-1: PTQ %.4f, QAT %.4f", ptq_top1, qat_top1)
    assert ptq_top1 >= 0.95  # measured 0.9874 (= FP32)
    assert qat_top1 >= ptq_top1 - 0.01, (ptq_top1, qat_top1)


def test_a_changed_structure_is_refused_at_export(digits, finetuned, tmp_path):
    model = strip_fake_quant(finetuned["model"])
    model.classifier.append(nn.ReLU())  # a node the FP32 ONNX does not have
    with pytest.raises(PipelineError, match="other than digits_cnn.onnx") as err:
        qat_qdq_onnx(model, finetuned["ranges"], tmp_path)
    assert err.value.hint and not list(tmp_path.iterdir())  # nothing written under the final names


# ----------------------------------------------------------------------------- BatchNorm + residual CNN


def test_batchnorm_residual_cnn_round_trip(tmp_path, caplog):
    """Convs whose BatchNorm the exporter folds, a residual Add and a global average pool."""
    from pipeline.core.specs import InputSpec
    from pipeline.export.onnx_export import export_onnx
    from pipeline.models.bundle import ModelBundle
    from pipeline.quantize.stats import collect_stats

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 4)

        def forward(self, x):
            h = torch.relu(self.bn(self.stem(x)))
            return self.fc(torch.flatten(self.gap(torch.relu(self.bn2(self.conv(h)) + h)), 1))

    torch.manual_seed(0)
    net = Net().eval()
    for bn in (net.bn, net.bn2):  # non-trivial running statistics, so the folded weights differ
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0), bn.weight.data.uniform_(-2, 2)
    fp32 = export_onnx(ModelBundle("net", net, [InputSpec("input", (3, 8, 8))], ["logits"]),
                       tmp_path / "net.onnx").onnx_path
    x = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)
    ranges = ptq_ranges(fp32, collect_stats(fp32, [{"input": x}], progress=False), CFG)
    with caplog.at_level(logging.WARNING, logger="pipeline.qat.attach"):
        records = attach_fake_quant(net, fp32, ranges.amaxes, cfg=CFG, placement=ranges.plan)
    assert {r["module"]: r["matched_by"] for r in records} == {"stem": "name", "conv": "name", "gap": "name",
                                                               "fc": "name"}
    assert "Add" in caplog.text  # the residual input's Q/DQ has no module: reported, not simulated
    qdq = qat_qdq_onnx(net, ranges, tmp_path)  # no fine-tune: weights as PTQ saw them
    from pipeline.quantize.api import _write_qdq_model, act_qparams_from

    ptq = _write_qdq_model(onnx.load(str(fp32)), ranges.plan, act_qparams_from(ranges.stats, ranges.amaxes,
                                                                             ranges.plan.activations, True),
                           tmp_path / "net.int8.qdq.onnx")
    assert _qdq_inputs(qdq) == _qdq_inputs(tmp_path / "net.int8.qdq.onnx")
    np.testing.assert_allclose(_ort_logits(qdq, x), _ort_logits(ptq, x), rtol=0, atol=1e-5)


def test_a_pool_module_called_twice_with_two_ranges_is_left_unsimulated(tmp_path, caplog):
    from pipeline.core.specs import InputSpec
    from pipeline.export.onnx_export import export_onnx
    from pipeline.models.bundle import ModelBundle
    from pipeline.quantize.stats import collect_stats

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.pool, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), \
                nn.MaxPool2d(2), nn.Linear(16, 3)

        def forward(self, x):  # one pool module, two MaxPool nodes
            return self.fc(torch.flatten(self.pool(torch.relu(self.c2(self.pool(torch.relu(self.c1(x))))) * 3), 1))

    torch.manual_seed(0)
    net = Net().eval()
    fp32 = export_onnx(ModelBundle("pools", net, [InputSpec("input", (1, 8, 8))], ["logits"]),
                       tmp_path / "pools.onnx").onnx_path
    x = np.random.default_rng(0).uniform(0, 1, (32, 1, 8, 8)).astype(np.float32)
    ranges = ptq_ranges(fp32, collect_stats(fp32, [{"input": x}], progress=False), CFG)
    with caplog.at_level(logging.WARNING, logger="pipeline.qat.attach"):
        records = attach_fake_quant(net, fp32, ranges.amaxes, cfg=CFG, placement=ranges.plan)
    assert [r["module"] for r in records] == ["c1", "c2", "fc"]
    # torch names the second call's scope pool_1; the execution order maps it to the same module
    assert "/pool/MaxPool[0]" in caplog.text and "/pool_1/MaxPool[0]" in caplog.text
