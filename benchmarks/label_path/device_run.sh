#!/usr/bin/env bash
# The GPU checks in one run, for a machine with CUDA (a few minutes on an H200 with 16 host cores):
#   1. python -m benchmarks.label_path.device_paths: encode, LabelDecoder and SCORE selection on the CPU
#      and on CUDA;
#   2. python -m benchmarks.label_path --device cuda: batch-256 random-row decode against the fp16 gather in
#      GPU memory, one 65,536-row call's peak allocation, full-matrix decode, and whole-dump
#      `score-codec encode --device cuda` against torch.load of the same SRe2L batch files.
# Results go to $OUT (when set) or benchmarks/runs/; copy them to benchmarks/label_path/results/ to commit them.
#   bash benchmarks/label_path/device_run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-benchmarks/runs}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/nvidia_smi.csv" 2>&1
python3 -c "import torch, score_codec, score_select; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  || { echo "score does not import here" >&2; exit 2; }
rc=0
timeout 300 python3 -m benchmarks.label_path.device_paths --out "$out/device_paths.md" 2>&1 | tee "$out/device_paths.log" || rc=1
timeout 300 python3 -m benchmarks.label_path --device cuda --sections decode encode --threads "$(nproc)" \
  --out "$out/label_path_cuda.md" 2>&1 | tee "$out/label_path_cuda.log" || rc=1
exit $rc
