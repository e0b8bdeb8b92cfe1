#!/usr/bin/env bash
# The GPU step benchmark on a CUDA machine, from the repository root:
#   bash benchmarks/gpu_step/run_device.sh          # results into $OUT (or benchmarks/gpu_step/results)
# ResNet-18 at 224 px, batch 256, AMP: 3 modes x 2 rounds x 60 steps; a few minutes with the start-up.
# A ConvNet run follows when time is left; each run is bounded by its own timeout.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-benchmarks/gpu_step/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python -c "import torch; print(torch.__version__, torch.version.cuda)"; } \
    > "$out/environment.txt" 2>&1
timeout 300 python -m benchmarks.gpu_step --device cuda --arch resnet18 --steps 50 --warmup 10 --rounds 2 \
    --batch-size 256 --image-size 224 --out "$out" 2>&1 | tee "$out/gpu_step.log"
rc=${PIPESTATUS[0]}
mkdir -p "$out/convnet"
timeout 120 python -m benchmarks.gpu_step --device cuda --arch convnet --steps 50 --warmup 10 --rounds 2 \
    --batch-size 256 --image-size 224 --out "$out/convnet" 2>&1 | tee "$out/convnet/gpu_step.log"
exit "$rc"
