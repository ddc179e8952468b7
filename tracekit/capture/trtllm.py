"""The study's own setup: TensorRT-LLM, engine built from a config, run under nsys.

NOT RUNNABLE ON ANY MACHINE OF THIS PROJECT (no TensorRT-LLM there): it is tested up to the exact
commands it would run, which `--dry-run` prints. What it does, per run:

  1. write a TensorRT-LLM checkpoint config (random "dummy" weights, no checkpoint needed) for the
     built-in architecture or HF config.json;
  2. `trtllm-build --model_config ...` with the GPT attention plugin and context FMHA (the study's
     flash attention), sized for the run (or --max-* for reuse across a sweep) unless the engine
     already exists;
  3. `nsys profile -t cuda,nvtx` around TensorRT-LLM's benchmarks/python/benchmark.py: one static
     batch of batch x input_len random tokens, output_len tokens, one warm-up.

Stages: TensorRT-LLM's runtime marks its own NVTX ranges; where they are absent, tracekit's stage
attribution infers stages from the kernels (context FMHA vs. masked multi-head / XQA attention).

    python tracekit/capture/trtllm.py --model llama2-7b --batch 8 --input-len 64 --output-len 64 --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tracekit.capture.manifest import environment, write_json_atomic, write_manifest
from tracekit.capture.models import BUILTIN, ModelSpec, ModelSpecError, resolve_model, run_name

ARCHITECTURES = {"llama": "LlamaForCausalLM", "gemma": "GemmaForCausalLM", "mistral": "LlamaForCausalLM"}
DTYPES = ("bfloat16", "float16")


class TrtllmError(RuntimeError):
    pass


def build_parser(prog: str = "trtllm.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Record TensorRT-LLM inference under nsys (engine built from a config, random weights). "
                    "Not runnable on this project's machines (no TensorRT-LLM): use --dry-run to see the commands.",
    )
    p.add_argument("--model", default="llama2-7b",
                   help=f"built-in architecture ({', '.join(BUILTIN)}) or an HF config.json")
    p.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=8)
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    p.add_argument("--max-batch", type=int, default=None, help="engine max batch (default: --batch)")
    p.add_argument("--max-input", type=int, default=None, help="engine max input length (default: --input-len)")
    p.add_argument("--max-output", type=int, default=None, help="engine max output length (default: --output-len)")
    p.add_argument("--engine-dir", default=None, help="engine directory (default OUT_DIR/engines/<model and sizes>)")
    p.add_argument("--trtllm-root", default=os.environ.get("TRTLLM_ROOT", "TensorRT-LLM"),
                   help="TensorRT-LLM source checkout, for benchmarks/python/benchmark.py ($TRTLLM_ROOT)")
    p.add_argument("--trtllm-build", default="trtllm-build", help="trtllm-build executable")
    p.add_argument("--profiler", choices=("nsys", "none"), default="nsys")
    p.add_argument("--nsys", default=os.environ.get("TRACEKIT_NSYS", "nsys"), help="nsys executable ($TRACEKIT_NSYS)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=None, help="report path (default OUT_DIR/<run name>.nsys-rep)")
    p.add_argument("--out-dir", default=".")
    p.add_argument("--dry-run", action="store_true", help="print the commands it would run, one a line; run nothing")
    p.add_argument("--print-config", action="store_true", help="print the TensorRT-LLM checkpoint config and exit")
    return p


def trtllm_config(spec: ModelSpec, dtype: str, tp: int = 1) -> dict[str, Any]:
    """A TensorRT-LLM checkpoint config.json for the model (weights: dummy, from trtllm-build)."""
    c = spec.config
    mtype = c["model_type"]
    if mtype not in ARCHITECTURES:
        raise TrtllmError(f"{spec.name}: model_type {mtype!r} not supported (only {', '.join(sorted(ARCHITECTURES))})")
    heads = int(c["num_attention_heads"])
    gemma = mtype == "gemma"
    return {
        "architecture": ARCHITECTURES[mtype],
        "dtype": dtype,
        "logits_dtype": "float32",
        "num_hidden_layers": int(c["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(c.get("num_key_value_heads", heads)),
        "hidden_size": int(c["hidden_size"]),
        "intermediate_size": int(c["intermediate_size"]),
        "head_size": int(c.get("head_dim") or int(c["hidden_size"]) // heads),
        "vocab_size": int(c["vocab_size"]),
        "max_position_embeddings": int(c.get("max_position_embeddings", 4096)),
        "hidden_act": "gelu" if gemma else str(c.get("hidden_act", "silu")),
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": float(c.get("rope_theta", 10000.0)),
        "norm_epsilon": float(c.get("rms_norm_eps", 1e-6 if gemma else 1e-5)),
        "share_embedding_table": gemma,
        "use_parallel_embedding": False,
        "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None},
    }


@dataclass
class Plan:
    name: str
    config_path: Path
    engine_dir: Path
    report: Path
    build: list[str]
    run: list[str]

    def commands(self) -> list[list[str]]:
        return [self.build, self.run]


def make_plan(args: argparse.Namespace, spec: ModelSpec) -> Plan:
    for key in ("batch", "input_len", "output_len", "tp"):
        if getattr(args, key) < 1:
            raise TrtllmError(f"--{key.replace('_', '-')} must be >= 1")
    mb = args.max_batch or args.batch
    mi = args.max_input or args.input_len
    mo = args.max_output or args.output_len
    if args.batch > mb or args.input_len > mi or args.output_len > mo:
        raise TrtllmError(f"run (b{args.batch} i{args.input_len} o{args.output_len}) exceeds the engine "
                          f"(b{mb} i{mi} o{mo})")
    name = run_name(spec.name, args.batch, args.input_len, args.output_len, args.layers)
    out_dir = Path(args.out_dir)
    stem = f"{spec.name}-{args.layers}L" if args.layers else spec.name
    engine = Path(args.engine_dir) if args.engine_dir else out_dir / "engines" / f"{stem}_{args.dtype}_tp{args.tp}_b{mb}_i{mi}_o{mo}"
    config_path = engine.with_name(engine.name + ".config.json")
    build = [args.trtllm_build, "--model_config", str(config_path), "--output_dir", str(engine),
             "--gemm_plugin", "auto", "--gpt_attention_plugin", "auto", "--context_fmha", "enable",
             "--remove_input_padding", "enable", "--paged_kv_cache", "enable",
             "--max_batch_size", str(mb), "--max_input_len", str(mi), "--max_seq_len", str(mi + mo),
             "--max_num_tokens", str(mb * mi)]
    bench = ["python3", str(Path(args.trtllm_root) / "benchmarks" / "python" / "benchmark.py"),
             "-m", "dec", "--engine_dir", str(engine), "--dtype", args.dtype,
             "--batch_size", str(args.batch), "--input_output_len", f"{args.input_len},{args.output_len}",
             "--warm_up", str(args.warmup), "--num_runs", "1", "--duration", "0"]
    report = Path(args.out) if args.out else out_dir / f"{name}.nsys-rep"
    if args.profiler == "nsys":
        stem_path = str(report)[: -len(".nsys-rep")] if str(report).endswith(".nsys-rep") else str(report)
        run = [args.nsys, "profile", "-t", "cuda,nvtx", "--sample=none", "--cpuctxsw=none",
               "--force-overwrite=true", "-o", stem_path, *bench]
    else:
        run = bench
    return Plan(name, config_path, engine, report, build, run)


def _execute(args: argparse.Namespace, spec: ModelSpec, plan: Plan, argv: list[str]) -> int:
    write_json_atomic(plan.config_path, trtllm_config(spec, args.dtype, args.tp))
    if not (plan.engine_dir / "config.json").is_file():
        if subprocess.run(plan.build).returncode != 0:
            raise TrtllmError(f"{plan.engine_dir}: trtllm-build failed")
    if subprocess.run(plan.run).returncode != 0:
        raise TrtllmError(f"{plan.report}: the profiled run failed")
    trace = next((p for p in (plan.report, plan.report.with_suffix(".qdstrm")) if p.exists()), None)
    if args.profiler == "nsys" and trace is None:
        raise TrtllmError(f"{plan.report}: nsys wrote no report")
    fields = {"tool": "tracekit-capture", "framework": "tensorrt-llm", "run_name": plan.name, "model": spec.name,
              "config": spec.hf_config(), "batch": args.batch, "input_len": args.input_len,
              "output_len": args.output_len, "dtype": args.dtype, "layers": spec.layers,
              "full_layers": spec.full_layers, "tp": args.tp, "profiler": args.profiler, "weights": "random",
              "command": shlex.join(["tracekit", "capture", "trtllm", *[os.path.basename(a) if os.path.isabs(a) else a
                                                                       for a in argv]])}
    fields.update(environment())
    if trace is not None:
        write_manifest(trace, fields)
    return 0


def main(argv: list[str] | None = None, prog: str = "trtllm.py") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    try:
        spec = resolve_model(args.model, args.layers)
        if spec.checkpoint:
            raise TrtllmError(f"{args.model}: checkpoints are not supported here (random weights only); "
                              "give a config.json")
        config = trtllm_config(spec, args.dtype, args.tp)  # refuses unsupported models, dry run or not
        if args.print_config:
            print(json.dumps(config, indent=1))
            return 0
        plan = make_plan(args, spec)
        if args.dry_run:
            print(f"# write {plan.config_path}")
            for cmd in plan.commands():
                print(shlex.join(cmd))
            return 0
        return _execute(args, spec, plan, argv)
    except (TrtllmError, ModelSpecError) as exc:
        print(f"tracekit: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
