"""The TensorRT-LLM capture: it cannot run here, so its exact commands and config are the contract."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

# tracekit/capture/ is a top-level folder of the source tree, not part of the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit.capture import trtllm  # noqa: E402
from tracekit.capture.models import resolve_model  # noqa: E402


def dry_run(capsys, *argv: str) -> list[list[str]]:
    assert trtllm.main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# write ")
    return [shlex.split(ln) for ln in lines[1:]]


def test_exact_commands(capsys):
    build, run = dry_run(capsys, "--model", "llama3-8b", "--batch", "8", "--input-len", "64", "--output-len", "512",
                         "--out-dir", "traces", "--trtllm-root", "/src/TensorRT-LLM", "--nsys", "nsys")
    engine = "traces/engines/llama3-8b_bfloat16_tp1_b8_i64_o512"
    assert build == ["trtllm-build", "--model_config", engine + ".config.json", "--output_dir", engine,
                     "--gemm_plugin", "auto", "--gpt_attention_plugin", "auto", "--context_fmha", "enable",
                     "--remove_input_padding", "enable", "--paged_kv_cache", "enable",
                     "--max_batch_size", "8", "--max_input_len", "64", "--max_seq_len", "576",
                     "--max_num_tokens", "512"]
    assert run == ["nsys", "profile", "-t", "cuda,nvtx", "--sample=none", "--cpuctxsw=none",
                   "--force-overwrite=true", "-o", "traces/llama3-8b_b8_i64_o512",
                   "python3", "/src/TensorRT-LLM/benchmarks/python/benchmark.py", "-m", "dec",
                   "--engine_dir", engine, "--dtype", "bfloat16", "--batch_size", "8",
                   "--input_output_len", "64,512", "--warm_up", "1", "--num_runs", "1", "--duration", "0"]


def test_one_engine_serves_a_sweep(capsys):
    # sized by --max-*, the engine path does not depend on the cell, so a sweep builds it once
    a = dry_run(capsys, "--model", "gemma-2b", "--batch", "1", "--output-len", "4", "--max-batch", "8",
                "--max-input", "256", "--max-output", "1024")
    b = dry_run(capsys, "--model", "gemma-2b", "--batch", "8", "--input-len", "256", "--max-batch", "8",
                "--max-input", "256", "--max-output", "1024")
    assert a[0] == b[0]
    assert a[1] != b[1]


def test_runs_larger_than_the_engine_are_refused(capsys):
    assert trtllm.main(["--batch", "16", "--max-batch", "8", "--dry-run"]) == 1
    assert "exceeds the engine" in capsys.readouterr().err


def test_profiler_none_runs_the_benchmark_bare(capsys):
    _, run = dry_run(capsys, "--profiler", "none")
    assert run[0] == "python3" and "nsys" not in run


@pytest.mark.parametrize("model, arch, kv, head, act, shared", [
    ("llama2-7b", "LlamaForCausalLM", 32, 128, "silu", False),
    ("llama3-8b", "LlamaForCausalLM", 8, 128, "silu", False),
    ("gemma-2b", "GemmaForCausalLM", 1, 256, "gelu", True),
    ("gemma-7b", "GemmaForCausalLM", 16, 256, "gelu", True),
])
def test_checkpoint_config(model, arch, kv, head, act, shared):
    c = trtllm.trtllm_config(resolve_model(model, layers=3), "bfloat16")
    assert (c["architecture"], c["num_key_value_heads"], c["head_size"], c["hidden_act"]) == (arch, kv, head, act)
    assert c["share_embedding_table"] is shared and c["num_hidden_layers"] == 3
    assert c["mapping"] == {"world_size": 1, "tp_size": 1, "pp_size": 1}


def test_llama3_rope_base_travels(capsys):
    assert trtllm.main(["--model", "llama3-8b", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["rotary_base"] == 500000.0


def test_unsupported_architecture_is_one_error_line(tmp_path, capsys):
    cfg = tmp_path / "bert.json"
    cfg.write_text(json.dumps({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 9,
                               "intermediate_size": 8, "num_attention_heads": 1}))
    assert trtllm.main(["--model", str(cfg), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model_type 'bert' not supported" in err


def test_help_says_it_cannot_run_here():
    from click.testing import CliRunner

    from tracekit.outputs.cli import main

    r = CliRunner().invoke(main, ["capture", "trtllm", "--help"])
    assert r.exit_code == 0 and "Not runnable" in r.output and "--dry-run" in r.output
