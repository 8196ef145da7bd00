"""Which stages run, in what order, from which files; skip/fail bookkeeping. Nothing else.

Stages pass files, never objects: each stage is ``pipeline/<stage>/stage.py: run(inputs, settings, out)``
with frozen dataclasses of paths in and out. This module resolves every input path (from this run, from
a path the user names under ``inputs.*``, or from another run folder given as ``inputs.run``), calls the
stage, records ``ran`` / ``reused`` / ``skipped`` / ``failed`` with the reason in ``run.json``, and ends
with the report stage, which renders from the run folder's files alone.

Failure handling: any exception in a stage (Ctrl-C included) marks that stage failed with its message;
stages that need its outputs are skipped with the reason; the report is still written; the traceback
goes to ``run.log``, not the console. Expensive artifacts (ONNX, Q/DQ ONNX, calibration cache) come
from a content-addressed store (:mod:`pipeline.core.store`), so running the same command again after a
failure or a Ctrl-C reuses what finished (and says so).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from pipeline.core.artifacts import write_json
from pipeline.core.config import KNOWN_STAGES, PipelineConfig
from pipeline.core.errors import PipelineError, RunInterrupted, StageSkipped

LOG = logging.getLogger("pipeline")

#: The run folder's manifest: stage records, artifacts by kind, how the run was made.
RUN_MANIFEST = "run.json"
RUN_LOG = "run.log"

#: Artifact kinds a user can name under ``inputs.*`` (or that ``inputs.run`` provides), and their producers.
PRODUCERS = {
    "onnx": "export", "summary": "export", "calib_data": "data", "eval_data": "data", "analysis": "analyze",
    "qdq_onnx": "quantize", "calib_cache": "quantize", "quantization": "quantize", "engine": "build",
    "engine_results": "build", "measurement": "profile", "calib_stats": "quantize", "sensitivity": "sensitivity",
    "precision_plan": "sensitivity", "explain": "profile", "pruned_module": "prune", "prune_results": "prune",
    "qat_results": "qat",
}


@dataclass
class StageRecord:
    """Outcome of one stage, as ``run.json`` and the report show it.

    ``status``: ran | reused | skipped | failed | not requested. ``reused`` means its outputs came from the
    store (or the engine cache) and nothing was recomputed.
    """

    status: str = "pending"
    reason: str = ""
    seconds: float = 0.0
    outputs: Dict[str, Any] = field(default_factory=dict)


class MissingInput(Exception):
    """A stage's required input has no file: the stage is skipped with ``reason``."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


# ------------------------------------------------------------------------------------------ validation
def validate(cfg: PipelineConfig) -> None:
    """Edge checks before any work: what would fail later fails now, with what to do instead."""
    unknown = [s for s in cfg.stages if s not in KNOWN_STAGES]
    if unknown:
        raise PipelineError(f"Unknown stage(s) {unknown}.", f"Choose from {list(KNOWN_STAGES)}, e.g. stages=[export,analyze].")
    if not cfg.stages:
        raise PipelineError("No stage requested (stages=[]): nothing would run.",
                            f"Name at least one of {list(KNOWN_STAGES)}, e.g. stages=[export,analyze,report].")
    if list(cfg.stages) == ["report"]:
        raise PipelineError("stages=[report] alone has nothing to report: a report renders a run folder's results.",
                            "Re-render an earlier run with: python -m pipeline.report <run folder> "
                            "(or add the stages to run, e.g. stages=[export,analyze,report]).")
    if cfg.batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1, got {cfg.batch_size}.", "Pass e.g. batch_size=8.")
    if cfg.backend.name not in ("auto", "tensorrt", "onnxruntime"):
        raise PipelineError(f"Unknown backend {cfg.backend.name!r}.", "Use backend=auto, tensorrt or onnxruntime.")
    _validate_inputs(cfg)
    if set(cfg.stages) & {"quantize", "build", "profile"}:
        _validate_data(cfg)
    if cfg.precision.name in ("int8", "best") and "quantize" in cfg.stages:
        from pipeline.quantize.qdq import COMPUTE_OPS

        bad = [op for op in cfg.quant.op_types if op not in COMPUTE_OPS]
        if bad or not cfg.quant.op_types:
            raise PipelineError(f"quant.op_types={list(cfg.quant.op_types)}: the quantize stage places Q/DQ on "
                                f"{', '.join(COMPUTE_OPS)} only" + (f", not {bad}." if bad else " (the list is empty)."),
                                f"Use a non-empty subset, e.g. quant.op_types=[{','.join(COMPUTE_OPS)}].")


def _validate_data(cfg: PipelineConfig) -> None:
    from pipeline.data import data_names

    if cfg.data.name not in data_names():
        raise PipelineError(f"Unknown data source {cfg.data.name!r}.", f"Use one of {data_names()} (data=<name>).")
    if cfg.data.name in ("folder", "npz") and not (cfg.inputs.calib_data and cfg.inputs.eval_data):
        if not cfg.data.path:
            raise PipelineError(f"data={cfg.data.name} needs data.path.",
                                f"Pass data.path=/path/to/{'images/' if cfg.data.name == 'folder' else 'samples.npz'}.")
        if not Path(cfg.data.path).exists():
            raise PipelineError(f"data.path {cfg.data.path} does not exist.",
                                "Fix data.path (absolute, or relative to where you start the pipeline).")


