"""Typed configuration: the structured-config schemas Hydra validates overrides against.

Only ``pipeline/run.py`` knows Hydra. It composes ``pipeline/conf/`` (``pkg://pipeline.conf``), validates it against
:class:`PipelineConfig` (a typo in an override fails there, with the valid keys listed) and hands the
typed object to :func:`pipeline.orchestrate.run_pipeline`. Code below the entry point reads typed
fields, never ``cfg.get("x", default)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

#: Every stage the pipeline knows, in execution order. Stages not yet implemented are not listed.
KNOWN_STAGES = ("export", "prune", "analyze", "quantize", "qat", "sensitivity", "build", "profile", "report")
#: Stages a run does when ``stages`` is not given (sensitivity is asked for by name: it costs many evaluations).
DEFAULT_STAGES = ("export", "analyze", "quantize", "build", "profile", "report")

#: Precisions the ``precision`` group offers.
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8", "best")

#: The folder above the ``pipeline`` package: the repository root in a source checkout (where ``.git``
#: may be found), ``site-packages`` in an installed wheel. Never used to find configuration files.
REPO_ROOT = Path(__file__).resolve().parents[2]


def _package_conf_dir() -> Path:
    # importlib.resources finds the package's own data the same way in a checkout and in a wheel.
    # A regular package (pipeline/conf/__init__.py) on a file system resolves to a real directory.
    from importlib.resources import files  # noqa: PLC0415

    return Path(str(files("pipeline.conf")))


#: The Hydra configuration shipped in the package (``pipeline/conf``; the repository's ``conf`` links here).
CONF_DIR = _package_conf_dir()


@dataclass
class ModelConfig:
    """What to deploy.

    Attributes:
        name: zoo name (resnet18, resnet50, mobilenet_v2, bert, digits_cnn, minilm), ``custom``
            (your torch module: ``path`` + ``class_name``, or ``builder._target_``) or ``onnx`` (start
            from ``onnx_path``).
        input_kind: ``image`` (N,C,H,W float), ``tokens`` (N,S int64 ids + attention mask) or
            ``features`` (any float tensor, for ``custom`` modules such as an MLP).
        input_shape: shape of one sample without the batch dimension, e.g. [3, 224, 224] or [128].
        num_classes: classifier outputs (image models).
        layers/hidden/heads/intermediate/vocab_size: encoder shape (bert).
        path: for ``custom``: a ``.py`` file defining the model class, loaded without any
            ``PYTHONPATH`` set-up (relative paths start from the working directory).
        class_name: for ``custom`` with ``path``: the class (or function) in that file that builds the module.
        kwargs: for ``custom``: keyword arguments for ``class_name`` (or extra ones for ``builder``).
        builder: for ``custom``: a Hydra ``_target_`` dict that builds the torch module from an
            importable module (the alternative to ``path``).
        onnx_path: for ``onnx``: the ONNX file to start from.
        pretrained: load real weights where the model has them in a package (digits_cnn trains on
            scikit-learn's digits; minilm ships its weights). Random weights otherwise.
        seed: weight initialisation seed (random-weight models are deterministic).
        encoder_output: for ``bert``: ``last_hidden_state`` (N,S,hidden) or ``pooled``
            (tanh(dense(CLS)), BERT's pooler, (N,hidden)). Other models ignore it.
    """

    name: str = "resnet18"
    input_kind: str = "image"
    input_shape: List[int] = field(default_factory=lambda: [3, 224, 224])
    num_classes: int = 1000
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    vocab_size: int = 30522
    path: Optional[str] = None
    class_name: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    builder: Optional[Dict[str, Any]] = None
    onnx_path: Optional[str] = None
    pretrained: bool = True
    seed: int = 0
    encoder_output: str = "last_hidden_state"


@dataclass
class PrecisionConfig:
    """Numeric precision of the deployed engine.

    Attributes:
        name: one of :data:`PRECISIONS`.
        weight_bytes / activation_bytes: bytes per element used by the analyze stage's byte model.
        peak: which theoretical peak the precision runs at (a key of the hardware's ``units``),
            e.g. ``fp16_tensor``; ``best`` takes the fastest peak the hardware has.
    """

    name: str = "fp32"
    weight_bytes: float = 4.0
    activation_bytes: float = 4.0
    peak: str = "fp32_cuda"


@dataclass
class UnitSpec:
    """One execution unit type for one precision, e.g. Tensor Cores doing FP16.

    Peak ops/s = clock_mhz * 1e6 * sm_count * units_per_sm * fma_per_clk_per_unit * 2 (one FMA is
    two operations), times ``sparse_speedup`` for 2:4 structured sparsity where the unit has it.
    """

    precision: str = "fp32"
    core: str = "cuda"  # cuda | tensor | simd (CPU)
    units_per_sm: float = 0.0
    fma_per_clk_per_unit: float = 0.0
    clock_mhz: float = 0.0
    sparse_speedup: float = 1.0
    source: str = ""


@dataclass
class HardwareConfig:
    """A processor's theoretical capabilities (conf/hardware/*.yaml), or ``auto``/``cpu`` to detect.

    For GPUs ``sm_count`` counts SMs; for CPUs it counts cores (the formula is the same).
    """

    name: str = "auto"
    kind: str = "auto"  # auto | gpu | cpu
    vendor_names: List[str] = field(default_factory=list)  # GPU names (as NVML reports them) that select this file
    sm_count: int = 0
    clock_mhz_max: float = 0.0
    memory_bandwidth_gbs: float = 0.0
    l2_mb: float = 0.0
    compute_capability: Optional[str] = None
    units: Dict[str, UnitSpec] = field(default_factory=dict)
    sources: Dict[str, str] = field(default_factory=dict)
    notes: str = ""


@dataclass
class BackendConfig:
    """Which runtime executes the model: ``auto`` (TensorRT where present, else ONNX Runtime),
    ``tensorrt`` (fails clearly without it) or ``onnxruntime``."""

    name: str = "auto"


@dataclass
class DataConfig:
    """Input data for checks, calibration and evaluation.

    Attributes:
        name: ``random``, ``digits`` (scikit-learn's 8x8 digits, real labels), ``folder`` (images
            under ``path``), ``npz`` (arrays in ``path``: ``inputs`` or ``x``, optional ``labels``/``y``),
            ``text`` (English sentences from ``corpus``, tokenized for token models).
        path: folder or .npz file for ``folder``/``npz``; the text file for ``text`` with ``corpus=file``.
        corpus: which sentences ``text`` draws (other sources ignore it): ``pydoc`` (Python's help
            topics, the default), ``docstrings`` (docstrings of a fixed list of standard-library
            modules), ``comments`` (those modules' ``#`` comments) or ``file`` (one sample per non-empty
            line of the UTF-8 file ``path``). The built-in corpora share no sentence, so a setting tuned
            on one can be checked on another.
        num_samples: samples drawn for checks and evaluation.
        calib_samples: samples used for calibration (kept apart from evaluation samples).
        seed: sampling seed.
        normalize: how ``folder`` images become floats: ``imagenet`` (scale to [0,1], then the
            ImageNet mean/std per channel; 3-channel inputs only, others fall back to ``unit``) or
            ``unit`` (scale to [0,1]). ``digits`` always scales to [0,1], as digits_cnn was trained.
        resize: let images whose size or channel count differs from the model input be resized
            (bilinear) and have grayscale replicated to the input's channels; each adaptation is noted in
            ``Dataset.notes``. False (default): such data is an error naming both shapes.
    """

    name: str = "random"
    path: Optional[str] = None
    corpus: str = "pydoc"
    num_samples: int = 64
    calib_samples: int = 64
    seed: int = 0
    normalize: str = "imagenet"
    resize: bool = False


@dataclass
class ProfileConfig:
    """Timing settings (trtexec-style: warm up, then measure for a duration, not a few runs).

    Attributes:
        warmup_s: warm-up time before measuring, seconds.
        duration_s: minimum measuring time, seconds.
        min_iterations: minimum number of timed runs.
        threads: ONNX Runtime intra-op threads (0 = all cores).
        cuda_graph: replay the engine through a CUDA graph (TensorRT backend).
        streams: execution contexts of the engine, each on its own stream, enqueued round-robin for the
            throughput number (TensorRT backend; MLPerf's offline habit). 1 = one context, as trtexec.
        with_copies: also time host->device input and device->host output copies around each run
            (TensorRT backend; the headline number is GPU compute without copies, like trtexec
            ``--noDataTransfers``).
        layer_times: collect per-layer times through ``trt.IProfiler`` (TensorRT backend).
        layer_runs: profiled runs averaged for per-layer times (each is slower than a normal run).
        accuracy_check: compare the engine's outputs with ONNX Runtime's on every evaluation sample
            (Polygraphy's Comparator over the engine runner and OnnxrtRunner).
        compare_to: an earlier profiled run folder of the same model (e.g. the FP16 or dense run): this run's
            engine is explained against that one's, layer by layer (the engine diff: time, precision, tactic,
            reformats, unfused Q/DQ), in ``explain.md`` / ``explain_diff.png`` and the report.
    """

    warmup_s: float = 0.5
    duration_s: float = 2.0
    min_iterations: int = 10
    threads: int = 0
    cuda_graph: bool = False
    streams: int = 1
    with_copies: bool = True
    layer_times: bool = True
    layer_runs: int = 10
    accuracy_check: bool = True
    compare_to: Optional[str] = None


@dataclass
class BuildConfig:
    """TensorRT engine build settings (the build stage: pipeline/engine/, TensorRT code in pipeline/trt/).

    Attributes:
        min_batch/opt_batch/max_batch: optimization profile for the batch dimension; 0 = use
            ``batch_size`` for that entry.
        workspace_mb: builder workspace memory-pool limit, MiB.
        optimization_level: builder optimization level (0-5) where the version has it.
        sparse_weights: allow 2:4 structured-sparse tactics (BuilderFlag.SPARSE_WEIGHTS).
        input_format: ``fp16`` makes the engine's float inputs FP16 (linear layout), like trtexec
            ``--inputIOFormats=fp16:chw``: the host sends half the bytes and the engine has no FP32 input
            reformat; the runtime converts FP32 data with a range check. null keeps the ONNX's input types.
        timing_cache: keep and reuse a timing cache in ``engines_dir``.
        qdq_onnx: an explicit-quantization (Q/DQ) ONNX to build instead of calibrating (the older name of
            ``inputs.qdq_onnx``, which every stage uses).
        calibrator: implicit INT8 calibrator where the version has one: ``entropy`` or ``minmax``.
        force_rebuild: ignore a cached engine.
        tactic_sources: TensorRT tactic sources to enable (``cublas``, ``cublas_lt``, ``cudnn``,
            ``edge_mask_convolutions``, ``jit_convolutions``); None keeps the version's default.
        preview_features: TensorRT preview features to switch on (true) or off (false) by name,
            like trtexec ``--preview=+name,-name``, e.g. ``{faster_dynamic_shapes_0805: false}``;
            names the installed version lacks are an error that lists the ones it has.
    """

    min_batch: int = 0
    opt_batch: int = 0
    max_batch: int = 0
    workspace_mb: int = 4096
    optimization_level: int = 3
    sparse_weights: bool = False
    input_format: Optional[str] = None
    timing_cache: bool = True
    qdq_onnx: Optional[str] = None
    calibrator: str = "entropy"
    force_rebuild: bool = False
    tactic_sources: Optional[List[str]] = None
    preview_features: Dict[str, bool] = field(default_factory=dict)


@dataclass
class QuantConfig:
    """Post-training quantization settings (the quantize stage; see pipeline/quantize/).

    Attributes:
        calib: calibration algorithm: ``max``, ``percentile``, ``entropy`` or ``mse``.
        percentile: percentile for ``percentile`` calibration (99.9, 99.99, 99.999...).
        symmetric: symmetric int8 (zero point 0, what TensorRT supports) or asymmetric uint8.
        per_channel: per-output-channel weight scales (else per-tensor).
        num_bins: histogram bins for entropy/percentile/mse statistics.
        compare: also evaluate every algorithm and granularity for the comparison report.
        op_types: compute ops whose activation and weight inputs get Q/DQ.
        quantize_bmm: also quantize MatMuls of two activations (attention ``QK^T`` and ``PV``).
        residual_add: Q/DQ on the residual input of Adds after a Conv (TensorRT fuses the add).
        pooling: Q/DQ on pooling inputs (TensorRT runs the pool in INT8 between INT8 convs).
        exclude_nodes: node names or fnmatch patterns kept in float.
        keep_float: structural rules whose compute nodes stay in float, detected from ops and edges
            (never node names, so they work on models nobody has seen; see
            ``pipeline/quantize/placement.py``): ``ffn`` = transformer feed-forward MatMul/Gemm on
            both sides of a GELU (Erf or Tanh decomposition, Gelu/FastGelu/BiasGelu/QuickGelu op),
            or of a Relu when a residual Add wraps the block; ``attention_scores`` = the batched
            ``Q K^T`` and ``P V`` MatMuls around a Softmax; ``first`` / ``last`` = the first / last
            quantizable compute node in topological order. Kept nodes and the rule that matched are
            recorded in ``quantization.kept_float``.
        plan: a mixed-precision plan file of the sensitivity stage (``<model>.precision_plan.json``): its
            float layers stay float and each activation takes the calibration method the plan chose.
        split_outliers: outlier channel splitting before calibration (``pipeline/quantize/split.py``): in each
            activation feeding a MatMul/Gemm with constant weights, channels whose calibration maximum exceeds
            this quantile of the per-channel maxima are split into copies (exact in FP32; the per-tensor INT8
            range shrinks to the largest remaining channel). null turns it off. A precision plan's own value wins.
        split_min_gain: split an activation only when its range shrinks at least this many times (2: MiniLM's
            FFN inputs shrink 4x and are split; ResNet-50's classifier input would shrink 1.4x for +0.09 ms on the
            H200, and is not).
        cache_all_tensors: also write every other float tensor to the TensorRT calibration cache. Off by default:
            the build stage builds INT8 from the Q/DQ ONNX (explicit path), which never reads the cache; only
            TensorRT's implicit path (deprecated in 10, gone in 11) does, and there a tensor missing from the cache
            has no INT8 scale, so the layers that read or write it run in FP16/FP32. On costs 4x more values
            to bin on MiniLM (benchmarks/results/calib_stats_speed.json).
        trt_version: TensorRT version written in the calibration cache header.
        cache_algorithm: calibrator named in the cache header (build with the matching calibrator).
    """

    calib: str = "entropy"
    percentile: float = 99.99
    symmetric: bool = True
    per_channel: bool = True
    num_bins: int = 2048
    compare: bool = False
    op_types: List[str] = field(default_factory=lambda: ["Conv", "Gemm", "MatMul"])
    quantize_bmm: bool = True
    residual_add: bool = True
    pooling: bool = True
    exclude_nodes: List[str] = field(default_factory=list)
    keep_float: List[str] = field(default_factory=list)
    plan: Optional[str] = None
    split_outliers: Optional[float] = 0.99
    split_min_gain: float = 2.0
    cache_all_tensors: bool = False
    trt_version: str = "8.6.1"
    cache_algorithm: str = "EntropyCalibration2"


@dataclass
class SensitivityConfig:
    """Layer-wise sensitivity and the mixed-precision search (the sensitivity stage; pipeline/sensitivity/).

    Attributes:
        metric: what the budget is on: ``auto`` (top-1 accuracy for a classifier with labels, top-1 agreement
            without, embedding cosine for an embedder, output cosine otherwise) or a metric key
            (``accuracy``, ``top1_agreement``, ``embedding_cosine``, ``output_cosine``, ``nn_agreement``).
        max_drop: allowed drop of ``metric`` from FP32 (null: 0.005 for top-1, 0.01 for cosine).
        min_nn_agreement: embedders: the plan must also keep each sample's nearest neighbour (cosine) in
            the evaluation set the same as FP32's for at least this share of samples (0 = no constraint). Agreement
            falls as the candidate set grows, so with held-out samples each sample's neighbour is searched among
            all the evaluation samples (search and held out), never among a subset only.
        margin: share of each allowed drop the search keeps in reserve (0.25: a 0.01 cosine budget is searched
            at 0.0075, NN agreement >= 0.95 at >= 0.9625), so that the plan holds on sentences or images it has not
            seen; the plan is reported against the real budget, and checked on the held-out samples.
        methods: calibration methods each activation's threshold is chosen from (by its first quantized
            consumer's output error); empty = ``quant.calib`` everywhere.
        layers: what is ranked and may go to float: ``compute`` (Conv/Gemm/MatMul; the pooling and residual-add
            inputs the placement quantizes stay INT8 with their neighbours) or ``all`` (those sites too).
        all_but_one: also measure the metric with every layer but one quantized (a second walk).
        groups: move transformer FFN blocks and attention pairs to float as units (then split them).
        max_float: at most this many float layers in the plan (0 = no limit).
        samples: evaluation samples used (0 = all of ``data/eval.npz``; 256+ gives stable rankings).
        holdout: share of those samples kept out of the search to check the plan on (every k-th sample).
        validate: a plan meets the budget only when it also meets the real (untightened) budget on the held-out
            samples, checked during the search: a plan that holds on the samples it was searched on but not on the
            others grows further (MiniLM: 0.967 nearest-neighbour agreement searched, 0.9375 held out). The held-out
            check in the report is then no longer independent of the search.
        batch_size: samples per ONNX Runtime call.
        threads: ONNX Runtime intra-op threads (0 = one per core).
    """

    metric: str = "auto"
    max_drop: Optional[float] = None
    min_nn_agreement: float = 0.95
    margin: float = 0.25
    methods: List[str] = field(default_factory=lambda: ["max", "percentile", "entropy", "mse"])
    layers: str = "compute"
    all_but_one: bool = False
    groups: bool = True
    max_float: int = 0
    samples: int = 0
    holdout: float = 0.25
    validate: bool = True
    batch_size: int = 32
    threads: int = 0


@dataclass
class InputsConfig:
    """Files a run starts from instead of making them (stages=[build,profile] on a Q/DQ ONNX made elsewhere).

    Each is a path; ``run`` is an earlier run folder whose artifacts (by kind, from its ``run.json``)
    fill every input not named here. Unset inputs come from the stages of this run.

    Attributes:
        run: an earlier run folder (``outputs/<...>/<time>``).
        onnx: the FP32 ONNX (``<model>.onnx``).
        summary: the export summary (``export.json``); read from the ONNX's sidecar or the file when unset.
        qdq_onnx: an explicit-quantization ONNX (``<model>.int8.qdq.onnx``).
        calib_cache: a TensorRT calibration cache (``<model>.calib.cache``).
        calib_stats: the quantize stage's activation statistics (``<model>.calib_stats.npz``, the sensitivity
            stage's ranges file).
        calib_data / eval_data: sample files (``data/calib.npz``, ``data/eval.npz``).
        analysis: ``analysis.json``; quantization: ``quantization.json``; engine: a ``.plan``.
    """

    run: Optional[str] = None
    onnx: Optional[str] = None
    summary: Optional[str] = None
    qdq_onnx: Optional[str] = None
    calib_cache: Optional[str] = None
    calib_stats: Optional[str] = None
    calib_data: Optional[str] = None
    eval_data: Optional[str] = None
    analysis: Optional[str] = None
    quantization: Optional[str] = None
    engine: Optional[str] = None


@dataclass
class PruneConfig:
    """The prune stage (``pipeline/prune/``): L1-norm channel pruning and 2:4 structured sparsity of the torch model,
    a fine-tune on labelled data, and the pruned ONNX that the stages after it use.

    Attributes:
        channels: share of each conv/linear layer's output channels to remove by L1 norm (0 = none), for real: the
            next layers' inputs, BatchNorm, residual adds, concatenations and depthwise convs stay consistent.
        global_ranking: rank filters across all layers (one threshold) instead of the same share per layer.
        round_to: keep channel counts multiples of this (Tensor Cores: 8 for FP16, 32 for INT8); null picks 32 for
            ``precision=int8`` and 8 otherwise.
        layer_times: a profile's ``measurement.json`` (per-layer times): layers that take longer are pruned more,
            toward measured latency rather than FLOPs.
        max_layer_ratio: the most any one layer loses with ``layer_times``.
        sparse24: zero 2 of every 4 weights along the input channels (TensorRT's 2:4 pattern) in every eligible
            Conv/Linear, kept fixed through the fine-tune; build with ``build.sparse_weights=true`` to use it.
        finetune_epochs: epochs of fine-tuning after pruning (needs labels: ``data=digits`` or a folder dataset).
        lr: fine-tune learning rate (Adam).
        batch_size: fine-tune batch size.
        train_samples: labelled samples to fine-tune on, drawn from the data's calibration pool (never the eval
            split); null takes all of it for ``data=digits`` (1400) or ``data.calib_samples`` otherwise.
        seed: fine-tune seed.
    """

    channels: float = 0.0
    global_ranking: bool = False
    round_to: Optional[int] = None
    layer_times: Optional[str] = None
    max_layer_ratio: float = 0.8
    sparse24: bool = False
    finetune_epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    train_samples: Optional[int] = None
    seed: int = 0


@dataclass
class QatConfig:
    """The qat stage (``pipeline/qat/``): quantization-aware training from the PTQ ranges, exported as Q/DQ ONNX.

    Attributes:
        epochs: fine-tune epochs with fake quantization (per-channel weights, per-tensor activations, STE).
        lr: learning rate (Adam); small, the weights start trained.
        batch_size: batch size.
        train_samples: labelled samples (as ``prune.train_samples``).
        seed: seed.
    """

    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 64
    train_samples: Optional[int] = None
    seed: int = 0


@dataclass
class OptimizeConfig:
    """What the engine search (a multirun, e.g. ``-m +sweep=engine``) aims at; read when the sweep ends.

    Attributes:
        max_latency_ms: the throughput pick only considers runs whose median latency stays within this.
        target_throughput: samples/s the best run should reach; a miss is reported with the measured evidence
            (power, clocks, share of peak, roofline gap) of what holds it back.
        target_latency_ms: median batch-1 latency the fastest batch-1 run should stay under, reported the same way.
    """

    max_latency_ms: Optional[float] = None
    target_throughput: Optional[float] = None
    target_latency_ms: Optional[float] = None


@dataclass
class GpusConfig:
    """One job per GPU of a host (``+sweep=gpus``): each job claims a GPU for its process and is pinned to it.

    Attributes:
        per_job: claim one GPU per job process (an exclusive lock file per GPU), set ``CUDA_VISIBLE_DEVICES`` to it
            before anything touches CUDA, and keep it for the process's life (a reused joblib worker keeps its GPU).
        lock_dir: folder of the per-GPU lock files; null: ``<engines_dir>/.gpu-locks``.
        ids: GPU ids to hand out (CUDA ordinals or UUIDs; fake ids in tests); null: ``CUDA_VISIBLE_DEVICES`` if set,
            else every GPU NVML lists.
        wait_s: how long a job waits for a free GPU before it fails, naming the processes that hold them.
    """

    per_job: bool = False
    lock_dir: Optional[str] = None
    ids: Optional[List[str]] = None
    wait_s: float = 600.0


@dataclass
class PipelineConfig:
    """The whole run. See ``conf/config.yaml`` for defaults and ``README.md`` for examples."""

    model: ModelConfig = field(default_factory=ModelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    data: DataConfig = field(default_factory=DataConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    gpus: GpusConfig = field(default_factory=GpusConfig)
    stages: List[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    batch_size: int = 1
    opset: int = 17
    output_dir: str = "."
    engines_dir: str = "engines"  # relative to where the run starts (Hydra runs: ${hydra:runtime.cwd}/engines)
    command_line: str = ""


def precision_config(name: str) -> PrecisionConfig:
    """The ``precision`` group's option ``name`` (``pipeline/conf/precision/<name>.yaml``), for code called without Hydra.

    Read from the installed package through importlib.resources, so it works from any directory.

    Raises:
        PipelineError: ``name`` is not an option of the ``precision`` group.
    """
    from importlib.resources import files  # noqa: PLC0415

    from omegaconf import OmegaConf  # noqa: PLC0415

    from pipeline.core.errors import PipelineError  # noqa: PLC0415

    resource = files("pipeline.conf").joinpath("precision", f"{name}.yaml")
    if not resource.is_file():
        options = sorted(p.name[: -len(".yaml")] for p in files("pipeline.conf").joinpath("precision").iterdir()
                         if p.name.endswith(".yaml"))
        raise PipelineError(f"unknown precision '{name}'", f"use one of: {', '.join(options)}")
    merged = OmegaConf.merge(OmegaConf.structured(PrecisionConfig), OmegaConf.create(resource.read_text()))
    return OmegaConf.to_object(merged)


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (called by the entry point only).

    Only the whole-run schema is stored, as a primary config (``config.yaml`` lists ``pipeline_schema``
    first in its defaults): it types every group's node (``model: ModelConfig``...). Schemas stored inside a
    group (``model/model_schema``) would show up as choices of that group in ``--help`` and on typos, and
    no option needs them.
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)
