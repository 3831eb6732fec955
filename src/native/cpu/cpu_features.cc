// CPU feature detection with cpuid/xgetbv, and the kernel-set registry used for dispatch.
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "bitflow/cpu.h"
#include "bitflow/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
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
#elif defined(__aarch64__)
CpuFeatures detect() {
  CpuFeatures f;
  f.neon = true;  // Advanced SIMD is mandatory in AArch64 (hwcap bit 1 on Linux)
#if defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP);
  f.dotprod = (hw >> 20) & 1ul;  // HWCAP_ASIMDDP
#endif
  return f;
}
#else
CpuFeatures detect() { return CpuFeatures{}; }
#endif

const KernelSet& resolve_no_default(const std::string& name) {
  if (name == "auto") return auto_kernel_set();
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
#if defined(BITFLOW_HAVE_NEON_KERNELS)
      &kNeonKernels,
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
    return &auto_kernel_set();
  }();
  return *chosen;
}

KernelSet compose_kernel_set(const CpuFeatures& f) {
  const auto best = [&](KernelOp op) {
    const KernelSet* pick = &kRefKernels;
    for (const KernelSet* ks : compiled_kernel_sets())  // reference first, best last
      if (ks->op_supported(op, f)) pick = ks;
    return pick;
  };
  KernelSet k = kRefKernels;
  k.name = "auto";
  const KernelSet* b = best(KernelOp::kBgemm);
  k.bgemm_name = b->bgemm_name; k.bgemm = b->bgemm; k.peak_probe = b->peak_probe;
  k.bgemm_packed_name = b->bgemm_packed_name; k.bgemm_packed = b->bgemm_packed;
  k.bgemm_gather_name = b->bgemm_gather_name; k.bgemm_gather = b->bgemm_gather;
  const KernelSet* s = best(KernelOp::kSgemm);
  k.sgemm_name = s->sgemm_name; k.sgemm = s->sgemm;
  k.sgemm_packed_name = s->sgemm_packed_name; k.sgemm_packed = s->sgemm_packed;
  k.sgemm_gather_name = s->sgemm_gather_name; k.sgemm_gather = s->sgemm_gather;
  const KernelSet* i = best(KernelOp::kIgemm);
  k.igemm_name = i->igemm_name; k.igemm_u8i8 = i->igemm_u8i8;
  k.igemm_packed_name = i->igemm_packed_name; k.igemm_packed = i->igemm_packed;
  k.igemm_packed16_name = i->igemm_packed16_name; k.igemm_packed16 = i->igemm_packed16;
  k.igemm_gather_name = i->igemm_gather_name; k.igemm_gather = i->igemm_gather;
  const KernelSet* p = best(KernelOp::kBitpackF32);
  k.bitpack_name = p->bitpack_name; k.bitpack_f32 = p->bitpack_f32;
  const KernelSet* t = best(KernelOp::kThresholdBits);
  k.threshold_name = t->threshold_name; k.threshold_bits = t->threshold_bits;
  // Eligible on the CPU it was composed for; no per-op re-selection of a composed set.
  k.supported = [](const CpuFeatures&) { return true; };
  k.op_supported = [](KernelOp, const CpuFeatures&) { return true; };
  return k;
}

const KernelSet& auto_kernel_set() {
  static const KernelSet k = compose_kernel_set(cpu_features());
  return k;
}

const KernelSet& resolve_kernels(const std::string& name) {
  if (name.empty()) return default_kernel_set();
  return resolve_no_default(name);
}

}  // namespace bitflow
