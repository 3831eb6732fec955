// Blocked, threaded drivers around the inner GEMM kernels, and the convolutions built on
// them (im2col + GEMM). See bitflow/ops.h for the math.
#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "bitflow/ops.h"
#include "parallel.h"

namespace bitflow::ops {
namespace {

// Block sizes: an A block of about kABlockBytes stays in L2 while every B column block
// (kNB rows, a few KB) streams from L1; tasks are (A block, B block) pairs handed to threads.
constexpr std::int64_t kABlockBytes = 128 * 1024;
constexpr std::int64_t kNB = 32;

struct Blocking {
  std::int64_t mb, nb, n_mb, n_nb;
};

Blocking make_blocking(std::int64_t M, std::int64_t N, std::int64_t row_bytes, int threads) {
  Blocking bl{};
  std::int64_t mb = std::max<std::int64_t>(kABlockBytes / std::max<std::int64_t>(row_bytes, 1), 4);
  mb = std::max<std::int64_t>(mb / 4 * 4, 4);
  bl.nb = kNB;
  bl.n_nb = (N + bl.nb - 1) / bl.nb;
  std::int64_t n_mb = (M + mb - 1) / mb;
  // Enough tasks to balance threads: at least 4 per thread when M allows.
  const std::int64_t want = 4 * static_cast<std::int64_t>(threads);
  if (threads > 1 && n_mb * bl.n_nb < want) {
    const std::int64_t m_parts = (want + bl.n_nb - 1) / bl.n_nb;
    mb = std::max<std::int64_t>(((M + m_parts - 1) / m_parts + 3) / 4 * 4, 4);
    n_mb = (M + mb - 1) / mb;
  }
  bl.mb = mb;
  bl.n_mb = std::max<std::int64_t>(n_mb, 0);
  return bl;
}

/// Rows [m0, m1) of the im2col matrix (row m = (n, oh, ow) holds the kh*kw taps of cpix
/// elements each, padded taps are zeros), written densely to dst. For each kernel row the
/// valid taps are one contiguous run of the NHWC input, copied with one memcpy.
template <class T>
void im2col_rows(const T* x, const ConvGeom& g, std::int64_t cpix, std::int64_t m0,
                 std::int64_t m1, T* dst) {
  const std::int64_t ho = g.ho(), wo = g.wo();
  const std::int64_t row_len = g.kh * g.kw * cpix;
  for (std::int64_t m = m0; m < m1; ++m) {
    const std::int64_t n = m / (ho * wo), rem = m % (ho * wo);
    const std::int64_t oh = rem / wo, ow = rem % wo;
    T* row = dst + (m - m0) * row_len;
    const std::int64_t iw0 = ow * g.sw - g.pw;
    const std::int64_t j0 = std::max<std::int64_t>(0, -iw0);
    const std::int64_t j1 = std::min<std::int64_t>(g.kw, g.w - iw0);
    for (std::int64_t i = 0; i < g.kh; ++i) {
      T* seg = row + i * g.kw * cpix;
      const std::int64_t ih = oh * g.sh - g.ph + i;
      if (ih < 0 || ih >= g.h || j1 <= j0) {
        std::memset(seg, 0, sizeof(T) * static_cast<std::size_t>(g.kw * cpix));
        continue;
      }
      if (j0 > 0) std::memset(seg, 0, sizeof(T) * static_cast<std::size_t>(j0 * cpix));
      std::memcpy(seg + j0 * cpix, x + ((n * g.h + ih) * g.w + iw0 + j0) * cpix,
                  sizeof(T) * static_cast<std::size_t>((j1 - j0) * cpix));
      if (j1 < g.kw)
        std::memset(seg + j1 * cpix, 0, sizeof(T) * static_cast<std::size_t>((g.kw - j1) * cpix));
    }
  }
}

/// The convolution-as-GEMM driver shared by the binary, float and int8 convolutions.
/// rows(p, m0, m1, dst) writes im2col rows [m0, m1) of input plane p (row length K);
/// gemm(a, a_plane_stride, m0, mc, n0, nc) multiplies rows [m0, m0+mc) (at `a`) with
/// weight rows [n0, n0+nc). When there are enough row blocks, each task builds its block in
/// a cache-resident buffer and multiplies it with every weight row at once (fused); with
/// few rows and several threads the whole matrix is built first and the GEMM is split over
/// row and column blocks.
template <class T, class RowsFn, class GemmFn>
void conv_driver(std::int64_t M, std::int64_t N, std::int64_t K, std::int64_t planes,
                 int threads, RowsFn&& rows, GemmFn&& gemm) {
  const std::int64_t row_bytes = K * static_cast<std::int64_t>(sizeof(T));
  Blocking b1 = make_blocking(M, N, row_bytes, 1);
  if (threads > 1 && b1.n_mb >= 2 * threads && b1.n_mb < 4 * threads) {
    // At least 4 row blocks per thread, so an uneven last round costs little.
    b1.mb = std::max<std::int64_t>((M + 4 * threads - 1) / (4 * threads) + 3, 4) / 4 * 4;
    b1.n_mb = (M + b1.mb - 1) / b1.mb;
  }
  if (threads == 1 || b1.n_mb >= 2 * threads) {
    parallel_for(b1.n_mb, threads, [&](std::int64_t t) {
      const std::int64_t m0 = t * b1.mb, mc = std::min(b1.mb, M - m0);
      // A per-thread scratch block of raw storage, reused across calls (no allocation or
      // page faults per block); operator new[] aligns it for every T used here.
      thread_local std::unique_ptr<unsigned char[]> scratch;
      thread_local std::size_t scratch_bytes = 0;
      const std::size_t bytes = sizeof(T) * static_cast<std::size_t>(planes * mc * K);
      if (scratch_bytes < bytes) {
        scratch.reset(new unsigned char[bytes]);
        scratch_bytes = bytes;
      }
      T* buf = reinterpret_cast<T*>(scratch.get());
      for (std::int64_t p = 0; p < planes; ++p) rows(p, m0, m0 + mc, buf + p * mc * K);
      gemm(static_cast<const T*>(buf), mc * K, m0, mc, std::int64_t{0}, N);
    });
    return;
  }
  std::unique_ptr<T[]> cols(new T[static_cast<std::size_t>(planes * M * K)]);
  const std::int64_t parts = std::min<std::int64_t>(M, 4 * threads);
  parallel_for(planes * parts, threads, [&](std::int64_t t) {
    const std::int64_t p = t / parts;
    const auto [m0, m1] = chunk(M, parts, t % parts);
    rows(p, m0, m1, cols.get() + (p * M + m0) * K);
  });
  const Blocking bl = make_blocking(M, N, row_bytes, threads);
  parallel_for(bl.n_mb * bl.n_nb, threads, [&](std::int64_t t) {
    const std::int64_t m0 = (t / bl.n_nb) * bl.mb, n0 = (t % bl.n_nb) * bl.nb;
    gemm(static_cast<const T*>(cols.get() + m0 * K), M * K, m0, std::min(bl.mb, M - m0), n0,
         std::min(bl.nb, N - n0));
  });
}

bool is_pointwise(const ConvGeom& g) {
  return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
}

// Bit-dense im2col for packed activations: the kh*kw taps of a row are concatenated bit by
// bit (tap t occupies bits [t*C, (t+1)*C)), so a row takes words_for(kh*kw*C) words instead
// of kh*kw*words_for(C) when C is not a multiple of 64 (e.g. C = 96, 5x5: 38 words, not 50).
// Padded taps stay 0 bits (+1). The source words' padding bits are 0, so OR-ing whole words
// at a bit offset is exact.
inline void append_bits(std::uint64_t* dst, std::int64_t row_words, std::int64_t pos,
                        const std::uint64_t* src, std::int64_t cw) {
  for (std::int64_t q = 0; q < cw; ++q) {
    const std::uint64_t v = src[q];
    const std::int64_t off = pos + q * kWordBits;
    const std::int64_t idx = off / kWordBits;
    const int sh = static_cast<int>(off % kWordBits);
    dst[idx] |= v << sh;
    if (sh != 0 && idx + 1 < row_words) dst[idx + 1] |= v >> (kWordBits - sh);
  }
}

/// Rows [m0, m1) of the bit-dense packed im2col matrix (row m = (n, oh, ow)), each
/// row_words long, written to dst (zeroed here).
void im2col_bits_dense_rows(const std::uint64_t* x, const ConvGeom& g, std::int64_t row_words,
                            std::int64_t m0, std::int64_t m1, std::uint64_t* dst) {
  const std::int64_t ho = g.ho(), wo = g.wo(), cw = words_for(g.c);
  for (std::int64_t m = m0; m < m1; ++m) {
    const std::int64_t n = m / (ho * wo), rem = m % (ho * wo);
    const std::int64_t oh = rem / wo, ow = rem % wo;
    std::uint64_t* row = dst + (m - m0) * row_words;
    std::memset(row, 0, sizeof(std::uint64_t) * static_cast<std::size_t>(row_words));
    for (std::int64_t i = 0; i < g.kh; ++i) {
      const std::int64_t ih = oh * g.sh - g.ph + i;
      if (ih < 0 || ih >= g.h) continue;
      for (std::int64_t j = 0; j < g.kw; ++j) {
        const std::int64_t iw = ow * g.sw - g.pw + j;
        if (iw < 0 || iw >= g.w) continue;
        append_bits(row, row_words, (i * g.kw + j) * g.c, x + ((n * g.h + ih) * g.w + iw) * cw, cw);
      }
    }
  }
}

/// Weights [O, taps, Cw] -> bit-dense rows [O, row_words] (the same layout as above).
void dense_weights(const std::uint64_t* w, std::int64_t o, std::int64_t taps, std::int64_t c,
                   std::int64_t row_words, std::uint64_t* out) {
  const std::int64_t cw = words_for(c);
  for (std::int64_t r = 0; r < o; ++r)
    for (std::int64_t t = 0; t < taps; ++t)
      append_bits(out + r * row_words, row_words, t * c, w + (r * taps + t) * cw, cw);
}


}  // namespace

void bgemm_planes(const KernelSet& ks, int threads, const std::uint64_t* a, std::int64_t pa,
                  const std::uint64_t* b, std::int64_t pw, std::int64_t M, std::int64_t N,
                  std::int64_t Kw, std::int32_t k_bits, std::int32_t* out) {
  if (M == 0 || N == 0) return;
  const Blocking bl = make_blocking(M, N, Kw * 8, threads);
  parallel_for(bl.n_mb * bl.n_nb, threads, [&](std::int64_t t) {
    const std::int64_t m0 = (t / bl.n_nb) * bl.mb, n0 = (t % bl.n_nb) * bl.nb;
    const std::int64_t mc = std::min(bl.mb, M - m0), nc = std::min(bl.nb, N - n0);
    for (std::int64_t i = 0; i < pa; ++i) {
      for (std::int64_t j = 0; j < pw; ++j) {
        const std::int32_t mult = std::int32_t{1} << (i + j);
        ks.bgemm(a + (i * M + m0) * Kw, Kw, b + (j * N + n0) * Kw, Kw, mc, nc, Kw, k_bits, mult,
                 i + j > 0, out + m0 * N + n0, N);
      }
    }
  });
}

void bgemm(const KernelSet& ks, int threads, const std::uint64_t* a, const std::uint64_t* b,
           std::int64_t M, std::int64_t N, std::int64_t Kw, std::int32_t k_bits,
           std::int32_t* out) {
  bgemm_planes(ks, threads, a, 1, b, 1, M, N, Kw, k_bits, out);
}

void bconv2d_planes(const KernelSet& ks, int threads, const std::uint64_t* x, std::int64_t pa,
                    const std::uint64_t* w, std::int64_t pw, const ConvGeom& g, int pad_value,
                    std::int32_t* out) {
  const std::int64_t cw = words_for(g.c);
  const std::int64_t ho = g.ho(), wo = g.wo();
  const std::int64_t M = g.n * ho * wo;
  const std::int64_t taps = g.kh * g.kw;
  const std::int64_t K = taps * cw;
  const std::int32_t k_bits = static_cast<std::int32_t>(taps * g.c);
  if (M == 0 || g.o == 0) return;
  // Weight rows [pw, O, Kr]; bit-dense when that saves words (see ops.h).
  const bool dense = taps > 1 && words_for(taps * g.c) < K;
  const std::int64_t Kr = dense ? words_for(taps * g.c) : K;
  std::vector<std::uint64_t> wdense;
  const std::uint64_t* wr = w;
  if (dense) {
    wdense.assign(static_cast<std::size_t>(pw * g.o * Kr), 0);
    for (std::int64_t j = 0; j < pw; ++j)
      dense_weights(w + j * g.o * K, g.o, taps, g.c, Kr, wdense.data() + j * g.o * Kr);
    wr = wdense.data();
  }
  const std::int64_t plane_in = g.n * g.h * g.w * cw;
  if (is_pointwise(g)) {
    bgemm_planes(ks, threads, x, pa, wr, pw, M, g.o, Kr, k_bits, out);
  } else {
    conv_driver<std::uint64_t>(
        M, g.o, Kr, pa, threads,
        [&](std::int64_t p, std::int64_t m0, std::int64_t m1, std::uint64_t* dst) {
          if (dense)
            im2col_bits_dense_rows(x + p * plane_in, g, Kr, m0, m1, dst);
          else
            im2col_rows(x + p * plane_in, g, cw, m0, m1, dst);
        },
        [&](const std::uint64_t* a, std::int64_t a_plane, std::int64_t m0, std::int64_t mc,
            std::int64_t n0, std::int64_t nc) {
          for (std::int64_t i = 0; i < pa; ++i)
            for (std::int64_t j = 0; j < pw; ++j)
              ks.bgemm(a + i * a_plane, Kr, wr + (j * g.o + n0) * Kr, Kr, mc, nc, Kr, k_bits,
                       std::int32_t{1} << (i + j), i + j > 0, out + m0 * g.o + n0, g.o);
        });
  }
  if (pad_value != 0 || (g.ph == 0 && g.pw == 0)) return;
  // Zero padding: remove what the +1 taps added. tv[t][o] = (2^pa - 1) sum_j 2^j dot(+1, w_j[o,t]),
  // where dot(+1, w) = C - 2 popcount(w): one bgemm of an all-zero (+1) row against the
  // weight taps viewed as rows [O * taps, Cw] gives it with the kernel's own popcount.
  const std::int32_t a_weight = (std::int32_t{1} << pa) - 1;
  std::vector<std::int32_t> tvo(static_cast<std::size_t>(g.o * taps));
  const std::vector<std::uint64_t> plus_one(static_cast<std::size_t>(cw), 0);
  for (std::int64_t j = 0; j < pw; ++j)
    ks.bgemm(plus_one.data(), cw, w + j * g.o * K, cw, 1, g.o * taps, cw,
             static_cast<std::int32_t>(g.c), a_weight * (std::int32_t{1} << j), j > 0, tvo.data(),
             g.o * taps);
  std::vector<std::int32_t> tv(static_cast<std::size_t>(taps * g.o));
  for (std::int64_t o = 0; o < g.o; ++o)
    for (std::int64_t t = 0; t < taps; ++t) tv[t * g.o + o] = tvo[o * taps + t];
  // The padded taps of an output position are those outside its valid tap box
  // [i0, i1) x [j0, j1); positions with the same box (a handful near each border) share one
  // correction vector, computed once.
  std::map<std::array<std::int64_t, 4>, std::vector<std::int32_t>> by_box;
  for (std::int64_t oh = 0; oh < ho; ++oh) {
    const std::int64_t i0 = std::max<std::int64_t>(0, g.ph - oh * g.sh);
    const std::int64_t i1 = std::min<std::int64_t>(g.kh, g.h + g.ph - oh * g.sh);
    for (std::int64_t ow = 0; ow < wo; ++ow) {
      const std::int64_t j0 = std::max<std::int64_t>(0, g.pw - ow * g.sw);
      const std::int64_t j1 = std::min<std::int64_t>(g.kw, g.w + g.pw - ow * g.sw);
      if (i0 == 0 && i1 == g.kh && j0 == 0 && j1 == g.kw) continue;  // no padded tap
      auto [it, fresh] = by_box.try_emplace({i0, i1, j0, j1});
      std::vector<std::int32_t>& corr = it->second;
      if (fresh) {
        corr.assign(static_cast<std::size_t>(g.o), 0);
        for (std::int64_t i = 0; i < g.kh; ++i)
          for (std::int64_t j = 0; j < g.kw; ++j) {
            if (i >= i0 && i < i1 && j >= j0 && j < j1) continue;
            const std::int32_t* tr = tv.data() + (i * g.kw + j) * g.o;
            for (std::int64_t o = 0; o < g.o; ++o) corr[o] += tr[o];
          }
      }
      for (std::int64_t n = 0; n < g.n; ++n) {
        std::int32_t* dst = out + ((n * ho + oh) * wo + ow) * g.o;
        for (std::int64_t o = 0; o < g.o; ++o) dst[o] -= corr[o];
      }
    }
  }
}

namespace {
void sgemm_threaded(const KernelSet& ks, int threads, const float* a, const float* b,
                    const float* bias, std::int64_t M, std::int64_t N, std::int64_t K, float* out) {
  if (M == 0 || N == 0) return;
  const Blocking bl = make_blocking(M, N, K * 4, threads);
  parallel_for(bl.n_mb * bl.n_nb, threads, [&](std::int64_t t) {
    const std::int64_t m0 = (t / bl.n_nb) * bl.mb, n0 = (t % bl.n_nb) * bl.nb;
    const std::int64_t mc = std::min(bl.mb, M - m0), nc = std::min(bl.nb, N - n0);
    ks.sgemm(a + m0 * K, K, b + n0 * K, K, mc, nc, K, bias != nullptr ? bias + n0 : nullptr,
             out + m0 * N + n0, N);
  });
}
}  // namespace

void conv2d_f32(const KernelSet& ks, int threads, const float* x, const float* w,
                const float* bias, const ConvGeom& g, float* out) {
  const std::int64_t M = g.n * g.ho() * g.wo();
  const std::int64_t K = g.kh * g.kw * g.c;
  if (M == 0 || g.o == 0) return;
  if (K == 0) {
    for (std::int64_t m = 0; m < M; ++m)
      for (std::int64_t o = 0; o < g.o; ++o) out[m * g.o + o] = bias != nullptr ? bias[o] : 0.0f;
    return;
  }
  if (is_pointwise(g)) {
    sgemm_threaded(ks, threads, x, w, bias, M, g.o, K, out);
    return;
  }
  conv_driver<float>(
      M, g.o, K, 1, threads,
      [&](std::int64_t, std::int64_t m0, std::int64_t m1, float* dst) { im2col_rows(x, g, g.c, m0, m1, dst); },
      [&](const float* a, std::int64_t, std::int64_t m0, std::int64_t mc, std::int64_t n0, std::int64_t nc) {
        ks.sgemm(a, K, w + n0 * K, K, mc, nc, K, bias != nullptr ? bias + n0 : nullptr,
                 out + m0 * g.o + n0, g.o);
      });
}

void dense_f32(const KernelSet& ks, int threads, const float* x, const float* w,
               const float* bias, std::int64_t n, std::int64_t k, std::int64_t o, float* out) {
  if (n == 0 || o == 0) return;
  if (k == 0) {
    for (std::int64_t m = 0; m < n; ++m)
      for (std::int64_t q = 0; q < o; ++q) out[m * o + q] = bias != nullptr ? bias[q] : 0.0f;
    return;
  }
  sgemm_threaded(ks, threads, x, w, bias, n, o, k, out);
}

void conv2d_u8i8(const KernelSet& ks, int threads, const std::uint8_t* x, const std::int8_t* w,
                 const ConvGeom& g, std::int32_t* out) {
  const std::int64_t M = g.n * g.ho() * g.wo();
  const std::int64_t K = g.kh * g.kw * g.c;
  if (M == 0 || g.o == 0) return;
  const auto gemm = [&](const std::uint8_t* a, std::int64_t, std::int64_t m0, std::int64_t mc,
                        std::int64_t n0, std::int64_t nc) {
    ks.igemm_u8i8(a, K, w + n0 * K, K, mc, nc, K, out + m0 * g.o + n0, g.o);
  };
  if (is_pointwise(g)) {
    const Blocking bl = make_blocking(M, g.o, K, threads);
    parallel_for(bl.n_mb * bl.n_nb, threads, [&](std::int64_t t) {
      const std::int64_t m0 = (t / bl.n_nb) * bl.mb, n0 = (t % bl.n_nb) * bl.nb;
      gemm(x + m0 * K, 0, m0, std::min(bl.mb, M - m0), n0, std::min(bl.nb, g.o - n0));
    });
    return;
  }
  conv_driver<std::uint8_t>(
      M, g.o, K, 1, threads,
      [&](std::int64_t, std::int64_t m0, std::int64_t m1, std::uint8_t* dst) { im2col_rows(x, g, g.c, m0, m1, dst); },
      gemm);
}

}  // namespace bitflow::ops
