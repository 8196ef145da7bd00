"""The data sources behind :func:`pipeline.data.load_dataset`, one function per ``data.name``.

Every source has the signature ``(cfg, specs, split, n, tokenizer) -> Dataset`` and returns arrays
whose per-sample shape and dtype equal the model's :class:`InputSpec` exactly.

Finite sources (folder, npz, text: every ``data.corpus``) split their samples the same way: a seeded permutation, evaluation
samples taken from its front and calibration samples from its last ``data.calib_samples`` entries,
so the two never overlap and the evaluation set does not change when ``calib_samples`` does.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from pipeline.data.dataset import Dataset
from pipeline.data.image import IMAGENET_MEAN, IMAGENET_STD, adapt_images
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.core.config import DataConfig
    from pipeline.core.specs import InputSpec

#: Stream ids that keep the random calib and eval samples independent.
_SPLIT_STREAM = {"calib": 1, "eval": 2}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Token-id range used when an input's vocabulary is unknown: 0 and 1 exist in any embedding table.
_UNKNOWN_VOCAB = 2


def is_token_spec(spec: "InputSpec") -> bool:
    """Integer inputs are token ids, masks or segment ids."""
    return np.issubdtype(np.dtype(spec.dtype), np.integer)


def token_role(spec: "InputSpec") -> str:
    """``mask``, ``segment`` or ``ids``, from the input's name (attention_mask, token_type_ids...)."""
    name = spec.name.lower()
    if "mask" in name:
        return "mask"
    if "type" in name or "segment" in name:
        return "segment"
    return "ids"


def _concrete(spec: "InputSpec", source: str) -> tuple[int, ...]:
    if any(d <= 0 for d in spec.shape):
        raise PipelineError(
            f"{source}: input '{spec.name}' has a dynamic dimension {tuple(spec.shape)} (-1 = not fixed)",
            "set model.input_shape to the per-sample shape to use (same rank, no batch dim)",
        )
    return tuple(spec.shape)


def misfit_error(source: str, sample_shape: tuple[int, ...], spec: "InputSpec", resizable: bool) -> PipelineError:
    """The error for data whose per-sample shape does not fit a model input (both shapes named).

    Args:
        source: where the data comes from, e.g. ``data=npz /x/calib.npz ('x')``.
        sample_shape: the data's shape of one sample.
        spec: the model input it should feed.
        resizable: whether ``data.resize=true`` could adapt it (images with 1 or C channels).
    """
    fix = f"store samples shaped {list(spec.shape)} (per sample, no batch dimension)"
    if resizable:
        fix = f"pass data.resize=true to resize (bilinear) and replicate grayscale channels, or {fix}"
    return PipelineError(
        f"{source}: the data's samples are shaped {list(sample_shape)}, but model input '{spec.name}' takes "
        f"{list(spec.shape)}",
        f"{fix}; or set model.input_shape to the data's shape if the model takes it",
    )


