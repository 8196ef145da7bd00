"""Pieces of one ONNX graph run on their own, with some inputs fake-quantized: the cut-and-resume engine.

Layer-wise sensitivity asks the same question many times: "what does the model output when only these slots
are quantized?". Running the whole model for every layer costs N full evaluations. Instead the graph is
cut at each layer (ONNX node order is topological): the tensors that cross the cut (the *frontier*) are
computed once, in a forward walk, and every question about a layer runs only the part of the graph from that
layer on (its *suffix*), fed from the frontier.

Quantization is simulated in float32 with plain ops, never with QuantizeLinear/DequantizeLinear: an
activation slot reads ``Mul(Clip(Round(Div(x, s)) + z, qmin, qmax) - z, s)`` (what a Q/DQ pair computes:
round half to even, saturate) and a weight slot reads its fake-quantized copy (per-channel scales as the
quantize stage writes them). The pieces then hold float ops only, so ONNX Runtime runs them with all its
graph optimisations (a Q/DQ graph has to run with optimisations off, about 2x slower, or ORT fuses it into
integer kernels) and the numbers are those of the Q/DQ model up to float rounding.

Tensor names in a piece are always those of the original graph: a piece's inputs are original tensors
(frontier values), so pieces made with different quantized slots can be chained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.quantize.scales import QParams, fake_quantize, weight_qparams

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: A slot: (index of the node in the original graph, input index).
Slot = Tuple[int, int]


@dataclass
class Quantization:
    """What is quantized in a piece: activation slots with their per-tensor parameters, weight slots with axes.

    Attributes:
        act: slot -> (tensor name, parameters); slots of one tensor share one fake-quant subgraph per piece.
        weight: slot -> (initializer name, per-channel axis or None).
    """

    act: Dict[Slot, Tuple[str, QParams]] = field(default_factory=dict)
    weight: Dict[Slot, Tuple[str, Optional[int]]] = field(default_factory=dict)

    def restricted(self, keep: Iterable[Slot]) -> "Quantization":
        """Only the slots in ``keep``."""
        keep = set(keep)
        return Quantization({s: v for s, v in self.act.items() if s in keep},
                            {s: v for s, v in self.weight.items() if s in keep})

    def without(self, drop: Iterable[Slot]) -> "Quantization":
        """All slots but those in ``drop``."""
        drop = set(drop)
        return Quantization({s: v for s, v in self.act.items() if s not in drop},
                            {s: v for s, v in self.weight.items() if s not in drop})

    def slots(self) -> Set[Slot]:
        """Every quantized slot."""
        return set(self.act) | set(self.weight)


class GraphIndex:
    """One FP32 model, indexed once: nodes, initializers, tensor types, producers and last consumers.

    Args:
        model: the FP32 model (shape inference is run here for the tensor types).
    """

    def __init__(self, model: "onnx.ModelProto"):
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception as err:  # onnx raises InferenceError and plain RuntimeErrors
            raise PipelineError(f"shape inference failed on the model: {err}",
                                "re-export the model (the export stage writes a shape-inferred ONNX)") from err
        self.model = model
        self.nodes = list(model.graph.node)
        self.inits = {i.name: i for i in model.graph.initializer}
        self.types: Dict[str, int] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            self.types[vi.name] = vi.type.tensor_type.elem_type
        self.inputs = [i.name for i in model.graph.input if i.name not in self.inits]
        self.outputs = [o.name for o in model.graph.output]
        self.producer: Dict[str, int] = {}
        self.last_use: Dict[str, int] = {}
        for idx, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.last_use[name] = idx
            for name in node.output:
                if name:
                    self.producer[name] = idx
        self._fq_weights: Dict[Tuple[str, Optional[int]], np.ndarray] = {}

    def weight_array(self, name: str) -> np.ndarray:
        """An initializer as a numpy array."""
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name])

    def fake_weight(self, name: str, axis: Optional[int]) -> np.ndarray:
        """The fake-quantized copy of a weight (symmetric int8, per channel along ``axis``), cached."""
        key = (name, axis)
        if key not in self._fq_weights:
            w = self.weight_array(name).astype(np.float32)
            self._fq_weights[key] = fake_quantize(w, weight_qparams(w, axis)).astype(np.float32)
        return self._fq_weights[key]

    def crossing(self, cut: int) -> List[str]:
        """Tensors produced before node ``cut`` (or graph inputs) that nodes from ``cut`` on read, or graph outputs."""
        names = []
        for name in list(self.inputs) + [o for n in self.nodes[:cut] for o in n.output if o]:
            if name in self.inits:
                continue
            if self.last_use.get(name, -1) >= cut or name in self.outputs:
                names.append(name)
        return list(dict.fromkeys(names))


def _fq_nodes(tensor: str, qp: QParams, tag: str) -> Tuple[list, list, str]:
    """Float ops computing what a Q/DQ pair does to ``tensor``: (nodes, initializers, output name)."""
    from onnx import helper, numpy_helper

    s = np.asarray(qp.scale, dtype=np.float32).reshape(())
    z = np.asarray(qp.zero_point, dtype=np.float32).reshape(())
    consts = {"s": s, "lo": np.float32(qp.qmin), "hi": np.float32(qp.qmax), "z": z}
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), f"{tag}/{k}") for k, v in consts.items()]
    nodes = [helper.make_node("Div", [tensor, f"{tag}/s"], [f"{tag}/div"]),
             helper.make_node("Round", [f"{tag}/div"], [f"{tag}/round"])]
    last = f"{tag}/round"
    if float(z) != 0.0:
        nodes.append(helper.make_node("Add", [last, f"{tag}/z"], [f"{tag}/shift"]))
        last = f"{tag}/shift"
    nodes.append(helper.make_node("Clip", [last, f"{tag}/lo", f"{tag}/hi"], [f"{tag}/clip"]))
    last = f"{tag}/clip"
    if float(z) != 0.0:
        nodes.append(helper.make_node("Sub", [last, f"{tag}/z"], [f"{tag}/unshift"]))
        last = f"{tag}/unshift"
    nodes.append(helper.make_node("Mul", [last, f"{tag}/s"], [f"{tag}/fq"]))
    return nodes, inits, f"{tag}/fq"


def _note_input(index: GraphIndex, name: str, produced: Set[str], inputs: dict, inits: dict) -> None:
    """Record ``name`` as an initializer or a piece input unless the piece computes it."""
    from onnx import helper

    if name in index.inits:
        inits.setdefault(name, index.inits[name])
    elif name not in produced and name not in inputs:
        inputs[name] = helper.make_tensor_value_info(name, index.types.get(name, 1), None)


def build_piece(index: GraphIndex, start: int, stop: int, quant: Quantization,
                outputs: Sequence[str]) -> "onnx.ModelProto":
    """Nodes ``[start, stop)`` of the graph as a model of their own, with ``quant``'s slots fake-quantized.

    Args:
        index: the indexed FP32 model.
        start, stop: node range (``stop`` exclusive).
        quant: slots to quantize (slots outside the range are ignored).
        outputs: original tensor names the piece returns.

    Returns:
        A float-only model whose inputs are the original tensors the range reads but does not produce.
    """
    from onnx import helper, numpy_helper

    nodes, inits, produced, inputs = [], {}, set(), {}
    fq_of: Dict[Tuple[str, int, int], str] = {}  # (tensor, scale bits, zp) -> fake-quantized name
    for idx in range(start, stop):
        node = type(index.nodes[idx])()
        node.CopyFrom(index.nodes[idx])
        for k, name in enumerate(node.input):
            if not name:
                continue
            slot = (idx, k)
            if slot in quant.weight:
                wname, axis = quant.weight[slot]
                new = f"{wname}/fakequant" + ("" if axis is None else f"@{axis}")
                if new not in inits:
                    inits[new] = numpy_helper.from_array(index.fake_weight(wname, axis), new)
                node.input[k] = new
                continue
            if slot in quant.act:
                tensor, qp = quant.act[slot]
                _note_input(index, tensor, produced, inputs, inits)
                key = (tensor, float(np.asarray(qp.scale)).hex(), int(np.asarray(qp.zero_point)))
                if key not in fq_of:
                    made, made_inits, fq_of[key] = _fq_nodes(tensor, qp, f"{tensor}/sim{len(fq_of)}")
                    nodes.extend(made)
                    inits.update({i.name: i for i in made_inits})
                    produced.add(fq_of[key])
                node.input[k] = fq_of[key]
                continue
            _note_input(index, name, produced, inputs, inits)
        nodes.append(node)
        produced.update(o for o in node.output if o)
    for name in outputs:
        if name not in produced and name not in inputs:  # a pass-through (graph output computed earlier)
            inputs[name] = helper.make_tensor_value_info(name, index.types.get(name, 1), None)
    outs = [helper.make_tensor_value_info(n, index.types.get(n, 1), None) for n in outputs]
    graph = helper.make_graph(nodes, f"piece_{start}_{stop}", list(inputs.values()), outs,
                              initializer=list(inits.values()))
    model = helper.make_model(graph, opset_imports=list(index.model.opset_import))
    model.ir_version = index.model.ir_version
    return model


def piece_session(model: "onnx.ModelProto", threads: int = 0):
    """An ONNX Runtime CPU session on a float-only piece, all graph optimisations on."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


