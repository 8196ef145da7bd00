"""Per-node times from ONNX Runtime's profiler, each optimised node tied back to the ONNX nodes it replaced.

ONNX Runtime rewrites the graph before running it (Conv + Relu fused, NCHWc layouts with ``ReorderInput`` /
``ReorderOutput`` copies, Q/DQ pairs turned into ``QLinearConv`` / ``MatMulInteger``...). Its profiler
(``SessionOptions.enable_profiling``) times the *optimised* nodes. The optimised graph is saved next to the trace
(``optimized_model_filepath``); each of its nodes covers the original nodes between its inputs and its outputs
(tensor names with ORT's layout suffixes such as ``_nchwc`` stripped), found by walking the original graph back
from the outputs until the inputs. Layout copies and nodes with no such original cover no ONNX node.

The rows have the shape of the TensorRT profile's ``engine_layers`` (``name``, ``layer_type``, ``measured_ms``,
``onnx_nodes``), so :mod:`pipeline.explain` explains a CPU run the same way as an engine.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Set

_SUFFIX = re.compile(r"(_nchwc|_token_\d+)+$")
#: The walk back from a node's outputs stops after this many original nodes (a mapping that runs away means
#: ORT renamed the inputs beyond recognition; the node then covers only the producers of its outputs).
MAX_COVER = 16


def _strip(name: str) -> str:
    return _SUFFIX.sub("", name)


#: ONNX Runtime kernels that compute in 8-bit integers; Q/DQ convert; everything else runs in float on the CPU.
_INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul",
                "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid",
                "QLinearLeakyRelu", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


def kernel_precision(op_type: str) -> str:
    """``int8`` for an integer kernel, ``int8<->fp32`` for a Q/DQ conversion, ``fp32`` otherwise."""
    if op_type in _INTEGER_OPS:
        return "int8"
    if op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
        return "int8<->fp32"
    return "fp32"


#: Ops ORT folds into the kernel of the op before them (Conv/Gemm + bias/BN/activation/residual Add).
_EPILOGUE = {"Relu", "Clip", "Add", "Sum", "BatchNormalization", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh",
             "Mul", "HardSwish", "Gelu"}


def _chain(tensor: str, producer: Mapping[str, Any], position: Mapping[str, int], stop: Set[str],
           separate: Set[str] = frozenset()) -> List[str]:
    """Original nodes a fused kernel writing ``tensor`` covers: back through epilogue ops, always along the input
    produced last (the main path, not a residual computed earlier), up to and including the first other op;
    never into a node ``separate`` (ORT runs it as a kernel of its own)."""
    nodes: List[str] = []
    t = tensor
    while len(nodes) < MAX_COVER:
        p = producer.get(t)
        if p is None or p.name in nodes or (nodes and p.name in separate):
            break
        nodes.append(p.name)
        if p.op_type not in _EPILOGUE:
            break
        data = [i for i in p.input if i and i not in stop and i in producer]
        if not data:
            break
        t = max(data, key=lambda i: position.get(producer[i].name, -1))
    return nodes


def _attach_forward_epilogues(rows: List[Dict[str, Any]], original: Any, producer: Mapping[str, Any],
                              position: Mapping[str, int], stop: Set[str]) -> None:
    """Give each original epilogue op no row covers (ORT named the fused kernel after the anchor's output, e.g.
    ``c2_nchwc`` for Conv + Add + Relu) to the row that covers its main-path input's producer."""
    owner = {n: r for r in rows for n in r["onnx_nodes"]}
    for node in original.graph.node:  # graph order: a chain of epilogues attaches link by link
        if node.name in owner or node.op_type not in _EPILOGUE:
            continue
        data = [i for i in node.input if i and i not in stop and i in producer]
        if not data:
            continue
        src = producer[max(data, key=lambda i: position.get(producer[i].name, -1))].name
        if src in owner:
            owner[src]["onnx_nodes"].append(node.name)
            owner[node.name] = owner[src]


