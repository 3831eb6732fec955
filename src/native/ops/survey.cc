// Ops of the survey's methods: RPReLU on a float stream and the +-1-weight conv over float32
// activations (see bitflow/survey.h for the exact semantics).
#include "bitflow/survey.h"

#include <cstring>
#include <vector>

#include "parallel.h"

namespace bitflow::ops {

namespace {

// One output row [o] of conv2d_f32b1: acc[o] += (x ^ mask[o]) over the taps in order; the
// sign flip is an XOR of the float's sign bit (exact), each lane an independent sequential sum,
// so vectorizing over o keeps every output's order. Built for AVX-512 / AVX2 / baseline (GCC
// target_clones, as requant_i32): the same IEEE float32 adds in every clone (no contraction).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
void accumulate_taps(const float* __restrict x, std::int64_t n_taps, const std::int64_t* __restrict offsets,
                     const std::int64_t* __restrict taps, const std::uint32_t* __restrict masks, std::int64_t o,
                     float* __restrict acc) {
  for (std::int64_t i = 0; i < o; ++i) acc[i] = 0.0f;
  for (std::int64_t t = 0; t < n_taps; ++t) {
    std::uint32_t xb;
    std::memcpy(&xb, x + offsets[t], sizeof xb);
    const std::uint32_t* m = masks + taps[t] * o;
    for (std::int64_t i = 0; i < o; ++i) {
      const std::uint32_t v = xb ^ m[i];
      float f;
      std::memcpy(&f, &v, sizeof f);
      acc[i] = acc[i] + f;
    }
  }
}

// q[c] = #{l : !(x < thr[c, l])} (direction +1) or #{l : !(x > thr[c, l])} (-1). Written as
// one comparison per (level, channel) on directed values, vectorized over the channels:
// !(x > t) is exactly !(-x < -t) (negation is exact, a NaN stays a NaN and passes either way),
// so with d = +-1 every level is !(d x < d t) and the levels are laid out [L, o] once per call.
// W holds -x exactly (int64 for int32 inputs: -INT32_MIN). The per-element form with the
// levels innermost ran at ~1.5 ns per value on the DoReFa Bi-Real stream (measured).
template <class T, class W>
void levels_row(const T* __restrict xr, std::int64_t o, const W* __restrict dd, const W* __restrict dt,
                std::int64_t levels, W* __restrict v, std::int32_t* __restrict q, std::uint8_t* __restrict out) {
  for (std::int64_t c = 0; c < o; ++c) {
    v[c] = dd[c] * static_cast<W>(xr[c]);
    q[c] = 0;
  }
  for (std::int64_t l = 0; l < levels; ++l) {
    const W* tl = dt + l * o;
    for (std::int64_t c = 0; c < o; ++c) q[c] += !(v[c] < tl[c]);
  }
  for (std::int64_t c = 0; c < o; ++c) out[c] = static_cast<std::uint8_t>(q[c]);
}

template <class T, class W>
void threshold_levels(const T* x, std::int64_t rows, std::int64_t o, const T* thr, std::int64_t levels,
                      const std::int8_t* dir, std::uint8_t* out, int threads) {
  std::vector<W> dthr(static_cast<std::size_t>(levels * o)), d(static_cast<std::size_t>(o));
  for (std::int64_t c = 0; c < o; ++c) {
    d[c] = dir[c] > 0 ? W(1) : W(-1);
    for (std::int64_t l = 0; l < levels; ++l) dthr[l * o + c] = d[c] * static_cast<W>(thr[c * levels + l]);
  }
  const W* dt = dthr.data();
  const W* dd = d.data();
  parallel_rows(rows, 0.25 * static_cast<double>(o * levels), threads, [=](std::int64_t r0, std::int64_t r1) {
    std::vector<W> v(static_cast<std::size_t>(o));
    std::vector<std::int32_t> q(static_cast<std::size_t>(o));
    for (std::int64_t r = r0; r < r1; ++r) levels_row(x + r * o, o, dd, dt, levels, v.data(), q.data(), out + r * o);
  });
}

}  // namespace

void threshold_u8(const std::int32_t* x, std::int64_t rows, std::int64_t o, const std::int32_t* thr,
                  std::int64_t levels, const std::int8_t* dir, std::uint8_t* out, int threads) {
  threshold_levels<std::int32_t, std::int64_t>(x, rows, o, thr, levels, dir, out, threads);
}

void threshold_f32_u8(const float* x, std::int64_t rows, std::int64_t o, const float* thr, std::int64_t levels,
                      const std::int8_t* dir, std::uint8_t* out, int threads) {
  threshold_levels<float, float>(x, rows, o, thr, levels, dir, out, threads);
}

void threshold_bits_hw(const std::int32_t* x, std::int64_t n, std::int64_t hw, std::int64_t o,
                       const std::int32_t* thr, const std::int8_t* dir, std::uint64_t* out, int threads) {
  const std::int64_t words = (o + 63) / 64;
  parallel_rows(n * hw, 0.5 * static_cast<double>(o), threads, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t p = r % hw;
      const std::int32_t* xr = x + r * o;
      const std::int32_t* tr = thr + p * o;
      const std::int8_t* dr = dir + p * o;
      std::uint64_t* orow = out + r * words;
      for (std::int64_t w = 0; w < words; ++w) orow[w] = 0;
      for (std::int64_t c = 0; c < o; ++c) {
        const bool neg = dr[c] > 0 ? xr[c] < tr[c] : xr[c] > tr[c];
        orow[c >> 6] |= static_cast<std::uint64_t>(neg) << (c & 63);
      }
    }
  });
}

