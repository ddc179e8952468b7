"""Run static-batch HF-transformers inference and record it for tracekit.

One summarization pass over batch x input_len tokens, then output_len-1 greedy generation passes
with the KV cache. Stages are marked twice, so that both trace formats carry them: NVTX ranges
`summarization` / `generation step K` (nsys) and record_function labels `stage:summarization` /
`stage:generation` (Kineto). Weights are random unless a checkpoint is given: kernel names, shapes
and timings do not depend on weight values, and the GPU machine has no hub access.

    python tracekit/capture/hf_pytorch.py --model llama2-7b --batch 1 --input-len 64 --output-len 8 --profiler torch
    tracekit capture hf --model gemma-2b --layers 4 --profiler nsys --out-dir traces/

torch and transformers are imported only when a run starts (the `capture` extra).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo's `capture` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tracekit.capture.manifest import environment, flatten, manifest_path, write_json_atomic, write_manifest
from tracekit.capture.models import BUILTIN, CaptureError, ModelSpec, ModelSpecError, resolve_model, run_name

PROFILERS = ("torch", "nsys", "none")
DTYPES = ("bfloat16", "float16", "float32")
TRACE_EXT = {"torch": ".pt.trace.json.gz", "nsys": ".nsys-rep", "none": ""}
# Set in the child process that nsys profiles; its value is where the child leaves its facts.
_INNER_ENV = "TRACEKIT_CAPTURE_INNER"


def build_parser(prog: str = "hf_pytorch.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Record HF-transformers LLM inference (summarization + greedy generation) for tracekit.",
    )
    p.add_argument("--model", default="llama2-7b",
                   help=f"built-in architecture ({', '.join(BUILTIN)}), an HF config.json, or a checkpoint directory")
    p.add_argument("--layers", type=int, default=None, help="override the number of decoder layers (quick runs)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--input-len", type=int, default=64, help="prompt tokens per sequence")
    p.add_argument("--output-len", type=int, default=8,
                   help="generated tokens: 1 summarization pass + output_len-1 generation passes")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    p.add_argument("--attn", default="sdpa", help="attention implementation: sdpa, eager, flash_attention_2, ...")
    p.add_argument("--compile", default=None, metavar="MODE",
                   help="torch.compile the forward with this mode (default, reduce-overhead, max-autotune); "
                        "modes that use CUDA graphs run with a static KV cache, so decode replays one graph")
    p.add_argument("--tp", type=int, default=1, metavar="N",
                   help="tensor parallel over N GPUs (transformers tp_plan='auto', NCCL): torchrun starts N "
                        "processes, each writes its rank's trace, one manifest names the job and its world size")
    p.add_argument("--torchrun", default=os.environ.get("TRACEKIT_TORCHRUN", "torchrun"),
                   help="torchrun executable for --tp ($TRACEKIT_TORCHRUN)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --tp: print the torchrun command and the files it will write, run nothing")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded warm-up sequences before the measured ones")
    p.add_argument("--warmup-output-len", type=int, default=None,
                   help="output length of warm-up sequences (default: --output-len)")
    p.add_argument("--iterations", type=int, default=1, help="measured summarization+generation sequences (0 with --kernel-sums: kernel times only)")
    p.add_argument("--profiler", choices=PROFILERS, default="torch",
                   help="torch: Kineto trace with record_shapes; nsys: run under `nsys profile -t cuda,nvtx`; none: timings only")
    p.add_argument("--emit-nvtx", action="store_true",
                   help="with --profiler nsys: emit_nvtx(record_shapes=True), so NVTX ranges carry op names and shapes")
    p.add_argument("--nsys", default=os.environ.get("TRACEKIT_NSYS", "nsys"), help="nsys executable ($TRACEKIT_NSYS)")
    p.add_argument("--nsys-capture", choices=("range", "all"), default="range",
                   help="range: trace only the measured sequences (cudaProfilerApi); all: the whole process")
    p.add_argument("--kernel-sums", action="store_true",
                   help="also run one sequence under a CUDA-only profiler and store per-stage kernel time in the manifest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="trace path (for --profiler none: the manifest path); default OUT_DIR/<run name><ext>")
    p.add_argument("--out-dir", default=".", help="directory for the default output name")
    p.add_argument("--tag", default="", help="suffix for the run name")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="extra manifest field")
    p.add_argument("--cells", default=None, metavar="FILE",
                   help="JSON list of {batch, input_len, output_len[, out]} cells run on one loaded model")
    p.add_argument("--print-config", action="store_true",
                   help="print the model config and output paths as JSON and exit (no torch needed)")
    return p


def validate(args: argparse.Namespace) -> None:
    if args.iterations < 0 or (args.iterations == 0 and not (args.kernel_sums and args.profiler == "none")):
        raise CaptureError("--iterations 0 is only for --profiler none --kernel-sums (kernel times alone)")
    for name in ("batch", "input_len", "output_len"):
        if getattr(args, name) < 1:
            raise CaptureError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise CaptureError(f"--warmup must be >= 0, got {args.warmup}")
    for kv in args.meta:
        if "=" not in kv:
            raise CaptureError(f"--meta {kv!r}: expected KEY=VALUE")
    if args.emit_nvtx and args.profiler != "nsys":
        raise CaptureError("--emit-nvtx needs --profiler nsys")
    if args.tp < 1:
        raise CaptureError(f"--tp must be >= 1, got {args.tp}")
    if args.tp > 1 and args.profiler != "torch":
        raise CaptureError("--tp records one Kineto trace per rank: it needs --profiler torch")
    if args.tp > 1 and (args.cells or args.out):
        raise CaptureError("--tp names its files itself (one per rank): --cells and --out cannot be used with it")
    if args.dry_run and args.tp < 2:
        raise CaptureError("--dry-run is for --tp (the torchrun command)")


def output_path(args: argparse.Namespace, spec: ModelSpec, rank: int | None = None) -> Path:
    """The trace (or, for --profiler none, manifest) path. With --tp: rank's trace, or with rank None
    the job's name (whose manifest_path is the job's one manifest)."""
    if args.out:
        return Path(args.out)
    name = run_name(spec.name, args.batch, args.input_len, args.output_len,
                    args.layers if args.layers else None, args.tag, tp=getattr(args, "tp", 1), rank=rank)
    ext = TRACE_EXT[args.profiler] or ".manifest.json"
    return Path(args.out_dir) / f"{name}{ext}"


def _portable_command(argv: list[str]) -> str:
    # Manifests get committed with fixtures: keep this machine's directories out of them.
    return shlex.join(["tracekit", "capture", "hf", *[os.path.basename(a) if os.path.isabs(a) else a for a in argv]])


def manifest_fields(args: argparse.Namespace, spec: ModelSpec, argv: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "tool": "tracekit-capture",
        "framework": "hf-pytorch",
        "run_name": output_path(args, spec).name.split(".")[0],
        "model": spec.name,
        "model_source": spec.source,
        "config": spec.hf_config(),
        "batch": args.batch,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "dtype": args.dtype,
        "layers": spec.layers,
        "full_layers": spec.full_layers,
        "attn": args.attn,
        "compile": args.compile or "none",
        "kv_cache": "static" if _uses_cuda_graphs(args.compile) else "dynamic",
        "world_size": args.tp,
        "warmup": args.warmup,
        "iterations": args.iterations,
        "profiler": args.profiler,
        "emit_nvtx": bool(args.emit_nvtx),
        "weights": "checkpoint" if spec.checkpoint else "random",
        "seed": args.seed,
        "command": _portable_command(argv),
        "captured_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for kv in args.meta:
        k, v = kv.split("=", 1)
        fields[k] = v
    return fields


# ---------------------------------------------------------------- GPU side (torch imported lazily)

def _load_model(spec: ModelSpec, args: argparse.Namespace):  # -> (model, torch)
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as exc:
        raise CaptureError(f"{exc.name} is not installed: capturing needs the `capture` extra "
                           "(pip install 'tracekit[capture]')") from None
    if not torch.cuda.is_available():
        raise CaptureError("no CUDA GPU is visible to PyTorch: capturing needs one")

    dtype = getattr(torch, args.dtype)
    if spec.checkpoint:
        kw: dict[str, Any] = {"attn_implementation": args.attn}
        if args.layers:
            kw["num_hidden_layers"] = args.layers
        try:
            model = AutoModelForCausalLM.from_pretrained(spec.checkpoint, dtype=dtype, **kw)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = AutoModelForCausalLM.from_pretrained(spec.checkpoint, torch_dtype=dtype, **kw)
        model = model.to("cuda")
    else:
        cfg_fields = spec.hf_config()
        cfg = AutoConfig.for_model(cfg_fields.pop("model_type"), **cfg_fields)
        cfg._attn_implementation = args.attn
        torch.manual_seed(args.seed)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # initialise in the run dtype: no fp32 copy of 8B weights
        try:
            with torch.device("cuda"):
                model = AutoModelForCausalLM.from_config(cfg)
        finally:
            torch.set_default_dtype(prev)
        model = model.to(dtype)
    model.eval()
    _compile(model, torch, args)
    return model, torch


def _uses_cuda_graphs(mode: str | None) -> bool:
    """torch.compile modes that capture CUDA graphs (inductor's `triton.cudagraphs`)."""
    return mode in ("reduce-overhead", "max-autotune")


def _compile(model, torch, args: argparse.Namespace) -> None:
    if not args.compile:
        return
    if not _uses_cuda_graphs(args.compile):
        model.forward = torch.compile(model.forward, mode=args.compile, dynamic=True)
        return
    # CUDA-graph modes. Left to inductor, the decode step's graph is skipped: the static KV cache is
    # updated in place inside the step, and inductor refuses CUDA graphs for mutated inputs
    # ("skipping cudagraphs due to mutated inputs", seen on torch 2.11 + transformers 5.17, H200),
    # while a dynamic cache's outputs are overwritten by the next replay. So, as serving engines do,
    # the prefill runs eagerly (it fills the static cache) and the one-token decode step, compiled
    # without inductor's own graphs, is captured once into a torch.cuda.CUDAGraph that every
    # generation pass replays (_Runner).
    no_graphs = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}[args.compile]
    model._tk_decode = torch.compile(model.__call__, mode=no_graphs, dynamic=False)


