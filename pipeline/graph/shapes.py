"""Shapes of every tensor: symbolic dims given values, ONNX shape inference, and constant folding
(through :mod:`pipeline.graph.fold`) so shapes computed at run time become static.

Exported attention computes its reshape targets at run time (``Shape -> Gather -> Concat ->
Reshape``); ONNX shape inference alone propagates values through few ops, so those shapes stay
unknown. :func:`infer_with_folding` folds the small constant subgraphs and re-infers until nothing
new folds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnx_graphsurgeon as gs

Shape = Tuple[int, ...]

#: TensorProto data types stored as floats: FLOAT, FLOAT16, DOUBLE, BFLOAT16, the FLOAT8 types, FLOAT4E2M1.
FLOAT_TYPES = frozenset({1, 10, 11, 16, 17, 18, 19, 20, 23})
#: TensorProto integer/bool types and their element sizes in bytes (INT4/UINT4 pack two per byte).
INT_SIZES = {2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 12: 4, 13: 8, 21: 0.5, 22: 0.5}
#: Initializers up to this many elements stay constants when folding for shapes; bigger ones (weights)
#: only contribute their dims, and constant results above it are not folded.
FOLD_MAX_ELEMENTS = 1 << 16
#: Rounds of fold + re-infer (each round can unlock the next Shape -> Reshape chain).
FOLD_MAX_ROUNDS = 8


def numel(shape: Sequence[int]) -> int:
    """Elements of a tensor of ``shape`` (1 for a scalar)."""
    return math.prod(shape) if shape else 1


class UnknownShape(Exception):
    """A tensor's shape is not known; ``tensor`` names it."""

    def __init__(self, tensor: str):
        super().__init__(tensor)
        self.tensor = tensor


def substitute_dims(model: "onnx.ModelProto", batch_size: int, dims: Mapping[str, int]) -> Tuple[int, List[str]]:
    """Give symbolic dims values, in place: the leading dim of every graph input is the batch.

    Intermediate ``value_info`` is dropped: exporters annotate intermediates with their own symbolic
    dims ("Add227_dim_0"), which inference would keep instead of computing values.

    Args:
        model: the model (modified).
        batch_size: value of each graph input's symbolic (or anonymous) leading dim.
        dims: values of other symbolic dims by name, e.g. ``{"sequence": 128}``.

    Returns:
        (the batch the shapes describe (an input's fixed batch wins), notes on assumptions).
    """
    notes: List[str] = []
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    values = dict(dims)
    effective = batch_size
    for inp in graph.input:
        if inp.name in init_names or not inp.type.HasField("tensor_type"):
            continue
        shape = inp.type.tensor_type.shape
        if not shape.dim:
            continue
        d0 = shape.dim[0]
        if d0.HasField("dim_value"):
            if d0.dim_value != batch_size:
                effective = int(d0.dim_value)
                notes.append(f"input '{inp.name}' has a fixed batch of {d0.dim_value}; batch_size "
                             f"{batch_size} cannot change it, costs are for batch {d0.dim_value}")
        elif d0.dim_param:
            values.setdefault(d0.dim_param, batch_size)
        else:  # anonymous dynamic dim
            d0.dim_value = batch_size
    del graph.value_info[:]
    left = _assign_dims(graph.input, values, clear_unknown=False) | _assign_dims(graph.output, values, True)
    if left:
        notes.append(f"symbolic dims without a value: {sorted(left)} (pass dims={{name: size}});"
                     " nodes that depend on them are marked 'shape unknown'")
    return effective, notes


def _assign_dims(value_infos: Iterable[Any], values: Mapping[str, int], clear_unknown: bool) -> Set[str]:
    """Set named dims to their values (setting a value clears dim_param); return the names left.

    ``clear_unknown`` (graph outputs) drops unknown names so inference computes those dims.
    """
    left: Set[str] = set()
    for vi in value_infos:
        if not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param and d.dim_param in values:
                d.dim_value = int(values[d.dim_param])
            elif d.dim_param and clear_unknown:
                d.ClearField("dim_param")
            elif d.dim_param:
                left.add(d.dim_param)
    return left


