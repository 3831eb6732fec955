// conv2d_u8b1: +-1 weights (packed bits, bit 1 = -1) over uint8 activations, exact in int32
// (MCN deployed with uint8 activations; bitflow.ir.ops.w1). The bits are expanded to +-1 int8
// rows once per call and the exact uint8 x int8 convolution of conv2d_u8i8 runs them, so every
// kernel set (ref, scalar, AVX2, AVX-512 VNNI, NEON) gives the same integers.
#include <cstdint>
#include <vector>

#include "bitflow/ops.h"

namespace bitflow::ops {

std::vector<std::int8_t> unpack_pm1_weights(const std::uint64_t* w, std::int64_t rows, std::int64_t c) {
  const std::int64_t words = (c + 63) / 64;
  std::vector<std::int8_t> out(static_cast<std::size_t>(rows * c));
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::uint64_t* src = w + r * words;
    std::int8_t* dst = out.data() + r * c;
    for (std::int64_t i = 0; i < c; ++i) dst[i] = ((src[i >> 6] >> (i & 63)) & 1u) ? -1 : 1;
  }
  return out;
}

void conv2d_u8b1(const KernelSet& ks, int threads, const std::uint8_t* x, const std::uint64_t* w,
                 const ConvGeom& g, std::int32_t* out) {
  const std::vector<std::int8_t> w8 = unpack_pm1_weights(w, g.o * g.kh * g.kw, g.c);
  conv2d_u8i8(ks, threads, x, w8.data(), g, out);
}

}  // namespace bitflow::ops
