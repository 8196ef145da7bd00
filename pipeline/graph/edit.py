"""Graph edits on onnx-graphsurgeon graphs: fresh names and inserting a node pair on an edge."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence, Tuple

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
    q_out = gs.Variable(names(f"{base}_QuantizeLinear_Output"))
    dq_out = gs.Variable(names(f"{base}_DequantizeLinear_Output"))
    attrs = {"axis": int(axis)} if axis is not None else {}
    q = gs.Node("QuantizeLinear", names(f"{base}_QuantizeLinear"), dict(attrs), [tensor, scale_c, zp_c], [q_out])
    dq = gs.Node("DequantizeLinear", names(f"{base}_DequantizeLinear"), dict(attrs), [q_out, scale_c, zp_c], [dq_out])
    for node, k in slots:
        node.inputs[k] = dq_out
    return [q, dq]


__all__ = ["NameSource", "insert_qdq_pair"]
