"""FP16/BF16 ONNX for strongly typed TensorRT (11.x): the graph carries the precision, not a flag.

TensorRT 11 removed ``BuilderFlag.FP16/BF16``; a strongly typed network runs each layer in the type
its ONNX tensors have. :func:`typed_onnx_from_onnx` converts float32 tensors to the low type and
keeps numerically unsafe ops (exponentials, reductions, normalizations: their ranges or sums
overflow FP16) in FP32 with Cast nodes around them, the same policy NVIDIA ModelOpt's AutoCast
applies. The graph's inputs and outputs stay float32 so callers feed the same arrays.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Optional, Set

import numpy as np

from pipeline.core.artifacts import atomic_path
from pipeline.core.errors import PipelineError

#: Ops kept in FP32: large dynamic range (Exp/Pow), accumulations (reductions, CumSum), and
#: normalizations whose variance sums overflow or lose precision in FP16.
NUMERICALLY_UNSAFE_OPS: FrozenSet[str] = frozenset({
    "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Softmax", "LogSoftmax",
    "ReduceSum", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceSumSquare", "CumSum", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Range", "EyeLike",
})
#: (op, input index) that the ONNX spec fixes to float32 whatever the data type (Resize scales).
FP32_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}


def _to_bf16_raw(a: np.ndarray) -> bytes:
    """float32 -> bfloat16 bytes, round to nearest even (numpy has no bfloat16 dtype)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return rounded.tobytes()


def typed_onnx_from_onnx(src: str | Path, dst: str | Path, dtype: str = "fp16",
                         keep_fp32: Optional[Iterable[str]] = None) -> Path:
    """Write ``dst``: ``src`` with float32 compute in ``dtype`` except numerically unsafe ops.

    Args:
        src: float32 ONNX.
        dst: output path (written atomically).
        dtype: ``fp16`` or ``bf16``.
        keep_fp32: op types kept in FP32 (default :data:`NUMERICALLY_UNSAFE_OPS`).

    Returns:
        ``dst``.

    Raises:
        PipelineError: unknown dtype; the converted model fails the ONNX checker.
    """
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    if dtype not in ("fp16", "bf16"):
        raise PipelineError(f"Typed conversion to {dtype!r} is not supported.", "Use fp16 or bf16.")
    low = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.BFLOAT16
    keep = frozenset(keep_fp32) if keep_fp32 is not None else NUMERICALLY_UNSAFE_OPS
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    g = model.graph

    elem: Dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        elem[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        elem[t.name] = t.data_type
    is_float = lambda name: elem.get(name) == TensorProto.FLOAT  # noqa: E731

    consumers: Dict[str, List[tuple]] = defaultdict(list)
    for node in g.node:
        for i, name in enumerate(node.input):
            consumers[name].append((node, i))

    def runs_low(node) -> bool:
        return node.op_type not in keep

    # Initializers: low if every consumer reads them in low precision.
    low_inits: Set[str] = set()
    for t in g.initializer:
        if t.data_type != TensorProto.FLOAT:
            continue
        uses = consumers.get(t.name, [])
        if uses and all(runs_low(n) and (n.op_type, i) not in FP32_ONLY_INPUTS for n, i in uses):
            arr = numpy_helper.to_array(t)
            if low == TensorProto.FLOAT16:
                t.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), t.name))
            else:
                new = helper.make_tensor(t.name, TensorProto.BFLOAT16, arr.shape, _to_bf16_raw(arr), raw=True)
                t.CopyFrom(new)
            low_inits.add(t.name)

    # Precision of every float tensor as produced: graph inputs are float32; initializers as above.
    prec: Dict[str, int] = {vi.name: TensorProto.FLOAT for vi in g.input if is_float(vi.name)}
    for t in g.initializer:
        if t.data_type in (TensorProto.FLOAT, low):
            prec[t.name] = t.data_type
    new_nodes = []
    cast_cache: Dict[tuple, str] = {}

    def cast(name: str, to: int) -> str:
        if (name, to) not in cast_cache:
            out = f"{name}__cast_{'fp32' if to == TensorProto.FLOAT else dtype}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}_node"))
            cast_cache[(name, to)] = out
        return cast_cache[(name, to)]

    for node in g.node:
        want_low = runs_low(node)
        for i, name in enumerate(node.input):
            if name not in prec:
                continue  # not a float tensor (or an optional empty input)
            target = TensorProto.FLOAT if (not want_low or (node.op_type, i) in FP32_ONLY_INPUTS) else low
            if prec[name] != target:
                node.input[i] = cast(name, target)
        out_prec = low if want_low else TensorProto.FLOAT
        if node.op_type == "Cast":
            if next(a for a in node.attribute if a.name == "to").i == TensorProto.FLOAT and want_low:
                for a in node.attribute:
                    if a.name == "to":
                        a.i = low
            for o in node.output:
                to = next(a for a in node.attribute if a.name == "to").i
                if to in (TensorProto.FLOAT, low):
                    prec[o] = to
            new_nodes.append(node)
            continue
        if node.op_type in ("Constant", "ConstantOfShape"):
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT and want_low and node.op_type == "Constant":
                    arr = numpy_helper.to_array(a.t)
                    a.t.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), a.t.name) if low == TensorProto.FLOAT16
                                 else helper.make_tensor(a.t.name, low, arr.shape, _to_bf16_raw(arr), raw=True))
            for o in node.output:
                if is_float(o):
                    prec[o] = low if (want_low and node.op_type == "Constant") else TensorProto.FLOAT
            new_nodes.append(node)
            continue
        for o in node.output:
            if is_float(o):
                prec[o] = out_prec
        new_nodes.append(node)

    # Graph outputs stay float32: rename the producer's output and cast back under the old name.
    for vo in g.output:
        if prec.get(vo.name) == low:
            inner = f"{vo.name}__{dtype}"
            for n in new_nodes:
                for i, o in enumerate(n.output):
                    if o == vo.name:
                        n.output[i] = inner
                for i, x in enumerate(n.input):
                    if x == vo.name:
                        n.input[i] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [vo.name], to=TensorProto.FLOAT, name=f"{vo.name}_to_fp32"))

    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]  # stale types: shape inference below rewrites them
    model = onnx.shape_inference.infer_shapes(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise PipelineError(f"The {dtype} conversion of {src} is not a valid ONNX: {err}",
                            "Report the model; meanwhile build it with precision=fp32 or a Q/DQ ONNX.") from err
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return Path(dst)
