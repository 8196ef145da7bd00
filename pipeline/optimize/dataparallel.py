"""Data-parallel throughput: one engine timed on every GPU of a host at once, against one GPU alone.

``python -m pipeline.optimize.dataparallel ENGINE_PLAN [--gpus 0,1] [--seconds 5] [--out result.json]``

Each GPU gets its own process (``multiprocessing`` spawn context, ``CUDA_VISIBLE_DEVICES`` set in the child before
anything imports CUDA), which deserializes the engine, allocates its buffers and warms up; a shared barrier then
releases every process at once and each times back-to-back executions for the same wall window with the
pipeline's own TensorRT timing (:class:`pipeline.trt.runtime.EngineSession`,
:func:`pipeline.trt.profiler.timed_with_telemetry`: CUDA events, ``in_flight`` runs queued, NVML sampled). First the
same engine is timed alone on the first GPU: the single-GPU figure. The result:

- ``per_gpu``: each GPU's throughput (samples/s), latency, NVML telemetry (device, UUID, clocks, power);
- ``sum_samples_s``: the GPUs' throughputs added, since they ran in the same window (``overlap`` says how well the
  windows lined up);
- ``scaling = sum / (single x n)``: 1.0 when n GPUs deliver n times one GPU; less when something shared (host CPU,
  PCIe, power or cooling of the chassis) holds them back.

The orchestration (:func:`run_on_gpus`, :func:`aggregate`) takes the timing as a function, so the CPU tests drive
it with a fake; TensorRT, CUDA and NVML are imported only inside :func:`time_engine`, in the child processes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue as _queue
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from pipeline.core.errors import PipelineError

#: ``job(gpu_id, seconds, start) -> {"throughput_samples_s": ..., ...}``: set up, call ``start()`` (the barrier)
#: once ready, then time for ``seconds``; it runs in a child process already pinned to ``gpu_id``.
TimingJob = Callable[[str, float, Callable[[], None]], Mapping[str, Any]]


def _child(index: int, gpu_id: str, job: TimingJob, seconds: float, barrier: Any, results: Any,
           setup_timeout_s: float) -> None:
    """One GPU's process: pin, run ``job`` (which waits at the barrier once set up), send back what it measured."""
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_id)
    released: Dict[str, float] = {}

    def start() -> None:
        barrier.wait(setup_timeout_s)
        released["at"] = time.time()

    try:
        out = dict(job(str(gpu_id), seconds, start))
        if "at" not in released:
            raise RuntimeError(f"the timing job for GPU {gpu_id} never called start() (the barrier)")
        out.setdefault("window", [released["at"], time.time()])
        results.put((index, {"gpu": str(gpu_id), "pid": os.getpid(), **out}))
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent, and frees the others
        barrier.abort()
        results.put((index, {"gpu": str(gpu_id), "pid": os.getpid(), "error": f"{type(err).__name__}: {err}"}))


def run_on_gpus(gpus: Sequence[str], job: TimingJob, seconds: float, setup_timeout_s: float = 300.0) -> List[Dict]:
    """Run ``job`` in one spawned process per GPU, released together by a barrier once every one is set up.

    Args:
        gpus: GPU ids (``CUDA_VISIBLE_DEVICES`` entries), one process each.
        job: the timing function (picklable: a module-level function or a ``functools.partial`` of one).
        seconds: the timed window of every process.
        setup_timeout_s: how long the processes wait at the barrier for the slowest one's setup.

    Returns:
        One dict per GPU, in ``gpus`` order: the job's result plus ``gpu``, ``pid`` and ``window``
        (``[released, finished]``, seconds since the epoch), or ``{gpu, pid, error}``.
    """
    import multiprocessing  # noqa: PLC0415

    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold a CUDA context
    barrier, results = ctx.Barrier(len(gpus)), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(i, str(g), job, float(seconds), barrier, results, setup_timeout_s),
                         name=f"dataparallel-gpu{g}", daemon=True) for i, g in enumerate(gpus)]
    for p in procs:
        p.start()
    out: Dict[int, Dict[str, Any]] = {}
    deadline = time.monotonic() + setup_timeout_s + 3 * float(seconds) + 120.0
    try:
        while len(out) < len(procs):
            try:
                index, res = results.get(timeout=1.0)
                out[index] = res
            except _queue.Empty:
                dead = [i for i, p in enumerate(procs) if not p.is_alive() and i not in out]
                if dead and results.empty():
                    time.sleep(0.5)  # a result put just before exiting may still be in the pipe
                    if results.empty():
                        for i in dead:
                            out[i] = {"gpu": str(gpus[i]), "error": f"the process exited with code {procs[i].exitcode} "
                                                                   "without a result"}
                        barrier.abort()
                if time.monotonic() > deadline:
                    raise PipelineError(f"data-parallel timing did not finish within {deadline:.0f} s",
                                        "check the GPUs (nvidia-smi) and lower --seconds")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    return [out[i] for i in range(len(procs))]


