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
};

/// Features of the running CPU, detected once. AVX/AVX2/FMA need the OS to save ymm state
/// (XCR0 bits 1-2); every AVX-512 feature also needs opmask/zmm state (XCR0 bits 5-7).
const CpuFeatures& cpu_features();

struct KernelSet;

/// Every kernel set compiled into this build, in order from the reference to the best.
const std::vector<const KernelSet*>& compiled_kernel_sets();

/// Compiled AND supported by this CPU, reference first, best last.
std::vector<const KernelSet*> eligible_kernel_sets();

/// Resolve a kernel-set name. "" means the default (chosen once: BITFLOW_KERNELS if set,
/// else the best eligible set). Throws std::invalid_argument naming the problem when the
/// name is unknown, not compiled, or not supported by this CPU.
const KernelSet& resolve_kernels(const std::string& name);

/// The default kernel set (resolved once; throws std::invalid_argument if BITFLOW_KERNELS
/// names a set that is not eligible).
const KernelSet& default_kernel_set();

}  // namespace bitflow
