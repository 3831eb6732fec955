// The ops of the bit engine: ISA-independent drivers (blocking, threading, im2col, padding
// corrections) around the inner kernels of a KernelSet, plus the output transforms and
// pools. Shapes are validated by the caller (python/*.cc); these functions assume
// consistent sizes and C-contiguous buffers.
//
// Threads: work is split over blocks of output rows and columns (fork-join on a persistent
// helper-thread pool, ops/parallel.h); every output element is computed by exactly one thread
// with the same instruction sequence, so results are identical for any thread count
// (floats included). Blocking: an A block of about 128 KiB of rows stays in L2 while 4-row
// B tiles stream through L1; convolutions build each A block (im2col) right before using it.
//
// Float tolerance. conv2d_f32 / dense_f32 sum K products in float32 in a kernel-specific
// order (ref: sequential, no FMA; avx2/avx512: 8/16 lane partial sums with FMA, then a
// fixed tree; avx512 convolutions with a spatial kernel: sequential FMA per output through
// the packed-weight kernel sgemm_4x48__avx512fma). Every order satisfies |y - y_exact| <= gamma_K sum_k |a_k b_k| with
// gamma_K = K u / (1 - K u), u = 2^-24 (Higham, Accuracy and Stability, Eq. 3.5), plus one
// rounding of the bias addition. The tests check, for every kernel set against a float64
// oracle, |y - y_exact| <= 2 K u sum_k |a_k b_k| + 2 u |y_exact|; two kernel sets therefore
// agree within twice that bound.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "bitflow/kernels.h"

