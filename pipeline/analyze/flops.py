"""Per-node FLOPs and bytes of an ONNX graph (the theory half of the roofline).

Conventions (every number the report shows follows these):

* **FLOPs = 2 x MACs** for Conv, ConvTranspose, Gemm, MatMul, Einsum (and their QLinear/Integer
  forms); a bias adds one FLOP per output element. ``macs`` counts only these real
  multiply-accumulates, so ``macs > 0`` marks the layers Tensor Cores can run.
* Other ops count arithmetic steps per element from :data:`ELEMENTWISE_FLOPS` and the per-op
  rules below (a transcendental such as exp or erf counts 1). These are conventions, not
  instruction counts; they matter little because such layers are memory-bound.
* **Bytes** are DRAM traffic of the node run on its own: every input read once and every output
  written once. Floating-point tensors take ``precision.weight_bytes`` (constant inputs) or
  ``precision.activation_bytes`` (the rest); integer/bool tensors (token ids, masks, shapes) keep
  their own element size. Fusion removes some of this traffic, which is why the roofline also
  gives a whole-model bound.
* **Constants are folded**: a node whose inputs are all constant (initializers, Constant nodes,
  shapes known after batch substitution, weight DequantizeLinear in Q/DQ models) is computed at
  engine build time, so it costs nothing (category ``constant``) and its outputs count as weights.
* **Shapes** come from :func:`pipeline.graph.shapes.infer_with_folding`: ONNX shape inference with
  small constant subgraphs folded by onnx-graphsurgeon (evaluated by ONNX Runtime), so reshape
  targets computed at run time (exported attention) become static.
* **Data movement** ops cost 0 FLOPs. Views (Reshape, Flatten, Squeeze, Unsqueeze, Identity,
  Dropout) and metadata (Shape, Size) also move 0 bytes; copies (Transpose, Concat, Slice, Gather,
  Pad, Cast...) read and write their tensors. A Gather from a constant table reads only the rows it
  returns (output-sized), not the whole table.
* **Q/DQ models**: weight DequantizeLinear nodes fold (above); activation QuantizeLinear /
  DequantizeLinear pairs are costed as written, although TensorRT fuses them into their
  neighbours, so the per-layer sum over-counts them.
* **Unsupported op types** cost 0 FLOPs (bytes still counted), get category ``unknown`` and are
  listed in :attr:`GraphCosts.unsupported_ops`. **Unknown shapes** never raise: the node gets
  ``note`` "shape unknown: ..." and 0 FLOPs and is listed in :attr:`GraphCosts.unknown_shape_nodes`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from pipeline.core.config import PrecisionConfig
from pipeline.core.errors import PipelineError
from pipeline.graph.edges import NONDETERMINISTIC_OPS
from pipeline.graph.shapes import TensorInfo
from pipeline.graph.shapes import UnknownShape as _UnknownShape
from pipeline.graph.shapes import numel as _numel

#: FLOPs per output element of elementwise ops (one per arithmetic step; exp/erf/tanh count 1).
ELEMENTWISE_FLOPS: Dict[str, float] = {
    **{op: 1 for op in (
        "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Neg", "Abs", "Relu",
        "Sign", "Floor", "Ceil", "Round", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
        "And", "Or", "Xor", "Not", "Where", "Mod", "BitShift", "IsNaN", "IsInf", "Erf", "Tanh", "Sin",
        "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
        "ThresholdedRelu", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot")},
    "Sigmoid": 3,  # exp(-x), +1, reciprocal
    "LeakyRelu": 2,  # compare, multiply
    "PRelu": 2,
    "Clip": 2,  # max, min
    "Shrink": 2,
    "Elu": 3,  # exp, -1, multiply
    "Celu": 4,
    "Selu": 4,
    "HardSigmoid": 4,  # multiply, add, max, min
    "HardSwish": 5,  # HardSigmoid + multiply
    "Softplus": 3,  # exp, +1, log
    "Softsign": 3,  # abs, +1, divide
    "Mish": 5,  # softplus + tanh + multiply
    "Gelu": 5,  # exact: x/sqrt2, erf, +1, x*, 0.5*  (tanh approximation: 8, see _gelu)
}
#: Variadic elementwise ops: (inputs - 1) FLOPs per output element (Mean adds one divide).
_VARIADIC = {"Max", "Min", "Sum", "Mean"}

#: FLOPs per element of normalizations: mean (1) + subtract (1) + square (1) + variance sum (1)
#: + multiply by 1/std (1) = 5, then scale (1) and bias (1) where the op has them.
NORM_FLOPS = {
    "BatchNormalization": 2,  # inference: folded to x * a + b
    "LayerNormalization": 6,  # + 1 with the optional bias input
    "InstanceNormalization": 7,
    "GroupNormalization": 7,
    "MeanVarianceNormalization": 5,
    "RMSNormalization": 4,  # square, sum, multiply by 1/rms, scale
    "LpNormalization": 3,  # |x| or x^2, sum, divide
}

#: Reductions: (FLOPs per input element, FLOPs per output element).
REDUCE_FLOPS = {
    "ReduceSum": (1, 0), "ReduceMax": (1, 0), "ReduceMin": (1, 0), "ReduceProd": (1, 0),
    "ReduceMean": (1, 1), "ReduceSumSquare": (2, 0), "ReduceL1": (2, 0), "ReduceL2": (2, 1),
    "ReduceLogSum": (1, 1), "ReduceLogSumExp": (2, 1), "ArgMax": (1, 0), "ArgMin": (1, 0),
    "CumSum": (1, 0),
}

#: Views and metadata: no data moves (TensorRT changes strides, not memory).
VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Shape", "Size",
            "Constant"}
#: Copies: 0 FLOPs, inputs read and outputs written.
COPY_OPS = {"Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND",
            "ScatterND", "ScatterElements", "Scatter", "Expand", "Tile", "Pad", "DepthToSpace",
            "SpaceToDepth", "Cast", "CastLike", "ConstantOfShape", "Range", "OneHot", "Trilu",
            "ReverseSequence", "Compress", "NonZero", "EyeLike", "SplitToSequence"}
_GATHER_OPS = {"Gather", "GatherElements", "GatherND"}
#: Ops never folded even with constant inputs (their output changes run to run).
_NONDETERMINISTIC = NONDETERMINISTIC_OPS
#: Quantization: Q = divide + round + zero-point add + saturate; DQ = subtract zero point + multiply.
QUANT_FLOPS = {"QuantizeLinear": 4, "DequantizeLinear": 2, "DynamicQuantizeLinear": 6}


@dataclass(frozen=True)
class Cost:
    """Work and traffic of some part of a model; costs add up (``sum(costs, Cost())``).

    Attributes:
        flops: floating-point (or integer) operations, 1 MAC = 2.
        macs: multiply-accumulates of conv/gemm/matmul layers only.
        weight_bytes: bytes of constant inputs read.
        activation_bytes: bytes of non-constant inputs read plus outputs written.
    """

    flops: float = 0
    macs: float = 0
    weight_bytes: float = 0.0
    activation_bytes: float = 0.0

    @property
    def bytes(self) -> float:
        """All DRAM traffic, bytes."""
        return self.weight_bytes + self.activation_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte (0 when nothing moves)."""
        return self.flops / self.bytes if self.bytes else 0.0

    def __add__(self, other: "Cost") -> "Cost":
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.flops + other.flops, self.macs + other.macs,
                    self.weight_bytes + other.weight_bytes, self.activation_bytes + other.activation_bytes)

    def __radd__(self, other: Any) -> "Cost":
        if other == 0:  # lets sum() start from its default 0
            return self
        return self.__add__(other)

    def to_dict(self) -> Dict[str, float]:
        """JSON-ready dict including ``bytes`` and ``intensity``."""
        return {"flops": self.flops, "macs": self.macs, "weight_bytes": self.weight_bytes,
                "activation_bytes": self.activation_bytes, "bytes": self.bytes, "intensity": self.intensity}