def _validate_inputs(cfg: PipelineConfig) -> None:
    given = {k: v for k, v in asdict(cfg.inputs).items() if v}
    if cfg.inputs.onnx and "export" in cfg.stages:
        raise PipelineError("inputs.onnx and the export stage both give the ONNX model.",
                            "Drop export from stages to start from inputs.onnx, or drop inputs.onnx to export "
                            "the model (model=onnx model.onnx_path=... imports a file through the export stage).")
    for kind, value in given.items():
        if not Path(value).exists():
            raise PipelineError(f"inputs.{kind}={value} does not exist.",
                                "Give an existing file (inputs.run=<run folder> takes every artifact of an earlier run).")
    if cfg.inputs.run and not (Path(cfg.inputs.run) / RUN_MANIFEST).is_file():
        raise PipelineError(f"inputs.run={cfg.inputs.run} is not a run folder (no {RUN_MANIFEST} in it).",
                            "Point it at the output folder of an earlier run (the one with report.json).")
    _validate_model_of_inputs(cfg)


def _validate_model_of_inputs(cfg: PipelineConfig) -> None:
    """Files of another model than ``model=`` would be measured and reported under the wrong name."""
    from pipeline.export.stage import model_name

    if cfg.model.name == "onnx" and not cfg.model.onnx_path:
        return
    expected = model_name(cfg.model)
    found: Dict[str, str] = {}
    if cfg.inputs.run:
        made = json.loads((Path(cfg.inputs.run) / RUN_MANIFEST).read_text()).get("model_name")
        if made:
            found["inputs.run"] = made
    if cfg.inputs.onnx:
        from pipeline.core.store import read_sidecar

        made = ((read_sidecar(cfg.inputs.onnx) or {}).get("model") or {}).get("name")
        if made:
            found["inputs.onnx"] = made
    for where, made in found.items():
        if made != expected:
            raise PipelineError(f"{where} holds files of model {made!r}, but this run is model={expected!r}.",
                                f"Pass model={made} (the folder and report are named after it), or files of {expected}.")


def select_backend(cfg: PipelineConfig) -> tuple[str, str]:
    """Pick the runtime; ``backend=tensorrt`` without TensorRT or a GPU is an error before any work is done."""
    if cfg.backend.name == "onnxruntime":
        return "onnxruntime", "backend=onnxruntime was requested"
    from pipeline.trt import tensorrt_status

    ok, why = tensorrt_status()
    if ok:
        return "tensorrt", why
    if cfg.backend.name == "tensorrt":
        raise PipelineError(
            f"backend=tensorrt, but TensorRT cannot run here: {why}",
            "Run on a machine with an NVIDIA GPU and TensorRT (e.g. the NGC container in docker/), "
            "or use backend=onnxruntime (or backend=auto) to run on the CPU.",
        )
    return "onnxruntime", f"TensorRT not usable here ({why}); ONNX Runtime on the CPU runs the model"


def upstream_mismatch(kind: str, path: Path, cfg: PipelineConfig) -> str:
    """Why an artifact of an earlier run (its sidecar's config) does not fit this run's config; "" if it fits."""
    from pipeline.core.store import read_sidecar

    side = read_sidecar(path) or {}
    made = side.get("config") or {}
    if kind == "analysis":
        prec, batch = (made.get("precision") or {}).get("name"), made.get("batch_size")
        if (prec, batch) != (cfg.precision.name, cfg.batch_size):
            return (f"it analyses precision={prec} batch_size={batch}, this run is precision={cfg.precision.name} "
                    f"batch_size={cfg.batch_size} (add analyze to stages)")
    elif kind in ("calib_data", "eval_data"):
        if made.get("data") not in (None, asdict(cfg.data)):
            return "it was drawn with other data.* settings: this run draws its own samples"
    elif kind in ("qdq_onnx", "calib_cache", "quantization"):
        if made.get("quant") not in (None, asdict(cfg.quant)):
            return "it was quantized with other quant.* settings (add quantize to stages)"
    return ""


