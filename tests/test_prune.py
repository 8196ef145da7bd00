"""Pruning: L1-norm channel pruning through DepGraph, 2:4 sparsity (torch masks, ONNX checker), fine-tuning.

Everything runs the real thing on the CPU: torch, Torch-Pruning, torch's ONNX exporter, ONNX Runtime.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.errors import PipelineError
from pipeline.prune.sparsity import apply_24, check_24, mask_24, summary_24

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from pipeline.models import vision  # noqa: E402
from pipeline.prune.finetune import finetune, top1  # noqa: E402

needs_tp = pytest.mark.skipif(
    importlib.util.find_spec("torch_pruning") is None, reason="Torch-Pruning not installed (pip install torch-pruning)"
)


# ----------------------------------------------------------------------------- helpers


def onnx_from_torch(module: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    """Export as the export stage does: TorchScript exporter, opset 17, dynamic batch."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def convs(model: nn.Module) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def seeded(build, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build().eval()


class SmallNet(nn.Module):
    """Every case of the 2:4 rules: C=3 stem, plain conv, depthwise, grouped, 1x1, a MatMul and a Gemm linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 16, 1, groups=2)
        self.pw = nn.Conv2d(16, 16, 1)
        self.proj = nn.Linear(16, 12)  # applied to a 3-D tensor: exported as MatMul with an [in, out] weight
        self.fc = nn.Linear(12, 10)  # exported as Gemm, transB=1, [out, in]

    def forward(self, x):
        x = torch.relu(self.conv(torch.relu(self.stem(x))))
        x = torch.relu(self.pw(self.grouped(self.dw(x))))
        x = x.mean((2, 3)).unsqueeze(1)
        return self.fc(torch.relu(self.proj(x)).squeeze(1))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads and lose a lot when the cores are busy (2-core CI)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_model():
    """The real digits_cnn, trained here (deterministic, a few seconds), and the fixed digits split."""
    from pipeline.data.digits import digits_split
    from pipeline.models import digits

    model, metrics = digits.train(0)
    return model, metrics, digits_split()


# ----------------------------------------------------------------------------- channel pruning


@needs_tp
def test_resnet18_half_pruned_rounded_to_8_runs_in_torch_and_onnxruntime():
    from pipeline.prune.channels import prune_channels

    model = seeded(lambda: vision.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    res = prune_channels(model, x, 0.5, round_to=8)

    rows = {r["name"]: r for r in res.layers}
    assert set(rows) == set(convs(model)) | {"fc"}
    for name, conv in convs(model).items():
        r = rows[name]
        assert r["out_after"] == conv.out_channels and r["in_after"] == conv.in_channels
        assert 0 < r["out_after"] <= r["out_before"] // 2 and r["out_after"] % 8 == 0, r
        assert conv.weight.shape[:2] == (conv.out_channels, conv.in_channels)
    assert rows["fc"]["out_after"] == rows["fc"]["out_before"] == 10 and res.ignored == ["fc"]
    # BatchNorms follow their convs; identity shortcuts keep the block's output width equal to its input's.
    for name, block in model.named_modules():
        if isinstance(block, vision.BasicBlock):
            assert block.bn1.num_features == block.conv1.out_channels == block.conv2.in_channels
            assert block.bn2.num_features == block.conv2.out_channels
            if block.downsample is None:
                assert block.conv2.out_channels == block.conv1.in_channels, name
    assert model.fc.in_features == model.layer4[-1].conv2.out_channels
    assert res.params_after == param_count(model) < res.params_before
    assert res.macs_after < res.macs_before
    assert not model.training

    with torch.no_grad():
        y = model(x).numpy()
    assert y.shape == (2, 10)
    y_ort = run_ort(onnx_from_torch(model, x), x.numpy())
    np.testing.assert_allclose(y_ort, y, rtol=1e-3, atol=1e-4)


@needs_tp
def test_mobilenet_v2_depthwise_convs_stay_depthwise():
    from pipeline.prune.channels import prune_channels

    model = seeded(lambda: vision.MobileNetV2(num_classes=10))
    depthwise = [n for n, c in convs(model).items() if c.groups > 1]
    x = torch.randn(2, 3, 32, 32)
    res = prune_channels(model, x, 0.5, round_to=8)

    after = convs(model)
    assert depthwise and all(after[n].groups == after[n].in_channels == after[n].out_channels for n in depthwise)
    rows = {r["name"]: r for r in res.layers}
    assert any(rows[n]["out_after"] < rows[n]["out_before"] for n in depthwise)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    assert res.ignored == ["classifier.1"] and res.params_after == param_count(model) < res.params_before


@needs_tp
def test_global_and_per_layer_ranking_and_latency_ratios():
    from pipeline.prune.channels import prune_channels, ratios_from_latency

    base = seeded(lambda: vision.resnet18(num_classes=10))
    x = torch.randn(1, 3, 32, 32)
    local, global_ = copy.deepcopy(base), copy.deepcopy(base)
    res_local = prune_channels(local, x, 0.5)
    res_global = prune_channels(global_, x, 0.5, global_ranking=True)
    outs_local = [r["out_after"] for r in res_local.layers]
    outs_global = [r["out_after"] for r in res_global.layers]
    assert outs_local != outs_global and res_global.global_ranking and not res_local.global_ranking
    # Local ranking removes the same share everywhere; global ranking does not.
    assert {r["out_after"] / r["out_before"] for r in res_local.layers if r["name"] != "fc"} == {0.5}
    assert len({r["out_after"] / r["out_before"] for r in res_global.layers if r["name"] != "fc"}) > 1
    with torch.no_grad():
        assert global_(x).shape == (1, 10)

    # A layer measured 3x slower than another is pruned more; everything else stays.
    ratios = ratios_from_latency({"layer1.0.conv1": 3.0, "layer2.0.conv1": 1.0}, 0.5)
    tuned = copy.deepcopy(base)
    res = prune_channels(tuned, x, 0.0, per_layer=ratios)
    kept = {r["name"]: r["out_after"] / r["out_before"] for r in res.layers}
    assert kept["layer1.0.conv1"] < kept["layer2.0.conv1"] < 1.0
    assert {n for n, k in kept.items() if k < 1.0} == {"layer1.0.conv1", "layer2.0.conv1"}
    assert res.per_layer == ratios


def test_ratios_from_latency_scale_by_time_and_clip():
    from pipeline.prune.channels import ratios_from_latency

    times = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 0.0, "e": 14.0}
    mean = sum(times.values()) / len(times)
    got = ratios_from_latency(times, 0.4, max_ratio=0.8)
    assert got == pytest.approx({n: min(0.4 * t / mean, 0.8) for n, t in times.items()})
    assert got["e"] == 0.8 and got["d"] == 0.0 and got["a"] < got["b"] < got["c"]
    for bad in ({}, {"a": -1.0}, {"a": 0.0}, {"a": float("nan")}):
        with pytest.raises(PipelineError):
            ratios_from_latency(bad, 0.5)
    with pytest.raises(PipelineError):
        ratios_from_latency(times, 1.0)


def test_onnx_node_names_map_to_module_names_on_real_exports():
    from pipeline.prune.channels import module_name_of_onnx_node, module_times_from_onnx

    for build in (lambda: vision.ResNet(vision.Bottleneck, [1, 1, 1, 1], num_classes=10),
                  lambda: vision.MobileNetV2(num_classes=10, width_mult=0.5)):
        model = seeded(build)
        graph = onnx_from_torch(model, torch.randn(1, 3, 32, 32)).graph
        modules = dict(model.named_modules())
        mapped = {n.name: module_name_of_onnx_node(n.name) for n in graph.node if n.op_type in ("Conv", "Gemm")}
        assert all(isinstance(modules.get(m), (nn.Conv2d, nn.Linear)) for m in mapped.values()), mapped
        assert set(mapped.values()) == {n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert module_name_of_onnx_node("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert module_name_of_onnx_node("/features/features.1/conv/conv.0/conv.0.0/Conv") == "features.1.conv.0.0"
    assert module_name_of_onnx_node("/fc/Gemm") == "fc"
    for outside in ("/Flatten", "Conv_0", "", "/"):
        assert module_name_of_onnx_node(outside) is None
    times = {"/conv1/Conv": 1.0, "/conv1/Conv_1": 0.5, "/relu/Relu": 2.0, "/layer1/layer1.0/Add": 3.0,
             "/fc/Gemm": 0.25, "/Flatten": 9.0}
    assert module_times_from_onnx(times) == {"conv1": 1.5, "fc": 0.25}


@needs_tp
def test_prune_channels_errors():
    from pipeline.prune.channels import prune_channels

    x = torch.randn(2, 8)
    for ratio in (1.0, -0.1, float("nan")):
        with pytest.raises(PipelineError, match="ratio"):
            prune_channels(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), x, ratio)
    with pytest.raises(PipelineError, match="nothing to prune"):
        prune_channels(nn.Sequential(nn.Linear(8, 4)), x, 0.5)
    with pytest.raises(PipelineError, match="no module named 'nope'"):
        prune_channels(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), x, 0.5, per_layer={"nope": 0.5})
    # Torch-Pruning leaves a layer whole when its kept count rounds down to 0: the result says so.
    res = prune_channels(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), x, 0.5, round_to=32)
    assert res.layers[0]["out_after"] == 16 and res.pruned_layers == [] and "round_to=32" in res.warnings[0]
    assert prune_channels(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), x, 0.5).warnings == []
    with pytest.raises(PipelineError, match="example inputs"):
        prune_channels(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), torch.randn(2, 5), 0.5)


@needs_tp
def test_digits_pruned_then_finetuned_recovers_top1(digits_model):
    from pipeline.prune.channels import prune_channels

    trained, metrics, split = digits_model
    model = copy.deepcopy(trained)
    x_train, x_test = split.train_x[:, None], split.test_x[:, None]
    base = top1(model, x_test, split.test_y)
    assert base == pytest.approx(metrics["test_accuracy"]) and base > 0.9

    res = prune_channels(model, torch.from_numpy(x_test[:2].copy()), 0.5)
    pruned = top1(model, x_test, split.test_y)
    assert res.params_after < res.params_before and res.macs_after < res.macs_before
    assert pruned < base  # half the channels gone without retraining costs accuracy

    hist = finetune(model, x_train, split.train_y, epochs=4, seed=0)
    tuned = top1(model, x_test, split.test_y)
    assert hist["loss"][-1] < hist["loss"][0] and hist["steps"] == 4 * -(-len(x_train) // 64)
    assert tuned >= base - 0.03, (base, pruned, tuned)
    assert not model.training


# ----------------------------------------------------------------------------- 2:4 sparsity


def test_mask_24_hand_example_and_errors():
    w = np.array([[1.0, -3.0, 2.0, 0.5, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    expected = np.array([[False, True, True, False, True, True, False, False]])
    np.testing.assert_array_equal(mask_24(w, axis=1), expected)
    np.testing.assert_array_equal(mask_24(w.T, axis=0), expected.T)  # the same pattern on an [in, out] weight
    with pytest.raises(PipelineError, match="multiple of 4"):
        mask_24(np.ones((4, 6)), axis=1)
    with pytest.raises(PipelineError, match="out of range"):
        mask_24(np.ones((4, 8)), axis=2)


def test_mask_24_keeps_the_two_largest_of_every_four_on_random_weights():
    w = np.random.default_rng(0).normal(size=(6, 16, 3, 3)).astype(np.float32)
    mask = mask_24(w, axis=1)
    assert mask.shape == w.shape and mask.dtype == bool
    groups = np.abs(w).reshape(6, 4, 4, 3, 3)  # (K, C/4, 4, R, S): groups of 4 consecutive input channels
    kept = mask.reshape(6, 4, 4, 3, 3)
    assert (kept.sum(axis=2) == 2).all()
    smallest_kept = np.where(kept, groups, np.inf).min(axis=2)
    largest_dropped = np.where(kept, -np.inf, groups).max(axis=2)
    assert (smallest_kept >= largest_dropped).all()


def test_apply_24_then_check_24_on_the_onnx_export():
    from pipeline.prune.channels import module_name_of_onnx_node

    model = seeded(SmallNet)
    x = torch.randn(2, 3, 8, 8)
    dense = check_24(onnx_from_torch(model, x))
    assert [r["node"] for r in dense if not r["eligible"]] == ["/stem/Conv", "/dw/Conv", "/grouped/Conv"]
    assert all(r["violating_groups"] == r["groups_checked"] > 0 for r in dense if r["eligible"])
    assert summary_24(dense)["sparse_24"] == 0 and summary_24(dense)["violating"] == 4

    res = apply_24(model)
    assert set(res.masks) == {"conv", "pw", "proj", "fc"}
    assert "multiple of 4" in res.skipped["stem"] and "depthwise" in res.skipped["dw"]
    assert "grouped" in res.skipped["grouped"]
    for name, mask in res.masks.items():
        w = dict(model.named_modules())[name].weight.detach()
        assert mask.shape == w.shape and (w[~mask] == 0).all() and int(mask.sum()) * 2 == mask.numel()

    rows = check_24(onnx_from_torch(model, x))
    by_module = {module_name_of_onnx_node(r["node"]): r for r in rows}
    assert {m for m, r in by_module.items() if r["sparse_24"]} == set(res.masks)
    assert by_module["proj"]["op"] == "MatMul" and by_module["proj"]["axis"] == 0
    assert by_module["proj"]["weight_shape"] == [16, 12]
    assert by_module["fc"]["op"] == "Gemm" and by_module["fc"]["axis"] == 1
    assert by_module["dw"]["reason"].startswith("depthwise") and not by_module["dw"]["sparse_24"]
    summary = summary_24(rows)
    masked = sum(m.numel() for m in res.masks.values())
    assert summary["sparse_24"] == summary["checked"] == 4 and summary["ineligible"] == 3
    assert summary["weights_24"] == masked
    assert summary["share_24"] == pytest.approx(masked / sum(r["weights"] for r in rows))

    skipped = apply_24(seeded(SmallNet), skip=["fc"])
    assert "fc" not in skipped.masks and skipped.skipped["fc"] == "skipped on request"
    with pytest.raises(PipelineError, match="nope"):
        apply_24(seeded(SmallNet), skip=["nope"])


def _qdq_conv_model(w_sparse: np.ndarray, w_int8: np.ndarray) -> onnx.ModelProto:
    """x -> Conv(DQ(Q(float weight)), per-channel) -> Conv(DQ(int8 weight)) -> y."""
    k = w_sparse.shape[0]
    scale_q = (np.abs(w_sparse).reshape(k, -1).max(1) / 127).astype(np.float32)
    inits = [
        numpy_helper.from_array(w_sparse, "w"),
        numpy_helper.from_array(scale_q, "w_scale"),
        numpy_helper.from_array(np.zeros(k, np.int8), "w_zp"),
        numpy_helper.from_array(w_int8, "w2_q"),
        numpy_helper.from_array(np.array(0.02, np.float32), "w2_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w2_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["w_q"], name="w_Q", axis=0),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="w_DQ", axis=0),
        helper.make_node("Conv", ["x", "w_dq"], ["h"], name="conv_qdq", pads=[1, 1, 1, 1]),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_scale", "w2_zp"], ["w2_dq"], name="w2_DQ"),
        helper.make_node("Conv", ["h", "w2_dq"], ["y"], name="conv_int8", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 5, 5])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_check_24_follows_qdq_to_the_weights_the_layer_sees(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 8, 3, 3)).astype(np.float32)
    w = np.where(mask_24(w, axis=1), w, 0.0).astype(np.float32)
    q = rng.integers(-100, 100, size=(8, 8, 3, 3)).astype(np.int8)
    q_sparse = np.where(mask_24(q.astype(np.float32), axis=1), q, 0).astype(np.int8)

    path = tmp_path / "qdq.onnx"
    onnx.save(_qdq_conv_model(w, q_sparse), path)
    rows = {r["node"]: r for r in check_24(path)}
    assert rows["conv_qdq"]["quantized"] and rows["conv_int8"]["quantized"]
    assert rows["conv_qdq"]["weight"] == "w_dq" and rows["conv_qdq"]["groups_checked"] == 8 * 2 * 9
    assert rows["conv_qdq"]["sparse_24"] and rows["conv_int8"]["sparse_24"]
    assert run_ort(onnx.load(path), np.ones((1, 8, 5, 5), np.float32)).shape == (1, 8, 5, 5)

    # Dense int8 weights violate; float weights whose dropped values round to 0 in INT8 are 2:4 as the layer sees them.
    tiny = np.where(mask_24(w, axis=1), w, 1e-6).astype(np.float32)
    rows = {r["node"]: r for r in check_24(_qdq_conv_model(tiny, q))}
    assert rows["conv_qdq"]["sparse_24"] and not rows["conv_int8"]["sparse_24"]
    assert rows["conv_int8"]["violating_groups"] > 0
    assert not check_24(helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="plain")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 5, 5])], [numpy_helper.from_array(tiny, "w")],
    )))[0]["sparse_24"]


def test_check_24_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        check_24(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(PipelineError):
        check_24(bad)


def test_finetune_with_masks_keeps_the_24_zeros(digits_model):
    trained, _, split = digits_model
    x_train, x_test = split.train_x[:, None], split.test_x[:, None]
    base = top1(trained, x_test, split.test_y)

    model = copy.deepcopy(trained)
    res = apply_24(model)
    assert set(res.masks) == {"features.2", "features.5", "classifier.1", "classifier.3"}
    assert "features.0" in res.skipped  # 1 input channel
    masked = {n: dict(model.named_modules())[n].weight.detach().clone() for n in res.masks}
    hist = finetune(model, x_train, split.train_y, epochs=2, masks=res.masks, seed=0, weight_decay=1e-4)
    modules = dict(model.named_modules())
    for name, mask in res.masks.items():
        w = modules[name].weight.detach()
        assert (w[~mask] == 0).all() and not torch.equal(w[mask], masked[name][mask]), name
    # The gradient hooks are gone once finetune returns: masked weights get gradients again.
    model.zero_grad()
    nn.functional.cross_entropy(model(torch.from_numpy(x_train[:64].copy())), torch.from_numpy(split.train_y[:64].copy())).backward()
    assert (modules["features.2"].weight.grad[~res.masks["features.2"]] != 0).any()
    assert hist["steps"] == 2 * -(-len(x_train) // 64)
    assert top1(model, x_test, split.test_y) >= base - 0.03

    # Without the masks the optimizer fills the zeros again: keeping the pattern is the masks' doing.
    free = copy.deepcopy(trained)
    res_free = apply_24(free)
    finetune(free, x_train, split.train_y, epochs=1, seed=0)
    assert (dict(free.named_modules())["features.2"].weight.detach()[~res_free.masks["features.2"]] != 0).any()


def test_importing_pipeline_prune_imports_no_torch():
    code = ("import sys, pipeline.prune, pipeline.prune.sparsity; "
            "assert 'torch' not in sys.modules and 'torch_pruning' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_per_layer_ratio_holds_for_the_whole_residual_group_whatever_the_order():
    """A residual add ties a block's last conv to its shortcut: the largest ratio asked of either applies to both."""
    import torch

    from pipeline.models.digits import load_or_train
    from pipeline.prune.channels import prune_channels

    outs = []
    for per_layer in ({"layer3.conv2": 0.8, "layer3.downsample.0": 0.2}, {"layer3.downsample.0": 0.2, "layer3.conv2": 0.8},
                      {"layer3.conv2": 0.8}):
        model = load_or_train(0, "resnet")[0]
        res = prune_channels(model, torch.zeros(1, 1, 8, 8), 0.0, round_to=None, per_layer=per_layer)
        outs.append({ly["name"]: ly["out_after"] for ly in res.layers})
    assert outs[0] == outs[1] == outs[2]
    assert outs[0]["layer3.conv2"] == outs[0]["layer3.downsample.0"] == 25  # 128 * (1 - 0.8), not 128 * 0.8
    assert outs[0]["layer3.conv1"] == 128  # ratio 0 elsewhere


def test_with_int8_rounding_a_larger_ratio_never_prunes_less():
    """A group whose kept channels would round down to 0 keeps one multiple of round_to instead of staying whole."""
    import torch

    from pipeline.models.digits import load_or_train
    from pipeline.prune.channels import prune_channels

    params = {}
    for ratio in (0.5, 0.75):
        model = load_or_train(0, "resnet")[0]
        res = prune_channels(model, torch.zeros(1, 1, 8, 8), ratio, round_to=32)
        params[ratio] = res.params_after
        assert all(ly["out_after"] % 32 == 0 for ly in res.layers if ly["name"] != "fc")
    assert params[0.75] < params[0.5]