@dataclass(frozen=True)
class LayerCost:
    """Cost of one ONNX node.

    Attributes:
        name: node name (``<op_type>_<index>`` when the node has none).
        op_type: ONNX op type.
        category: conv, conv_1x1, conv_depthwise, conv_transpose, gemm, matmul, norm, elementwise,
            pool, softmax, resize, reduce, data_movement, quantize, constant (folded) or unknown.
        flops / macs / weight_bytes / activation_bytes / bytes / intensity: as in :class:`Cost`
            (bytes in bytes, intensity in FLOP/byte).
        note: why a number is 0 or approximate ("shape unknown: x", "unsupported op"), else "".
    """

    name: str
    op_type: str
    category: str
    flops: float
    macs: float
    weight_bytes: float
    activation_bytes: float
    bytes: float
    intensity: float
    note: str = ""

    @property
    def cost(self) -> Cost:
        """This layer as a :class:`Cost`."""
        return Cost(self.flops, self.macs, self.weight_bytes, self.activation_bytes)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class GraphCosts:
    """Every node's cost plus what the whole-model bound needs.

    Attributes:
        layers: one :class:`LayerCost` per node, in graph order.
        total: sum of the layers.
        unique_weight_bytes: each constant tensor counted once (shared weights, folded chains).
        io_bytes: graph inputs read plus graph outputs written, bytes.
        unsupported_ops: op type -> node count for types without a cost rule.
        unknown_shape_nodes: nodes whose shapes could not be inferred (0 FLOPs recorded).
        batch_size: the batch the shapes were inferred with.
        notes: assumptions made (fixed batch in the model, symbolic dims left...).
        node_io: per layer (same order), its (non-empty) input and output tensor names; what
            :mod:`pipeline.analyze.fusion` needs to group nodes.
        tensor_bytes: bytes of every non-constant tensor of known shape (activation element size,
            or its own for integer tensors).
        constants: names of constant tensors (initializers and folded outputs).
        graph_inputs / graph_outputs: non-constant graph inputs and the graph outputs.
    """

    layers: List[LayerCost]
    total: Cost
    unique_weight_bytes: float
    io_bytes: float
    unsupported_ops: Dict[str, int] = field(default_factory=dict)
    unknown_shape_nodes: List[str] = field(default_factory=list)
    batch_size: int = 1
    notes: List[str] = field(default_factory=list)
    node_io: List[Tuple[Tuple[str, ...], Tuple[str, ...]]] = field(default_factory=list)
    tensor_bytes: Dict[str, float] = field(default_factory=dict)
    constants: frozenset = frozenset()
    graph_inputs: List[str] = field(default_factory=list)
    graph_outputs: List[str] = field(default_factory=list)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _present(names: Sequence[str]) -> List[str]:
    return [n for n in names if n]


