"""Two engines of one model side by side, per layer: time, precision, tactic, reformats, standalone Q/DQ.

Engine layers of two builds (FP16 vs INT8, dense vs sparse, two plans) rarely match one to one: fusions differ.
Layers are matched through the ONNX nodes they cover: every layer of A and of B that shares a node with another
lands in the same row (a connected component), so a row compares the same piece of the network in both engines.
A reformat layer has no ONNX node; it joins the row of the layer it feeds (TensorRT names it "Reformatting
CopyNode for Input Tensor i to <layer>"), else the row of the next layer in execution order.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from pipeline.explain.gap import LayerGap

_TARGET = re.compile(r"\bto (.+)$")


def _parent(p: Dict[Tuple[str, int], Tuple[str, int]], x: Tuple[str, int]) -> Tuple[str, int]:
    while p[x] != x:
        p[x] = p[p[x]]
        x = p[x]
    return x


def _anchor_of_unmapped(layers: Sequence[LayerGap], i: int) -> int:
    """Index of the layer an unmapped layer (reformat) belongs to: the layer it feeds, else the next mapped one."""
    m = _TARGET.search(layers[i].name)
    if m:
        target = m.group(1).strip()
        for j, ly in enumerate(layers):
            if ly.name == target:
                return j
    for j in range(i + 1, len(layers)):
        if layers[j].onnx_nodes:
            return j
    for j in range(i - 1, -1, -1):
        if layers[j].onnx_nodes:
            return j
    return i


def engine_diff(a: Sequence[LayerGap], b: Sequence[LayerGap], labels: Tuple[str, str] = ("A", "B")
                ) -> List[Dict[str, Any]]:
    """Rows comparing engines ``a`` and ``b`` (gap rows of each, execution order), slowest difference first.

    Each row: ``nodes`` (ONNX nodes covered), per side ``layers``, ``ms``, ``precisions``, ``tactics``,
    ``reformats`` (count and ms), ``standalone_qdq``; ``delta_ms`` = B - A and ``ratio`` = B / A.
    """
    p: Dict[Tuple[str, int], Tuple[str, int]] = {}
    owner: Dict[str, Tuple[str, int]] = {}
    sides = {"a": list(a), "b": list(b)}
    for side, layers in sides.items():
        for i, ly in enumerate(layers):
            p[(side, i)] = (side, i)
    for side, layers in sides.items():
        for i, ly in enumerate(layers):
            for n in ly.onnx_nodes:
                if n in owner:
                    ra, rb = _parent(p, owner[n]), _parent(p, (side, i))
                    if ra != rb:
                        p[rb] = ra
                else:
                    owner[n] = (side, i)
        for i, ly in enumerate(layers):
            if not ly.onnx_nodes:
                j = _anchor_of_unmapped(layers, i)
                if j != i:
                    p[_parent(p, (side, i))] = _parent(p, (side, j))
    groups: Dict[Tuple[str, int], List[Tuple[str, int]]] = {}
    for key in p:
        groups.setdefault(_parent(p, key), []).append(key)
    rows = []
    for members in groups.values():
        row: Dict[str, Any] = {"nodes": []}
        first = min((i for s, i in members if s == "a"), default=None)
        for side, label in (("a", labels[0]), ("b", labels[1])):
            mine = [sides[side][i] for s, i in sorted(members) if s == side]
            ref = [ly for ly in mine if _is_reformat(ly)]
            row[label] = {
                "layers": [ly.name for ly in mine],
                "ms": sum(ly.measured_s for ly in mine) * 1e3,
                "bound_ms": sum(ly.bound_s for ly in mine) * 1e3,
                "precisions": sorted({ly.precision for ly in mine if ly.precision and not _is_reformat(ly)}),
                "tactics": [ly.tactic for ly in mine if ly.tactic],
                "reformats": {"count": len(ref), "ms": sum(ly.measured_s for ly in ref) * 1e3},
                "standalone_qdq": sum(1 for ly in mine if ly.detail.startswith("standalone Q/DQ")),
                "causes": sorted({ly.cause for ly in mine}),
            }
            for ly in mine:
                row["nodes"] += [n for n in ly.onnx_nodes if n not in row["nodes"]]
        ta, tb = row[labels[0]]["ms"], row[labels[1]]["ms"]
        row["delta_ms"] = tb - ta
        row["ratio"] = tb / ta if ta > 0 else None
        row["order"] = first if first is not None else min(i for _, i in members)
        rows.append(row)
    rows.sort(key=lambda r: -abs(r["delta_ms"]))
    return rows


def _is_reformat(ly: LayerGap) -> bool:
    """A layer that only converts data: a reformat, or a standalone Q/DQ TensorRT ran as one."""
    return ly.detail.startswith("reformat") or "run as a reformat" in ly.detail


def diff_summary(rows: Sequence[Mapping[str, Any]], labels: Tuple[str, str]) -> Dict[str, Any]:
    """Totals of a diff: time per side, reformat time, rows where B is slower, standalone Q/DQ layers."""
    a, b = labels
    tot = {lab: sum(r[lab]["ms"] for r in rows) for lab in labels}
    ref = {lab: sum(r[lab]["reformats"]["ms"] for r in rows) for lab in labels}
    slower = [r for r in rows if r["delta_ms"] > 0]  # pieces only B has (standalone Q/DQ) count: B pays for them
    return {"total_ms": tot, "reformat_ms": ref,
            "standalone_qdq": {lab: sum(r[lab]["standalone_qdq"] for r in rows) for lab in labels},
            "rows": len(rows), "rows_where_b_is_slower": len(slower),
            "time_lost_where_b_is_slower_ms": sum(r["delta_ms"] for r in slower),
            "time_won_where_b_is_faster_ms": -sum(r["delta_ms"] for r in rows if r["delta_ms"] < 0)}


def diff_sentence(summary: Mapping[str, Any], labels: Sequence[str]) -> str:
    """The diff in one sentence (explain.md and the report): totals, where B loses and wins time, reformats, Q/DQ."""
    a, b = labels
    s = summary
    ta, tb = s["total_ms"][a], s["total_ms"][b]
    return (f"Total per-layer time {ta:.3f} ms ({a}) vs {tb:.3f} ms ({b})" + (f", {ta / tb:.2f}x" if tb > 0 else "")
            + f"; reformats {s['reformat_ms'][a]:.3f} vs {s['reformat_ms'][b]:.3f} ms; standalone Q/DQ layers "
            f"{s['standalone_qdq'][a]} vs {s['standalone_qdq'][b]}. Matched through the ONNX nodes each engine layer "
            f"covers, {b} is slower in {s['rows_where_b_is_slower']} of {s['rows']} pieces (losing "
            f"{s['time_lost_where_b_is_slower_ms']:.3f} ms) and faster in {s['rows'] - s['rows_where_b_is_slower']} "
            f"(winning {s['time_won_where_b_is_faster_ms']:.3f} ms).")
