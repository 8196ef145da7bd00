"""Constant folding through the libraries: onnx-graphsurgeon's ``Graph.fold_constants`` (which
evaluates constant subgraphs with ONNX Runtime and folds ``Shape`` of static tensors), and the
export clean-up that turns initializer copies into initializers of their own."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Dict, Iterator, Set, Tuple

from pipeline.graph.edges import NONDETERMINISTIC_OPS

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx
    import onnx_graphsurgeon as gs


def _fold_sizes(graph: "gs.Graph") -> None:
    """``Size`` of a tensor of static shape becomes a constant (graphsurgeon folds only ``Shape``)."""
    import math

    import numpy as np

    for node in graph.nodes:
        if node.op != "Size" or not node.inputs or not node.outputs:
            continue
        shape = node.inputs[0].shape
        if shape is not None and all(isinstance(d, int) and d >= 0 for d in shape):
            out = node.outputs[0]
            out.to_constant(np.array(math.prod(shape), dtype=np.int64))
            out.inputs.clear()


@contextlib.contextmanager
def _quiet_folding() -> Iterator[None]:
    """Silence graphsurgeon's and ONNX Runtime's warnings while folding: a subgraph that does not
    evaluate just stays unfolded, and ONNX Runtime's graph optimizer reports every Unsqueeze it
    cannot remove on stderr."""
    import onnxruntime as ort
    from onnx_graphsurgeon.logger import G_LOGGER

    ort.set_default_logger_severity(3)  # errors only
    try:
        with G_LOGGER.suppress(G_LOGGER.ERROR):
            yield
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings


def _foldable_domain(node: "gs.Node") -> bool:
    return node.domain in ("", "ai.onnx", None) and node.op not in NONDETERMINISTIC_OPS


def fold_graph_constants(graph: "gs.Graph", size_threshold: int | None = None) -> Dict[str, "np.ndarray"]:
    """Fold ``graph``'s constant subgraphs in place (graphsurgeon + ONNX Runtime).

    Nodes whose outputs all became constants are removed; other nodes are kept even when nothing
    reads them (their shapes still matter to whoever costs the graph). Random ops and ops of other
    domains are never folded. Inference failures leave the affected tensors unfolded.

    Args:
        graph: a topologically sorted graph (ONNX node order is).
        size_threshold: largest folded tensor, bytes (None: no limit).

    Returns:
        Every tensor that became a constant: name -> value.
    """
    import onnx_graphsurgeon as gs

    before = {name for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    _fold_sizes(graph)
    with _quiet_folding():
        graph.fold_constants(size_threshold=size_threshold, error_ok=True, flatten_subgraphs=False,
                             should_exclude_node=lambda n: not _foldable_domain(n))
    folded = {name: t.values for name, t in graph.tensors().items()
              if isinstance(t, gs.Constant) and name not in before}
    graph.nodes = [n for n in graph.nodes if n.outputs]
    return folded


def fold_constants(model: "onnx.ModelProto", size_threshold: int | None = None) -> Tuple["onnx.ModelProto", Dict[str, "np.ndarray"]]:
    """:func:`fold_graph_constants` on a ``ModelProto`` (not modified).

    Returns:
        (folded model, name -> value of every tensor folded). A folded tensor no node reads any
        more is not in the model, only in the dict.
    """
    from pipeline.graph.io import to_graph, to_model

    graph = to_graph(model)
    folded = fold_graph_constants(graph, size_threshold)
    return to_model(graph, like=model), folded


def fold_initializer_identities(model: "onnx.ModelProto") -> int:
    """Replace each Identity that copies an initializer by an initializer of its own (in place).

    torch's exporter stores equal initializers once and re-creates every other use through an
    Identity node; TensorRT 8.6 keeps those as Reformat layers that run on every inference.
    Folding them is exact. Identities whose output is a graph output stay (the output needs a
    producer), and so does everything else in the model: the proto is only rewritten when
    something folds. Initializers nobody reads afterwards (in the graph or in a subgraph of
    If/Loop/Scan, which read outer-scope names) are dropped.

    Returns:
        The number of Identity nodes removed.
    """
    import onnx
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from pipeline.graph.io import to_graph, to_model

    graph = to_graph(model)
    outputs = {id(t) for t in graph.outputs}
    folded = 0
    for node in graph.nodes:
        if node.op != "Identity" or not node.inputs or not isinstance(node.inputs[0], gs.Constant):
            continue
        out = node.outputs[0]
        if id(out) in outputs:
            continue
        source = node.inputs[0]
        if isinstance(source._values, LazyValues):
            # A proto of its own: graphsurgeon's export renames the proto it wraps.
            copy = onnx.TensorProto()
            copy.CopyFrom(source._values.tensor)
            out.to_constant(LazyValues(copy))
        else:
            out.to_constant(source.values)
        out.inputs.clear()
        node.inputs.clear()
        folded += 1
    if not folded:
        return 0
    graph.nodes = [n for n in graph.nodes if n.outputs]
    stale = _outer_names_read_by_subgraphs(model)
    result = to_model(graph, like=model)
    _restore_initializers_read_by_subgraphs(result, model, stale)
    model.CopyFrom(result)
    return folded


def _outer_names_read_by_subgraphs(model: "onnx.ModelProto") -> Set[str]:
    """Names that If/Loop/Scan bodies read (possibly outer-scope initializers)."""
    names: Set[str] = set()

    def visit(nodes) -> None:
        for node in nodes:
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    names.update(t for n in sub.node for t in n.input)
                    visit(sub.node)

    visit(model.graph.node)
    return names


def _restore_initializers_read_by_subgraphs(result: "onnx.ModelProto", original: "onnx.ModelProto",
                                            names: Set[str]) -> None:
    """Put back initializers only subgraphs read (graphsurgeon exports what the top graph reaches)."""
    have = {t.name for t in result.graph.initializer}
    for init in original.graph.initializer:
        if init.name in names and init.name not in have:
            result.graph.initializer.append(init)


__all__ = ["fold_constants", "fold_graph_constants", "fold_initializer_identities"]
