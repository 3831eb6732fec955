// igemm_u8i8_gather_6x48__avx512vnni: exact uint8 x int8 GEMM against packed weights whose A
// rows are gathered from the input image in place (IgemmGatherFn, kernels.h): the implicit-GEMM
// form of a fixed-point convolution, with no im2col matrix. A row m is a base pointer A[m];
// its 4-byte group q is the 4 bytes at A[m] + koff[q] (a kernel row's run of kw * C input bytes,
// zero-padded to whole groups in the weights, so the bytes a group reads past the run are
// multiplied by zero weights). A tile is MR rows x NV weight blocks of 16 output channels
// (6 x 48: 18 zmm accumulators; 4 x 64 for a 49-64 channel rest, e.g. a 64-channel stem, so
// that it needs one pass over A): each group step loads the NV block vectors
// Bp[q][16 rows][4 bytes] and, per row, broadcasts the row's 4 bytes (vpbroadcastd from
// memory) into vpdpbusd with each of them; every lane adds the 4 products u8 * s8 of its
// channel, exact while K * 255 * 128 < 2^31 (the caller checks). No horizontal reductions; a
// partial last block is stored with a lane mask. Built with -mavx512f -mavx512bw -mavx512vl
// -mavx512vnni.
#include <immintrin.h>

#include <cstring>

#include "../x86_kernels.h"
#include "bitflow/kernels.h"

namespace bitflow::avx512 {
namespace {

inline __m512i bcast4(const std::uint8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// acc += a (u8) . b (s8) in place. GCC 12 ties the intrinsic's accumulator badly (a register
// copy per vpdpbusd in the loop, which the front end must still issue); the asm form keeps
// every accumulator in one register.
inline __attribute__((always_inline)) void dpbusd(__m512i& acc, __m512i a, __m512i b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
}

template <int MR, int NV>
inline __attribute__((always_inline)) void tile(const std::uint8_t* const* A,
                                                const std::int64_t* koff, const std::int8_t* B,
                                                std::int64_t block_stride, std::int64_t K4,
                                                std::int32_t* C, std::int64_t ldc,
                                                std::int64_t nvalid) {
  const std::uint8_t* a_row[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) a_row[i] = A[i];
  __m512i acc[MR][NV];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::int64_t q = 0; q < K4; ++q) {
    const std::int64_t off = koff[q];
    __m512i b[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) b[j] = _mm512_loadu_si512(B + j * block_stride + q * 64);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m512i a = bcast4(a_row[i] + off);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) dpbusd(acc[i][j], a, b[j]);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    const std::int64_t left = nvalid - 16 * j;
    if (left <= 0) break;
    const __mmask16 mask = static_cast<__mmask16>(left >= 16 ? 0xFFFFu : (1u << left) - 1u);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) _mm512_mask_storeu_epi32(C + i * ldc + 16 * j, mask, acc[i][j]);
  }
}

template <int MR, int NV>
void columns(const std::uint8_t* const* A, const std::int64_t* koff, const std::int8_t* B,
             std::int64_t block_stride, std::int64_t M, std::int64_t K4, std::int32_t* C,
             std::int64_t ldc, std::int64_t nvalid) {
  std::int64_t m = 0;
  for (; m + MR <= M; m += MR)
    tile<MR, NV>(A + m, koff, B, block_stride, K4, C + m * ldc, ldc, nvalid);
  switch (M - m) {  // MR <= 6
    case 5: tile<5, NV>(A + m, koff, B, block_stride, K4, C + m * ldc, ldc, nvalid); break;
    case 4: tile<4, NV>(A + m, koff, B, block_stride, K4, C + m * ldc, ldc, nvalid); break;
    case 3: tile<3, NV>(A + m, koff, B, block_stride, K4, C + m * ldc, ldc, nvalid); break;
    case 2: tile<2, NV>(A + m, koff, B, block_stride, K4, C + m * ldc, ldc, nvalid); break;
    case 1: tile<1, NV>(A + m, koff, B, block_stride, K4, C + m * ldc, ldc, nvalid); break;
    default: break;
  }
}

}  // namespace

void igemm_u8i8_gather_6x48__avx512vnni(const std::uint8_t* const* A, const std::int64_t* koff,
                                        const std::int8_t* Bp, std::int64_t M, std::int64_t N,
                                        std::int64_t K4, std::int32_t* C, std::int64_t ldc) {
  const std::int64_t block_stride = K4 * kPackedI8NR * 4;  // bytes per 16-channel block
  for (std::int64_t n0 = 0; n0 < N;) {
    const std::int8_t* B = Bp + (n0 / kPackedI8NR) * block_stride;
    const std::int64_t rest = N - n0;
    if (rest > 3 * kPackedI8NR && rest <= 4 * kPackedI8NR) {
      columns<4, 4>(A, koff, B, block_stride, M, K4, C + n0, ldc, rest);
      n0 = N;
    } else if (rest > 2 * kPackedI8NR) {
      columns<6, 3>(A, koff, B, block_stride, M, K4, C + n0, ldc, rest < 48 ? rest : 48);
      n0 += 3 * kPackedI8NR;
    } else if (rest > kPackedI8NR) {
      columns<6, 2>(A, koff, B, block_stride, M, K4, C + n0, ldc, rest);
      n0 = N;
    } else {
      columns<6, 1>(A, koff, B, block_stride, M, K4, C + n0, ldc, rest);
      n0 = N;
    }
  }
}

}  // namespace bitflow::avx512
