"""Pruning (issue: L1-norm channel pruning, 2:4 fine-grained structured sparsity; seed chapter 4.4).

Two ways to make a trained model cheaper before it is exported and built:

- **Channel pruning** (:mod:`pipeline.prune.channels`): remove whole output channels with the smallest L1
  norm, for real (smaller tensors, fewer MACs on any hardware), through Torch-Pruning's DepGraph, which keeps
  batch norms, the next layers' inputs, residual adds, concats and depthwise convs consistent.
  :func:`~pipeline.prune.channels.prune_channels` -> :class:`~pipeline.prune.channels.ChannelPruneResult`;
  :func:`~pipeline.prune.channels.ratios_from_latency` prunes the slow layers more.
- **2:4 sparsity** (:mod:`pipeline.prune.sparsity`): zero 2 of every 4 consecutive weights along the input
  channels, the pattern Sparse Tensor Cores run at twice the math rate (TensorRT ``SPARSE_WEIGHTS``).
  :func:`~pipeline.prune.sparsity.apply_24` masks a torch model, :func:`~pipeline.prune.sparsity.check_24`
  tells which layers of an ONNX file (plain or Q/DQ) hold the pattern.
- **Fine-tuning** (:mod:`pipeline.prune.finetune`): a few epochs of cross-entropy that win back the accuracy
  lost, keeping a 2:4 pattern fixed (the ASP recipe: prune a trained model, retrain with the masks fixed).

Importing this package imports neither torch nor Torch-Pruning: import the submodule you need
(``from pipeline.prune.channels import prune_channels``); torch is imported when a function runs.
"""