def node_rows(original: "Any", optimized: "Any", times_ms: Mapping[str, float]) -> List[Dict[str, Any]]:
    """Rows ``{name, layer_type, measured_ms, onnx_nodes}`` for the optimised nodes with a time, in the optimised
    graph's order. ``original`` / ``optimized``: ``onnx.ModelProto``; ``times_ms``: node name -> mean ms per run.

    A node that kept an original node's name and op covers that node. Otherwise its cover starts at its output
    tensor (ORT keeps the original name, or names an NCHWc node after the original tensor it writes, plus
    ``_nchwc``) and runs back through the fused epilogue (:func:`_chain`); epilogue ops left over were fused
    forward and join the kernel of their input (:func:`_attach_forward_epilogues`)."""
    producer = {o: n for n in original.graph.node for o in n.output}
    position = {n.name: i for i, n in enumerate(original.graph.node)}
    op_of = {n.name: n.op_type for n in original.graph.node}
    stop = {i.name for i in original.graph.initializer} | {i.name for i in original.graph.input}
    separate = {n.name for n in optimized.graph.node if op_of.get(n.name) == n.op_type}
    rows = []
    for n in optimized.graph.node:
        if n.name not in times_ms:
            continue
        nodes: List[str] = []
        if n.name in separate:
            nodes = [n.name]
        elif not n.op_type.startswith("Reorder"):  # a layout copy (NCHW <-> NCHWc) replaced no ONNX node
            starts = [_strip(o) for o in n.output if o] + [_strip(n.name)]
            start = next((t for t in starts if t in producer), None)
            nodes = _chain(start, producer, position, stop, separate - {n.name}) if start else []
            if n.name in op_of and n.name not in nodes:
                nodes.append(n.name)
        rows.append({"name": n.name, "layer_type": n.op_type, "measured_ms": float(times_ms[n.name]),
                     "onnx_nodes": nodes, "precision": kernel_precision(n.op_type)})
    _attach_forward_epilogues(rows, original, producer, position, stop)
    return rows


def _mean_node_times(events: Sequence[Mapping[str, Any]], skip_runs: int) -> Dict[str, float]:
    """Mean time per run (ms) of each node, from a profiler trace, leaving out the first ``skip_runs`` runs."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed = runs[skip_runs:]
    if not timed:
        return {}
    total: Dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        ts = e["ts"]
        if any(lo <= ts <= hi for lo, hi in timed):
            key = e["name"][: -len("_kernel_time")]
            total[key] = total.get(key, 0.0) + float(e["dur"]) / 1e3
    return {k: v / len(timed) for k, v in total.items()}


def profile_nodes(onnx_path: "str | os.PathLike", feed: Mapping[str, Any], runs: int = 5, warmup: int = 2,
                  threads: int = 0) -> List[Dict[str, Any]]:
    """Per-node mean times of ``runs`` runs (after ``warmup``) with all of ONNX Runtime's optimisations, mapped to
    the ONNX nodes of ``onnx_path``."""
    import onnx
    import onnxruntime as ort

    from pipeline.core.errors import PipelineError

    with tempfile.TemporaryDirectory(prefix="ortprof-") as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "trace")
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3  # the saved graph is only read back here: ORT's NCHWc portability warning is noise
        if threads:
            so.intra_op_num_threads = threads
        try:
            sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
            for _ in range(warmup + runs):
                sess.run(None, dict(feed))
            trace = sess.end_profiling()
            events = json.loads(Path(trace).read_text())
            optimized = onnx.load(so.optimized_model_filepath, load_external_data=False)
        except Exception as err:  # ORT raises its own exception types
            raise PipelineError(f"ONNX Runtime could not profile {onnx_path} per node: {err}",
                                "check the model runs in ONNX Runtime (stages=[...,profile] measures it first)") from err
    original = onnx.load(str(onnx_path), load_external_data=False)
    return node_rows(original, optimized, _mean_node_times(events, warmup))
