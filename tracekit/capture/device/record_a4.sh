#!/usr/bin/env bash
# On the GPU machine: the Figure 7 composition traces (h100-fig7-traces.toml) and what is left of
# the reduced timing grid (carry out/sweeps/h100-reduced). One archive per model comes back.
set -u
export PYTHONUNBUFFERED=1
filt() { grep -v UserWarning | grep -v _warn_once | grep -v '^wrote'; }
timeout "$1" python3 tracekit/capture/sweep.py tracekit/capture/sweeps/h100-reduced.toml --out-dir out/sweeps/h100-reduced \
  --max-attempts 1 --grid fig7 --grid fig6 --outputs 4,8,16,64,512 --models gemma-7b,llama2-7b \
  --set iterations=0 2>&1 | filt
timeout "$2" python3 tracekit/capture/sweep.py tracekit/capture/sweeps/h100-fig7-traces.toml --max-attempts 1 2>&1 | filt
ls -la out/sweeps/h100-fig7-traces
tar -czf "$OUT/a4-timing.tgz" out/sweeps/h100-reduced
for m in llama2-7b llama3-8b gemma-2b gemma-7b; do
  tar -cf "$OUT/a4-$m.tar" out/sweeps/h100-fig7-traces/$m[-_]*
  # 16 MB is the most one file may bring back
  if [ "$(stat -c %s "$OUT/a4-$m.tar")" -gt 15800000 ]; then
    split -b 15M -d "$OUT/a4-$m.tar" "$OUT/a4-$m.tar.part" && rm "$OUT/a4-$m.tar"
  fi
done
ls -la $OUT
