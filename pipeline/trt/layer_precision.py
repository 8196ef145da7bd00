"""A mixed-precision plan on TensorRT's implicit INT8 path: per-layer precision constraints (8.6, 10.x).

The sensitivity stage writes ``<model>.precision_plan.json`` (:mod:`pipeline.quantize.mixed`): ONNX node
labels to keep in float. Two build paths can honour it:

* explicit (a Q/DQ ONNX, every TensorRT version): the quantize stage took the plan (``quant.plan``) and
  left those nodes without Q/DQ, so the ONNX already says it; the build does nothing extra and records
  that (:data:`PATH_EXPLICIT`).
* implicit (calibrator or calibration cache, no Q/DQ ONNX; 8.6 and 10.x): every network layer that the
  ONNX parser made for a float node gets ``ILayer.precision`` = FP16 (FP32 when the build has no FP16
  flag) and the same type on each floating-point output (``ILayer.set_output_type``), and the builder
  config gets ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS`` (``PREFER_PRECISION_CONSTRAINTS`` when only that
  one exists), so INT8 calibration leaves those layers alone (:data:`PATH_IMPLICIT`).

TensorRT 11 networks are strongly typed: it has neither the INT8 calibrator nor per-layer precision
constraints, so a plan on the implicit path is a :class:`PipelineError` that says to build the plan's
Q/DQ ONNX with ``quant.plan`` (:func:`refuse_without_constraints`). Everything is found by feature
detection (:class:`~pipeline.trt.features.TrtFeatures`), never by version strings.

Which network layers belong to a plan label (the rules of the ONNX parser, onnx-tensorrt):

1. a label is a node name, or ``OpType#index`` for an unnamed node, which the parser names
   ``node_of_<first output>``: :func:`parser_names` maps each label to that base name;
2. a layer belongs to the node whose base name it is exactly, or, when the parser made several layers
   for one node (Gemm's bias add, a cast), whose base name it is after removing ``_<digits>`` uniqueness
   suffixes one at a time (``/fc/Gemm_3`` -> ``/fc/Gemm``) -- unless a shorter form is itself another
   node's name: ``/attn/MatMul_1`` is the exporter's second MatMul, not a suffix of ``/attn/MatMul``
   (:func:`layer_owner`). Layers the parser named ``(Unnamed Layer* N)`` or ``ONNXTRT_*`` belong to no node.
3. After the build, the engine inspector's layer names are fusions (``/conv/Conv + /relu/Relu``):
   each `` + `` part is matched by rule 2 and the precision TensorRT chose is recorded
   (:func:`engine_check`); a node inside a Myelin region (``{ForeignNode[/a...]}``) cannot be named
   and is listed as not seen.

A plan label that matches no network layer is reported (``unmatched``), never dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from pipeline.core.errors import PipelineError
from pipeline.trt.features import PRECISION_CONSTRAINT_FLAGS, TrtFeatures
from pipeline.trt.plan import BuildPlan

#: How a build honours the plan: constraints on layers, the Q/DQ ONNX, or not at all (no INT8 in the build).
PATH_IMPLICIT, PATH_EXPLICIT, PATH_UNUSED = "implicit", "explicit", "unused"
#: Precisions whose builds quantize to INT8 (the only ones a plan changes).
INT8_PRECISIONS = ("int8", "best")
_SUFFIX = re.compile(r"^(.+)_\d+$")


@dataclass
class LayerPlan:
    """What a build does with a precision plan (pure data; part of the engine key on the implicit path).

    Attributes:
        plan_file: the plan file.
        path: :data:`PATH_IMPLICIT`, :data:`PATH_EXPLICIT` or :data:`PATH_UNUSED`.
        float_labels: the plan's float node labels, plan order.
        parser_names: label -> base name the ONNX parser gives its layers (labels of nodes in the ONNX).
        node_names: every node's parser base name in the ONNX (to tell suffixes from other nodes).
        flag: the BuilderFlag that makes TensorRT honour the constraints (implicit path only).
        layer_type: ``FP16`` / ``FP32``: the type the float layers are constrained to (implicit path only).
        note: one line for the report.
    """

    plan_file: str
    path: str
    float_labels: List[str]
    parser_names: Dict[str, str] = field(default_factory=dict)
    node_names: List[str] = field(default_factory=list)
    flag: Optional[str] = None
    layer_type: Optional[str] = None
    note: str = ""

    def key(self) -> Dict[str, Any]:
        """What the engine key hashes on the implicit path (the constraints change the engine)."""
        return {"float_layers": sorted(self.float_labels), "layer_type": self.layer_type, "flag": self.flag}

    def record(self) -> Dict[str, Any]:
        """The part of the build record that does not need the network (explicit and unused paths)."""
        return {"plan": self.plan_file, "path": self.path, "float_labels": list(self.float_labels),
                "flag": self.flag, "layer_type": self.layer_type, "note": self.note}


def plan_float_labels(plan: Mapping[str, Any]) -> List[str]:
    """The node labels a plan keeps in float: ``float_layers``, then any other ``layer_precisions`` "float"."""
    labels = [str(x) for x in plan.get("float_layers") or []]
    seen = set(labels)
    for label, prec in (plan.get("layer_precisions") or {}).items():
        if prec == "float" and label not in seen:
            labels.append(str(label))
            seen.add(label)
    return labels


def parser_names(onnx_path: Path) -> Dict[str, str]:
    """Node label -> the base name TensorRT's ONNX parser gives the node's layers, for every node.

    Labels follow :func:`pipeline.quantize.qdq.node_label` (the plan's spelling): the node's name, or
    ``OpType#index``; the parser names an unnamed node ``node_of_<first output>``.
    """
    import onnx  # noqa: PLC0415

    from pipeline.quantize.qdq import node_label  # noqa: PLC0415

    model = onnx.load(str(onnx_path), load_external_data=False)
    out = {}
    for i, n in enumerate(model.graph.node):
        out[node_label(n, i)] = n.name or (f"node_of_{n.output[0]}" if n.output else "")
    return out


def layer_owner(layer_name: str, node_names: Iterable[str] | frozenset) -> Optional[str]:
    """The node base name a network layer belongs to (module docstring, rule 2), or None.

    Args:
        layer_name: ``ILayer.name`` (or one `` + `` part of an engine layer name).
        node_names: every node's parser base name.
    """
    names = node_names if isinstance(node_names, (set, frozenset)) else frozenset(node_names)
    name = layer_name.strip()
    while True:
        if name in names:
            return name
        m = _SUFFIX.match(name)
        if m is None:
            return None
        name = m.group(1)


def refuse_without_constraints(features: TrtFeatures, precision: str, has_qdq: bool,
                               plan_path: Optional[Path]) -> None:
    """Raise when a plan asks for the implicit path on a TensorRT without per-layer precision constraints.

    Raises:
        PipelineError: TensorRT 11 (strongly typed: no calibrator, no precision constraints), or any
            version lacking ``ILayer.precision`` / ``OBEY_PRECISION_CONSTRAINTS``; the message says which
            path this version allows, the hint how to build the plan's Q/DQ ONNX.
    """
    if plan_path is None or has_qdq or precision not in INT8_PRECISIONS:
        return
    if features.implicit_int8 and features.layer_precision and features.precision_constraints:
        return
    missing = [what for what, ok in (("BuilderFlag.OBEY/PREFER_PRECISION_CONSTRAINTS", features.precision_constraints),
                                      ("ILayer.precision / set_output_type", features.layer_precision),
                                      ("an INT8 calibrator", features.implicit_int8)) if not ok]
    allowed = ("the explicit path only (a Q/DQ ONNX; networks are strongly typed)" if not features.implicit_int8
               else "implicit INT8 without per-layer precisions, or the explicit path (a Q/DQ ONNX)")
    raise PipelineError(
        f"the precision plan {plan_path} keeps layers in float, but TensorRT {features.library_version} has no "
        f"per-layer precision constraints for the implicit INT8 path (missing: {', '.join(missing)}); this "
        f"version allows {allowed}.",
        f"Build the plan's Q/DQ ONNX instead: run the quantize stage with quant.plan={plan_path} (it leaves the "
        "plan's float layers without Q/DQ) and build that ONNX (stages=[...,quantize,build], or "
        "inputs.qdq_onnx=<model>.int8.qdq.onnx).")


def layer_plan_for(features: TrtFeatures, plan: BuildPlan, plan_path: Path, onnx_path: Path) -> LayerPlan:
    """Decide how this build honours the plan; on the implicit path, add the constraint flag to ``plan``.

    Args:
        features: detected TensorRT capabilities.
        plan: the build plan (:func:`pipeline.trt.plan.plan_build`); ``set_flags``/``notes`` are extended.
        plan_path: the ``<model>.precision_plan.json``.
        onnx_path: the ONNX being built.

    Raises:
        PipelineError: an unreadable plan; on the implicit path, a plan made for another ONNX or a
            TensorRT without constraints.
    """
    from pipeline.quantize.mixed import read_plan  # noqa: PLC0415

    mixed = read_plan(Path(plan_path))
    labels = plan_float_labels(mixed)
    if plan.explicit_quantization:
        note = ("explicit quantization: the Q/DQ ONNX decides the layer precisions (the plan's float layers are "
                "float only if the quantize stage took the plan, quant.plan); no per-layer constraints set")
        return LayerPlan(str(plan_path), PATH_EXPLICIT, labels, note=note)
    if not plan.calibrator:
        return LayerPlan(str(plan_path), PATH_UNUSED, labels,
                         note=f"precision={plan.precision} builds no INT8 layer here: the plan constrains nothing")
    refuse_without_constraints(features, "int8", False, Path(plan_path))
    _same_onnx(mixed, plan_path, onnx_path)
    names = parser_names(onnx_path)
    flag = next(f for f in PRECISION_CONSTRAINT_FLAGS if f in features.precision_constraints)
    layer_type = "FP16" if "FP16" in plan.set_flags else "FP32"
    plan.set_flags.append(flag)
    note = f"precision plan: {len(labels)} float layers constrained to {layer_type} ({flag}), INT8 calibration elsewhere"
    plan.notes.append(note)
    return LayerPlan(str(plan_path), PATH_IMPLICIT, labels, {k: v for k, v in names.items() if k in set(labels)},
                     sorted(set(names.values()) - {""}), flag, layer_type, note)


def _same_onnx(mixed: Mapping[str, Any], plan_path: Path, onnx_path: Path) -> None:
    """The implicit path builds the FP32 ONNX the plan was made for; another model's labels would be wrong."""
    from pipeline.core.store import content_hash  # noqa: PLC0415

    want = mixed.get("onnx_sha256")
    if want is not None and want != content_hash(Path(onnx_path)):
        raise PipelineError(f"the precision plan {plan_path} was made for another ONNX model "
                            f"(model {mixed.get('model')!r}), not {onnx_path}",
                            "run the sensitivity stage on this model, or pass the plan made for it")


def apply_layer_precisions(trt: ModuleType, network: Any, lp: LayerPlan,
                           log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Constrain every layer of the plan's float nodes (implicit path); returns the build record.

    Layers whose outputs are all non-floating (shape arithmetic, INT32/BOOL) are left alone: a float type
    on an integer tensor is an error, and they do no INT8 math anyway.

    Returns:
        :meth:`LayerPlan.record` plus ``matched`` (label -> network layer names constrained),
        ``unmatched`` (labels with no layer), ``why_unmatched`` (label -> reason) and ``integer_layers``
        (label -> layers left alone).
    """
    dtype = getattr(trt, "float16" if lp.layer_type == "FP16" else "float32")
    floating = {getattr(trt, n) for n in ("float32", "float16", "bfloat16") if hasattr(trt, n)}
    wanted = {lp.parser_names[label]: label for label in lp.float_labels if label in lp.parser_names}
    nodes = frozenset(lp.node_names)
    matched: Dict[str, List[str]] = {}
    integer: Dict[str, List[str]] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        label = wanted.get(layer_owner(str(layer.name), nodes))
        if label is None:
            continue
        outs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floating]
        if not outs:
            integer.setdefault(label, []).append(str(layer.name))
            continue
        layer.precision = dtype
        for j in outs:
            layer.set_output_type(j, dtype)
        matched.setdefault(label, []).append(str(layer.name))
    matched = {label: matched[label] for label in lp.float_labels if label in matched}  # plan order
    unmatched = [label for label in lp.float_labels if label not in matched]
    why = {label: ("only integer-typed layers" if label in integer else "no network layer named after it"
                   if label in lp.parser_names else "no node of that label in the ONNX") for label in unmatched}
    n_layers = sum(len(v) for v in matched.values())
    log(f"[build] precision plan: {len(matched)}/{len(lp.float_labels)} float layers -> {lp.layer_type} on "
        f"{n_layers} network layers ({lp.flag})" + (f"; no layer for: {', '.join(unmatched)}" if unmatched else ""))
    return {**lp.record(), "matched": matched, "unmatched": unmatched, "why_unmatched": why,
            "integer_layers": integer}


def engine_check(record: Mapping[str, Any], lp: LayerPlan, layers: Iterable[Any]) -> Dict[str, Any]:
    """``record`` plus what the built engine did with the float layers (module docstring, rule 3).

    Args:
        record: :func:`apply_layer_precisions`'s result.
        lp: the layer plan.
        layers: the inspector's ``Layers`` (dicts with ``Name``; names only are matched too).

    Returns:
        ``record`` with ``engine_layers`` (label -> ``[{"name", "precision"}]``) and ``not_in_engine_names``
        (matched labels no engine layer name shows, e.g. fused into a Myelin region).
    """
    from pipeline.trt.inspector import layer_precision  # noqa: PLC0415

    wanted = {lp.parser_names[label]: label for label in lp.float_labels if label in lp.parser_names}
    nodes = frozenset(lp.node_names)
    seen: Dict[str, List[Dict[str, Any]]] = {}
    for layer in layers:
        row = layer if isinstance(layer, Mapping) else {"Name": str(layer)}
        name = str(row.get("Name", ""))
        owners = {wanted.get(layer_owner(part, nodes)) for part in name.split(" + ")} - {None}
        for label in sorted(owners):
            seen.setdefault(label, []).append({"name": name, "precision": layer_precision(row)})
    hidden = [label for label in record.get("matched", {}) if label not in seen]
    return {**record, "engine_layers": seen, "not_in_engine_names": hidden}