void scale_hw(const std::int32_t* x, std::int64_t n, std::int64_t hwo, const float* s, float* out,
              int threads) {
  parallel_rows(n, 0.25 * static_cast<double>(hwo), threads, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int32_t* xr = x + r * hwo;
      float* yr = out + r * hwo;
      for (std::int64_t i = 0; i < hwo; ++i) yr[i] = static_cast<float>(xr[i]) * s[i];
    }
  });
}

void rprelu_f32(const float* x, std::int64_t rows, std::int64_t cols, const float* gamma, const float* slope,
                const float* zeta, float* out, int threads) {
  parallel_rows(rows, 1.0 * static_cast<double>(cols), threads, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * cols;
      float* yr = out + r * cols;
      for (std::int64_t c = 0; c < cols; ++c) {
        const float t = xr[c] - gamma[c];
        // u = t > 0 ? t : slope * t, both sides computed and selected by a bit mask: GCC does
        // not if-convert the float select under -ftrapping-math, and the branch on data signs
        // made a call 5x slower than on a repeated input (mispredictions; measured). NaN:
        // t > 0 is false, slope * NaN = NaN, as F.prelu
        const float st = slope[c] * t;
        std::uint32_t tb, sb;
        std::memcpy(&tb, &t, sizeof tb);
        std::memcpy(&sb, &st, sizeof sb);
        const std::uint32_t keep_t = 0u - static_cast<std::uint32_t>(t > 0.0f);
        const std::uint32_t ub = (tb & keep_t) | (sb & ~keep_t);
        float u;
        std::memcpy(&u, &ub, sizeof u);
        yr[c] = u + zeta[c];
      }
    }
  });
}

void conv2d_f32b1(const float* x, const std::uint64_t* w, const ConvGeom& g, float* out, int threads) {
  const std::int64_t ho = g.ho(), wo = g.wo(), cw = (g.c + 63) / 64;
  const std::int64_t k = g.kh * g.kw * g.c;
  // masks [tap, o] with tap = (ky, kx, c): the weight's sign bit moved to bit 31
  std::vector<std::uint32_t> masks(static_cast<std::size_t>(k * g.o));
  for (std::int64_t oc = 0; oc < g.o; ++oc)
    for (std::int64_t ky = 0; ky < g.kh; ++ky)
      for (std::int64_t kx = 0; kx < g.kw; ++kx) {
        const std::uint64_t* wr = w + ((oc * g.kh + ky) * g.kw + kx) * cw;
        for (std::int64_t c = 0; c < g.c; ++c) {
          const std::int64_t tap = (ky * g.kw + kx) * g.c + c;
          masks[static_cast<std::size_t>(tap * g.o + oc)] =
              static_cast<std::uint32_t>((wr[c >> 6] >> (c & 63)) & 1u) << 31;
        }
      }
  const std::int64_t rows = g.n * ho * wo;
  parallel_rows(rows, 1.0 * static_cast<double>(k * g.o), threads, [&](std::int64_t r0, std::int64_t r1) {
    std::vector<std::int64_t> offsets(static_cast<std::size_t>(k));
    std::vector<std::int64_t> taps(static_cast<std::size_t>(k));
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t n = r / (ho * wo), oy = (r / wo) % ho, ox = r % wo;
      // the taps inside the image, in (ky, kx, c) order; padded taps are skipped
      std::int64_t nt = 0;
      for (std::int64_t ky = 0; ky < g.kh; ++ky) {
        const std::int64_t y = oy * g.sh - g.ph + ky;
        if (y < 0 || y >= g.h) continue;
        for (std::int64_t kx = 0; kx < g.kw; ++kx) {
          const std::int64_t xx = ox * g.sw - g.pw + kx;
          if (xx < 0 || xx >= g.w) continue;
          const std::int64_t base = ((n * g.h + y) * g.w + xx) * g.c;
          const std::int64_t tap0 = (ky * g.kw + kx) * g.c;
          for (std::int64_t c = 0; c < g.c; ++c) {
            offsets[static_cast<std::size_t>(nt)] = base + c;
            taps[static_cast<std::size_t>(nt)] = tap0 + c;
            ++nt;
          }
        }
      }
      accumulate_taps(x, nt, offsets.data(), taps.data(), masks.data(), g.o, out + r * g.o);
    }
  });
}

}  // namespace bitflow::ops
