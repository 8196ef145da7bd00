"""Structural placement rules: which compute nodes stay in float, found from ops and edges only.

Node names differ between exporters, frameworks and versions, so a rule such as
``*/intermediate/dense/MatMul`` only works on the model it was written for. The rules here look at
the graph itself (op types, constant inputs, producer/consumer edges) and never at a node name:
renaming every node gives the same answer.

Rules (``QuantConfig.keep_float``):

``ffn``
    Transformer feed-forward blocks. An *activation* is found first:

    - GELU as one op: ``Gelu`` (ONNX opset 20), ``com.microsoft`` ``Gelu`` / ``BiasGelu`` /
      ``FastGelu`` / ``QuickGelu``;
    - GELU decomposed with ``Erf`` (PyTorch's exact GELU): ``Div(x, c)`` or ``Mul(x, c)`` ->
      ``Erf`` -> ``Add(., c)`` -> ``Mul`` with ``x`` (or ``0.5 x``) -> optional ``Mul(., c)``;
    - GELU decomposed with ``Tanh`` (the tanh approximation): ``Tanh`` -> ``Add(., c)`` -> ``Mul``
      with ``x`` (or ``0.5 x``) -> optional ``Mul(., c)``, where ``x`` is an ancestor of the
      ``Tanh`` input through elementwise ops (``Mul``, ``Add``, ``Pow``, ``Div``);
    - ``Relu``, but only in the unambiguous transformer shape: weight-MatMul/Gemm -> Relu ->
      weight-MatMul/Gemm *and* the second projection's output is added back (residual ``Add``) to
      the tensor the first projection read, or to a tensor that one was normalized from. This keeps
      CNNs (Relu after Conv) and MLP classifier heads (no residual) out.

    The kept nodes are the MatMul/Gemm with a constant weight that produces the activation's input
    (the *up* projection, through an optional bias ``Add`` and shape-only ops) and the
    MatMul/Gemm that consumes the activation's output (the *down* projection, through shape-only
    ops). An activation with no projection on one side keeps what it has (one node or none).

``attention_scores``
    The batched activation x activation MatMuls of attention: ``Q K^T`` (a MatMul with two
    non-constant inputs whose output reaches a ``Softmax`` through scale/mask/shape ops) and
    ``P V`` (a MatMul with two non-constant inputs, one of them a ``Softmax`` output through
    shape-only ops).

``first`` / ``last``
    The first / last quantizable compute node (``op_types``, float inputs, not excluded by name) in
    topological order (ONNX node order is topological): usually the stem conv / patch embedding and
    the classifier or projection head, the two layers most often left in float.

Every kept node is recorded with the rule and a one-line reason (:func:`keep_float_nodes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Set, Tuple

from pipeline.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: Rule names accepted by ``QuantConfig.keep_float``.
RULES = ("ffn", "attention_scores", "first", "last")
#: Rules found by graph patterns (``first``/``last`` depend on the candidate list of the planner).
PATTERN_RULES = ("ffn", "attention_scores")

_PROJ_OPS = ("MatMul", "Gemm")
#: Ops that only move data: walked through between a projection and its activation.
_SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast", "Transpose")
#: Ops between ``Q K^T`` and its Softmax (scale, mask, shape).
_SCORE_OPS = _SHAPE_OPS + ("Mul", "Div", "Add", "Sub", "Where", "Cast")
#: Fused GELU ops (any domain): op type -> human name.
_GELU_OPS = {"Gelu": "Gelu op", "BiasGelu": "BiasGelu op", "FastGelu": "FastGelu op", "QuickGelu": "QuickGelu op"}
_ELEMENTWISE = ("Mul", "Add", "Div", "Pow", "Sub", "Sqrt")
#: Ops of a decomposed normalization (pre-LN residual check walks back through them).
_NORM_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "ReduceMean",
             "Sub", "Pow", "Sqrt", "Div", "Mul", "Add", "Cast", "RMSNormalization")


@dataclass
class Kept:
    """One node kept in float by a structural rule.

    Attributes:
        index: node index in ``model.graph.node``.
        rule: the rule that matched (``ffn``, ``attention_scores``, ``first``, ``last``).
        reason: what was seen on the graph, e.g. ``FFN up-projection (output feeds GELU (Erf))``.
    """

    index: int
    rule: str
    reason: str


class _Graph:
    """Producer/consumer index of a model, plus constant detection."""

    def __init__(self, model: "onnx.ModelProto"):
        self.nodes = list(model.graph.node)
        self.inits = {i.name for i in model.graph.initializer}
        self.producer: Dict[str, int] = {}
        self.consumers: Dict[str, List[Tuple[int, int]]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for k, t in enumerate(n.input):
                if t:
                    self.consumers.setdefault(t, []).append((i, k))
        self.graph_outputs = {o.name for o in model.graph.output}
        self._const: Dict[str, bool] = {}

    def node_of(self, tensor: str):
        i = self.producer.get(tensor)
        return None if i is None else self.nodes[i]

    def is_const(self, tensor: str, depth: int = 0) -> bool:
        """Initializer, Constant output, or computed only from those (e.g. ``DQ(W)``, ``Transpose(W)``)."""
        if not tensor or tensor in self.inits:
            return True
        if tensor in self._const:
            return self._const[tensor]
        node = self.node_of(tensor)
        if node is None or depth > 8:
            res = False  # graph input
        elif node.op_type in ("Constant", "ConstantOfShape"):
            res = True
        elif node.op_type == "Shape":
            res = False
        else:
            res = all(self.is_const(t, depth + 1) for t in node.input if t)
        self._const[tensor] = res
        return res

    def act_inputs(self, node) -> List[str]:
        return [t for t in node.input if t and not self.is_const(t)]

    def only_consumers(self, tensor: str) -> List[Tuple[int, int]]:
        return self.consumers.get(tensor, [])

    def const_operand(self, node) -> bool:
        """Binary elementwise node with exactly one constant operand."""
        return len(node.input) == 2 and sum(self.is_const(t) for t in node.input) == 1

    def other_input(self, node, tensor: str) -> Optional[str]:
        others = [t for t in node.input if t != tensor]
        return others[0] if len(others) == 1 else None


def _is_weight_proj(g: _Graph, idx: int) -> bool:
    """MatMul/Gemm with exactly one activation input (the other is a constant weight)."""
    n = g.nodes[idx]
    if n.op_type not in _PROJ_OPS:
        return False
    ins = [t for t in n.input[:2] if t]
    return len(ins) == 2 and sum(g.is_const(t) for t in ins) == 1


def _up_projection(g: _Graph, tensor: str) -> Optional[int]:
    """The weight MatMul/Gemm producing ``tensor`` through an optional bias Add and shape ops."""
    t = tensor
    for _ in range(6):
        i = g.producer.get(t)
        if i is None:
            return None
        n = g.nodes[i]
        if n.op_type in _PROJ_OPS:
            return i if _is_weight_proj(g, i) else None
        if n.op_type == "Add" and g.const_operand(n):
            t = next(x for x in n.input if not g.is_const(x))
        elif n.op_type in _SHAPE_OPS:
            t = n.input[0]
        else:
            return None
    return None


def _down_projections(g: _Graph, tensor: str) -> List[int]:
    """Weight MatMul/Gemm nodes reading ``tensor`` through shape ops (as their activation input)."""
    found: List[int] = []
    frontier, seen = [tensor], set()
    for _ in range(6):
        nxt = []
        for t in frontier:
            for i, _k in g.only_consumers(t):
                if i in seen:
                    continue
                seen.add(i)
                n = g.nodes[i]
                if n.op_type in _PROJ_OPS:
                    if _is_weight_proj(g, i):
                        found.append(i)
                elif n.op_type in _SHAPE_OPS:
                    nxt.extend(o for o in n.output[:1] if o)
        frontier = nxt
        if not frontier:
            break
    return sorted(found)


def _follow_single(g: _Graph, tensor: str, op: str) -> Optional[int]:
    cons = [i for i, _ in g.only_consumers(tensor) if g.nodes[i].op_type == op]
    return cons[0] if len(cons) == 1 else None


def _gelu_tail(g: _Graph, core_out: str, x: str) -> Optional[str]:
    """From ``erf``/``tanh`` output: ``Add(., c)`` -> Mul with ``x`` or ``c*x`` -> optional ``Mul(., c)``.

    Returns the GELU output tensor, or None when the pattern does not close on ``x``.
    """
    ai = _follow_single(g, core_out, "Add")
    if ai is None or not g.const_operand(g.nodes[ai]):
        return None
    add_out = g.nodes[ai].output[0]
    half_x: Set[str] = set()
    for i, _ in g.only_consumers(x):  # c * x (the 0.5 x of 0.5 x (1 + erf))
        n = g.nodes[i]
        if n.op_type in ("Mul", "Div") and g.const_operand(n):
            half_x.add(n.output[0])
    mi = _follow_single(g, add_out, "Mul")
    if mi is None:
        return None
    other = g.other_input(g.nodes[mi], add_out)
    if other == x:
        out = g.nodes[mi].output[0]
        ti = _follow_single(g, out, "Mul")  # x (1 + erf) * 0.5
        if ti is not None and g.const_operand(g.nodes[ti]):
            return g.nodes[ti].output[0]
        return out
    if other in half_x:
        return g.nodes[mi].output[0]
    return None


def _elementwise_ancestors(g: _Graph, tensor: str, depth: int = 6) -> Set[str]:
    """Non-constant tensors reachable backwards from ``tensor`` through elementwise ops."""
    seen: Set[str] = set()
    frontier = [tensor]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            n = g.node_of(t)
            if n is None or n.op_type not in _ELEMENTWISE:
                continue
            for s in n.input:
                if s and not g.is_const(s) and s not in seen:
                    seen.add(s)
                    nxt.append(s)
        frontier = nxt
    return seen


def _activations(g: _Graph) -> List[Tuple[str, str, str]]:
    """Every GELU found: ``(input x, output y, kind)``."""
    found: List[Tuple[str, str, str]] = []
    for n in g.nodes:
        if n.op_type in _GELU_OPS and n.input and n.output:
            found.append((n.input[0], n.output[0], _GELU_OPS[n.op_type]))
        elif n.op_type == "Erf":
            pre = g.node_of(n.input[0])
            if pre is None or pre.op_type not in ("Div", "Mul") or not g.const_operand(pre):
                continue
            x = next(t for t in pre.input if not g.is_const(t))
            y = _gelu_tail(g, n.output[0], x)
            if y is not None:
                found.append((x, y, "GELU (Erf)"))
        elif n.op_type == "Tanh":
            anc = _elementwise_ancestors(g, n.input[0])
            for x in sorted(anc):
                y = _gelu_tail(g, n.output[0], x)
                if y is not None:
                    found.append((x, y, "GELU (Tanh approximation)"))
                    break
    return found


def _residual_roots(g: _Graph, tensor: str, depth: int = 12) -> Set[str]:
    """``tensor`` and what it was normalized from (walking back through normalization ops)."""
    roots = {tensor}
    frontier = [tensor]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            n = g.node_of(t)
            if n is None or n.op_type not in _NORM_OPS:
                continue
            for s in n.input:
                if s and not g.is_const(s) and s not in roots:
                    roots.add(s)
                    nxt.append(s)
        frontier = nxt
    return roots


def _residual_after(g: _Graph, tensor: str) -> Set[str]:
    """Other operands of the Adds that ``tensor`` reaches through a bias Add and shape ops."""
    out: Set[str] = set()
    frontier = [tensor]
    for _ in range(4):
        nxt = []
        for t in frontier:
            for i, _ in g.only_consumers(t):
                n = g.nodes[i]
                if n.op_type == "Add" and g.const_operand(n):
                    nxt.append(n.output[0])
                elif n.op_type == "Add":
                    o = g.other_input(n, t)
                    if o:
                        out.add(o)
                elif n.op_type in _SHAPE_OPS:
                    nxt.append(n.output[0])
        frontier = nxt
    return out


def _relu_ffns(g: _Graph) -> List[Tuple[int, int]]:
    """``(up, down)`` of Relu FFNs with a residual around them (see module doc)."""
    pairs = []
    for n in g.nodes:
        if n.op_type != "Relu":
            continue
        up = _up_projection(g, n.input[0])
        downs = _down_projections(g, n.output[0])
        if up is None or len(downs) != 1:
            continue
        ffn_in = g.act_inputs(g.nodes[up])
        if len(ffn_in) != 1:
            continue
        roots = _residual_roots(g, ffn_in[0])
        if roots & _residual_after(g, g.nodes[downs[0]].output[0]):
            pairs.append((up, downs[0]))
    return pairs


def _softmax_outputs(g: _Graph) -> Set[str]:
    """Softmax outputs and the tensors derived from them by shape-only ops."""
    outs: Set[str] = set()
    frontier = [n.output[0] for n in g.nodes if n.op_type == "Softmax" and n.output]
    while frontier:
        t = frontier.pop()
        if t in outs:
            continue
        outs.add(t)
        for i, _ in g.only_consumers(t):
            if g.nodes[i].op_type in _SHAPE_OPS:
                frontier.append(g.nodes[i].output[0])
    return outs


def _reaches_softmax(g: _Graph, tensor: str, depth: int = 6) -> bool:
    frontier = [tensor]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for i, _ in g.only_consumers(t):
                n = g.nodes[i]
                if n.op_type == "Softmax":
                    return True
                if n.op_type in _SCORE_OPS:
                    nxt.append(n.output[0])
        frontier = nxt
    return False


def _attention_matmuls(g: _Graph) -> List[Kept]:
    soft = _softmax_outputs(g)
    kept = []
    for i, n in enumerate(g.nodes):
        if n.op_type != "MatMul" or len(g.act_inputs(n)) != 2:
            continue
        if any(t in soft for t in n.input):
            kept.append(Kept(i, "attention_scores", "attention P.V (batched MatMul reading a Softmax output)"))
        elif _reaches_softmax(g, n.output[0]):
            kept.append(Kept(i, "attention_scores", "attention Q.K^T (batched MatMul feeding a Softmax)"))
    return kept


def check_rules(rules: Sequence[str]) -> None:
    """Raise :class:`PipelineError` for an unknown rule name."""
    bad = [r for r in rules if r not in RULES]
    if bad:
        raise PipelineError(f"unknown quant.keep_float rule(s): {', '.join(map(repr, bad))}",
                            f"use any of {', '.join(RULES)}")


def keep_float_nodes(model: "onnx.ModelProto", rules: Sequence[str],
                     candidates: Optional[Sequence[int]] = None) -> Dict[int, List[Kept]]:
    """Nodes kept in float by the structural ``rules``.

    Args:
        model: the ONNX model (names are never read).
        rules: names from :data:`RULES`.
        candidates: indices of the quantizable compute nodes, in graph order (needed by ``first``
            and ``last``; the planner passes them).

    Returns:
        ``{node_index: [Kept, ...]}`` (a node matched by several rules lists each).
    """
    check_rules(rules)
    out: Dict[int, List[Kept]] = {}

    def add(k: Kept) -> None:
        if all(x.rule != k.rule or x.reason != k.reason for x in out.get(k.index, [])):
            out.setdefault(k.index, []).append(k)

    if not rules:
        return out
    g = _Graph(model)
    if "ffn" in rules:
        for x, y, kind in _activations(g):
            up = _up_projection(g, x)
            if up is not None:
                add(Kept(up, "ffn", f"FFN up-projection (output feeds {kind})"))
            for d in _down_projections(g, y):
                add(Kept(d, "ffn", f"FFN down-projection (input is {kind} output)"))
        for up, down in _relu_ffns(g):
            add(Kept(up, "ffn", "FFN up-projection (output feeds Relu; residual around the block)"))
            add(Kept(down, "ffn", "FFN down-projection (input is Relu output; residual around the block)"))
    if "attention_scores" in rules:
        for k in _attention_matmuls(g):
            add(k)
    cands = list(candidates or [])
    if cands and "first" in rules:
        add(Kept(cands[0], "first", "first quantizable compute node in topological order"))
    if cands and "last" in rules:
        add(Kept(cands[-1], "last", "last quantizable compute node in topological order"))
    return out