# --------------------------------------------------------------------------------------------- the run
class Run:
    """One run folder: where artifacts are found, and what each stage did.

    Holds paths and stage records only; results live in the files.
    """

    def __init__(self, cfg: PipelineConfig, out_dir: Path, backend: tuple[str, str]):
        from pipeline.core.store import Store
        from pipeline.export.stage import model_name

        self.cfg = cfg
        self.out = out_dir
        self.backend, self.backend_reason = backend
        self.model_name = model_name(cfg.model)
        self.store = Store(Path(cfg.engines_dir) / "artifacts")
        self.artifacts: Dict[str, str] = {}
        self.stages: Dict[str, StageRecord] = {}
        self.reused_from: Dict[str, str] = {}
        self.notes: List[str] = []  # what the user should know about how inputs were resolved
        self.looked_up: set = set()  # artifact kinds some stage asked for
        self.data_notes: List[str] = []  # how the samples were adapted to the model (data.resize=true...)
        self.memo: Dict[str, Any] = {}  # helpers worth building once per run (a model's tokenizer), never results
        self.upstream = self._upstream_artifacts()
        from pipeline.core.environment import gpu_names, package_versions

        keep = ("trt-pipeline", "numpy", "onnx", "onnxruntime", "torch", "polygraphy", "tensorrt")
        self.versions = {k: v for k, v in package_versions().items() if k in keep}
        gpus = gpu_names()
        self.gpu = gpus[0] if gpus else None

    def _upstream_artifacts(self) -> Dict[str, Path]:
        """Artifacts of ``inputs.run`` (an earlier run folder), by kind."""
        if not self.cfg.inputs.run:
            return {}
        folder = Path(self.cfg.inputs.run)
        manifest = json.loads((folder / RUN_MANIFEST).read_text())
        found = {}
        for kind, rel in (manifest.get("artifacts") or {}).items():
            path = folder / rel
            if path.exists():
                found[kind] = path
        return found

    # --------------------------------------------------------------------------------- artifact lookup
    def find(self, kind: str) -> Optional[Path]:
        """The file of ``kind``: named by the user, made in this run, or from ``inputs.run``; else None.

        An artifact of ``inputs.run`` made under another config than this run's (another precision, batch,
        data or quantization setting) is not used: the console says so, and the stage makes its own.
        """
        self.looked_up.add(kind)
        user = getattr(self.cfg.inputs, kind, None)
        if kind == "qdq_onnx" and not user and self.cfg.build.qdq_onnx:
            user = self.cfg.build.qdq_onnx  # the older name of inputs.qdq_onnx
        if kind in self.artifacts:
            return self.out / self.artifacts[kind]
        found = Path(user) if user else self.upstream.get(kind)
        if found is not None and not user:
            why = upstream_mismatch(kind, found, self.cfg)
            if why:
                self.note(f"inputs.run's {found.name} is not used: {why}")
                self.upstream.pop(kind, None)
                return None
        if found is not None:
            # Recorded (absolute) so the report of this run shows what it was made from.
            self.artifacts[kind] = str(found.resolve())
        return found

    def out_artifact(self, kind: str) -> Optional[Path]:
        """A file of ``kind`` this run already made (None if none): for inputs no user option names."""
        return self.out / self.artifacts[kind] if kind in self.artifacts else None

    def note(self, text: str) -> None:
        """A line for the console, run.log and run.json's ``notes`` (said once)."""
        if text not in self.notes:
            self.notes.append(text)
            print(f"  note: {text}")
            LOG.warning(text)

    def need(self, kind: str, stage: str) -> Path:
        """Like :meth:`find`, but a missing file is a :class:`MissingInput` naming why it is missing."""
        path = self.find(kind)
        if path is not None:
            return path
        producer = PRODUCERS.get(kind, "?")
        rec = self.stages.get(producer)
        if rec is not None and rec.status in ("failed", "skipped"):
            raise MissingInput(f"needs the {kind} from the {producer} stage, which {rec.status}: {rec.reason}")
        raise MissingInput(f"needs the {kind} (made by the {producer} stage, not in stages): add {producer} to "
                           f"stages, or name the file with inputs.{kind}=... (or inputs.run=<earlier run folder>)")

    def add(self, kind: str, path: Optional[Path]) -> None:
        """Record an artifact of this run (``path`` inside the run folder)."""
        if path is not None:
            self.artifacts[kind] = str(Path(path).relative_to(self.out))

    def write_manifest(self, extra: Dict[str, Any]) -> None:
        """``run.json``: stage records, artifacts by kind, and how the run was made (atomically, after every stage)."""
        write_json(self.out / RUN_MANIFEST, {
            "schema_version": 1, "model_name": self.model_name,
            "backend": {"requested": self.cfg.backend.name, "selected": self.backend, "reason": self.backend_reason},
            "stages": {name: asdict(rec) for name, rec in self.stages.items()},
            "artifacts": dict(self.artifacts), "notes": list(self.notes), **extra})


# ------------------------------------------------------------------------------------------ the stages
def _summary(run: Run) -> Path:
    """``export.json``: from this run / inputs, else described from the ONNX (written into the run folder)."""
    found = run.find("summary")
    if found is not None:
        return found
    onnx = run.need("onnx", "summary")
    from pipeline.export.stage import SUMMARY_NAME, summary_from_onnx

    path = write_json(run.out / SUMMARY_NAME, summary_from_onnx(onnx, run.cfg.model))
    run.add("summary", path)
    return path


def _dataset(run: Run, split: str, specs: Optional[list] = None, n: Optional[int] = None,
             name: Optional[str] = None) -> Path:
    """``data/<name or split>.npz``: named by the user / earlier run, else drawn from ``cfg.data`` for this model.

    ``specs`` (the model's inputs) when no export summary exists yet (the prune stage runs on the torch model),
    ``n`` samples instead of the data config's count, ``name`` for a dataset of its own (``train``: fine-tuning
    samples, drawn from the calibration pool, never from the eval split).
    """
    kind = f"{name or split}_data"
    found = run.find(kind) if name is None else run.out_artifact(kind)
    if found is not None:
        return found
    from pipeline.core.datasets import save_dataset
    from pipeline.core.store import input_record, write_sidecar
    from pipeline.data import load_dataset
    from pipeline.export.stage import input_specs, read_summary

    cfg = run.cfg
    summary_path = _summary(run) if specs is None else None
    if specs is None:
        specs = input_specs(read_summary(summary_path))
    if n is None:
        n = cfg.data.calib_samples if split == "calib" else cfg.data.num_samples
    if "tokenizer" not in run.memo:
        run.memo["tokenizer"] = _tokenizer(cfg, specs, read_summary(summary_path)) if summary_path else None
    ds = load_dataset(cfg.data, specs, split=split, num_samples=n, tokenizer=run.memo["tokenizer"])
    path = save_dataset(ds, run.out / "data" / f"{name or split}.npz")
    write_sidecar(path, kind="dataset", producer="data",
                  inputs={"summary": input_record(summary_path)} if summary_path else {},
                  config={"data": asdict(cfg.data), "split": split, "samples": n}, extra={"summary": ds.summary()})
    for note in ds.notes:
        print(f"  data ({name or split}): {note}")
        LOG.info("data %s: %s", name or split, note)
        run.data_notes.append(f"{name or split}: {note}")
    run.add(kind, path)
    return path


def _tokenizer(cfg: PipelineConfig, specs, summary: Dict[str, Any]) -> Optional[Callable]:
    """The model's own tokenizer for ``data=text`` when it has one (its export summary says), else None.

    A summary that does not say (an ONNX made elsewhere) asks the model itself, for token models only.
    """
    if cfg.data.name != "text" or not any(s.dtype.startswith("int") for s in specs):
        return None
    if summary.get("has_tokenizer") is False or cfg.model.name == "onnx":
        return None
    from pipeline.models import build_model

    return build_model(cfg.model).tokenizer