# --- per-op FLOP rules: (flops, macs, category) --------------------------------------------------

def _conv(node: Any, g: TensorInfo, x: str, w: str, bias: Optional[str]) -> Tuple[float, float, str]:
    y = g.shape(node.output[0])
    wshape = g.shape(w)
    kernel = wshape[2:]
    macs = _numel(y) * wshape[1] * _numel(kernel)
    flops = 2 * macs + (_numel(y) if bias else 0)
    groups = int(_attr(node, "group", 1))
    if groups > 1 and wshape[1] == 1:
        category = "conv_depthwise"
    elif groups == 1 and all(k == 1 for k in kernel):
        category = "conv_1x1"
    else:
        category = "conv"
    return flops, macs, category


def _conv_transpose(node: Any, g: TensorInfo) -> Tuple[float, float, str]:
    x = g.shape(node.input[0])
    w = g.shape(node.input[1])  # [C_in, C_out / group, k...]
    y = g.shape(node.output[0])
    # Every input element is scattered into C_out/group x kernel outputs.
    macs = _numel(x) * w[1] * _numel(w[2:])
    bias = len(node.input) > 2 and node.input[2]
    return 2 * macs + (_numel(y) if bias else 0), macs, "conv_transpose"


def _gemm(node: Any, g: TensorInfo) -> Tuple[float, float, str]:
    a = g.shape(node.input[0])
    b = g.shape(node.input[1])
    m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
    n = b[0] if _attr(node, "transB", 0) else b[1]
    macs = m * n * k
    bias = len(node.input) > 2 and node.input[2]
    return 2 * macs + (m * n if bias else 0), macs, "gemm"


