"""ONNX Runtime sessions: one factory for every stage, input description and validation.

``onnxruntime`` is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Union

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import onnx

#: ONNX tensor element types (as ORT spells them) -> numpy dtype names.
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def ort_session(
    model: Union[str, os.PathLike, bytes, "onnx.ModelProto"],
    threads: int = 0,
    providers: Optional[Sequence[str]] = None,
    optimize: bool = True,
):
    """The one ONNX Runtime session factory of the pipeline (profile, accuracy, quantize metrics).

    Args:
        model: ONNX file, serialized bytes or an ``onnx.ModelProto``.
        threads: intra-op thread count; 0 lets ORT choose (one per physical core).
        providers: execution providers in priority order; default ``["CPUExecutionProvider"]``.
        optimize: ORT's full graph optimisations (the default), which turn Q/DQ pairs into integer
            kernels (QLinearConv, MatMulInteger...): a quantized model then really runs in INT8 on the
            CPU. False disables every graph optimisation (simulated quantization, float kernels).

    Returns:
        ``onnxruntime.InferenceSession``.

    Raises:
        PipelineError: onnxruntime missing, file missing or corrupt, a requested provider not
            available in this build, or an operator ORT cannot run.
    """
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise PipelineError("onnxruntime is not installed", "pip install onnxruntime") from err

    if hasattr(model, "SerializeToString"):
        source, label = model.SerializeToString(), "<in-memory ONNX model>"
    elif isinstance(model, (bytes, bytearray)):
        source, label = bytes(model), "<in-memory ONNX model>"
    else:
        path = Path(model)
        if not path.is_file():
            raise PipelineError(
                f"ONNX model not found: {path}",
                "run the export stage first (stages=[export,...]) or pass an existing file with model.onnx_path=...",
            )
        source, label = str(path), str(path)
    if threads < 0:
        raise PipelineError(f"profile.threads must be >= 0, got {threads}", "use 0 for ORT's default or a core count")

    providers = list(providers) if providers else ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        # ORT only warns and silently falls back; a silent fallback would mislabel the measurement.
        raise PipelineError(
            f"ONNX Runtime execution provider(s) {missing} not available in this onnxruntime build",
            f"available: {available}; install the matching onnxruntime package or use backend=onnxruntime on CPU",
        )

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as err:  # ORT raises pybind exception types that do not share a useful base
        raise _session_error(Path(label), err) from err


def _session_error(path: Path, err: Exception) -> PipelineError:
    """Translate an ORT session-creation failure into a PipelineError with a next step."""
    kind = type(err).__name__
    text = str(err)
    if kind == "InvalidProtobuf" or "Protobuf parsing failed" in text:
        return PipelineError(
            f"{path} is not a readable ONNX file (corrupt or truncated): {text}",
            "delete it and re-run the export stage; check the file was fully copied",
        )
    if "not a registered function/op" in text or "Could not find an implementation" in text or kind == "NotImplemented":
        return PipelineError(
            f"ONNX Runtime cannot run an operator in {path}: {text}",
            "the model uses an op (or op/type combination) ORT lacks: export with a different opset "
            "(opset=...), replace the custom op, or profile with backend=tensorrt on a GPU",
        )
    if kind == "InvalidGraph":
        return PipelineError(
            f"ONNX Runtime rejected the graph in {path}: {text}",
            "run `python -m onnx.checker` / onnx.shape_inference on the file and fix the export",
        )
    return PipelineError(f"ONNX Runtime could not load {path}: {kind}: {text}", "check the file with onnx.checker")


def expected_inputs(session) -> List[Dict[str, Any]]:
    """The session's inputs as ``[{name, shape, dtype}]`` (dims may be ``None``/str when symbolic)."""
    return [
        {"name": i.name, "shape": list(i.shape), "dtype": ORT_DTYPES.get(i.type, i.type)} for i in session.get_inputs()
    ]


def _describe(inputs: List[Dict[str, Any]]) -> str:
    return ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in inputs)


def validate_inputs(session, inputs: Mapping[str, "np.ndarray"]) -> None:
    """Check feed names, ranks, fixed dimensions and dtypes against the session's inputs.

    Symbolic or unknown dimensions (batch, sequence length) accept any size.

    Raises:
        PipelineError: naming the expected inputs, on any mismatch.
    """
    import numpy as np

    expected = expected_inputs(session)
    want = {e["name"]: e for e in expected}
    problems: List[str] = []
    missing = sorted(set(want) - set(inputs))
    extra = sorted(set(inputs) - set(want))
    if missing:
        problems.append(f"missing inputs {missing}")
    if extra:
        problems.append(f"unexpected inputs {extra}")
    for name, arr in inputs.items():
        if name not in want:
            continue
        e = want[name]
        arr = np.asarray(arr)
        shape_ok = arr.ndim == len(e["shape"]) and all(
            not isinstance(d, int) or d == a for d, a in zip(e["shape"], arr.shape, strict=True)
        )
        if not shape_ok:
            problems.append(f"wrong shapes: {name} has shape {list(arr.shape)}, model expects {e['shape']}")
        if e["dtype"] in ORT_DTYPES.values() and str(arr.dtype) != e["dtype"]:
            problems.append(f"wrong dtype: {name} is {arr.dtype}, model expects {e['dtype']}")
    if problems:
        raise PipelineError(
            "inputs do not match the ONNX model: " + "; ".join(problems),
            f"the model expects {_describe(expected)} (None/str dims are free); "
            "check model.input_shape, batch_size and the data adapter",
        )
