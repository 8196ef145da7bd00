"""Explain engines: per-layer gap to the roofline by cause (:mod:`.gap`) and two engines side by side (:mod:`.diff`).

``python -m pipeline.explain RUN_A [RUN_B]`` on run folders of the profile stage; :func:`pipeline.explain.stage.run`
from code.
"""
