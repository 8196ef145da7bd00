"""Structural patterns found from op types and edges only, never from node or tensor names, so they
work on models nobody has seen (renaming every node gives the same answer).

* :func:`gelu_activations`: GELU as one op (``Gelu``; ``com.microsoft`` ``Gelu``/``BiasGelu``/
  ``FastGelu``/``QuickGelu``), or decomposed with ``Erf`` (``Div|Mul(x, c) -> Erf -> Add(., c) ->
  Mul`` with ``x`` or ``c*x`` ``-> [Mul(., c)]``) or with ``Tanh`` (same tail; ``x`` an ancestor of
  the ``Tanh`` input through elementwise ops).
* :func:`ffn_blocks`: transformer feed-forward blocks: the weight MatMul/Gemm feeding a GELU (the
  *up* projection, through an optional bias ``Add`` and shape-only ops) and those reading its output
  (*down*); or ``up -> Relu -> down`` when a residual ``Add`` adds the block's input (or what it was
  normalized from) back to ``down``'s output, which keeps CNNs and MLP heads out.
* :func:`attention_matmuls` / :func:`attention_blocks`: the activation x activation MatMuls of
  attention, ``Q K^T`` (reaching a ``Softmax`` through scale/mask/shape ops) and ``P V`` (reading a
  ``Softmax`` output through shape-only ops).
* :func:`conv_chains`: ``Conv [-> BatchNormalization] [-> activation]`` with single-consumer links.
* :func:`conv_residual_adds`: ``Add`` of two activations where one side comes from a Conv
  (directly or through a BatchNormalization), with the skip input identified.
* :func:`first_compute_node` / :func:`last_compute_node`: first / last node of given op types in
  topological order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Set, Tuple

from pipeline.graph.edges import Constness, consumers_of, other_input, producer_of

if TYPE_CHECKING:  # pragma: no cover
    import onnx_graphsurgeon as gs

PROJECTION_OPS = ("MatMul", "Gemm")
#: Ops that only move data: walked through between a projection and its activation.
SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast", "Transpose")
#: Ops between ``Q K^T`` and its Softmax (scale, mask, shape).
SCORE_OPS = SHAPE_OPS + ("Mul", "Div", "Add", "Sub", "Where", "Cast")
#: Fused GELU ops (any domain) -> the kind reported.
GELU_OPS = {"Gelu": "Gelu op", "BiasGelu": "BiasGelu op", "FastGelu": "FastGelu op", "QuickGelu": "QuickGelu op"}
_ELEMENTWISE = ("Mul", "Add", "Div", "Pow", "Sub", "Sqrt")
#: Ops of a (decomposed) normalization: the pre-LN residual check walks back through them.
_NORM_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "ReduceMean",
             "Sub", "Pow", "Sqrt", "Div", "Mul", "Add", "Cast", "RMSNormalization")
#: Activations TensorRT fuses into a Conv (and BatchNormalization) epilogue.
CONV_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
                    "Softplus", "PRelu", "Gelu", "Mish")
#: Ops TensorRT fuses into a preceding Conv, so a residual Add fed through them is conv-side.
_CONV_EPILOGUE = ("BatchNormalization",)


@dataclass(frozen=True)
class GeluActivation:
    """One GELU: input ``x``, output ``y`` and ``kind`` ("GELU (Erf)", "Gelu op"...)."""

    x: "gs.Tensor"
    y: "gs.Tensor"
    kind: str


@dataclass(frozen=True)
class FfnBlock:
    """A transformer feed-forward block.

    Attributes:
        up: the weight MatMul/Gemm producing the activation's input (None when there is none).
        down: weight MatMul/Gemm nodes reading the activation's output.
        activation: "GELU (Erf)", "GELU (Tanh approximation)", "Gelu op"... or "Relu".
        residual: True when a residual Add around the block was required and found (Relu blocks).
    """

    up: Optional["gs.Node"]
    down: Tuple["gs.Node", ...]
    activation: str
    residual: bool = False


@dataclass(frozen=True)
class AttentionMatMul:
    """An attention MatMul: ``role`` is "scores" (``Q K^T``, feeds a Softmax) or "context" (``P V``)."""

    node: "gs.Node"
    role: str


@dataclass(frozen=True)
class AttentionBlock:
    """``Q K^T -> ... -> Softmax -> ... -> P V`` (``scores`` may be None when Q K^T is not a MatMul)."""

    scores: Optional["gs.Node"]
    softmax: "gs.Node"
    context: "gs.Node"


@dataclass(frozen=True)
class ConvChain:
    """``conv [-> bn] [-> act]`` where every link is the only reader of the tensor before it."""

    conv: "gs.Node"
    bn: Optional["gs.Node"]
    act: Optional["gs.Node"]


@dataclass(frozen=True)
class ResidualAdd:
    """A residual ``Add`` after a Conv: ``skip`` is the index (0/1) of the shortcut input."""

    node: "gs.Node"
    skip: int


def _single_consumer(tensor: "gs.Tensor", op: str) -> Optional["gs.Node"]:
    cons = [n for n in consumers_of(tensor) if n.op == op]
    return cons[0] if len(cons) == 1 else None


def is_weight_projection(node: "gs.Node", const: Constness) -> bool:
    """MatMul/Gemm with exactly one activation input among its first two (the other a weight)."""
    if node.op not in PROJECTION_OPS:
        return False
    ins = [t for t in node.inputs[:2] if t.name]
    return len(ins) == 2 and sum(const(t) for t in ins) == 1


def up_projection(tensor: "gs.Tensor", const: Constness) -> Optional["gs.Node"]:
    """The weight MatMul/Gemm producing ``tensor`` through an optional bias Add and shape ops."""
    t = tensor
    for _ in range(6):
        n = producer_of(t)
        if n is None:
            return None
        if n.op in PROJECTION_OPS:
            return n if is_weight_projection(n, const) else None
        if n.op == "Add" and const.one_constant_operand(n):
            t = next(x for x in n.inputs if not const(x))
        elif n.op in SHAPE_OPS:
            t = n.inputs[0]
        else:
            return None
    return None


def down_projections(tensor: "gs.Tensor", const: Constness, position: Callable[["gs.Node"], int]) -> List["gs.Node"]:
    """Weight MatMul/Gemm nodes reading ``tensor`` through shape ops, in graph order."""
    found: List["gs.Node"] = []
    frontier, seen = [tensor], set()
    for _ in range(6):
        nxt = []
        for t in frontier:
            for n in consumers_of(t):
                if id(n) in seen:
                    continue
                seen.add(id(n))
                if n.op in PROJECTION_OPS:
                    if is_weight_projection(n, const):
                        found.append(n)
                elif n.op in SHAPE_OPS:
                    nxt.extend(o for o in n.outputs[:1] if o.name)
        frontier = nxt
        if not frontier:
            break
    return sorted(found, key=position)


def _gelu_tail(core_out: "gs.Tensor", x: "gs.Tensor", const: Constness) -> Optional["gs.Tensor"]:
    """From the erf/tanh output: ``Add(., c)`` -> Mul with ``x`` or ``c*x`` -> optional ``Mul(., c)``."""
    add = _single_consumer(core_out, "Add")
    if add is None or not const.one_constant_operand(add):
        return None
    add_out = add.outputs[0]
    half_x = {id(n.outputs[0]) for n in consumers_of(x)  # c * x: the 0.5 x of 0.5 x (1 + erf)
              if n.op in ("Mul", "Div") and const.one_constant_operand(n)}
    mul = _single_consumer(add_out, "Mul")
    if mul is None:
        return None
    other = other_input(mul, add_out)
    if other is x:
        out = mul.outputs[0]
        half = _single_consumer(out, "Mul")  # x (1 + erf) * 0.5
        return half.outputs[0] if half is not None and const.one_constant_operand(half) else out
    if other is not None and id(other) in half_x:
        return mul.outputs[0]
    return None


def _elementwise_ancestors(tensor: "gs.Tensor", const: Constness, depth: int = 6) -> List["gs.Tensor"]:
    """Non-constant tensors reachable backwards from ``tensor`` through elementwise ops (sorted by name)."""
    seen = {t.name: t for t in _ancestors_through(tensor, _ELEMENTWISE, const, depth)}
    # Sorted for a deterministic first match (a tensor's name only orders, never identifies).
    return [seen[k] for k in sorted(seen)]


def _ancestors_through(tensor: "gs.Tensor", ops, const: Constness, depth: int) -> List["gs.Tensor"]:
    """Named non-constant tensors reachable backwards from ``tensor`` through producers whose op is in ``ops``
    (breadth first, at most ``depth`` steps; ``tensor`` itself not included)."""
    seen: Set[int] = {id(tensor)}
    found: List["gs.Tensor"] = []
    frontier = [tensor]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            n = producer_of(t)
            if n is None or n.op not in ops:
                continue
            for s in n.inputs:
                if s.name and not const(s) and id(s) not in seen:
                    seen.add(id(s))
                    found.append(s)
                    nxt.append(s)
        frontier = nxt
    return found


def gelu_activations(graph: "gs.Graph", const: Optional[Constness] = None) -> List[GeluActivation]:
    """Every GELU of ``graph`` (fused op or Erf/Tanh decomposition), graph order."""
    const = const or Constness()
    found: List[GeluActivation] = []
    for n in graph.nodes:
        if n.op in GELU_OPS and n.inputs and n.outputs:
            found.append(GeluActivation(n.inputs[0], n.outputs[0], GELU_OPS[n.op]))
        elif n.op == "Erf":
            pre = producer_of(n.inputs[0])
            if pre is None or pre.op not in ("Div", "Mul") or not const.one_constant_operand(pre):
                continue
            x = next(t for t in pre.inputs if not const(t))
            y = _gelu_tail(n.outputs[0], x, const)
            if y is not None:
                found.append(GeluActivation(x, y, "GELU (Erf)"))
        elif n.op == "Tanh":
            for x in _elementwise_ancestors(n.inputs[0], const):
                y = _gelu_tail(n.outputs[0], x, const)
                if y is not None:
                    found.append(GeluActivation(x, y, "GELU (Tanh approximation)"))
                    break
    return found


def _residual_roots(tensor: "gs.Tensor", const: Constness, depth: int = 12) -> Set[int]:
    """ids of ``tensor`` and of what it was normalized from (walking back through normalization ops)."""
    return {id(tensor)} | {id(t) for t in _ancestors_through(tensor, _NORM_OPS, const, depth)}


def _residual_after(tensor: "gs.Tensor", const: Constness) -> Set[int]:
    """ids of the other operands of the Adds ``tensor`` reaches through a bias Add and shape ops."""
    out: Set[int] = set()
    frontier = [tensor]
    for _ in range(4):
        nxt = []
        for t in frontier:
            for n in consumers_of(t):
                if n.op == "Add" and const.one_constant_operand(n):
                    nxt.append(n.outputs[0])
                elif n.op == "Add":
                    o = other_input(n, t)
                    if o is not None and o.name:
                        out.add(id(o))
                elif n.op in SHAPE_OPS:
                    nxt.append(n.outputs[0])
        frontier = nxt
    return out


def _relu_ffns(graph: "gs.Graph", const: Constness, position: Callable[["gs.Node"], int]) -> List[FfnBlock]:
    blocks = []
    for n in graph.nodes:
        if n.op != "Relu":
            continue
        up = up_projection(n.inputs[0], const)
        downs = down_projections(n.outputs[0], const, position)
        if up is None or len(downs) != 1:
            continue
        ffn_in = const.activations(up)
        if len(ffn_in) != 1:
            continue
        if _residual_roots(ffn_in[0], const) & _residual_after(downs[0].outputs[0], const):
            blocks.append(FfnBlock(up, (downs[0],), "Relu", residual=True))
    return blocks


def _position_of(graph: "gs.Graph") -> Callable[["gs.Node"], int]:
    pos = {id(n): i for i, n in enumerate(graph.nodes)}
    return lambda node: pos[id(node)]


def ffn_blocks(graph: "gs.Graph", const: Optional[Constness] = None) -> List[FfnBlock]:
    """Transformer FFN blocks: every GELU's projections (graph order), then the Relu blocks with a
    residual around them (see the module docstring)."""
    const = const or Constness()
    position = _position_of(graph)
    blocks = [FfnBlock(up_projection(act.x, const), tuple(down_projections(act.y, const, position)), act.kind)
              for act in gelu_activations(graph, const)]
    return blocks + _relu_ffns(graph, const, position)


def softmax_outputs(graph: "gs.Graph") -> List["gs.Tensor"]:
    """Softmax outputs and the tensors derived from them by shape-only ops."""
    outs = {}
    frontier = [n.outputs[0] for n in graph.nodes if n.op == "Softmax" and n.outputs]
    while frontier:
        t = frontier.pop()
        if id(t) in outs:
            continue
        outs[id(t)] = t
        for n in consumers_of(t):
            if n.op in SHAPE_OPS:
                frontier.append(n.outputs[0])
    return list(outs.values())


def softmax_reached(tensor: "gs.Tensor", depth: int = 6) -> Optional["gs.Node"]:
    """The Softmax ``tensor`` reaches through scale/mask/shape ops (:data:`SCORE_OPS`), else None."""
    frontier = [tensor]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for n in consumers_of(t):
                if n.op == "Softmax":
                    return n
                if n.op in SCORE_OPS:
                    nxt.append(n.outputs[0])
        frontier = nxt
    return None


def attention_matmuls(graph: "gs.Graph", const: Optional[Constness] = None) -> List[AttentionMatMul]:
    """The activation x activation MatMuls of attention, graph order (``P V`` first when one is both)."""
    const = const or Constness()
    soft = {id(t) for t in softmax_outputs(graph)}
    found = []
    for n in graph.nodes:
        if n.op != "MatMul" or len(const.activations(n)) != 2:
            continue
        if any(id(t) in soft for t in n.inputs):
            found.append(AttentionMatMul(n, "context"))
        elif softmax_reached(n.outputs[0]) is not None:
            found.append(AttentionMatMul(n, "scores"))
    return found


def _producer_behind(tensor: "gs.Tensor", target: str, through: Sequence[str],
                     limit: int) -> Optional["gs.Node"]:
    """The ``target`` node that produced ``tensor``, looking back through ``through`` ops (first inputs)."""
    t = tensor
    for _ in range(limit):
        n = producer_of(t)
        if n is None:
            return None
        if n.op == target:
            return n
        if n.op not in through:
            return None
        t = n.inputs[0]
    return None


def _softmax_behind(tensor: "gs.Tensor") -> Optional["gs.Node"]:
    """The Softmax whose output ``tensor`` is, through shape-only ops."""
    return _producer_behind(tensor, "Softmax", SHAPE_OPS, limit=8)


def attention_blocks(graph: "gs.Graph", const: Optional[Constness] = None) -> List[AttentionBlock]:
    """``Q K^T`` / Softmax / ``P V`` triples, one per ``P V`` MatMul, graph order."""
    const = const or Constness()
    matmuls = attention_matmuls(graph, const)
    scores_of = {id(softmax_reached(m.node.outputs[0])): m.node for m in matmuls if m.role == "scores"}
    blocks = []
    for m in matmuls:
        if m.role != "context":
            continue
        soft = next((s for s in map(_softmax_behind, m.node.inputs) if s is not None), None)
        if soft is not None:
            blocks.append(AttentionBlock(scores_of.get(id(soft)), soft, m.node))
    return blocks


def conv_chains(graph: "gs.Graph") -> List[ConvChain]:
    """Every Conv with the BatchNormalization and activation that follow it alone, graph order
    (a graph output ends the chain: it is written out)."""
    outputs = {id(t) for t in graph.outputs}
    chains = []
    for n in graph.nodes:
        if n.op != "Conv":
            continue
        tail, bn, act = n.outputs[0], None, None
        nxt = consumers_of(tail)
        if len(nxt) == 1 and nxt[0].op == "BatchNormalization" and id(tail) not in outputs:
            bn, tail = nxt[0], nxt[0].outputs[0]
            nxt = consumers_of(tail)
        if len(nxt) == 1 and nxt[0].op in CONV_ACTIVATIONS and id(tail) not in outputs:
            act = nxt[0]
        chains.append(ConvChain(n, bn, act))
    return chains


def is_conv_side(tensor: "gs.Tensor") -> bool:
    """True if ``tensor`` comes from a Conv, directly or through a BatchNormalization."""
    return _producer_behind(tensor, "Conv", _CONV_EPILOGUE, limit=3) is not None


def _readers(tensor: "gs.Tensor", graph_outputs: Set[int]) -> int:
    return len(tensor.outputs) + (1 if id(tensor) in graph_outputs else 0)


def chain_length(tensor: "gs.Tensor", graph_outputs: Set[int], limit: int = 64) -> int:
    """Nodes on the single-consumer chain that produces ``tensor``, back to the branch point
    (``graph_outputs``: ids of the graph's output tensors, which count as one more reader)."""
    steps, t = 0, tensor
    while steps < limit:
        node = producer_of(t)
        if node is None:
            break
        steps += 1
        if not node.inputs:
            break
        t = node.inputs[0]
        if _readers(t, graph_outputs) > 1:
            break
    return steps


def conv_residual_adds(graph: "gs.Graph", const: Optional[Constness] = None) -> List[ResidualAdd]:
    """Adds of two non-constant tensors with a Conv(-BN) on at least one side, graph order.

    ``skip`` is the input that is not conv-side; when both are (a downsampling shortcut), the
    shorter single-consumer chain.
    """
    const = const or Constness()
    outputs = {id(t) for t in graph.outputs}
    found = []
    for n in graph.nodes:
        if n.op != "Add" or len(n.inputs) != 2:
            continue
        a, b = n.inputs
        if _is_weight_or_constant_node_output(a) or _is_weight_or_constant_node_output(b):
            continue  # a bias add, not a residual
        conv_a, conv_b = is_conv_side(a), is_conv_side(b)
        if not (conv_a or conv_b):
            continue
        if conv_a != conv_b:
            skip = 1 if conv_a else 0
        else:
            skip = 0 if chain_length(a, outputs) < chain_length(b, outputs) else 1
        found.append(ResidualAdd(n, skip))
    return found


def _is_weight_or_constant_node_output(tensor: "gs.Tensor") -> bool:
    import onnx_graphsurgeon as gs

    node = producer_of(tensor)
    return isinstance(tensor, gs.Constant) or (node is not None and node.op == "Constant")


def compute_nodes(graph: "gs.Graph", op_types: Sequence[str],
                  accept: Optional[Callable[["gs.Node"], bool]] = None) -> List["gs.Node"]:
    """Nodes of ``op_types`` (that ``accept`` takes, when given) in topological (graph) order."""
    return [n for n in graph.nodes if n.op in op_types and (accept is None or accept(n))]


def first_compute_node(graph: "gs.Graph", op_types: Sequence[str],
                       accept: Optional[Callable[["gs.Node"], bool]] = None) -> Optional["gs.Node"]:
    """The first node of ``op_types`` in topological order (usually the stem conv / patch embedding)."""
    nodes = compute_nodes(graph, op_types, accept)
    return nodes[0] if nodes else None


def last_compute_node(graph: "gs.Graph", op_types: Sequence[str],
                      accept: Optional[Callable[["gs.Node"], bool]] = None) -> Optional["gs.Node"]:
    """The last node of ``op_types`` in topological order (usually the classifier / projection head)."""
    nodes = compute_nodes(graph, op_types, accept)
    return nodes[-1] if nodes else None


__all__ = ["AttentionBlock", "AttentionMatMul", "ConvChain", "FfnBlock", "GeluActivation", "ResidualAdd",
           "attention_blocks", "attention_matmuls", "chain_length", "compute_nodes", "conv_chains",
           "conv_residual_adds", "down_projections", "ffn_blocks", "first_compute_node", "gelu_activations",
           "is_conv_side", "is_weight_projection", "last_compute_node", "softmax_outputs", "softmax_reached",
           "up_projection"]
