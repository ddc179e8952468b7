set -x
nvidia-smi --query-gpu=name,driver_version --format=csv
python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)'
mkdir -p /tmp/n && tar -xJf .nsys/nsys-target-slim.tar.xz -C /tmp/n
export TRACEKIT_NSYS=/tmp/n/target-linux-x64/nsys PYTHONUNBUFFERED=1
$TRACEKIT_NSYS --version
D=$OUT/smoke; mkdir -p $D
time python3 tracekit/capture/hf_pytorch.py --model gemma-2b --layers 2 --batch 1 --input-len 16 --output-len 4 --profiler torch --out-dir $D
time python3 tracekit/capture/hf_pytorch.py --model llama3-8b --layers 2 --batch 2 --input-len 16 --output-len 4 --profiler nsys --out-dir $D
time python3 tracekit/capture/hf_pytorch.py --model llama2-7b --layers 2 --batch 2 --input-len 16 --output-len 4 --profiler nsys --emit-nvtx --nsys-capture all --tag shapes --out-dir $D
time python3 tracekit/capture/hf_pytorch.py --model gemma-7b --batch 1 --input-len 64 --output-len 16 --profiler none --kernel-sums --out-dir $D
time python3 tracekit/capture/hf_pytorch.py --model llama2-7b --batch 1 --input-len 64 --output-len 16 --profiler none --kernel-sums --warmup-output-len 4 --out-dir $D
ls -la $D; cat $D/*.manifest.json | head -80
cd $OUT && tar czf smoke.tgz smoke && rm -rf smoke
