"""Host arrays in the dtype an engine declares for each input (pure numpy: tested on the CPU).

An ONNX model exported from PyTorch declares token ids and masks as int64; TensorRT 8.6 has no
int64 tensors and builds the engine with int32 inputs (10+ may keep int64), and a model with a
float32 input may become an engine with float16 inputs. Feeding the ONNX's dtype to such an engine
fails ("Received unexpected dtype: int64. Expected int32") or, worse, reinterprets the bytes.
:func:`engine_input_array` converts each input to the engine's dtype, refusing conversions that
would change values: integers outside the target range, floats to integers, finite values beyond
float16's range.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from pipeline.core.errors import PipelineError


def _range_error(name: str, arr: np.ndarray, want: np.dtype, lo: float, hi: float) -> PipelineError:
    return PipelineError(
        f"Input {name!r} holds values in [{arr.min()}, {arr.max()}], outside the {want} range [{lo}, {hi}] "
        f"of the engine's {name!r} input; converting from {arr.dtype} would change them.",
        f"Keep {name!r} within [{lo}, {hi}] (e.g. token ids below the vocabulary size), or build the engine "
        f"on a TensorRT with {arr.dtype} inputs.",
    )


def _to_integer(name: str, arr: np.ndarray, want: np.dtype) -> np.ndarray:
    if arr.dtype.kind not in "biu":
        raise PipelineError(f"Input {name!r} is {arr.dtype}, but the engine declares {want}: converting "
                            "would truncate its values.",
                            f"Feed {name!r} as an integer array (the ONNX model's input dtype).")
    info = np.iinfo(want)
    if arr.size and arr.dtype.kind != "b" and (arr.min() < info.min or arr.max() > info.max):
        raise _range_error(name, arr, want, info.min, info.max)
    return arr.astype(want)


def _to_bool(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind != "b" and arr.size and not np.isin(arr, (0, 1)).all():
        raise PipelineError(f"Input {name!r} ({arr.dtype}) holds values other than 0 and 1, but the engine "
                            "declares bool.", f"Feed {name!r} as a 0/1 or bool mask.")
    return arr.astype(np.bool_)


def _to_float(name: str, arr: np.ndarray, want: np.dtype) -> np.ndarray:
    if want == np.float16 and arr.size and arr.dtype.kind == "f" and arr.dtype.itemsize > 2:
        finite = arr[np.isfinite(arr)]
        limit = float(np.finfo(np.float16).max)
        if finite.size and float(np.abs(finite).max()) > limit:
            raise _range_error(name, finite, want, -limit, limit)
    return arr.astype(want)


def engine_input_array(name: str, array: np.ndarray, want: np.dtype | type | str) -> np.ndarray:
    """``array`` as a C-contiguous array of dtype ``want``, values unchanged, or a PipelineError.

    Args:
        name: the input's name (named in every error).
        array: the host data, in the ONNX model's dtype (e.g. int64 ids, float32 data).
        want: the dtype the engine declares for this input (numpy dtype or its name).

    Returns:
        ``array`` itself when it already matches and is contiguous, else a converted copy:
        integers to another integer type after a range check, 0/1 integers to bool, floats to
        float16/float32 (float16 after a range check of the finite values), bools and integers to
        floats.

    Raises:
        PipelineError: values outside the target range (the message names the input, the range
            found and the target range), floats to integers, non-0/1 values to bool.
    """
    arr = np.asarray(array)
    want = np.dtype(want)
    if arr.dtype == want:
        return np.ascontiguousarray(arr)
    if want.kind in "iu":
        out = _to_integer(name, arr, want)
    elif want.kind == "b":
        out = _to_bool(name, arr)
    elif want.kind == "f":
        out = _to_float(name, arr, want)
    else:
        raise PipelineError(f"The engine declares input {name!r} as {want}, which this runner cannot feed.",
                            "Rebuild the engine from an ONNX with float, integer or bool inputs.")
    return np.ascontiguousarray(out)


def engine_inputs(feed: Mapping[str, np.ndarray], dtypes: Mapping[str, np.dtype]) -> dict:
    """:func:`engine_input_array` for every input of ``dtypes`` (feed entries the engine lacks are dropped).

    Raises:
        PipelineError: an input the engine needs is missing from ``feed``; or a conversion fails.
    """
    missing = sorted(n for n in dtypes if n not in feed)
    if missing:
        raise PipelineError(f"The engine needs inputs {missing}; got {sorted(feed)}.",
                            "Feed every model input (check the data config).")
    return {n: engine_input_array(n, feed[n], dt) for n, dt in dtypes.items()}
