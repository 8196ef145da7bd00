"""End-to-end accuracy of a quantized model against its FP32 original, on held-out data.

The metrics themselves are :func:`pipeline.core.accuracy.task_metrics` (the one accuracy module) and
the sessions :func:`pipeline.ort.ort_session` (the one session factory); this module keeps the names
the quantize stage and its report call. All metrics compare the *first* model output of the two
models over the same evaluation batches:

- ``top1_agreement``: share of samples whose argmax matches FP32 (classifiers).
- ``output_cosine``: mean over samples of the cosine between the flattened outputs.
- ``embedding_cosine``: the same for embedding models (one vector per sample).
- ``nn_agreement``: share of samples whose nearest neighbour (cosine, itself excluded) among the
  evaluation set is the same in INT8 as in FP32: does retrieval still return the same item?
- ``accuracy`` with a 95 % Wilson interval when labels exist.
"""

from __future__ import annotations

from typing import Dict, Iterable

import numpy as np

from pipeline.core.accuracy import (cosine_per_sample, nearest_neighbours, primary_task, task_metrics,
                                    wilson_interval)
from pipeline.ort import ort_session, run_first_output

Batches = Iterable[Dict[str, np.ndarray]]

#: INT8-vs-FP32 metrics (``task_metrics``) under the name the quantize stage has always called.
compare_outputs = task_metrics

__all__ = ["Batches", "compare_outputs", "cosine_per_sample", "nearest_neighbours", "ort_session", "primary_task",
           "run_first_output", "task_metrics", "wilson_interval"]
