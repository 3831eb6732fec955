// Kernel self-test without Python (see CMakeLists.txt next to this file): every eligible
// kernel set and the per-op selection "auto" against the reference kernels, bit for bit, on
// random data at tile edges (K in bits {1, 31, 32, 33, 63, 64, 65, 255, 256, 257, 511, 512,
// 513}, every bit of the random words set at random, M and N around the 4x4 / 32-wide tiles,
// row strides larger than the rows), and the threaded drivers / prepared layers of each set
// against the reference set on one thread; with --replay DIR also a recorded model run
// (model_replay.cc). Prints "N passed, M failed"; exit status 1 on any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../../src/native/ops/parallel.h"
#include "bitflow/binary_layer.h"
#include "bitflow/cpu.h"
#include "bitflow/kernels.h"
#include "bitflow/ops.h"

namespace {

using bitflow::KernelSet;
using i64 = std::int64_t;

int g_passed = 0, g_failed = 0;
std::mt19937_64 g_rng(20261205);

void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    if (g_failed <= 30) std::printf("FAIL %s\n", what.c_str());
  }
}

const i64 kBits[] = {1, 31, 32, 33, 63, 64, 65, 255, 256, 257, 511, 512, 513};
const i64 kShapes[][2] = {{1, 1}, {3, 5}, {4, 4}, {5, 7}, {8, 9}, {13, 17}, {4, 33}, {7, 64}};

/// Rows of random words with every bit random; bits at or past k_bits in the last word are 0.
std::vector<std::uint64_t> random_rows(i64 rows, i64 ld, i64 k_bits) {
  const i64 kw = bitflow::words_for(k_bits);
  std::vector<std::uint64_t> v(static_cast<std::size_t>(rows * ld));
  for (auto& x : v) x = g_rng();
  const int tail = static_cast<int>(k_bits % 64);
  if (tail != 0)
    for (i64 r = 0; r < rows; ++r) v[r * ld + kw - 1] &= (std::uint64_t{1} << tail) - 1;
  return v;
}