def _static_cache(model, batch: int, max_len: int):
    """A transformers StaticCache for `batch` sequences of up to `max_len` tokens (its constructor
    changed between 4.x and 5.x)."""
    import inspect

    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    kw: dict[str, Any] = {"config": model.config, "max_cache_len": max_len}
    if "max_batch_size" in params:  # transformers 4.x
        kw.update(max_batch_size=batch, device=model.device, dtype=model.dtype)
    return StaticCache(**kw)


def _forward_kwargs(model) -> dict[str, Any]:
    # Only the last position's logits are needed for greedy decoding; TensorRT-LLM (the study) does
    # not compute context logits either, and the full B x S x V product would distort summarization.
    import inspect

    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        return {"logits_to_keep": 1}
    if "num_logits_to_keep" in params:
        return {"num_logits_to_keep": 1}
    return {}


class _Runner:
    def __init__(self, model, torch, args: argparse.Namespace, vocab: int) -> None:
        self.model, self.torch = model, torch
        g = torch.Generator(device="cuda").manual_seed(args.seed)
        self.ids = torch.randint(0, vocab, (args.batch, args.input_len), device="cuda", generator=g)
        self.fkw = _forward_kwargs(model)
        # CUDA-graph modes (_compile): a static cache, reset per sequence so that its tensors keep
        # their addresses, and the decode step captured once (_capture) and replayed.
        self.graphs = _uses_cuda_graphs(args.compile)
        self.cache = self.graph = None
        if self.graphs:
            longest = args.input_len + max(args.output_len, args.warmup_output_len or 0, 4)  # 3 warm-up steps at capture
            self.cache = _static_cache(model, args.batch, longest)
            self._capture()

    def forward(self, ids, past):
        out = self.model(input_ids=ids, past_key_values=past, use_cache=True, **self.fkw)
        # argmax makes a new tensor: nothing of the forward's output memory is kept past this step.
        return (past if self.graphs else out.past_key_values), out.logits[:, -1:].argmax(-1)

    def _capture(self) -> None:
        """Capture the compiled decode step into one CUDA graph: prefill once (the cache's tensors
        exist from then on), warm the step up on a side stream (compiling it), capture it. The
        static input ids are copied in before each replay; the cache advances its own position
        (a device tensor) inside the graph."""
        torch = self.torch
        with torch.no_grad():
            self.cache.reset()
            _, nxt = self.forward(self.ids, self.cache)
            self.g_ids = nxt.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.model._tk_decode(input_ids=self.g_ids, past_key_values=self.cache, use_cache=True, **self.fkw)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.g_logits = self.model._tk_decode(input_ids=self.g_ids, past_key_values=self.cache,
                                                      use_cache=True, **self.fkw).logits
            torch.cuda.synchronize()

    def decode(self, nxt, past):
        if self.graph is None:
            return self.forward(nxt, past)
        self.g_ids.copy_(nxt)
        self.graph.replay()
        return past, self.g_logits[:, -1:].argmax(-1)

    def sequence(self, output_len: int, marked: bool = True, timed: bool = False,
                 split_hook=None) -> dict[str, Any]:
        """One summarization + (output_len-1) generation passes; CUDA events at pass boundaries."""
        torch = self.torch
        nvtx = torch.cuda.nvtx
        rf = torch.profiler.record_function
        events = [torch.cuda.Event(enable_timing=True) for _ in range(output_len + 1)] if timed else None
        t0 = time.perf_counter()
        with torch.no_grad():
            if events:
                events[0].record()
            if marked:
                nvtx.range_push("summarization")
            if self.cache is not None:
                self.cache.reset()
            with rf("stage:summarization") if marked else _null():
                past, nxt = self.forward(self.ids, self.cache)
            if marked:
                nvtx.range_pop()
            if events:
                events[1].record()
            if split_hook:
                split_hook()
            for step in range(output_len - 1):
                if marked:
                    nvtx.range_push(f"generation step {step}")
                with rf("stage:generation") if marked else _null():
                    past, nxt = self.decode(nxt, past)
                if marked:
                    nvtx.range_pop()
                if events:
                    events[step + 2].record()
        torch.cuda.synchronize()
        host_s = time.perf_counter() - t0
        if not events:
            return {"host_ms": host_s * 1e3}
        passes = [events[i].elapsed_time(events[i + 1]) for i in range(output_len)]
        return {"host_ms": host_s * 1e3, "summarization_ms": passes[0], "generation_ms": sum(passes[1:]),
                "step_ms": passes[1:]}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _kernel_ms(prof) -> tuple[float, int]:
    """Sum of GPU kernel durations in one profiler session (annotations and copies left out)."""
    total_ns, n = 0, 0
    for e in prof.profiler.kineto_results.events():
        if str(e.device_type()).split(".")[-1] != "CUDA":
            continue
        if getattr(e, "is_user_annotation", lambda: False)():
            continue
        name = e.name()
        if name.startswith(("Memcpy", "Memset", "stage:")):
            continue
        dur = e.duration_ns() if hasattr(e, "duration_ns") else e.duration_us() * 1000
        total_ns += dur
        n += 1
    return total_ns / 1e6, n


