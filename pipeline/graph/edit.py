"""Graph edits on onnx-graphsurgeon graphs: fresh names, a node inserted on an edge (Cast, Q/DQ),
and dead-node cleanup with toposort.

Inserted nodes are returned, not added to ``graph.nodes``: the caller places them (ONNX wants a
topological node list; :func:`cleanup` re-sorts a whole graph when order does not matter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx_graphsurgeon as gs


class NameSource:
    """Unique tensor/node names: ``base``, else ``base_1``, ``base_2``... (names given out are remembered)."""

    def __init__(self, used: Iterable[str]):
        self.used = set(used)

    def __call__(self, base: str) -> str:
        """A name not used yet, starting from ``base``."""
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def insert_after(
    tensor: "gs.Tensor",
    slots: Sequence[Tuple["gs.Node", int]],
    op: str,
    names: NameSource,
    attrs: Optional[Dict[str, Any]] = None,
    extra_inputs: Sequence["gs.Tensor"] = (),
    base: Optional[str] = None,
) -> "gs.Node":
    """A node ``op(tensor, *extra_inputs)`` whose output the ``slots`` read instead of ``tensor``.

    Args:
        tensor: the tensor the new node reads.
        slots: ``(consumer node, input index)`` reads to rewire; other readers keep ``tensor``.
        op: the op type, e.g. ``Cast``.
        names: source of fresh names (``<base>_<op>`` for the node, ``<base>_<op>_Output`` for its output).
        attrs: node attributes.
        extra_inputs: further inputs after ``tensor`` (scales, zero points...).
        base: name stem (default ``tensor.name``).

    Returns:
        The new node (not yet in ``graph.nodes``).
    """
    import onnx_graphsurgeon as gs

    stem = f"{base or tensor.name}_{op}"
    out = gs.Variable(names(f"{stem}_Output"))
    node = gs.Node(op, names(stem), dict(attrs or {}), [tensor, *extra_inputs], [out])
    for consumer, k in slots:
        consumer.inputs[k] = out
    return node


def insert_cast(tensor: "gs.Tensor", slots: Sequence[Tuple["gs.Node", int]], to: int,
                names: NameSource) -> "gs.Node":
    """A ``Cast(to=<TensorProto type>)`` of ``tensor`` read by ``slots`` (see :func:`insert_after`)."""
    return insert_after(tensor, slots, "Cast", names, {"to": int(to)})


def insert_qdq_pair(
    tensor: "gs.Tensor",
    slots: Sequence[Tuple["gs.Node", int]],
    scale: np.ndarray,
    zero_point: np.ndarray,
    axis: Optional[int],
    names: NameSource,
) -> List["gs.Node"]:
    """Put ``QuantizeLinear -> DequantizeLinear`` on ``tensor`` and make ``slots`` read the DQ output.

    The two nodes are returned, not added to the graph: the caller places them (ONNX wants a
    topological node list), e.g. right before the first rewired consumer.

    Args:
        tensor: the float tensor quantized (activation or weight).
        slots: ``(consumer node, input index)`` reads to rewire; other readers keep ``tensor``.
        scale: float32 scalar, or 1-D per-channel scales (tensor units per integer step).
        zero_point: same shape, int8 or uint8.
        axis: channel axis for per-channel parameters, else None.
        names: where the new names come from (``<tensor>_scale``, ``<tensor>_QuantizeLinear``...).

    Returns:
        ``[quantize, dequantize]``.
    """
    import onnx_graphsurgeon as gs

    base = tensor.name
    scale_c = gs.Constant(names(f"{base}_scale"), np.asarray(scale, dtype=np.float32))
    zp_c = gs.Constant(names(f"{base}_zero_point"), np.asarray(zero_point))
    attrs = {"axis": int(axis)} if axis is not None else {}
    # Names in the order scale, zero point, Q output, DQ output, Q node, DQ node (stable across versions).
    q_out = gs.Variable(names(f"{base}_QuantizeLinear_Output"))
    dq_out = gs.Variable(names(f"{base}_DequantizeLinear_Output"))
    q = gs.Node("QuantizeLinear", names(f"{base}_QuantizeLinear"), dict(attrs), [tensor, scale_c, zp_c], [q_out])
    dq = gs.Node("DequantizeLinear", names(f"{base}_DequantizeLinear"), dict(attrs), [q_out, scale_c, zp_c], [dq_out])
    for node, k in slots:
        node.inputs[k] = dq_out
    return [q, dq]


def cleanup(graph: "gs.Graph", keep_unused_inputs: bool = True) -> "gs.Graph":
    """Remove nodes and tensors nothing reaches the graph outputs from, then sort topologically.

    Args:
        graph: modified in place.
        keep_unused_inputs: keep graph inputs nothing reads (the model's signature).

    Returns:
        ``graph``.
    """
    return graph.cleanup(remove_unused_graph_inputs=not keep_unused_inputs).toposort()


__all__ = ["NameSource", "cleanup", "insert_after", "insert_cast", "insert_qdq_pair"]