def _in_store(run: Run, stage: str, used: Dict[str, Path], config: Dict[str, Any], packages: tuple,
              produce: Callable[[Path], Any]) -> tuple[Any, bool]:
    """Run ``produce(out_dir)`` into the store (or reuse its entry), then link the files into the run folder.

    Returns ``(outputs remapped into the run folder, reused)``.
    """
    from pipeline.core.store import (ENTRY_MANIFEST, complete_sidecar, input_record, is_sidecar, link_or_copy,
                                     source_hash, store_key)

    inputs = {k: input_record(p) for k, p in used.items()}
    versions = {**run.versions, "code": source_hash(*packages)}
    key = store_key(stage, inputs, config, versions)
    entry = run.store.lookup(stage, run.model_name, key)
    reused = entry is not None
    outputs = None
    if entry is None:
        with run.store.filling(stage, run.model_name, key) as tmp:
            outputs = produce(tmp)
            for f in sorted(tmp.iterdir()):
                if f.is_file() and not is_sidecar(f):
                    complete_sidecar(f, kind=_kind_of(f), producer=stage, inputs=inputs, config=config,
                                     versions=versions, key=key)
        entry = run.store.lookup(stage, run.model_name, key)
    run.reused_from[stage] = str(entry) if reused else ""
    for f in sorted(entry.iterdir()):
        if f.name != ENTRY_MANIFEST and not f.name.startswith("."):
            link_or_copy(f, run.out / f.name)
    LOG.info("%s: %s store entry %s", stage, "reused" if reused else "filled", entry)
    return outputs, reused


def _kind_of(path: Path) -> str:
    name = path.name
    for suffix, kind in ((".int8.qdq.onnx", "qdq_onnx"), (".onnx", "onnx"), (".calib.cache", "calib_cache"),
                         (".calib_stats.npz", "calib_stats"), (".npz", "dataset"),
                         (".precision_plan.json", "precision_plan"), (".png", "figure"), (".json", "results")):
        if name.endswith(suffix):
            return kind
    return "file"


def _sidecars_in_run(run: Run, stage: str, used: Dict[str, Optional[Path]], config: Dict[str, Any],
                     files: List[Path]) -> None:
    """Sidecars for the files a stage wrote straight into the run folder (stages without a store entry)."""
    from pipeline.core.store import complete_sidecar, input_record

    inputs = {k: input_record(p) for k, p in used.items() if p is not None and Path(p).is_file()}
    for f in files:
        complete_sidecar(f, kind=_kind_of(f), producer=stage, inputs=inputs, config=config,
                         versions=run.versions, gpu=run.gpu if stage in ("build", "profile") else None)


def stage_export(run: Run) -> StageRecord:
    from pipeline.export.stage import ExportInputs, ExportSettings, SUMMARY_NAME
    from pipeline.export.stage import run as export

    cfg = run.cfg
    files = {f"source{i}": p for i, p in enumerate(_model_sources(cfg))}
    settings = ExportSettings(opset=cfg.opset, batch_size=cfg.batch_size)
    config = {"model": asdict(cfg.model), "export": asdict(settings)}
    _, reused = _in_store(run, "export", files, config, ("export", "models", "graph", "core"),
                          lambda out: export(ExportInputs(cfg.model), settings, out))
    onnx = run.out / f"{run.model_name}.onnx"
    run.add("onnx", onnx)
    run.add("summary", run.out / SUMMARY_NAME)
    summary = json.loads((run.out / SUMMARY_NAME).read_text())
    return _record(reused, {"onnx": str(onnx), "opset": summary.get("opset"), "check": summary.get("check"),
                            "warnings": summary.get("warnings", [])}, run.reused_from.get("export", ""))


def _train_samples(cfg: PipelineConfig, asked: Optional[int]) -> int:
    """Fine-tuning samples: as asked, else the whole digits train split, else ``data.calib_samples``."""
    if asked is not None:
        return int(asked)
    if cfg.data.name == "digits":
        from pipeline.data.digits import DIGITS_TRAIN

        return DIGITS_TRAIN
    return cfg.data.calib_samples


def _model_specs(run: Run) -> list:
    """The model's input specs from the zoo/custom builder (before any export exists)."""
    if "specs" not in run.memo:
        from pipeline.models import build_model

        run.memo["specs"] = list(build_model(run.cfg.model).inputs)
    return run.memo["specs"]


def stage_prune(run: Run) -> StageRecord:
    from pipeline.prune.stage import RESULTS_NAME, SUMMARY_NAME, PruneInputs, PruneSettings
    from pipeline.prune.stage import run as prune

    cfg = run.cfg
    specs = _model_specs(run)
    train = _dataset(run, "calib", specs, _train_samples(cfg, cfg.prune.train_samples), name="train") \
        if cfg.prune.finetune_epochs > 0 else None
    evals = _dataset(run, "eval", specs)
    times = Path(cfg.prune.layer_times) if cfg.prune.layer_times else None
    inputs = PruneInputs(cfg.model, train, evals, times)
    settings = PruneSettings(cfg.prune, cfg.precision, cfg.hardware, cfg.batch_size, cfg.opset)
    files = {f"source{i}": p for i, p in enumerate(_model_sources(cfg))}
    used = {**files, "eval_data": evals, **({"train_data": train} if train else {}), **({"layer_times": times} if times else {})}
    config = {"model": asdict(cfg.model), "prune": asdict(cfg.prune), "precision": cfg.precision.name,
              "hardware": asdict(cfg.hardware), "batch_size": cfg.batch_size, "opset": cfg.opset}
    _, reused = _in_store(run, "prune", used, config, ("prune", "export", "models", "analyze", "core"),
                          lambda out: prune(inputs, settings, out))
    res = json.loads((run.out / RESULTS_NAME).read_text())
    run.add("onnx", run.out / res["pruned"]["onnx"])
    run.add("summary", run.out / SUMMARY_NAME)
    run.add("pruned_module", run.out / res["module"])
    run.add("prune_results", run.out / RESULTS_NAME)
    d, p = res["dense"], res["pruned"]
    acc = {k: (v.get("accuracy") or {}).get("value") for k, v in (("dense", d), ("pruned", p))}
    lat = {k: (v.get("roofline") or {}).get("predicted_latency_s") for k, v in (("dense", d), ("pruned", p))}
    return _record(reused, {"onnx": str(run.out / p["onnx"]), "parameters": [d["parameters"], p["parameters"]],
                            "accuracy": [acc["dense"], acc["pruned"]], "predicted_latency_s": [lat["dense"], lat["pruned"]],
                            "finetuned": (res.get("finetune") or {}).get("ran", False)},
                   run.reused_from.get("prune", ""))


