"""The accuracy budget and the mixed-precision search: the fewest float layers that keep the model inside it.

Budget (:func:`budget_for`): the task's metric may drop by at most ``max_drop`` from FP32 - top-1 accuracy for a
classifier with labels (FP32's own accuracy minus ``max_drop``), top-1 agreement without labels, embedding
cosine for an embedder (``>= 1 - max_drop``, plus nearest-neighbour agreement ``>= min_nn_agreement``), output
cosine otherwise.

Search (:func:`search`): units (structural groups or single layers) are ranked by *harm*, the budget-normalised
drop each causes when it alone is quantized (one-at-a-time sweep), summed over a group. The plan keeps the
``k`` most harmful units in float for the smallest ``k`` that meets the budget (doubling, then bisection:
about ``2 log2(units)`` evaluations), then tries to quantize each kept unit again, least harmful first, and
finally splits kept groups into single layers: a unit stays float only if the budget needs it. Among plans
with as many float layers, fewer predicted seconds win (ties in harm are broken by the time a unit saves).
Every evaluated plan is a point of the accuracy / predicted-time Pareto front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.core.errors import PipelineError

Metrics = Dict[str, object]


@dataclass(frozen=True)
class Budget:
    """What a plan must keep.

    Attributes:
        metric: the metric key of :func:`pipeline.core.accuracy.task_metrics` that the budget is on.
        minimum: lowest value allowed for ``metric``.
        reference: FP32's value of ``metric`` (1.0 for agreement and cosine).
        max_drop: ``reference - minimum``.
        extra: other metric -> lowest value allowed (``nn_agreement`` for embedders).
    """

    metric: str
    minimum: float
    reference: float
    max_drop: float
    extra: Tuple[Tuple[str, float], ...] = ()

    def meets(self, m: Mapping[str, object]) -> bool:
        """Whether metrics ``m`` are inside the budget."""
        return all(float(m[k]) >= lo - 1e-12 for k, lo in ((self.metric, self.minimum), *self.extra) if k in m)

    def harm(self, m: Mapping[str, object]) -> float:
        """The drop of ``m`` in units of the allowed drop, worst constraint (0 = no loss, 1 = at the budget)."""
        out = 0.0
        for key, lo in ((self.metric, self.minimum), *self.extra):
            if key not in m:
                continue
            ref = self.reference if key == self.metric else 1.0
            allowed = max(ref - lo, 1e-9)
            out = max(out, (ref - float(m[key])) / allowed)
        return out

    def to_dict(self) -> Dict[str, object]:
        """JSON view."""
        return {"metric": self.metric, "minimum": self.minimum, "reference": self.reference,
                "max_drop": self.max_drop, "extra": dict(self.extra)}

    def tightened(self, margin: float) -> "Budget":
        """The budget with only ``1 - margin`` of each allowed drop spent (what the search aims at, so that the
        plan still holds on samples it has not seen: nearest-neighbour agreement in particular falls as the set
        of candidates grows)."""
        if not 0.0 <= margin < 1.0:
            raise PipelineError(f"sensitivity.margin={margin} is outside [0, 1)", "use e.g. 0.25 or 0 (no reserve)")
        keep = 1.0 - margin
        extra = tuple((k, 1.0 - keep * (1.0 - lo)) for k, lo in self.extra)
        return Budget(self.metric, self.reference - keep * self.max_drop, self.reference, keep * self.max_drop, extra)


def validated_metrics(search_m: Mapping[str, object], held_m: Mapping[str, object], tight: Budget,
                      real: Budget) -> Dict[str, object]:
    """Search metrics in which each budget metric is the smaller of its search value and its held-out value shifted
    by the search margin, so that ``tight.meets`` holds only when the search samples meet ``tight`` and the held-out
    samples meet ``real``. The two values are kept as ``search_<key>`` / ``holdout_<key>``."""
    out = dict(search_m)
    shift = {real.metric: tight.minimum - real.minimum,
             **{k: lo_t - dict(real.extra).get(k, lo_t) for k, lo_t in tight.extra}}
    for key, d in shift.items():
        if key in out and key in held_m:
            out[f"search_{key}"], out[f"holdout_{key}"] = out[key], held_m[key]
            out[key] = min(float(out[key]), float(held_m[key]) + d)
    return out


#: Default allowed drop per budget metric.
DEFAULT_DROP = {"accuracy": 0.005, "top1_agreement": 0.005, "embedding_cosine": 0.01, "output_cosine": 0.01}


def budget_for(task: str, reference_metrics: Mapping[str, object], has_labels: bool, max_drop: Optional[float],
               min_nn_agreement: float, metric: str = "auto") -> Budget:
    """The budget of a task (see the module docstring).

    Args:
        task: ``classification``, ``embedding`` or ``auto``.
        reference_metrics: FP32 against itself (for ``reference_accuracy``).
        has_labels: the evaluation samples carry labels.
        max_drop: allowed drop; None = :data:`DEFAULT_DROP` of the metric.
        min_nn_agreement: embedders: lowest nearest-neighbour agreement with FP32 (0 = no constraint).
        metric: ``auto`` or a metric key to put the budget on.

    Raises:
        PipelineError: a top-1 budget without labels, an unknown metric, a negative drop.
    """
    if metric == "auto":
        metric = {"classification": "accuracy" if has_labels else "top1_agreement",
                  "embedding": "embedding_cosine"}.get(task, "output_cosine")
    if metric == "accuracy" and not has_labels:
        raise PipelineError("sensitivity.metric=accuracy needs labelled evaluation samples, and these have none",
                            "use data with labels (data=digits, data=folder ...) or sensitivity.metric=top1_agreement")
    if metric not in DEFAULT_DROP and metric != "nn_agreement":
        raise PipelineError(f"unknown sensitivity.metric={metric!r}",
                            f"use auto or one of {', '.join([*DEFAULT_DROP, 'nn_agreement'])}")
    drop = DEFAULT_DROP.get(metric, 0.05) if max_drop is None else float(max_drop)
    if drop < 0:
        raise PipelineError(f"sensitivity.max_drop={drop} is negative", "use e.g. 0.005 (0.5% top-1) or 0.01 (cosine)")
    ref = float(reference_metrics.get("reference_accuracy", 1.0)) if metric == "accuracy" else 1.0
    extra = (("nn_agreement", float(min_nn_agreement)),) if task == "embedding" and min_nn_agreement > 0 else ()
    return Budget(metric, ref - drop, ref, drop, extra)


@dataclass
class Unit:
    """Something the search moves to float: a group of layer labels, its harm and predicted time saving.

    Attributes:
        name: group name; kind: ``ffn`` / ``attention`` / ``layer``; layers: member labels.
        harm: budget-normalised drop when only its layers are quantized (sum over members).
        saving_s: predicted seconds INT8 saves over float on its layers (roofline), 0 when unknown.
    """

    name: str
    kind: str
    layers: List[str]
    harm: float
    saving_s: float = 0.0


@dataclass
class Point:
    """One evaluated plan: float layers, metrics, predicted seconds, whether it meets the budget."""

    float_layers: List[str]
    metrics: Metrics
    predicted_s: Optional[float]
    meets: bool
    step: str

    def to_dict(self) -> Dict[str, object]:
        """JSON view (metrics reduced to the numbers the report shows)."""
        keys = ("accuracy", "top1_agreement", "embedding_cosine", "output_cosine", "nn_agreement")
        return {"float_layers": list(self.float_layers), "num_float": len(self.float_layers),
                "metrics": {k: self.metrics[k] for k in keys if k in self.metrics},
                "predicted_s": self.predicted_s, "meets": self.meets, "step": self.step}


@dataclass
class SearchResult:
    """The chosen plan, every evaluated point, and the Pareto front."""

    plan: Point
    points: List[Point] = field(default_factory=list)
    met: bool = True

    def pareto(self, metric: str) -> List[Point]:
        """Points not beaten on both ``metric`` (higher) and predicted time (lower), by predicted time."""
        pts = [p for p in self.points if p.predicted_s is not None and metric in p.metrics]
        front = [p for p in pts if not any(
            (float(q.metrics[metric]) >= float(p.metrics[metric]) and q.predicted_s <= p.predicted_s)
            and (float(q.metrics[metric]) > float(p.metrics[metric]) or q.predicted_s < p.predicted_s)
            for q in pts)]
        unique = {tuple(sorted(p.float_layers)): p for p in front}
        return sorted(unique.values(), key=lambda p: p.predicted_s)


def search(units: Sequence[Unit], evaluate: Callable[[List[str]], Metrics], budget: Budget,
           predicted: Callable[[List[str]], Optional[float]], max_float: int = 0,
           say: Optional[Callable[[str], None]] = None) -> SearchResult:
    """Find the plan (see the module docstring).

    Args:
        units: candidates for float.
        evaluate: float layer labels -> metrics of the model with everything else quantized.
        budget: what the plan must keep.
        predicted: float layer labels -> predicted seconds of the plan (None when unknown).
        max_float: at most this many float layers (0: no limit).
        say: called with one line per evaluated plan (progress for the console).

    Returns:
        :class:`SearchResult`; ``met`` is False when no plan within ``max_float`` meets the budget (``plan``
        is then the best one found).
    """
    order = sorted(units, key=lambda u: (-u.harm, -u.saving_s, u.name))
    seen: Dict[Tuple[str, ...], Point] = {}

    def point(layers: List[str], step: str) -> Point:
        key = tuple(sorted(layers))
        if key not in seen:
            m = evaluate(list(layers))
            seen[key] = Point(list(layers), m, predicted(list(layers)), budget.meets(m), step)
            if say is not None:
                say(f"search: {step}: {budget.metric} {float(m.get(budget.metric, float('nan'))):.4f}"
                    + "".join(f", {k} {float(m[k]):.4f}" for k, _ in budget.extra if k in m)
                    + (" (meets)" if seen[key].meets else ""))
        return seen[key]

    def first(k: int) -> List[str]:
        return [ly for u in order[:k] for ly in u.layers]

    def allowed(layers: List[str]) -> bool:
        return max_float <= 0 or len(layers) <= max_float

    base = point([], "all INT8")
    if base.meets:
        return SearchResult(base, list(seen.values()))
    k, lo = 1, 0
    while k < len(order) and allowed(first(k)) and not point(first(k), f"{k} most harmful in float").meets:
        lo, k = k, k * 2
    k = min(k, len(order))
    while k > 1 and not allowed(first(k)):
        k -= 1
    if not point(first(k), f"{k} most harmful in float").meets:
        best = max(seen.values(), key=lambda p: -budget.harm(p.metrics))
        return SearchResult(best, list(seen.values()), met=False)
    hi = k
    while hi - lo > 1:  # smallest k in (lo, hi] that meets the budget
        mid = (lo + hi) // 2
        if point(first(mid), f"{mid} most harmful in float").meets:
            hi = mid
        else:
            lo = mid
    kept = list(order[:hi])
    kept = _prune(kept, point, lambda us: [ly for u in us for ly in u.layers], "unit")
    singles = [Unit(ly, "layer", [ly], 0.0) for u in kept for ly in u.layers]
    if len(singles) > len(kept):
        kept = _prune(singles, point, lambda us: [ly for u in us for ly in u.layers], "layer")
    plan = point([ly for u in kept for ly in u.layers], "plan")
    return SearchResult(plan, list(seen.values()))


def _prune(kept: List[Unit], point, layers_of, what: str) -> List[Unit]:
    """Quantize kept units again, least harmful first, wherever the budget still holds."""
    for u in sorted(kept, key=lambda u: (u.harm, u.saving_s)):
        trial = [v for v in kept if v is not u]
        if point(layers_of(trial), f"{what} {u.name} back to INT8").meets:
            kept = trial
    return kept


def predicted_time(int8_s: Mapping[str, float], float_s: Mapping[str, float], total_int8_s: Optional[float]
                   ) -> Callable[[Sequence[str]], Optional[float]]:
    """Predicted seconds of a plan: the all-INT8 roofline plus, per float layer, its float minus INT8 time."""
    def f(float_layers: Sequence[str]) -> Optional[float]:
        if total_int8_s is None:
            return None
        return total_int8_s + sum(float_s.get(ly, 0.0) - int8_s.get(ly, 0.0) for ly in float_layers)
    return f
