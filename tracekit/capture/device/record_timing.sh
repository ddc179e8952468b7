#!/usr/bin/env bash
# On the GPU machine: the reduced study grids without traces (h100-reduced.toml) for the models
# given, stopped in time to pack what is done. Carry out/sweeps/h100-reduced from earlier calls:
# the sweep skips the runs already done there.
#   SWEEP_SET="--set iterations=0" bash tracekit/capture/device/record_timing.sh SECONDS MODEL[,MODEL...] NAME
set -u
secs=$1 models=$2 name=$3
export PYTHONUNBUFFERED=1
mkdir -p out/sweeps/h100-reduced
timeout "$secs" python3 tracekit/capture/sweep.py tracekit/capture/sweeps/h100-reduced.toml --out-dir out/sweeps/h100-reduced \
  --models "$models" --max-attempts 1 --grid fig7 --grid fig6 ${SWEEP_SET:-} 2>&1 | grep -v UserWarning | grep -v _warn_once
ls out/sweeps/h100-reduced | wc -l
tar -czf "$OUT/$name.tgz" out/sweeps/h100-reduced
