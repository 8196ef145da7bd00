"""One sensitivity analysis, start to end: inputs loaded, sweeps run, plan searched, results assembled.

Order of work (each step's wall time is in ``sensitivity.json``'s ``seconds``):

1. FP32 reference on the search samples; the budget from the task.
2. Each activation's calibration method, chosen in one FP32 walk at its first quantized consumer by that
   layer's output error (:meth:`Sweep.choose_method`).
3. All-INT8 with those per-tensor methods and with each method everywhere: the best for the task metric is
   the base of everything that follows.
4. One-at-a-time sweep (one forward walk), optionally all-but-one; each layer's output error with everything
   quantized (one pass).
5. The search (:func:`pipeline.sensitivity.search.search`), then the plan checked on the held-out samples.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.sensitivity.inputs import as_list, split_samples

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.sensitivity.search import Budget
    from pipeline.sensitivity.inputs import SensitivityInputs, SensitivitySettings

_KEYS = ("accuracy", "top1_agreement", "embedding_cosine", "output_cosine", "output_cosine_min", "nn_agreement",
         "max_abs_diff")


def _short(m: Dict[str, Any]) -> Dict[str, Any]:
    return {k: m[k] for k in _KEYS if k in m}


class Analysis:
    """State of one run of the stage (built by :meth:`prepare`)."""

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)

    # ------------------------------------------------------------------------------------------ inputs
    @classmethod
    def prepare(cls, inputs: "SensitivityInputs", settings: "SensitivitySettings", progress: bool) -> "Analysis":
        """Load the model, placement, statistics and samples; check them."""
        from pipeline.core.datasets import load_dataset_file
        from pipeline.quantize.api import _check_cfg, _float_tensor_set, _load, plan_for_config
        from pipeline.quantize.stage import _task as quantize_task
        from pipeline.sensitivity.items import quantized_layers
        from pipeline.sensitivity.segments import GraphIndex

        cfg, qcfg = settings.sensitivity, settings.quant
        _check_cfg(qcfg)
        model, splits = _split_model(inputs, qcfg, _load(inputs.onnx), settings.batch_size)
        plan = plan_for_config(model, qcfg, float_tensors=_float_tensor_set(model))
        sites = quantized_layers(model, plan)
        layers = [ly for ly in sites if ly.compute or cfg.layers == "all"]
        if cfg.layers not in ("compute", "all"):
            raise PipelineError(f"sensitivity.layers={cfg.layers!r}", "use compute (Conv/Gemm/MatMul) or all "
                                "(also the pooling and residual-add inputs the placement quantizes)")
        if not layers:
            raise PipelineError("no Conv/Gemm/MatMul is quantized, so there is no layer to rank",
                                "use sensitivity.layers=all to rank the pooling/residual-add sites, or check quant.op_types")
        evals = load_dataset_file(inputs.eval_data)
        if len(evals) == 0:
            raise PipelineError("the evaluation set is empty: sensitivity has nothing to measure",
                                "raise data.num_samples (256 or more gives stable rankings)")
        n = len(evals) if cfg.samples <= 0 else min(cfg.samples, len(evals))
        search_idx, held_idx = split_samples(n, cfg.holdout)
        stats = _statistics(inputs, model, plan, qcfg, progress, settings.batch_size)
        return cls(inputs=inputs, settings=settings, cfg=cfg, qcfg=qcfg, model=model, plan=plan, layers=layers,
                   splits=splits,
                   fixed=[ly for ly in sites if ly not in layers],
                   index=GraphIndex(model), stats=stats, evals=evals, search_idx=search_idx, held_idx=held_idx,
                   task=quantize_task(inputs.summary), progress=progress, seconds={})

    # -------------------------------------------------------------------------------------------- steps
    def run_all(self) -> Dict[str, Any]:
        """Every step; returns the ``sensitivity.json`` dict."""
        from pipeline.sensitivity.items import structural_groups

        sweep, budget, ref_metrics = self._timed("reference", self._sweep_for, self.search_idx)
        self.budget: "Budget" = budget
        methods = as_list(self.cfg.methods)
        if methods:
            self._timed("calibration_choice", sweep.choose_methods, methods, self.progress)
        base = self._timed("calibration_check", self._pick_calibration, sweep)
        one = self._timed("one_at_a_time", sweep.one_at_a_time, self.progress)
        abo = self._timed("all_but_one", sweep.all_but_one, self.progress) if self.cfg.all_but_one else None
        errors = self._timed("layer_errors", sweep.layer_errors)
        int8_s, float_s, total, pred_note = self._timed("roofline", self._roofline)
        groups = structural_groups(self.model, self.layers) if self.cfg.groups else []
        units = self._units(one, groups, int8_s, float_s)
        from pipeline.sensitivity.search import predicted_time, search

        predict = predicted_time(int8_s, float_s, total)
        self.search_budget = budget.tightened(self.cfg.margin)
        say = (lambda line: print(f"  sensitivity {line}", flush=True)) if self.progress else None
        evaluate = self._validated(sweep) if self.cfg.validate and len(self.held_idx) else sweep.evaluate
        result = self._timed("search", search, units, evaluate, self.search_budget, predict, self.cfg.max_float,
                             say)
        self.result, self.sweep = result, sweep
        held = self._timed("holdout", self._holdout, result.plan.float_layers)
        return self._assemble(one, abo, errors, groups, units, base, ref_metrics, held,
                              (int8_s, float_s, total, pred_note))

    def _validated(self, sweep):
        """The search's evaluation with the held-out samples in the loop: each budget metric becomes the smaller of
        its value on the search samples and its held-out value shifted by the search margin, so a plan meets the
        tightened budget only if it also meets the real budget on the held-out samples."""
        from pipeline.sensitivity.search import validated_metrics

        held, real = self._held_sweep()
        tight = self.search_budget

        def evaluate(layers=()):
            return validated_metrics(*self._pair_metrics(sweep, held, layers), tight, real)

        return evaluate

    def _held_sweep(self):
        """The held-out samples' :class:`Sweep` and real budget (made once)."""
        if not hasattr(self, "_held"):
            held, real, _ = self._sweep_for(self.held_idx)
            self._held = (held, real)
        return self._held

    def _pair_metrics(self, sweep, held, layers=()) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """Metrics of the search and held-out samples with ``layers`` float (cached per plan). Nearest-neighbour
        agreement is measured for each set's queries among *all* samples (search + held-out): agreement falls as
        the candidate set grows, and the deployment set is at least as large as all the samples here."""
        from pipeline.core.accuracy import nn_agreement_among

        key = tuple(sorted(layers))
        cache = self.__dict__.setdefault("_pairs", {})
        if key not in cache:
            ys, yh = sweep.outputs(layers), held.outputs(layers)
            ms, mh = sweep.metric(ys), held.metric(yh)
            if "nn_agreement" in ms and "nn_agreement" in mh:
                ref, y, n = np.concatenate([sweep.ref, held.ref]), np.concatenate([ys, yh]), len(ys)
                ms["nn_agreement"] = nn_agreement_among(ref, y, np.arange(n))
                mh["nn_agreement"] = nn_agreement_among(ref, y, np.arange(n, len(ref)))
                ms["nn_pool"] = mh["nn_pool"] = len(ref)
            cache[key] = (ms, mh)
        return cache[key]

    def _timed(self, name: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.seconds[name] = time.perf_counter() - t0
        return out

    def _sweep_for(self, idx: np.ndarray):
        """A :class:`Sweep` on the samples ``idx``, its budget and FP32's own metrics."""
        from pipeline.core.accuracy import task_metrics
        from pipeline.sensitivity.search import budget_for
        from pipeline.quantize.api import max_pool_pairs
        from pipeline.sensitivity.sweep import Calibration, Sweep, candidate_thresholds

        feeds = {k: v[idx] for k, v in self.evals.inputs.items()}
        labels = None if self.evals.labels is None else self.evals.labels[idx]
        if not hasattr(self, "calibration"):
            methods = list(dict.fromkeys(as_list(self.cfg.methods) + [self.qcfg.calib]))
            cands = candidate_thresholds(self.stats, self.plan.activations, methods, self.qcfg.percentile)
            self.calibration = Calibration(cands, {t: self.qcfg.calib for t in cands},
                                           # a max pool's output takes its input's threshold, as in quantize
                                           follows=max_pool_pairs(self.model, cands) if self.qcfg.symmetric else {})
        sweep = Sweep(self.index, self.layers, self.stats, self.calibration, feeds, None, self.qcfg.symmetric,
                      self.cfg.batch_size, self.cfg.threads, fixed=self.fixed)
        ref = sweep.reference()
        sweep.ref = ref
        sweep.metric = lambda y: task_metrics(ref, y, labels, self.task)
        ref_metrics = task_metrics(ref, ref, labels, self.task)
        budget = budget_for(self.task, ref_metrics, labels is not None, self.cfg.max_drop,
                            self.cfg.min_nn_agreement, self.cfg.metric)
        return sweep, budget, ref_metrics

    def _pick_calibration(self, sweep) -> Dict[str, Any]:
        """All-INT8 metrics with the per-tensor choice and with each method everywhere; keep the best base.

        The per-tensor choice minimises each layer's own output error, which is not always what the task metric
        needs (a transformer's outlier channels matter downstream more than their share of squared error), so
        the uniform methods are measured too and the plan starts from whichever keeps the metric best.
        """
        cal = self.calibration
        chosen = dict(cal.chosen)
        options = {"per_tensor": _short(sweep.evaluate())}
        for m in dict.fromkeys(as_list(self.cfg.methods) + [self.qcfg.calib]):
            cal.chosen = {t: m for t in chosen}
            options[m] = _short(sweep.evaluate())
        best = min(options, key=lambda k: (self.budget.harm(options[k]), k != "per_tensor"))
        cal.chosen = chosen if best == "per_tensor" else {t: best for t in chosen}
        return {"kept": best, "options": options, "per_tensor": options["per_tensor"],
                "uniform": options[self.qcfg.calib], "uniform_method": self.qcfg.calib}

    def _roofline(self) -> Tuple[Dict[str, float], Dict[str, float], Optional[float], str]:
        from pipeline.sensitivity.predict import layer_times

        return layer_times(self.inputs.onnx, self.settings, self.layers)

    def _units(self, one: List[Dict[str, Any]], groups, int8_s, float_s):
        from pipeline.sensitivity.search import Unit

        harm = {ly.label: self.budget.harm(r["metrics"]) for ly, r in zip(self.layers, one)}
        saving = {ly.label: float_s.get(ly.label, 0.0) - int8_s.get(ly.label, 0.0) for ly in self.layers}
        if not groups:
            return [Unit(ly.label, "layer", [ly.label], harm[ly.label], saving[ly.label]) for ly in self.layers]
        return [Unit(g.name, g.kind, list(g.layers), sum(harm[x] for x in g.layers),
                     sum(saving[x] for x in g.layers)) for g in groups]

    def _holdout(self, float_layers: List[str]) -> Optional[Dict[str, Any]]:
        """The plan and all-INT8 on the held-out samples (None without any)."""
        if len(self.held_idx) == 0:
            return None
        held, budget = self._held_sweep()
        plan_m, full_m = (self._pair_metrics(self.sweep, held, ly)[1] for ly in (float_layers, ()))
        out = {"samples": int(len(self.held_idx)), "plan": _short(plan_m), "plan_meets": budget.meets(plan_m),
               "all_int8": _short(full_m), "all_int8_meets": budget.meets(full_m), "budget": budget.to_dict(),
               "in_search": bool(self.cfg.validate)}
        if "nn_pool" in plan_m:
            out["nn_pool"] = plan_m["nn_pool"]
        return out

    # ------------------------------------------------------------------------------------------ results
    def _assemble(self, one, abo, errors, groups, units, base, ref_metrics, held, roof) -> Dict[str, Any]:
        int8_s, float_s, total, pred_note = roof
        res = self.result
        plan_set = set(res.plan.float_layers)
        harm = {u.name: u.harm for u in units}
        group_of = {ly: g.name for g in groups for ly in g.layers}
        layers = []
        for k, ly in enumerate(self.layers):
            layers.append({
                "label": ly.label, "op_type": ly.op_type, "index": ly.index, "group": group_of.get(ly.label),
                "activations": [t for _, t in ly.activations], "weights": [w for _, w, _ in ly.weights],
                "one_at_a_time": _short(one[k]["metrics"]), "harm": self.budget.harm(one[k]["metrics"]),
                "all_but_one": _short(abo[k]["metrics"]) if abo else None, "error_all_int8": errors[ly.label],
                "predicted_int8_s": int8_s.get(ly.label), "predicted_float_s": float_s.get(ly.label),
                "seconds": one[k]["seconds"], "in_plan_float": ly.label in plan_set})
        metric = self.budget.metric
        return {
            "schema_version": 1, "task": self.task, "budget": self.budget.to_dict(),
            "search_budget": self.search_budget.to_dict(), "margin": self.cfg.margin,
            "samples": {"search": int(len(self.search_idx)), "holdout": int(len(self.held_idx))},
            "reference": _short(ref_metrics) | {k: ref_metrics[k] for k in ("reference_accuracy",) if k in ref_metrics},
            "calibration": self._calibration_dict(base), "layers": layers,
            "groups": [{"name": g.name, "kind": g.kind, "layers": g.layers, "harm": harm.get(g.name)} for g in groups],
            "search": {"met": res.met, "plan": res.plan.to_dict(), "points": [p.to_dict() for p in res.points],
                       "pareto": [p.to_dict() for p in res.pareto(metric)], "holdout": held,
                       "predicted_all_int8_s": total, "predicted_note": pred_note,
                       "plan_meets_budget": self.budget.meets(res.plan.metrics),
                       "message": _message(res, self.search_budget, held)},
            "fixed_sites": [{"label": ly.label, "op_type": ly.op_type} for ly in self.fixed],
            "settings": {"sensitivity": _plain(self.cfg), "quant_calib": self.qcfg.calib,
                         "per_channel": self.qcfg.per_channel, "symmetric": self.qcfg.symmetric,
                         "keep_float": as_list(self.qcfg.keep_float)},
            "seconds": dict(self.seconds), "num_layers": len(self.layers)}

    def _calibration_dict(self, base: Dict[str, Any]) -> Dict[str, Any]:
        cal = self.calibration
        per = {t: {"method": cal.method(t), "amax": cal.amax(t), "candidates": cal.candidates[t],
                   "local_error": cal.local_error.get(t)} for t in cal.chosen}
        counts: Dict[str, int] = {}
        for t in cal.chosen:
            counts[cal.method(t)] = counts.get(cal.method(t), 0) + 1
        return {**base, "methods_used": counts, "tensors": per}

    def plan_file(self, stem: str) -> Dict[str, Any]:
        """The plan the quantize stage takes: float layers, per-tensor methods and thresholds, precisions."""
        from pipeline.core.store import content_hash
        from pipeline.quantize.api import split_rule
        from pipeline.quantize.mixed import PLAN_KIND

        res, cal = self.result, self.calibration
        rule = split_rule(self.qcfg) if self.splits else None
        floats = list(res.plan.float_layers)
        return {"kind": PLAN_KIND, "schema_version": 1, "model": stem, "onnx_sha256": content_hash(self.inputs.onnx),
                "float_layers": floats,
                "layer_precisions": {ly.label: "float" if ly.label in floats else "int8" for ly in self.layers + self.fixed},
                "calibration": {t: cal.method(t) for t in cal.chosen},
                "amax": {t: cal.amax(t) for t in cal.chosen},
                "budget": self.budget.to_dict(), "met": res.met, "metrics": res.plan.to_dict()["metrics"],
                "predicted_s": res.plan.predicted_s, "split_outliers": rule.quantile if rule else None,
                "split_min_gain": rule.min_gain if rule else None,
                "splits": [r.to_dict() for r in self.splits], "quant_settings": {
                    "per_channel": self.qcfg.per_channel, "symmetric": self.qcfg.symmetric,
                    "op_types": as_list(self.qcfg.op_types), "keep_float": as_list(self.qcfg.keep_float)}}


def _message(res, budget: "Budget", held: Optional[Dict[str, Any]]) -> str:
    n = len(res.plan.float_layers)
    if not res.met:
        return (f"no plan met the budget ({budget.metric} >= {budget.minimum:.4f}"
                + "".join(f", {k} >= {v}" for k, v in budget.extra) + "): the best plan found is reported; raise "
                "sensitivity.max_drop or sensitivity.max_float")
    text = "all layers stay INT8" if n == 0 else f"{n} layer{'s' if n != 1 else ''} in float"
    if held is not None and not held["plan_meets"]:
        text += f"; on the {held['samples']} held-out samples the plan misses the budget (see holdout)"
    return text


def _plain(cfg: Any) -> Dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    d = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()}


