// float_stream__avx2: the fused float stream (bitflow/float_stream.h) with 8 channels per ymm
// register, for CPUs with AVX2 but no AVX-512 (the Bi-Real residual stream: int32 accumulator
// -> per-channel affine stages -> add the shortcut -> threshold to packed bits, and the kept
// float sum). Every value of an 8-channel chunk stays in registers from the operand loads to
// the stored sum and its threshold bits (one pass over memory; the portable rows make one
// L1 pass per stage and operand). The same float32 operations as the definition, in the same
// order: int32 -> float32 conversion (round to nearest), per stage a multiply then an add
// (separately rounded: built with -ffp-contract=off, and these intrinsics never fuse),
// left-to-right sums, ordered quiet compares (NaN is on the +1 side) - so the results equal
// the portable code bit for bit. Built with -mavx2 -mfma -mpopcnt (no FMA intrinsic is used).
#include <immintrin.h>

#include "bitflow/common.h"
#include "bitflow/float_stream.h"

namespace bitflow::avx2 {

using ops::FloatStream;

namespace {

// The operands of one call, flattened once (base pointers, conversion flag, stage
// parameters) so that the channel loop reads them from the stack instead of walking the
// stream's vectors for every 8 channels. Streams with more operands or stages than these
// caps (none in the zoo: at most 3 operands of at most 3 stages) take the generic loop.
constexpr int kMaxOps = 4, kMaxStages = 4;
struct Flat {
  const void* x;
  bool i32;
  int n_st;
  const float* sc[kMaxStages];
  const float* bi[kMaxStages];
};

template <bool kFull>
inline __m256 ld_ps(const float* p, __m256i m) {
  if constexpr (kFull) return _mm256_loadu_ps(p);
  else return _mm256_maskload_ps(p, m);
}

template <bool kFull>
inline __m256 operand_chunk(const Flat& op, std::int64_t off, std::int64_t c, __m256i m) {
  __m256 v;
  if (op.i32) {
    const std::int32_t* p = static_cast<const std::int32_t*>(op.x) + off;
    if constexpr (kFull) v = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    else v = _mm256_cvtepi32_ps(_mm256_maskload_epi32(p, m));
  } else {
    v = ld_ps<kFull>(static_cast<const float*>(op.x) + off, m);
  }
  for (int s = 0; s < op.n_st; ++s) {
    v = _mm256_mul_ps(v, ld_ps<kFull>(op.sc[s] + c, m));
    v = _mm256_add_ps(v, ld_ps<kFull>(op.bi[s] + c, m));
  }
  return v;
}

// One chunk of 8 channels at c (kFull) or the last o - c < 8 (mask m): the operand sum, kept
// and / or thresholded; returns the chunk's 8 threshold bits (0 past o).
template <bool kFull>
inline std::uint64_t chunk(const Flat* ops, int n_ops, std::int64_t off, std::int64_t c,
                           __m256i m, float* y, const float* thr, const std::uint32_t* pos) {
  __m256 acc = operand_chunk<kFull>(ops[0], off, c, m);
  for (int k = 1; k < n_ops; ++k) acc = _mm256_add_ps(acc, operand_chunk<kFull>(ops[k], off, c, m));
  if (y != nullptr) {
    if constexpr (kFull) _mm256_storeu_ps(y + off, acc);
    else _mm256_maskstore_ps(y + off, m, acc);
  }
  if (thr == nullptr) return 0;
  const __m256 t = ld_ps<kFull>(thr + c, m);
  __m256 up;
  if constexpr (kFull) up = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pos + c)));
  else up = _mm256_castsi256_ps(_mm256_maskload_epi32(reinterpret_cast<const int*>(pos + c), m));
  const __m256 lt = _mm256_cmp_ps(acc, t, _CMP_LT_OQ);
  const __m256 gt = _mm256_cmp_ps(acc, t, _CMP_GT_OQ);
  const __m256 neg = _mm256_or_ps(_mm256_and_ps(up, lt), _mm256_andnot_ps(up, gt));
  // lanes past o: the masked loads gave acc = t = 0 and up = 0, so 0 > 0 is false (bit 0)
  return static_cast<std::uint64_t>(static_cast<unsigned>(_mm256_movemask_ps(neg)));
}

void rows_generic(const FloatStream& fs, const float* thr, const std::uint32_t* pos,
                  const void* const* xs, std::int64_t r0, std::int64_t r1, float* y,
                  std::uint64_t* bits);

}  // namespace