def infer_shapes(model: "onnx.ModelProto", strict: bool = False) -> "onnx.ModelProto":
    """ONNX shape inference with data propagation (a new model).

    Args:
        strict: fail on any op inference cannot handle (else such tensors stay unknown).

    Raises:
        PipelineError: inference rejects the model.
    """
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, check_type=strict, strict_mode=strict, data_prop=True)
    except Exception as err:  # onnx raises InferenceError / ValidationError / RuntimeError
        raise PipelineError(
            f"ONNX shape inference failed: {err}",
            hint="check the model with onnx.checker.check_model, or re-export it with static shapes",
        ) from err


def _shape_model(model: "onnx.ModelProto", max_elements: int) -> Tuple["onnx.ModelProto", FrozenSet[str]]:
    """A copy of ``model`` whose big or external initializers are typed graph inputs (dims kept,
    data never read or copied) and whose small initializers stay constants."""
    from onnx import TensorProto, helper

    graph = model.graph
    input_names = {i.name for i in graph.input}
    small, big_inputs = [], []
    for init in graph.initializer:
        if init.data_location != TensorProto.EXTERNAL and numel(init.dims) <= max_elements:
            small.append(init)
        elif init.name not in input_names:
            big_inputs.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    small_names = {i.name for i in small}
    weights = frozenset(i.name for i in graph.initializer if i.name not in small_names)
    inputs = [i for i in graph.input if i.name not in small_names] + big_inputs
    g = helper.make_graph(list(graph.node), graph.name or "g", inputs, list(graph.output), initializer=small)
    m = helper.make_model(g, opset_imports=list(model.opset_import))
    m.ir_version = max(model.ir_version, 4)
    return m, weights


def infer_with_folding(model: "onnx.ModelProto", max_elements: int = FOLD_MAX_ELEMENTS,
                       max_rounds: int = FOLD_MAX_ROUNDS) -> Tuple["onnx.ModelProto", FrozenSet[str]]:
    """Shape-infer ``model``, folding small constant subgraphs until shapes stop changing.

    Each round: ONNX shape inference, then graphsurgeon's ``fold_constants`` (``Shape`` of static
    tensors, constant subgraphs evaluated by ONNX Runtime, results up to ``max_elements`` int64s).
    Weights (initializers above ``max_elements``, or stored externally) become typed graph inputs
    of the helper model, so their data is neither read nor copied.

    Args:
        model: a model whose symbolic dims have values (:func:`substitute_dims`); not modified.

    Returns:
        (the inferred helper model, with every folded value as an initializer; names of the
        weights turned into inputs). Use it for shapes and types only: folded nodes are gone.
    """
    from onnx import numpy_helper

    from pipeline.graph.fold import fold_constants

    helper_model, weights = _shape_model(model, max_elements)
    folded: Dict[str, Any] = {}
    inferred = infer_shapes(helper_model)
    for _ in range(max_rounds):
        if not _foldable_left(inferred):
            break  # spares a graphsurgeon round that would find nothing
        helper_model, new = fold_constants(inferred, size_threshold=max_elements * 8)
        new = {k: v for k, v in new.items() if k not in folded}
        if not new:
            break
        folded.update(new)
        inferred = infer_shapes(helper_model)
    have = {i.name for i in inferred.graph.initializer}
    inferred.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in folded.items() if k not in have)
    return inferred, weights


def _foldable_left(model: "onnx.ModelProto") -> bool:
    """Whether a fold round could change anything: a Constant node, a Shape/Size of a static
    tensor, or a default-domain node reading constants only."""
    from pipeline.graph.edges import NONDETERMINISTIC_OPS

    graph = model.graph
    consts = {i.name for i in graph.initializer}
    static = set(consts)
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            static.add(vi.name)
    for node in graph.node:
        if node.op_type == "Constant" or (node.op_type in ("Shape", "Size") and node.input[0] in static):
            return True
        present = [t for t in node.input if t]
        if (present and node.domain in ("", "ai.onnx") and node.op_type not in NONDETERMINISTIC_OPS
                and all(t in consts for t in present)):
            return True
    return False


