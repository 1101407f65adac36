#!/usr/bin/env bash
# Sweep the guidance scale for one prompt: a contact sheet (grid.png) with a column per scale and a row per seed,
# metrics.csv / metrics.json / metrics.png, and the summary table on stderr. Then read the summary with jq.
#
#   examples/sweep.sh [MODEL] [OUT_DIR]      (STEPS=20 by default; SAMPLER as sdcli's default)
set -euo pipefail

model="${1:-${SDCLI_MODEL:-shapes}}"
out="${2:-outputs/sweep-example}"
sampler=(); [[ -n "${SAMPLER:-}" ]] && sampler=(--sampler "$SAMPLER")

sdcli sweep-guidance "a red circle on a white background" -m "$model" --cfg 1:9:4 --seeds 3 --seed 0 \
    --steps "${STEPS:-20}" "${sampler[@]}" --batch-size 3 --out-dir "$out" --overwrite > /dev/null

echo "contact sheet: $out/grid.png"
# One summary row per guidance scale; adherence is null where it is not measured (no judge or CLIP model).
jq -r '.summary[] | "cfg \(.cfg): diversity \(.diversity * 1000 | round / 1000), adherence \(.adherence)"' \
    "$out/metrics.json"
