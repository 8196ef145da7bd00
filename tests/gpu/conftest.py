"""Shared fixtures of the GPU tests: they skip, with TensorRT's own reason, where it cannot run."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ready():
    """TensorRT's status line (library and GPU); skips the test with the reason when TensorRT cannot run here."""
    from pipeline.trt import tensorrt_status

    ok, why = tensorrt_status()
    if not ok:
        pytest.skip(why)
    return why
