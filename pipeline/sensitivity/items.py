"""What the sensitivity stage can keep in float: quantized layers (one node each) and structural groups of them.

A *layer* is one node the quantize stage's placement gives Q/DQ inputs: a compute node (Conv, Gemm, MatMul:
its activation and weight slots) or a pooling / residual-add node (its one activation slot). A *group* is a
set of layers that belong together on the graph (a transformer FFN block: up- and down-projection; the two
attention MatMuls around one Softmax), found from ops and edges by :mod:`pipeline.quantize.placement`, never
from names. The mixed-precision search moves layers or whole groups to float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from pipeline.quantize.qdq import QdqPlan

Slot = Tuple[int, int]


@dataclass
class Layer:
    """One quantized node.

    Attributes:
        label: node name (``OpType#index`` when unnamed), as the plan and ``quant.exclude_nodes`` spell it.
        index: position in ``model.graph.node``.
        op_type: ONNX op.
        output: the node's first output tensor (where its error is measured).
        activations: ``(slot, tensor)`` of each quantized activation input.
        weights: ``(slot, initializer, axis)`` of each quantized weight input.
    """

    label: str
    index: int
    op_type: str
    output: str
    activations: List[Tuple[Slot, str]] = field(default_factory=list)
    weights: List[Tuple[Slot, str, Optional[int]]] = field(default_factory=list)

    @property
    def slots(self) -> List[Slot]:
        """Every quantized slot of the layer."""
        return [s for s, _ in self.activations] + [s for s, _, _ in self.weights]

    @property
    def compute(self) -> bool:
        """Whether the layer carries a weight or multiplies two activations (Conv/Gemm/MatMul)."""
        return self.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass
class Group:
    """Layers that go to float together.

    Attributes:
        name: ``ffn:<first layer>`` / ``attention:<first layer>`` / the layer label for a single layer.
        kind: ``ffn``, ``attention`` or ``layer``.
        layers: member labels, graph order.
    """

    name: str
    kind: str
    layers: List[str]


def quantized_layers(model: "onnx.ModelProto", plan: "QdqPlan") -> List[Layer]:
    """The layers of ``plan`` in graph order.

    Raises:
        PipelineError: the plan quantizes nothing (no layer to rank).
    """
    from pipeline.quantize.qdq import node_label

    by_index: Dict[int, Layer] = {}
    nodes = model.graph.node

    def layer(i: int) -> Layer:
        if i not in by_index:
            n = nodes[i]
            by_index[i] = Layer(node_label(n, i), i, n.op_type, n.output[0] if n.output else "")
        return by_index[i]

    for tensor, slots in plan.activations.items():
        for i, k in slots:
            layer(i).activations.append(((i, k), tensor))
    for name, uses in plan.weight_uses.items():
        axis = plan.weights[name].axis
        for i, k in uses:
            layer(i).weights.append(((i, k), name, axis))
    if not by_index:
        raise PipelineError("the model has no quantizable layer: the quantize stage's placement put Q/DQ on "
                            "no node", "check quant.op_types / quant.exclude_nodes; a model without "
                            "Conv/Gemm/MatMul has nothing for INT8 to speed up")
    return [by_index[i] for i in sorted(by_index)]


def structural_groups(model: "onnx.ModelProto", layers: Sequence[Layer]) -> List[Group]:
    """FFN blocks and attention blocks among ``layers`` (two or more quantized members), then every other layer
    alone; graph order of the first member."""
    from pipeline.graph import Constness, attention_blocks, ffn_blocks, node_positions, to_graph

    graph = to_graph(model)
    const = Constness()
    position = node_positions(graph)
    labels = {ly.index: ly.label for ly in layers}
    blocks = [("ffn", [b.up, *b.down]) for b in ffn_blocks(graph, const)]
    blocks += [("attention", [b.scores, b.context]) for b in attention_blocks(graph, const)]
    groups: List[Group] = []
    taken: set = set()
    for kind, nodes in blocks:
        members = sorted({position[id(n)] for n in nodes if n is not None} & set(labels) - taken)
        if len(members) >= 2:
            groups.append(Group(f"{kind}:{labels[members[0]]}", kind, [labels[i] for i in members]))
            taken.update(members)
    groups += [Group(ly.label, "layer", [ly.label]) for ly in layers if ly.index not in taken]
    order = {ly.label: k for k, ly in enumerate(layers)}
    return sorted(groups, key=lambda g: order[g.layers[0]])
