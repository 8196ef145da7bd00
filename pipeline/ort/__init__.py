# TEMPORARY (lead's tree only, replaced by helper H1's package at merge)
from pipeline.profile import measure_onnxruntime  # noqa
