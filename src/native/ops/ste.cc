// One-pass STE forward / backward for training (bitflow/ste.h). Memory-bound loops: built for
// AVX-512 / AVX2 / baseline and picked at load time (GCC target_clones), the same float
// operations in every clone, so identical results; blocks of 64 Ki elements over the threads.
#include "bitflow/ste.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "parallel.h"

namespace bitflow::ops {
namespace {

constexpr std::int64_t kBlock = 1 << 16;
// ~9-12 bytes read and written per element at ~25 GB/s of one core: ~0.45 ns per element
constexpr double kNsPerBlock = 0.45 * kBlock;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BF_CLONES
#endif

BF_CLONES void sign_range(const float* __restrict x, std::int64_t n, float* __restrict q,
                          std::uint8_t* __restrict m) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    q[i] = v < 0.0f ? -1.0f : 1.0f;
    m[i] = std::fabs(v) <= 1.0f ? 1 : 0;
  }
}

BF_CLONES void gate_range(const float* __restrict g, const std::uint8_t* __restrict m, std::int64_t n,
                          float* __restrict y) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = g[i] * static_cast<float>(m[i]);
}

inline float bf16_to_f32(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

BF_CLONES void sign_range_bf16(const std::uint16_t* __restrict x, std::int64_t n, std::uint16_t* __restrict q,
                               std::uint8_t* __restrict m) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = bf16_to_f32(x[i]);
    q[i] = v < 0.0f ? 0xbf80 : 0x3f80;  // -1 / +1 in bfloat16
    m[i] = std::fabs(v) <= 1.0f ? 1 : 0;
  }
}

BF_CLONES void gate_range_bf16(const std::uint16_t* __restrict g, const std::uint8_t* __restrict m, std::int64_t n,
                               std::uint16_t* __restrict y) {
  for (std::int64_t i = 0; i < n; ++i) {
    // g * 1 is g and g * 0 a signed zero: exact in bfloat16, so the float32 product's top half
    // is the bfloat16 result; inf * 0 and NaN give PyTorch's bfloat16 NaN
    const float f = bf16_to_f32(g[i]) * static_cast<float>(m[i]);
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    y[i] = f != f ? 0x7fc0 : static_cast<std::uint16_t>(u >> 16);
  }
}

BF_CLONES void approx_range(const float* __restrict x, const float* __restrict g, std::int64_t n,
                            float* __restrict y) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float t = 2.0f - 2.0f * std::fabs(x[i]);
    y[i] = (t < 0.0f ? 0.0f : t) * g[i];  // NaN: t < 0 is false, the NaN goes on
  }
}

template <class F>
void blocks(std::int64_t n, int threads, F&& fn) {
  const std::int64_t nb = (n + kBlock - 1) / kBlock;
  parallel_rows(nb, kNsPerBlock, threads, [&](std::int64_t b0, std::int64_t b1) {
    const std::int64_t i0 = b0 * kBlock, i1 = std::min(n, b1 * kBlock);
    fn(i0, i1 - i0);
  });
}

}  // namespace

void ste_sign(const float* x, std::int64_t n, float* q, std::uint8_t* mask, int threads) {
  blocks(n, threads, [&](std::int64_t i, std::int64_t len) { sign_range(x + i, len, q + i, mask + i); });
}

void ste_gate(const float* g, const std::uint8_t* mask, std::int64_t n, float* y, int threads) {
  blocks(n, threads, [&](std::int64_t i, std::int64_t len) { gate_range(g + i, mask + i, len, y + i); });
}

void ste_sign_bf16(const std::uint16_t* x, std::int64_t n, std::uint16_t* q, std::uint8_t* mask, int threads) {
  blocks(n, threads, [&](std::int64_t i, std::int64_t len) { sign_range_bf16(x + i, len, q + i, mask + i); });
}

void ste_gate_bf16(const std::uint16_t* g, const std::uint8_t* mask, std::int64_t n, std::uint16_t* y,
                   int threads) {
  blocks(n, threads, [&](std::int64_t i, std::int64_t len) { gate_range_bf16(g + i, mask + i, len, y + i); });
}

void approx_sign_grad(const float* x, const float* g, std::int64_t n, float* y, int threads) {
  blocks(n, threads, [&](std::int64_t i, std::int64_t len) { approx_range(x + i, g + i, len, y + i); });
}

}  // namespace bitflow::ops
