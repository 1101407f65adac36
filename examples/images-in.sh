#!/usr/bin/env bash
# Images in on one strip: a red circle, img2img towards blue at four strengths, an inpainting that keeps the left
# half and paints a blue square into the right, and the hires fix at twice the size (shown at the strip's size).
# The README's picture (examples/images-in.png) is this script's output on the built-in shapes model.
#
#   examples/images-in.sh [MODEL] [OUT_DIR]      (STEPS=30 by default)
set -euo pipefail

model="${1:-${SDCLI_MODEL:-shapes}}"
out="${2:-outputs/images-in}"
mkdir -p "$out"
run() { sdcli generate "$@" -m "$model" --steps "${STEPS:-30}" --overwrite -q > /dev/null; }

run "a red circle on a white background" --seed 1 -o "$out/red.png"
for s in 0.3 0.5 0.7 0.9; do
    run "a blue circle on a white background" -i "$out/red.png" --strength "$s" --seed 2 -o "$out/img2img-$s.png"
done
# The mask: white (repaint) on the right half, black (keep) on the left.
python -c "from PIL import Image; import sys; w, h = Image.open(sys.argv[1]).size; m = Image.new('L', (w, h)); \
m.paste(255, (w // 2, 0, w, h)); m.save(sys.argv[2])" "$out/red.png" "$out/mask.png"
run "a blue square on a white background" -i "$out/red.png" --mask "$out/mask.png" --strength 1 --seed 3 \
    -o "$out/inpaint.png"
run "a red circle on a white background" --seed 1 --hires-scale 2 -o "$out/hires.png"

python - "$out" <<'PY'
import sys
from pathlib import Path

from PIL import Image

from sdcli.output.sheets import contact_sheet

out = Path(sys.argv[1])
names = ["red", "img2img-0.3", "img2img-0.5", "img2img-0.7", "img2img-0.9", "mask", "inpaint", "hires"]
labels = ["input", "S 0.3", "S 0.5", "S 0.7", "S 0.9", "mask", "inpainted", "hires 2x"]
size = Image.open(out / "red.png").size
cells = [[Image.open(out / f"{name}.png").convert("RGB").resize(size, Image.Resampling.LANCZOS) for name in names]]
contact_sheet(cells, labels, [""]).save(out / "strip.png")
PY
echo "$out/strip.png"
