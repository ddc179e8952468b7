"""Capture (issue 11 / 13): tensor-parallel mode up to the torchrun command, HF configs with aliased
field names, ONE trace -> manifest naming rule, and the recorded --compile reduce-overhead run.

The TP path is tested up to the command it runs: this project's GPU machine has one GPU. Expected
values come from the files themselves (json / gzip), never from tracekit's output.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT, shared_trace

sys.path.insert(0, str(ROOT))

from tracekit.capture import hf_pytorch as hf  # noqa: E402
from tracekit.capture.manifest import job_manifest_path, manifest_path, write_manifest  # noqa: E402
from tracekit.capture.models import resolve_model  # noqa: E402

CAPTURED = ROOT / "fixtures" / "capture"
# GPT-2's config.json as the Hub has it: hidden_size / num_hidden_layers / num_attention_heads are
# named n_embd / n_layer / n_head, which transformers maps through GPT2Config.attribute_map.
GPT2 = {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
        "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
        "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "vocab_size": 50257}


def parse(*argv: str):
    args = hf.build_parser().parse_args(list(argv))
    hf.validate(args)
    return args


# ---------------------------------------------------------------- tensor parallel

def test_tp_dry_run_prints_the_torchrun_command_and_the_files(capsys, tmp_path):
    argv = ["--model", "llama3-8b", "--layers", "4", "--batch", "8", "--input-len", "64", "--output-len", "8",
            "--tp", "2", "--out-dir", str(tmp_path), "--torchrun", "/opt/bin/torchrun", "--dry-run"]
    assert hf.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    cmd = lines[0].split()
    assert cmd[:4] == ["/opt/bin/torchrun", "--standalone", "--nproc-per-node", "2"]
    assert cmd[4] == str(Path(hf.__file__).resolve()) and cmd[5:] == argv
    # The same names the real two-rank H200 traces have (recorded by how-recorded-tp.py) ...
    names = [Path(x.split()[-1]).name for x in lines[1:3]]
    real = [shared_trace(f"h200/llama3-8b-4L_tp2_rank{r}_b8_i64_o8.pt.trace.json.gz").name for r in (0, 1)]
    assert names == real
    # ... and ONE manifest for the job, the one tracekit's import finds for each rank's trace.
    assert lines[3].split()[2] == str(tmp_path / "llama3-8b-4L_tp2_b8_i64_o8.manifest.json")
    assert all(job_manifest_path(tmp_path / n) == tmp_path / "llama3-8b-4L_tp2_b8_i64_o8.manifest.json" for n in names)
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.parametrize("argv, problem", [
    (["--tp", "0"], "--tp must be >= 1"),
    (["--tp", "2", "--profiler", "nsys"], "needs --profiler torch"),
    (["--tp", "2", "--out", "x.pt.trace.json.gz"], "names its files itself"),
    (["--dry-run"], "--dry-run is for --tp"),
])
def test_tp_invalid_arguments(argv, problem):
    with pytest.raises(hf.CaptureError, match=problem):
        parse(*argv)


def test_tp_without_torchrun_is_one_clear_error(tmp_path, capsys):
    rc = hf.main(["--tp", "2", "--out-dir", str(tmp_path), "--torchrun", str(tmp_path / "no-torchrun")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "torchrun not found" in err


def test_rank_traces_with_the_job_manifest_import_as_one_run(tmp_path):
    import tracekit

    for r in (0, 1):
        src = shared_trace(f"h200/llama3-8b-4L_tp2_rank{r}_b8_i64_o8.pt.trace.json.gz")
        shutil.copy(src, tmp_path / src.name)
    m = write_manifest(tmp_path / "llama3-8b-4L_tp2_b8_i64_o8", {"model": "llama3-8b", "batch": 8, "world_size": 2})
    assert m.name == "llama3-8b-4L_tp2_b8_i64_o8.manifest.json"
    db = tracekit.open(tmp_path / "t.duckdb")
    assert [r.status for r in db.import_paths([tmp_path])] == ["imported"]
    meta = dict(db.con.execute("SELECT key, value || ':' || source FROM run_meta").fetchall())
    assert meta["model"] == "llama3-8b:manifest" and meta["world_size"] == "2:manifest"
    db.close()


# ---------------------------------------------------------------- one naming rule

@pytest.mark.parametrize("trace, manifest", [
    ("run.pt.json.gz", "run.manifest.json"),           # issue 11: capture wrote run.pt.manifest.json
    ("run.pt.trace.json.gz", "run.manifest.json"),
    ("x_tp2_rank1_b8.pt.trace.json.gz", "x_tp2_rank1_b8.manifest.json"),
])
def test_one_rule_for_writer_and_reader(tmp_path, trace, manifest):
    from tracekit.manifest import manifest_path as reader_path
    from tracekit.manifest import read_manifest

    assert manifest_path(Path(trace)).name == manifest and reader_path(Path(trace)).name == manifest
    t = tmp_path / trace
    t.write_bytes(b"")
    write_manifest(t, {"batch": 3})
    assert (tmp_path / manifest).is_file() and read_manifest(t)["batch"] == "3"


def test_a_rank_trace_falls_back_to_its_jobs_manifest(tmp_path):
    from tracekit.manifest import read_manifest

    write_manifest(tmp_path / "x_tp2_b8.pt.trace.json.gz", {"batch": 8})
    assert read_manifest(tmp_path / "x_tp2_rank1_b8.pt.trace.json.gz")["batch"] == "8"
    write_manifest(tmp_path / "x_tp2_rank1_b8.pt.trace.json.gz", {"batch": 9})  # its own wins
    assert read_manifest(tmp_path / "x_tp2_rank1_b8.pt.trace.json.gz")["batch"] == "9"


def test_capture_runs_standalone_without_tracekits_dependencies(tmp_path):
    """Issue 16: tracekit.capture is a subpackage, and its scripts still run on a GPU machine that
    lacks tracekit's dependencies: here with no site-packages at all (python -S)."""
    import subprocess

    script = ROOT / "tracekit" / "capture" / "hf_pytorch.py"
    p = subprocess.run([sys.executable, "-S", str(script), "--model", "llama3-8b", "--layers", "4", "--tp", "2",
                        "--batch", "8", "--out-dir", "o", "--dry-run"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "llama3-8b-4L_tp2_rank1_b8_i64_o8.pt.trace.json.gz" in p.stdout
    p = subprocess.run([sys.executable, "-S", "-c", "import duckdb"], capture_output=True, text=True)
    assert p.returncode != 0  # the run above really had no duckdb (nor numpy, pyarrow, ...)


def test_tracekit_takes_the_rule_from_capture_not_its_own_copy():
    src = (ROOT / "tracekit" / "manifest.py").read_text()
    assert "from tracekit.capture.manifest import" in src and "SUFFIXES" not in src
    assert "tracekit" not in (ROOT / "tracekit" / "capture" / "manifest.py").read_text().split('"""', 2)[2].split("def ")[0]


# ---------------------------------------------------------------- HF config aliases

def test_gpt2_config_with_its_own_field_names(tmp_path):
    pytest.importorskip("transformers")  # the capture extra; its config classes need no torch
    f = tmp_path / "gpt2.json"
    f.write_text(json.dumps(GPT2))
    spec = resolve_model(str(f), layers=2)
    assert (spec.layers, spec.full_layers) == (2, GPT2["n_layer"])
    cfg = spec.hf_config()
    assert cfg["n_layer"] == 2 and cfg["n_embd"] == GPT2["n_embd"] and cfg["hidden_size"] == GPT2["n_embd"]
    from transformers import AutoConfig

    built = AutoConfig.for_model(cfg.pop("model_type"), **cfg)  # what the capture builds from it
    assert (built.n_layer, built.num_hidden_layers, built.hidden_size) == (2, 2, GPT2["n_embd"])


def test_gpt2_capture_ran_on_the_gpu_with_the_aliased_config():
    m = json.loads((CAPTURED / "gpt2-2L_b2_i32_o4.manifest.json").read_text())
    cfg = json.loads(m["config"])
    assert m["model"] == "gpt2" and m["model_source"] == "config" and m["layers"] == 2
    assert cfg["n_layer"] == 2 and m["full_layers"] == GPT2["n_layer"] and m["generation_ms"] > 0


# ---------------------------------------------------------------- --compile reduce-overhead

def test_reduce_overhead_decode_replays_cuda_graphs():
    """The recorded run: every generation pass is one cudaGraphLaunch, and the kernels of the
    generation passes are (but for the step's input copy and argmax) launched by those replays."""
    trace = CAPTURED / "llama3-8b-2L_b1_i32_o8_reduce-overhead.pt.trace.json.gz"
    m = json.loads(trace.with_name(trace.name.replace(".pt.trace.json.gz", ".manifest.json")).read_text())
    assert (m["compile"], m["kv_cache"], m["output_len"]) == ("reduce-overhead", "static", 8)
    with gzip.open(trace) as f:
        ev = json.load(f)["traceEvents"]
    gen = [e for e in ev if e.get("cat") == "user_annotation" and e["name"] == "stage:generation"]
    assert len(gen) == m["output_len"] - 1
    runtime = {e["args"]["correlation"]: e for e in ev if e.get("cat") in ("cuda_runtime", "cuda_driver")
               and "correlation" in e.get("args", {})}
    graph_launches = [e for e in runtime.values() if e["name"].startswith("cudaGraphLaunch")]

    def in_gen(e):
        return any(g["tid"] == e["tid"] and g["ts"] <= e["ts"] <= g["ts"] + g["dur"] for g in gen)

    assert len([e for e in graph_launches if in_gen(e)]) == len(gen)
    by_launch: dict[str, int] = {}
    for k in (e for e in ev if e.get("cat") == "kernel"):
        launch = runtime.get(k["args"].get("correlation"))
        if launch is not None and in_gen(launch):
            by_launch[launch["name"].split("_")[0]] = by_launch.get(launch["name"].split("_")[0], 0) + 1
    assert by_launch["cudaGraphLaunch"] > 10 * by_launch.get("cudaLaunchKernel", 0)
