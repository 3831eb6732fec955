// Output transforms (definitions). Compiled with -ffp-contract=off so scale_bias rounds the
// product and the sum separately: y = fl(fl(float(acc) * scale) + bias).
#include <cstring>

#include "bitflow/ops.h"

namespace bitflow::ops {

void threshold_bits(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                    const std::int32_t* thr, const std::int8_t* dir, std::uint64_t* out) {
  const std::int64_t nw = words_for(o);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t* a = acc + r * o;
    std::uint64_t* dst = out + r * nw;
    std::memset(dst, 0, sizeof(std::uint64_t) * static_cast<std::size_t>(nw));
    for (std::int64_t c = 0; c < o; ++c) {
      // -1 iff the +1 condition (acc >= thr, resp. acc <= thr) fails.
      const bool neg = dir[c] > 0 ? a[c] < thr[c] : a[c] > thr[c];
      dst[c / kWordBits] |= static_cast<std::uint64_t>(neg) << (c % kWordBits);
    }
  }
}

void threshold_planes(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                      const std::int32_t* thr, std::int64_t L, const std::int8_t* dir,
                      int planes, std::uint64_t* out) {
  const std::int64_t nw = words_for(o);
  std::memset(out, 0, sizeof(std::uint64_t) * static_cast<std::size_t>(planes * rows * nw));
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t* a = acc + r * o;
    for (std::int64_t c = 0; c < o; ++c) {
      const std::int32_t* t = thr + c * L;
      std::int64_t q = 0;
      if (dir[c] > 0) {
        for (std::int64_t l = 0; l < L; ++l) q += a[c] >= t[l];
      } else {
        for (std::int64_t l = 0; l < L; ++l) q += a[c] <= t[l];
      }
      for (int m = 0; m < planes; ++m) {
        const std::uint64_t bit = 1u - static_cast<std::uint64_t>((q >> m) & 1);
        out[(m * rows + r) * nw + c / kWordBits] |= bit << (c % kWordBits);
      }
    }
  }
}

void threshold_f32_planes(const float* y, std::int64_t rows, std::int64_t o, const float* thr,
                          std::int64_t L, const std::int8_t* dir, int planes, std::uint64_t* out) {
  const std::int64_t nw = words_for(o);
  std::memset(out, 0, sizeof(std::uint64_t) * static_cast<std::size_t>(planes * rows * nw));
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* a = y + r * o;
    for (std::int64_t c = 0; c < o; ++c) {
      const float* t = thr + c * L;
      std::int64_t q = 0;
      if (dir[c] > 0) {
        for (std::int64_t l = 0; l < L; ++l) q += !(a[c] < t[l]);
      } else {
        for (std::int64_t l = 0; l < L; ++l) q += !(a[c] > t[l]);
      }
      for (int m = 0; m < planes; ++m) {
        const std::uint64_t bit = 1u - static_cast<std::uint64_t>((q >> m) & 1);
        out[(m * rows + r) * nw + c / kWordBits] |= bit << (c % kWordBits);
      }
    }
  }
}

void threshold_f32_bits(const float* y, std::int64_t rows, std::int64_t o, const float* thr,
                        const std::int8_t* dir, std::uint64_t* out) {
  const std::int64_t nw = words_for(o);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* a = y + r * o;
    std::uint64_t* dst = out + r * nw;
    std::memset(dst, 0, sizeof(std::uint64_t) * static_cast<std::size_t>(nw));
    for (std::int64_t c = 0; c < o; ++c) {
      const bool neg = dir[c] > 0 ? a[c] < thr[c] : a[c] > thr[c];
      dst[c / kWordBits] |= static_cast<std::uint64_t>(neg) << (c % kWordBits);
    }
  }
}

void scale_bias(const std::int32_t* acc, std::int64_t rows, std::int64_t o, const float* scale,
                const float* bias, float* out) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < o; ++c) {
      const float p = static_cast<float>(acc[r * o + c]) * scale[c];
      out[r * o + c] = p + bias[c];
    }
}

}  // namespace bitflow::ops

namespace bitflow::ref {

void threshold_bits_range(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                          const std::int32_t* lo, const std::int32_t* hi, std::uint64_t* out) {
  const std::int64_t nw = words_for(o);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t* a = acc + r * o;
    std::uint64_t* dst = out + r * nw;
    for (std::int64_t wd = 0; wd < nw; ++wd) {
      std::uint64_t word = 0;
      const std::int64_t c0 = wd * kWordBits, c1 = c0 + kWordBits < o ? c0 + kWordBits : o;
      for (std::int64_t c = c0; c < c1; ++c)
        word |= static_cast<std::uint64_t>((a[c] < lo[c]) | (a[c] > hi[c])) << (c - c0);
      dst[wd] = word;
    }
  }
}

}  // namespace bitflow::ref
