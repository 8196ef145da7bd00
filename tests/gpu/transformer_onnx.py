"""A tiny transformer-like ONNX (int64 ``input_ids`` + ``attention_mask``), in tests/onnx_models.py style.

One embedding lookup, one self-attention head with the padding mask added to the scores, mean
pooling and a classifier: the input signature of a Hugging Face encoder exported from PyTorch
(int64 ids and mask), small enough to build in seconds on TensorRT 8.6 (opset 17, IR 8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, SEQ, DIM, CLASSES = 50, 8, 16, 5


def tiny_transformer(path: Path, seed: int = 0) -> Path:
    """Write the model to ``path`` (dynamic batch ``N``, sequence length :data:`SEQ`) and return it."""
    rng = np.random.default_rng(seed)

    def w(name, *shape, scale=0.5):
        return numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name)

    inits = [w("emb", VOCAB, DIM), w("wq", DIM, DIM), w("wk", DIM, DIM), w("wv", DIM, DIM), w("wo", CLASSES, DIM),
             w("bo", CLASSES), numpy_helper.from_array(np.array(1.0 / np.sqrt(DIM), np.float32), "scale"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(-1e4, np.float32), "neg"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "input_ids"], ["x"], name="/embeddings/Gather"),
        n("MatMul", ["x", "wq"], ["q"], name="/attn/q/MatMul"),
        n("MatMul", ["x", "wk"], ["k"], name="/attn/k/MatMul"),
        n("MatMul", ["x", "wv"], ["v"], name="/attn/v/MatMul"),
        n("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="/attn/Transpose"),
        n("MatMul", ["q", "kt"], ["scores"], name="/attn/scores/MatMul"),
        n("Mul", ["scores", "scale"], ["scaled"], name="/attn/Mul"),
        n("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT, name="/mask/Cast"),
        n("Unsqueeze", ["maskf", "axis1"], ["mask3"], name="/mask/Unsqueeze"),
        n("Sub", ["one", "mask3"], ["inv"], name="/mask/Sub"),
        n("Mul", ["inv", "neg"], ["bias"], name="/mask/Mul"),
        n("Add", ["scaled", "bias"], ["masked"], name="/attn/Add"),
        n("Softmax", ["masked"], ["probs"], axis=-1, name="/attn/Softmax"),
        n("MatMul", ["probs", "v"], ["ctx"], name="/attn/ctx/MatMul"),
        n("ReduceMean", ["ctx"], ["pooled"], axes=[1], keepdims=0, name="/pool/ReduceMean"),
        n("Gemm", ["pooled", "wo", "bo"], ["logits"], transB=1, name="/classifier/Gemm"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_transformer",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", SEQ]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", SEQ])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def token_batch(n: int, seed: int = 0) -> dict:
    """``{input_ids, attention_mask}`` int64 arrays of ``n`` sequences, the last quarter of most padded."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(n, SEQ), dtype=np.int64)
    mask = np.ones((n, SEQ), np.int64)
    mask[1:, -SEQ // 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}
