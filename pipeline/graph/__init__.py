"""One ONNX graph layer on onnx-graphsurgeon, for every stage that reads or edits a graph.

* :mod:`pipeline.graph.io`: ``load_model``, ``save_model`` (external data), ``to_graph`` /
  ``to_model`` (``gs.import_onnx`` / ``gs.export_onnx``).
* :mod:`pipeline.graph.edges`: ``producer_of``, ``consumers_of``, ``consumer_slots``,
  ``node_positions``, :class:`Constness` (which tensors are weights), ``edges_of`` (name index of a
  node list for index-based passes).
* :mod:`pipeline.graph.shapes`: symbolic dims given values, ONNX shape inference, and the
  shapes/types/constants of every tensor (``tensor_info``), with constant folding for shapes, and
  the TensorProto element type of a graphsurgeon tensor (``elem_type``).
* :mod:`pipeline.graph.fold`: constant folding through graphsurgeon's ``fold_constants`` (ONNX
  Runtime evaluates), initializer-copy Identity folding, cleanup/toposort.
* :mod:`pipeline.graph.patterns`: structural patterns from ops and edges (never names): GELU, FFN,
  attention, conv(-bn)(-act), residual Add, first/last compute node.
* :mod:`pipeline.graph.edit`: inserting nodes on edges (Q/DQ pairs).

Importing this package imports neither onnx_graphsurgeon nor onnx: they load on first use.
"""

from pipeline.graph.edges import (
    Constness,
    Edges,
    consumer_slots,
    consumers_of,
    edges_of,
    graph_output_names,
    node_positions,
    other_input,
    present,
    producer_of,
)
from pipeline.graph.edit import NameSource, cleanup, insert_after, insert_cast, insert_qdq_pair
from pipeline.graph.fold import fold_constants, fold_graph_constants, fold_initializer_identities
from pipeline.graph.io import copy_model, load_model, save_model, to_graph, to_model
from pipeline.graph.shapes import (
    TensorInfo,
    UnknownShape,
    elem_type,
    infer_shapes,
    infer_with_folding,
    substitute_dims,
    tensor_info,
)
from pipeline.graph.patterns import (
    AttentionBlock,
    AttentionMatMul,
    ConvChain,
    FfnBlock,
    GeluActivation,
    ResidualAdd,
    attention_blocks,
    attention_matmuls,
    compute_nodes,
    conv_chains,
    conv_residual_adds,
    ffn_blocks,
    first_compute_node,
    gelu_activations,
    last_compute_node,
)

__all__ = [
    "AttentionBlock", "AttentionMatMul", "Constness", "ConvChain", "Edges", "FfnBlock", "GeluActivation",
    "NameSource", "ResidualAdd", "TensorInfo", "UnknownShape", "cleanup", "fold_constants", "fold_graph_constants",
    "fold_initializer_identities", "infer_shapes", "infer_with_folding", "insert_after", "insert_cast",
    "insert_qdq_pair", "substitute_dims", "tensor_info", "attention_blocks", "attention_matmuls", "compute_nodes", "consumer_slots", "consumers_of",
    "conv_chains", "conv_residual_adds", "copy_model", "edges_of", "elem_type", "ffn_blocks", "first_compute_node",
    "gelu_activations", "graph_output_names", "last_compute_node", "load_model", "node_positions",
    "other_input", "present", "producer_of", "save_model", "to_graph", "to_model",
]
