// Blocked, threaded drivers around the inner GEMM kernels, and the convolutions built on
// them (im2col + GEMM). See bitflow/ops.h for the math.
#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>
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

// Work estimates for threads_for() (parallel.h), in nanoseconds of one core: inner steps at
// a per-step cost of the fast kernels plus memory traffic at about 20 GB/s, so that a
// memory-bound batch-1 dense layer (few steps, megabytes of weights) is still split.
constexpr double kNsPerWordOp = 0.08;  // one 64-bit xor + popcount + add
constexpr double kNsPerF32Mac = 0.03;
constexpr double kNsPerI8Mac = 0.01;
constexpr double kNsPerByte = 0.05;
inline double work_ns(double steps, double ns_per_step, double bytes) {
  return steps * ns_per_step + bytes * kNsPerByte;
}

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

/// The epilogue over all M rows, in contiguous chunks over the threads (for drivers whose
/// tasks do not finish whole rows).
void run_epilogue(const RowsEpilogue* epilogue, std::int64_t M, int threads) {
  if (epilogue == nullptr || M == 0) return;
  const std::int64_t parts = std::min<std::int64_t>(M, threads);
  parallel_for(parts, threads, [&](std::int64_t p) {
    const auto [m0, m1] = chunk(M, parts, p);
    (*epilogue)(m0, m1);
  });
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
/// a cache-resident buffer and multiplies it with every weight row at once (fused); only
/// with very few rows (< 16 per thread) the whole matrix is built first and the GEMM is split
/// over row and column blocks.
template <class T, class RowsFn, class GemmFn>
void conv_driver(std::int64_t M, std::int64_t N, std::int64_t K, std::int64_t planes,
                 int threads, RowsFn&& rows, GemmFn&& gemm, const RowsEpilogue* epilogue = nullptr) {
  const std::int64_t row_bytes = K * static_cast<std::int64_t>(sizeof(T));
  Blocking b1 = make_blocking(M, N, row_bytes, 1);
  if (threads > 1 && b1.n_mb < 4 * threads && M >= 16 * threads) {
    // At least 4 row blocks (of >= 4 rows) per thread, so an uneven last round costs little
    // and even a batch-1 convolution takes the fused path: every thread builds its own
    // cache-resident rows and its epilogue runs on rows still in its cache (the weights are
    // read by both threads, from their own L2).
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
      if (epilogue != nullptr) (*epilogue)(m0, m0 + mc);  // the block's rows are complete
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
  run_epilogue(epilogue, M, threads);
}

// Gathered (implicit-GEMM) convolutions: row blocks of about 96 output positions (the block's
// int32 / float results stay in cache for the epilogue), at least 4 blocks per thread when M allows
// and at least `min_rows` rows per block.
std::int64_t gather_row_block(std::int64_t M, int threads, std::int64_t min_rows) {
  std::int64_t mb = 96;
  if (threads > 1) mb = std::min<std::int64_t>(mb, std::max<std::int64_t>((M + 4 * threads - 1) / (4 * threads), min_rows));
  return mb;
}

// rows[m] (m < mc) = the first element of output position m0 + m's window, (n, oh * sh, ow * sw),
// in the zero-bordered NHWC copy `xp` (hp x wp pixels of `pix` elements each).
template <class T>
void gather_rows(std::vector<const T*>& rows, const T* xp, const ConvGeom& g, std::int64_t m0,
                 std::int64_t mc, std::int64_t hp, std::int64_t wp, std::int64_t pix) {
  const std::int64_t ho = g.ho(), wo = g.wo();
  rows.resize(static_cast<std::size_t>(mc));
  std::int64_t n = m0 / (ho * wo), oh = (m0 % (ho * wo)) / wo, ow = m0 % wo;
  for (std::int64_t m = 0; m < mc; ++m) {
    rows[static_cast<std::size_t>(m)] = xp + ((n * hp + oh * g.sh) * wp + ow * g.sw) * pix;
    if (++ow == wo) {
      ow = 0;
      if (++oh == ho) {
        oh = 0;
        ++n;
      }
    }
  }
}

// The input [n, h, w, pix] (NHWC, `pix` elements per pixel) with a border of g.ph rows and
// g.pw columns of zero elements: [n, h + 2 ph, w + 2 pw, pix] in `buf` (grown as needed and
// reused across calls; `slack` zero elements follow it). The implicit-GEMM convolutions read
// their windows in place from it: a padded tap reads the zeros im2col would write.
template <class T>
T* zero_bordered(const T* x, const ConvGeom& g, std::int64_t pix, std::vector<T>& buf,
                 std::int64_t slack = 0) {
  const std::int64_t hp = g.h + 2 * g.ph, wp = g.w + 2 * g.pw;
  const std::size_t elems = static_cast<std::size_t>(g.n * hp * wp * pix + slack);
  if (buf.size() < elems) buf.resize(elems);
  T* const xp = buf.data();
  const auto zero = [](T* p, std::int64_t count) {
    std::memset(p, 0, sizeof(T) * static_cast<std::size_t>(count));  // all-zero bits: 0, 0.0f
  };
  for (std::int64_t n = 0; n < g.n; ++n)
    for (std::int64_t r = 0; r < hp; ++r) {
      T* row = xp + (n * hp + r) * wp * pix;
      const std::int64_t ih = r - g.ph;
      if (ih < 0 || ih >= g.h) {
        zero(row, wp * pix);
        continue;
      }
      zero(row, g.pw * pix);
      std::memcpy(row + g.pw * pix, x + (n * g.h + ih) * g.w * pix,
                  sizeof(T) * static_cast<std::size_t>(g.w * pix));
      zero(row + (g.pw + g.w) * pix, g.pw * pix);
    }
  zero(xp + g.n * hp * wp * pix, slack);
  return xp;
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

/// Where each word of a bit-dense im2col row comes from: source word (tap t = (i, j), word q)
/// holds nb bits (64, or C - 64 (Cw - 1) for a pixel's last word) that go to row bits
/// [t C + 64 q, + nb); in row word k they are the piece (src << ls) >> rs, with src read at
/// offset off = (i Wp + j) Cw + q from the row's window origin in the zero-bordered input
/// (Wp = w + 2 pw). Pieces of word k: [start[k], start[k + 1]). A source word lands in one
/// word (ls = its bit offset there) or straddles two (then also rs = 64 - that offset in the
/// next); no shift is ever 64.
struct DenseTaps {
  std::vector<std::int32_t> start, off;
  std::vector<std::uint8_t> ls, rs;
};

DenseTaps dense_taps(const ConvGeom& g, std::int64_t wp, std::int64_t row_words) {
  const std::int64_t cw = words_for(g.c);
  struct Piece {
    std::int64_t k, off;
    int ls, rs;
  };
  std::vector<Piece> ps;
  for (std::int64_t i = 0; i < g.kh; ++i)
    for (std::int64_t j = 0; j < g.kw; ++j)
      for (std::int64_t q = 0; q < cw; ++q) {
        const std::int64_t nb = q + 1 < cw ? kWordBits : g.c - (cw - 1) * kWordBits;
        const std::int64_t pos = (i * g.kw + j) * g.c + q * kWordBits, k = pos / kWordBits;
        const int o = static_cast<int>(pos % kWordBits);
        const std::int64_t off = (i * wp + j) * cw + q;
        ps.push_back({k, off, o, 0});
        if (o + nb > kWordBits) ps.push_back({k + 1, off, 0, static_cast<int>(kWordBits) - o});
      }
  // generated in increasing k (a straddling piece ends before the next source word starts)
  DenseTaps dt;
  dt.start.assign(static_cast<std::size_t>(row_words + 1), 0);
  for (const Piece& p : ps) {
    ++dt.start[static_cast<std::size_t>(p.k + 1)];
    dt.off.push_back(static_cast<std::int32_t>(p.off));
    dt.ls.push_back(static_cast<std::uint8_t>(p.ls));
    dt.rs.push_back(static_cast<std::uint8_t>(p.rs));
  }
  for (std::int64_t k = 0; k < row_words; ++k) dt.start[k + 1] += dt.start[k];
  return dt;
}

/// Rows [m0, m1) of the bit-dense packed im2col matrix (row m = (n, oh, ow)), each
/// row_words long, written to dst, read from the zero-bordered input xp ([n, hp, wp, Cw]; a
/// padded tap reads zero words: 0 bits, +1, as im2col writes them): the taps are
/// concatenated bit by bit (tap t occupies bits [t C, (t + 1) C)). Every row word is the OR
/// of its DenseTaps pieces, independent of the other words (no serial bit-stream state), and
/// written once. The source words' padding bits are 0, so a piece holds no foreign bits.
void im2col_bits_dense_rows(const std::uint64_t* xp, const ConvGeom& g, std::int64_t hp,
                            std::int64_t wp, const DenseTaps& dt, std::int64_t row_words,
                            std::int64_t m0, std::int64_t m1, std::uint64_t* dst) {
  const std::int64_t ho = g.ho(), wo = g.wo(), cw = words_for(g.c);
  if (m0 >= m1) return;
  const std::int32_t* const st = dt.start.data();
  const std::int32_t* const off = dt.off.data();
  const std::uint8_t* const ls = dt.ls.data();
  const std::uint8_t* const rs = dt.rs.data();
  std::int64_t n = m0 / (ho * wo), oh = (m0 % (ho * wo)) / wo, ow = m0 % wo;
  for (std::int64_t m = m0; m < m1; ++m) {
    const std::uint64_t* org = xp + ((n * hp + oh * g.sh) * wp + ow * g.sw) * cw;
    std::uint64_t* out = dst + (m - m0) * row_words;
    for (std::int64_t k = 0; k < row_words; ++k) {
      std::uint64_t acc = 0;
      for (std::int32_t e = st[k]; e < st[k + 1]; ++e) acc |= (org[off[e]] << ls[e]) >> rs[e];
      out[k] = acc;
    }
    if (++ow == wo) {
      ow = 0;
      if (++oh == ho) {
        oh = 0;
        ++n;
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
  threads = threads_for(work_ns(static_cast<double>(pa * pw * M) * N * Kw, kNsPerWordOp,
                                static_cast<double>((pa * M + pw * N) * Kw * 8)), threads);
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

std::vector<std::uint64_t> pack_bgemm_weights(const std::uint64_t* B, std::int64_t N, std::int64_t Kw) {
  const std::int64_t blocks = (N + kPackedNR - 1) / kPackedNR;
  std::vector<std::uint64_t> out(static_cast<std::size_t>(blocks * Kw * kPackedNR), 0);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t k = 0; k < Kw; ++k)
      out[((n / kPackedNR) * Kw + k) * kPackedNR + n % kPackedNR] = B[n * Kw + k];
  return out;
}

PreparedBconv prepare_bconv(const KernelSet& ks, const std::uint64_t* w, std::int64_t pw,
                           const ConvGeom& g, bool allow_pairs) {
  PreparedBconv p;
  p.o = g.o; p.kh = g.kh; p.kw = g.kw; p.c = g.c; p.pw = pw;
  const std::int64_t cw = words_for(g.c);
  const std::int64_t taps = g.kh * g.kw;
  const std::int64_t K = taps * cw;
  // Weight rows [pw, O, Kr]; bit-dense when that saves words (see ops.h).
  p.dense = taps > 1 && words_for(taps * g.c) < K;
  p.Kr = p.dense ? words_for(taps * g.c) : K;
  // Paired last words instead (ops.h) when the few extra words cost less than the bit-dense
  // im2col: measured on AVX-512 (AlexNet conv2, C = 96, 5x5, O = 192), an im2col word takes
  // about 6 cycles and a GEMM word about 0.19 cycles per output channel, so pairs pay while
  // (extra words) * O <= 30 * (bit-dense words); conv2: 40 instead of 38 words, no im2col.
  const std::int64_t r = g.c - (cw - 1) * kWordBits;
  const std::int64_t kr_pairs = g.kh * (g.kw * (cw - 1) + (g.kw + 1) / 2);
  if (allow_pairs && p.dense && pw == 1 && ks.bgemm_gather != nullptr &&
      ks.bgemm_packed != nullptr && r <= kWordBits / 2 && g.kw >= 2 &&
      (kr_pairs - p.Kr) * g.o <= 30 * p.Kr) {
    p.dense = false;
    p.pairs = true;
    p.Kr = kr_pairs;
    p.rows.assign(static_cast<std::size_t>(g.o * p.Kr), 0);
    for (std::int64_t o = 0; o < g.o; ++o) {
      std::uint64_t* dst = p.rows.data() + o * p.Kr;
      for (std::int64_t i = 0; i < g.kh; ++i) {
        const std::uint64_t* wr = w + (o * g.kh + i) * g.kw * cw;  // kernel row i: [kw, Cw]
        for (std::int64_t j = 0; j < g.kw; ++j)
          for (std::int64_t q = 0; q + 1 < cw; ++q) *dst++ = wr[j * cw + q];
        for (std::int64_t j = 0; j < g.kw; j += 2)
          *dst++ = wr[j * cw + cw - 1] | (j + 1 < g.kw ? wr[(j + 1) * cw + cw - 1] << r : 0);
      }
    }
  } else if (p.dense) {
    p.rows.assign(static_cast<std::size_t>(pw * g.o * p.Kr), 0);
    for (std::int64_t j = 0; j < pw; ++j)
      dense_weights(w + j * g.o * K, g.o, taps, g.c, p.Kr, p.rows.data() + j * g.o * p.Kr);
  } else {
    p.rows.assign(w, w + pw * g.o * K);
  }
  if (ks.bgemm_packed != nullptr && pw == 1) p.packed = pack_bgemm_weights(p.rows.data(), g.o, p.Kr);
  // tv[t][o] = sum_j 2^j dot(+1, w_j[o, t]), where dot(+1, w) = C - 2 popcount(w): one bgemm of
  // an all-zero (+1) row against the weight taps viewed as rows [O * taps, Cw] gives it with
  // the kernel's own popcount.
  if (g.o > 0 && taps > 0) {
    std::vector<std::int32_t> tvo(static_cast<std::size_t>(g.o * taps));
    const std::vector<std::uint64_t> plus_one(static_cast<std::size_t>(cw), 0);
    for (std::int64_t j = 0; j < pw; ++j)
      ks.bgemm(plus_one.data(), cw, w + j * g.o * K, cw, 1, g.o * taps, cw,
               static_cast<std::int32_t>(g.c), std::int32_t{1} << j, j > 0, tvo.data(), g.o * taps);
    p.tv.resize(static_cast<std::size_t>(taps * g.o));
    for (std::int64_t o = 0; o < g.o; ++o)
      for (std::int64_t t = 0; t < taps; ++t) p.tv[t * g.o + o] = tvo[o * taps + t];
  }
  return p;
}

namespace {
/// The bit-dense im2col of a call: the zero-bordered copy of its `planes` activation planes
/// (the caller's reused buffer; helper threads only read it) and the tap program, built once
/// per call when `dense`.
class DenseRows {
 public:
  DenseRows(const std::uint64_t* x, const ConvGeom& g, std::int64_t planes, bool dense,
            std::int64_t row_words)
      : g_(g), hp_(g.h + 2 * g.ph), wp_(g.w + 2 * g.pw), row_words_(row_words) {
    if (!dense) return;
    thread_local std::vector<std::uint64_t> padded;
    ConvGeom all = g;
    all.n = g.n * planes;  // planes [pa, n, h, w, Cw]: pa * n images
    xp_ = zero_bordered(x, all, words_for(g.c), padded);
    taps_ = dense_taps(g, wp_, row_words);
  }
  void rows(std::int64_t plane, std::int64_t m0, std::int64_t m1, std::uint64_t* dst) const {
    im2col_bits_dense_rows(xp_ + plane * g_.n * hp_ * wp_ * words_for(g_.c), g_, hp_, wp_, taps_,
                           row_words_, m0, m1, dst);
  }

 private:
  ConvGeom g_;
  std::int64_t hp_, wp_, row_words_;
  const std::uint64_t* xp_ = nullptr;
  DenseTaps taps_;
};
}  // namespace

void bconv2d_prepared(const KernelSet& ks, int threads, const std::uint64_t* x, std::int64_t pa,
                      const PreparedBconv& prep, const ConvGeom& g, int pad_value,
                      std::int32_t* out, const RowsEpilogue* epilogue) {
  const std::int64_t cw = words_for(g.c);
  const std::int64_t ho = g.ho(), wo = g.wo();
  const std::int64_t M = g.n * ho * wo;
  const std::int64_t taps = g.kh * g.kw;
  const std::int32_t k_bits = static_cast<std::int32_t>(taps * g.c);
  if (M == 0 || g.o == 0) return;
  const std::int64_t pw = prep.pw, Kr = prep.Kr;
  const bool dense = prep.dense;
  const std::uint64_t* wr = prep.rows.data();
  const std::int64_t plane_in = g.n * g.h * g.w * cw;
  threads = threads_for(work_ns(static_cast<double>(pa * pw * M) * g.o * Kr, kNsPerWordOp,
                                static_cast<double>((pa * M + pw * g.o) * Kr * 8)), threads);

  // Zero padding: each task removes what the +1 taps added to its own outputs,
  // (2^pa - 1) tv[t][o] per padded tap t (each activation plane i contributes 2^i times the
  // +1 tap's dot), right after its GEMM while they are in cache. The padded taps of an output
  // position are those outside its valid tap box [i0, i1) x [j0, j1); positions with the
  // same box (a handful near each border) share one correction vector, computed once here.
  std::vector<std::int32_t> box_of;  // [ho * wo]: index of the correction vector, -1: none
  std::vector<std::int32_t> corr;    // [boxes, O]
  if (pad_value == 0 && (g.ph != 0 || g.pw != 0)) {
    const std::int32_t a_weight = (std::int32_t{1} << pa) - 1;
    const std::vector<std::int32_t>& tv = prep.tv;
    // The box's rows [i0, i1) depend on oh alone and its columns [j0, j1) on ow alone: a
    // class per distinct range on each axis (a handful near the borders), one correction
    // vector per (row class, column class) with a padded tap.
    using Range = std::array<std::int64_t, 2>;
    const auto classes = [](std::int64_t n_out, std::int64_t k, std::int64_t pad, std::int64_t stride,
                            std::int64_t in, std::vector<Range>& ranges) {
      std::vector<std::int32_t> cls(static_cast<std::size_t>(n_out));
      for (std::int64_t o = 0; o < n_out; ++o) {
        const Range r{std::max<std::int64_t>(0, pad - o * stride), std::min<std::int64_t>(k, in + pad - o * stride)};
        const auto it = std::find(ranges.begin(), ranges.end(), r);
        cls[static_cast<std::size_t>(o)] = static_cast<std::int32_t>(it - ranges.begin());
        if (it == ranges.end()) ranges.push_back(r);
      }
      return cls;
    };
    std::vector<Range> rr, cr;
    const std::vector<std::int32_t> rcls = classes(ho, g.kh, g.ph, g.sh, g.h, rr);
    const std::vector<std::int32_t> ccls = classes(wo, g.kw, g.pw, g.sw, g.w, cr);
    const auto ncc = static_cast<std::int64_t>(cr.size());
    std::vector<std::int32_t> box_id(rr.size() * cr.size(), -1);
    for (std::size_t a = 0; a < rr.size(); ++a)
      for (std::size_t b = 0; b < cr.size(); ++b) {
        const auto [i0, i1] = rr[a];
        const auto [j0, j1] = cr[b];
        if (i0 == 0 && i1 == g.kh && j0 == 0 && j1 == g.kw) continue;  // no padded tap
        box_id[a * cr.size() + b] = static_cast<std::int32_t>(corr.size() / static_cast<std::size_t>(g.o));
        corr.resize(corr.size() + static_cast<std::size_t>(g.o), 0);
        std::int32_t* c = corr.data() + corr.size() - static_cast<std::size_t>(g.o);
        for (std::int64_t i = 0; i < g.kh; ++i)
          for (std::int64_t j = 0; j < g.kw; ++j) {
            if (i >= i0 && i < i1 && j >= j0 && j < j1) continue;
            const std::int32_t* tr = tv.data() + (i * g.kw + j) * g.o;
            for (std::int64_t o = 0; o < g.o; ++o) c[o] += a_weight * tr[o];
          }
      }
    box_of.resize(static_cast<std::size_t>(ho * wo));
    for (std::int64_t oh = 0; oh < ho; ++oh)
      for (std::int64_t ow = 0; ow < wo; ++ow)
        box_of[static_cast<std::size_t>(oh * wo + ow)] = box_id[static_cast<std::size_t>(rcls[oh] * ncc + ccls[ow])];
  }
  const auto correct = [&](std::int64_t m0, std::int64_t mc, std::int64_t n0, std::int64_t nc) {
    if (box_of.empty()) return;
    std::int64_t pos = m0 % (ho * wo);
    for (std::int64_t m = m0; m < m0 + mc; ++m) {
      const std::int32_t b = box_of[pos];
      if (b >= 0) {
        const std::int32_t* c = corr.data() + static_cast<std::int64_t>(b) * g.o + n0;
        std::int32_t* dst = out + m * g.o + n0;
        for (std::int64_t o = 0; o < nc; ++o) dst[o] -= c[o];
      }
      if (++pos == ho * wo) pos = 0;
    }
  };

  if (prep.pairs && pa != 1)
    throw std::invalid_argument("bconv2d: weights prepared with paired last words take one activation plane");
  if (pa == 1 && !prep.packed.empty()) {
    // Packed weights: blocks of kPackedNR output channels (every task's n0 is a multiple of
    // kPackedNR: the blockings below and in conv_driver split N in blocks of kNB = 32).
    static_assert(kNB % kPackedNR == 0, "column blocks must start at packed-block boundaries");
    const std::uint64_t* bp = prep.packed.data();
    const auto gemm = [&](const std::uint64_t* a, std::int64_t, std::int64_t m0, std::int64_t mc,
                          std::int64_t n0, std::int64_t nc) {
      ks.bgemm_packed(a, Kr, bp + (n0 / kPackedNR) * Kr * kPackedNR, mc, nc, Kr, k_bits,
                      out + m0 * g.o + n0, g.o);
      correct(m0, mc, n0, nc);
    };
    if (is_pointwise(g)) {
      const Blocking bl = make_blocking(M, g.o, Kr * 8, threads);
      parallel_for(bl.n_mb * bl.n_nb, threads, [&](std::int64_t t) {
        const std::int64_t m0 = (t / bl.n_nb) * bl.mb, n0 = (t % bl.n_nb) * bl.nb;
        gemm(x + m0 * Kr, 0, m0, std::min(bl.mb, M - m0), n0, std::min(bl.nb, g.o - n0));
      });
      run_epilogue(epilogue, M, threads);
    } else if (!dense && ks.bgemm_gather != nullptr) {
      // Whole-word taps: the rows are read in place from a copy of the input with a border of
      // zero words (padded taps are +1 bits, exactly the zero words of im2col, so the padding
      // correction is unchanged); word k = (tap i, j; word q) of row m = (n, oh, ow) is at
      // (i * Wp + j) * Cw + q from the row's window origin. Row blocks over threads (every
      // output channel per task), the correction and the epilogue on each finished block.
      // Paired last words (prep.pairs, ops.h): the copy has pix = Cw + 1 words per pixel, the
      // whole words, then last(p) | last(p + 1) << r (p + 1: the pixel to the right; zero
      // for a row's last pixel, where no tap pair starts), then last(p); the taps (j, j + 1)
      // of a kernel row read the first, an odd kw's last tap the second.
      const std::int64_t hp = g.h + 2 * g.ph, wp = g.w + 2 * g.pw;
      thread_local std::vector<std::uint64_t> padded, paired;  // the caller's; helpers only read
      const std::uint64_t* xp = zero_bordered(x, g, cw, padded);
      std::int64_t pix = cw;
      std::vector<std::int64_t> koff(static_cast<std::size_t>(Kr));
      if (prep.pairs) {
        const std::int64_t r = g.c - (cw - 1) * kWordBits, pixels = g.n * hp * wp;
        pix = cw + 1;
        paired.resize(static_cast<std::size_t>(pixels * pix));
        for (std::int64_t row = 0; row < pixels / wp; ++row)
          for (std::int64_t col = 0; col < wp; ++col) {
            const std::uint64_t* src = xp + (row * wp + col) * cw;
            std::uint64_t* dst = paired.data() + (row * wp + col) * pix;
            for (std::int64_t b = 0; b + 1 < cw; ++b) dst[b] = src[b];
            const std::uint64_t next = col + 1 < wp ? src[cw + cw - 1] : 0;
            dst[cw - 1] = src[cw - 1] | next << r;
            dst[cw] = src[cw - 1];
          }
        xp = paired.data();
        std::int64_t k = 0;
        for (std::int64_t i = 0; i < g.kh; ++i) {
          for (std::int64_t j = 0; j < g.kw; ++j)
            for (std::int64_t b = 0; b + 1 < cw; ++b) koff[k++] = (i * wp + j) * pix + b;
          for (std::int64_t j = 0; j < g.kw; j += 2)
            koff[k++] = (i * wp + j) * pix + (j + 1 < g.kw ? cw - 1 : cw);
        }
      } else {
        for (std::int64_t i = 0; i < g.kh; ++i)
          for (std::int64_t j = 0; j < g.kw; ++j)
            for (std::int64_t q = 0; q < cw; ++q) koff[(i * g.kw + j) * cw + q] = (i * wp + j) * cw + q;
      }
      const std::int64_t mb = gather_row_block(M, threads, 8);
      const std::int64_t n_mb = (M + mb - 1) / mb;
      const std::int64_t* ko = koff.data();
      parallel_for(n_mb, threads, [&](std::int64_t t) {
        const std::int64_t m0 = t * mb, mc = std::min(mb, M - m0);
        thread_local std::vector<const std::uint64_t*> rows;
        gather_rows(rows, xp, g, m0, mc, hp, wp, pix);
        ks.bgemm_gather(rows.data(), ko, bp, mc, g.o, Kr, k_bits, out + m0 * g.o, g.o);
        correct(m0, mc, 0, g.o);
        if (epilogue != nullptr) (*epilogue)(m0, m0 + mc);
      });
    } else {
      DenseRows dr(x, g, 1, dense, Kr);
      conv_driver<std::uint64_t>(
          M, g.o, Kr, 1, threads,
          [&](std::int64_t, std::int64_t m0, std::int64_t m1, std::uint64_t* dst) {
            if (dense)
              dr.rows(0, m0, m1, dst);
            else
              im2col_rows(x, g, cw, m0, m1, dst);
          },
          gemm, epilogue);
    }
  } else if (is_pointwise(g)) {
    bgemm_planes(ks, threads, x, pa, wr, pw, M, g.o, Kr, k_bits, out);
    run_epilogue(epilogue, M, threads);
  } else {
    DenseRows dr(x, g, pa, dense, Kr);
    conv_driver<std::uint64_t>(
        M, g.o, Kr, pa, threads,
        [&](std::int64_t p, std::int64_t m0, std::int64_t m1, std::uint64_t* dst) {
          if (dense)
            dr.rows(p, m0, m1, dst);
          else
            im2col_rows(x + p * plane_in, g, cw, m0, m1, dst);
        },
        [&](const std::uint64_t* a, std::int64_t a_plane, std::int64_t m0, std::int64_t mc,
            std::int64_t n0, std::int64_t nc) {
          for (std::int64_t i = 0; i < pa; ++i)
            for (std::int64_t j = 0; j < pw; ++j)
              ks.bgemm(a + i * a_plane, Kr, wr + (j * g.o + n0) * Kr, Kr, mc, nc, Kr, k_bits,
                       std::int32_t{1} << (i + j), i + j > 0, out + m0 * g.o + n0, g.o);
          correct(m0, mc, n0, nc);
        },
        epilogue);
  }
}

void bconv2d_planes(const KernelSet& ks, int threads, const std::uint64_t* x, std::int64_t pa,
                    const std::uint64_t* w, std::int64_t pw, const ConvGeom& g, int pad_value,
                    std::int32_t* out) {
  if (g.n * g.ho() * g.wo() == 0 || g.o == 0) return;
  const PreparedBconv prep = prepare_bconv(ks, w, pw, g);
  bconv2d_prepared(ks, threads, x, pa, prep, g, pad_value, out);
}

namespace {
void sgemm_threaded(const KernelSet& ks, int threads, const float* a, const float* b,
                    const float* bias, std::int64_t M, std::int64_t N, std::int64_t K, float* out) {
  if (M == 0 || N == 0) return;
  threads = threads_for(work_ns(static_cast<double>(M) * N * K, kNsPerF32Mac,
                                static_cast<double>((M + N) * K * 4)), threads);
  const Blocking bl = make_blocking(M, N, K * 4, threads);
  parallel_for(bl.n_mb * bl.n_nb, threads, [&](std::int64_t t) {
    const std::int64_t m0 = (t / bl.n_nb) * bl.mb, n0 = (t % bl.n_nb) * bl.nb;
    const std::int64_t mc = std::min(bl.mb, M - m0), nc = std::min(bl.nb, N - n0);
    ks.sgemm(a + m0 * K, K, b + n0 * K, K, mc, nc, K, bias != nullptr ? bias + n0 : nullptr,
             out + m0 * N + n0, N);
  });
}
}  // namespace

namespace {
/// conv2d_f32 with the weights packed for ks.sgemm_packed already (packed_w) or not (nullptr:
/// packed here when the set has the kernel).
void conv2d_f32_impl(const KernelSet& ks, int threads, const float* x, const float* w,
                     const float* bias, const ConvGeom& g, float* out, const RowsEpilogue* epilogue,
                     const float* packed_w);
}  // namespace

void conv2d_f32(const KernelSet& ks, int threads, const float* x, const float* w,
                const float* bias, const ConvGeom& g, float* out, const RowsEpilogue* epilogue) {
  conv2d_f32_impl(ks, threads, x, w, bias, g, out, epilogue, nullptr);
}

PreparedConvF32 prepare_conv_f32(const KernelSet& ks, const float* w, const float* bias,
                                 const ConvGeom& filt) {
  PreparedConvF32 p;
  p.filt = filt;
  const std::int64_t K = filt.kh * filt.kw * filt.c;
  p.w.assign(w, w + filt.o * K);
  if (bias != nullptr) p.bias.assign(bias, bias + filt.o);
  if (ks.sgemm_packed != nullptr && K > 0 && filt.o > 0) p.packed = pack_sgemm_weights(w, filt.o, K);
  return p;
}

void conv2d_f32_prepared(const KernelSet& ks, int threads, const float* x,
                         const PreparedConvF32& prep, const ConvGeom& g, float* out,
                         const RowsEpilogue* epilogue) {
  conv2d_f32_impl(ks, threads, x, prep.w.data(), prep.bias.empty() ? nullptr : prep.bias.data(), g,
                  out, epilogue, prep.packed.empty() ? nullptr : prep.packed.data());
}

namespace {
void conv2d_f32_impl(const KernelSet& ks, int threads, const float* x, const float* w,
                     const float* bias, const ConvGeom& g, float* out, const RowsEpilogue* epilogue,
                     const float* packed_w) {
  const std::int64_t M = g.n * g.ho() * g.wo();
  const std::int64_t K = g.kh * g.kw * g.c;
  if (M == 0 || g.o == 0) return;
  if (K == 0) {
    for (std::int64_t m = 0; m < M; ++m)
      for (std::int64_t o = 0; o < g.o; ++o) out[m * g.o + o] = bias != nullptr ? bias[o] : 0.0f;
    run_epilogue(epilogue, M, threads);
    return;
  }
  threads = threads_for(work_ns(static_cast<double>(M) * g.o * K, kNsPerF32Mac,
                                static_cast<double>((M + g.o) * K * 4)), threads);
  if (ks.sgemm_packed != nullptr) {
    // Packed weights (k-major blocks of kPackedF32NR channels; every task's n0 is a multiple
    // of kNB = 32, hence of 16). Packing is O(O K), small next to the O(M O K) product.
    static_assert(kNB % kPackedF32NR == 0, "column blocks must start at packed-block boundaries");
    std::vector<float> packed_here;
    if (packed_w == nullptr) packed_here = pack_sgemm_weights(w, g.o, K);
    const float* const bpw = packed_w != nullptr ? packed_w : packed_here.data();
    if (is_pointwise(g)) {
      // a 1x1 convolution reads its NHWC rows in place (no im2col); row blocks over threads,
      // every output channel per task (the packed kernel's outer-product tiles)
      const Blocking bl = make_blocking(M, g.o, K * 4, threads);
      parallel_for(bl.n_mb, threads, [&](std::int64_t t) {
        const std::int64_t m0 = t * bl.mb, mc = std::min(bl.mb, M - m0);
        ks.sgemm_packed(x + m0 * K, K, bpw, mc, g.o, K, bias, out + m0 * g.o, g.o);
        if (epilogue != nullptr) (*epilogue)(m0, m0 + mc);
      });
      return;
    }
    if (ks.sgemm_gather != nullptr) {
      // Rows read in place from a zero-bordered copy of the input (the zeros im2col would
      // write; the same operands in the same order, so the same values); element
      // k = (i, j, c) of row m = (n, oh, ow) is at (i * Wp + j) * C + c from the row's window
      // origin. Row blocks over threads, every output channel per task, the epilogue on each
      // finished block.
      const std::int64_t hp = g.h + 2 * g.ph, wp = g.w + 2 * g.pw, C = g.c;
      thread_local std::vector<float> padded;  // the caller's; helpers only read it
      const float* const xp = zero_bordered(x, g, C, padded);
      std::vector<std::int64_t> koff(static_cast<std::size_t>(K));
      for (std::int64_t i = 0; i < g.kh; ++i)
        for (std::int64_t j = 0; j < g.kw; ++j)
          for (std::int64_t c = 0; c < C; ++c) koff[(i * g.kw + j) * C + c] = (i * wp + j) * C + c;
      const std::int64_t mb = gather_row_block(M, threads, 8);
      const std::int64_t n_mb = (M + mb - 1) / mb;
      const std::int64_t* ko = koff.data();
      parallel_for(n_mb, threads, [&](std::int64_t t) {
        const std::int64_t m0 = t * mb, mc = std::min(mb, M - m0);
        thread_local std::vector<const float*> rows;
        gather_rows(rows, static_cast<const float*>(xp), g, m0, mc, hp, wp, C);
        ks.sgemm_gather(rows.data(), ko, bpw, mc, g.o, K, bias, out + m0 * g.o, g.o);
        if (epilogue != nullptr) (*epilogue)(m0, m0 + mc);
      });
      return;
    }
    conv_driver<float>(
        M, g.o, K, 1, threads,
        [&](std::int64_t, std::int64_t m0, std::int64_t m1, float* dst) { im2col_rows(x, g, g.c, m0, m1, dst); },
        [&](const float* a, std::int64_t, std::int64_t m0, std::int64_t mc, std::int64_t n0, std::int64_t nc) {
          ks.sgemm_packed(a, K, bpw + (n0 / kPackedF32NR) * K * kPackedF32NR, mc, nc, K,
                          bias != nullptr ? bias + n0 : nullptr, out + m0 * g.o + n0, g.o);
        },
        epilogue);
    return;
  }
  if (is_pointwise(g)) {
    sgemm_threaded(ks, threads, x, w, bias, M, g.o, K, out);
    run_epilogue(epilogue, M, threads);
    return;
  }
  conv_driver<float>(
      M, g.o, K, 1, threads,
      [&](std::int64_t, std::int64_t m0, std::int64_t m1, float* dst) { im2col_rows(x, g, g.c, m0, m1, dst); },
      [&](const float* a, std::int64_t, std::int64_t m0, std::int64_t mc, std::int64_t n0, std::int64_t nc) {
        ks.sgemm(a, K, w + n0 * K, K, mc, nc, K, bias != nullptr ? bias + n0 : nullptr,
                 out + m0 * g.o + n0, g.o);
      },
      epilogue);
}

}  // namespace

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

namespace {
void conv2d_u8i8_rows(const KernelSet& ks, int threads, const std::uint8_t* x, const std::int8_t* w,
                      const ConvGeom& g, std::int32_t* out) {
  const std::int64_t M = g.n * g.ho() * g.wo();
  const std::int64_t K = g.kh * g.kw * g.c;
  if (M == 0 || g.o == 0) return;
  threads = threads_for(work_ns(static_cast<double>(M) * g.o * K, kNsPerI8Mac,
                                static_cast<double>((M + g.o) * K)), threads);
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

}  // namespace

namespace {
/// Copy n bytes in 8-byte moves plus a byte tail: small runs (an 11-tap row of a 3-channel
/// image is 33 bytes) cost a few instructions instead of a library call each.
inline void copy_bytes(std::uint8_t* dst, const std::uint8_t* src, std::int64_t n) {
  std::int64_t b = 0;
  for (; b + 8 <= n; b += 8) {
    std::uint64_t v;
    std::memcpy(&v, src + b, 8);
    std::memcpy(dst + b, &v, 8);
  }
  for (; b < n; ++b) dst[b] = src[b];
}

/// Copy n uint8 values widened to int16 (0..255; the compiler vectorizes the loop).
inline void copy_bytes(std::int16_t* __restrict dst, const std::uint8_t* __restrict src,
                       std::int64_t n) {
  for (std::int64_t b = 0; b < n; ++b) dst[b] = static_cast<std::int16_t>(src[b]);
}

/// im2col rows [m0, m1) of a uint8 NHWC input with row stride ld >= kh*kw*C values (zeros in
/// padded taps and past kh*kw*C), as uint8 or widened to int16 (T); the output position
/// advances without divisions.
template <class T>
void im2col_u8_rows(const std::uint8_t* x, const ConvGeom& g, std::int64_t ld, std::int64_t m0,
                    std::int64_t m1, T* dst) {
  const std::int64_t ho = g.ho(), wo = g.wo(), K = g.kh * g.kw * g.c, seg = g.kw * g.c;
  if (m0 >= m1) return;
  std::int64_t n = m0 / (ho * wo), oh = (m0 % (ho * wo)) / wo, ow = m0 % wo;
  for (std::int64_t m = m0; m < m1; ++m) {
    T* row = dst + (m - m0) * ld;
    const std::int64_t iw0 = ow * g.sw - g.pw;
    const std::int64_t j0 = std::max<std::int64_t>(0, -iw0);
    const std::int64_t j1 = std::min<std::int64_t>(g.kw, g.w - iw0);
    for (std::int64_t i = 0; i < g.kh; ++i) {
      T* out = row + i * seg;
      const std::int64_t ih = oh * g.sh - g.ph + i;
      if (ih < 0 || ih >= g.h || j1 <= j0) {
        std::memset(out, 0, sizeof(T) * static_cast<std::size_t>(seg));
        continue;
      }
      for (std::int64_t b = 0; b < j0 * g.c; ++b) out[b] = 0;
      copy_bytes(out + j0 * g.c, x + ((n * g.h + ih) * g.w + iw0 + j0) * g.c, (j1 - j0) * g.c);
      for (std::int64_t b = j1 * g.c; b < seg; ++b) out[b] = 0;
    }
    for (std::int64_t k = K; k < ld; ++k) row[k] = 0;
    if (++ow == wo) {
      ow = 0;
      if (++oh == ho) {
        oh = 0;
        ++n;
      }
    }
  }
}
}  // namespace

std::vector<float> pack_sgemm_weights(const float* B, std::int64_t N, std::int64_t K) {
  const std::int64_t blocks = (N + kPackedF32NR - 1) / kPackedF32NR;
  std::vector<float> out(static_cast<std::size_t>(blocks * K * kPackedF32NR), 0.0f);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t k = 0; k < K; ++k)
      out[((n / kPackedF32NR) * K + k) * kPackedF32NR + n % kPackedF32NR] = B[n * K + k];
  return out;
}

std::vector<std::int8_t> pack_igemm_weights(const std::int8_t* B, std::int64_t N, std::int64_t K) {
  const std::int64_t K4 = (K + 3) / 4, blocks = (N + kPackedI8NR - 1) / kPackedI8NR;
  std::vector<std::int8_t> out(static_cast<std::size_t>(blocks * K4 * kPackedI8NR * 4), 0);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t k = 0; k < K; ++k)
      out[(((n / kPackedI8NR) * K4 + k / 4) * kPackedI8NR + n % kPackedI8NR) * 4 + k % 4] = B[n * K + k];
  return out;
}

std::vector<std::int16_t> pack_igemm16_weights(const std::int8_t* B, std::int64_t N, std::int64_t K) {
  const std::int64_t K2 = (K + 1) / 2, blocks = (N + kPackedI16NR - 1) / kPackedI16NR;
  std::vector<std::int16_t> out(static_cast<std::size_t>(blocks * K2 * kPackedI16NR * 2), 0);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t k = 0; k < K; ++k)
      out[(((n / kPackedI16NR) * K2 + k / 2) * kPackedI16NR + n % kPackedI16NR) * 2 + k % 2] = B[n * K + k];
  return out;
}

PreparedU8Conv prepare_u8i8(const KernelSet& ks, const std::int8_t* w, const ConvGeom& g) {
  PreparedU8Conv p;
  p.o = g.o; p.kh = g.kh; p.kw = g.kw; p.c = g.c;
  p.K = g.kh * g.kw * g.c;
  p.K4 = (p.K + 3) / 4;
  p.K2 = (p.K + 1) / 2;
  p.rows.assign(w, w + g.o * p.K);
  p.Q = (g.kw * g.c + 3) / 4;
  if (ks.igemm_gather != nullptr && g.o > 0 && p.K > 0 && 4 * (g.kh * p.Q * 4) <= 5 * p.K) {
    // every kernel row's kw * C bytes zero-padded to Q whole groups (see ops.h)
    const std::int64_t seg = g.kw * g.c, Kg = g.kh * p.Q * 4;
    std::vector<std::int8_t> wg(static_cast<std::size_t>(g.o * Kg), 0);
    for (std::int64_t o = 0; o < g.o; ++o)
      for (std::int64_t i = 0; i < g.kh; ++i)
        std::memcpy(wg.data() + o * Kg + i * p.Q * 4, w + o * p.K + i * seg, static_cast<std::size_t>(seg));
    p.gather = pack_igemm_weights(wg.data(), g.o, Kg);
    return p;
  }
  if (ks.igemm_packed != nullptr)
    p.packed = pack_igemm_weights(w, g.o, p.K);
  else if (ks.igemm_packed16 != nullptr)
    p.packed16 = pack_igemm16_weights(w, g.o, p.K);
  return p;
}

namespace {

/// The packed-weight fixed-point convolution through im2col rows of T (uint8 quads for a
/// u8 x s8 dot-product kernel, int16 pairs for a vpmaddwd-style one): rows of `groups` groups
/// of `group` values (zeros past K), then the packed kernel per column block (every task's n0
/// is a multiple of kNB = 32, hence of the 16-row packing).
template <class T, class W, class Kernel>
void conv_u8_packed(int threads, const std::uint8_t* x, const ConvGeom& g, std::int64_t groups,
                    std::int64_t group, const W* bp, Kernel kernel, std::int32_t* out,
                    const RowsEpilogue* epilogue) {
  static_assert(kNB % kPackedI8NR == 0 && kPackedI8NR == kPackedI16NR,
                "column blocks must start at packed-block boundaries");
  const std::int64_t M = g.n * g.ho() * g.wo();
  const std::int64_t Kp = groups * group;
  threads = threads_for(work_ns(static_cast<double>(M) * g.o * Kp, kNsPerI8Mac,
                                static_cast<double>((M + g.o) * Kp) * sizeof(T)), threads);
  const std::int64_t block = groups * kPackedI8NR * group;  // values per 16-channel block
  conv_driver<T>(
      M, g.o, Kp, 1, threads,
      [&](std::int64_t, std::int64_t m0, std::int64_t m1, T* dst) { im2col_u8_rows(x, g, Kp, m0, m1, dst); },
      [&](const T* a, std::int64_t, std::int64_t m0, std::int64_t mc, std::int64_t n0, std::int64_t nc) {
        kernel(a, Kp, bp + (n0 / kPackedI8NR) * block, mc, nc, groups, out + m0 * g.o + n0, g.o);
      },
      epilogue);
}

/// The gathered (implicit-GEMM) fixed-point convolution: the input is copied once into a
/// zero-bordered image (the padding's zeros multiply like any value; `kSlack` bytes past its
/// end cover the at most 3 bytes a row's last group reads beyond its run), and output row
/// m = (n, oh, ow) is the pointer to its window's first byte there; group q = (i, r) of a row
/// is the 4 bytes at i * Wp * C + 4 r from it (kernel row i, group r of the row's run). Row
/// blocks over threads, every output channel per task, the epilogue on each finished block.
void conv_u8_gather(const KernelSet& ks, int threads, const std::uint8_t* x,
                    const PreparedU8Conv& prep, const ConvGeom& g, std::int32_t* out,
                    const RowsEpilogue* epilogue) {
  constexpr std::int64_t kSlack = 64;
  const std::int64_t ho = g.ho(), wo = g.wo(), M = g.n * ho * wo;
  const std::int64_t hp = g.h + 2 * g.ph, wp = g.w + 2 * g.pw, C = g.c;
  const std::int64_t groups = g.kh * prep.Q;
  threads = threads_for(work_ns(static_cast<double>(M) * g.o * groups * 4, kNsPerI8Mac,
                                static_cast<double>(g.n * hp * wp * C + g.o * groups * 4)), threads);
  // the zero-bordered copy: per call, in the calling thread's reused buffer (helpers only read it)
  thread_local std::vector<std::uint8_t> padded;
  const std::uint8_t* const xp = zero_bordered(x, g, C, padded, kSlack);
  std::vector<std::int64_t> koff(static_cast<std::size_t>(groups));
  for (std::int64_t i = 0; i < g.kh; ++i)
    for (std::int64_t r = 0; r < prep.Q; ++r) koff[i * prep.Q + r] = i * wp * C + 4 * r;
  const std::int64_t mb = gather_row_block(M, threads, 12);
  const std::int64_t n_mb = (M + mb - 1) / mb;
  const std::int8_t* bp = prep.gather.data();
  const std::int64_t* ko = koff.data();
  parallel_for(n_mb, threads, [&](std::int64_t t) {
    const std::int64_t m0 = t * mb, mc = std::min(mb, M - m0);
    thread_local std::vector<const std::uint8_t*> rows;
    gather_rows(rows, static_cast<const std::uint8_t*>(xp), g, m0, mc, hp, wp, C);
    ks.igemm_gather(rows.data(), ko, bp, mc, g.o, groups, out + m0 * g.o, g.o);
    if (epilogue != nullptr) (*epilogue)(m0, m0 + mc);
  });
}

}  // namespace

void conv2d_u8i8_prepared(const KernelSet& ks, int threads, const std::uint8_t* x,
                          const PreparedU8Conv& prep, const ConvGeom& g, std::int32_t* out,
                          const RowsEpilogue* epilogue) {
  const std::int64_t M = g.n * g.ho() * g.wo();
  if (M == 0 || g.o == 0) return;
  if (!prep.gather.empty()) {
    conv_u8_gather(ks, threads, x, prep, g, out, epilogue);
    return;
  }
  if (!prep.packed16.empty()) {
    conv_u8_packed<std::int16_t>(threads, x, g, prep.K2, 2, prep.packed16.data(), ks.igemm_packed16, out, epilogue);
    return;
  }
  if (!prep.packed.empty()) {
    conv_u8_packed<std::uint8_t>(threads, x, g, prep.K4, 4, prep.packed.data(), ks.igemm_packed, out, epilogue);
    return;
  }
  conv2d_u8i8_rows(ks, threads, x, prep.rows.data(), g, out);
  run_epilogue(epilogue, M, threads);
}

void conv2d_u8i8(const KernelSet& ks, int threads, const std::uint8_t* x, const std::int8_t* w,
                 const ConvGeom& g, std::int32_t* out) {
  if (g.n * g.ho() * g.wo() == 0 || g.o == 0) return;
  if (ks.igemm_packed == nullptr && ks.igemm_packed16 == nullptr && ks.igemm_gather == nullptr) {
    conv2d_u8i8_rows(ks, threads, x, w, g, out);
    return;
  }
  conv2d_u8i8_prepared(ks, threads, x, prepare_u8i8(ks, w, g), g, out);
}

}  // namespace bitflow::ops
