"""The Hydra configuration (``config.yaml`` and the config groups), shipped inside the package.

This folder is a package so that ``pkg://pipeline.conf`` resolves through importlib, the same way in a
source checkout and in an installed wheel; the top-level ``conf`` of the repository links here.
"""