def _kernel_sums(runner: _Runner, output_len: int) -> dict[str, Any]:
    """Per-stage kernel time: summarization and generation each in their own CUDA-only session."""
    torch = runner.torch
    acts = [torch.profiler.ProfilerActivity.CUDA]
    state: dict[str, Any] = {}
    prof_s = torch.profiler.profile(activities=acts)
    prof_g = torch.profiler.profile(activities=acts)

    def switch() -> None:
        torch.cuda.synchronize()
        prof_s.stop()
        prof_g.start()

    prof_s.start()
    runner.sequence(output_len, marked=False, split_hook=switch)
    prof_g.stop()
    state["kernel_summarization_ms"], state["kernels_summarization"] = _kernel_ms(prof_s)
    state["kernel_generation_ms"], state["kernels_generation"] = _kernel_ms(prof_g)
    return state


def _timing_summary(seqs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("summarization_ms", "generation_ms", "host_ms"):
        vals = [s[key] for s in seqs if key in s]
        if vals:
            out[key] = statistics.median(vals)
    if "summarization_ms" in out:
        total = out["summarization_ms"] + out["generation_ms"]
        out["gen_ratio"] = out["generation_ms"] / total if total else None
        out["step_ms"] = [round(x, 4) for x in seqs[-1]["step_ms"]]
    return out


def gpu_setup(args: argparse.Namespace, spec: ModelSpec):  # -> (model, torch, facts)
    model, torch = _load_model(spec, args)
    facts: dict[str, Any] = {"cuda_runtime": torch.version.cuda, "cudnn": str(torch.backends.cudnn.version()),
                             "gpu": torch.cuda.get_device_name(0)}
    return model, torch, facts


def gpu_cell(model, torch, args: argparse.Namespace, spec: ModelSpec, trace_out: Path | None) -> dict[str, Any]:
    """Warm up and run the measured sequences of one (batch, input, output) cell."""
    runner = _Runner(model, torch, args, int(spec.config["vocab_size"]))
    torch.cuda.reset_peak_memory_stats()
    wl = args.warmup_output_len or args.output_len
    for _ in range(args.warmup):
        torch.cuda.nvtx.range_push("warmup")
        with torch.profiler.record_function("stage:warmup"):
            runner.sequence(wl, marked=False)
        torch.cuda.nvtx.range_pop()

    seqs: list[dict[str, Any]] = []
    if args.profiler == "torch":
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
            for _ in range(args.iterations):
                seqs.append(runner.sequence(args.output_len, timed=True))
        prof.add_metadata_json("tracekit_run", json.dumps({"model": spec.name, "batch": args.batch,
                                                          "input_len": args.input_len,
                                                          "output_len": args.output_len}))
        assert trace_out is not None
        raw = trace_out.with_name(f".{trace_out.name}.{os.getpid()}.json")
        prof.export_chrome_trace(str(raw))
        tmp = trace_out.with_name(f".{trace_out.name}.{os.getpid()}.tmp")
        with open(raw, "rb") as f, gzip.open(tmp, "wb", compresslevel=6) as g:
            shutil.copyfileobj(f, g)
        raw.unlink()
        os.replace(tmp, trace_out)
    else:
        ranged = args.profiler == "nsys" and args.nsys_capture == "range"
        if ranged:
            torch.cuda.profiler.start()
        ctx = torch.autograd.profiler.emit_nvtx(record_shapes=True) if args.emit_nvtx else _null()
        with ctx:
            for _ in range(args.iterations):
                seqs.append(runner.sequence(args.output_len, timed=True))
        if ranged:
            torch.cuda.profiler.stop()
    facts = _timing_summary(seqs)
    if args.kernel_sums:
        facts.update(_kernel_sums(runner, args.output_len))
    facts["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    del runner
    return facts


def gpu_run(args: argparse.Namespace, spec: ModelSpec, trace_out: Path | None) -> dict[str, Any]:
    """Build the model, warm up, run the measured sequences; returns facts for the manifest."""
    model, torch, facts = gpu_setup(args, spec)
    facts.update(gpu_cell(model, torch, args, spec, trace_out))
    return facts


# ---------------------------------------------------------------- orchestration

def nsys_command(args: argparse.Namespace, trace_out: Path, inner_argv: list[str]) -> list[str]:
    """The `nsys profile` command line that wraps this script for --profiler nsys."""
    stem = str(trace_out)
    for suffix in (".nsys-rep", ".qdstrm"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    cmd = [args.nsys, "profile", "-t", "cuda,nvtx", "--sample=none", "--cpuctxsw=none",
           "--force-overwrite=true", "-o", stem]
    if args.nsys_capture == "range":
        cmd += ["--capture-range=cudaProfilerApi", "--capture-range-end=stop"]
    return cmd + [sys.executable, str(Path(__file__).resolve()), *inner_argv]


def _run_under_nsys(args: argparse.Namespace, trace_out: Path, argv: list[str]) -> tuple[Path, dict[str, Any]]:
    facts_file = trace_out.with_name(f".{trace_out.name}.{os.getpid()}.facts.json")
    env = dict(os.environ, **{_INNER_ENV: str(facts_file)})
    cmd = nsys_command(args, trace_out, argv)
    try:
        proc = subprocess.run(cmd, env=env)
    except FileNotFoundError:
        raise CaptureError(f"{args.nsys}: nsys not found (set --nsys or $TRACEKIT_NSYS)") from None
    if not facts_file.exists():
        raise CaptureError(f"{trace_out}: the profiled run failed (nsys exit status {proc.returncode})")
    facts = json.loads(facts_file.read_text())
    facts_file.unlink()
    stem = trace_out.with_suffix("") if trace_out.suffix == ".nsys-rep" else trace_out
    # Without a QdstrmImporter on the GPU machine nsys leaves only the raw .qdstrm; convert it
    # elsewhere with the same toolchain (nsys-toolchain.sh), the manifest name stays valid.
    for candidate in (stem.with_name(stem.name + ".nsys-rep"), stem.with_name(stem.name + ".qdstrm")):
        if candidate.exists() and candidate.stat().st_size > 0:
            return candidate, facts
    raise CaptureError(f"{trace_out}: nsys wrote no report (exit status {proc.returncode})")


def _finish(args: argparse.Namespace, spec: ModelSpec, argv: list[str], out: Path,
            trace: Path | None, facts: dict[str, Any], env: dict[str, Any]) -> None:
    """Write the manifest last: a run is complete exactly when its manifest exists."""
    fields = manifest_fields(args, spec, argv)
    fields.update(env)
    fields.update(facts)
    if trace is None:
        fields["trace_file"] = None
        target = out if out.name.endswith(".manifest.json") else manifest_path(out)
        write_json_atomic(target, flatten(fields))
        print(f"wrote {target}", flush=True)
    else:
        m = write_manifest(trace, fields)
        print(f"wrote {trace} ({trace.stat().st_size} bytes) and {m.name}", flush=True)


def load_cells(path: str) -> list[dict[str, Any]]:
    """A cells file: JSON list of {batch, input_len, output_len[, out][, tag]}, run on one loaded model."""
    try:
        cells = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CaptureError(f"{path}: cannot read cells ({exc})") from None
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise CaptureError(f"{path}: cells must be a JSON list of objects")
    for c in cells:
        unknown = set(c) - {"batch", "input_len", "output_len", "out", "tag"}
        if unknown:
            raise CaptureError(f"{path}: unknown cell keys {sorted(unknown)}")
    return cells


def _cell_args(args: argparse.Namespace, cell: dict[str, Any]) -> argparse.Namespace:
    a = argparse.Namespace(**vars(args))
    for key in ("batch", "input_len", "output_len", "out", "tag"):
        if key in cell:
            setattr(a, key, cell[key])
    a.cells = None
    return a


def _cell_argv(argv: list[str], a: argparse.Namespace) -> list[str]:
    # The manifest's command must reproduce this one cell on its own, not the whole cells file.
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok in ("--cells", "--batch", "--input-len", "--output-len", "--out", "--tag"):
            skip = True
            continue
        if tok.split("=", 1)[0] in ("--cells", "--batch", "--input-len", "--output-len", "--out", "--tag"):
            continue
        out.append(tok)
    out += ["--batch", str(a.batch), "--input-len", str(a.input_len), "--output-len", str(a.output_len)]
    if a.out:
        out += ["--out", a.out]
    if a.tag:
        out += ["--tag", a.tag]
    return out


def _run_cells(args: argparse.Namespace, spec: ModelSpec, argv: list[str]) -> int:
    if args.profiler == "nsys":
        raise CaptureError("--cells cannot be used with --profiler nsys (one nsys report per process)")
    cells = [_cell_args(args, c) for c in load_cells(args.cells)]
    for a in cells:
        validate(a)
    env = environment()
    model, torch, facts0 = gpu_setup(args, spec)
    failed = 0
    for a in cells:
        out = output_path(a, spec)
        out.parent.mkdir(parents=True, exist_ok=True)
        trace = out if a.profiler == "torch" else None
        try:
            facts = dict(facts0, **gpu_cell(model, torch, a, spec, trace))
        except torch.cuda.OutOfMemoryError:
            failed += 1
            print(f"tracekit: error: {out}: out of GPU memory; cell skipped", file=sys.stderr, flush=True)
            torch.cuda.empty_cache()
            continue
        _finish(a, spec, _cell_argv(argv, a), out, trace, facts, env)
    return 1 if failed else 0


def main(argv: list[str] | None = None, prog: str = "hf_pytorch.py") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    try:
        validate(args)
        spec = resolve_model(args.model, args.layers)
        out = output_path(args, spec)
        if args.print_config:
            print(json.dumps({"model": spec.name, "source": spec.source, "config": spec.hf_config(),
                              "out": str(out), "manifest": str(manifest_path(out))}, indent=1))
            return 0
        if args.tp > 1:  # tensor parallel: torchrun's N processes, one trace per rank (tracekit/capture/tp.py)
            from tracekit.capture import tp

            return tp.rank_main(args, spec) if tp.in_rank() is not None else tp.run_job(args, spec, argv)
        if args.cells:
            return _run_cells(args, spec, argv)
        inner = os.environ.get(_INNER_ENV)
        if inner:  # the child that nsys profiles: run, hand facts to the parent
            write_json_atomic(inner, gpu_run(args, spec, None))
            return 0
        out.parent.mkdir(parents=True, exist_ok=True)
        env = environment()
        if args.profiler == "nsys":
            trace, facts = _run_under_nsys(args, out, argv)
        elif args.profiler == "torch":
            trace, facts = out, gpu_run(args, spec, out)
        else:
            trace, facts = None, gpu_run(args, spec, None)
        _finish(args, spec, argv, out, trace, facts, env)
        return 0
    except (CaptureError, ModelSpecError) as exc:
        print(f"tracekit: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
