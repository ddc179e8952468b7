"""Capture LLM inference traces for tracekit: HF-PyTorch and TensorRT-LLM runners, sweeps, manifests.

Nothing here imports torch at module level, so the planners and manifests work (and are tested)
on machines without a GPU stack; only the runner's GPU code path needs the `capture` extra.
Nothing here imports the rest of tracekit either (`tracekit/__init__` is import-free): on a GPU
machine without tracekit's dependencies, `python tracekit/capture/hf_pytorch.py ...` runs from a
checkout. (summarize.py, which draws tracekit's charts, is the one exception, used where tracekit is.)
"""