#: Samples cut into batches once: every piece runs batch by batch on the same cut, so tensors that are not
#: per sample (shape vectors, which carry the batch size) stay right for their batch.
Chunks = List[Dict[str, np.ndarray]]


def chunked(feeds: Mapping[str, np.ndarray], batch: int) -> Chunks:
    """Graph inputs (leading sample axis) as batches of ``batch`` samples."""
    n = len(next(iter(feeds.values()))) if feeds else 0
    return [{k: v[lo:lo + batch] for k, v in feeds.items()} for lo in range(0, n, max(1, batch))]


def run_piece(session, chunks: Chunks) -> Chunks:
    """Run a piece on every batch; returns its outputs per batch."""
    names = [i.name for i in session.get_inputs()]
    outs = [o.name for o in session.get_outputs()]
    missing = [n for n in names if chunks and n not in chunks[0]]
    if missing:
        raise PipelineError(f"a piece of the graph needs tensors nobody computed: {missing}",
                            "the model has nodes out of topological order or outer-scope references; "
                            "run onnx.checker / re-export the model")
    return [dict(zip(outs, session.run(outs, {k: c[k] for k in names}))) for c in chunks]


def stacked(chunks: Chunks, name: str) -> np.ndarray:
    """One output over every batch (a graph output: leading sample axis)."""
    return np.concatenate([c[name] for c in chunks])


