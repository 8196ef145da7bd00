"""Atomic writes: an interrupted write leaves neither a partial file nor a temp file behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.artifacts import atomic_path, file_sha256, short_hash, write_json, write_text


def test_atomic_path_renames_on_success(tmp_path):
    final = tmp_path / "sub" / "model.onnx"
    with atomic_path(final) as tmp:
        assert tmp != final and tmp.suffix.endswith(".onnx")
        tmp.write_bytes(b"abc")
        assert not final.exists()
    assert final.read_bytes() == b"abc"
    assert sorted(p.name for p in final.parent.iterdir()) == ["model.onnx"]


def test_atomic_path_keeps_old_file_and_cleans_up_on_failure(tmp_path):
    final = tmp_path / "report.json"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("interrupted")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_json_converts_numpy_and_rejects_nan(tmp_path):
    p = write_json(tmp_path / "a.json", {"x": np.float32(1.5), "v": np.arange(3), "p": tmp_path})
    assert json.loads(p.read_text()) == {"x": 1.5, "v": [0, 1, 2], "p": str(tmp_path)}
    with pytest.raises(ValueError):
        write_json(tmp_path / "b.json", {"x": float("nan")})
    assert not (tmp_path / "b.json").exists()


def test_hashes_are_stable(tmp_path):
    assert short_hash({"b": 1, "a": 2}) == short_hash({"a": 2, "b": 1})
    assert short_hash({"a": 1}) != short_hash({"a": 2})
    write_text(tmp_path / "f", "hello")
    assert file_sha256(tmp_path / "f") == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
