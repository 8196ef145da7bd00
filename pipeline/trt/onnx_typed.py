"""FP16/BF16 ONNX for strongly typed TensorRT (11.x): the graph carries the precision, not a flag.

TensorRT 11 removed ``BuilderFlag.FP16/BF16``; a strongly typed network runs each layer in the type
its ONNX tensors have. :func:`typed_onnx_from_onnx` converts float32 tensors to the low type and
keeps numerically unsafe ops (exponentials, reductions, normalizations: their ranges or sums
overflow FP16) in FP32 with Cast nodes around them, the same policy NVIDIA ModelOpt's AutoCast
applies. The graph's inputs and outputs stay float32 so callers feed the same arrays.

The graph is walked and edited on the project's graph layer (:mod:`pipeline.graph`, onnx-graphsurgeon):
each tensor knows its producer and readers, so no name index is built here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, FrozenSet, Iterable, List, Optional, Tuple

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.graph import (NameSource, cleanup, consumer_slots, elem_type, infer_shapes, insert_cast, load_model,
                            producer_of, save_model, to_graph, to_model)

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnx_graphsurgeon as gs

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
#: TensorProto element types (onnx.TensorProto.FLOAT / FLOAT16 / BFLOAT16), spelled out so this
#: module imports without onnx.
_FLOAT, _FLOAT16, _BFLOAT16 = 1, 10, 16

#: Precision of a tensor as produced: ``id(gs.Tensor) -> TensorProto element type`` (float tensors only).
Precisions = Dict[int, int]


def _to_bf16_raw(a: np.ndarray) -> bytes:
    """float32 -> bfloat16 bytes, round to nearest even (numpy has no bfloat16 dtype)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return rounded.tobytes()


def _low_proto(values: np.ndarray, name: str, low: int) -> "onnx.TensorProto":
    """``values`` (float32) as a FLOAT16 or BFLOAT16 TensorProto named ``name``."""
    from onnx import helper, numpy_helper

    if low == _FLOAT16:
        return numpy_helper.from_array(np.asarray(values, dtype=np.float32).astype(np.float16), name)
    return helper.make_tensor(name, _BFLOAT16, np.shape(values), _to_bf16_raw(values), raw=True)


def _lowered(tensor: "gs.Constant", low: int) -> "gs.Constant":
    """``tensor`` with its values in ``low`` (graphsurgeon exports a LazyValues proto as it is, so
    BF16, which numpy cannot hold, goes through a TensorProto)."""
    from onnx_graphsurgeon.ir.tensor import LazyValues

    tensor.values = LazyValues(_low_proto(tensor.values, tensor.name, low))
    return tensor


def _lower_initializers(graph: "gs.Graph", low: int, keep: FrozenSet[str]) -> Precisions:
    """Store in ``low`` every float32 initializer that all its readers read in low precision.

    Returns:
        Precisions of the float initializers (FLOAT or ``low``) and of the float graph inputs (FLOAT).
    """
    import onnx_graphsurgeon as gs

    prec: Precisions = {}
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant):
            continue
        kind = elem_type(tensor)
        uses = consumer_slots(tensor)
        if kind == _FLOAT and uses and all(n.op not in keep and (n.op, k) not in FP32_ONLY_INPUTS for n, k in uses):
            _lowered(tensor, low)
            kind = low
        if kind in (_FLOAT, low):
            prec[id(tensor)] = kind
    for tensor in graph.inputs:
        if elem_type(tensor) == _FLOAT:
            prec[id(tensor)] = _FLOAT
    return prec


def _retype_constant_node(node: "gs.Node", want_low: bool, low: int) -> int:
    """Lower a ``Constant``'s float32 ``value`` when the node runs low; return its output precision.

    ``ConstantOfShape`` keeps its value (and its FP32 output), as does a Constant given by
    ``value_float(s)``: consumers then read it through a Cast.
    """
    import onnx_graphsurgeon as gs

    value = node.attrs.get("value")
    if want_low and node.op == "Constant" and isinstance(value, gs.Constant) and elem_type(value) == _FLOAT:
        node.attrs["value"] = _lowered(value, low)
        return low
    return _FLOAT


def _output_precision(node: "gs.Node", want_low: bool, low: int) -> Optional[int]:
    """Precision of ``node``'s float outputs after retyping it (None: its outputs keep their type).

    A ``Cast`` to float32 in a low-precision region casts to ``low`` instead; Constant nodes lower
    their stored value.
    """
    if node.op == "Cast":
        if node.attrs.get("to") == _FLOAT and want_low:
            node.attrs["to"] = low
        to = node.attrs.get("to")
        return to if to in (_FLOAT, low) else None
    if node.op in ("Constant", "ConstantOfShape"):
        return _retype_constant_node(node, want_low, low)
    return low if want_low else _FLOAT


