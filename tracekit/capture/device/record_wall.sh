#!/usr/bin/env bash
# On the GPU machine: wall time (CUDA events, no profiler) of the Figure 7 cells for the models
# given, into out/sweeps/h100-wall, stopped in time to pack what is done.
#   bash tracekit/capture/device/record_wall.sh SECONDS MODEL[,MODEL...]
set -u
export PYTHONUNBUFFERED=1
timeout "$1" python3 tracekit/capture/sweep.py tracekit/capture/sweeps/h100-reduced.toml --out-dir out/sweeps/h100-wall \
  --models "$2" --grid fig7 --max-attempts 1 --set kernel_sums=false 2>&1 | grep -v '^wrote'
tar -czf "$OUT/wall.tgz" out/sweeps/h100-wall
