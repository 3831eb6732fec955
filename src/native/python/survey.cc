// Ops of the survey's methods (issue 12): RPReLU, the +-1-weight float conv, k-bit unsigned
// levels and per-(position, channel) thresholds (bitflow/survey.h).
#include "bitflow/survey.h"

#include "common.h"

namespace bitflow::pyb {
namespace {

nb::object conv2d_f32b1(const AnyArray& x_, const AnyArray& w_, std::int64_t channels, nb::handle stride,
                        nb::handle padding, int threads) {
  const char* fn = "conv2d_f32b1";
  check_threads(fn, threads);
  auto x = arg<float>(x_, fn, "x", 4);
  auto w = arg<std::uint64_t>(w_, fn, "w", 4);
  if (channels != x.dim(3))
    fail(fn, "channels = " + std::to_string(channels) + " but x has " + std::to_string(x.dim(3)) + " (NHWC input)");
  if (w.dim(3) != (channels + 63) / 64)
    fail(fn, "w must have shape (O, kh, kw, ceil(C/64)) with C = " + std::to_string(channels));
  auto g = conv_geom(fn, x.dim(0), x.dim(1), x.dim(2), x.dim(3), w.dim(0), w.dim(1), w.dim(2),
                     pair_arg(fn, "stride", stride), pair_arg(fn, "padding", padding));
  auto out = make_out<float>({g.n, g.ho(), g.wo(), g.o});
  {
    nb::gil_scoped_release release;
    bitflow::ops::conv2d_f32b1(x.data, w.data, g, out.ptr, threads);
  }
  return nb::cast(out.array);
}

nb::object rprelu_f32(const AnyArray& x_, const AnyArray& gamma_, const AnyArray& slope_, const AnyArray& zeta_,
                      int threads) {
  const char* fn = "rprelu_f32";
  check_threads(fn, threads);
  auto x = arg<float>(x_, fn, "x", -1);
  auto gamma = arg<float>(gamma_, fn, "gamma", 1);
  auto slope = arg<float>(slope_, fn, "slope", 1);
  auto zeta = arg<float>(zeta_, fn, "zeta", 1);
  const i64 c = x.dim(-1);
  if (gamma.dim(0) != c || slope.dim(0) != c || zeta.dim(0) != c)
    fail(fn, "gamma, slope and zeta must have shape (" + std::to_string(c) + ",) to match the last axis of x");
  auto out = make_out<float>(x.shape);
  {
    nb::gil_scoped_release release;
    bitflow::ops::rprelu_f32(x.data, rows_of(x.shape), c, gamma.data, slope.data, zeta.data, out.ptr, threads);
  }
  return nb::cast(out.array);
}

/// threshold_u8 (T = int32) / threshold_f32_u8 (T = float): x [..., O], thr [O, L] (1 <= L <= 255),
/// direction [O] -> uint8 [..., O] levels (count of thresholds passed).
template <class T, class Kernel>
nb::object levels_op(const char* fn, const AnyArray& x_, const AnyArray& thr_, const AnyArray& dir_, int threads,
                     Kernel kernel) {
  check_threads(fn, threads);
  auto x = arg<T>(x_, fn, "x", -1);
  auto thr = arg<T>(thr_, fn, "thr", 2);
  auto dir = arg<std::int8_t>(dir_, fn, "direction", 1);
  const i64 o = x.dim(-1);
  if (thr.dim(0) != o) fail(fn, "thr must have shape (O, L) with O = " + std::to_string(o));
  const i64 L = thr.dim(1);
  if (L < 1 || L > 255) fail(fn, "thr must have 1 <= L <= 255 thresholds per channel, got " + std::to_string(L));
  check_direction(fn, dir, o);
  auto out = make_out<std::uint8_t>(x.shape);
  {
    nb::gil_scoped_release release;
    kernel(x.data, rows_of(x.shape), o, thr.data, L, dir.data, out.ptr, threads);
  }
  return nb::cast(out.array);
}

nb::object threshold_u8(const AnyArray& x_, const AnyArray& thr_, const AnyArray& dir_, int threads) {
  return levels_op<std::int32_t>("threshold_u8", x_, thr_, dir_, threads, bitflow::ops::threshold_u8);
}

nb::object threshold_f32_u8(const AnyArray& x_, const AnyArray& thr_, const AnyArray& dir_, int threads) {
  return levels_op<float>("threshold_f32_u8", x_, thr_, dir_, threads, bitflow::ops::threshold_f32_u8);
}

nb::object threshold_bits_hw(const AnyArray& x_, const AnyArray& thr_, const AnyArray& dir_, int threads) {
  const char* fn = "threshold_bits_hw";
  check_threads(fn, threads);
  auto x = arg<std::int32_t>(x_, fn, "x", 4);
  auto thr = arg<std::int32_t>(thr_, fn, "thr", 3);
  auto dir = arg<std::int8_t>(dir_, fn, "direction", 3);
  const i64 h = x.dim(1), w = x.dim(2), o = x.dim(3);
  if (thr.dim(0) != h || thr.dim(1) != w || thr.dim(2) != o || dir.dim(0) != h || dir.dim(1) != w || dir.dim(2) != o)
    fail(fn, "thr and direction must have shape (H, W, O) = (" + std::to_string(h) + ", " + std::to_string(w) + ", " +
                 std::to_string(o) + ") to match x [N, H, W, O]");
  for (i64 i = 0; i < h * w * o; ++i)
    if (dir.data[i] != 1 && dir.data[i] != -1) fail(fn, "direction entries must be +1 or -1");
  auto out = make_out<std::uint64_t>({x.dim(0), h, w, words_for(o)});
  {
    nb::gil_scoped_release release;
    bitflow::ops::threshold_bits_hw(x.data, x.dim(0), h * w, o, thr.data, dir.data, out.ptr, threads);
  }
  return nb::cast(out.array);
}

nb::object scale_hw(const AnyArray& x_, const AnyArray& s_, int threads) {
  const char* fn = "scale_hw";
  check_threads(fn, threads);
  auto x = arg<std::int32_t>(x_, fn, "x", 4);
  auto s = arg<float>(s_, fn, "scale", 3);
  const i64 h = x.dim(1), w = x.dim(2), o = x.dim(3);
  if (s.dim(0) != h || s.dim(1) != w || s.dim(2) != o)
    fail(fn, "scale must have shape (H, W, O) = (" + std::to_string(h) + ", " + std::to_string(w) + ", " +
                 std::to_string(o) + ") to match x [N, H, W, O]");
  auto out = make_out<float>(x.shape);
  {
    nb::gil_scoped_release release;
    bitflow::ops::scale_hw(x.data, x.dim(0), h * w * o, s.data, out.ptr, threads);
  }
  return nb::cast(out.array);
}

}  // namespace

void bind_survey(nb::module_& m) {
  m.def("conv2d_f32b1", &conv2d_f32b1, "x"_a, "w"_a, "channels"_a, "stride"_a = nb::make_tuple(1, 1),
        "padding"_a = nb::make_tuple(0, 0), "threads"_a = 1,
        "W1/A32 conv: x float32 [N, H, W, C], w packed +-1 bits uint64 [O, kh, kw, ceil(C/64)] (bit 1 = -1), "
        "zero padding -> float32 [N, Ho, Wo, O]; each output summed in float32 in the order (ky, kx, c).");
  m.def("rprelu_f32", &rprelu_f32, "x"_a, "gamma"_a, "slope"_a, "zeta"_a, "threads"_a = 1,
        "float32 [..., C] -> ReActNet RPReLU: t = x - gamma; (t > 0 ? t : slope * t) + zeta (float32 steps).");
  m.def("threshold_bits_hw", &threshold_bits_hw, "x"_a, "thr"_a, "direction"_a, "threads"_a = 1,
        "int32 [N, H, W, O] -> bits [N, H, W, ceil(O/64)]: one threshold per (position, channel), bit 1 iff "
        "x < thr (direction +1) or x > thr (-1).");
  m.def("scale_hw", &scale_hw, "x"_a, "scale"_a, "threads"_a = 1,
        "int32 [N, H, W, O] -> float32 x * scale[h, w, o] (one rounding; XNOR-Net++'s per-position scale).");
  m.def("threshold_u8", &threshold_u8, "x"_a, "thr"_a, "direction"_a, "threads"_a = 1,
        "int32 [..., O] -> uint8 levels: #{l : x >= thr[c, l]} (direction +1) or #{l : x <= thr[c, l]} (-1).");
  m.def("threshold_f32_u8", &threshold_f32_u8, "x"_a, "thr"_a, "direction"_a, "threads"_a = 1,
        "float32 [..., O] -> uint8 levels, as threshold_u8 (a NaN passes every threshold).");

}

}  // namespace bitflow::pyb
