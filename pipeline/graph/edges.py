"""Producers, consumers and constness of tensors in an onnx-graphsurgeon graph.

A ``gs.Tensor`` knows its producer (``tensor.inputs``) and its consumers (``tensor.outputs``), so no
name index is built: these functions only name the questions the pipeline asks. ONNX node order
is topological (the ONNX spec requires it), and graphsurgeon keeps it on import, so a node's
position in ``graph.nodes`` is its index in ``model.graph.node``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Set, Tuple

if TYPE_CHECKING:  # pragma: no cover
    import onnx_graphsurgeon as gs

#: Ops that produce the same values on every run from constant inputs only.
CONSTANT_SOURCES = ("Constant", "ConstantOfShape")
#: Ops whose output changes from run to run: never constant, never folded.
NONDETERMINISTIC_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                  "Multinomial", "Bernoulli"})


def producer_of(tensor: "gs.Tensor") -> Optional["gs.Node"]:
    """The node writing ``tensor``, or None for graph inputs and initializers."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers_of(tensor: "gs.Tensor") -> List["gs.Node"]:
    """Every node reading ``tensor`` (once per node, in graph order of the reads)."""
    seen: Set[int] = set()
    out = []
    for node in tensor.outputs:
        if id(node) not in seen:
            seen.add(id(node))
            out.append(node)
    return out


def consumer_slots(tensor: "gs.Tensor") -> List[Tuple["gs.Node", int]]:
    """``(node, input index)`` of every read of ``tensor``."""
    return [(node, k) for node in consumers_of(tensor) for k, t in enumerate(node.inputs) if t is tensor]


def node_positions(graph: "gs.Graph") -> Dict[int, int]:
    """``id(node) -> index`` in ``graph.nodes`` (gs nodes compare by value, so they are keyed by id)."""
    return {id(node): i for i, node in enumerate(graph.nodes)}


def present(tensors: Sequence["gs.Tensor"]) -> List["gs.Tensor"]:
    """``tensors`` without the empty placeholders of omitted optional inputs/outputs."""
    return [t for t in tensors if t.name]


def other_input(node: "gs.Node", tensor: "gs.Tensor") -> Optional["gs.Tensor"]:
    """The other operand of a binary node reading ``tensor`` once, else None."""
    others = [t for t in node.inputs if t is not tensor]
    return others[0] if len(others) == 1 else None


def graph_output_names(graph: "gs.Graph") -> Set[str]:
    """Names of the graph's outputs."""
    return {t.name for t in graph.outputs}


class Constness:
    """Which tensors are weights: initializers, Constant outputs, or computed only from those
    (``DequantizeLinear(W)``, ``Transpose(W)``...). ``Shape`` outputs are not weights.

    Answers are cached; create a new instance after editing the graph.
    """

    def __init__(self) -> None:
        self._memo: Dict[int, bool] = {}

    def __call__(self, tensor: "gs.Tensor") -> bool:
        """True if ``tensor`` is constant (empty optional inputs count as constant)."""
        import onnx_graphsurgeon as gs

        stack = [tensor]
        while stack:  # iterative: constant chains can be deep
            t = stack[-1]
            if id(t) in self._memo:
                stack.pop()
                continue
            node = producer_of(t)
            if not t.name or isinstance(t, gs.Constant):
                self._memo[id(t)] = True
            elif node is None or node.op == "Shape" or node.op in NONDETERMINISTIC_OPS:
                self._memo[id(t)] = False
            elif node.op in CONSTANT_SOURCES:
                self._memo[id(t)] = True
            else:
                pending = [s for s in node.inputs if id(s) not in self._memo]
                if pending:
                    stack.extend(pending)
                    continue
                self._memo[id(t)] = all(self._memo[id(s)] for s in node.inputs)
            stack.pop()
        return self._memo[id(tensor)]

    def activations(self, node: "gs.Node") -> List["gs.Tensor"]:
        """``node``'s non-constant inputs."""
        return [t for t in node.inputs if t.name and not self(t)]

    def one_constant_operand(self, node: "gs.Node") -> bool:
        """A binary node with exactly one constant operand (``x * c``, a bias ``Add``)."""
        return len(node.inputs) == 2 and sum(self(t) for t in node.inputs) == 1


@dataclass(frozen=True)
class Edges:
    """Producer and consumers of every tensor of a node list given as names (for index-based passes).

    Attributes:
        producer: tensor name -> index of the node writing it.
        consumers: tensor name -> indices of the nodes reading it (graph order, repeats kept).
    """

    producer: Dict[str, int]
    consumers: Dict[str, List[int]]


def edges_of(node_io: Iterable[Tuple[Sequence[str], Sequence[str]]]) -> Edges:
    """:class:`Edges` of nodes given as ``(input names, output names)`` pairs (empty names skipped)."""
    producer: Dict[str, int] = {}
    consumers: Dict[str, List[int]] = {}
    for i, (ins, outs) in enumerate(node_io):
        for t in ins:
            if t:
                consumers.setdefault(t, []).append(i)
        for t in outs:
            if t:
                producer[t] = i
    return Edges(producer, consumers)


__all__ = ["CONSTANT_SOURCES", "Constness", "Edges", "NONDETERMINISTIC_OPS", "consumer_slots", "consumers_of",
           "edges_of", "graph_output_names", "node_positions", "other_input", "present", "producer_of"]