namespace bitflow::ops {

/// Convolution geometry (NHWC input, [O, kh, kw, C] weights, PyTorch cross-correlation,
/// dilation 1, groups 1, floor mode). C counts real channels.
struct ConvGeom {
  std::int64_t n = 0, h = 0, w = 0, c = 0;  // input
  std::int64_t o = 0, kh = 0, kw = 0;       // filters
  std::int64_t sh = 1, sw = 1, ph = 0, pw = 0;
  std::int64_t ho() const { return conv_out_size(h, kh, sh, ph); }
  std::int64_t wo() const { return conv_out_size(w, kw, sw, pw); }
};

// ---- bit packing (bit = value < 0; NaN -> 0) -------------------------------------------
void bitpack_f32(const KernelSet& ks, const float* x, std::int64_t rows, std::int64_t cols,
                 std::uint64_t* out, int threads);
void bitpack_i32(const std::int32_t* x, std::int64_t rows, std::int64_t cols,
                 std::uint64_t* out, int threads);

// ---- binary GEMM / conv ------------------------------------------------------------------
/// out[m, n] = k_bits - 2 popcount(a[m] ^ b[n]); a [M, Kw], b [N, Kw].
void bgemm(const KernelSet& ks, int threads, const std::uint64_t* a, const std::uint64_t* b,
           std::int64_t M, std::int64_t N, std::int64_t Kw, std::int32_t k_bits,
           std::int32_t* out);

/// out[m, n] = sum_{i<Pa} sum_{j<Pw} 2^(i+j) (k_bits - 2 popcount(a_i[m] ^ b_j[n]))
/// (MBBN Eq. 8 without scales); a [Pa, M, Kw], b [Pw, N, Kw]. Every term uses ks.bgemm.
void bgemm_planes(const KernelSet& ks, int threads, const std::uint64_t* a, std::int64_t pa,
                  const std::uint64_t* b, std::int64_t pw, std::int64_t M, std::int64_t N,
                  std::int64_t Kw, std::int32_t k_bits, std::int32_t* out);

/// Binary convolution over planes: x [Pa, N, H, W, Cw], w [Pw, O, kh, kw, Cw],
/// out int32 [N, Ho, Wo, O] = sum_{i,j} 2^(i+j) conv(x_i, w_j) in +-1 arithmetic.
/// pad_value = 1: padded taps are +1 in every plane. pad_value = 0: padded taps are the real
/// value 0; they are packed as +1 and corrected by
///   sum_{padded taps t} (2^Pa - 1) sum_j 2^j (C - 2 popcount(w_j[o, t])),
/// which is what +1 taps added (each plane i contributes 2^i times the +1 tap's dot).
/// Method: im2col on packed words (a row gathers the kh*kw taps, padded taps are zero bits),
/// then the bgemm kernel against the weight rows with k_bits = kh*kw*C. When C is a multiple
/// of 64 the taps are concatenated word-wise (kh*kw*Cw words per row); otherwise they are
/// concatenated bit-densely (tap t at bits [t*C, (t+1)*C), words_for(kh*kw*C) words per
/// row, weights re-laid the same way), which skips the padding bits of every tap. Both are
/// exact because padding bits are 0 in both operands. 1x1 / stride 1 / no padding uses the
/// activations in place.
void bconv2d_planes(const KernelSet& ks, int threads, const std::uint64_t* x, std::int64_t pa,
                    const std::uint64_t* w, std::int64_t pw, const ConvGeom& g, int pad_value,
                    std::int32_t* out);

/// The weights of a binary convolution laid out once for the GEMM (bit-dense rows when that
/// saves words, see bconv2d_planes) with the +1-tap dots of the zero-padding correction,
/// tv[t * O + o] = sum_j 2^j (C - 2 popcount(w_j[o, t])). Preparing once per model instead
/// of once per call is what the engine's prepared layers do; the result is identical.
struct PreparedBconv {
  std::int64_t o = 0, kh = 0, kw = 0, c = 0, pw = 1;
  std::int64_t Kr = 0;                // words per weight row
  bool dense = false;                 // bit-dense tap concatenation
  // Paired last words (prepare_bconv with allow_pairs): a pixel's last word holds r = C -
  // 64 (Cw - 1) <= 32 bits, and taps j, j + 1 of a kernel row share one word: row i is
  // [the whole words of taps 0..kw-1] then, for even j, last(j) | last(j + 1) << r (last(j)
  // alone for an odd kw's last tap). The convolution reads it in place from a copy of the
  // input with that pair word per pixel (no im2col). Only for pw = 1 and sets with
  // bgemm_gather and bgemm_packed; a call then needs one activation plane.
  bool pairs = false;
  std::vector<std::uint64_t> rows;    // [pw, O, Kr]
  std::vector<std::int32_t> tv;       // [kh * kw, O]
  // rows re-packed for ks.bgemm_packed (pw = 1 and the set has one; else empty):
  // [ceil(O / kPackedNR), Kr, kPackedNR], see pack_bgemm_weights.
  std::vector<std::uint64_t> packed;
};
/// B rows [N, Kw] -> the packed layout of BgemmPackedFn: out[(nb * Kw + k) * 32 + r] =
/// B[nb * 32 + r][k], zero for rows >= N; out has words_for-style size ceil(N/32) * Kw * 32.
std::vector<std::uint64_t> pack_bgemm_weights(const std::uint64_t* B, std::int64_t N, std::int64_t Kw);
/// Lay out w [Pw, O, kh, kw, Cw] (the filter fields o, kh, kw, c of g are used).
PreparedBconv prepare_bconv(const KernelSet& ks, const std::uint64_t* w, std::int64_t pw,
                            const ConvGeom& g, bool allow_pairs = false);
/// An output epilogue of the convolution drivers: called with [m0, m1) once the int32 rows
/// m0..m1-1 (all O channels, padding correction included) are final, on the thread that
/// finished them, while they are still in its cache (the fused threshold of the prepared
/// layers). Every row is passed exactly once; calls may run concurrently on disjoint rows.
using RowsEpilogue = std::function<void(std::int64_t m0, std::int64_t m1)>;

/// bconv2d_planes with prepared weights (same result, bit for bit), optional epilogue. With one
/// activation plane, whole-word taps (not bit-dense), a spatial kernel and a set with
/// bgemm_gather, the rows are not built: the kernel reads them in place from a copy of the
/// input with a border of zero words (the +1 taps the padding correction removes).
void bconv2d_prepared(const KernelSet& ks, int threads, const std::uint64_t* x, std::int64_t pa,
                      const PreparedBconv& prep, const ConvGeom& g, int pad_value,
                      std::int32_t* out, const RowsEpilogue* epilogue = nullptr);

// ---- input preparation -----------------------------------------------------------------
/// A fixed-point first layer's input: x float32 [n, c, h, w] (NCHW, values in [0, 1]) ->
/// out uint8 [n, h, w, c] = clip(rint(fl32(x * 255)), 0, 255), rint rounding half to even
/// (the same float32 operations as the reference executor's numpy preprocessing). Rows are
/// split over threads. Returns false (out then unspecified) if some x * 255 is not finite.
/// wide: a 3-channel image may take the AVX-512 rows (when built and the CPU has AVX-512 BW
/// and VL; the same bytes).
bool quantize_u8_nhwc(const float* x, std::int64_t n, std::int64_t c, std::int64_t h,
                      std::int64_t w, std::uint8_t* out, int threads, bool wide = false);
/// A float first layer's input: x float32 [n, c, h, w] -> out float32 [n, h, w, c], the same
/// values (a layout copy); rows over threads. Returns false if some x is NaN or infinite.
bool nhwc_f32(const float* x, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w,
              float* out, int threads);

// ---- output transforms (rows = product of leading dims, o = channels) ------------------
/// bit 1 (-1) iff acc < thr (dir +1) or acc > thr (dir -1); out [rows, words_for(o)].
void threshold_bits(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                    const std::int32_t* thr, const std::int8_t* dir, std::uint64_t* out);
/// q = #{l : acc >= thr[o, l]} (dir +1) or #{l : acc <= thr[o, l]} (dir -1), L thresholds,
/// plane m (m < planes) bit = 1 - ((q >> m) & 1); out [planes, rows, words_for(o)].
void threshold_planes(const std::int32_t* acc, std::int64_t rows, std::int64_t o,
                      const std::int32_t* thr, std::int64_t L, const std::int8_t* dir,
                      int planes, std::uint64_t* out);
/// Float32 form of threshold_planes (a float first layer -> M bit planes):
/// q = #{l : !(y < thr[o, l])} (dir +1) or #{l : !(y > thr[o, l])} (dir -1), so a NaN passes
/// every threshold (like threshold_f32_bits, where NaN gives +1); out [planes, rows, words_for(o)].
void threshold_f32_planes(const float* y, std::int64_t rows, std::int64_t o, const float* thr,
                          std::int64_t L, const std::int8_t* dir, int planes, std::uint64_t* out);
/// bit 1 (-1) iff y < thr (dir +1) or y > thr (dir -1); NaN never satisfies either (+1).
void threshold_f32_bits(const float* y, std::int64_t rows, std::int64_t o, const float* thr,
                        const std::int8_t* dir, std::uint64_t* out);
/// y = float(acc) * scale + bias, rounded twice in float32 (never an FMA).
void scale_bias(const std::int32_t* acc, std::int64_t rows, std::int64_t o, const float* scale,
                const float* bias, float* out);

// ---- pooling (PyTorch max-pool semantics: padding ignored, floor mode) ------------------
/// Pool geometry: input [n, h, w, c]; for maxpool_bits c is the word count.
struct PoolGeom {
  std::int64_t n = 0, h = 0, w = 0, c = 0;
  std::int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
  std::int64_t ho() const { return conv_out_size(h, kh, sh, ph); }
  std::int64_t wo() const { return conv_out_size(w, kw, sw, pw); }
};
/// and_op: AND of the words in each window (max of +-1 values), else OR (min).
/// Output rows ((n, oh) pairs) are split over up to `threads` threads by work size.
void maxpool_bits(const std::uint64_t* x, const PoolGeom& g, bool and_op, std::uint64_t* out,
                  int threads = 1);
/// maxpool_bits for output rows [r0, r1) only (a row is one (n, oh) pair), one thread.
void maxpool_bits_rows(const std::uint64_t* x, const PoolGeom& g, bool and_op,
                       std::uint64_t* out, std::int64_t r0, std::int64_t r1);
void maxpool_i32(const std::int32_t* x, const PoolGeom& g, std::int32_t* out, int threads = 1);
/// NaN propagates (as torch.nn.functional.max_pool2d).
void maxpool_f32(const float* x, const PoolGeom& g, float* out, int threads = 1);

// ---- first / last layers -----------------------------------------------------------------
/// epilogue (optional): called on every finished block of output rows [m0, m1) (rows of
/// [n * Ho * Wo, O]) by the thread that computed it, e.g. an in-place FloatStream.
void conv2d_f32(const KernelSet& ks, int threads, const float* x, const float* w,
                const float* bias, const ConvGeom& g, float* out,
                const RowsEpilogue* epilogue = nullptr);
/// The weights of a float convolution laid out once (the engine's prepared float layers):
/// w [O, kh, kw, C] kept as rows and, when the set has a packed float GEMM, packed for it
/// (what conv2d_f32 otherwise does on every call). filt gives o, kh, kw, c, stride, padding.
struct PreparedConvF32 {
  ConvGeom filt;
  std::vector<float> w, bias, packed;  // bias empty: none
};
PreparedConvF32 prepare_conv_f32(const KernelSet& ks, const float* w, const float* bias,
                                 const ConvGeom& filt);
/// conv2d_f32 with prepared weights (the same values, bit for bit: the same kernels on the
/// same packed layout); g: the call's geometry (filter fields as prep.filt).
void conv2d_f32_prepared(const KernelSet& ks, int threads, const float* x,
                         const PreparedConvF32& prep, const ConvGeom& g, float* out,
                         const RowsEpilogue* epilogue = nullptr);
void dense_f32(const KernelSet& ks, int threads, const float* x, const float* w,
               const float* bias, std::int64_t n, std::int64_t k, std::int64_t o, float* out);
void conv2d_u8i8(const KernelSet& ks, int threads, const std::uint8_t* x, const std::int8_t* w,
                 const ConvGeom& g, std::int32_t* out);
/// +-1 weights as packed bits [O, kh, kw, ceil(C/64)] (bit 1 = -1) over uint8 activations,
/// exact int32 (ops/u8b1_conv.cc; MCN W1/A8). unpack_pm1_weights: bits -> +-1 int8 rows [rows, C].
std::vector<std::int8_t> unpack_pm1_weights(const std::uint64_t* w, std::int64_t rows, std::int64_t c);
void conv2d_u8b1(const KernelSet& ks, int threads, const std::uint8_t* x, const std::uint64_t* w,
                 const ConvGeom& g, std::int32_t* out);

/// The weights of a fixed-point convolution prepared once: for ks.igemm_gather when the set
/// has one and the padding it needs costs at most a quarter more products (each kernel row's
/// kw * C weights padded with zeros to Q = ceil(kw * C / 4) groups of 4 bytes, so that a group
/// never straddles two kernel rows and the convolution reads its rows in place: no im2col),
/// else packed for ks.igemm_packed when the set has one (K padded to K4 * 4 bytes with zeros,
/// which add nothing), else for ks.igemm_packed16 (int16 pairs, K padded to K2 * 2), else
/// kept as rows.
struct PreparedU8Conv {
  std::int64_t o = 0, kh = 0, kw = 0, c = 0, K = 0, K4 = 0, K2 = 0;
  std::int64_t Q = 0;                  // groups of 4 bytes per kernel row (gather form)
  std::vector<std::int8_t> rows;       // [O, K] (original layout)
  std::vector<std::int8_t> gather;     // [ceil(O / 16), kh * Q, 16, 4] or empty
  std::vector<std::int8_t> packed;     // [ceil(O / 16), K4, 16, 4] or empty
  std::vector<std::int16_t> packed16;  // [ceil(O / 16), K2, 16, 2] or empty
};
/// B rows [N, K] -> the packed layout of SgemmPackedFn (zero-padded in N).
std::vector<float> pack_sgemm_weights(const float* B, std::int64_t N, std::int64_t K);
/// B rows [N, K] -> the packed layout of IgemmPackedFn (zero-padded in N and K).
std::vector<std::int8_t> pack_igemm_weights(const std::int8_t* B, std::int64_t N, std::int64_t K);
/// B rows [N, K] -> the packed int16 layout of IgemmPacked16Fn (zero-padded in N and K).
std::vector<std::int16_t> pack_igemm16_weights(const std::int8_t* B, std::int64_t N, std::int64_t K);
PreparedU8Conv prepare_u8i8(const KernelSet& ks, const std::int8_t* w, const ConvGeom& g);
/// conv2d_u8i8 with prepared weights (same exact result), optional epilogue (see above).
void conv2d_u8i8_prepared(const KernelSet& ks, int threads, const std::uint8_t* x,
                          const PreparedU8Conv& prep, const ConvGeom& g, std::int32_t* out,
                          const RowsEpilogue* epilogue = nullptr);

}  // namespace bitflow::ops
