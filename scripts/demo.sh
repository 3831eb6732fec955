#!/usr/bin/env bash
# The main job on a fresh machine: set up, train a small BitFlow-Net on Fashion-MNIST, convert it
# to an integer-only .bfn model, verify it against PyTorch on the full test set, run it on the
# native engine, and report accuracy, exactness, speed and memory.
#   DEMO_EPOCHS (default 2), DEMO_OUT (default runs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BF=.venv/bin/bitflow
EPOCHS=${DEMO_EPOCHS:-2}
OUT=${DEMO_OUT:-runs/demo}
echo "== 1. train bitflow_vgg_small on Fashion-MNIST ($EPOCHS epochs; the full recipe is 15)"
$BF train --model bitflow_vgg_small --data fashion-mnist --epochs "$EPOCHS" --out "$OUT" --no-progress --json > "$OUT.train.json"
.venv/bin/python - "$OUT.train.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"   test accuracy {r['test_accuracy']:.4f}  (best val {r['val_accuracy']:.4f}), {r['seconds_per_epoch']:.0f} s/epoch")
print("   last sign changing rate per layer:", {k: round(v, 5) for k, v in r["flip_ratio"].items()})
PY
echo "== 2. Table 3 accounting for the small model"
$BF summary --model bitflow_vgg_small
