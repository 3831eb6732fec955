// The x86 kernel sets. This file has no ISA flags: it only takes the kernels' addresses.
#include "bitflow/kernels.h"
#include "x86_kernels.h"

namespace bitflow {
namespace {
// Per-op requirements match each file's compile flags (CMakeLists.txt): the AVX2 files are
// built with -mavx2 -mfma -mpopcnt; the AVX-512 files with -mavx512f/bw/vl -mfma -mpopcnt,
// plus -mavx512vpopcntdq for the binary GEMMs and -mavx512vnni for the int8 GEMMs only.
bool avx2_op_supported(KernelOp, const CpuFeatures& f) {
  return f.avx2 && f.fma && f.popcnt;  // every op, threshold_bits__avx2 included
}
bool avx512_op_supported(KernelOp op, const CpuFeatures& f) {
  const bool base = f.avx512f && f.avx512bw && f.avx512vl && f.fma && f.popcnt;
  switch (op) {
    case KernelOp::kBgemm: return base && f.avx512vpopcntdq;
    case KernelOp::kIgemm: return base && f.avx512vnni;
    default: return base;
  }
}
template <bool (*OpSupported)(KernelOp, const CpuFeatures&)>
bool all_ops_supported(const CpuFeatures& f) {
  for (KernelOp op : kKernelOps)
    if (!OpSupported(op, f)) return false;
  return true;
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
                                &all_ops_supported<avx2_op_supported>,
                                &avx2::threshold_bits__avx2,
                                "bgemm_2x16__avx2",
                                &avx2::bgemm_2x16__avx2,
                                nullptr,
                                nullptr,
                                "sgemm_6x16__avx2fma",
                                &avx2::sgemm_6x16__avx2fma,
                                "threshold_bits__avx2",
                                "igemm_u8i8_6x16__avx2",
                                &avx2::igemm_u8i8_6x16__avx2,
                                nullptr,
                                nullptr,
                                nullptr,
                                nullptr,
                                nullptr,
                                nullptr,
                                &avx2_op_supported};

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
                                  &all_ops_supported<avx512_op_supported>,
                                  &avx512::threshold_bits__avx512,
                                  "bgemm_4x32__avx512vpopcnt",
                                  &avx512::bgemm_4x32__avx512vpopcnt,
                                  "igemm_u8i8_6x48__avx512vnni",
                                  &avx512::igemm_u8i8_6x48__avx512vnni,
                                  "sgemm_4x48__avx512fma",
                                  &avx512::sgemm_4x48__avx512fma,
                                  "threshold_bits__avx512",
                                  nullptr,
                                  nullptr,
                                  "igemm_u8i8_gather_6x48__avx512vnni",
                                  &avx512::igemm_u8i8_gather_6x48__avx512vnni,
                                  "bgemm_gather_4x32__avx512vpopcnt",
                                  &avx512::bgemm_gather_4x32__avx512vpopcnt,
                                  "sgemm_gather_4x48__avx512fma",
                                  &avx512::sgemm_gather_4x48__avx512fma,
                                  &avx512_op_supported};
}  // namespace bitflow
