"""torch -> ONNX export with verification, and validation of user-supplied ONNX files.

The export uses torch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): it emits
opset 17, which TensorRT 8.6 parses (the dynamo exporter targets opset 18+). Every exported file is
checked (``onnx.checker``), shape-inferred in strict mode (so TensorRT and the analyze stage see
every tensor's shape), kept at IR version <= 9 (loadable by onnx 1.14+), and run in ONNX Runtime on
CPU against torch at batch 2 before it is renamed to its final name: a file under the final name has
always passed that comparison.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.accuracy import allclose_outputs  # the one accuracy module
from pipeline.core.artifacts import atomic_path
from pipeline.core.errors import PipelineError
from pipeline.graph.describe import MAX_IR_VERSION, TENSORRT_MAX_OPSET, _describe, _load, _opset
from pipeline.ort import run_onnxruntime  # one ORT runner for every stage

if TYPE_CHECKING:
    import onnx

    from pipeline.core.specs import InputSpec
    from pipeline.models import ModelBundle

#: Default tolerances of the ONNX Runtime vs torch comparison (float32 on CPU):
#: an output passes when max|ort - torch| <= atol + rtol * max|torch|.
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
#: Batch size of the verification run; not 1, so that a batch dimension baked in at export fails.
CHECK_BATCH = 2
BATCH_DIM = "batch"


@dataclass
class ExportResult:
    """What the export stage produced.

    Attributes:
        onnx_path: the written ONNX file.
        opset: default-domain opset of the file.
        inputs: input specs (per sample, batch dimension dynamic).
        output_names: graph output names.
        check: ONNX Runtime vs torch comparison: ``max_abs_diff``, ``rel_l2`` (||ort-torch|| /
            ||torch||), ``atol``, ``rtol``, ``passed``, ``batch_size``, per-output numbers under
            ``outputs``. For ``onnx_from_file`` there is no reference: ``passed`` is None.
        parameters: parameter count (torch module parameters; initializer elements for a file).
        seconds: wall time of the stage, seconds.
        ir_version: IR version of the file.
        warnings: things the user should know (opset above TensorRT 8.6's, tracer warnings...).
    """

    onnx_path: Path
    opset: int
    inputs: "list[InputSpec]"
    output_names: list[str]
    check: dict[str, Any]
    parameters: int
    seconds: float
    ir_version: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the report's ``stages.export.outputs``."""
        d = asdict(self)
        d["onnx_path"] = str(self.onnx_path)
        d["inputs"] = [s.to_dict() for s in self.inputs]
        return d


def make_check_inputs(
    specs: "list[InputSpec]", batch_size: int = CHECK_BATCH, seed: int = 0, pad_first: bool = False
) -> dict[str, np.ndarray]:
    """Deterministic inputs for export and checks: random data, and attention masks that pad the last
    quarter of every sample but the first (so that both the masked and the unmasked path are compared).

    Args:
        specs: model inputs.
        batch_size: samples.
        seed: numpy seed.
        pad_first: pad the first sample too. Used for tracing: some encoders (Hugging Face's) skip
            the mask when it is all ones, and tracing would freeze that shortcut into the graph.
    """
    from pipeline.data.sources import random_inputs, token_role

    feeds = random_inputs(specs, batch_size, np.random.default_rng(seed))
    first = 0 if pad_first else 1
    for spec in specs:
        if token_role(spec) == "mask" and np.issubdtype(np.dtype(spec.dtype), np.integer) and spec.shape and spec.shape[-1] >= 4:
            feeds[spec.name][first:, ..., -(spec.shape[-1] // 4) :] = 0
    return feeds


# ----------------------------------------------------------------------------- export


def _torch_outputs(module: Any, inputs: dict[str, np.ndarray], specs: "list[InputSpec]") -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = module(*(torch.from_numpy(np.ascontiguousarray(inputs[s.name])) for s in specs))
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [o.detach().cpu().numpy() for o in outs]


def _trace_to_onnx(bundle: "ModelBundle", opset: int, batch_size: int) -> tuple[bytes, list[str]]:
    # Returns the serialized model and the tracer warnings worth showing to the user.
    import torch

    specs = bundle.inputs
    example = make_check_inputs(specs, batch_size, seed=0, pad_first=True)
    args = tuple(torch.from_numpy(example[s.name]) for s in specs)
    names_in = [s.name for s in specs]
    dynamic = {n: {0: BATCH_DIM} for n in [*names_in, *bundle.output_names]}
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                bundle.module,
                args,
                buf,
                dynamo=False,  # TorchScript exporter: opset 17 (dynamo targets 18+)
                export_params=True,
                opset_version=opset,
                do_constant_folding=True,
                input_names=names_in,
                output_names=list(bundle.output_names),
                dynamic_axes=dynamic,
            )
        except torch.onnx.errors.UnsupportedOperatorError as err:
            raise PipelineError(
                f"export of '{bundle.name}' failed: {str(err).strip().splitlines()[0]}",
                "rewrite that part of the model with supported ops, or export it yourself and use model=onnx",
            ) from err
        except (torch.onnx.errors.OnnxExporterError, RuntimeError, TypeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PipelineError(
                f"export of '{bundle.name}' to ONNX opset {opset} failed: {first}",
                "check the model traces with the inputs' shapes (model.input_shape); for data-dependent "
                "control flow export it yourself and use model=onnx",
            ) from err
    notes = sorted({str(w.message).splitlines()[0] for w in caught if issubclass(w.category, torch.jit.TracerWarning)})
    return buf.getvalue(), [f"tracer: {n}" for n in notes]


def fold_constant_identities(model: "onnx.ModelProto") -> int:
    """Replace each Identity node that copies an initializer by an initializer of its own (in place).

    torch's exporter stores equal initializers once and re-creates every other use through an Identity
    node (a random-weight CNN's BatchNorm-folded biases are all equal, for instance). TensorRT 8.6 keeps
    those Identity nodes as Reformat layers that run on every inference: 48 of them took 0.42 ms of a
    4.65 ms ResNet-50 INT8 batch of 256 on the H100. Folding them is exact; the graph edit is
    :func:`pipeline.graph.fold.fold_initializer_identities`.

    Returns:
        The number of Identity nodes removed.
    """
    from pipeline.graph.fold import fold_initializer_identities

    return fold_initializer_identities(model)


def _finalize(model: "onnx.ModelProto", where: str) -> "onnx.ModelProto":
    # Check, then infer every intermediate shape (strict: a failure is an error, not a silent gap).
    import onnx

    fold_constant_identities(model)

    if model.ir_version > MAX_IR_VERSION and _opset(model) <= 19:
        model.ir_version = MAX_IR_VERSION  # IR 9 covers opsets up to 19; older onnx refuses IR 10
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise PipelineError(
            f"the exported ONNX of {where} is invalid: {str(err).strip().splitlines()[0]}",
            "try another opset (opset=17 is what TensorRT 8.6 parses), or simplify the model's unusual ops",
        ) from err
    return model


def export_onnx(
    bundle: "ModelBundle",
    out_path: str | Path,
    opset: int = 17,
    batch_size: int = 1,
    check_inputs: dict[str, np.ndarray] | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> ExportResult:
    """Export ``bundle.module`` to a verified ONNX file with a dynamic batch dimension.

    Args:
        bundle: the model (``build_model``); must have a torch module.
        out_path: where to write the ``.onnx`` file (atomically).
        opset: ONNX opset (17 = TensorRT 8.6's maximum).
        batch_size: batch of the example used for tracing (the batch axis stays dynamic).
        check_inputs: inputs for the ONNX Runtime vs torch comparison (any batch); default: seeded
            random inputs at batch 2.
        atol / rtol: comparison tolerances: an output passes when
            ``max|onnx - torch| <= atol + rtol * max|torch|`` (:func:`pipeline.core.accuracy.allclose_outputs`).

    Returns:
        The :class:`ExportResult`.

    Raises:
        PipelineError: no torch module, unsupported op, invalid graph, or ONNX Runtime disagreeing
            with torch beyond tolerance (the file is then not written).
    """
    import onnx

    start = time.perf_counter()
    if bundle.module is None:
        raise PipelineError(
            f"model '{bundle.name}' has no torch module to export",
            "for model=onnx use pipeline.export.onnx_from_file(model.onnx_path, out_path)",
        )
    if batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1, got {batch_size}", "pass batch_size=1 or more")
    bundle.module.eval()
    raw, notes = _trace_to_onnx(bundle, opset, batch_size)
    model = _finalize(onnx.load_model_from_string(raw), f"'{bundle.name}'")
    actual_opset = _opset(model)
    if actual_opset > TENSORRT_MAX_OPSET:
        notes.append(f"opset {actual_opset} > {TENSORRT_MAX_OPSET}: TensorRT 8.6 cannot parse it (TensorRT 10 can)")
    feeds = check_inputs if check_inputs is not None else make_check_inputs(bundle.inputs, CHECK_BATCH, seed=1)
    feeds = {s.name: np.ascontiguousarray(feeds[s.name], dtype=s.dtype) for s in bundle.inputs}
    out_names = [o.name for o in model.graph.output]
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
        check = allclose_outputs(
            _torch_outputs(bundle.module, feeds, bundle.inputs), run_onnxruntime(tmp, feeds), out_names, atol, rtol
        )
        check["batch_size"] = int(next(iter(feeds.values())).shape[0])
        check["backend"] = "onnxruntime-cpu"
        if not check["passed"]:
            worst = max(check["outputs"].items(), key=lambda kv: kv[1]["max_abs_diff"])
            raise PipelineError(
                f"ONNX Runtime disagrees with torch for '{bundle.name}': output '{worst[0]}' max |diff| = "
                f"{worst[1]['max_abs_diff']:.3g} (largest |value| {worst[1]['max_abs_ref']:.3g}, rel L2 "
                f"{worst[1]['rel_l2']:.3g}) > atol {atol:g} + rtol {rtol:g} * largest; {out_path} not written",
                "the model may use an op that exports incorrectly at this opset (try another opset), or has "
                "data-dependent behaviour that tracing froze; loosen atol/rtol only if the difference is expected",
            )
    return ExportResult(
        onnx_path=out_path,
        opset=actual_opset,
        inputs=list(bundle.inputs),
        output_names=out_names,
        check=check,
        parameters=bundle.parameters(),
        seconds=round(time.perf_counter() - start, 3),
        ir_version=int(model.ir_version),
        warnings=notes,
    )


def onnx_from_file(path: str | Path, out_path: str | Path) -> ExportResult:
    """``model=onnx``: validate a user's ONNX file and copy it, shape-inferred, to ``out_path``.

    Args:
        path: the user's ONNX file.
        out_path: where the pipeline's copy goes (atomically).

    Returns:
        The :class:`ExportResult` (``check.passed`` is None: there is no torch reference); opset
        above 17, IR too new for old onnx, or a fixed batch dimension appear in ``warnings``.

    Raises:
        PipelineError: missing file, not an ONNX model, corrupt protobuf, checker failure.
    """
    import onnx

    start = time.perf_counter()
    model = _load(path)
    desc = _describe(model)
    notes = list(desc.warnings)
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as err:
        # Files from other exporters sometimes carry custom-domain ops that strict inference rejects
        # while the runtimes accept them: keep what non-strict inference finds and say so.
        model = onnx.shape_inference.infer_shapes(model)
        notes.append(f"strict shape inference failed ({str(err).strip().splitlines()[0]}); some shapes may be unknown")
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    params = int(sum(int(np.prod(i.dims)) for i in model.graph.initializer))
    return ExportResult(
        onnx_path=Path(out_path),
        opset=desc.opset,
        inputs=desc.inputs,
        output_names=desc.output_names,
        check={"passed": None, "reason": "model=onnx: no torch reference to compare against"},
        parameters=params,
        seconds=round(time.perf_counter() - start, 3),
        ir_version=int(model.ir_version),
        warnings=notes,
    )
