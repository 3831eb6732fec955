// The aarch64 NEON kernel set. This file has no ISA flags: it only takes the kernels'
// addresses. NEON (Advanced SIMD) is part of every aarch64 CPU; the SDOT int8 GEMM needs
// FEAT_DotProd, so the per-op selection ("auto") uses it only where the CPU reports it and
// otherwise keeps the reference int8 GEMM with the NEON binary kernels.
#include "arm_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow {
namespace {
bool neon_op_supported(KernelOp op, const CpuFeatures& f) {
  switch (op) {
    case KernelOp::kBgemm:
    case KernelOp::kBitpackF32:
    case KernelOp::kThresholdBits: return f.neon;
    case KernelOp::kIgemm: return f.neon && f.dotprod;
    case KernelOp::kSgemm: return false;  // the set uses the reference float GEMM
  }
  return false;
}
bool neon_supported(const CpuFeatures& f) { return f.neon && f.dotprod; }
}  // namespace

const KernelSet kNeonKernels = {"neon",
                                "bgemm_4x4__neon",
                                "sgemm_1x1__ref",
                                "igemm_u8i8_4x4__neondot",
                                "bitpack_f32__neon",
                                &neon::bgemm_4x4__neon,
                                &ref::sgemm,
                                &neon::igemm_u8i8_4x4__neondot,
                                &neon::bitpack_f32__neon,
                                &neon::peak_probe__neon,
                                &neon_supported,
                                &neon::threshold_bits__neon,
                                nullptr,
                                nullptr,
                                nullptr,
                                nullptr,
                                nullptr,
                                nullptr,
                                "threshold_bits__neon",
                                nullptr,
                                nullptr,
                                nullptr,  // igemm_gather
                                nullptr,
                                nullptr,  // bgemm_gather
                                nullptr,
                                nullptr,  // sgemm_gather
                                nullptr,
                                &neon_op_supported};
}  // namespace bitflow