def _model_sources(cfg: PipelineConfig) -> List[Path]:
    from pipeline.models import model_source_files

    return [Path(p) for p in model_source_files(cfg.model)]


def stage_analyze(run: Run) -> StageRecord:
    from pipeline.analyze.stage import AnalyzeInputs, AnalyzeSettings
    from pipeline.analyze.stage import run as analyze

    cfg = run.cfg
    inputs = AnalyzeInputs(onnx=run.need("onnx", "analyze"), summary=_summary(run))
    settings = AnalyzeSettings(cfg.hardware, cfg.precision, cfg.batch_size, cfg.build.sparse_weights)
    out = analyze(inputs, settings, run.out)
    _sidecars_in_run(run, "analyze", {"onnx": inputs.onnx, "summary": inputs.summary}, asdict(settings), [out.results])
    run.add("analysis", out.results)
    d = json.loads(out.results.read_text())["analysis"]
    return _record(False, {"predicted_latency_s": d.get("predicted_latency_s"),
                           "predicted_latency_unfused_s": d.get("predicted_latency_unfused_s"),
                           "layers": len(d.get("layers") or []), "fused_groups": len(d.get("groups") or [])})


def stage_quantize(run: Run) -> StageRecord:
    from pipeline.quantize.stage import RESULTS_NAME, QuantizeInputs, QuantizeSettings, check_precision
    from pipeline.quantize.stage import run as quantize

    cfg = run.cfg
    check_precision(cfg.precision.name)
    inputs = QuantizeInputs(onnx=run.need("onnx", "quantize"), calib_data=_dataset(run, "calib"),
                            eval_data=_dataset(run, "eval"), summary=_summary(run))
    settings = QuantizeSettings(cfg.quant, cfg.precision.name, cfg.batch_size)
    used = {"onnx": inputs.onnx, "calib_data": inputs.calib_data, "eval_data": inputs.eval_data,
            "summary": inputs.summary}
    config = {"quant": asdict(cfg.quant), "batch_size": cfg.batch_size, "precision": cfg.precision.name}
    _, reused = _in_store(run, "quantize", used, config, ("quantize", "graph", "core"),
                          lambda out: quantize(inputs, settings, out))
    results = json.loads((run.out / RESULTS_NAME).read_text())
    run.add("quantization", run.out / RESULTS_NAME)
    run.add("qdq_onnx", run.out / results["qdq_onnx_path"])
    if results.get("stats_path"):
        run.add("calib_stats", run.out / results["stats_path"])
    if results.get("calibration_cache_path"):
        run.add("calib_cache", run.out / results["calibration_cache_path"])
    return _record(reused, {"qdq_onnx": str(run.out / results["qdq_onnx_path"]),
                            "calib_cache": results.get("calibration_cache_path") or "", "algorithm": cfg.quant.calib},
                   run.reused_from.get("quantize", ""))


def stage_qat(run: Run) -> StageRecord:
    from pipeline.qat.stage import RESULTS_NAME, QatInputs, QatSettings
    from pipeline.qat.stage import run as qat
    from pipeline.quantize.stage import check_precision

    cfg = run.cfg
    check_precision(cfg.precision.name)
    onnx, summary, stats = run.need("onnx", "qat"), _summary(run), run.need("calib_stats", "qat")
    from pipeline.export.stage import input_specs, read_summary

    specs = input_specs(read_summary(summary))
    train = _dataset(run, "calib", specs, _train_samples(cfg, cfg.qat.train_samples), name="train")
    inputs = QatInputs(cfg.model, onnx, stats, train, _dataset(run, "eval"), run.find("qdq_onnx"),
                       run.find("pruned_module"), summary)
    settings = QatSettings(cfg.qat, cfg.quant)
    used = {k: v for k, v in (("onnx", onnx), ("calib_stats", stats), ("train_data", train), ("eval_data",
            inputs.eval_data), ("ptq_qdq", inputs.ptq_qdq), ("module", inputs.module)) if v is not None}
    config = {"qat": asdict(cfg.qat), "quant": asdict(cfg.quant), "model": asdict(cfg.model)}
    _, reused = _in_store(run, "qat", used, config, ("qat", "quantize", "prune", "export", "graph", "core"),
                          lambda out: qat(inputs, settings, out))
    res = json.loads((run.out / RESULTS_NAME).read_text())
    run.add("qdq_onnx", run.out / res["qdq_onnx"])  # the build stage builds the QAT engine
    run.add("qat_results", run.out / RESULTS_NAME)
    acc = {k: (res.get(k) or {}).get("value") for k in ("fp32", "ptq", "qat")}
    return _record(reused, {"qdq_onnx": str(run.out / res["qdq_onnx"]), "top1": acc,
                            "same_placement": res.get("same_placement")}, run.reused_from.get("qat", ""))


