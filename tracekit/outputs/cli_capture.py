"""`tracekit capture hf|trtllm` and `tracekit sweep`: thin doors to the scripts in tracekit/capture/.

The scripts keep their own argparse parsers (they also run stand-alone on the GPU machine), so
these commands hand their arguments over untouched; `--help` shows the script's full options.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import click

_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "allow_interspersed_args": False}


def _capture_module(name: str) -> ModuleType:
    """tracekit.capture.<name> (a subpackage: installed with tracekit, and runnable on its own)."""
    return importlib.import_module(f"tracekit.capture.{name}")


def _run(module: str, prog: str, args: list[str]) -> None:
    rc = _capture_module(module).main(list(args), prog=prog)
    sys.exit(rc)


@click.group("capture")
def capture_group() -> None:
    """Record LLM inference traces (with a manifest beside each) for `tracekit import`."""


@capture_group.command("hf", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def capture_hf(args: tuple[str, ...]) -> None:
    """HF-transformers inference: summarization + greedy generation, profiled with torch or nsys.

    Needs torch and transformers (the `capture` extra) and a CUDA GPU. `tracekit capture hf --help`
    lists the options (model, batch, input/output length, dtype, attention, layers, warm-up,
    torch.compile, profiler).
    """
    _run("hf_pytorch", "tracekit capture hf", list(args))


@capture_group.command("trtllm", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def capture_trtllm(args: tuple[str, ...]) -> None:
    """TensorRT-LLM inference under nsys (engine built from a config). Not runnable on this project's
    machines: `--dry-run` prints the exact commands. `--help` lists the options.
    """
    _run("trtllm", "tracekit capture trtllm", list(args))


@click.command("sweep", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sweep_cmd(args: tuple[str, ...]) -> None:
    """Run a sweep spec (TOML grids of model x batch x input x output); skips runs already done and
    resumes after a crash. `tracekit sweep --help` lists the options.
    """
    _run("sweep", "tracekit sweep", list(args))
