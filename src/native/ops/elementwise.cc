// Elementwise, average-pooling and layout ops (see bitflow/elementwise.h for the semantics).
#include "bitflow/elementwise.h"

#include <cstring>
#include <limits>

namespace bitflow::ops {

void add_f32(const std::vector<const float*>& xs, std::int64_t size, float* out) {
  for (std::int64_t i = 0; i < size; ++i) {
    float s = xs[0][i];
    for (std::size_t k = 1; k < xs.size(); ++k) s = s + xs[k][i];  // left to right, rounded each time
    out[i] = s;
  }
}

bool add_i32(const std::vector<const std::int32_t*>& xs, std::int64_t size, std::int64_t lo, std::int64_t hi,
             std::int32_t* out) {
  constexpr std::int64_t kMin = std::numeric_limits<std::int32_t>::min();
  constexpr std::int64_t kMax = std::numeric_limits<std::int32_t>::max();
  const bool clamped = lo > kMin || hi < kMax;
  bool ok = true;
  for (std::int64_t i = 0; i < size; ++i) {
    std::int64_t s = 0;
    for (const std::int32_t* x : xs) s += x[i];
    if (clamped) s = s < lo ? lo : (s > hi ? hi : s);
    else if (s < kMin || s > kMax) ok = false;
    out[i] = static_cast<std::int32_t>(s);
  }
  return ok;
}

bool requant_i32(const std::int32_t* x, std::int64_t rows, std::int64_t cols, const std::int64_t* m,
                 const std::int64_t* b, int shift, std::int64_t lo, std::int64_t hi, std::int32_t* out) {
  constexpr std::int64_t kMin = std::numeric_limits<std::int32_t>::min();
  constexpr std::int64_t kMax = std::numeric_limits<std::int32_t>::max();
  const bool clamped = lo > kMin || hi < kMax;
  bool ok = true;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t* xr = x + r * cols;
    std::int32_t* yr = out + r * cols;
    for (std::int64_t c = 0; c < cols; ++c) {
      const __int128 v = static_cast<__int128>(xr[c]) * m[c] + b[c];
      __int128 q = v >> shift;  // arithmetic shift = floor division by 2^shift (GCC/Clang, any standard)
      if (clamped) q = q < lo ? lo : (q > hi ? hi : q);
      else if (q < kMin || q > kMax) ok = false;
      yr[c] = static_cast<std::int32_t>(q);
    }
  }
  return ok;
}

void affine_f32(const float* x, std::int64_t rows, std::int64_t cols, const float* scale, const float* bias,
                float* out) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = out + r * cols;
    for (std::int64_t c = 0; c < cols; ++c) {
      const float p = xr[c] * scale[c];  // rounded (the library is built with -ffp-contract=off)
      yr[c] = p + bias[c];
    }
  }
}

void relu_f32(const float* x, std::int64_t size, float* out) {
  // max(x, 0) as numpy.maximum: NaN propagates
  for (std::int64_t i = 0; i < size; ++i) out[i] = (x[i] != x[i]) ? x[i] : (x[i] > 0.0f ? x[i] : 0.0f);
}

void avgpool_f32(const float* x, const PoolGeom& g, float* out) {
  const std::int64_t ho = g.ho(), wo = g.wo();
  const double inv = static_cast<double>(g.kh * g.kw);
  std::vector<double> acc(static_cast<std::size_t>(g.c));
  for (std::int64_t n = 0; n < g.n; ++n) {
    for (std::int64_t oy = 0; oy < ho; ++oy) {
      for (std::int64_t ox = 0; ox < wo; ++ox) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (std::int64_t i = 0; i < g.kh; ++i) {
          const std::int64_t y = oy * g.sh - g.ph + i;
          if (y < 0 || y >= g.h) continue;
          for (std::int64_t j = 0; j < g.kw; ++j) {
            const std::int64_t xx = ox * g.sw - g.pw + j;
            if (xx < 0 || xx >= g.w) continue;
            const float* px = x + ((n * g.h + y) * g.w + xx) * g.c;
            for (std::int64_t c = 0; c < g.c; ++c) acc[static_cast<std::size_t>(c)] += px[c];
          }
        }
        float* po = out + ((n * ho + oy) * wo + ox) * g.c;
        for (std::int64_t c = 0; c < g.c; ++c) po[c] = static_cast<float>(acc[static_cast<std::size_t>(c)] / inv);
      }
    }
  }
}

void global_avgpool_f32(const float* x, std::int64_t n, std::int64_t hw, std::int64_t c, float* out) {
  std::vector<double> acc(static_cast<std::size_t>(c));
  for (std::int64_t b = 0; b < n; ++b) {
    std::fill(acc.begin(), acc.end(), 0.0);
    const float* xb = x + b * hw * c;
    for (std::int64_t p = 0; p < hw; ++p)
      for (std::int64_t k = 0; k < c; ++k) acc[static_cast<std::size_t>(k)] += xb[p * c + k];
    for (std::int64_t k = 0; k < c; ++k)
      out[b * c + k] = static_cast<float>(acc[static_cast<std::size_t>(k)] / static_cast<double>(hw));
  }
}

void concat_bytes(const std::vector<const void*>& xs, const std::vector<std::int64_t>& widths, std::int64_t rows,
                  std::int64_t elem_size, void* out) {
  std::int64_t total = 0;
  for (std::int64_t w : widths) total += w;
  auto* o = static_cast<unsigned char*>(out);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::int64_t off = 0;
    for (std::size_t k = 0; k < xs.size(); ++k) {
      const auto* src = static_cast<const unsigned char*>(xs[k]) + r * widths[k] * elem_size;
      std::memcpy(o + (r * total + off) * elem_size, src, static_cast<std::size_t>(widths[k] * elem_size));
      off += widths[k];
    }
  }
}

void concat_bits(const std::vector<const std::uint64_t*>& xs, const std::vector<std::int64_t>& channels,
                 std::int64_t rows, std::uint64_t* out) {
  std::int64_t total = 0;
  for (std::int64_t c : channels) total += c;
  const std::int64_t ow = words_for(total);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::uint64_t* o = out + r * ow;
    for (std::int64_t i = 0; i < ow; ++i) o[i] = 0;
    std::int64_t pos = 0;  // next output bit
    for (std::size_t k = 0; k < xs.size(); ++k) {
      const std::int64_t c = channels[k], iw = words_for(c);
      const std::uint64_t* src = xs[k] + r * iw;
      for (std::int64_t i = 0; i < iw; ++i) {
        const std::int64_t nbits = (i == iw - 1) ? c - 64 * i : 64;
        std::uint64_t v = src[i];
        if (nbits < 64) v &= (std::uint64_t{1} << nbits) - 1;  // drop padding bits
        const std::int64_t wi = pos / 64, sh = pos % 64;
        o[wi] |= v << sh;
        if (sh != 0 && sh + nbits > 64) o[wi + 1] |= v >> (64 - sh);
        pos += nbits;
      }
    }
  }
}

}  // namespace bitflow::ops
