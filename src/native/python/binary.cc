// Bit packing, binary GEMM / convolution, thresholds to bits and planes, bit pooling.
#include "common.h"

namespace bitflow::pyb {
namespace {

nb::object bitpack(const AnyArray& x, const std::string& kernels, int threads) {
  const char* fn = "bitpack";
  check_threads(fn, threads);
  const KernelSet& ks = kernels_arg(fn, kernels);
  if (x.ndim() < 1) fail(fn, "'x' must have at least 1 dimension");
  const bool is_f32 = x.dtype() == nb::dtype<float>();
  const bool is_i32 = x.dtype() == nb::dtype<std::int32_t>();
  if (!is_f32 && !is_i32)
    throw nb::type_error(("bitpack: 'x' must have dtype float32 or int32, got " + dtype_name(x.dtype())).c_str());
  std::vector<i64> shape;
  i64 cols = 0;
  if (is_f32) {
    auto in = arg<float>(x, fn, "x", -1);
    shape = in.shape;
    cols = in.dim(-1);
  } else {
    auto in = arg<std::int32_t>(x, fn, "x", -1);
    shape = in.shape;
    cols = in.dim(-1);
  }
  if (cols < 1) fail(fn, "the last axis (channels) must not be empty");
  const i64 rows = rows_of(shape);
  auto out = make_out<std::uint64_t>(with_last(shape, words_for(cols)));
  {
    nb::gil_scoped_release release;
    if (is_f32)
      bitflow::ops::bitpack_f32(ks, static_cast<const float*>(x.data()), rows, cols, out.ptr, threads);
    else
      bitflow::ops::bitpack_i32(static_cast<const std::int32_t*>(x.data()), rows, cols, out.ptr, threads);
  }
  return nb::cast(out.array);
}

nb::object bgemm_impl(const char* fn, const AnyArray& a_, const AnyArray& b_, i64 k_bits,
                      const std::string& kernels, int threads, bool planes) {
  check_threads(fn, threads);
  const KernelSet& ks = kernels_arg(fn, kernels);
  const int nd = planes ? 3 : 2;
  auto a = arg<std::uint64_t>(a_, fn, "a", nd);
  auto b = arg<std::uint64_t>(b_, fn, "b", nd);
  if (a.dim(-1) != b.dim(-1))
    fail(fn, "a and b must have the same number of words per row, got " + std::to_string(a.dim(-1)) +
                 " and " + std::to_string(b.dim(-1)));
  check_k_bits(fn, k_bits, a.dim(-1));
  const i64 pa = planes ? a.dim(0) : 1, pw = planes ? b.dim(0) : 1;
  check_planes_fit(fn, k_bits, pa, pw);
  const i64 M = a.dim(-2), N = b.dim(-2), Kw = a.dim(-1);
  auto out = make_out<std::int32_t>({M, N});
  {
    nb::gil_scoped_release release;
    bitflow::ops::bgemm_planes(ks, threads, a.data, pa, b.data, pw, M, N, Kw,
                               static_cast<std::int32_t>(k_bits), out.ptr);
  }
  return nb::cast(out.array);
}

nb::object bconv2d_impl(const char* fn, const AnyArray& x_, const AnyArray& w_, i64 channels,
                        nb::handle stride, nb::handle padding, int pad_value,
                        const std::string& kernels, int threads, bool planes) {
  check_threads(fn, threads);
  const KernelSet& ks = kernels_arg(fn, kernels);
  const int nd = planes ? 5 : 4;
  auto x = arg<std::uint64_t>(x_, fn, "x", nd);
  auto w = arg<std::uint64_t>(w_, fn, "w", nd);
  const int off = planes ? 1 : 0;
  const i64 cw = x.dim(-1);
  if (w.dim(-1) != cw)
    fail(fn, "x and w must have the same number of channel words, got " + std::to_string(cw) + " and " +
                 std::to_string(w.dim(-1)));
  if (channels < 1 || words_for(channels) != cw)
    fail(fn, "channels=" + std::to_string(channels) + " does not match " + std::to_string(cw) +
                 " channel words (need 64 * (words - 1) < channels <= 64 * words)");
  if (pad_value != 0 && pad_value != 1) fail(fn, "pad_value must be 0 (zero padding) or 1 (+1 padding)");
  const i64 pa = planes ? x.dim(0) : 1, pw = planes ? w.dim(0) : 1;
  auto g = conv_geom(fn, x.dim(off), x.dim(off + 1), x.dim(off + 2), channels, w.dim(off), w.dim(off + 1),
                     w.dim(off + 2), pair_arg(fn, "stride", stride), pair_arg(fn, "padding", padding));
  const i64 k_bits = g.kh * g.kw * channels;
  if (k_bits > INT32_MAX) fail(fn, "kh * kw * channels exceeds the int32 accumulator");
  check_planes_fit(fn, k_bits, pa, pw);
  auto out = make_out<std::int32_t>({g.n, g.ho(), g.wo(), g.o});
  {
    nb::gil_scoped_release release;
    bitflow::ops::bconv2d_planes(ks, threads, x.data, pa, w.data, pw, g, pad_value, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object threshold_bits(const AnyArray& acc_, const AnyArray& thr_, const AnyArray& dir_) {
  const char* fn = "threshold_bits";
  auto acc = arg<std::int32_t>(acc_, fn, "acc", -1);
  auto thr = arg<std::int32_t>(thr_, fn, "thr", 1);
  auto dir = arg<std::int8_t>(dir_, fn, "direction", 1);
  const i64 o = acc.dim(-1);
  if (o < 1) fail(fn, "the last axis (channels) of acc must not be empty");
  if (thr.dim(0) != o) fail(fn, "thr must have shape (" + std::to_string(o) + ",) to match the last axis of acc");
  check_direction(fn, dir, o);
  const i64 rows = rows_of(acc.shape);
  auto out = make_out<std::uint64_t>(with_last(acc.shape, words_for(o)));
  {
    nb::gil_scoped_release release;
    bitflow::ops::threshold_bits(acc.data, rows, o, thr.data, dir.data, out.ptr);
  }
  return nb::cast(out.array);
}

/// The shared checks and output of threshold_planes (T = int32) and threshold_f32_planes
/// (T = float): x [..., O], thr [O, L = 2^M - 1] sorted ascending, direction [O] ->
/// uint64 [M, ..., ceil(O/64)] from kernel(x, rows, o, thr, L, dir, planes, out).
template <class T, class Kernel>
nb::object planes_op(const char* fn, const char* xname, const AnyArray& x_, const AnyArray& thr_,
                     const AnyArray& dir_, Kernel kernel) {
  auto x = arg<T>(x_, fn, xname, -1);
  auto thr = arg<T>(thr_, fn, "thr", 2);
  auto dir = arg<std::int8_t>(dir_, fn, "direction", 1);
  const i64 o = x.dim(-1);
  if (o < 1) fail(fn, std::string("the last axis (channels) of ") + xname + " must not be empty");
  if (thr.dim(0) != o) fail(fn, "thr must have shape (O, L) with O = " + std::to_string(o));
  const i64 L = thr.dim(1);
  int planes = 0;
  while (planes < 31 && ((i64{1} << planes) - 1) < L) ++planes;
  if (L < 1 || ((i64{1} << planes) - 1) != L || planes > 16)
    fail(fn, "thr must have L = 2^M - 1 thresholds per channel (1 <= M <= 16), got L = " + std::to_string(L));
  check_direction(fn, dir, o);
  if constexpr (std::is_floating_point_v<T>) {
    for (i64 i = 0; i < o * L; ++i)
      if (std::isnan(thr.data[i])) fail(fn, "thresholds must not be NaN");
  }
  for (i64 c = 0; c < o; ++c)
    for (i64 l = 1; l < L; ++l)
      if (thr.data[c * L + l] < thr.data[c * L + l - 1])
        fail(fn, "thresholds must be sorted ascending per channel; channel " + std::to_string(c) + " is not");
  const i64 rows = rows_of(x.shape);
  std::vector<i64> shape = with_last(x.shape, words_for(o));
  shape.insert(shape.begin(), planes);
  auto out = make_out<std::uint64_t>(shape);
  {
    nb::gil_scoped_release release;
    kernel(x.data, rows, o, thr.data, L, dir.data, planes, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object threshold_planes(const AnyArray& acc_, const AnyArray& thr_, const AnyArray& dir_) {
  return planes_op<std::int32_t>("threshold_planes", "acc", acc_, thr_, dir_, bitflow::ops::threshold_planes);
}

nb::object threshold_f32_planes(const AnyArray& y_, const AnyArray& thr_, const AnyArray& dir_) {
  return planes_op<float>("threshold_f32_planes", "y", y_, thr_, dir_, bitflow::ops::threshold_f32_planes);
}

nb::object threshold_f32_bits(const AnyArray& y_, const AnyArray& thr_, const AnyArray& dir_) {
  const char* fn = "threshold_f32_bits";
  auto y = arg<float>(y_, fn, "y", -1);
  auto thr = arg<float>(thr_, fn, "thr", 1);
  auto dir = arg<std::int8_t>(dir_, fn, "direction", 1);
  const i64 o = y.dim(-1);
  if (o < 1) fail(fn, "the last axis (channels) of y must not be empty");
  if (thr.dim(0) != o) fail(fn, "thr must have shape (" + std::to_string(o) + ",) to match the last axis of y");
  check_direction(fn, dir, o);
  const i64 rows = rows_of(y.shape);
  auto out = make_out<std::uint64_t>(with_last(y.shape, words_for(o)));
  {
    nb::gil_scoped_release release;
    bitflow::ops::threshold_f32_bits(y.data, rows, o, thr.data, dir.data, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object scale_bias(const AnyArray& acc_, const AnyArray& scale_, const AnyArray& bias_) {
  const char* fn = "scale_bias";
  auto acc = arg<std::int32_t>(acc_, fn, "acc", -1);
  auto scale = arg<float>(scale_, fn, "scale", 1);
  auto bias = arg<float>(bias_, fn, "bias", 1);
  const i64 o = acc.dim(-1);
  if (scale.dim(0) != o || bias.dim(0) != o)
    fail(fn, "scale and bias must have shape (" + std::to_string(o) + ",) to match the last axis of acc");
  const i64 rows = rows_of(acc.shape);
  auto out = make_out<float>(acc.shape);
  {
    nb::gil_scoped_release release;
    bitflow::ops::scale_bias(acc.data, rows, o, scale.data, bias.data, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object maxpool_bits(const AnyArray& x_, nb::handle kernel, nb::handle stride, nb::handle padding,
                        const std::string& op) {
  const char* fn = "maxpool_bits";
  auto x = arg<std::uint64_t>(x_, fn, "x", 4);
  if (op != "and" && op != "or") fail(fn, "op must be 'and' (max of +-1 values) or 'or' (min), got '" + op + "'");
  auto g = pool_geom(fn, x.shape, kernel, stride, padding);
  auto out = make_out<std::uint64_t>({g.n, g.ho(), g.wo(), g.c});
  {
    nb::gil_scoped_release release;
    bitflow::ops::maxpool_bits(x.data, g, op == "and", out.ptr);
  }
  return nb::cast(out.array);
}

nb::object threshold_bits_range(const AnyArray& acc_, const AnyArray& lo_, const AnyArray& hi_,
                                const std::string& kernels) {
  const char* fn = "threshold_bits_range";
  const KernelSet& ks = kernels_arg(fn, kernels);
  auto acc = arg<std::int32_t>(acc_, fn, "acc", -1);
  auto lo = arg<std::int32_t>(lo_, fn, "lo", 1);
  auto hi = arg<std::int32_t>(hi_, fn, "hi", 1);
  const i64 o = acc.dim(-1);
  if (o < 1) fail(fn, "the last axis (channels) of acc must not be empty");
  if (lo.dim(0) != o || hi.dim(0) != o) fail(fn, "lo and hi must have shape (" + std::to_string(o) + ",)");
  const i64 rows = rows_of(acc.shape);
  auto out = make_out<std::uint64_t>(with_last(acc.shape, words_for(o)));
  {
    nb::gil_scoped_release release;
    ks.threshold_bits(acc.data, rows, o, lo.data, hi.data, out.ptr);
  }
  return nb::cast(out.array);
}

}  // namespace

void bind_binary(nb::module_& m) {
  m.def("bitpack", &bitpack, "x"_a, "kernels"_a = "", "threads"_a = 1,
        "Pack float32 or int32 [..., C] into uint64 [..., ceil(C/64)]: bit = (x < 0), LSB first, "
        "padding bits 0; NaN packs to 0 (+1).");

  m.def("bgemm", [](const AnyArray& a, const AnyArray& b, i64 k_bits, const std::string& kernels, int threads) {
    return bgemm_impl("bgemm", a, b, k_bits, kernels, threads, false);
  }, "a"_a, "b"_a, "k_bits"_a, "kernels"_a = "", "threads"_a = 1,
     "out[m, n] = k_bits - 2 popcount(a[m] ^ b[n]); a uint64 [M, Kw], b uint64 [N, Kw] -> int32 [M, N].");

  m.def("bgemm_planes", [](const AnyArray& a, const AnyArray& b, i64 k_bits, const std::string& kernels, int threads) {
    return bgemm_impl("bgemm_planes", a, b, k_bits, kernels, threads, true);
  }, "a"_a, "b"_a, "k_bits"_a, "kernels"_a = "", "threads"_a = 1,
     "out[m, n] = sum_i sum_j 2^(i+j) (k_bits - 2 popcount(a[i, m] ^ b[j, n])) (MBBN Eq. 8); "
     "a uint64 [Pa, M, Kw], b uint64 [Pw, N, Kw] -> int32 [M, N].");

  m.def("bconv2d", [](const AnyArray& x, const AnyArray& w, i64 channels, nb::handle stride, nb::handle padding,
                      int pad_value, const std::string& kernels, int threads) {
    return bconv2d_impl("bconv2d", x, w, channels, stride, padding, pad_value, kernels, threads, false);
  }, "x"_a, "w"_a, "channels"_a, "stride"_a = nb::make_tuple(1, 1), "padding"_a = nb::make_tuple(0, 0),
     "pad_value"_a = 0, "kernels"_a = "", "threads"_a = 1,
     "Binary convolution: x uint64 [N, H, W, Cw], w uint64 [O, kh, kw, Cw] -> int32 [N, Ho, Wo, O], "
     "equal to F.conv2d(sign(x), sign(w)) (pad_value=0: zero padding, corrected exactly; "
     "pad_value=1: padded taps are +1).");

  m.def("bconv2d_planes", [](const AnyArray& x, const AnyArray& w, i64 channels, nb::handle stride,
                             nb::handle padding, int pad_value, const std::string& kernels, int threads) {
    return bconv2d_impl("bconv2d_planes", x, w, channels, stride, padding, pad_value, kernels, threads, true);
  }, "x"_a, "w"_a, "channels"_a, "stride"_a = nb::make_tuple(1, 1), "padding"_a = nb::make_tuple(0, 0),
     "pad_value"_a = 0, "kernels"_a = "", "threads"_a = 1,
     "Plane convolution: x uint64 [Pa, N, H, W, Cw], w uint64 [Pw, O, kh, kw, Cw] -> int32 [N, Ho, Wo, O] "
     "= sum_{i,j} 2^(i+j) bconv2d(x[i], w[j]).");

  m.def("threshold_bits", &threshold_bits, "acc"_a, "thr"_a, "direction"_a,
        "int32 [..., O] -> uint64 [..., ceil(O/64)]: +1 (bit 0) iff acc >= thr (direction +1) or "
        "acc <= thr (direction -1).");
  m.def("threshold_planes", &threshold_planes, "acc"_a, "thr"_a, "direction"_a,
        "int32 [..., O], thr int32 [O, L = 2^M - 1] sorted ascending -> uint64 [M, ..., ceil(O/64)]; "
        "q = #{l: acc >= thr[l]} (dir +1) or #{l: acc <= thr[l]} (dir -1), plane m bit = 1 - bit m of q, "
        "so sum_m 2^m c_m = 2q - L.");
  m.def("threshold_f32_planes", &threshold_f32_planes, "y"_a, "thr"_a, "direction"_a,
        "float32 [..., O], thr float32 [O, L = 2^M - 1] sorted ascending -> uint64 [M, ..., ceil(O/64)]; "
        "q = #{l: not y < thr[l]} (dir +1) or #{l: not y > thr[l]} (dir -1) (NaN passes every threshold), "
        "plane m bit = 1 - bit m of q.");
  m.def("threshold_f32_bits", &threshold_f32_bits, "y"_a, "thr"_a, "direction"_a,
        "float32 [..., O] -> uint64 [..., ceil(O/64)]: +1 iff y >= thr (dir +1) or y <= thr (dir -1); "
        "NaN gives +1 (bit 0), like bitpack.");
  m.def("scale_bias", &scale_bias, "acc"_a, "scale"_a, "bias"_a,
        "float32 y = float(acc) * scale + bias, two float32 roundings (no FMA contraction).");

  m.def("maxpool_bits", &maxpool_bits, "x"_a, "kernel"_a, "stride"_a = nb::none(), "padding"_a = 0, "op"_a = "and",
        "Max-pool packed bits uint64 [N, H, W, Cw]: op 'and' = max of +-1 values (bit 1 = -1), "
        "'or' = min; padded positions are ignored; stride defaults to kernel.");

  m.def("threshold_bits_range", &threshold_bits_range, "acc"_a, "lo"_a, "hi"_a, "kernels"_a = "",
        "int32 [..., O] -> uint64 [..., ceil(O/64)]: bit 1 (-1) iff acc < lo or acc > hi (per channel); "
        "the kernel set's fused threshold (direction +1: [T, INT32_MAX], -1: [INT32_MIN, T]).");

}

}  // namespace bitflow::pyb