def _matmul(node: Any, g: TensorInfo, a: str) -> Tuple[float, float, str]:
    # out = broadcast(batch) x M x N (1-D operands drop their dim); each output needs K MACs.
    k = g.shape(a)[-1]
    macs = _numel(g.shape(node.output[0])) * k
    return 2 * macs, macs, "matmul"


def _einsum(node: Any, g: TensorInfo) -> Tuple[float, float, str]:
    equation = _attr(node, "equation", b"")
    equation = (equation.decode() if isinstance(equation, bytes) else str(equation)).replace(" ", "")
    lhs = equation.split("->")[0]
    terms = lhs.split(",")
    inputs = _present(node.input)
    sizes: Dict[str, int] = {}
    for term, name in zip(terms, inputs):
        shape = g.shape(name)
        if "..." in term:
            # Ellipsis dims become upper-case pseudo letters, broadcast to the largest size.
            explicit = term.replace("...", "")
            n_ell = len(shape) - len(explicit)
            term = term.replace("...", "".join(chr(0x100 + i) for i in range(n_ell)))
        for letter, dim in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), dim)
    total = _numel(list(sizes.values()))
    if len(inputs) == 1:  # transpose / trace / sum: one add per element at most
        return total, 0, "reduce"
    macs = total * (len(inputs) - 1)
    return 2 * macs, macs, "matmul"


