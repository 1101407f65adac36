#!/usr/bin/env bash
# Make three images in one batch, then remake the second one alone from its PNG and check the bytes are equal:
# image i of a run with seed S is seeded S+i, whatever the batch, and every PNG carries the settings that made it.
#
#   examples/remake.sh [MODEL]      (default: $SDCLI_MODEL, else the built-in model)
set -euo pipefail

model="${1:-${SDCLI_MODEL:-shapes}}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# One JSON object per image on stdout; paths are all we need here.
sdcli generate "a red circle on a white background" -m "$model" --seed 42 -n 3 --batch-size 3 \
    --steps 10 --out-dir "$out/batch" --quiet --json > "$out/made.jsonl"
second=$(sed -n 2p "$out/made.jsonl" | python3 -c 'import json, sys; print(json.load(sys.stdin)["path"])')

sdcli inspect "$second"
sdcli generate --from "$second" -o "$out/alone.png" --quiet > /dev/null

if cmp -s "$second" "$out/alone.png"; then
    echo "remade $(basename "$second") alone: the same bytes"
else
    echo "remade image differs from $second" >&2
    exit 1
fi
