// The x86 kernel sets. This file has no ISA flags: it only takes the kernels' addresses.
#include "bitflow/kernels.h"
#include "x86_kernels.h"

namespace bitflow {
namespace {
bool avx2_supported(const CpuFeatures& f) { return f.avx2 && f.fma && f.popcnt; }
bool avx512_supported(const CpuFeatures& f) {
  return f.avx512f && f.avx512bw && f.avx512vl && f.avx512vpopcntdq && f.avx512vnni && f.popcnt;
}
}  // namespace

const KernelSet kAvx2Kernels = {"avx2",
                                "bgemm_2x4__avx2",
                                "sgemm_2x4__avx2fma",
                                "igemm_u8i8_2x4__avx2",
                                "bitpack_f32__avx2",
                                &avx2::bgemm_2x4__avx2,
                                &avx2::sgemm_2x4__avx2fma,
                                &avx2::igemm_u8i8_2x4__avx2,
                                &avx2::bitpack_f32__avx2,
                                &avx2::peak_probe__avx2,
                                &avx2_supported,
                                &ref::threshold_bits_range,
                                nullptr,
                                nullptr,
                                nullptr,
                                nullptr,
                                nullptr,
                                nullptr};

const KernelSet kAvx512Kernels = {"avx512",
                                  "bgemm_4x4__avx512vpopcnt",
                                  "sgemm_4x4__avx512fma",
                                  "igemm_u8i8_4x4__avx512vnni",
                                  "bitpack_f32__avx512",
                                  &avx512::bgemm_4x4__avx512vpopcnt,
                                  &avx512::sgemm_4x4__avx512fma,
                                  &avx512::igemm_u8i8_4x4__avx512vnni,
                                  &avx512::bitpack_f32__avx512,
                                  &avx512::peak_probe__avx512vpopcnt,
                                  &avx512_supported,
                                  &avx512::threshold_bits__avx512,
                                  "bgemm_4x32__avx512vpopcnt",
                                  &avx512::bgemm_4x32__avx512vpopcnt,
                                  "igemm_u8i8_6x48__avx512vnni",
                                  &avx512::igemm_u8i8_6x48__avx512vnni,
                                  "sgemm_4x48__avx512fma",
                                  &avx512::sgemm_4x48__avx512fma};
}  // namespace bitflow
