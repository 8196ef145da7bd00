"""The user-facing edge: the wheel installed non-editable runs from any directory, and a user's model
class in a file runs end to end without any environment set-up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="", PYTHONPATH="")


def _only_report(cwd: Path, run_glob: str) -> dict:
    """The one report.json written under ``cwd`` (outputs stay relative to the directory the user runs in)."""
    found = sorted(cwd.glob(f"{run_glob}/report.json"))
    assert len(found) == 1, (found, sorted(p.relative_to(cwd) for p in cwd.rglob("*") if p.is_file())[:40])
    return json.loads(found[0].read_text())


def _source_copy(dst: Path) -> Path:
    # Build from a copy: an in-tree build writes build/ and *.egg-info into the checkout, which parallel
    # test workers (and the user's tree) should never see.
    src = dst / "src"
    shutil.copytree(REPO / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    return src


def _venv_seeing_this_interpreters_packages(path: Path) -> Path:
    """A venv (``--system-site-packages``) that also sees this interpreter's packages (torch, onnx...).

    When tests run inside a venv, ``--system-site-packages`` only reaches the base interpreter's packages;
    a ``.pth`` line appends this interpreter's site-packages after the new venv's own, so the wheel installed
    into the new venv is the ``pipeline`` that gets imported (``.pth`` files in an appended folder, such as
    an editable install's, are not processed).
    """
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True, timeout=300)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site_dir = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_dir / "zz_parent_env.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return python


@pytest.mark.slow
def test_wheel_installed_non_editable_runs_from_any_directory(tmp_path):
    src = _source_copy(tmp_path)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(dist), str(src)], check=True, timeout=300, env=ENV)
    (wheel,) = dist.glob("trt_pipeline-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"pipeline/conf/__init__.py", "pipeline/conf/config.yaml", "pipeline/conf/hydra/help/pipeline.yaml",
            "pipeline/conf/model/resnet18.yaml", "pipeline/conf/hardware/h100_sxm.yaml"} <= names
    assert "trt-pipeline = pipeline.run:main" in entry_points

    python = _venv_seeing_this_interpreters_packages(tmp_path / "venv")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "--ignore-installed", str(wheel)], check=True, timeout=300, env=ENV)
    script = python.parent / ("trt-pipeline.exe" if os.name == "nt" else "trt-pipeline")
    user_dir = tmp_path / "user"
    user_dir.mkdir()

    where = subprocess.run([str(python), "-c", "import pipeline, pipeline.core.config as c; print(pipeline.__file__, c.CONF_DIR)"],
                           cwd=user_dir, check=True, capture_output=True, text=True, env=ENV).stdout.split()
    site_dir = str((tmp_path / "venv").resolve())
    assert all(p.startswith(site_dir) for p in where), where  # the installed copy, not the checkout

    helped = subprocess.run([str(script), "--help"], cwd=user_dir, capture_output=True, text=True, timeout=120, env=ENV)
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "== Stages" in helped.stdout and "model: bert, custom" in helped.stdout and "_schema" not in helped.stdout

    res = subprocess.run([str(script), "model=digits_cnn", "model.pretrained=false", "stages=[export,analyze,report]"],
                         cwd=user_dir, capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = _only_report(user_dir, "outputs/digits_cnn-fp32-bs1/*")
    assert rep["stages"]["export"]["status"] == "ran" and rep["stages"]["report"]["status"] == "ran"
    assert rep["analysis"]["totals"]["flops"] > 0
    assert rep["environment"]["command_line"].startswith("trt-pipeline model=digits_cnn")
    assert rep["environment"]["config"]["engines_dir"] == str(user_dir / "engines")

    as_module = subprocess.run([str(python), "-m", "pipeline.run", "--help"], cwd=user_dir, capture_output=True,
                               text=True, timeout=120, env=ENV)
    assert as_module.returncode == 0 and "== Examples ==" in as_module.stdout, as_module.stderr[-2000:]


MY_MODEL = """
import torch
from my_blocks import conv_block  # a module next to this file


class TinyNet(torch.nn.Module):
    def __init__(self, width=4, classes=3):
        super().__init__()
        self.features = conv_block(3, width)
        self.head = torch.nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))
"""

MY_BLOCKS = """
import torch


def conv_block(cin, cout):
    return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.BatchNorm2d(cout), torch.nn.ReLU())
"""


def test_user_model_file_runs_end_to_end_through_run_py(tmp_path):
    (tmp_path / "my_models").mkdir()
    (tmp_path / "my_models" / "tiny.py").write_text(MY_MODEL)
    (tmp_path / "my_models" / "my_blocks.py").write_text(MY_BLOCKS)
    args = ["model=custom", "model.path=my_models/tiny.py", "model.class_name=TinyNet", "+model.kwargs={width:6}",
            "model.input_kind=image", "model.input_shape=[3,16,16]", "model.num_classes=3",
            "stages=[export,analyze,report]"]
    res = subprocess.run([sys.executable, str(REPO / "pipeline" / "run.py"), *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = _only_report(tmp_path, "outputs/custom-fp32-bs1/*")
    assert "TinyNet from " + str(tmp_path / "my_models" / "tiny.py") in rep["model"]["notes"]
    assert rep["model"]["inputs"][0]["shape"] == [3, 16, 16]
    assert rep["model"]["task"] == "classification" and rep["model"]["num_classes"] == 3
    assert rep["model"]["parameters"] == (3 * 6 * 9 + 6) + 2 * 6 + (6 * 3 + 3)  # conv, batch norm, head (width=6)
    # Conv 3->6 3x3 on 16x16 plus the 6->3 head: the analysis sees the user's layers.
    conv_macs, head_macs = 16 * 16 * 6 * 3 * 9, 6 * 3
    assert rep["analysis"]["totals"]["macs"] >= conv_macs + head_macs
    assert rep["stages"]["export"]["status"] == "ran"


def test_user_model_errors_reach_the_console_with_the_fix(tmp_path):
    (tmp_path / "tiny.py").write_text(MY_MODEL)
    (tmp_path / "my_blocks.py").write_text(MY_BLOCKS)
    res = subprocess.run([sys.executable, str(REPO / "pipeline" / "run.py"), "model=custom", "model.path=tiny.py",
                          "model.class_name=Tiny", "stages=[export]"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert res.returncode != 0
    assert "defines no class or function of that name" in res.stderr and "TinyNet" in res.stderr
    assert "Traceback" not in res.stderr
