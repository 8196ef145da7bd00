"""Reading, writing and converting ONNX models: ``onnx.load``/``onnx.save`` with external data, and
the onnx-graphsurgeon form (``gs.import_onnx`` / ``gs.export_onnx``) every graph edit works on."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnx_graphsurgeon as gs

PathLike = Union[str, os.PathLike]
#: Models above this size (bytes) are saved with their weights in a side file: protobuf caps a
#: message at 2 GiB.
EXTERNAL_DATA_BYTES = 1 << 31


def load_model(path: PathLike, load_weights: bool = True) -> "onnx.ModelProto":
    """Read an ONNX file.

    Args:
        path: the ``.onnx`` file (its external-data files beside it).
        load_weights: False reads only the structure: initializers stored as external data keep
            their dims but no values (what shape-only analysis needs; fast on multi-GB models).

    Returns:
        The ``ModelProto``.

    Raises:
        PipelineError: the file is missing or not a readable ONNX model.
    """
    import onnx

    try:
        return onnx.load(os.fspath(path), load_external_data=load_weights)
    except Exception as err:  # OSError, protobuf DecodeError, onnx's own error types
        raise PipelineError(
            f"cannot read ONNX model {path}: {err}",
            hint="check the path (the export stage writes <output_dir>/<model>.onnx)",
        ) from err


def copy_model(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A deep copy of ``model`` (the caller's proto stays untouched)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def save_model(model: "onnx.ModelProto", path: PathLike, external_data: Optional[bool] = None) -> Path:
    """Write ``model`` atomically; weights go to ``<name>.data`` beside it when asked or above 2 GiB
    (tensors under 1 KiB stay inline, onnx's default).

    Args:
        model: the model (not modified).
        path: destination ``.onnx`` file.
        external_data: True / False force the layout; None picks external data only for models
            protobuf cannot hold in one message (>= :data:`EXTERNAL_DATA_BYTES`).

    Returns:
        The path written.
    """
    import onnx

    from pipeline.core.artifacts import atomic_path

    path = Path(path)
    if external_data is None:
        external_data = model.ByteSize() >= EXTERNAL_DATA_BYTES
    with atomic_path(path) as tmp:
        if external_data:
            # The temporary file sits beside ``path``, so the data file (named after the final
            # path, which the .onnx records) lands where the renamed .onnx will look for it.
            # onnx moves the data out of the proto it saves: save a copy so ``model`` stays whole.
            onnx.save(copy_model(model), str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=path.name + ".data")
        else:
            onnx.save(model, str(tmp))
    return path


def to_graph(model: "onnx.ModelProto") -> "gs.Graph":
    """The onnx-graphsurgeon graph of ``model`` (node order kept: ONNX node order is topological).

    Weights are not copied: graphsurgeon wraps initializers lazily.
    """
    import onnx_graphsurgeon as gs

    return gs.import_onnx(model)


def to_model(graph: "gs.Graph", like: Optional["onnx.ModelProto"] = None) -> "onnx.ModelProto":
    """Export ``graph`` back to a ``ModelProto``.

    Args:
        graph: the graphsurgeon graph.
        like: the model ``graph`` came from: its IR version, producer, doc string and metadata
            are kept (graphsurgeon rebuilds the model around the graph).

    Returns:
        The model; nodes in ``graph.nodes`` order.
    """
    import onnx_graphsurgeon as gs

    weights = _stub_weights(graph)
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for tensor, values in weights.values():
            tensor._values = values
    for init in model.graph.initializer:
        if init.name in weights:
            init.CopyFrom(weights[init.name][1].tensor)
            init.name = weights[init.name][0].name
    if like is not None:
        model.ir_version = like.ir_version
        model.producer_name = like.producer_name
        model.producer_version = like.producer_version
        model.domain = like.domain
        model.model_version = like.model_version
        model.doc_string = like.doc_string
        del model.metadata_props[:]
        model.metadata_props.extend(like.metadata_props)
    return model


#: Initializers of at least this many elements are exported as stubs and filled in afterwards.
_STUB_ELEMENTS = 1 << 14


def _stub_weights(graph: "gs.Graph") -> dict:
    """Swap each big, still-lazy weight for a data-less stub of the same name, dims and type.

    graphsurgeon's export copies every initializer twice (``make_graph``, then ``make_model``);
    exporting stubs and copying each original proto once into the result makes the export cost
    one copy of the weights, as ``ModelProto.CopyFrom`` would.

    Returns:
        name -> (tensor, its original lazy values), to restore after the export.
    """
    import onnx
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.ir.tensor import LazyValues

    stubs = {}
    for name, tensor in graph.tensors().items():
        values = getattr(tensor, "_values", None) if isinstance(tensor, gs.Constant) else None
        # Dims, not ByteSize(): protobuf walks the message to size it.
        if not isinstance(values, LazyValues) or math.prod(values.tensor.dims) < _STUB_ELEMENTS:
            continue
        src = values.tensor
        stub = onnx.TensorProto(name=name, dims=list(src.dims), data_type=src.data_type)
        stubs[name] = (tensor, values)
        tensor._values = LazyValues(stub)
    return stubs


__all__ = ["copy_model", "load_model", "save_model", "to_graph", "to_model"]