template <class T>
bool same(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

std::string tag(const KernelSet& ks, const char* op, const std::string& rest) {
  return std::string(ks.name) + " " + op + " " + rest;
}

void test_bgemm(const KernelSet& ks) {
  for (i64 k : kBits)
    for (const auto& s : kShapes) {
      const i64 M = s[0], N = s[1], kw = bitflow::words_for(k), lda = kw + 1, ldb = kw + 2;
      const auto A = random_rows(M, lda, k), B = random_rows(N, ldb, k);
      for (int variant = 0; variant < 2; ++variant) {
        const std::int32_t mult = variant == 0 ? 1 : 4;
        const bool accumulate = variant == 1;
        const i64 ldc = N + 3;
        std::vector<std::int32_t> c0(static_cast<std::size_t>(M * ldc));
        for (auto& x : c0) x = static_cast<std::int32_t>(g_rng() % 2001) - 1000;
        auto c1 = c0;
        bitflow::ref::bgemm(A.data(), lda, B.data(), ldb, M, N, kw, static_cast<std::int32_t>(k), mult,
                            accumulate, c0.data(), ldc);
        ks.bgemm(A.data(), lda, B.data(), ldb, M, N, kw, static_cast<std::int32_t>(k), mult, accumulate,
                 c1.data(), ldc);
        check(same(c0, c1), tag(ks, ks.bgemm_name, "K=" + std::to_string(k) + " M=" + std::to_string(M) +
                                                  " N=" + std::to_string(N) + " variant " + std::to_string(variant)));
      }
      if (ks.bgemm_packed != nullptr) {
        const auto Bd = random_rows(N, kw, k);
        const auto bp = bitflow::ops::pack_bgemm_weights(Bd.data(), N, kw);
        std::vector<std::int32_t> c0(static_cast<std::size_t>(M * N)), c1(c0.size());
        bitflow::ref::bgemm_packed(A.data(), lda, bp.data(), M, N, kw, static_cast<std::int32_t>(k), c0.data(), N);
        ks.bgemm_packed(A.data(), lda, bp.data(), M, N, kw, static_cast<std::int32_t>(k), c1.data(), N);
        check(same(c0, c1), tag(ks, ks.bgemm_packed_name, "K=" + std::to_string(k) + " M=" + std::to_string(M)));
      }
    }
  // Long rows: the NEON kernel folds its uint16 lanes every 2048 word pairs.
  for (i64 k : {i64{64 * 4096 + 7}, i64{64 * 8193}}) {
    const i64 kw = bitflow::words_for(k);
    const auto A = random_rows(2, kw, k), B = random_rows(3, kw, k);
    std::vector<std::uint64_t> ones(static_cast<std::size_t>(kw), ~std::uint64_t{0});
    if (k % 64) ones.back() = (std::uint64_t{1} << (k % 64)) - 1;
    std::vector<std::uint64_t> zeros(static_cast<std::size_t>(kw), 0);
    std::vector<std::uint64_t> Ae(A);
    Ae.insert(Ae.end(), ones.begin(), ones.end());
    std::vector<std::uint64_t> Be(B);
    Be.insert(Be.end(), zeros.begin(), zeros.end());  // all-ones vs all-zeros: popcount = k
    std::vector<std::int32_t> c0(12), c1(12);
    bitflow::ref::bgemm(Ae.data(), kw, Be.data(), kw, 3, 4, kw, static_cast<std::int32_t>(k), 1, false, c0.data(), 4);
    ks.bgemm(Ae.data(), kw, Be.data(), kw, 3, 4, kw, static_cast<std::int32_t>(k), 1, false, c1.data(), 4);
    check(same(c0, c1) && c1[2 * 4 + 3] == -static_cast<std::int32_t>(k),
          tag(ks, ks.bgemm_name, "long K=" + std::to_string(k)));
  }
}

void test_igemm(const KernelSet& ks) {
  for (i64 K : {i64{1}, i64{3}, i64{4}, i64{15}, i64{16}, i64{17}, i64{31}, i64{32}, i64{33}, i64{64},
                i64{65}, i64{100}, i64{363}, i64{1200}})
    for (const auto& s : kShapes) {
      const i64 M = s[0], N = s[1], lda = K + 5, ldb = K + 2, ldc = N + 1;
      std::vector<std::uint8_t> A(static_cast<std::size_t>(M * lda));
      std::vector<std::int8_t> B(static_cast<std::size_t>(N * ldb));
      for (auto& x : A) x = static_cast<std::uint8_t>(g_rng());
      for (auto& x : B) x = static_cast<std::int8_t>(static_cast<std::uint8_t>(g_rng()));
      if (K >= 4) {  // the extremes
        A[0] = 255; A[1] = 0; B[0] = -128; B[1] = 127;
      }
      std::vector<std::int32_t> c0(static_cast<std::size_t>(M * ldc), 7), c1(c0);
      bitflow::ref::igemm_u8i8(A.data(), lda, B.data(), ldb, M, N, K, c0.data(), ldc);
      ks.igemm_u8i8(A.data(), lda, B.data(), ldb, M, N, K, c1.data(), ldc);
      check(same(c0, c1), tag(ks, ks.igemm_name, "K=" + std::to_string(K) + " M=" + std::to_string(M) +
                                                   " N=" + std::to_string(N)));
    }
}

void test_bitpack_threshold(const KernelSet& ks) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float specials[] = {0.0f, -0.0f, std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            -1e-45f, 1e-45f, -std::numeric_limits<float>::quiet_NaN()};
  for (i64 cols : kBits) {
    const i64 rows = 3;
    std::vector<float> x(static_cast<std::size_t>(rows * cols));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = (g_rng() % 5 == 0) ? specials[g_rng() % 8] : normal(g_rng);
    const i64 nw = bitflow::words_for(cols);
    std::vector<std::uint64_t> o0(static_cast<std::size_t>(rows * nw), 1), o1(o0.size(), 2);
    bitflow::ref::bitpack_f32(x.data(), rows, cols, o0.data());
    ks.bitpack_f32(x.data(), rows, cols, o1.data());
    check(same(o0, o1), tag(ks, ks.bitpack_name, "cols=" + std::to_string(cols)));

    std::vector<std::int32_t> acc(static_cast<std::size_t>(rows * cols)), lo(static_cast<std::size_t>(cols)),
        hi(static_cast<std::size_t>(cols));
    for (auto& a : acc) a = static_cast<std::int32_t>(g_rng() % 201) - 100;
    for (i64 c = 0; c < cols; ++c) {
      const std::int32_t t = static_cast<std::int32_t>(g_rng() % 201) - 100;
      const int kind = static_cast<int>(g_rng() % 3);
      lo[c] = kind == 0 ? t : (kind == 1 ? INT32_MIN : t - 5);
      hi[c] = kind == 0 ? INT32_MAX : (kind == 1 ? t : t + 5);
      if (c < rows * cols) acc[c] = t;  // equality with a bound in the first row
    }
    std::vector<std::uint64_t> t0(static_cast<std::size_t>(rows * nw), 1), t1(t0.size(), 2);
    bitflow::ref::threshold_bits_range(acc.data(), rows, cols, lo.data(), hi.data(), t0.data());
    ks.threshold_bits(acc.data(), rows, cols, lo.data(), hi.data(), t1.data());
    check(same(t0, t1), tag(ks, ks.threshold_name, "o=" + std::to_string(cols)));
  }
}

