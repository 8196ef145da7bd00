"""What an ONNX file takes and returns: input specs per sample, outputs, opset, the task its outputs suggest.

Shared by the zoo (``model=onnx``), the export stage and the orchestrator (a file made elsewhere); every
way a file can be unusable (missing, not ONNX, corrupt, failing the checker) is a PipelineError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    import onnx

    from pipeline.core.specs import InputSpec

#: Highest opset TensorRT 8.6's ONNX parser supports.
TENSORRT_MAX_OPSET = 17
#: Highest IR version written (onnx 1.14..1.17 load IR 9; opsets up to 19 need no more).
MAX_IR_VERSION = 9

@dataclass
class OnnxDescription:
    """What an ONNX file takes and returns (see :func:`describe_onnx`).

    Attributes:
        inputs: per-sample input specs (first dimension taken as batch; ``-1`` = dynamic).
        output_names: graph outputs.
        output_shapes: per-output shapes including batch (``-1`` = dynamic/unknown).
        opset: default-domain opset.
        ir_version: IR version.
        task: ``classification`` (one (N, K) output of an image model), ``embedding`` ((N, D) of a
            token model) or ``features``.
        num_classes: K for classification.
        batch_dynamic: whether every input's first dimension is dynamic.
        warnings: opset/IR/batch remarks.
    """

    inputs: "list[InputSpec]"
    output_names: list[str]
    output_shapes: list[list[int]]
    opset: int
    ir_version: int
    task: str
    num_classes: int | None
    batch_dynamic: bool
    warnings: list[str]


# ----------------------------------------------------------------------------- ONNX inspection


def _dims(value_info: Any) -> list[int]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]


def _opset(model: "onnx.ModelProto") -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _graph_inputs(model: "onnx.ModelProto") -> list[Any]:
    # Old IR versions list initializers among the inputs; those are weights, not runtime inputs.
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _vocab_sizes(model: "onnx.ModelProto") -> dict[str, int]:
    # An integer input that indexes an embedding table (Gather(table, input)) takes ids below the
    # table's row count; knowing it lets data sources generate valid ids for any BERT-like file.
    tables = {i.name: list(i.dims) for i in model.graph.initializer}
    sizes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in tables:
            dims = tables[node.input[0]]
            if dims:
                sizes[node.input[1]] = min(sizes.get(node.input[1], dims[0]), dims[0])
    return sizes


def _specs(model: "onnx.ModelProto") -> "list[InputSpec]":
    from onnx.helper import tensor_dtype_to_np_dtype

    from pipeline.core.specs import InputSpec

    vocab = _vocab_sizes(model)
    specs = []
    for inp in _graph_inputs(model):
        dims = _dims(inp)
        dtype = np.dtype(tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)).name
        is_mask = "mask" in inp.name.lower() and np.issubdtype(np.dtype(dtype), np.integer)
        specs.append(InputSpec(inp.name, tuple(dims[1:]), dtype, vocab_size=2 if is_mask else vocab.get(inp.name)))
    return specs


def _load(path: str | Path) -> "onnx.ModelProto":
    """Load and check an ONNX file, turning every way it can be unusable into a PipelineError."""
    import onnx

    path = Path(path).expanduser()
    if not path.exists():
        raise PipelineError(f"ONNX file not found: {path}", "check model.onnx_path (absolute, or relative to the working directory)")
    if not path.is_file():
        raise PipelineError(f"{path} is not a file", "point model.onnx_path at a .onnx file")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf DecodeError, bad external data, OSError...
        raise PipelineError(
            f"{path} is not a readable ONNX model ({type(err).__name__}: {err})",
            "re-export the model to ONNX (torch.onnx.export), or check the file was copied completely",
        ) from err
    # Arbitrary bytes sometimes decode as an (empty) protobuf message: reject what has no graph.
    if not model.graph.node or not model.opset_import:
        raise PipelineError(
            f"{path} is not an ONNX model (no graph nodes or opset)",
            "point model.onnx_path at a model exported to ONNX",
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PipelineError(
            f"{path} fails the ONNX checker: {first}",
            "re-export it with a current exporter (opset 17 for TensorRT 8.6), or fix the graph with onnx-graphsurgeon",
        ) from err
    return model


def describe_onnx(path: str | Path) -> OnnxDescription:
    """Inputs, outputs, opset and likely task of an ONNX file.

    Args:
        path: ONNX file.

    Raises:
        PipelineError: missing, unreadable or invalid file.
    """
    return _describe(_load(path))


def _describe(model: "onnx.ModelProto") -> OnnxDescription:
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(model)  # fills output shapes where the file omits them
    except Exception:  # noqa: BLE001 - description only; onnx_from_file reports inference problems
        pass
    specs = _specs(model)
    outputs = list(model.graph.output)
    out_shapes = [_dims(o) for o in outputs]
    opset, ir = _opset(model), int(model.ir_version)
    batch_dynamic = all(_dims(i)[:1] == [-1] for i in _graph_inputs(model))
    notes = []
    if opset > TENSORRT_MAX_OPSET:
        notes.append(
            f"opset {opset} > {TENSORRT_MAX_OPSET}: TensorRT 8.6 parses up to opset {TENSORRT_MAX_OPSET}; "
            "re-export with opset_version=17 for TensorRT 8.6 (TensorRT 10 parses newer opsets)"
        )
    if ir > MAX_IR_VERSION + 1:
        notes.append(f"IR version {ir}: onnx < 1.18 cannot load it; re-export with an older exporter")
    if not batch_dynamic:
        fixed = [f"{i.name}={_dims(i)[:1]}" for i in _graph_inputs(model) if _dims(i)[:1] != [-1]]
        notes.append(f"batch dimension fixed ({', '.join(fixed)}): only that batch size can run")
    task, classes = "features", None
    if len(out_shapes) == 1 and len(out_shapes[0]) == 2:
        if specs and all(not np.issubdtype(np.dtype(s.dtype), np.integer) for s in specs) and out_shapes[0][1] > 0:
            task, classes = "classification", out_shapes[0][1]
        elif any(np.issubdtype(np.dtype(s.dtype), np.integer) for s in specs):
            task = "embedding"
    return OnnxDescription(specs, [o.name for o in outputs], out_shapes, opset, ir, task, classes, batch_dynamic, notes)


def onnx_input_specs(path: str | Path) -> "list[InputSpec]":
    """Per-sample input specs of an ONNX file (first dimension = batch; ``-1`` = dynamic)."""
    return describe_onnx(path).inputs


def onnx_output_names(path: str | Path) -> list[str]:
    """Graph output names of an ONNX file."""
    return describe_onnx(path).output_names


# ----------------------------------------------------------------------------- running and comparing
