"""Hydra composition: every config group composes against the schemas; typos fail clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from pipeline.core.config import CONF_DIR, PRECISIONS, PipelineConfig, register_configs

REPO = Path(__file__).resolve().parent.parent
register_configs()


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def _typed(cfg) -> PipelineConfig:
    """The typed object run.py hands to the orchestrator (hydra:... paths replaced, as Hydra would)."""
    cfg = OmegaConf.merge(OmegaConf.structured(PipelineConfig), OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    cfg.output_dir, cfg.engines_dir = "out", "engines"
    return OmegaConf.to_object(cfg)


#: Every config group of the app: each folder of pipeline/conf except Hydra's own (hydra/help...).
# sweep/ holds optional presets of Hydra's own settings (`+sweep=engine`, package _global_): no typed group to
# check here; tests/test_optimize.py composes it.
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "sweep", "__pycache__"))


def test_the_config_ships_in_the_package_and_conf_links_there():
    assert CONF_DIR == REPO / "pipeline" / "conf" and (CONF_DIR / "__init__.py").is_file()
    assert (REPO / "conf").is_symlink() and (REPO / "conf").resolve() == CONF_DIR.resolve()
    assert set(GROUPS) >= {"model", "precision", "hardware", "backend", "data"}


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    assert options, f"conf/{group}/ is empty"
    for option in options:
        cfg = _compose([f"{group}={option}"])
        node = cfg[group]
        # Mandatory values (???) are allowed in options such as model=onnx; everything else must resolve.
        missing = [k for k in node if OmegaConf.is_missing(node, k)]
        for k in node:
            if k not in missing:
                node[k]  # noqa: B018 - raises on a bad interpolation
        assert isinstance(OmegaConf.to_object(node), object)
        if group != "model":
            assert node.name == option, f"conf/{group}/{option}.yaml must set name: {option}"


def test_precision_group_offers_every_precision():
    options = {p.stem for p in (CONF_DIR / "precision").glob("*.yaml")}
    assert set(PRECISIONS) <= options


def test_defaults_are_typed():
    typed = _typed(_compose([]))
    assert isinstance(typed, PipelineConfig)
    assert typed.opset == 17
    assert typed.precision.name == "fp32"
    assert typed.stages[0] == "export" and typed.stages[-1] == "report"


def test_override_typo_is_rejected_with_key_name():
    with pytest.raises(Exception) as info:
        _compose(["batch_sise=4"])
    assert "batch_sise" in str(info.value)


def test_wrong_type_is_rejected():
    with pytest.raises(Exception) as info:
        _compose(["batch_size=lots"])
    assert "batch_size" in str(info.value)


def test_unknown_group_option_lists_available():
    with pytest.raises(Exception) as info:
        _compose(["precision=int9"])
    text = str(info.value)
    assert "int9" in text and "int8" in text  # Hydra lists the available options


def test_nested_typo_rejected():
    cfg = _compose([])
    with pytest.raises((ConfigAttributeError, ConfigKeyError, ValidationError)):
        cfg.model.lyers = 3  # struct mode: unknown keys are refused


def test_cli_typo_prints_clear_message_without_traceback():
    res = subprocess.run([sys.executable, "pipeline/run.py", "precison=int8"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "precison" in res.stderr
    assert "Traceback" not in res.stderr


def test_preview_features_override_is_typed():
    # A new key of a dict field takes Hydra's "+" (the dict is empty by default).
    typed = _typed(_compose(["+build.preview_features.faster_dynamic_shapes_0805=false"]))
    assert typed.build.preview_features == {"faster_dynamic_shapes_0805": False}
    with pytest.raises(Exception, match="preview_features"):
        _typed(_compose(["+build.preview_features.faster_dynamic_shapes_0805=maybe"]))


def test_help_group_composes_with_the_app_template():
    cfg = _compose([])
    assert cfg.hydra.help.app_name == "trt-pipeline"
    assert "$APP_CONFIG_GROUPS" in cfg.hydra.help.template and "== Stages" in cfg.hydra.help.template
    assert "trt-pipeline is powered by Hydra" not in cfg.hydra.help.header  # not Hydra's default page


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pipeline" / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _section(text: str, title: str) -> str:
    """The lines of ``--help`` between the heading ``== <title>...`` and the next heading."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"== {title}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("==")), len(lines))
    return "\n".join(lines[start + 1 : end]) + "\n"


def test_help_lists_the_stages_groups_keys_and_examples(tmp_path):
    res = _cli(["--help"], tmp_path)  # from another directory: the config comes from the package
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "_schema" not in out and "powered by Hydra" not in out
    stage_lines = [line.split()[0] for line in _section(out, "Stages").splitlines() if line.startswith("  ")]
    assert stage_lines == ["export", "analyze", "quantize", "build", "profile", "report"], stage_lines
    groups = _section(out, "Config groups").splitlines()
    for group in GROUPS:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in groups, (group, groups)
    keys = _section(out, "Most used keys")
    for key in ("stages=", "batch_size=", "model.path=", "model.class_name=", "data.resize=true", "quant.calib="):
        assert f"  {key}" in keys, key
    examples = [line for line in _section(out, "Examples").splitlines() if line.strip().startswith("trt-pipeline ")]
    assert len(examples) == 5
    assert not list(tmp_path.iterdir()), "--help writes nothing"
    hydra_help = _cli(["--hydra-help"], tmp_path)
    assert hydra_help.returncode == 0 and "Hydra (" in hydra_help.stdout and "hydra/help: default, pipeline" in hydra_help.stdout