/// Threaded drivers and prepared layers of `ks` (threads 1, 2, 3, 64; normal and zero
/// grain) against the reference set on one thread.
void test_layers(const KernelSet& ks) {
  const KernelSet& ref = bitflow::kRefKernels;
  struct Case { i64 n, h, c, o, k, s, p; int pad_value; bool pool; };
  const Case cases[] = {{2, 7, 3, 5, 3, 1, 1, 0, true},   {1, 9, 64, 33, 3, 1, 1, 0, true},
                        {2, 8, 96, 40, 5, 2, 2, 0, false}, {1, 6, 130, 64, 3, 1, 0, 1, false},
                        {3, 5, 256, 70, 1, 1, 0, 0, false}, {1, 13, 200, 17, 3, 2, 1, 1, true}};
  for (const Case& t : cases) {
    bitflow::ops::ConvGeom g;
    g.o = t.o; g.kh = t.k; g.kw = t.k; g.c = t.c; g.sh = t.s; g.sw = t.s; g.ph = t.p; g.pw = t.p;
    const i64 cw = bitflow::words_for(t.c);
    const auto w = random_rows(t.o * t.k * t.k, cw, t.c);
    const auto x = random_rows(t.n * t.h * t.h, cw, t.c);
    std::vector<std::int32_t> thr(static_cast<std::size_t>(t.o));
    std::vector<std::int8_t> dir(static_cast<std::size_t>(t.o));
    const i64 span = t.k * t.k * t.c;
    for (i64 o = 0; o < t.o; ++o) {
      thr[o] = static_cast<std::int32_t>(static_cast<i64>(g_rng() % static_cast<std::uint64_t>(span + 1)) - span / 2);
      dir[o] = (g_rng() & 1) ? 1 : -1;
    }
    bitflow::ops::BinaryLayer::Pool pool;
    if (t.pool) { pool.on = true; pool.kh = pool.kw = 3; pool.sh = pool.sw = 2; }
    const bitflow::ops::BinaryLayer lr(ref, w.data(), g, t.pad_value, thr.data(), dir.data(), t.o, pool);
    const bitflow::ops::BinaryLayer lk(ks, w.data(), g, t.pad_value, thr.data(), dir.data(), t.o, pool);
    const bitflow::ops::BinaryLayer raw_r(ref, w.data(), g, t.pad_value, nullptr, nullptr, 0, {});
    const bitflow::ops::BinaryLayer raw_k(ks, w.data(), g, t.pad_value, nullptr, nullptr, 0, {});
    const auto [ho, wo] = lr.out_hw(t.h, t.h);
    const bitflow::ops::ConvGeom gg = raw_r.geom(t.n, t.h, t.h);
    std::vector<std::uint64_t> b0(static_cast<std::size_t>(t.n * ho * wo * bitflow::words_for(t.o)));
    std::vector<std::int32_t> a0(static_cast<std::size_t>(t.n * gg.ho() * gg.wo() * t.o));
    lr.run(1, x.data(), t.n, t.h, t.h, b0.data(), nullptr);
    raw_r.run(1, x.data(), t.n, t.h, t.h, nullptr, a0.data());
    for (double grain : {bitflow::ops::kGrainNs, 0.0}) {
      bitflow::ops::set_grain_ns(grain);
      for (int threads : {1, 2, 3, 64}) {
        std::vector<std::uint64_t> b1(b0.size(), 5);
        std::vector<std::int32_t> a1(a0.size(), 5);
        lk.run(threads, x.data(), t.n, t.h, t.h, b1.data(), nullptr);
        raw_k.run(threads, x.data(), t.n, t.h, t.h, nullptr, a1.data());
        const std::string what = "c=" + std::to_string(t.c) + " o=" + std::to_string(t.o) + " k=" + std::to_string(t.k) +
                                 " threads=" + std::to_string(threads) + " grain=" + std::to_string(grain);
        check(same(a0, a1), tag(ks, "bconv2d_prepared", what));
        check(same(b0, b1), tag(ks, "BinaryLayer(threshold, pool)", what));
      }
    }
    bitflow::ops::set_grain_ns(bitflow::ops::kGrainNs);
  }
  // The fixed-point first layer (uint8 x int8) with pool and threshold.
  bitflow::ops::ConvGeom g;
  g.o = 37; g.kh = g.kw = 5; g.c = 3; g.sh = g.sw = 2; g.ph = g.pw = 2;
  std::vector<std::int8_t> w(static_cast<std::size_t>(g.o * 75));
  for (auto& v : w) v = static_cast<std::int8_t>(static_cast<std::uint8_t>(g_rng()));
  const i64 n = 2, h = 23;
  std::vector<std::uint8_t> x(static_cast<std::size_t>(n * h * h * 3));
  for (auto& v : x) v = static_cast<std::uint8_t>(g_rng());
  std::vector<std::int32_t> thr(37);
  std::vector<std::int8_t> dir(37);
  for (int o = 0; o < 37; ++o) {
    thr[o] = static_cast<std::int32_t>(g_rng() % 40001) - 20000;
    dir[o] = (g_rng() & 1) ? 1 : -1;
  }
  bitflow::ops::BinaryLayer::Pool pool;
  pool.on = true; pool.kh = pool.kw = 3; pool.sh = pool.sw = 2;
  const bitflow::ops::BinaryLayer lr(ref, w.data(), g, thr.data(), dir.data(), 37, pool);
  const bitflow::ops::BinaryLayer lk(ks, w.data(), g, thr.data(), dir.data(), 37, pool);
  const auto [ho, wo] = lr.out_hw(h, h);
  std::vector<std::uint64_t> b0(static_cast<std::size_t>(n * ho * wo)), b1(b0.size());
  lr.run(1, x.data(), n, h, h, b0.data(), nullptr);
  for (int threads : {1, 3}) {
    lk.run(threads, x.data(), n, h, h, b1.data(), nullptr);
    check(same(b0, b1), tag(ks, "Int8 layer (threshold, pool)", "threads=" + std::to_string(threads)));
  }
}

}  // namespace

