#!/usr/bin/env bash
# A loop over seeds in plain bash: one `sdcli generate` per seed with --json, the fields picked out with jq.
# (sdcli batch does this in one process with the model loaded once; this shows the JSON interface.)
#
#   examples/seeds.sh [MODEL] [OUT_DIR]      (SEEDS="1 2 3", STEPS=20 by default; SAMPLER as sdcli's default)
set -euo pipefail

model="${1:-${SDCLI_MODEL:-shapes}}"
out="${2:-outputs/seeds-example}"
sampler=(); [[ -n "${SAMPLER:-}" ]] && sampler=(--sampler "$SAMPLER")

mkdir -p "$out"
for seed in ${SEEDS:-1 2 3}; do
    sdcli generate "a green square on a gray background" -m "$model" --seed "$seed" --steps "${STEPS:-20}" \
        "${sampler[@]}" --out-dir "$out" --overwrite --quiet --json
done > "$out/made.jsonl"

# seed, seconds and path of each image, as a table
jq -r '[.seed, .seconds, .path] | @tsv' "$out/made.jsonl"