def _gelu(node: Any) -> float:
    approx = _attr(node, "approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else str(approx)
    # tanh form: x^3 (2), *0.044715, +x, *sqrt(2/pi), tanh, +1, *x, *0.5 = 9 -> counted 8 (x^3 as 1 pow)
    return 8 if approx == "tanh" else ELEMENTWISE_FLOPS["Gelu"]


def _pool(node: Any, g: TensorInfo) -> float:
    op = node.op_type
    if op.startswith("Global"):
        return _numel(g.shape(node.input[0]))
    kernel = _attr(node, "kernel_shape", [])
    return _numel(g.shape(node.output[0])) * _numel(kernel)


def _resize(node: Any, g: TensorInfo) -> float:
    x = g.shape(node.input[0])
    y = g.shape(node.output[0])
    mode = _attr(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    resized = sum(1 for a, b in zip(x, y) if a != b)
    # Each interpolation tap is one multiply + one add: linear 2 taps per resized axis, cubic 4.
    taps = {"nearest": 0, "linear": 2, "cubic": 4}.get(mode, 0)
    return _numel(y) * (2 * taps**resized if taps else 0)


def _flops_of(node: Any, g: TensorInfo) -> Tuple[float, float, str, str]:
    """(flops, macs, category, note) of a node that is not folded."""
    op = node.op_type
    inputs = list(node.input)
    out = node.output[0] if node.output else ""
    if op == "Conv":
        return (*_conv(node, g, inputs[0], inputs[1], inputs[2] if len(inputs) > 2 and inputs[2] else None), "")
    if op == "ConvInteger":
        return (*_conv(node, g, inputs[0], inputs[1], None), "")
    if op == "QLinearConv":
        return (*_conv(node, g, inputs[0], inputs[3], inputs[8] if len(inputs) > 8 and inputs[8] else None), "")
    if op == "ConvTranspose":
        return (*_conv_transpose(node, g), "")
    if op == "Gemm":
        return (*_gemm(node, g), "")
    if op in ("MatMul", "MatMulInteger"):
        return (*_matmul(node, g, inputs[0]), "")
    if op == "QLinearMatMul":
        return (*_matmul(node, g, inputs[0]), "")
    if op == "Einsum":
        return (*_einsum(node, g), "")
    if op in NORM_FLOPS:
        per = NORM_FLOPS[op]
        if op == "LayerNormalization" and len(inputs) > 2 and inputs[2]:
            per += 1
        return per * _numel(g.shape(inputs[0])), 0, "norm", ""
    if op == "Gelu":
        return _gelu(node) * _numel(g.shape(out)), 0, "elementwise", ""
    if op in ELEMENTWISE_FLOPS:
        return ELEMENTWISE_FLOPS[op] * _numel(g.shape(out)), 0, "elementwise", ""
    if op in _VARIADIC:
        n = len(_present(inputs))
        per = (n - 1) + (1 if op == "Mean" else 0)
        return per * _numel(g.shape(out)), 0, "elementwise", ""
    if op in QUANT_FLOPS:
        return QUANT_FLOPS[op] * _numel(g.shape(inputs[0])), 0, "quantize", ""
    if op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
        return _pool(node, g), 0, "pool", ""
    if op in ("Resize", "Upsample"):
        return _resize(node, g), 0, "resize", ""
    if op in ("Softmax", "LogSoftmax"):
        # max, subtract, exp, sum, divide (log-softmax: log instead of divide)
        return 5 * _numel(g.shape(out)), 0, "softmax", ""
    if op == "Hardmax":
        return _numel(g.shape(out)), 0, "softmax", ""
    if op in REDUCE_FLOPS:
        per_in, per_out = REDUCE_FLOPS[op]
        return per_in * _numel(g.shape(inputs[0])) + per_out * _numel(g.shape(out)), 0, "reduce", ""
    if op in VIEW_OPS or op in COPY_OPS:
        return 0, 0, "data_movement", ""
    return 0, 0, "unknown", "unsupported op: counted 0 FLOPs"


# --- model preparation ---------------------------------------------------------------------------

def _load(model: Union[str, os.PathLike, Any]) -> Any:
    from pipeline.graph.io import copy_model, load_model

    if isinstance(model, (str, os.PathLike)):
        return load_model(model, load_weights=False)  # only dims are needed: weights stay on disk
    return copy_model(model)


def _shape_value(node: Any, g: TensorInfo) -> bool:
    """Record Shape/Size outputs of fully known tensors as constants (they fold after batch substitution)."""
    if node.op_type not in ("Shape", "Size") or not g.known(node.input[0]):
        return False
    return True


@dataclass
class _Walk:
    """What the node-by-node walk of :func:`graph_costs` accumulates besides the layers.

    Attributes:
        unsupported: op type -> nodes without a cost rule.
        unknown_shapes: names of nodes with an unknown shape, in the order found.
        weight_seen: constant tensor -> the most bytes any one node read of it (for unique weights).
    """

    unsupported: Dict[str, int] = field(default_factory=dict)
    unknown_shapes: List[str] = field(default_factory=list)
    weight_seen: Dict[str, float] = field(default_factory=dict)


def _tensor_info(proto: Any) -> TensorInfo:
    """Shapes of the (dims-substituted) model, with initializers as the only constants so far."""
    from pipeline.graph.shapes import infer_with_folding, tensor_info

    inferred, _ = infer_with_folding(proto)
    # Folded values only give shapes; which nodes are constant is decided node by node below.
    g = tensor_info(inferred)
    g.constants = {init.name for init in proto.graph.initializer}
    g.graph_inputs = [name for name in g.graph_inputs if name not in g.constants]
    return g


def _is_folded(node: Any, g: TensorInfo) -> bool:
    """Whether the builder folds ``node`` away (constant inputs, or a known shape), never a random op."""
    present = _present(node.input)
    return node.op_type not in _NONDETERMINISTIC and (
        (node.op_type == "Constant")
        or bool(present and all(i in g.constants for i in present))
        or _shape_value(node, g)
    )


def _node_flops(node: Any, name: str, g: TensorInfo, walk: _Walk) -> Tuple[float, float, str, str]:
    """``(flops, macs, category, note)`` of one node; an unknown shape costs 0 and is recorded."""
    try:
        flops, macs, category, note = _flops_of(node, g)
    except _UnknownShape as err:
        flops, macs = 0, 0
        category = _flops_of_category(node.op_type)
        note = f"shape unknown: {err.tensor}"
        walk.unknown_shapes.append(name)
    if category == "unknown":
        walk.unsupported[node.op_type] = walk.unsupported.get(node.op_type, 0) + 1
    return flops, macs, category, note


def _input_bytes(node: Any, g: TensorInfo, wb: float, ab: float, walk: _Walk,
                 missing: List[str]) -> Tuple[float, float]:
    """``(weight, activation)`` bytes read by ``node``; inputs of unknown shape go to ``missing``."""
    present = _present(node.input)
    weight, act = 0.0, 0.0
    gather_rows = node.op_type in _GATHER_OPS and present and present[0] in g.constants
    for i in present:
        if not g.known(i):
            missing.append(i)
            continue
        if i in g.constants:
            # A Gather from a constant table (embeddings) reads only the rows it returns.
            if gather_rows and i == present[0] and node.output and g.known(node.output[0]):
                nbytes = _numel(g.shape(node.output[0])) * g.elem_bytes(i, wb)
            else:
                nbytes = _numel(g.shape(i)) * g.elem_bytes(i, wb)
            weight += nbytes
            walk.weight_seen[i] = max(walk.weight_seen.get(i, 0.0), nbytes)
        else:
            act += _numel(g.shape(i)) * g.elem_bytes(i, ab)
    return weight, act


def _output_bytes(node: Any, g: TensorInfo, ab: float, missing: List[str]) -> float:
    """Activation bytes written by ``node``; outputs of unknown shape go to ``missing``."""
    act = 0.0
    for o in node.output:
        if not o:
            continue
        if not g.known(o):
            missing.append(o)
            continue
        act += _numel(g.shape(o)) * g.elem_bytes(o, ab)
    return act


def _node_cost(node: Any, index: int, g: TensorInfo, precision: PrecisionConfig, walk: _Walk) -> LayerCost:
    """One node's :class:`LayerCost` (folded nodes cost nothing and make their outputs constant)."""
    name = node.name or f"{node.op_type}_{index}"
    if _is_folded(node, g):
        g.constants.update(o for o in node.output if o)
        return LayerCost(name, node.op_type, "constant", 0, 0, 0.0, 0.0, 0.0, 0.0, "constant-folded at build time")
    flops, macs, category, note = _node_flops(node, name, g, walk)
    weight, act, missing = 0.0, 0.0, []  # type: ignore[var-annotated]
    if node.op_type not in VIEW_OPS:  # views are free: no bytes move
        weight, act = _input_bytes(node, g, precision.weight_bytes, precision.activation_bytes, walk, missing)
        act += _output_bytes(node, g, precision.activation_bytes, missing)
    if missing and not note:
        note = f"shape unknown: {missing[0]} (bytes partial)"
        walk.unknown_shapes.append(name)
    cost = Cost(flops, macs, weight, act)
    return LayerCost(name, node.op_type, category, cost.flops, cost.macs, cost.weight_bytes,
                     cost.activation_bytes, cost.bytes, cost.intensity, note)


def _io_bytes(g: TensorInfo, ab: float) -> float:
    """Bytes of the graph inputs read and outputs written (known shapes only)."""
    io_bytes = 0.0
    for t in g.graph_inputs + g.graph_outputs:
        if g.known(t):
            io_bytes += _numel(g.shape(t)) * g.elem_bytes(t, ab)
    return io_bytes


def _node_io_and_tensor_bytes(proto: Any, g: TensorInfo, ab: float) -> Tuple[
        List[Tuple[Tuple[str, ...], Tuple[str, ...]]], Dict[str, float]]:
    """Per node its present inputs and outputs, and the bytes of every non-constant known tensor."""
    node_io = [(tuple(_present(n.input)), tuple(o for o in n.output if o)) for n in proto.graph.node]
    tensor_bytes = {
        t: _numel(g.shape(t)) * g.elem_bytes(t, ab)
        for ins, outs in node_io for t in ins + outs
        if t not in g.constants and g.known(t)
    }
    return node_io, tensor_bytes


def graph_costs(
    model: Union[str, os.PathLike, Any],
    batch_size: int = 1,
    precision: Optional[PrecisionConfig] = None,
    dims: Optional[Mapping[str, int]] = None,
) -> GraphCosts:
    """Cost every node of an ONNX model (see the module docstring for the conventions).

    Args:
        model: path to a ``.onnx`` file or a ``ModelProto`` (not modified).
        batch_size: value for the symbolic leading dim of the graph inputs.
        precision: byte sizes (default fp32: 4 bytes).
        dims: values for other symbolic dims, e.g. ``{"sequence": 128}``.

    Raises:
        PipelineError: unreadable file, or shape inference rejects the model.
    """
    if batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1, got {batch_size}", hint="set batch_size=1 or more")
    precision = precision or PrecisionConfig()
    from pipeline.graph.shapes import substitute_dims

    proto = _load(model)
    effective, notes = substitute_dims(proto, batch_size, dims or {})
    g = _tensor_info(proto)
    walk = _Walk()
    # In graph order: folding a node makes its outputs constant for the nodes after it.
    layers = [_node_cost(node, index, g, precision, walk) for index, node in enumerate(proto.graph.node)]
    total = sum((layer.cost for layer in layers), Cost())
    node_io, tensor_bytes = _node_io_and_tensor_bytes(proto, g, precision.activation_bytes)
    return GraphCosts(layers, total, sum(walk.weight_seen.values()), _io_bytes(g, precision.activation_bytes),
                      walk.unsupported, walk.unknown_shapes, effective, notes, node_io, tensor_bytes,
                      frozenset(g.constants), list(g.graph_inputs), list(g.graph_outputs))


def _flops_of_category(op_type: str) -> str:
    """Category of an op without looking at shapes (for nodes whose shapes are unknown)."""
    table: List[Tuple[Callable[[str], bool], str]] = [
        (lambda o: o in ("Conv", "ConvInteger", "QLinearConv"), "conv"),
        (lambda o: o == "ConvTranspose", "conv_transpose"),
        (lambda o: o == "Gemm", "gemm"),
        (lambda o: o in ("MatMul", "MatMulInteger", "QLinearMatMul", "Einsum"), "matmul"),
        (lambda o: o in NORM_FLOPS, "norm"),
        (lambda o: o in ELEMENTWISE_FLOPS or o in _VARIADIC, "elementwise"),
        (lambda o: o in QUANT_FLOPS, "quantize"),
        (lambda o: "Pool" in o, "pool"),
        (lambda o: o in ("Resize", "Upsample"), "resize"),
        (lambda o: o in ("Softmax", "LogSoftmax", "Hardmax"), "softmax"),
        (lambda o: o in REDUCE_FLOPS, "reduce"),
        (lambda o: o in VIEW_OPS or o in COPY_OPS, "data_movement"),
    ]
    for test, category in table:
        if test(op_type):
            return category
    return "unknown"


def layer_costs(
    model: Union[str, os.PathLike, Any],
    batch_size: int = 1,
    precision: Optional[PrecisionConfig] = None,
    dims: Optional[Mapping[str, int]] = None,
) -> List[LayerCost]:
    """Per-node costs of an ONNX model; see :func:`graph_costs` for the arguments."""
    return graph_costs(model, batch_size, precision, dims).layers


__all__ = [
    "COPY_OPS",
    "Cost",
    "ELEMENTWISE_FLOPS",
    "GraphCosts",
    "LayerCost",
    "NORM_FLOPS",
    "QUANT_FLOPS",
    "REDUCE_FLOPS",
    "VIEW_OPS",
    "graph_costs",
    "layer_costs",
]
