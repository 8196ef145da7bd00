"""The engine-vs-ONNX-Runtime accuracy check over several batches (the comparison logic runs here;
the runner under test is ONNX Runtime itself, on the same or a changed model)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pipeline.errors import PipelineError
from pipeline.profile.stage import batches_of
from pipeline.profile.tensorrt_runner import outputs_vs_onnxruntime
from tests.onnx_models import mlp


def test_batches_of_full_batches_repeat_and_leftover():
    x = {"x": np.arange(10)[:, None]}
    two = batches_of(x, 4)
    assert [b["x"][:, 0].tolist() for b in two] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 8, 9 left out
    small = batches_of({"x": np.arange(3)[:, None]}, 4)
    assert [b["x"][:, 0].tolist() for b in small] == [[0, 1, 2, 0]]
    assert len(batches_of(x, 1)) == 10 and all(b["x"].flags.c_contiguous for b in two)


@pytest.fixture
def classifier(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(in_features=16, hidden=32, classes=10), str(path))
    return path


def _batches(n_batches, batch, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((batch, 16)).astype(np.float32)} for _ in range(n_batches)]


def test_same_model_agrees_on_every_sample(classifier):
    sess = ort.InferenceSession(str(classifier))
    res = outputs_vs_onnxruntime(lambda f: ("y", sess.run(None, f)[0]), _batches(8, 1), classifier, "int8")
    assert res["passed"] and res["samples"] == 8 and res["batches"] == 8
    assert res["top1_agreement"] == 1.0 and res["cosine"] == pytest.approx(1.0)


def test_one_wrong_batch_shows_in_top1_over_all_samples(classifier):
    sess = ort.InferenceSession(str(classifier))
    batches = _batches(4, 2, seed=1)

    def run(feed):  # the third batch's outputs come back with the classes reversed
        y = sess.run(None, feed)[0]
        return "y", (y[:, ::-1] if np.array_equal(feed["x"], batches[2]["x"]) else y)

    refs = np.concatenate([sess.run(None, b)[0] for b in batches])
    flipped = refs.copy()
    flipped[4:6] = flipped[4:6, ::-1]
    expected = float(np.mean(refs.argmax(1) == flipped.argmax(1)))
    res = outputs_vs_onnxruntime(run, batches, classifier, "int8")
    assert res["samples"] == 8 and res["top1_agreement"] == pytest.approx(expected) and expected < 1.0
    assert not res["passed"] and any(c.startswith("top1_agreement") for c in res["failed_checks"])


def test_no_batches_is_a_clear_error(classifier):
    with pytest.raises(PipelineError, match="No input batches"):
        outputs_vs_onnxruntime(lambda f: ("y", f["x"]), [], classifier, "fp32")
