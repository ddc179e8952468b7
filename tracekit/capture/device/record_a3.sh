#!/usr/bin/env bash
# On the GPU machine: the fixture traces (h100-fixtures.toml, both profilers) and the rest of the
# reduced timing grid. Needs .nsys (carried) holding nsys-target-slim.tar.xz.
set -u
export PYTHONUNBUFFERED=1
mkdir -p /tmp/n && tar -xJf .nsys/nsys-target-slim.tar.xz -C /tmp/n
export TRACEKIT_NSYS=/tmp/n/target-linux-x64/nsys
filt() { grep -v UserWarning | grep -v _warn_once | grep -v '^wrote'; }
timeout 170 python3 tracekit/capture/sweep.py tracekit/capture/sweeps/h100-fixtures.toml --max-attempts 1 2>&1 | filt
timeout "$1" python3 tracekit/capture/sweep.py tracekit/capture/sweeps/h100-reduced.toml --out-dir out/sweeps/h100-reduced \
  --max-attempts 1 --grid fig7 --grid fig6 --outputs 4,8,16,64,512 --models gemma-2b,gemma-7b,llama2-7b \
  --set iterations=0 2>&1 | filt
ls -la out/sweeps/h100-fixtures; ls out/sweeps/h100-reduced | wc -l
tar -czf "$OUT/a3-timing.tgz" out/sweeps/h100-reduced
tar -cf "$OUT/a3-fixtures.tar" out/sweeps/h100-fixtures
