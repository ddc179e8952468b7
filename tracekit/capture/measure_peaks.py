"""Measure the two ceilings of a roofline on the GPU at hand: matrix FLOP/s and memory bandwidth.

Run on the GPU machine (needs only PyTorch): `python3 tracekit/capture/measure_peaks.py --out peaks.json`.
What it times, each with CUDA events after warm-up, the median of `--repeats` runs:

- dense matrix products M = N = K = `--size` (8192: 1.1 TFLOP each) in bf16, fp16, fp8 e4m3
  (`torch._scaled_mm`, where the GPU has fp8) and fp32 with TF32 off, on random normal data
  (zeros run faster and would overstate the peak), rotating over three input sets;
- a device-to-device copy of `--copy-gib` GiB (bytes read + bytes written, as a roofline counts
  a copy), the usual measured stand-in for HBM bandwidth;
- decode-shaped products (M = 1 and 8 against a `--gemv-k` x `--gemv-n` bf16 weight, the weight
  read once per product): how close cuBLAS's GEMV-like kernels come to that copy.

Each product is first checked against a float64 reference on a slice of rows (relative error),
so a broken setup cannot report a fast wrong answer. The JSON goes to `--out`; a short table is
printed last. tracekit's GPU peak table (`tracekit/data/gpu_peaks.toml`) quotes the result next
to the datasheet figures it checks.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time


def _time_ms(torch, fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _rel_err(torch, out, a, b, rows: int = 256) -> float:
    ref = a[:rows].double() @ b.double()
    got = out[:rows].double()
    return float((got - ref).norm() / ref.norm())


def matmul(torch, dtype_name: str, size: int, warmup: int, repeats: int) -> dict:
    dev = "cuda"
    n = size
    if dtype_name == "fp8_e4m3":
        if not hasattr(torch, "float8_e4m3fn") or torch.cuda.get_device_capability() < (8, 9):
            return {"dtype": dtype_name, "skipped": "no fp8 on this GPU / torch"}
        sets = []
        for _ in range(3):
            a = (torch.randn(n, n, device=dev) * 0.5).to(torch.float8_e4m3fn)
            b = (torch.randn(n, n, device=dev) * 0.5).to(torch.float8_e4m3fn).t()  # column-major B
            sets.append((a, b))
        one = torch.ones((), device=dev)
        out = torch._scaled_mm(sets[0][0], sets[0][1], scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        err = _rel_err(torch, out, sets[0][0].float(), sets[0][1].float())
        i = [0]

        def fn():
            a, b = sets[i[0] % 3]
            i[0] += 1
            torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
        torch.backends.cuda.matmul.allow_tf32 = False
        sets = [(torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype))
                for _ in range(3)]
        outs = [torch.empty(n, n, device=dev, dtype=dtype) for _ in range(3)]
        out = torch.mm(*sets[0])
        err = _rel_err(torch, out, sets[0][0], sets[0][1])
        i = [0]

        def fn():
            k = i[0] % 3
            i[0] += 1
            torch.mm(*sets[k], out=outs[k])
    times = _time_ms(torch, fn, warmup, repeats)
    med = statistics.median(times)
    flops = 2.0 * n * n * n
    return {"dtype": dtype_name, "m": n, "n": n, "k": n, "rel_err": err, "median_ms": med,
            "min_ms": min(times), "max_ms": max(times), "repeats": repeats,
            "tflops_median": flops / (med * 1e-3) / 1e12, "tflops_best": flops / (min(times) * 1e-3) / 1e12}


def copy(torch, gib: float, warmup: int, repeats: int) -> dict:
    n = int(gib * (1 << 30)) // 2
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    dst.fill_(float("nan"))
    dst.copy_(src)
    torch.cuda.synchronize()
    assert torch.equal(dst, src), "copy check failed"
    times = _time_ms(torch, lambda: dst.copy_(src), warmup, repeats)
    med = statistics.median(times)
    moved = 2.0 * n * 2  # bytes read + bytes written
    return {"bytes_read_plus_written": moved, "median_ms": med, "min_ms": min(times), "max_ms": max(times),
            "repeats": repeats, "tbps_median": moved / (med * 1e-3) / 1e12,
            "tbps_best": moved / (min(times) * 1e-3) / 1e12}


def gemv(torch, m: int, k: int, n: int, warmup: int, repeats: int) -> dict:
    # Rotate over weights that together exceed the L2, so each product reads its weight from HBM.
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.nn.functional.linear(x, ws[0])
    err = _rel_err(torch, out, x, ws[0].t(), rows=m)
    i = [0]

    def fn():
        torch.nn.functional.linear(x, ws[i[0] % 3])
        i[0] += 1
    times = _time_ms(torch, fn, warmup, repeats)
    med = statistics.median(times)
    moved = 2.0 * (k * n + m * k + m * n)
    return {"m": m, "k": k, "n": n, "rel_err": err, "median_ms": med, "repeats": repeats,
            "tbps_median": moved / (med * 1e-3) / 1e12, "tflops_median": 2.0 * m * n * k / (med * 1e-3) / 1e12}


def _smi() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,"
                               "clocks.max.sm,clocks.max.mem,power.limit,temperature.gpu", "--format=csv"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="peaks.json")
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--copy-gib", type=float, default=4.0)
    p.add_argument("--gemv-k", type=int, default=4096)
    p.add_argument("--gemv-n", type=int, default=28672)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args(argv)

    import torch

    t0 = time.time()
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    result = {
        "gpu": torch.cuda.get_device_name(0), "sm_count": props.multi_processor_count,
        "memory_bytes": props.total_memory, "torch": torch.__version__, "cuda": torch.version.cuda,
        "host": platform.node(), "nvidia_smi_before": _smi(),
        "method": "CUDA events around each call after warm-up; median of repeats; random normal inputs",
    }
    result["copy"] = copy(torch, args.copy_gib, args.warmup, args.repeats)
    result["matmul"] = [matmul(torch, d, args.size, args.warmup, args.repeats)
                        for d in ("bf16", "fp16", "fp8_e4m3", "fp32")]
    result["gemv"] = [gemv(torch, m, args.gemv_k, args.gemv_n, args.warmup, args.repeats) for m in (1, 8)]
    result["copy_again"] = copy(torch, args.copy_gib, args.warmup, args.repeats)  # spread between runs
    result["nvidia_smi_after"] = _smi()
    result["seconds"] = time.time() - t0
    del result["host"]  # no machine names in results
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)

    print(f"{result['gpu']}  torch {result['torch']}  CUDA {result['cuda']}")
    for c in (result["copy"], result["copy_again"]):
        print(f"device copy {args.copy_gib} GiB: {c['tbps_median']:.3f} TB/s median "
              f"({c['tbps_best']:.3f} best, {c['median_ms']:.3f} ms)")
    for r in result["matmul"]:
        if "skipped" in r:
            print(f"matmul {r['dtype']}: skipped ({r['skipped']})")
        else:
            print(f"matmul {r['dtype']} {r['m']}^3: {r['tflops_median']:.1f} TFLOP/s median "
                  f"({r['tflops_best']:.1f} best), rel err {r['rel_err']:.2e}")
    for g in result["gemv"]:
        print(f"linear M={g['m']} K={g['k']} N={g['n']} bf16: {g['tbps_median']:.3f} TB/s, "
              f"{g['median_ms'] * 1e3:.1f} us, rel err {g['rel_err']:.2e}")
    print(f"took {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
