"""The HF-PyTorch capture script up to the GPU: arguments, outputs, manifests, the nsys wrapper.

No torch here: everything tested runs before the script's first torch import.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

# tracekit/capture/ is a top-level folder of the source tree, not part of the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit.capture import hf_pytorch as hf  # noqa: E402
from tracekit.capture.models import resolve_model  # noqa: E402


def parse(*argv: str):
    args = hf.build_parser().parse_args(list(argv))
    hf.validate(args)
    return args


def test_defaults_are_the_study_setup():
    a = parse()
    assert (a.model, a.batch, a.input_len, a.output_len, a.dtype, a.attn, a.profiler) == \
        ("llama2-7b", 1, 64, 8, "bfloat16", "sdpa", "torch")
    assert a.warmup == 1 and a.iterations == 1 and a.compile is None


@pytest.mark.parametrize("argv, problem", [
    (["--batch", "0"], "--batch must be >= 1"),
    (["--output-len", "0"], "--output-len must be >= 1"),
    (["--emit-nvtx"], "--emit-nvtx needs --profiler nsys"),
    (["--iterations", "0"], "--iterations 0"),
    (["--iterations", "0", "--kernel-sums", "--profiler", "torch"], "--iterations 0"),
    (["--meta", "novalue"], "KEY=VALUE"),
])
def test_invalid_arguments(argv, problem):
    with pytest.raises(hf.CaptureError, match=problem):
        parse(*argv)


def test_kernel_times_alone_is_allowed():
    parse("--iterations", "0", "--kernel-sums", "--profiler", "none")


@pytest.mark.parametrize("profiler, layers, expected", [
    ("torch", None, "llama3-8b_b8_i128_o16.pt.trace.json.gz"),
    ("nsys", None, "llama3-8b_b8_i128_o16.nsys-rep"),
    ("none", 2, "llama3-8b-2L_b8_i128_o16.manifest.json"),
])
def test_output_names(profiler, layers, expected):
    argv = ["--model", "llama3-8b", "--batch", "8", "--input-len", "128", "--output-len", "16",
            "--profiler", profiler, "--out-dir", "traces"]
    if layers:
        argv += ["--layers", str(layers)]
    a = parse(*argv)
    assert hf.output_path(a, resolve_model(a.model, a.layers)) == Path("traces") / expected


def test_print_config_needs_no_gpu(capsys):
    rc = hf.main(["--model", "gemma-2b", "--layers", "3", "--profiler", "nsys", "--print-config"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["config"]["num_hidden_layers"] == 3 and out["config"]["num_key_value_heads"] == 1
    assert out["out"] == "gemma-2b-3L_b1_i64_o8.nsys-rep"
    assert out["manifest"] == "gemma-2b-3L_b1_i64_o8.manifest.json"


def test_manifest_fields_carry_the_run_and_no_machine_paths(tmp_path):
    argv = ["--model", "gemma-7b", "--batch", "4", "--out", str(tmp_path / "g.pt.trace.json.gz"),
            "--meta", "note=first try", "--compile", "default"]
    a = parse(*argv)
    f = hf.manifest_fields(a, resolve_model(a.model), argv)
    assert (f["model"], f["batch"], f["input_len"], f["output_len"], f["layers"]) == ("gemma-7b", 4, 64, 8, 28)
    assert f["note"] == "first try" and f["compile"] == "default" and f["weights"] == "random"
    assert str(tmp_path) not in f["command"] and "g.pt.trace.json.gz" in f["command"]
    assert f["config"]["hidden_size"] == 3072


def test_nsys_wraps_this_script_with_the_study_trace_options():
    a = parse("--profiler", "nsys", "--nsys", "/opt/nsys/bin/nsys")
    cmd = hf.nsys_command(a, Path("out/run.nsys-rep"), ["--profiler", "nsys"])
    assert cmd[:3] == ["/opt/nsys/bin/nsys", "profile", "-t"] and cmd[3] == "cuda,nvtx"
    assert cmd[cmd.index("-o") + 1] == "out/run"  # nsys adds the suffix itself
    assert "--capture-range=cudaProfilerApi" in cmd
    assert cmd[-3:] == [str(Path(hf.__file__).resolve()), "--profiler", "nsys"]
    whole = hf.nsys_command(parse("--profiler", "nsys", "--nsys-capture", "all"), Path("r.nsys-rep"), [])
    assert not any(c.startswith("--capture-range") for c in whole)


def test_missing_nsys_is_one_clear_error(tmp_path, capsys):
    rc = hf.main(["--profiler", "nsys", "--nsys", str(tmp_path / "no-nsys"), "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "nsys not found" in err


def test_cells_file_validation_and_per_cell_commands(tmp_path):
    cells = tmp_path / "cells.json"
    cells.write_text(json.dumps([{"batch": 2, "input_len": 3, "output_len": 4}, {"batch": 1, "color": 1}]))
    with pytest.raises(hf.CaptureError, match="unknown cell keys"):
        hf.load_cells(str(cells))
    cells.write_text("[1, 2]")
    with pytest.raises(hf.CaptureError, match="list of objects"):
        hf.load_cells(str(cells))
    argv = ["--model", "gemma-2b", "--cells", str(cells), "--batch", "9", "--profiler", "none"]
    a = hf._cell_args(parse(*argv), {"batch": 2, "input_len": 3, "output_len": 4})
    one = hf._cell_argv(argv, a)
    # the manifest's command reproduces the one cell: no cells file, this cell's sizes
    assert "--cells" not in one and "9" not in one
    assert one[-6:] == ["--batch", "2", "--input-len", "3", "--output-len", "4"]


def test_cli_forwards_to_the_script(tmp_path):
    from tracekit.outputs.cli import main

    r = CliRunner().invoke(main, ["capture", "hf", "--model", "llama2-7b", "--layers", "1", "--print-config"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["config"]["num_hidden_layers"] == 1
    r = CliRunner().invoke(main, ["capture", "hf", "--model", str(tmp_path / "none.json")])
    assert r.exit_code == 1
    r = CliRunner().invoke(main, ["capture", "hf", "--help"])
    assert r.exit_code == 0 and "--kernel-sums" in r.output and "--emit-nvtx" in r.output


def test_script_runs_standalone_without_torch(tmp_path):
    import subprocess

    script = Path(hf.__file__)
    env = dict(os.environ, PYTHONPATH="")
    p = subprocess.run([sys.executable, str(script), "--model", "nope"], capture_output=True, text=True,
                       cwd=tmp_path, env=env)
    assert p.returncode == 1
    assert p.stderr.strip().startswith("tracekit: error: nope:") and "Traceback" not in p.stderr


def test_no_gpu_stack_is_one_clear_error(tmp_path, capsys):
    # This machine (and CI) has no torch or no GPU: the run must stop with one line, no traceback.
    rc = hf.main(["--model", "gemma-2b", "--layers", "1", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "capture` extra" in err or "no CUDA GPU" in err
    assert not any(tmp_path.iterdir())  # nothing half-written