def random_inputs(specs: "list[InputSpec]", n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` random samples per spec: N(0, 1) floats, ids uniform in ``[0, vocab)``, masks of ones.

    Args:
        specs: model inputs.
        n: samples.
        rng: numpy generator (seeded by the caller).
    """
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = (n, *_concrete(spec, "random"))
        if not is_token_spec(spec):
            out[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)
        elif token_role(spec) == "mask":
            out[spec.name] = np.ones(shape, dtype=spec.dtype)
        elif token_role(spec) == "segment":
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
        else:
            out[spec.name] = rng.integers(0, spec.vocab_size or _UNKNOWN_VOCAB, shape).astype(spec.dtype)
    return out


def _pick(total: int, n: int, split: str, cfg: "DataConfig", what: str) -> np.ndarray:
    # Indices of the n samples of `split` among `total`; see the module docstring for the scheme.
    perm = np.random.default_rng(cfg.seed).permutation(total)
    reserve = min(cfg.calib_samples, total)
    pool = perm[total - reserve :] if split == "calib" else perm[: total - reserve]
    if n > len(pool):
        if split == "calib":
            hint = f"lower data.calib_samples (<= {total - 1}) or add data"
            msg = f"{what} has {total} samples; calibration asks for {n} of the {reserve} set apart by data.calib_samples"
        else:
            hint = "add data, or lower data.num_samples / data.calib_samples"
            msg = f"{what} has {total} samples; evaluation asks for {n} and data.calib_samples={cfg.calib_samples} are kept apart for calibration"
        raise PipelineError(msg, hint)
    return pool[:n]


def _single_image_spec(specs: "list[InputSpec]", source: str) -> "InputSpec":
    if len(specs) != 1 or is_token_spec(specs[0]):
        desc = ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs)
        hint = (
            "token models need text: use data=text (or data=random, or data=npz with token ids)"
            if any(is_token_spec(s) for s in specs)
            else "use data=random or data=npz for models with several inputs"
        )
        raise PipelineError(f"data={source} provides images; the model takes {desc}", hint)
    if len(specs[0].shape) not in (2, 3):
        raise PipelineError(
            f"data={source} provides images; the model input '{specs[0].name}' is shaped {list(specs[0].shape)}",
            "use data=random or data=npz with arrays of the model's shape",
        )
    _concrete(specs[0], source)
    return specs[0]


def load_random(cfg: "DataConfig", specs: "list[InputSpec]", split: str, n: int, tokenizer: Any) -> Dataset:
    """Seeded random inputs; calib and eval use independent streams of ``cfg.seed``."""
    rng = np.random.default_rng([cfg.seed, _SPLIT_STREAM[split]])
    return Dataset("random", random_inputs(specs, n, rng), None, f"random {split} inputs (seed {cfg.seed})")


def load_digits(cfg: "DataConfig", specs: "list[InputSpec]", split: str, n: int, tokenizer: Any) -> Dataset:
    """scikit-learn digits: eval = digits_cnn's test split (first n, in order); calib from the train split."""
    from pipeline.data.digits import digits_split

    spec = _single_image_spec(specs, "digits")
    fits = tuple(spec.shape) in ((1, 8, 8), (8, 8))
    if not fits and not cfg.resize:
        raise misfit_error("data=digits (scikit-learn's 8x8 digits)", (1, 8, 8), spec, resizable=True)
    d = digits_split()
    if split == "eval":
        if n > len(d.test_x):
            raise PipelineError(
                f"digits: the test split has {len(d.test_x)} samples, asked for {n}",
                f"set data.num_samples <= {len(d.test_x)}",
            )
        x, y, origin = d.test_x[:n], d.test_y[:n], "test split"
    else:
        if n > len(d.train_x):
            raise PipelineError(
                f"digits: the train split has {len(d.train_x)} samples, asked for {n} calibration samples",
                f"set data.calib_samples <= {len(d.train_x)}",
            )
        idx = np.random.default_rng(cfg.seed).permutation(len(d.train_x))[:n]
        x, y, origin = d.train_x[idx], d.train_y[idx], f"train split (seed {cfg.seed})"
    images = adapt_images(x[:, None], spec.shape, "digits").astype(spec.dtype)
    notes = [] if fits else [
        f"digits -> input '{spec.name}': resized [1, 8, 8] -> {list(spec.shape)} (bilinear"
        f"{', channels replicated' if len(spec.shape) == 3 and spec.shape[0] > 1 else ''}; data.resize=true)"
    ]
    return Dataset(
        "digits",
        {spec.name: images},
        y.copy(),
        f"scikit-learn digits, {n} samples of the {origin}, scaled to [0,1]"
        + ("" if fits else f", resized 1x8x8 -> {list(spec.shape)}"),
        notes,
    )


def _list_images(root: Path) -> tuple[list[Path], list[str] | None]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    rel = [p.relative_to(root) for p in files]
    # Labels only when every image sits directly in a class subfolder (ImageFolder layout).
    if files and all(len(r.parts) == 2 for r in rel):
        return files, [r.parts[0] for r in rel]
    return files, None


def load_folder(cfg: "DataConfig", specs: "list[InputSpec]", split: str, n: int, tokenizer: Any) -> Dataset:
    """PNG/JPEG images under ``cfg.path``, resized (bilinear) to the input and normalized."""
    spec = _single_image_spec(specs, "folder")
    root = _existing(cfg, want_dir=True)
    files, classes = _list_images(root)
    if not files:
        raise PipelineError(
            f"data=folder: no PNG or JPEG images under {root}",
            "put .png/.jpg images there (optionally in one subfolder per class), or use data=random",
        )
    idx = _pick(len(files), n, split, cfg, f"folder {root}")
    shape = tuple(spec.shape) if len(spec.shape) == 3 else (1, *spec.shape)
    c, h, w = shape
    if c not in (1, 3):
        raise PipelineError(
            f"data=folder reads grayscale or RGB images; the model wants {c} channels",
            "use data=npz with arrays of the model's shape",
        )
    from PIL import Image, UnidentifiedImageError

    batch = np.empty((n, c, h, w), dtype=np.float32)
    resized: dict[tuple[int, int], int] = {}  # original (width, height) -> images resized from it
    for k, i in enumerate(idx):
        try:
            with Image.open(files[i]) as img:
                if img.size != (w, h):
                    if not cfg.resize:
                        raise misfit_error(f"data=folder: image {files[i]} ({img.size[0]}x{img.size[1]} pixels)",
                                           (c, img.size[1], img.size[0]), spec, resizable=True)
                    resized[img.size] = resized.get(img.size, 0) + 1
                img = img.convert("RGB" if c == 3 else "L").resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as err:
            raise PipelineError(f"data=folder: cannot read image {files[i]}: {err}", "remove or fix the file") from err
        batch[k] = arr.transpose(2, 0, 1) if c == 3 else arr[None]
    notes = []
    if resized:
        sizes = ", ".join(f"{sw}x{sh} ({count})" for (sw, sh), count in sorted(resized.items())[:5])
        more = f" and {len(resized) - 5} other sizes" if len(resized) > 5 else ""
        notes.append(f"folder -> input '{spec.name}': {sum(resized.values())} of {n} images resized to {w}x{h} "
                     f"pixels (bilinear; data.resize=true) from width x height {sizes}{more}")
    how = "scaled to [0,1]"
    if cfg.normalize == "imagenet" and c == 3:
        batch = (batch - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
        how = "scaled to [0,1], ImageNet mean/std"
    elif cfg.normalize not in ("imagenet", "unit"):
        raise PipelineError(f"unknown data.normalize '{cfg.normalize}'", "use imagenet or unit")
    labels = None
    if classes is not None:
        names = sorted(set(classes))
        labels = np.array([names.index(classes[i]) for i in idx], dtype=np.int64)
    images = batch.reshape(n, *spec.shape).astype(spec.dtype)
    label_note = f", labels from {len(set(classes))} subfolders" if classes else ", no labels"
    size_note = f" resized to {w}x{h} pixels" if resized else ""
    return Dataset("folder", {spec.name: images}, labels, f"{n} images from {root}{size_note}, {how}{label_note}", notes)


def _existing(cfg: "DataConfig", want_dir: bool) -> Path:
    kind = "folder" if want_dir else "npz"
    if not cfg.path:
        raise PipelineError(f"data={kind} needs data.path", f"pass data.path=/path/to/{'images' if want_dir else 'data.npz'}")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise PipelineError(f"data={kind}: {path} does not exist", "check data.path (relative paths start from the working directory)")
    if want_dir != path.is_dir():
        raise PipelineError(
            f"data={kind}: {path} is {'not ' if want_dir else ''}a directory",
            "data=folder takes a directory of images; data=npz takes a .npz file",
        )
    return path


def _fit_array(arr: np.ndarray, spec: "InputSpec", path: Path, key: str, resize: bool) -> tuple[np.ndarray, str]:
    # Fit one npz array to one input; returns the array and a note on what was done ("" if nothing).
    shape = _concrete(spec, "npz")
    if is_token_spec(spec):
        if not np.issubdtype(arr.dtype, np.integer):
            raise PipelineError(
                f"npz {path}: '{key}' is {arr.dtype}, input '{spec.name}' takes integer token ids",
                "store token ids as an integer array",
            )
        if arr.shape[1:] != shape:
            raise PipelineError(
                f"npz {path}: '{key}' has per-sample shape {list(arr.shape[1:])}, input '{spec.name}' needs {list(shape)}",
                f"re-tokenize to length {shape[-1]}, or set model.input_shape={list(shape)}",
            )
        if spec.vocab_size and token_role(spec) == "ids" and arr.size and (arr.min() < 0 or arr.max() >= spec.vocab_size):
            raise PipelineError(
                f"npz {path}: '{key}' has ids in [{arr.min()}, {arr.max()}], the model's vocabulary is [0, {spec.vocab_size})",
                "tokenize with the model's vocabulary, or set model.vocab_size",
            )
        return arr.astype(spec.dtype), ""
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise PipelineError(f"npz {path}: '{key}' has dtype {arr.dtype}", "store real numbers")
    arr = arr.astype(np.float32)
    if arr.shape[1:] == shape:
        return arr.astype(spec.dtype), ""
    source, sample = f"data=npz {path} ('{key}')", tuple(arr.shape[1:])
    if len(shape) == 3 and arr.ndim in (3, 4):
        c = shape[0]
        if arr.ndim == 3:  # (N, H, W): single-channel images without a channel axis
            x, layout = arr[:, None], "added a channel axis"
        elif arr.shape[-1] in (1, c) and arr.shape[1] not in (1, c):  # channels-last
            x, layout = arr.transpose(0, 3, 1, 2), "NHWC -> NCHW"
        else:
            x, layout = arr, ""
        if x.shape[1:] == shape:  # a layout change only: every value kept
            return np.ascontiguousarray(x).astype(spec.dtype), f"{layout} {list(sample)} -> {list(shape)}"
        if not resize:
            raise misfit_error(source, sample, spec, resizable=x.shape[1] in (1, c))
        replicated = ", channels replicated" if x.shape[1] != c else ""
        x = adapt_images(x, shape, source)
        how = f"{layout + ', ' if layout else ''}resized {list(sample)} -> {list(shape)} (bilinear{replicated}; data.resize=true)"
        return x.astype(spec.dtype), how
    if int(np.prod(sample)) == int(np.prod(shape)):  # same values, another shape (e.g. flattened)
        return arr.reshape(len(arr), *shape).astype(spec.dtype), f"reshaped {list(sample)} -> {list(shape)}"
    raise misfit_error(source, sample, spec, resizable=False)


def load_npz(cfg: "DataConfig", specs: "list[InputSpec]", split: str, n: int, tokenizer: Any) -> Dataset:
    """Arrays from a .npz file: one key per input name, or ``inputs``/``x`` for the (first) input."""
    path = _existing(cfg, want_dir=False)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise PipelineError(f"data=npz: cannot read {path}: {err}", "write it with numpy.savez(path, inputs=..., labels=...)") from err
    chosen: dict[str, tuple[str, np.ndarray]] = {}
    for i, spec in enumerate(specs):
        if spec.name in arrays:
            chosen[spec.name] = (spec.name, arrays[spec.name])
        elif i == 0 and ("inputs" in arrays or "x" in arrays):
            key = "inputs" if "inputs" in arrays else "x"
            chosen[spec.name] = (key, arrays[key])
        elif is_token_spec(spec) and token_role(spec) in ("mask", "segment"):
            continue  # filled below: full attention mask, segment 0
        else:
            chosen.clear()
            break
    if not chosen:
        raise PipelineError(
            f"npz {path} has keys {sorted(arrays)}; the model's inputs are {[s.name for s in specs]}",
            "store one array per input name, or 'inputs' (or 'x') for a single-input model",
        )
    sizes = {key: len(a) if a.ndim else 0 for key, a in chosen.values()}
    label_key = next((k for k in ("labels", "y") if k in arrays), None)
    if label_key:
        sizes[label_key] = len(arrays[label_key]) if arrays[label_key].ndim else 0
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise PipelineError(f"npz {path}: arrays disagree on the number of samples: {sizes}", "store one row per sample in every array")
    total = next(iter(sizes.values()))
    idx = np.sort(_pick(total, n, split, cfg, f"npz {path}"))
    inputs: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for spec in specs:
        if spec.name in chosen:
            key, arr = chosen[spec.name]
            inputs[spec.name], note = _fit_array(arr[idx], spec, path, key, cfg.resize)
            if note:
                notes.append(f"npz '{key}' -> input '{spec.name}': {note}")
        else:
            fill = 1 if token_role(spec) == "mask" else 0
            inputs[spec.name] = np.full((n, *_concrete(spec, "npz")), fill, dtype=spec.dtype)
            notes.append(f"input '{spec.name}': not in the file, filled with {fill}")
    labels = None
    if label_key:
        labels = arrays[label_key][idx]
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise PipelineError(f"npz {path}: '{label_key}' must be 1-D integer class labels, got {labels.dtype}{list(labels.shape)}", "store labels as an int array (N,)")
        labels = labels.astype(np.int64)
    desc = f"{n} {split} samples of {total} from {path}" + (f" ({'; '.join(notes)})" if notes else "")
    return Dataset("npz", inputs, labels, desc, notes)


def load_text(
    cfg: "DataConfig",
    specs: "list[InputSpec]",
    split: str,
    n: int,
    tokenizer: Callable[[list[str], int], dict[str, np.ndarray]] | None,
) -> Dataset:
    """Sentences of ``cfg.corpus`` (Python's help texts by default, or ``cfg.path``), tokenized for a token model."""
    from pipeline.data.text import CORPUS_LABELS, corpus_sentences, hash_tokenize

    id_specs = [s for s in specs if is_token_spec(s) and token_role(s) == "ids"]
    if not id_specs or any(not is_token_spec(s) for s in specs):
        desc = ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs)
        raise PipelineError(
            f"data=text feeds token models (int64 token ids); the model takes {desc}",
            "for image models use data=random, data=digits or data=folder",
        )
    seq_len = _concrete(id_specs[0], "text")[-1]
    corpus = corpus_sentences(cfg.corpus, cfg.path)
    origin = CORPUS_LABELS.get(cfg.corpus) or f"{cfg.path} (data.corpus=file)"
    what = "the text corpus" if cfg.corpus == "pydoc" else f"data.corpus={cfg.corpus} ({origin})"
    texts = [corpus[i] for i in _pick(len(corpus), n, split, cfg, what)]
    if tokenizer is not None:
        enc, how = tokenizer(texts, seq_len), "the model's tokenizer"
    else:
        if not id_specs[0].vocab_size:
            raise PipelineError(
                f"data=text: the vocabulary size of input '{id_specs[0].name}' is unknown",
                "use data=random, or a model with a known vocabulary (model.vocab_size)",
            )
        enc, how = hash_tokenize(texts, seq_len, id_specs[0].vocab_size), "a hash tokenizer"
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        role = token_role(spec)
        arr = enc["input_ids"] if role == "ids" else enc["attention_mask"] if role == "mask" else np.zeros_like(enc["input_ids"])
        inputs[spec.name] = np.ascontiguousarray(arr.reshape(n, *_concrete(spec, "text"))).astype(spec.dtype)
    return Dataset(
        "text",
        inputs,
        None,
        f"{n} sentences from {origin}, tokenized with {how} to {seq_len} tokens",
    )


#: ``data.name`` -> loader.
SOURCES: dict[str, Callable[..., Dataset]] = {
    "random": load_random,
    "digits": load_digits,
    "folder": load_folder,
    "npz": load_npz,
    "text": load_text,
}
