#!/usr/bin/env bash
# ARM NEON kernels, checked under emulation: cross-compile the native kernel self-test
# (tests/native/arm: every kernel set and the per-op selection "auto" against the reference
# kernels on random and tile-edge shapes, plus the threaded prepared layers) for aarch64 with
# Debian's g++-aarch64-linux-gnu and run it under qemu-aarch64 (Debian qemu-user) twice:
#   -cpu max         NEON + dotprod: the "neon" set (SDOT int8 GEMM) and "auto";
#   -cpu cortex-a53  ARMv8.0, no dotprod: "auto" = NEON binary kernels + reference int8 GEMM.
# With the project's .venv (scripts/setup.sh; CI runs it first), a model run is replayed too:
# bitflow_lenet (int8 first layer) trained for one epoch on 3000 Fashion-MNIST images,
# converted, run by the x86 engine on 200 test images and recorded (tests/native/arm/
# dump_model.py); under qemu every op is rerun with each kernel set on the recorded input
# (integers and bits bit for bit) and the whole chain must give the same predictions.
# Installs both packages when missing (apt-get; root or sudo). Correctness only: no speed
# claims under emulation. Usage: bash scripts/test_arm.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build/arm-selftest}
CXX_ARM=aarch64-linux-gnu-g++

if ! command -v "$CXX_ARM" >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++-aarch64-linux-gnu qemu-user >/dev/null
fi
command -v cmake >/dev/null || { echo "test_arm: cmake is required" >&2; exit 1; }

cmake -S tests/native/arm -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_CXX_COMPILER="$CXX_ARM" -DBF_STATIC=ON >/dev/null
cmake --build "$BUILD" -j 2 >/dev/null
file "$BUILD/kernel_selftest" 2>/dev/null | grep -q "ARM aarch64" || { command -v file >/dev/null && { echo "test_arm: not an aarch64 binary" >&2; exit 1; }; }

replay=()
if [ -x .venv/bin/python ]; then
  FM="$BUILD/fashion-mnist"
  echo "== record a Fashion-MNIST model run on this machine ($FM)"
  .venv/bin/bitflow train --model bitflow_lenet --model-arg first_layer=int8 --data fashion-mnist \
    --epochs 1 --limit-train 3000 --limit-test 500 --out "$FM" --no-progress >/dev/null
  .venv/bin/bitflow convert "$FM/best.pt" -o "$FM/model.bfn" >/dev/null
  .venv/bin/python tests/native/arm/dump_model.py "$FM/replay" --model-file "$FM/model.bfn" --images 200
  replay=(--replay "$FM/replay")
else
  echo "== no .venv (bash scripts/setup.sh): the model replay is skipped, kernel self-tests only"
fi

status=0
for cpu in max cortex-a53; do
  echo "== qemu-aarch64 -cpu $cpu"
  qemu-aarch64 -cpu "$cpu" "$BUILD/kernel_selftest" "${replay[@]}" || status=1
done
exit $status
