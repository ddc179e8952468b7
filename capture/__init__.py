"""Capture LLM inference traces for tracekit: HF-PyTorch and TensorRT-LLM runners, sweeps, manifests.

Nothing here imports torch at module level, so the planners and manifests work (and are tested)
on machines without a GPU stack; only the runner's GPU code path needs the `capture` extra.
"""
