"""Structural keep-float rules (pipeline/quantize/placement.py): found from ops and edges, never names.

Every graph is built with ``onnx.helper``; the tests assert exactly which compute nodes stay in float,
and that renaming every node, tensor and initializer to random strings changes nothing.
"""

from __future__ import annotations

import random
import string
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
import pytest
from onnx import helper

from pipeline.core.config import QuantConfig
from pipeline.core.errors import PipelineError
from pipeline.quantize import quantize_onnx
from pipeline.quantize.placement import RULES, keep_float_nodes
from pipeline.quantize.qdq import plan_qdq
from tests.onnx_models import make_model, mlp, small_cnn, weights

D, FF, S = 8, 16, 6
MATMUL_OPS = ("MatMul", "Gemm")


def _gelu_nodes(kind: str, x: str, y: str) -> List[onnx.NodeProto]:
    """The activation between ``x`` (bias-added up-projection) and ``y``."""
    mk = helper.make_node
    if kind == "erf":  # PyTorch exact GELU export: x * (erf(x / sqrt2) + 1) * 0.5
        return [mk("Div", [x, "c_sqrt2"], ["g_div"], name="act_div"), mk("Erf", ["g_div"], ["g_erf"], name="act_erf"),
                mk("Add", ["g_erf", "c_one"], ["g_add"], name="act_add"),
                mk("Mul", [x, "g_add"], ["g_mul"], name="act_mul"), mk("Mul", ["g_mul", "c_half"], [y], name="act_mul1")]
    if kind == "erf_half_first":  # 0.5 x * (1 + erf(x * 1/sqrt2)), the other common order
        return [mk("Mul", [x, "c_half"], ["g_hx"], name="act_half"), mk("Mul", [x, "c_isqrt2"], ["g_sc"], name="act_sc"),
                mk("Erf", ["g_sc"], ["g_erf"], name="act_erf"), mk("Add", ["c_one", "g_erf"], ["g_add"], name="act_add"),
                mk("Mul", ["g_hx", "g_add"], [y], name="act_mul")]
    if kind == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        return [mk("Pow", [x, "c_three"], ["t_pow"], name="act_pow"),
                mk("Mul", ["t_pow", "c_044"], ["t_m"], name="act_m"), mk("Add", [x, "t_m"], ["t_a"], name="act_a"),
                mk("Mul", ["t_a", "c_s2pi"], ["t_s"], name="act_s"), mk("Tanh", ["t_s"], ["t_t"], name="act_tanh"),
                mk("Add", ["t_t", "c_one"], ["t_1"], name="act_1"), mk("Mul", [x, "t_1"], ["t_x"], name="act_x"),
                mk("Mul", ["t_x", "c_half"], [y], name="act_out")]
    if kind == "gelu_op":
        return [mk("Gelu", [x], [y], name="act_gelu")]
    if kind == "fastgelu":
        return [mk("FastGelu", [x], [y], name="act_fastgelu", domain="com.microsoft")]
    if kind == "relu":
        return [mk("Relu", [x], [y], name="act_relu")]
    raise ValueError(kind)


