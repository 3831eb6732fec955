// CPU features, kernel sets and the threading grain.
#include "common.h"

namespace bitflow::pyb {
namespace {

nb::dict kernel_set_dict(const KernelSet& ks) {
  const auto opt = [](const char* name) { return name != nullptr ? nb::cast(std::string(name)) : nb::none(); };
  nb::dict d;
  d["name"] = ks.name; d["bgemm"] = ks.bgemm_name; d["sgemm"] = ks.sgemm_name; d["igemm_u8i8"] = ks.igemm_name;
  d["bitpack_f32"] = ks.bitpack_name; d["threshold_bits"] = ks.threshold_name;
  // kernels of the prepared layers (None: they fall back to bgemm / igemm_u8i8 / sgemm above)
  d["bgemm_packed"] = opt(ks.bgemm_packed_name);
  d["igemm_packed"] = opt(ks.igemm_packed != nullptr ? ks.igemm_packed_name : ks.igemm_packed16_name);
  d["sgemm_packed"] = opt(ks.sgemm_packed_name);
  // implicit-GEMM convolutions (rows read in place; None: im2col rows for the packed kernels)
  d["bgemm_gather"] = opt(ks.bgemm_gather_name);
  d["igemm_gather"] = opt(ks.igemm_gather_name);
  d["sgemm_gather"] = opt(ks.sgemm_gather_name);
  return d;
}

}  // namespace

void bind_info(nb::module_& m) {
  m.def("cpu_features", [] {
    const auto& f = bitflow::cpu_features();
    nb::dict d;
    d["popcnt"] = f.popcnt; d["avx2"] = f.avx2; d["fma"] = f.fma; d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw; d["avx512vl"] = f.avx512vl; d["avx512vpopcntdq"] = f.avx512vpopcntdq;
    d["avx512vnni"] = f.avx512vnni; d["avxvnni"] = f.avxvnni; d["neon"] = f.neon; d["dotprod"] = f.dotprod;
    return d;
  }, "CPU features from cpuid/xgetbv (AVX needs OS ymm state, AVX-512 needs zmm/opmask state).");

  m.def("available_kernels", [] {
    std::vector<std::string> v;
    for (const KernelSet* ks : bitflow::eligible_kernel_sets()) v.emplace_back(ks->name);
    return v;
  }, "Kernel sets compiled into this build AND supported by this CPU; 'ref' first, best last.");

  m.def("compiled_kernels", [] {
    std::vector<std::string> v;
    for (const KernelSet* ks : bitflow::compiled_kernel_sets()) v.emplace_back(ks->name);
    return v;
  }, "Every kernel set compiled into this build (some may be unsupported by this CPU).");

  m.def("default_kernels", [] { return std::string(bitflow::default_kernel_set().name); },
        "The kernel set used when kernels='' (BITFLOW_KERNELS if set at import, else 'auto', the per-op selection).");

  m.def("kernel_info", [](const std::string& kernels) {
    return kernel_set_dict(kernels_arg("kernel_info", kernels));
  }, "kernels"_a = "", "Names of the inner kernels of a kernel set ('auto': the per-op selection).");

  m.def("compose_kernels", [](const nb::dict& features) {
    bitflow::CpuFeatures f;
    bool* fields[] = {&f.popcnt, &f.avx2, &f.fma, &f.avx512f, &f.avx512bw, &f.avx512vl,
                      &f.avx512vpopcntdq, &f.avx512vnni, &f.avxvnni, &f.neon, &f.dotprod};
    const char* keys[] = {"popcnt", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                          "avx512vpopcntdq", "avx512vnni", "avxvnni", "neon", "dotprod"};
    for (auto item : features) {
      const std::string key = nb::cast<std::string>(item.first);
      bool known = false;
      for (std::size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); ++i)
        if (key == keys[i]) {
          *fields[i] = nb::cast<bool>(item.second);
          known = true;
        }
      if (!known) fail("compose_kernels", "unknown CPU feature '" + key + "'");
    }
    return kernel_set_dict(bitflow::compose_kernel_set(f));
  }, "features"_a,
     "The per-op selection ('auto') that a CPU with these features (missing keys: absent) would get, "
     "as kernel_info() names; for testing the selection rules on any machine.");

  m.def("_set_grain_ns", [](double ns) {
    if (!(ns >= 0.0)) fail("_set_grain_ns", "the grain must be >= 0");
    return bitflow::ops::set_grain_ns(ns);
  }, "ns"_a,
     "Testing hook: the smallest estimated work (ns of one core) given to another thread "
     "(0: every op uses all its threads, so small inputs take every split). Returns the old value.");

  m.def("peak_probe", [](const std::string& kernels, double seconds) {
    const KernelSet& ks = kernels_arg("peak_probe", kernels);
    if (!(seconds > 0.0 && seconds <= 60.0)) fail("peak_probe", "seconds must be in (0, 60]");
    nb::gil_scoped_release release;
    return ks.peak_probe(seconds);
  }, "kernels"_a = "", "seconds"_a = 0.2,
     "Binary MACs/s of a register-resident xor + popcount + add loop (one thread) for a kernel set.");
}

}  // namespace bitflow::pyb
