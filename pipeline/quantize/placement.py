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
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnx_graphsurgeon as gs

#: Rule names accepted by ``QuantConfig.keep_float``.
RULES = ("ffn", "attention_scores", "first", "last")
#: Rules found by graph patterns (``first``/``last`` depend on the candidate list of the planner).
PATTERN_RULES = ("ffn", "attention_scores")

_ATTENTION_REASONS = {
    "context": "attention P.V (batched MatMul reading a Softmax output)",
    "scores": "attention Q.K^T (batched MatMul feeding a Softmax)",
}


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


def check_rules(rules: Sequence[str]) -> None:
    """Raise :class:`PipelineError` for an unknown rule name."""
    bad = [r for r in rules if r not in RULES]
    if bad:
        raise PipelineError(f"unknown quant.keep_float rule(s): {', '.join(map(repr, bad))}",
                            f"use any of {', '.join(RULES)}")


def keep_float_nodes(model: Union["onnx.ModelProto", "gs.Graph"], rules: Sequence[str],
                     candidates: Optional[Sequence[int]] = None) -> Dict[int, List[Kept]]:
    """Nodes kept in float by the structural ``rules``.

    Args:
        model: the ONNX model, or its graphsurgeon graph (:func:`pipeline.graph.to_graph`); names
            are never read.
        rules: names from :data:`RULES`.
        candidates: indices of the quantizable compute nodes, in graph order (needed by ``first``
            and ``last``; the planner passes them).

    Returns:
        ``{node_index: [Kept, ...]}`` (a node matched by several rules lists each).
    """
    from pipeline.graph import Constness, attention_matmuls, ffn_blocks, node_positions, to_graph

    check_rules(rules)
    out: Dict[int, List[Kept]] = {}

    def add(k: Kept) -> None:
        if all(x.rule != k.rule or x.reason != k.reason for x in out.get(k.index, [])):
            out.setdefault(k.index, []).append(k)

    if not rules:
        return out
    import onnx

    graph = to_graph(model) if isinstance(model, onnx.ModelProto) else model
    const = Constness()
    index = node_positions(graph)
    if "ffn" in rules:
        for block in ffn_blocks(graph, const):
            if block.residual:
                add(Kept(index[id(block.up)], "ffn",
                         f"FFN up-projection (output feeds {block.activation}; residual around the block)"))
                for d in block.down:
                    add(Kept(index[id(d)], "ffn",
                             f"FFN down-projection (input is {block.activation} output; residual around the block)"))
                continue
            if block.up is not None:
                add(Kept(index[id(block.up)], "ffn", f"FFN up-projection (output feeds {block.activation})"))
            for d in block.down:
                add(Kept(index[id(d)], "ffn", f"FFN down-projection (input is {block.activation} output)"))
    if "attention_scores" in rules:
        for m in attention_matmuls(graph, const):
            add(Kept(index[id(m.node)], "attention_scores", _ATTENTION_REASONS[m.role]))
    cands = list(candidates or [])
    if cands and "first" in rules:
        add(Kept(cands[0], "first", "first quantizable compute node in topological order"))
    if cands and "last" in rules:
        add(Kept(cands[-1], "last", "last quantizable compute node in topological order"))
    return out