def stage_sensitivity(run: Run) -> StageRecord:
    from pipeline.analyze.stage import symbolic_dims
    from pipeline.export.stage import read_summary
    from pipeline.quantize.stage import check_precision
    from pipeline.sensitivity.stage import RESULTS_NAME, SensitivityInputs, SensitivitySettings
    from pipeline.sensitivity.stage import run as sensitivity

    cfg = run.cfg
    check_precision(cfg.precision.name)
    onnx, summary = run.need("onnx", "sensitivity"), _summary(run)
    stats = run.find("calib_stats")
    inputs = SensitivityInputs(onnx=onnx, stats=stats, eval_data=_dataset(run, "eval"),
                               calib_data=None if stats else _dataset(run, "calib"), summary=summary)
    settings = SensitivitySettings(cfg.sensitivity, cfg.quant, cfg.hardware, cfg.batch_size,
                                   symbolic_dims(onnx, read_summary(summary)))
    used = {k: v for k, v in asdict(inputs).items() if v is not None}
    config = {"sensitivity": asdict(cfg.sensitivity), "quant": asdict(cfg.quant), "hardware": asdict(cfg.hardware),
              "batch_size": cfg.batch_size}
    _, reused = _in_store(run, "sensitivity", used, config, ("sensitivity", "quantize", "analyze", "graph", "core"),
                          lambda out: sensitivity(inputs, settings, out))
    results = json.loads((run.out / RESULTS_NAME).read_text())
    run.add("sensitivity", run.out / RESULTS_NAME)
    run.add("precision_plan", run.out / results["plan_file"])
    plan = results["search"]["plan"]
    return _record(reused, {"plan": str(run.out / results["plan_file"]), "float_layers": plan["num_float"],
                            "layers": results["num_layers"], "met": results["search"]["met"],
                            "message": results["search"]["message"]}, run.reused_from.get("sensitivity", ""))


def stage_build(run: Run) -> StageRecord:
    if run.backend != "tensorrt":
        raise StageSkipped(f"no TensorRT engine is built: {run.backend_reason}")
    from pipeline.engine.stage import EngineInputs, EngineSettings
    from pipeline.engine.stage import run as build

    cfg = run.cfg
    int8 = cfg.precision.name in ("int8", "best")
    if int8:
        _require_requested(run, "quantize", "the Q/DQ model")
    qdq = run.find("qdq_onnx") if int8 else None
    inputs = EngineInputs(onnx=run.need("onnx", "build"), qdq_onnx=qdq,
                          calib_data=_dataset(run, "calib") if int8 and qdq is None else None,
                          calib_cache=run.find("calib_cache") if int8 else None,
                          precision_plan=_precision_plan(run) if int8 else None)
    settings = EngineSettings(cfg.precision, cfg.build, cfg.batch_size, Path(cfg.engines_dir), run.model_name,
                              hardware_name=cfg.hardware.name)
    out = build(inputs, settings, run.out)
    _sidecars_in_run(run, "build", {k: v for k, v in vars(inputs).items()},
                     {"precision": cfg.precision.name, "build": asdict(cfg.build), "batch_size": cfg.batch_size},
                     [out.results])
    run.add("engine_results", out.results)
    run.artifacts["engine"] = str(out.engine)  # lives in engines_dir (the engine cache), not the run folder
    res = json.loads(out.results.read_text())
    return _record(bool(res["cache_hit"]), {"engine": str(out.engine), "cache_hit": res["cache_hit"],
                                            "build_seconds": res["build_seconds"], "built_from": res["built_from"],
                                            "layer_precisions": res["layer_precisions"]},
                   f"the cached engine {out.engine}")


def _precision_plan(run: Run) -> Optional[Path]:
    """The mixed-precision plan the build honours: ``quant.plan`` (what the Q/DQ ONNX was made from), else the
    one this run's sensitivity stage made; None when neither (a plan of an ``inputs.run`` is not applied)."""
    if run.cfg.quant.plan:
        return Path(run.cfg.quant.plan)
    return run.find("precision_plan") if "precision_plan" in run.artifacts else None


def stage_profile(run: Run) -> StageRecord:
    from pipeline.profile.stage import ProfileInputs, ProfileSettings
    from pipeline.profile.stage import run as profile

    cfg = run.cfg
    trt = run.backend == "tensorrt"
    int8 = cfg.precision.name in ("int8", "best")
    build = run.stages.get("build")
    if build is not None and build.status == "failed":
        # The user asked for an engine to be measured: measuring something else would answer another question.
        raise MissingInput(f"needs the engine from the build stage, which failed: {build.reason}")
    if int8:
        _require_requested(run, "quantize", "the Q/DQ model")
    inputs = ProfileInputs(onnx=run.need("onnx", "profile"), eval_data=_dataset(run, "eval"),
                           engine=run.need("engine", "profile") if trt else None,
                           qdq_onnx=run.find("qdq_onnx") if (int8 and not trt) else None,
                           analysis=run.find("analysis"), quantization=run.find("quantization") if int8 else None,
                           summary=_summary(run))
    settings = ProfileSettings(run.backend, cfg.profile, cfg.precision, cfg.hardware, cfg.batch_size)
    out = profile(inputs, settings, run.out)
    _sidecars_in_run(run, "profile", {k: v for k, v in vars(inputs).items()},
                     {"backend": run.backend, "profile": asdict(cfg.profile), "precision": cfg.precision.name,
                      "batch_size": cfg.batch_size}, [out.results])
    run.add("measurement", out.results)
    m = json.loads(out.results.read_text())["measured"]
    outputs = {"latency_ms_median": m["latency_ms"]["median"], "throughput_samples_s": m["throughput_samples_s"]}
    if not trt:
        outputs["measured_model"] = str(inputs.qdq_onnx or inputs.onnx)
    outputs["explain"] = _explain_engine(run, out.results, Path(inputs.engine) if trt else None,
                                         None if trt else Path(inputs.qdq_onnx or inputs.onnx))
    return _record(False, outputs)