void float_stream_rows__avx2(const FloatStream& fs, const float* thr, const std::uint32_t* pos,
                             const void* const* xs, std::int64_t r0, std::int64_t r1, float* y,
                             std::uint64_t* bits) {
  const int n_ops = static_cast<int>(fs.operand_count());
  Flat ops[kMaxOps];
  bool fits = n_ops <= kMaxOps;
  for (int k = 0; fits && k < n_ops; ++k) {
    const FloatStream::Operand& op = fs.operand(static_cast<std::size_t>(k));
    fits = op.stages.size() <= static_cast<std::size_t>(kMaxStages);
    if (!fits) break;
    ops[k].x = xs[k];
    ops[k].i32 = op.i32;
    ops[k].n_st = static_cast<int>(op.stages.size());
    for (int s = 0; s < ops[k].n_st; ++s) {
      ops[k].sc[s] = op.stages[static_cast<std::size_t>(s)].scale.data();
      ops[k].bi[s] = op.stages[static_cast<std::size_t>(s)].bias.data();
    }
  }
  if (!fits) {
    rows_generic(fs, thr, pos, xs, r0, r1, y, bits);
    return;
  }
  const std::int64_t o = fs.channels(), nw = words_for(o), full = o / 8 * 8;
  float* const yk = fs.keeps_y() ? y : nullptr;
  const __m256i none = _mm256_setzero_si256();
  const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(o - full)),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (std::int64_t r = r0; r < r1; ++r) {
    std::uint64_t word = 0;
    std::int64_t c = 0;
    for (; c < full; c += 8) {
      word |= chunk<true>(ops, n_ops, r * o + c, c, none, yk, thr, pos) << (c % kWordBits);
      if (thr != nullptr && (c + 8) % kWordBits == 0) {  // a word is complete
        bits[r * nw + c / kWordBits] = word;
        word = 0;
      }
    }
    if (c < o) word |= chunk<false>(ops, n_ops, r * o + c, c, tail, yk, thr, pos) << (c % kWordBits);
    if (thr != nullptr && o % kWordBits != 0) bits[r * nw + nw - 1] = word;
  }
}

namespace {

inline __m256 load_operand(const FloatStream::Operand& op, const void* x, std::int64_t off,
                           std::int64_t c, __m256i m, bool full) {
  __m256 v;
  if (op.i32) {
    const std::int32_t* p = static_cast<const std::int32_t*>(x) + off;
    v = _mm256_cvtepi32_ps(full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                : _mm256_maskload_epi32(p, m));
  } else {
    const float* p = static_cast<const float*>(x) + off;
    v = full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
  }
  for (const FloatStream::Stage& s : op.stages) {
    const float* sc = s.scale.data() + c;
    const float* bi = s.bias.data() + c;
    v = _mm256_mul_ps(v, full ? _mm256_loadu_ps(sc) : _mm256_maskload_ps(sc, m));
    v = _mm256_add_ps(v, full ? _mm256_loadu_ps(bi) : _mm256_maskload_ps(bi, m));
  }
  return v;
}

// Any number of operands and stages (the same operations, read through the stream).
void rows_generic(const FloatStream& fs, const float* thr, const std::uint32_t* pos,
                  const void* const* xs, std::int64_t r0, std::int64_t r1, float* y,
                  std::uint64_t* bits) {
  const std::int64_t o = fs.channels(), nw = words_for(o);
  const std::size_t n_ops = fs.operand_count();
  const bool keep = fs.keeps_y(), th = thr != nullptr;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (std::int64_t r = r0; r < r1; ++r) {
    std::uint64_t word = 0;
    for (std::int64_t c = 0; c < o; c += 8) {
      const bool full = o - c >= 8;
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(full ? 8 : o - c)), lane);
      const std::int64_t off = r * o + c;
      __m256 acc = load_operand(fs.operand(0), xs[0], off, c, m, full);
      for (std::size_t k = 1; k < n_ops; ++k)
        acc = _mm256_add_ps(acc, load_operand(fs.operand(k), xs[k], off, c, m, full));
      if (keep) {
        if (full)
          _mm256_storeu_ps(y + off, acc);
        else
          _mm256_maskstore_ps(y + off, m, acc);
      }
      if (th) {
        const __m256 t = full ? _mm256_loadu_ps(thr + c) : _mm256_maskload_ps(thr + c, m);
        const __m256 up = _mm256_castsi256_ps(
            full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pos + c))
                 : _mm256_maskload_epi32(reinterpret_cast<const int*>(pos + c), m));
        const __m256 lt = _mm256_cmp_ps(acc, t, _CMP_LT_OQ);
        const __m256 gt = _mm256_cmp_ps(acc, t, _CMP_GT_OQ);
        const __m256 neg = _mm256_or_ps(_mm256_and_ps(up, lt), _mm256_andnot_ps(up, gt));
        // lanes past o: the masked loads gave acc = t = 0 and up = 0, so 0 > 0 is false (bit 0)
        word |= static_cast<std::uint64_t>(static_cast<unsigned>(_mm256_movemask_ps(neg)))
                << (c % kWordBits);
        if ((c + 8) % kWordBits == 0 || c + 8 >= o) {
          bits[r * nw + c / kWordBits] = word;
          word = 0;
        }
      }
    }
  }
}
}  // namespace

}  // namespace bitflow::avx2