def _windows_overlap(results: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """How well the timed windows lined up: the span all of them share, against the longest one."""
    wins = [r["window"] for r in results if r.get("window")]
    if not wins:
        return {"overlap_s": None, "share": None}
    shared = max(0.0, min(w[1] for w in wins) - max(w[0] for w in wins))
    longest = max(w[1] - w[0] for w in wins)
    return {"overlap_s": shared, "share": shared / longest if longest > 0 else None,
            "start_spread_s": max(w[0] for w in wins) - min(w[0] for w in wins)}


def aggregate(single: Mapping[str, Any], per_gpu: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """The data-parallel figure from one GPU timed alone and every GPU timed together.

    Raises:
        PipelineError: a process failed (its GPU and error are named).
    """
    failed = [r for r in [single, *per_gpu] if r.get("error")]
    if failed:
        raise PipelineError("data-parallel timing failed: "
                            + "; ".join(f"GPU {r['gpu']}: {r['error']}" for r in failed),
                            "run the same engine alone first: python -m pipeline.optimize.dataparallel PLAN --gpus 0")
    one = float(single["throughput_samples_s"])
    total = sum(float(r["throughput_samples_s"]) for r in per_gpu)
    n = len(per_gpu)
    return {"gpus": [str(r["gpu"]) for r in per_gpu], "n": n, "single": dict(single),
            "per_gpu": [dict(r) for r in per_gpu],
            "single_samples_s": one, "sum_samples_s": total, "ideal_samples_s": one * n,
            "scaling": total / (one * n) if one > 0 else None, "overlap": _windows_overlap(per_gpu)}


def data_parallel(gpus: Sequence[str], job: TimingJob, seconds: float, setup_timeout_s: float = 300.0,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The same ``job`` on the first GPU alone, then on every GPU at once; :func:`aggregate` of the two."""
    if not gpus:
        raise PipelineError("no GPU to time on", "pass --gpus 0,1,... or run where NVML sees the GPUs")
    gpus = [str(g) for g in gpus]
    log(f"[dataparallel] GPU {gpus[0]} alone for {seconds:g} s")
    (single,) = run_on_gpus(gpus[:1], job, seconds, setup_timeout_s)
    log(f"[dataparallel] {len(gpus)} GPU(s) ({','.join(gpus)}) at once for {seconds:g} s")
    return aggregate(single, run_on_gpus(gpus, job, seconds, setup_timeout_s))


# ----------------------------------------------------------------------------- TensorRT (GPU processes only)
def engine_feed(trt: Any, engine: Any) -> Dict[str, Any]:
    """Host inputs for every engine input at its static shape (or profile 0's opt shape): random normal floats,
    zeros for integer and boolean inputs (valid token ids), in the engine's dtypes."""
    import numpy as np  # noqa: PLC0415

    from pipeline.trt.runtime import engine_io  # noqa: PLC0415

    _, ins, _ = engine_io(trt, engine)
    rng, feed = np.random.default_rng(0), {}
    for name, dtype in ins.items():
        shape = [int(d) for d in engine.get_tensor_shape(name)]
        if any(d < 0 for d in shape):
            shape = [int(d) for d in engine.get_tensor_profile_shape(name, 0)[1]]
        feed[name] = (rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                      else np.zeros(shape, dtype))
    return feed


def time_engine(plan_path: str, gpu_id: str, seconds: float, start: Callable[[], None], warmup_s: float = 1.0,
                min_iterations: int = 10) -> Dict[str, Any]:
    """Time ``plan_path`` on this process's GPU: deserialize, bind, warm up, ``start()``, then back-to-back runs for
    ``seconds`` (:func:`pipeline.trt.profiler.timed_with_telemetry`: GPU compute, no copies, NVML sampled)."""
    from pipeline.trt.cuda import cuda_api  # noqa: PLC0415
    from pipeline.trt.features import import_tensorrt  # noqa: PLC0415
    from pipeline.trt.profiler import _measurement, timed_with_telemetry  # noqa: PLC0415
    from pipeline.trt.runtime import EngineSession, load_engine  # noqa: PLC0415

    trt = import_tensorrt()
    cuda = cuda_api(events=True)
    try:
        engine = load_engine(trt, plan_path)
        feed = engine_feed(trt, engine)
        sess = EngineSession(trt, engine, feed, cuda)
        try:
            t0, runs = time.perf_counter(), 0
            while runs < 3 or time.perf_counter() - t0 < warmup_s:  # clocks up, lazy allocations done
                sess.execute()
                runs += 1
                if runs % 8 == 0:
                    cuda.synchronize(sess.stream)
            cuda.synchronize(sess.stream)
            start()
            loop, telemetry = timed_with_telemetry(sess.execute, cuda, sess.stream, 0.0, seconds, min_iterations)
        finally:
            sess.close()
    finally:
        cuda.close()
    batch = int(next(iter(feed.values())).shape[0]) if feed else 1
    m = _measurement(loop, batch, str(telemetry.get("device") or f"GPU {gpu_id}"), "engine", False, [])
    return {"throughput_samples_s": m.throughput_samples_s, "latency_ms": m.latency_ms, "iterations": m.iterations,
            "batch": batch, "gpu_span_s": m.duration_s, "gpu_telemetry": telemetry}


def summary_lines(res: Mapping[str, Any]) -> List[str]:
    """A few lines for the terminal."""
    def who(r: Mapping[str, Any]) -> str:
        tel = r.get("gpu_telemetry") or {}
        clock = (tel.get("sm_clock_mhz") or {}).get("median") if tel.get("available") else None
        return (f"GPU {r['gpu']}" + (f" ({tel['device']})" if tel.get("device") else "")
                + (f", median SM clock {clock:.0f} MHz" if clock else ""))

    lines = [f"single: {res['single_samples_s']:,.1f} samples/s on {who(res['single'])}"]
    lines += [f"  {who(r)}: {r['throughput_samples_s']:,.1f} samples/s" for r in res["per_gpu"]]
    ov = res["overlap"]
    lines.append(f"sum over {res['n']} GPU(s): {res['sum_samples_s']:,.1f} samples/s against {res['n']} x single = "
                 f"{res['ideal_samples_s']:,.1f}: scaling {res['scaling']:.3f}"
                 + (f" (windows shared {ov['share']:.0%} of the longest)" if ov.get("share") is not None else ""))
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.optimize.dataparallel",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("engine", type=Path, help="the serialized engine (.plan), built for this host's GPU model")
    parser.add_argument("--gpus", default=None, help="comma-separated GPU ids (default: every visible GPU)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed window per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before the barrier, seconds (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    from pipeline.core.artifacts import write_json  # noqa: PLC0415
    from pipeline.optimize.dataparallel import time_engine as timer  # noqa: PLC0415 - by module name, not __main__
    from pipeline.optimize.gpus import visible_gpus  # noqa: PLC0415

    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else visible_gpus()
    try:
        if not args.engine.is_file():
            raise PipelineError(f"engine not found: {args.engine}",
                                "build one: python pipeline/run.py backend=tensorrt")
        job = functools.partial(timer, str(args.engine.resolve()), warmup_s=args.warmup)
        res = {"engine": str(args.engine), "seconds": args.seconds, **data_parallel(gpus, job, args.seconds)}
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(res)))
    if args.out:
        write_json(args.out, res)
        print(f"result: {args.out}")
    else:
        print(json.dumps({k: res[k] for k in ("gpus", "single_samples_s", "sum_samples_s", "scaling")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
