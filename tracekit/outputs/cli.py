"""The `tracekit` command. Each command group lives in its own module; this file only wires them."""

from __future__ import annotations

import importlib

import click

from tracekit.errors import TracekitError

# (module, attribute) of each command or group; a module owns its commands so that work on
# one area never edits another's file.
_COMMANDS = [
    ("tracekit.outputs.cli_core", "import_cmd"),
    ("tracekit.outputs.cli_core", "runs_cmd"),
    ("tracekit.outputs.cli_core", "query_cmd"),
    ("tracekit.outputs.cli_core", "meta_cmd"),
    ("tracekit.outputs.cli_analysis", "stages_cmd"),
    ("tracekit.outputs.cli_analysis", "composition_cmd"),
    ("tracekit.outputs.cli_analysis", "steps_cmd"),
    ("tracekit.outputs.cli_analysis", "top_cmd"),
    ("tracekit.outputs.cli_rules", "rules_group"),
    ("tracekit.outputs.cli_rules", "classify_cmd"),
    ("tracekit.outputs.cli_charts", "chart_group"),
    ("tracekit.outputs.cli_charts", "report_cmd"),
    ("tracekit.outputs.cli_charts", "diff_cmd"),
    ("tracekit.outputs.cli_charts", "export_group"),
    ("tracekit.outputs.cli_capture", "capture_group"),
    ("tracekit.outputs.cli_capture", "sweep_cmd"),
    ("tracekit.outputs.cli_roofline", "roofline_cmd"),
    ("tracekit.outputs.cli_dataset", "dataset_group"),
    ("tracekit.outputs.cli_ranks", "ranks_cmd"),
]


class _Main(click.Group):
    def invoke(self, ctx: click.Context):
        # A TracekitError that escapes a command is still one line: the views a command reads
        # first may be made (and found unreadable) after open (tracekit.api.Database).
        try:
            return super().invoke(ctx)
        except TracekitError as exc:
            from tracekit.outputs.cli_core import fail

            fail(str(exc))


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tracekit")
def main() -> None:
    """Where does the GPU time of LLM inference go?

    Import Nsight Systems and PyTorch profiler traces into DuckDB, classify kernels, split
    summarization (prefill) from generation (decode), and chart the result.
    """


def _register() -> None:
    for module, attr in _COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A command module not written yet must not break the others.
            if exc.name == module:
                continue
            raise
        cmd = getattr(mod, attr, None)
        if cmd is not None:
            main.add_command(cmd)


_register()

if __name__ == "__main__":
    main()
