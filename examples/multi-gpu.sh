#!/usr/bin/env bash
# A batch across every GPU of this machine with accelerate: each process loads the model once on its own GPU and
# makes its share of the images; the files and manifest.jsonl are those of a single-process run.
# On a machine without CUDA, NUM_PROCESSES=2 runs two CPU processes (a gloo group) the same way.
#
#   examples/multi-gpu.sh PROMPTS.txt [MODEL] [OUT_DIR]
set -euo pipefail

prompts="$1"
model="${2:-${SDCLI_MODEL:-shapes}}"
out="${3:-outputs/multi-gpu-example}"
processes="${NUM_PROCESSES:-$( (nvidia-smi --list-gpus 2>/dev/null || true) | wc -l)}"
if (( processes < 1 )); then
    echo "no GPU found; set NUM_PROCESSES (for example NUM_PROCESSES=2 to split the work over two CPU processes)" >&2
    exit 2
fi

accelerate launch --multi_gpu --num_processes "$processes" --num_machines 1 --mixed_precision no \
    --dynamo_backend no -m sdcli batch "$prompts" -m "$model" --batch-size 8 --out-dir "$out" --quiet
echo "$(wc -l < "$out/manifest.jsonl") images in $out"
