#!/usr/bin/env bash
# Make the images of a prompt file, then run the same command again: the rerun resumes, so it makes nothing new.
# A .txt file has one prompt per line; a .jsonl line may override any option for itself.
#
#   examples/batch.sh [MODEL] [OUT_DIR]      (STEPS=20 by default; SAMPLER as sdcli's default)
set -euo pipefail

model="${1:-${SDCLI_MODEL:-shapes}}"
out="${2:-outputs/batch-example}"
steps="${STEPS:-20}"
sampler=(); [[ -n "${SAMPLER:-}" ]] && sampler=(--sampler "$SAMPLER")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/prompts.jsonl" <<'JSONL'
{"prompt": "a red circle on a white background"}
{"prompt": "a blue square on a black background", "n": 2}
{"prompt": "a yellow triangle", "neg": "black background", "cfg": 5, "seed": 7}
JSONL

# Paths on stdout, one per image as it lands; manifest.jsonl in the folder records each image's settings.
sdcli batch "$work/prompts.jsonl" -m "$model" --steps "$steps" "${sampler[@]}" --out-dir "$out" --quiet
echo "manifest: $(wc -l < "$out/manifest.jsonl") images"

# The same command again: everything is already there ("skipped 4 of 4 images" on stderr), nothing is remade.
made=$(sdcli batch "$work/prompts.jsonl" -m "$model" --steps "$steps" "${sampler[@]}" --out-dir "$out" | wc -l)
echo "rerun made $made new images"