def transformer_block(act: str = "erf", pre_ln: bool = False, residual: bool = True) -> onnx.ModelProto:
    """One single-head encoder layer: Q/K/V, softmax(Q K^T s) V, out proj, residual + LN, FFN, residual + LN.

    Compute nodes (graph order): q_proj, k_proj, v_proj, qk, pv, o_proj, ffn_up, ffn_down.
    """
    mk = helper.make_node
    nodes = []
    src = "x"
    if pre_ln:
        nodes.append(mk("LayerNormalization", ["x", "ln0_g", "ln0_b"], ["xn"], name="ln0", axis=-1))
        src = "xn"
    for p in "qkv":
        nodes += [mk("MatMul", [src, f"w{p}"], [f"{p}_mm"], name=f"{p}_proj"),
                  mk("Add", [f"{p}_mm", f"b{p}"], [p], name=f"{p}_bias")]
    nodes += [
        mk("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        mk("MatMul", ["q", "kt"], ["scores"], name="qk"),
        mk("Div", ["scores", "c_scale"], ["scaled"], name="scale"),
        mk("Add", ["scaled", "mask"], ["masked"], name="mask_add"),
        mk("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        mk("MatMul", ["probs", "v"], ["ctx"], name="pv"),
        mk("MatMul", ["ctx", "wo"], ["o_mm"], name="o_proj"),
        mk("Add", ["bo", "o_mm"], ["o"], name="o_bias"),
        mk("Add", ["o", "x"], ["r1"], name="res1"),
        mk("LayerNormalization", ["r1", "ln1_g", "ln1_b"], ["h"], name="ln1", axis=-1),
        mk("MatMul", ["h", "w1"], ["up_mm"], name="ffn_up"),
        mk("Add", ["b1", "up_mm"], ["up"], name="ffn_up_bias"),
    ]
    nodes += _gelu_nodes(act, "up", "a")
    nodes += [mk("MatMul", ["a", "w2"], ["down_mm"], name="ffn_down"),
              mk("Add", ["down_mm", "b2"], ["down"], name="ffn_down_bias")]
    if residual:
        nodes += [mk("Add", ["down", "h"], ["r2"], name="res2"),
                  mk("LayerNormalization", ["r2", "ln2_g", "ln2_b"], ["y"], name="ln2", axis=-1)]
    else:
        nodes += [mk("Identity", ["down"], ["y"], name="out")]
    c = lambda v: np.array(v, np.float32)  # noqa: E731
    inits: Dict[str, np.ndarray] = {
        "wq": weights(D, D, seed=1), "wk": weights(D, D, seed=2), "wv": weights(D, D, seed=3), "wo": weights(D, D, seed=4),
        "bq": weights(D, seed=5), "bk": weights(D, seed=6), "bv": weights(D, seed=7), "bo": weights(D, seed=8),
        "w1": weights(D, FF, seed=9), "b1": weights(FF, seed=10), "w2": weights(FF, D, seed=11), "b2": weights(D, seed=12),
        "mask": np.zeros((1, S, S), np.float32), "c_scale": c(np.sqrt(D)),
        "c_sqrt2": c(np.sqrt(2.0)), "c_isqrt2": c(1 / np.sqrt(2.0)), "c_one": c(1.0), "c_half": c(0.5),
        "c_three": c(3.0), "c_044": c(0.044715), "c_s2pi": c(np.sqrt(2 / np.pi)),
    }
    for ln in ("ln0", "ln1", "ln2"):
        inits[f"{ln}_g"], inits[f"{ln}_b"] = np.ones(D, np.float32), np.zeros(D, np.float32)
    used = {t for n in nodes for t in n.input}
    inits = {k: v for k, v in inits.items() if k in used}
    opset = 20 if act == "gelu_op" else 17
    extra = {"com.microsoft": 1} if act == "fastgelu" else None
    return make_model(nodes, [("x", ["N", S, D])], [("y", ["N", S, D])], inits, opset=opset,
                      check=act != "fastgelu", extra_opsets=extra, name=f"block_{act}")


def randomly_renamed(model: onnx.ModelProto, seed: int = 0) -> Tuple[onnx.ModelProto, Dict[str, str]]:
    """Copy with every node, intermediate tensor and initializer given a random name.

    Returns the copy and ``{new node name: old node name}``.
    """
    rng = random.Random(seed)
    rand = lambda: "".join(rng.choice(string.ascii_letters + string.digits + "/._:") for _ in range(12))  # noqa: E731
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    io = {v.name for v in list(g.input) + list(g.output)}
    tensors = {t for n in g.node for t in list(n.input) + list(n.output) if t} | {i.name for i in g.initializer}
    tmap = {t: (t if t in io else rand()) for t in sorted(tensors)}
    back = {}
    for n in g.node:
        new = rand()
        back[new] = n.name
        n.name = new
        n.input[:] = [tmap.get(t, t) for t in n.input]
        n.output[:] = [tmap.get(t, t) for t in n.output]
    for i in g.initializer:
        i.name = tmap[i.name]
    return m, back


def kept(model: onnx.ModelProto, rules, op_types=MATMUL_OPS, back: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``{original node name: rule}`` kept in float by ``plan_qdq``."""
    plan = plan_qdq(model, op_types=op_types, keep_float=rules)
    back = back or {}
    assert all(plan.skipped[k["node"]].startswith(f"keep_float={k['rule']}: ") for k in plan.kept_float)
    assert not set(plan.nodes) & {k["node"] for k in plan.kept_float}
    return {back.get(k["node"], k["node"]): k["rule"] for k in plan.kept_float}


GELU_KINDS = ["erf", "erf_half_first", "tanh", "gelu_op", "fastgelu"]


@pytest.mark.parametrize("act", GELU_KINDS)
def test_ffn_keeps_exactly_the_two_projections_around_gelu(act):
    assert kept(transformer_block(act), ["ffn"]) == {"ffn_up": "ffn", "ffn_down": "ffn"}


@pytest.mark.parametrize("act", GELU_KINDS + ["relu"])
def test_random_names_do_not_change_the_answer(act):
    model = transformer_block(act)
    for seed in range(3):
        renamed, back = randomly_renamed(model, seed)
        assert not {n.name for n in renamed.graph.node} & {n.name for n in model.graph.node}
        for rules in (["ffn"], ["attention_scores"], ["first", "last"], list(RULES)):
            assert kept(renamed, rules, back=back) == kept(model, rules)
    assert kept(renamed, ["ffn"], back=back) == {"ffn_up": "ffn", "ffn_down": "ffn"}


def test_gelu_reason_names_the_pattern():
    plan = plan_qdq(transformer_block("erf"), op_types=MATMUL_OPS, keep_float=["ffn"])
    reasons = {k["node"]: k["reason"] for k in plan.kept_float}
    assert reasons == {"ffn_up": "FFN up-projection (output feeds GELU (Erf))",
                       "ffn_down": "FFN down-projection (input is GELU (Erf) output)"}
    assert plan.to_dict()["kept_float"] == plan.kept_float


@pytest.mark.parametrize("pre_ln", [False, True])
def test_relu_ffn_inside_a_residual_block_matches(pre_ln):
    assert kept(transformer_block("relu", pre_ln=pre_ln), ["ffn"]) == {"ffn_up": "ffn", "ffn_down": "ffn"}


def test_relu_ffn_without_residual_is_ambiguous_and_left_alone():
    assert kept(transformer_block("relu", residual=False), ["ffn"]) == {}
    # while a GELU FFN is recognised from the activation alone
    assert kept(transformer_block("erf", residual=False), ["ffn"]) == {"ffn_up": "ffn", "ffn_down": "ffn"}


def test_cnn_and_mlp_head_match_no_ffn():
    ops = ("Conv", "Gemm", "MatMul")
    assert kept(small_cnn(), ["ffn"], op_types=ops) == {}
    assert kept(mlp(), ["ffn"], op_types=ops) == {}  # Gemm -> Relu -> Gemm, no residual: not a transformer FFN
    assert kept(small_cnn(), ["attention_scores"], op_types=ops) == {}
    assert kept(small_cnn(), ["first", "last"], op_types=ops) == {"conv": "first", "fc": "last"}
    assert kept(mlp(), ["first", "last"], op_types=ops) == {"fc1": "first", "fc2": "last"}


def test_attention_scores_keeps_qk_and_pv():
    assert kept(transformer_block("erf"), ["attention_scores"]) == {"qk": "attention_scores",
                                                                    "pv": "attention_scores"}


def test_first_last_and_combined_rules():
    block = transformer_block("erf")
    assert kept(block, ["first", "last"]) == {"q_proj": "first", "ffn_down": "last"}
    both = kept(block, ["ffn", "attention_scores", "first", "last"])
    assert both == {"q_proj": "first", "qk": "attention_scores", "pv": "attention_scores",
                    "ffn_up": "ffn", "ffn_down": "ffn+last"}
    assert kept(block, ["first"], op_types=("Gemm",)) == {}  # nothing quantizable, nothing kept


def test_first_skips_nodes_that_are_not_quantizable():
    plan = plan_qdq(transformer_block("erf"), op_types=MATMUL_OPS, keep_float=["first"],
                    exclude_nodes=["q_proj", "k_proj"])
    assert [k["node"] for k in plan.kept_float] == ["v_proj"]
    assert plan.skipped["q_proj"] == "excluded by pattern"


def test_unknown_rule_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="keep_float"):
        plan_qdq(transformer_block("erf"), keep_float=["mlp"])
    with pytest.raises(PipelineError, match="keep_float"):
        keep_float_nodes(transformer_block("erf"), ["ffn", "bogus"])


def test_quantize_onnx_records_kept_nodes_and_keeps_them_float(tmp_path):
    onnx_path = tmp_path / "block.onnx"
    onnx.save(transformer_block("erf"), str(onnx_path))
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((4, S, D)).astype(np.float32)} for _ in range(3)]
    cfg = QuantConfig(calib="max", op_types=list(MATMUL_OPS), keep_float=["ffn"], cache_all_tensors=False)
    res = quantize_onnx(onnx_path, batches, cfg, tmp_path / "block.int8.qdq.onnx", eval_batches=batches[:1],
                        progress=False)
    d = res.to_dict()
    assert [(k["node"], k["rule"]) for k in d["kept_float"]] == [("ffn_up", "ffn"), ("ffn_down", "ffn")]
    assert d["settings"]["keep_float"] == ["ffn"]
    assert d["plan"]["skipped_nodes"]["ffn_up"].startswith("keep_float=ffn: FFN up-projection")
    assert d["num_quantized_nodes"] == 6 and d["float_nodes"] == []
    q = onnx.load(str(res.qdq_onnx_path))
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    by_name = {n.name: n for n in q.graph.node}
    for name in ("ffn_up", "ffn_down"):  # float nodes read float tensors, no DequantizeLinear in front
        assert all(producers.get(t) != "DequantizeLinear" for t in by_name[name].input)
    assert any(producers.get(t) == "DequantizeLinear" for t in by_name["q_proj"].input)
    assert d["metrics"]["output_cosine"] > 0.99


def test_max_pool_output_shares_its_input_scale(tmp_path):
    """DQ -> MaxPool -> Q with one scale folds into an INT8 pool in TensorRT: the stage makes them equal."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pipeline.core.config import QuantConfig
    from pipeline.quantize import quantize_onnx

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 4, 4])], [w1, w2])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    batches = [{"x": rng.normal(size=(4, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    res = quantize_onnx(src, batches, QuantConfig(calib="percentile", percentile=99.0), tmp_path / "q.onnx",
                        progress=False)
    assert "r1" in res.ranges and "p1" in res.ranges
    assert res.ranges["p1"]["amax"] == res.ranges["r1"]["amax"]
    # And in the written graph: the Q on the pool's output has the same scale as the one on its input.
    m = onnx.load(str(res.qdq_onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    scale_of = {n.input[0]: float(inits[n.input[1]]) for n in m.graph.node if n.op_type == "QuantizeLinear"
                and n.input[1] in inits and inits[n.input[1]].size == 1}
    assert scale_of["r1"] == scale_of["p1"]
    assert scale_of["p1"] == pytest.approx(res.ranges["r1"]["amax"] / 127, rel=1e-6)