class FrontierWalk:
    """Walk the graph forward, stopping at given nodes with every tensor that crosses the cut.

    Args:
        index: the indexed FP32 model.
        chunks: graph inputs, batch by batch (:func:`chunked`).
        quant: slots quantized in the walked prefix (empty: FP32 prefix).
        threads: ORT intra-op threads (0: ORT's default).
    """

    def __init__(self, index: GraphIndex, chunks: Chunks, quant: Quantization, threads: int = 0):
        self.index, self.quant, self.threads = index, quant, threads
        self.chunks: Chunks = [{k: v for k, v in c.items() if k in index.inputs} for c in chunks]
        self.pos = 0

    def advance(self, cut: int) -> Chunks:
        """Compute the frontier at node ``cut`` (>= the last cut) and return it, batch by batch."""
        if cut < self.pos:
            raise ValueError(f"the walk is at node {self.pos}; cannot go back to {cut}")
        idx = self.index
        if cut > self.pos:
            needed = [t for t in idx.crossing(cut) if self.chunks and t not in self.chunks[0]]
            if needed:
                piece = build_piece(idx, self.pos, cut, self.quant, needed)
                for c, res in zip(self.chunks, run_piece(piece_session(piece, self.threads), self.chunks)):
                    c.update(res)
        keep = set(idx.crossing(cut))
        self.chunks = [{k: v for k, v in c.items() if k in keep} for c in self.chunks]
        self.pos = cut
        return self.chunks


def suffix_output(index: GraphIndex, frontier: Chunks, cut: int, quant: Quantization, output: str,
                  threads: int = 0) -> np.ndarray:
    """The graph output ``output`` computed from the frontier at ``cut`` with ``quant``'s slots fake-quantized."""
    piece = build_piece(index, cut, len(index.nodes), quant, [output])
    return stacked(run_piece(piece_session(piece, threads), frontier), output)
