// CPU feature detection with cpuid/xgetbv, and the kernel-set registry used for dispatch.
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "bitflow/cpu.h"
#include "bitflow/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace bitflow {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
std::uint64_t read_xcr0() {
  std::uint32_t eax = 0, edx = 0;
  // xgetbv with ecx = 0 (XCR0); encoded as bytes so no -mxsave flag is needed.
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<std::uint64_t>(edx) << 32) | eax;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  __cpuid_count(1, 0, a, b, c, d);
  f.popcnt = (c >> 23) & 1u;
  const bool osxsave = (c >> 27) & 1u;
  const bool avx = (c >> 28) & 1u;
  const bool fma = (c >> 12) & 1u;
  bool ymm_os = false, zmm_os = false;
  if (osxsave) {
    const std::uint64_t xcr0 = read_xcr0();
    ymm_os = (xcr0 & 0x6u) == 0x6u;     // SSE + AVX state
    zmm_os = (xcr0 & 0xE6u) == 0xE6u;   // + opmask, ZMM_Hi256, Hi16_ZMM
  }
  if (max_leaf < 7 || !ymm_os || !avx) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = (b >> 5) & 1u;
  f.fma = fma;
  if (zmm_os) {
    f.avx512f = (b >> 16) & 1u;
    f.avx512bw = (b >> 30) & 1u;
    f.avx512vl = (b >> 31) & 1u;
    f.avx512vnni = (c >> 11) & 1u;
    f.avx512vpopcntdq = (c >> 14) & 1u;
  }
  __cpuid_count(7, 1, a, b, c, d);
  f.avxvnni = (a >> 4) & 1u;
  return f;
}
#else
CpuFeatures detect() { return CpuFeatures{}; }
#endif

const KernelSet& resolve_no_default(const std::string& name) {
  for (const KernelSet* ks : compiled_kernel_sets()) {
    if (name == ks->name) {
      if (!ks->supported(cpu_features())) {
        throw std::invalid_argument("kernel set '" + name +
                                    "' is compiled but not supported by this CPU");
      }
      return *ks;
    }
  }
  std::string known;
  for (const KernelSet* ks : compiled_kernel_sets()) known += std::string(known.empty() ? "" : ", ") + ks->name;
  throw std::invalid_argument("unknown or not compiled kernel set '" + name +
                              "' (compiled: " + known + ")");
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

const std::vector<const KernelSet*>& compiled_kernel_sets() {
  static const std::vector<const KernelSet*> sets = {
      &kRefKernels, &kScalarKernels,
#if defined(BITFLOW_HAVE_X86_KERNELS)
      &kAvx2Kernels, &kAvx512Kernels,
#endif
  };
  return sets;
}

std::vector<const KernelSet*> eligible_kernel_sets() {
  std::vector<const KernelSet*> out;
  for (const KernelSet* ks : compiled_kernel_sets())
    if (ks->supported(cpu_features())) out.push_back(ks);
  return out;
}

const KernelSet& default_kernel_set() {
  static const KernelSet* chosen = [] {
    const char* env = std::getenv("BITFLOW_KERNELS");
    if (env != nullptr && env[0] != '\0') {
      try {
        return &resolve_no_default(env);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string("environment variable BITFLOW_KERNELS: ") +
                                    e.what());
      }
    }
    return eligible_kernel_sets().back();
  }();
  return *chosen;
}

const KernelSet& resolve_kernels(const std::string& name) {
  if (name.empty()) return default_kernel_set();
  return resolve_no_default(name);
}

}  // namespace bitflow