def _calib_batches(inputs: "SensitivityInputs", batch_size: int) -> List[Dict[str, np.ndarray]]:
    from pipeline.core.datasets import load_dataset_file

    if inputs.calib_data is None:
        raise PipelineError("sensitivity needs the calibration statistics of the quantize stage",
                            "add quantize before sensitivity in stages, or name inputs.stats=<model>.calib_stats.npz")
    calib = load_dataset_file(inputs.calib_data)
    if len(calib) == 0:
        raise PipelineError("The calibration set is empty.", "Raise data.calib_samples or point data at real samples.")
    return list(calib.batches(max(1, batch_size)))


def _split_model(inputs: "SensitivityInputs", qcfg, model, batch_size: int):
    """The model the quantize stage calibrated: with the same outlier channels split (from the per-channel
    maxima its statistics file carries, or measured here on the calibration samples), and what was split."""
    from pipeline.quantize.api import _float_tensor_set, plan_for_config, split_rule
    from pipeline.quantize.split import split_for_placement, split_outlier_channels

    q = split_rule(qcfg)
    if not q:
        return model, []
    if inputs.stats is not None:
        from pipeline.quantize.stats import load_channel_maxima

        maxima = load_channel_maxima(inputs.stats)
        if not maxima:  # nothing was splittable where quantize looked; the tensor check below says if it differs
            return model, []
        model, records = split_outlier_channels(model, maxima, q)
        return model, records
    placement = plan_for_config(model, qcfg, float_tensors=_float_tensor_set(model))
    model, records, _ = split_for_placement(model, placement.activations, _calib_batches(inputs, batch_size), q)
    return model, records


def _statistics(inputs: "SensitivityInputs", model, plan, qcfg, progress: bool, batch_size: int = 1):
    """The quantize stage's statistics file, or a fresh pass over the calibration samples (in the pipeline's
    batches, as the quantize stage makes them)."""
    from pipeline.quantize.stats import collect_stats

    if inputs.stats is not None:
        from pipeline.quantize.stats import load_stats

        stats = load_stats(inputs.stats)
        missing = [t for t in plan.activations if t not in stats]
        if missing:
            raise PipelineError(f"the statistics file {inputs.stats} lacks {len(missing)} tensors this placement "
                                f"quantizes (e.g. {missing[0]!r})",
                                "re-run quantize with the same quant.* settings as sensitivity")
        return stats
    return collect_stats(model, _calib_batches(inputs, batch_size), list(plan.activations), num_bins=qcfg.num_bins,
                         progress=progress)