// model_replay.cc
void replay_model(const std::string& dir, const std::vector<const KernelSet*>& sets,
                  const std::function<void(bool, const std::string&)>& check);

int main(int argc, char** argv) {
  const bitflow::CpuFeatures& f = bitflow::cpu_features();
  std::printf("cpu: neon=%d dotprod=%d avx2=%d avx512f=%d avx512vpopcntdq=%d avx512vnni=%d\n", f.neon, f.dotprod,
              f.avx2, f.avx512f, f.avx512vpopcntdq, f.avx512vnni);
  std::vector<const KernelSet*> sets;
  for (const KernelSet* ks : bitflow::compiled_kernel_sets())
    std::printf("compiled: %s%s\n", ks->name, ks->supported(f) ? "" : " (not supported by this CPU: skipped)");
  for (const KernelSet* ks : bitflow::eligible_kernel_sets())
    if (ks != &bitflow::kRefKernels) sets.push_back(ks);
  sets.push_back(&bitflow::auto_kernel_set());
  const KernelSet& a = bitflow::auto_kernel_set();
  std::printf("auto: bgemm %s, bitpack %s, threshold %s, igemm %s, sgemm %s\n", a.bgemm_name, a.bitpack_name,
              a.threshold_name, a.igemm_name, a.sgemm_name);
  for (const KernelSet* ks : sets) {
    const int before = g_passed + g_failed;
    test_bgemm(*ks);
    test_igemm(*ks);
    test_bitpack_threshold(*ks);
    test_layers(*ks);
    std::printf("kernel set %s: %d checks\n", ks->name, g_passed + g_failed - before);
  }
  // --replay DIR: a model run recorded on another machine (dump_model.py)
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--replay") {
      std::vector<const KernelSet*> all = {&bitflow::kRefKernels};
      all.insert(all.end(), sets.begin(), sets.end());
      replay_model(argv[i + 1], all, check);
    }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