def _retype_nodes(graph: "gs.Graph", prec: Precisions, low: int, keep: FrozenSet[str],
                  names: "NameSource") -> List["gs.Node"]:
    """Give every node the input precision it runs in (Casts where the producer's differs) and
    record its outputs' precision, in graph order.

    Args:
        prec: precisions known so far (graph inputs, initializers); extended with node outputs.

    Returns:
        The new node list: each inserted Cast right before its first reader, so the order stays
        topological.
    """
    casts: Dict[Tuple[int, int], "gs.Node"] = {}  # one Cast per (tensor, target type), shared by readers
    nodes: List["gs.Node"] = []
    for node in list(graph.nodes):
        want_low = node.op not in keep
        for k, tensor in enumerate(list(node.inputs)):
            have = prec.get(id(tensor))
            if have is None:
                continue  # not a float tensor (or an omitted optional input)
            target = _FLOAT if (not want_low or (node.op, k) in FP32_ONLY_INPUTS) else low
            if have == target:
                continue
            cast = casts.get((id(tensor), target))
            if cast is None:
                cast = casts[(id(tensor), target)] = insert_cast(tensor, [], target, names)
                nodes.append(cast)
            node.inputs[k] = cast.outputs[0]
        out = _output_precision(node, want_low, low)
        for tensor in node.outputs:
            # Float per shape inference; a Cast's outputs take its target type whatever it was.
            if out is not None and (node.op == "Cast" or elem_type(tensor) == _FLOAT):
                prec[id(tensor)] = out
        nodes.append(node)
    return nodes


def _cast_outputs_back(graph: "gs.Graph", prec: Precisions, low: int, dtype: str, names: "NameSource") -> None:
    """Keep graph outputs float32: a low output is renamed ``<name>__<dtype>`` (its readers keep
    it) and a Cast back to float32 takes the output's name."""
    for i, tensor in enumerate(list(graph.outputs)):
        if prec.get(id(tensor)) != low or producer_of(tensor) is None:
            continue
        name = tensor.name
        tensor.name = names(f"{name}__{dtype}")
        tensor.dtype = None  # stale float32 from inference: re-inferred after the export
        cast = insert_cast(tensor, [], _FLOAT, names)
        out = cast.outputs[0]
        out.name, out.dtype, out.shape = name, np.float32, tensor.shape
        graph.nodes.append(cast)
        graph.outputs[i] = out


def typed_onnx_from_onnx(src: str | Path, dst: str | Path, dtype: str = "fp16",
                         keep_fp32: Optional[Iterable[str]] = None) -> Path:
    """Write ``dst``: ``src`` with float32 compute in ``dtype`` except numerically unsafe ops.

    Args:
        src: float32 ONNX.
        dst: output path (written atomically; weights beside it as ``<name>.data`` above 2 GiB).
        dtype: ``fp16`` or ``bf16``.
        keep_fp32: op types kept in FP32 (default :data:`NUMERICALLY_UNSAFE_OPS`).

    Returns:
        ``dst``.

    Raises:
        PipelineError: unknown dtype; the source is unreadable; the converted model fails shape
            inference or the ONNX checker.
    """
    import onnx

    if dtype not in ("fp16", "bf16"):
        raise PipelineError(f"Typed conversion to {dtype!r} is not supported.", "Use fp16 or bf16.")
    low = _FLOAT16 if dtype == "fp16" else _BFLOAT16
    keep = frozenset(keep_fp32) if keep_fp32 is not None else NUMERICALLY_UNSAFE_OPS
    source = infer_shapes(load_model(src))  # element types of every tensor decide what is float
    graph = to_graph(source)
    names = NameSource([*graph.tensors(), *(n.name for n in graph.nodes)])
    prec = _lower_initializers(graph, low, keep)
    graph.nodes = _retype_nodes(graph, prec, low, keep, names)
    _cast_outputs_back(graph, prec, low, dtype, names)
    model = to_model(cleanup(graph), like=source)
    del model.graph.value_info[:]  # stale types: shape inference below rewrites them
    model = infer_shapes(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise PipelineError(f"The {dtype} conversion of {src} is not a valid ONNX: {err}",
                            "Report the model; meanwhile build it with precision=fp32 or a Q/DQ ONNX.") from err
    return save_model(model, dst)
