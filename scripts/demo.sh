#!/usr/bin/env bash
# The main job on a fresh machine: set up, train a small BitFlow-Net on Fashion-MNIST, convert it
# to an integer-only .bfn model, verify it against PyTorch on the full test set, run it on the
# native engine, and report accuracy, exactness, speed and memory.
#   DEMO_EPOCHS (default 3; the full fashion-mnist recipe is 15), DEMO_OUT (default runs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BF=.venv/bin/bitflow
PY=.venv/bin/python
EPOCHS=${DEMO_EPOCHS:-3}
OUT=${DEMO_OUT:-runs/demo}
mkdir -p "$OUT"

echo "== 1/5 train bitflow_vgg_small on Fashion-MNIST ($EPOCHS epochs, validation split 10% of train)"
$BF train --model bitflow_vgg_small --data fashion-mnist --epochs "$EPOCHS" --out "$OUT" --no-progress --json > "$OUT/train.json"
$PY - "$OUT/train.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"   test accuracy {r['test_accuracy']:.4f} (best val {r['val_accuracy']:.4f}), {r['seconds_per_epoch']:.0f} s/epoch")
print("   last sign changing rate per layer:", {k: round(v, 5) for k, v in r["flip_ratio"].items()})
PY

echo "== 2/5 convert: BatchShift fusion + bit packing -> $OUT/model.bfn"
$BF convert "$OUT/best.pt" -o "$OUT/model.bfn" --json > "$OUT/convert.json"
$PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(f\"   {d['ops']} ops, {d['file_bytes']} bytes, mode {d['mode']}\")" "$OUT/convert.json"

echo "== 3/5 verify: PyTorch vs the integer model on the full test set"
$BF verify "$OUT/best.pt" "$OUT/model.bfn" --json > "$OUT/verify.json"
$PY - "$OUT/verify.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
print(f"   {v['samples']} samples: accuracy torch {v['accuracy_torch']:.4f} = integer {v['accuracy_integer']:.4f}; "
      f"prediction mismatches {v['prediction_mismatches']}, sign mismatches {v['sign_mismatches']} "
      f"of {v['signs_compared']} signs, ties {v['ties']}, near-threshold {v['near_threshold']['count']}")
PY

echo "== 4/5 run on the native engine (agreement with the reference executor, op by op)"
$BF run "$OUT/model.bfn" --json > "$OUT/run.json"
$PY - "$OUT/run.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); ref = r["reference"]
print(f"   accuracy {r['accuracy']:.4f} with kernels {r['kernels']} ({r['threads']} threads, batch {r['batch_size']}): "
      f"{r['ms_per_sample']:.3f} ms/image; vs reference: {ref['prediction_mismatches']} prediction and "
      f"{ref['exact_mismatches']} integer/bit mismatches of {ref['exact_values_compared']} values")
PY

echo "== 5/5 speed and memory: engine vs PyTorch float32 (full-precision twin), same run"
$PY - "$OUT/model.bfn" <<'PY'
import sys, time, numpy as np, torch
import bitflow.engine as E
from bitflow.models import create
from bitflow.data import load_arrays
m = E.load(sys.argv[1], threads=1)
x, _ = load_arrays("fashion-mnist", "test", limit=16)
fp = create("vgg_small").eval()
torch.set_num_threads(1)
def med(f, n=50):
    for _ in range(5): f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return 1000 * float(np.median(ts))
for b in (1, 16):
    xb = np.ascontiguousarray(x[:b]); xt = torch.from_numpy(xb)
    e = med(lambda: m.logits(xb))
    with torch.no_grad():
        t = med(lambda: fp(xt))
    print(f"   batch {b:>2}, 1 thread: engine {e:.3f} ms, PyTorch float32 twin {t:.3f} ms  ({t / e:.1f}x)")
info = m.info()
fp_bytes = sum(p.numel() * 4 for p in fp.parameters())
peak = [0]
def hook(mod, inp, out):
    peak[0] = max(peak[0], 4 * (inp[0][0].numel() + out[0].numel()))
hs = [mod.register_forward_hook(hook) for mod in fp]
with torch.no_grad():
    fp(torch.from_numpy(x[:1]))
print(f"   parameters: .bfn {info['param_bytes']} B vs float32 twin {fp_bytes} B ({fp_bytes / info['param_bytes']:.1f}x smaller)")
print(f"   peak activation memory per image (one layer's input + output): engine {info['peak_activation_bytes_per_sample']} B "
      f"vs float32 twin {peak[0]} B ({peak[0] / info['peak_activation_bytes_per_sample']:.1f}x smaller)")
PY
echo "== done: results in $OUT (train.json, verify.json, run.json, model.bfn)"
