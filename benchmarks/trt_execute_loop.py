#!/usr/bin/env python
"""Minimal TensorRT execute loop with CUDA events: the yardstick for the pipeline's own timing.

Deliberately independent of ``pipeline/``: deserialize the engine, allocate every I/O tensor once on
the device (pycuda, primary context), set the addresses once, warm up, then enqueue ``N`` runs back to
back on one stream between two CUDA events. GPU compute only (inputs stay on the device), as
trtexec ``--noDataTransfers`` reports it. The pipeline's throughput for the same engine should be at
least 0.97 of this.

Usage::

    python benchmarks/trt_execute_loop.py engines/resnet50-<hash>.plan --warmup 2 --duration 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> dict:
    """Time the engine; print and optionally write ``{samples_per_s, ms_per_run, ...}``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", help="serialized TensorRT engine (.plan)")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (H100 clocks settle in ~2 s)")
    ap.add_argument("--duration", type=float, default=5.0, help="approximate timed seconds")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)

    import numpy as np
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    try:
        logger = trt.Logger(trt.Logger.WARNING)
        with open(args.engine, "rb") as f:
            engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        context = engine.create_execution_context()
        batch, bufs = None, []
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for n in names:  # inputs at the profile's opt shape (the batch the engine was built for)
            if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                shape = tuple(engine.get_tensor_profile_shape(n, 0)[1])
                context.set_input_shape(n, shape)
                batch = batch or shape[0]
        for n in names:
            shape = tuple(context.get_tensor_shape(n))
            nbytes = int(np.prod(shape)) * np.dtype(trt.nptype(engine.get_tensor_dtype(n))).itemsize
            buf = cuda.mem_alloc(max(nbytes, 1))
            if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
                # Token ids and masks get zeros (a valid id and mask value): random values cast to
                # integers would index outside an embedding table.
                host = (np.random.default_rng(0).standard_normal(shape).astype(dtype) if dtype.kind == "f"
                        else np.zeros(shape, dtype))
                cuda.memcpy_htod(buf, host)
            bufs.append(buf)
            context.set_tensor_address(n, int(buf))
        stream = cuda.Stream()
        h = stream.handle

        t0, warm = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.warmup:
            context.execute_async_v3(h)
            warm += 1
            if warm % 8 == 0:
                stream.synchronize()
        stream.synchronize()
        per_run = (time.perf_counter() - t0) / max(warm, 1)
        n = max(50, int(args.duration / max(per_run, 1e-6)))

        start, end = cuda.Event(), cuda.Event()
        start.record(stream)
        for _ in range(n):
            context.execute_async_v3(h)
        end.record(stream)
        end.synchronize()
        ms = end.time_since(start)
        res = {
            "engine": args.engine,
            "device": cuda.Device(0).name(),
            "tensorrt_bindings": trt.__version__,
            "batch_size": int(batch or 1),
            "iterations": n,
            "warmup_iterations": warm,
            "gpu_ms_total": ms,
            "ms_per_run": ms / n,
            "samples_per_s": (batch or 1) * n / (ms / 1e3),
            "method": "N execute_async_v3 back to back between two CUDA events, device-resident buffers",
        }
        for b in bufs:
            b.free()
        del context, engine
    finally:
        ctx.pop()
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
