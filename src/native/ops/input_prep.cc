// Input preparation of a fixed-point first layer (see quantize_u8_nhwc in bitflow/ops.h).
// Built with -fno-trapping-math (sources.cmake): that lets the compiler vectorize the float
// compares of the clamp; it changes no result, only the assumption that floating-point
// exception flags are observed (they are not, anywhere in the library).
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bitflow/cpu.h"
#include "bitflow/ops.h"
#include "parallel.h"

#if defined(BITFLOW_HAVE_X86_KERNELS)
namespace bitflow::avx512 {
// kernels/x86/avx512/input_prep__avx512.cc (built with -mavx512f -mavx512bw -mavx512vl): the
// rows [r0, r1) ((image, row) pairs) of a 3-channel image, equal to the loop below byte for
// byte; returns nonzero if some x * 255 is not finite.
std::uint32_t quantize_u8_rows_c3__avx512(const float* x, std::int64_t h, std::int64_t w,
                                          std::int64_t r0, std::int64_t r1, std::uint8_t* out);
}  // namespace bitflow::avx512
#endif

namespace bitflow::ops {
namespace {

/// One channel's contiguous run: q[j] = clip(rint(fl32(src[j] * 255)), 0, 255); returns
/// nonzero if some src[j] * 255 is not finite.
std::uint32_t quantize_run(const float* src, std::int64_t n, std::uint8_t* q) {
  // clip(rint(v), 0, 255) == rint(clip(v, 0, 255)) (rint is monotone, 0 and 255 are
  // integers), and for 0 <= v <= 255 the float32 sum (v + 2^23) - 2^23 is v rounded to the
  // nearest integer, ties to even (the default rounding mode; no -ffast-math, and
  // -ffp-contract=off): the same result as np.rint, without a libm call.
  constexpr float kMagic = 8388608.0f;  // 2^23
  std::uint32_t bad = 0;
  for (std::int64_t j = 0; j < n; ++j) {
    const float v = src[j] * 255.0f;  // one float32 rounding, as numpy
    std::uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    bad |= static_cast<std::uint32_t>((u & 0x7f800000u) == 0x7f800000u);  // inf or NaN
    float cl = v < 255.0f ? v : 255.0f;
    cl = cl > 0.0f ? cl : 0.0f;  // (a NaN gives some byte; the caller rejects the input)
    q[j] = static_cast<std::uint8_t>(static_cast<std::int32_t>((cl + kMagic) - kMagic));
  }
  return bad;
}

}  // namespace

bool quantize_u8_nhwc(const float* x, std::int64_t n, std::int64_t c, std::int64_t h,
                      std::int64_t w, std::uint8_t* out, int threads, bool wide) {
  std::atomic<bool> finite{true};
#if defined(BITFLOW_HAVE_X86_KERNELS)
  const CpuFeatures& f = cpu_features();
  if (wide && c == 3 && f.avx512f && f.avx512bw && f.avx512vl) {
    parallel_rows(n * h, 0.02 * static_cast<double>(w * c), threads, [&](std::int64_t r0, std::int64_t r1) {
      if (avx512::quantize_u8_rows_c3__avx512(x, h, w, r0, r1, out) != 0)
        finite.store(false, std::memory_order_relaxed);
    });
    return finite.load();
  }
#else
  (void)wide;  // no AVX-512 rows in this build
#endif
  parallel_rows(n * h, 0.3 * static_cast<double>(w * c), threads, [&](std::int64_t r0, std::int64_t r1) {
    // Per input row: each channel's run is quantized into a small buffer (a vectorized
    // loop), then the channels are interleaved into the NHWC row.
    thread_local std::vector<std::uint8_t> planes;
    planes.resize(static_cast<std::size_t>(c * w));
    std::uint8_t* const q = planes.data();
    const std::int64_t W = w, C = c, H = h;  // locals: byte stores may alias captured sizes
    std::uint32_t bad = 0;
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t b = r / H, i = r % H;
      for (std::int64_t ch = 0; ch < C; ++ch) bad |= quantize_run(x + ((b * C + ch) * H + i) * W, W, q + ch * W);
      std::uint8_t* dst = out + r * W * C;
      for (std::int64_t j = 0; j < W; ++j)
        for (std::int64_t ch = 0; ch < C; ++ch) dst[j * C + ch] = q[ch * W + j];
    }
    if (bad != 0) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

bool nhwc_f32(const float* x, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w,
              float* out, int threads) {
  std::atomic<bool> finite{true};
  parallel_rows(n * h, 0.2 * static_cast<double>(w * c), threads, [&](std::int64_t r0, std::int64_t r1) {
    const std::int64_t W = w, C = c, H = h;
    std::uint32_t bad = 0;
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t b = r / H, i = r % H;
      float* dst = out + r * W * C;
      for (std::int64_t ch = 0; ch < C; ++ch) {
        const float* src = x + ((b * C + ch) * H + i) * W;
        for (std::int64_t j = 0; j < W; ++j) {
          std::uint32_t u;
          std::memcpy(&u, src + j, sizeof u);
          bad |= static_cast<std::uint32_t>((u & 0x7f800000u) == 0x7f800000u);  // inf or NaN
          dst[j * C + ch] = src[j];
        }
      }
    }
    if (bad != 0) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

}  // namespace bitflow::ops