@dataclass
class TensorInfo:
    """Shape, element type and constness of every tensor of a shape-inferred model.

    Attributes:
        shapes: name -> static shape, or None when not (fully) known.
        types: name -> TensorProto element type.
        constants: initializers and the names passed as constants.
        graph_inputs: non-constant graph inputs; graph_outputs: graph outputs.
    """

    shapes: Dict[str, Optional[Shape]] = field(default_factory=dict)
    types: Dict[str, int] = field(default_factory=dict)
    constants: Set[str] = field(default_factory=set)
    graph_inputs: List[str] = field(default_factory=list)
    graph_outputs: List[str] = field(default_factory=list)

    def shape(self, name: str) -> Shape:
        """The static shape of ``name``.

        Raises:
            UnknownShape: not known.
        """
        shape = self.shapes.get(name)
        if shape is None:
            raise UnknownShape(name)
        return shape

    def known(self, name: str) -> bool:
        """True when ``name`` has a static shape."""
        return self.shapes.get(name) is not None

    def elem_bytes(self, name: str, float_bytes: float) -> float:
        """Bytes per element: ``float_bytes`` for float (or untyped) tensors, else the integer size."""
        elem = self.types.get(name, 1)
        if elem in FLOAT_TYPES or elem not in INT_SIZES:
            return float_bytes
        return INT_SIZES[elem]


def tensor_info(model: "onnx.ModelProto", constants: Iterable[str] = ()) -> TensorInfo:
    """:class:`TensorInfo` of a shape-inferred model (graph inputs, value_info, outputs,
    initializers and Constant nodes); ``constants`` are extra names to treat as constant."""
    graph = model.graph
    info = TensorInfo(constants=set(constants))
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if not vi.type.HasField("tensor_type"):
            continue
        t = vi.type.tensor_type
        info.types[vi.name] = t.elem_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            info.shapes[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
        else:
            info.shapes.setdefault(vi.name, None)
    for init in graph.initializer:
        info.shapes[init.name] = tuple(int(d) for d in init.dims)
        info.types[init.name] = init.data_type
        info.constants.add(init.name)
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            _constant_node_shape(node, info)
    info.graph_inputs = [i.name for i in graph.input if i.name not in info.constants]
    info.graph_outputs = [o.name for o in graph.output]
    return info


def _constant_node_shape(node: Any, info: TensorInfo) -> None:
    for attr in node.attribute:
        if attr.name == "value":
            info.shapes[node.output[0]] = tuple(int(d) for d in attr.t.dims)
            info.types[node.output[0]] = attr.t.data_type
        elif attr.name in ("value_float", "value_int"):
            info.shapes[node.output[0]] = ()
        elif attr.name in ("value_floats", "value_ints"):
            info.shapes[node.output[0]] = (len(attr.floats) or len(attr.ints),)


def elem_type(tensor: "gs.Tensor") -> Optional[int]:
    """TensorProto element type of a graphsurgeon tensor (None when shape inference gave none).

    Lazy initializers answer from their proto: graphsurgeon maps BFLOAT16 to a numpy stand-in
    whose type depends on the onnx version.
    """
    import numpy as np
    from onnx import helper

    values = getattr(tensor, "_values", None)
    if values is not None and hasattr(values, "tensor") and hasattr(values.tensor, "data_type"):
        return int(values.tensor.data_type)
    dtype = tensor.dtype
    if dtype is None:
        return None
    if isinstance(dtype, (int, np.integer)):  # graphsurgeon keeps types numpy lacks as TensorProto enums
        return int(dtype)
    try:
        return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    except (KeyError, TypeError, ValueError):
        return None


__all__ = ["FLOAT_TYPES", "FOLD_MAX_ELEMENTS", "INT_SIZES", "TensorInfo", "UnknownShape", "elem_type", "infer_shapes",
           "infer_with_folding", "numel", "substitute_dims", "tensor_info"]
