// CPU feature detection (cpuid + xgetbv) and kernel-set dispatch.
#pragma once
#include <string>
#include <vector>

namespace bitflow {

struct CpuFeatures {
  bool popcnt = false;
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512vpopcntdq = false;
  bool avx512vnni = false;
  bool avxvnni = false;
  bool neon = false;     // aarch64 Advanced SIMD (always present there)
  bool dotprod = false;  // aarch64 SDOT / UDOT (FEAT_DotProd)
};

/// Features of the running CPU, detected once. AVX/AVX2/FMA need the OS to save ymm state
/// (XCR0 bits 1-2); every AVX-512 feature also needs opmask/zmm state (XCR0 bits 5-7).
const CpuFeatures& cpu_features();

struct KernelSet;

/// Every kernel set compiled into this build, in order from the reference to the best.
const std::vector<const KernelSet*>& compiled_kernel_sets();

/// Compiled AND supported by this CPU, reference first, best last.
std::vector<const KernelSet*> eligible_kernel_sets();

/// Per-op selection: for every op (KernelOp) the kernel of the best compiled set whose
/// op_supported(op, f) holds, named "auto". A CPU with AVX-512F/BW/VL but no VPOPCNTDQ thus
/// gets the AVX-512 bitpack / threshold / sgemm kernels and the AVX2 popcount GEMM.
KernelSet compose_kernel_set(const CpuFeatures& f);

/// compose_kernel_set(cpu_features()), built once (static storage).
const KernelSet& auto_kernel_set();

/// Resolve a kernel-set name. "auto" is the per-op selection; "" means the default (chosen
/// once: BITFLOW_KERNELS if set, else "auto"). Throws std::invalid_argument naming the problem when the
/// name is unknown, not compiled, or not supported by this CPU.
const KernelSet& resolve_kernels(const std::string& name);

/// The default kernel set: BITFLOW_KERNELS (a set name or "auto") if set, else "auto"
/// (resolved once; throws std::invalid_argument if BITFLOW_KERNELS
/// names a set that is not eligible).
const KernelSet& default_kernel_set();

}  // namespace bitflow