def _explain_engine(run: Run, measurement: Path, engine: Optional[Path], measured_onnx: Optional[Path]) -> str:
    """The measured model's per-layer gap to the roofline (``explain.json`` / ``explain.md`` in the run folder):
    a TensorRT engine (its sidecar names the ONNX it was built from) or the model ONNX Runtime ran; with
    ``profile.compare_to``, against that run's engine (the engine diff). A note, never a failure, when the files do
    not allow it."""
    from pipeline.explain.stage import EngineRun, ExplainInputs, ExplainSettings
    from pipeline.explain.stage import run as explain

    try:
        sidecar, onnx = None, measured_onnx
        if engine is not None:
            sidecar = Path(str(engine) + ".json")
            built = json.loads(sidecar.read_text()).get("built_from") if sidecar.is_file() else None
            onnx = Path(built) if built and Path(built).is_file() else run.need("onnx", "profile")
        this = EngineRun(measurement, sidecar, onnx, run.cfg.precision.name)
        base, note = _baseline(run)
        if base is not None and base.label == this.label:
            base, this = replace(base, label=f"baseline {base.label}"), replace(this, label=f"this run {this.label}")
        res = explain(ExplainInputs(base, this) if base is not None else ExplainInputs(this),
                      ExplainSettings(hardware=None), run.out)
    except (PipelineError, OSError, ValueError, KeyError) as err:
        return f"not explained: {err}"
    run.add("explain", res.results)
    return str(res.markdown) + note


def _baseline(run: Run) -> Tuple[Optional[Any], str]:
    """``profile.compare_to``'s engine (labelled by its precision), or None and why it was left out."""
    from pipeline.explain.stage import engine_run

    folder = run.cfg.profile.compare_to
    if not folder:
        return None, ""
    try:
        base = engine_run(Path(folder))
        measured = json.loads(base.measurement.read_text()).get("measured") or {}
        return replace(base, label=str(measured.get("precision_executed") or "baseline")), ""
    except (PipelineError, OSError, ValueError) as err:
        msg = (f"profile.compare_to={folder} left out: {err} (point it at an earlier run folder with a profiled "
               "engine of the same model)")
        run.note(msg)
        return None, f"; {msg}"


def _require_requested(run: Run, stage: str, what: str) -> None:
    """Skip when ``stage`` was requested but did not produce (falling back would measure another model)."""
    rec = run.stages.get(stage)
    if rec is not None and rec.status in ("failed", "skipped"):
        raise MissingInput(f"needs {what} from the {stage} stage, which {rec.status}: {rec.reason}")


def _record(reused: bool, outputs: Dict[str, Any], source: str = "") -> StageRecord:
    if not reused:
        return StageRecord(status="ran", outputs=outputs)
    return StageRecord(status="reused", outputs=outputs,
                       reason=f"same inputs, config and versions: reused {source}" if source else "")


STAGE_FUNCS: Dict[str, Callable[[Run], StageRecord]] = {
    "export": stage_export,
    "prune": stage_prune,
    "qat": stage_qat,
    "analyze": stage_analyze,
    "quantize": stage_quantize,
    "sensitivity": stage_sensitivity,
    "build": stage_build,
    "profile": stage_profile,
}


