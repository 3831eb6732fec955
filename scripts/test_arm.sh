#!/usr/bin/env bash
# ARM NEON kernels, checked under emulation: cross-compile the native kernel self-test
# (tests/native/arm: every kernel set and the per-op selection "auto" against the reference
# kernels on random and tile-edge shapes, plus the threaded prepared layers) for aarch64 with
# Debian's g++-aarch64-linux-gnu and run it under qemu-aarch64 (Debian qemu-user) twice:
#   -cpu max         NEON + dotprod: the "neon" set (SDOT int8 GEMM) and "auto";
#   -cpu cortex-a53  ARMv8.0, no dotprod: "auto" = NEON binary kernels + reference int8 GEMM.
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

status=0
for cpu in max cortex-a53; do
  echo "== qemu-aarch64 -cpu $cpu"
  qemu-aarch64 -cpu "$cpu" "$BUILD/kernel_selftest" || status=1
done
exit $status
