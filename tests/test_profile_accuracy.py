"""The one accuracy module: backend-vs-ONNX-Runtime over several batches (Polygraphy Comparator with the
runner interface both backends share), and the three former ``compare_outputs`` behind one module.

The runner under test is ONNX Runtime itself (Polygraphy's OnnxrtRunner over the pipeline's session),
on the same model, or wrapped so that one batch's outputs come back changed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from pipeline.core import accuracy
from pipeline.core.accuracy import compare_runners, compare_with_onnxruntime
from pipeline.core.errors import PipelineError
from pipeline.profile.stage import batches_of
from pipeline.ort import onnxrt_runner
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


class FlipOneBatch(BaseRunner):
    """ONNX Runtime, except that the outputs of one given batch come back with the classes reversed."""

    def __init__(self, path, flip_x):
        super().__init__(name="flipped")
        self.path, self.flip_x = str(path), flip_x

    def activate_impl(self):
        self.sess = ort.InferenceSession(self.path)

    def get_input_metadata_impl(self):
        return TensorMetadata().add("x", dtype=np.float32, shape=[None, 16])

    def infer_impl(self, feed_dict):
        y = self.sess.run(None, dict(feed_dict))[0]
        self.inference_time = 0.0
        return {"y": y[:, ::-1] if np.array_equal(feed_dict["x"], self.flip_x) else y}

    def deactivate_impl(self):
        del self.sess


def test_same_model_agrees_on_every_sample(classifier):
    batches = _batches(8, 1)
    runner = onnxrt_runner(classifier, batches[0], name="under-test")
    res = compare_with_onnxruntime(runner, batches, classifier, "int8")
    assert res["passed"] and res["samples"] == 8 and res["batches"] == 8
    assert res["top1_agreement"] == 1.0 and res["cosine"] == pytest.approx(1.0)
    assert res["runner"] == "under-test" and res["reference"].startswith("onnxruntime")


def test_one_wrong_batch_shows_in_top1_over_all_samples(classifier):
    sess = ort.InferenceSession(str(classifier))
    batches = _batches(4, 2, seed=1)
    refs = np.concatenate([sess.run(None, b)[0] for b in batches])
    flipped = refs.copy()
    flipped[4:6] = flipped[4:6, ::-1]
    expected = float(np.mean(refs.argmax(1) == flipped.argmax(1)))
    res = compare_with_onnxruntime(FlipOneBatch(classifier, batches[2]["x"]), batches, classifier, "int8")
    assert res["samples"] == 8 and res["top1_agreement"] == pytest.approx(expected) and expected < 1.0
    assert not res["passed"] and any(c.startswith("top1_agreement") for c in res["failed_checks"])
    # The same numbers as the precision check on the concatenated outputs directly.
    direct = accuracy.precision_check(refs, flipped.astype(np.float32), "int8")
    assert res["cosine"] == pytest.approx(direct["cosine"]) and res["rel_l2"] == pytest.approx(direct["rel_l2"])


def test_no_batches_and_wrong_inputs_are_clear_errors(classifier):
    with pytest.raises(PipelineError, match="No input batches"):
        compare_with_onnxruntime(FlipOneBatch(classifier, None), [], classifier, "fp32")
    with pytest.raises(PipelineError, match="wrong dtype: x is float64"):
        compare_with_onnxruntime(FlipOneBatch(classifier, None), [{"x": np.zeros((2, 16))}], classifier, "fp32")
    with pytest.raises(PipelineError, match="runners"):
        compare_runners(FlipOneBatch(classifier, None), FlipOneBatch(classifier, None), _batches(1, 2), "fp32")


def test_the_three_former_compare_outputs_are_this_module():
    import importlib.util

    from pipeline.export import onnx_export

    # the export check and the INT8 metrics have no wrapper of their own left
    assert not hasattr(onnx_export, "compare_outputs")
    assert importlib.util.find_spec("pipeline.quantize.metrics") is None
    ref = [np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)]
    act = [ref[0] + np.float32(1e-3)]
    # the export stage's defaults: atol 1e-4 + rtol 1e-3 * 3 = 3.1e-3
    res = accuracy.allclose_outputs(ref, act, ["y"], onnx_export.DEFAULT_ATOL, onnx_export.DEFAULT_RTOL)
    assert res["passed"] and res["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert res["outputs"]["y"]["max_abs_ref"] == 3.0
    assert not accuracy.allclose_outputs(ref, act, ["y"], 1e-4, 1e-4)["passed"]  # 1e-3 > 1e-4 + 1e-4 * 3


def test_task_metrics_numbers():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    test = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    m = accuracy.task_metrics(ref, test, labels=np.array([0, 1, 0, 0]))
    assert m["top1_agreement"] == 0.75 and m["accuracy"] == 0.75 and m["reference_accuracy"] == 1.0
    assert m["output_cosine"] == pytest.approx(0.75) and m["primary"] == "accuracy"
    lo, hi = m["accuracy_ci95"]
    assert (lo, hi) == pytest.approx(accuracy.wilson_interval(3, 4)) and lo < 0.75 < hi


def test_label_accuracy_and_one_cosine():
    # (N, 1, 3) outputs are flattened per sample before the argmax
    out = np.array([[[0.1, 0.7, 0.2]], [[0.9, 0.0, 0.1]], [[0.2, 0.3, 0.5]]])
    assert accuracy.label_hits(out, np.array([[1], [2], [2]])).tolist() == [True, False, True]
    assert accuracy.label_accuracy(out, np.array([1, 2, 2])) == pytest.approx(2 / 3)
    # the precision check's cosine is cosine_per_sample's: two all-zero rows agree (cosine 1)
    ref = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    test = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    assert accuracy.precision_check(ref, test, "int8")["cosine"] == pytest.approx((1.0 + 0.5 ** 0.5) / 2)


def test_engine_check_speaks_the_task_of_the_model():
    # Four embeddings in two tight pairs (0,1) and (2,3); the test moves sample 1 next to sample 2 but keeps every
    # row's cosine to its reference high, and keeps each row's arg-max dimension.
    ref = np.array([[1.0, 0.10, 0.0], [1.0, 0.12, 0.0], [1.0, 0.3, 0.02], [1.0, 0.32, 0.0]], np.float32)
    test = ref.copy()
    test[1] = [1.0, 0.29, 0.02]
    cls = accuracy.precision_check(ref, test, "int8", "classification")
    assert cls["top1_agreement"] == 1.0 and "nn_agreement" not in cls and cls["passed"]
    # an embedder: arg-max of the embedding is not checked; its nearest neighbours are (1 -> 2 now, 0 -> 2 too)
    emb = accuracy.precision_check(ref, test, "int8", "embedding")
    nn_ref, nn_test = accuracy.nearest_neighbours(ref), accuracy.nearest_neighbours(test)
    assert "top1_agreement" not in emb and emb["nn_agreement"] == pytest.approx((nn_ref == nn_test).mean())
    assert emb["nn_agreement"] < accuracy.EMBEDDING_MIN_NN_AGREEMENT and not emb["passed"]
    assert emb["cosine"] > 0.99 and any(c.startswith("nn_agreement=") for c in emb["failed_checks"])
    assert emb["tolerance"]["nn_agreement"] == accuracy.EMBEDDING_MIN_NN_AGREEMENT and emb["task"] == "embedding"
    # float precisions keep their relative-error limit only; feature maps get no arg-max check
    assert "nn_agreement" not in accuracy.precision_check(ref, test, "fp16", "embedding")["tolerance"]
    feats = accuracy.precision_check(ref, test, "int8", "features")
    assert "top1_agreement" not in feats and "top1_agreement" not in feats["tolerance"] and feats["passed"]
    # unknown task (no export summary): as before, 2-D outputs get the top-1 check
    assert "top1_agreement" in accuracy.precision_check(ref, test, "int8")