# ---------------------------------------------------------------------------------------- the driver
def _setup_log(out_dir: Path) -> logging.Handler:
    """``run.log`` gets every stage, tracebacks and the libraries' INFO messages; the console gets the summary."""
    handler = logging.FileHandler(out_dir / RUN_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    LOG.addHandler(handler)
    LOG.setLevel(logging.DEBUG)
    LOG.propagate = False  # tracebacks go to the file, not to a console handler on the root logger
    logging.getLogger().addHandler(handler)
    return handler


def _close_log(handler: logging.Handler) -> None:
    LOG.removeHandler(handler)
    logging.getLogger().removeHandler(handler)
    handler.close()


def _run_stage(run: Run, name: str) -> Optional[BaseException]:
    """Run one stage; record its outcome. Returns the exception that failed it (KeyboardInterrupt too)."""
    LOG.info("stage %s: start", name)
    print(f"  [{name}] ...", flush=True)
    t0 = time.perf_counter()
    error: Optional[BaseException] = None
    try:
        rec = STAGE_FUNCS[name](run)
    except StageSkipped as skip:
        rec = StageRecord(status="skipped", reason=skip.reason)
    except MissingInput as missing:
        rec = StageRecord(status="skipped", reason=missing.reason)
    except PipelineError as err:
        rec, error = StageRecord(status="failed", reason=err.message + (f" ({err.hint})" if err.hint else "")), err
        LOG.error("stage %s failed: %s\n%s", name, rec.reason, traceback.format_exc())
    except KeyboardInterrupt as err:
        rec, error = StageRecord(status="failed", reason="interrupted (Ctrl-C)"), err
        LOG.error("stage %s interrupted by the user\n%s", name, traceback.format_exc())
    except Exception as err:  # noqa: BLE001 - any failure of a stage is recorded, and the report still written
        rec, error = StageRecord(status="failed", reason=f"{type(err).__name__}: {err} (traceback in {RUN_LOG})"), err
        LOG.error("stage %s failed with an unexpected error\n%s", name, traceback.format_exc())
    rec.seconds = round(time.perf_counter() - t0, 3)
    if run.data_notes:  # shown with the stage that first drew the samples (console and report)
        rec.outputs["data_notes"] = list(run.data_notes)
        run.data_notes.clear()
    run.stages[name] = rec
    LOG.info("stage %s: %s in %.2fs%s", name, rec.status, rec.seconds, f" ({rec.reason})" if rec.reason else "")
    return error


def run_pipeline(cfg: PipelineConfig, resolved_config: dict | None = None) -> dict:
    """Run ``cfg.stages`` in order and write report.json/.md/.html to ``cfg.output_dir``.

    Returns:
        The report dict. Raises PipelineError (after writing the report) when a stage failed, and
        :class:`RunInterrupted` after a Ctrl-C (the report says where it stopped).
    """
    from pipeline.core.environment import environment

    out_dir = Path(cfg.output_dir)
    try:
        validate(cfg)
        backend = select_backend(cfg)
    except PipelineError:
        _discard_unused_run_folder(out_dir)
        raise
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = _setup_log(out_dir)
    try:
        run = Run(cfg, out_dir, backend)
        extra = _manifest_extra(cfg, run, environment(cfg.command_line, resolved_config))
        failure = _run_stages(run, extra)
        report, paths = _finish(run, extra)
    finally:
        _close_log(handler)
    _print_summary(report, paths)
    if isinstance(failure, KeyboardInterrupt):
        raise RunInterrupted("Interrupted (Ctrl-C): the report says which stages finished.",
                             "Run the same command again: finished stages are reused from the store.")
    if failure is not None:
        if isinstance(failure, PipelineError):
            raise failure
        raise PipelineError(f"A stage failed: {type(failure).__name__}: {failure}",
                            f"The traceback is in {out_dir / RUN_LOG}.")
    return report


def _discard_unused_run_folder(out_dir: Path) -> None:
    """Remove the run folder Hydra made for a run that failed before any work (only its ``.hydra`` in it)."""
    import shutil

    if not out_dir.is_dir() or any(p.name != ".hydra" for p in out_dir.iterdir()):
        return
    shutil.rmtree(out_dir / ".hydra", ignore_errors=True)
    try:
        out_dir.rmdir()
    except OSError:
        pass


def _manifest_extra(cfg: PipelineConfig, run: Run, env: dict) -> Dict[str, Any]:
    from pipeline.analyze import resolve_hardware

    hardware = None
    try:
        hardware = resolve_hardware(cfg.hardware).to_dict()
    except PipelineError as err:
        LOG.warning("hardware not resolved: %s", err.message)
    return {"precision": asdict(cfg.precision), "batch_size": cfg.batch_size, "hardware": hardware,
            "requested_stages": list(cfg.stages), "environment": env}


def _run_stages(run: Run, extra: Dict[str, Any]) -> Optional[BaseException]:
    """Every stage but report, in order. Returns the first failure (the run goes on where it can)."""
    first: Optional[BaseException] = None
    interrupted = False
    for name in KNOWN_STAGES:
        if name == "report":
            continue
        if name not in run.cfg.stages:
            run.stages[name] = StageRecord(status="not requested", reason="not in stages")
            continue
        if interrupted:
            run.stages[name] = StageRecord(status="skipped", reason="the run was interrupted (Ctrl-C) before it")
            continue
        error = _run_stage(run, name)
        first = first or error
        interrupted = isinstance(error, KeyboardInterrupt)
        run.write_manifest(extra)
    for kind, value in asdict(run.cfg.inputs).items():
        if value and kind != "run" and kind not in run.looked_up and not interrupted:
            run.note(f"inputs.{kind}={value} was given but no stage of this run used it "
                     f"(stages={list(run.cfg.stages)}, precision={run.cfg.precision.name})")
    return first


def _finish(run: Run, extra: Dict[str, Any]) -> tuple[dict, dict]:
    """The report stage (renders from the run folder's files), then the final ``run.json``."""
    from pipeline.core.environment import now_utc
    from pipeline.report.stage import assemble_report, render

    extra["environment"]["finished_at"] = now_utc()  # the stages' end (the report only renders files)
    rec = StageRecord(status="not requested", reason="not in stages")
    run.stages["report"] = rec
    paths: dict = {}
    if "report" in run.cfg.stages:
        rec = run.stages["report"] = StageRecord(status="ran")  # provisional: the report it renders says so
        run.write_manifest(extra)
        t0 = time.perf_counter()
        try:
            paths = render(run.out)
            rec.outputs = {k: str(v) for k, v in paths.items()}
        except (PipelineError, OSError, ValueError) as err:
            rec.status, rec.reason = "failed", str(err)
            LOG.error("report failed\n%s", traceback.format_exc())
        rec.seconds = round(time.perf_counter() - t0, 3)
    run.write_manifest(extra)
    return assemble_report(run.out), paths


def _print_summary(report: dict, report_paths: dict) -> None:
    from pipeline.report.fmt import fmt_si, fmt_time

    hw = report.get("hardware") or {}
    print(f"\n== {report['model']['name']} | precision={report['precision']['name']} | "
          f"batch={report['model']['batch_size']} | hardware={hw.get('name', '?')} | "
          f"backend={report['backend']['selected']}")
    for name, rec in report["stages"].items():
        line = f"  {name:<9} {rec['status']:<13} {rec['seconds']:7.2f}s"
        if rec.get("reason"):
            line += f"  ({rec['reason']})"
        print(line)
    analysis = report.get("analysis")
    if analysis:
        unfused = analysis.get("predicted_latency_unfused_s")
        print(f"  theory: {fmt_si(analysis['totals']['flops'], 'FLOPs')}/batch, predicted lower bound "
              f"{fmt_time(analysis['predicted_latency_s'])} fused"
              + (f" ({fmt_time(unfused)} node by node)" if unfused else "") + f" on {hw.get('name')}")
    m = report.get("measured")
    if m:
        line = (f"  measured ({m['backend']}, {m.get('precision_executed')}): median {m['latency_ms']['median']:.3f} ms, "
                f"{m['throughput_samples_s']:.1f} samples/s")
        if m.get("pct_of_peak") is not None:
            line += (f", {fmt_si(m['achieved_ops_per_s'], 'OPS')} = {m['pct_of_peak']:.1f}% of the "
                     f"{m.get('peak_key')} peak of {m.get('peak_hardware')}")
        print(line)
    for kind, path in report_paths.items():
        print(f"  report.{kind}: {path}")
