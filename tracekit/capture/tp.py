"""Tensor-parallel capture (`capture hf --tp N`): one job, N processes, one Kineto trace per rank.

The parent process starts `torchrun --standalone --nproc-per-node N` on hf_pytorch.py with the same
arguments; each child (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK) loads the model with
transformers' `tp_plan="auto"` (weights sharded over the ranks, an NCCL all-reduce closing each
attention and MLP block), runs the same warm-up and measured sequences as a one-GPU capture, and
writes `<model>_tp<N>_rank<r>_b.._i.._o...pt.trace.json.gz` (PyTorch records `distributedInfo`
with rank and world size in each). Once every rank has finished, the parent writes ONE manifest
for the job, named without the rank token (`<model>_tp<N>_b.._i.._o...manifest.json`, the rule
of capture.manifest), naming the world size and every rank's trace. `tracekit import` of the
directory makes the N traces one run of N ranks.

tp_plan needs a checkpoint: without one, rank 0 saves the random-weight model of the config first
(beside the outputs, removed after the run) and the other ranks wait for it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tracekit.capture.manifest import environment, write_json_atomic, write_manifest
from tracekit.capture.models import CaptureError, ModelSpec

# Where each rank leaves its facts for the parent: the value is a path prefix (+ `.rank<r>.json`).
FACTS_ENV = "TRACEKIT_CAPTURE_TP_FACTS"


def rank_traces(args: argparse.Namespace, spec: ModelSpec) -> list[Path]:
    from tracekit.capture.hf_pytorch import output_path

    return [output_path(args, spec, rank=r) for r in range(args.tp)]


def job_path(args: argparse.Namespace, spec: ModelSpec) -> Path:
    """The job's name as a path (its manifest is capture.manifest.manifest_path of it)."""
    from tracekit.capture.hf_pytorch import output_path

    return output_path(args, spec, rank=None)


def torchrun_command(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The command the parent runs: torchrun with N processes on this script, same arguments."""
    script = Path(__file__).resolve().with_name("hf_pytorch.py")
    return [args.torchrun, "--standalone", "--nproc-per-node", str(args.tp), str(script), *argv]


def in_rank() -> int | None:
    """This process's rank when torchrun started it, else None."""
    rank = os.environ.get("RANK")
    return int(rank) if rank is not None and os.environ.get(FACTS_ENV) else None


def run_job(args: argparse.Namespace, spec: ModelSpec, argv: list[str]) -> int:
    """Parent: run torchrun, check every rank's trace, write the job's one manifest."""
    from tracekit.capture.hf_pytorch import manifest_fields

    traces = rank_traces(args, spec)
    job = job_path(args, spec)
    cmd = torchrun_command(args, argv)
    if args.dry_run:
        print(shlex.join(cmd))
        for t in traces:
            print(f"# writes {t}")
        from tracekit.capture.manifest import manifest_path

        print(f"# then {manifest_path(job)} (world_size {args.tp})")
        return 0
    job.parent.mkdir(parents=True, exist_ok=True)
    facts_prefix = job.with_name(f".{job.name}.{os.getpid()}.facts")
    env = dict(os.environ, **{FACTS_ENV: str(facts_prefix)})
    try:
        proc = subprocess.run(cmd, env=env)
    except FileNotFoundError:
        raise CaptureError(f"{args.torchrun}: torchrun not found (set --torchrun or $TRACEKIT_TORCHRUN)") from None
    per_rank: dict[str, Any] = {}
    missing = []
    for r, t in enumerate(traces):
        f = Path(f"{facts_prefix}.rank{r}.json")
        if not (t.is_file() and f.is_file()):
            missing.append(r)
            continue
        per_rank[str(r)] = json.loads(f.read_text())
        f.unlink()
    if missing:
        raise CaptureError(f"{job}: ranks {','.join(map(str, missing))} of {args.tp} wrote no trace "
                           f"(torchrun exit status {proc.returncode})")
    fields = manifest_fields(args, spec, argv)
    fields.update(environment())
    fields.update(per_rank["0"])  # the timings of rank 0 at the top, as a one-GPU manifest has them
    fields.update({"world_size": args.tp, "tp": args.tp, "rank_facts": per_rank,
                   "rank_traces": [t.name for t in traces], "trace_file": None})
    m = write_manifest(job, fields)
    print(f"wrote {len(traces)} rank traces and {m.name}", flush=True)
    return 0


def _checkpoint(args: argparse.Namespace, spec: ModelSpec, rank: int, torch) -> Path:
    """The checkpoint tp_plan loads: the given one, or the config's random weights saved by rank 0."""
    if spec.checkpoint:
        return Path(spec.checkpoint)
    ckpt = job_path(args, spec).with_name(f".{job_path(args, spec).name}.tp-checkpoint")
    done = ckpt / "done"
    if rank == 0 and not done.exists():
        from transformers import AutoConfig, AutoModelForCausalLM

        fields = spec.hf_config()
        cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
        torch.manual_seed(args.seed)
        AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, args.dtype)).save_pretrained(ckpt)
        done.touch()
    deadline = time.monotonic() + 1800
    while not done.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ckpt}: rank 0 did not write the checkpoint")
        time.sleep(0.5)
    return ckpt


def rank_main(args: argparse.Namespace, spec: ModelSpec) -> int:
    """Child: load this rank's shard, run the cell, write its trace and facts."""
    from tracekit.capture.hf_pytorch import gpu_cell

    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise CaptureError(f"{exc.name} is not installed: capturing needs the `capture` extra") from None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    torch.cuda.set_device(local)
    ckpt = _checkpoint(args, spec, rank, torch)
    kw: dict[str, Any] = {"tp_plan": "auto", "dtype": getattr(torch, args.dtype), "attn_implementation": args.attn}
    if args.layers and spec.checkpoint:
        kw["num_hidden_layers"] = args.layers
    model = AutoModelForCausalLM.from_pretrained(ckpt, **kw).eval()
    facts: dict[str, Any] = {"cuda_runtime": torch.version.cuda, "gpu": torch.cuda.get_device_name(local),
                             "rank": rank, "world_size": int(os.environ["WORLD_SIZE"])}
    trace = rank_traces(args, spec)[rank]
    facts.update(gpu_cell(model, torch, args, spec, trace))
    write_json_atomic(f"{os.environ[FACTS_ENV]}.rank{rank}.json", facts)
    torch.distributed.barrier()
    if rank == 0 and not spec.checkpoint:
        shutil.rmtree(job_path(args, spec).with_name(f".{job_path(args, spec).name}.tp-checkpoint"),
                      ignore_errors=True)
    print(f"rank {rank}: wrote {trace}", file=sys.stderr, flush=True)
    return 0
