#!/usr/bin/env python
"""Entry point: ``trt-pipeline [overrides]`` (console script), ``python pipeline/run.py [overrides]`` or
``python -m pipeline.run [overrides]`` (Hydra). ``--help`` prints the app's help (stages, config groups,
examples: ``pipeline/conf/hydra/help/pipeline.yaml``); ``--hydra-help`` prints Hydra's.

The configuration ships inside the package (``pkg://pipeline.conf``), so every form works from any
directory; run outputs (``outputs/``, ``multirun/``) and ``engines/`` go under the directory you run in.

Examples::

    trt-pipeline                                            # resnet18, fp32, hardware/backend detected
    python pipeline/run.py precision=int8 model=resnet50 batch_size=32
    python pipeline/run.py -m precision=fp32,int8           # multirun, ends with one comparison table
    python pipeline/run.py model=onnx model.onnx_path=my.onnx hardware=h100_sxm

This is the only module that knows Hydra: it validates the composed config against
``pipeline.core.config.PipelineConfig`` and hands a typed object to ``pipeline.orchestrate.run_pipeline``.
"""

from __future__ import annotations

import os
import sys

# `python pipeline/run.py` puts pipeline/ first on sys.path, where the stage folders (profile/, ...) would
# shadow standard-library modules of the same name. Put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.getcwd()) == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from pipeline.core.config import PipelineConfig, register_configs  # noqa: E402
from pipeline.core.errors import PipelineError, RunInterrupted  # noqa: E402
from pipeline.optimize.gpus import register_resolvers  # noqa: E402

register_configs()
register_resolvers()  # ${gpu_count:} (the +sweep=gpus preset's hydra.launcher.n_jobs)


#: Where Hydra finds ``config.yaml``: the package itself (importlib), never a path relative to the caller.
CONFIG_PATH = "pkg://pipeline.conf"


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Validate the composed config and run the pipeline (Hydra calls this once per job)."""
    from pipeline.orchestrate import run_pipeline

    try:
        typed: PipelineConfig = OmegaConf.to_object(cfg)  # validates types and fills interpolations
        if typed.gpus.per_job:  # before the pipeline imports anything that touches CUDA
            from pipeline.optimize.gpus import pin_job

            pin_job(typed.engines_dir, typed.gpus.lock_dir, typed.gpus.ids, typed.gpus.wait_s)
        typed.command_line = command_line(sys.argv, _job_overrides())
        resolved = OmegaConf.to_container(cfg, resolve=True)
        run_pipeline(typed, resolved_config=resolved)
    except PipelineError as err:
        print(f"\nerror: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"  -> {err.hint}", file=sys.stderr)
        if isinstance(err, RunInterrupted):
            sys.exit(130)  # Ctrl-C ends a sweep too, not only its current job
        if _is_multirun():
            # Exiting here would abort the whole sweep (later jobs and the comparison table);
            # pipeline.callbacks.ComparisonCallback exits non-zero once every job has run.
            from pipeline.callbacks import FAILED_JOBS

            FAILED_JOBS.append(err.message)
            return
        sys.exit(2)


def command_line(argv: list[str], job_overrides: list[str] | None = None) -> str:
    """The command as the user typed it: ``trt-pipeline``, ``python -m pipeline.run`` or ``python pipeline/run.py ...``.

    Args:
        argv: ``sys.argv`` (its first entry is the console script, or this file's path).
        job_overrides: in a multirun, this job's own overrides: the command then reruns this job alone.
    """
    prog = os.path.basename(argv[0]) if argv else ""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # set by `python -m`, None for a file
    if prog.startswith("trt-pipeline"):  # the console script (trt-pipeline, trt-pipeline.exe)
        head = ["trt-pipeline"]
    elif main_spec is not None and main_spec.name == "pipeline.run":
        head = ["python", "-m", "pipeline.run"]
    else:
        head = ["python", argv[0] if argv else "pipeline/run.py"]
    return " ".join([*head, *(argv[1:] if job_overrides is None else job_overrides)])


def _job_overrides() -> list[str] | None:
    """This job's overrides when it is one job of a multirun (sweep parameters resolved), else None."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if _is_multirun() else None


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # HydraConfig not set: called outside hydra.main
        return False


if __name__ == "__main__":
    main()
