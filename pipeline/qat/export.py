"""Export a fine-tuned QAT model as an INT8 Q/DQ ONNX placed exactly like the PTQ one.

The fake quantizers are removed (:func:`pipeline.qat.fake_quant.strip_fake_quant`), the float model is exported
by the export stage's exporter (:func:`pipeline.export.onnx_export.export_onnx`: opset of the original, dynamic
batch, ONNX Runtime vs torch check) and must come out with the node and tensor names of the original FP32 ONNX.
The Q/DQ model is then written by the quantize stage's own writer with the placement recomputed on the new
graph (checked equal to the PTQ placement) and the activation ranges that initialised the fake quantizers;
weight scales are recomputed from the fine-tuned weights by the writer, as the fake quantizers did during
training. Same placement, same names -> TensorRT fuses the QAT model exactly as the PTQ one.

Files, next to each other: ``<stem>.qat.onnx`` (fine-tuned FP32) and ``<stem>.qat.int8.qdq.onnx``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple, Union

from pipeline.core.artifacts import atomic_path
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    from torch import nn

    from pipeline.core.specs import InputSpec
    from pipeline.qat.ranges import PtqRanges
    from pipeline.quantize.qdq import QdqPlan

#: Suffix of the fine-tuned FP32 ONNX.
QAT_ONNX_SUFFIX = ".qat.onnx"
#: Suffix of the fine-tuned INT8 Q/DQ ONNX.
QAT_QDQ_SUFFIX = ".qat.int8.qdq.onnx"


def qat_paths(out_dir: Union[str, Path], stem: str) -> Tuple[Path, Path]:
    """``(<out_dir>/<stem>.qat.onnx, <out_dir>/<stem>.qat.int8.qdq.onnx)``."""
    out = Path(out_dir)
    return out / f"{stem}{QAT_ONNX_SUFFIX}", out / f"{stem}{QAT_QDQ_SUFFIX}"


def graph_names(model: "onnx.ModelProto") -> Tuple[List[Tuple[str, str]], Set[str]]:
    """``([(node name, op type)] in graph order, {activation tensor names})``; weights (initializers) left out."""
    inits = {i.name for i in model.graph.initializer}
    tensors = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    for n in model.graph.node:
        tensors.update(t for t in (*n.input, *n.output) if t)
    return [(n.name, n.op_type) for n in model.graph.node], tensors - inits


def _check_same_graph(original: "onnx.ModelProto", new: "onnx.ModelProto", where: Path) -> None:
    """PipelineError unless ``new`` has the nodes (names, ops, order) and activation tensors of ``original``."""
    (nodes_a, tensors_a), (nodes_b, tensors_b) = graph_names(original), graph_names(new)
    if tensors_a == tensors_b and nodes_a == nodes_b:
        return
    gone, extra = sorted(tensors_a - tensors_b), sorted(tensors_b - tensors_a)
    detail = (f"{len(gone)} tensors missing (e.g. {gone[:1]}), {len(extra)} new (e.g. {extra[:1]})"
              if gone or extra else f"the nodes differ ({len(nodes_a)} vs {len(nodes_b)}, or their order or ops)")
    raise PipelineError(
        f"the fine-tuned model exports to a graph other than {where.name}: {detail}",
        "fine-tune the module the FP32 ONNX was exported from, without changing its structure (the fake "
        "quantizers are removed before export; other added or renamed modules change the ONNX names)")


def _slot_axes(plan: "QdqPlan") -> Dict[Tuple[int, int], Optional[int]]:
    return {slot: plan.weights[w].axis for w, uses in plan.weight_uses.items() for slot in uses}


def _check_same_placement(ptq: "QdqPlan", qat: "QdqPlan") -> None:
    """PipelineError unless both placements quantize the same node inputs with the same weight axes."""
    same = (list(ptq.nodes) == list(qat.nodes) and ptq.activations == qat.activations
            and _slot_axes(ptq) == _slot_axes(qat))
    if not same:
        differ = sorted(set(ptq.nodes) ^ set(qat.nodes)) or sorted(set(ptq.activations) ^ set(qat.activations))
        raise PipelineError(f"the Q/DQ placement of the fine-tuned model differs from the PTQ one (e.g. {differ[:3]})",
                            "the fine-tuned weights must keep every float/int8 decision of the FP32 model: "
                            "do not zero or retype whole layers during QAT")


def _input_specs(onnx_path: Path, specs: Optional[List["InputSpec"]]) -> List["InputSpec"]:
    from pipeline.graph.describe import onnx_input_specs

    specs = list(specs) if specs is not None else onnx_input_specs(onnx_path)
    dynamic = [s.name for s in specs if any(int(d) < 0 for d in s.shape)]
    if dynamic:
        raise PipelineError(f"{onnx_path.name} leaves non-batch dimensions of {dynamic} dynamic; the export needs "
                            "a concrete example shape", "pass input_specs (the model bundle's inputs)")
    return specs


def qat_qdq_onnx(model: "nn.Module", ranges: "PtqRanges", out_dir: Union[str, Path], *, stem: Optional[str] = None,
                 input_specs: Optional[List["InputSpec"]] = None) -> Path:
    """Write the fine-tuned model as ``<stem>.qat.onnx`` (FP32) and ``<stem>.qat.int8.qdq.onnx`` (Q/DQ).

    Args:
        model: the fine-tuned torch model, with or without its fake quantizers (it is not modified).
        ranges: the PTQ ranges that initialised the fake quantizers (:func:`pipeline.qat.ptq_ranges`); their
            activation thresholds go into the Q/DQ model unchanged.
        out_dir: folder of the two files (created).
        stem: file name stem; default the FP32 ONNX's (``resnet18`` for ``resnet18.onnx``).
        input_specs: the model's inputs for the export; default read from the FP32 ONNX (needs every
            non-batch dimension fixed).

    Returns:
        The Q/DQ ONNX path; the FP32 one is :func:`qat_paths` ``[0]``.

    Raises:
        PipelineError: the export fails or disagrees with torch, the fine-tuned graph's names or the
            placement differ from the original's.
    """
    import onnx

    from pipeline.export.onnx_export import export_onnx
    from pipeline.graph.describe import onnx_output_names
    from pipeline.models.bundle import ModelBundle
    from pipeline.qat.fake_quant import strip_fake_quant
    from pipeline.quantize.api import _load, _write_qdq_model, act_qparams_from

    src = Path(ranges.onnx_path)
    original = _load(src)
    stem = stem or src.name.removesuffix(".onnx")
    fp32_path, qdq_path = qat_paths(out_dir, stem)
    opset = next((o.version for o in original.opset_import if o.domain in ("", "ai.onnx")), 17)
    bundle = ModelBundle(f"{stem} (QAT)", strip_fake_quant(model).cpu().eval(), _input_specs(src, input_specs),
                         onnx_output_names(src))
    with atomic_path(fp32_path) as tmp:  # renamed only once the names are checked
        export_onnx(bundle, tmp, opset=opset)
        exported = onnx.load(str(tmp))
        _check_same_graph(original, exported, src)
    plan = ranges.placement(exported)
    _check_same_placement(ranges.plan, plan)
    qparams = act_qparams_from(ranges.stats, ranges.amaxes, plan.activations, ranges.cfg.symmetric)
    _write_qdq_model(exported, plan, qparams, qdq_path)
    return qdq_path
