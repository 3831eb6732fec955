// Float32 -> packed bits on NEON: FCMLT against zero gives an all-ones lane iff x < 0 (false
// for NaN and -0.0, as the definition wants); two narrows turn 8 lanes into 8 bytes of 0x00 /
// 0xFF, an AND with the byte weights 1, 2, ..., 128 and an add across the vector give one
// byte of the word. Columns past the last multiple of 8 are packed by the scalar rule.
#include <arm_neon.h>

#include "../arm_kernels.h"
#include "bitflow/common.h"

namespace bitflow::neon {
namespace {

const std::uint8_t kWeights[8] = {1, 2, 4, 8, 16, 32, 64, 128};

inline std::uint64_t byte_of(uint32x4_t m0, uint32x4_t m1, uint8x8_t weights) {
  const uint8x8_t b = vmovn_u16(vcombine_u16(vmovn_u32(m0), vmovn_u32(m1)));
  return vaddv_u8(vand_u8(b, weights));
}

}  // namespace

void bitpack_f32__neon(const float* x, std::int64_t rows, std::int64_t cols, std::uint64_t* out) {
  const std::int64_t nw = words_for(cols);
  const uint8x8_t weights = vld1_u8(kWeights);
  const float32x4_t zero = vdupq_n_f32(0.0f);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * cols;
    std::uint64_t* dst = out + r * nw;
    for (std::int64_t wd = 0; wd < nw; ++wd) {
      const std::int64_t c0 = wd * kWordBits;
      const std::int64_t n = cols - c0 < kWordBits ? cols - c0 : kWordBits;
      std::uint64_t word = 0;
      std::int64_t c = 0;
      for (; c + 8 <= n; c += 8) {
        const uint32x4_t m0 = vcltq_f32(vld1q_f32(in + c0 + c), zero);
        const uint32x4_t m1 = vcltq_f32(vld1q_f32(in + c0 + c + 4), zero);
        word |= byte_of(m0, m1, weights) << c;
      }
      for (; c < n; ++c) word |= static_cast<std::uint64_t>(in[c0 + c] < 0.0f) << c;
      dst[wd] = word;
    }
  }
}

void threshold_bits__neon(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                          const std::int32_t* lo, const std::int32_t* hi, std::uint64_t* out) {
  // bit = (acc < lo) | (acc > hi) per channel, 8 channels per byte as in bitpack above.
  const std::int64_t nw = words_for(o);
  const uint8x8_t weights = vld1_u8(kWeights);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t* a = acc + r * o;
    std::uint64_t* dst = out + r * nw;
    for (std::int64_t wd = 0; wd < nw; ++wd) {
      const std::int64_t c0 = wd * kWordBits;
      const std::int64_t n = o - c0 < kWordBits ? o - c0 : kWordBits;
      std::uint64_t word = 0;
      std::int64_t c = 0;
      for (; c + 8 <= n; c += 8) {
        const std::int64_t i = c0 + c;
        const int32x4_t v0 = vld1q_s32(a + i), v1 = vld1q_s32(a + i + 4);
        const uint32x4_t m0 = vorrq_u32(vcltq_s32(v0, vld1q_s32(lo + i)), vcgtq_s32(v0, vld1q_s32(hi + i)));
        const uint32x4_t m1 = vorrq_u32(vcltq_s32(v1, vld1q_s32(lo + i + 4)), vcgtq_s32(v1, vld1q_s32(hi + i + 4)));
        word |= byte_of(m0, m1, weights) << c;
      }
      for (; c < n; ++c) {
        const std::int64_t i = c0 + c;
        word |= static_cast<std::uint64_t>((a[i] < lo[i]) | (a[i] > hi[i])) << c;
      }
      dst[wd] = word;
    }
  }
}

}  // namespace bitflow::neon
