"""The network TensorRT builds: ONNX facts, optimization-profile shapes, and parsing ONNX into a network.

``onnx`` is imported inside the functions; the ``tensorrt`` module is passed in (a recording fake in
the CPU tests).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from pipeline.core.config import BuildConfig
from pipeline.core.errors import PipelineError
from pipeline.trt.features import TrtFeatures
from pipeline.trt.plan import BuildPlan


def onnx_summary(onnx_path: Path) -> Dict[str, Any]:
    """Inputs (name, shape with None for dynamic dims, elem type) and quantization facts of an ONNX.

    Reads the graph structure only (no external weight data).
    """
    import onnx  # noqa: PLC0415

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        inputs.append({"name": vi.name, "shape": dims, "elem_type": int(vi.type.tensor_type.elem_type)})
    ops = {n.op_type for n in model.graph.node}
    qtypes = set()
    fp8_types = {getattr(onnx.TensorProto, n, -1) for n in ("FLOAT8E4M3FN", "FLOAT8E5M2")}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            qtypes.add("int8")
            zp = n.input[2] if len(n.input) > 2 else ""
            for t in model.graph.initializer:
                if t.name == zp and t.data_type in fp8_types:
                    qtypes.discard("int8")
                    qtypes.add("fp8")
    return {
        "inputs": inputs,
        "has_qdq": bool(ops & {"QuantizeLinear", "DequantizeLinear"}),
        "qdq_types": sorted(qtypes) or ["int8"],
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
    }


def profile_shapes(inputs: Sequence[Mapping[str, Any]], batch_size: int, build: BuildConfig) -> Dict[str, Dict[str, List[int]]]:
    """Min/opt/max shapes of each input for the optimization profile (only the batch dim may vary).

    Args:
        inputs: ``[{name, shape}]`` with None for dynamic dimensions.
        batch_size: the run's batch; 0 in min/opt/max_batch means this value.
        build: min_batch/opt_batch/max_batch.

    Returns:
        ``{name: {"min": [...], "opt": [...], "max": [...]}}``; inputs with static shapes get
        min = opt = max = their shape.

    Raises:
        PipelineError: a dynamic non-batch dimension; an inconsistent min <= opt <= max; a static
            batch that differs from ``batch_size``.
    """
    mn, op, mx = (build.min_batch or batch_size), (build.opt_batch or batch_size), (build.max_batch or batch_size)
    if not mn <= op <= mx or not mn <= batch_size <= mx:
        raise PipelineError(f"Optimization profile batch min={mn} opt={op} max={mx} does not hold batch_size={batch_size}.",
                            "Choose build.min_batch <= batch_size <= build.max_batch and min <= opt <= max.")
    out = {}
    for inp in inputs:
        shape = list(inp["shape"])
        if any(d is None or d <= 0 for d in shape[1:]):
            raise PipelineError(f"Input {inp['name']!r} has dynamic non-batch dimensions {shape}.",
                                "Export the ONNX with fixed sizes except the batch (model.input_shape).")
        if not shape or shape[0] is None or shape[0] <= 0:
            out[inp["name"]] = {k: [b] + shape[1:] for k, b in (("min", mn), ("opt", op), ("max", mx))}
        else:
            if shape[0] != batch_size:
                raise PipelineError(f"Input {inp['name']!r} has a fixed batch of {shape[0]}, but batch_size={batch_size}.",
                                    f"Run with batch_size={shape[0]}, or export with a dynamic batch dimension.")
            out[inp["name"]] = {"min": shape, "opt": shape, "max": shape}
    return out


def network_from_onnx(trt: ModuleType, builder: Any, plan: BuildPlan, source: Path, logger: Any,
                      features: TrtFeatures) -> Tuple[Any, Any]:
    """Create the network with the plan's creation flags and parse ``source`` into it.

    Returns:
        ``(network, parser)``: keep the parser alive as long as the network (it owns the weights).

    Raises:
        PipelineError: the parser rejected the ONNX (with its messages).
    """
    net_flags = 0
    for name in plan.network_flags:
        net_flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(net_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise PipelineError(f"TensorRT {features.library_version} could not parse {source}: " + "; ".join(errs),
                            "Export with opset <= 17 for TensorRT 8.6 (opset 19 for FP8 Q/DQ on 10+), "
                            "and check the ops TensorRT supports.")
    return network, parser


def network_inputs(network: Any) -> List[Any]:
    """The network's input tensors, in order."""
    return [network.get_input(i) for i in range(network.num_inputs)]
