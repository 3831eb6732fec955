// Float and fixed-point ops: input preparation, first and last layers, integer and float pooling.
#include "common.h"

namespace bitflow::pyb {
namespace {

nb::object quantize_u8_nhwc(const AnyArray& x, int threads, const std::string& kernels) {
  const char* fn = "quantize_u8_nhwc";
  check_threads(fn, threads);
  // the AVX-512 rows go with an AVX-512 set (like the float stream's): same bytes either way
  const bool wide = std::string(kernels_arg(fn, kernels).bitpack_name).find("avx512") != std::string::npos;
  auto in = arg<float>(x, fn, "x", 4);
  const i64 n = in.dim(0), c = in.dim(1), h = in.dim(2), w = in.dim(3);
  auto out = make_out<std::uint8_t>({n, h, w, c});
  bool finite = true;
  {
    nb::gil_scoped_release release;
    finite = bitflow::ops::quantize_u8_nhwc(in.data, n, c, h, w, out.ptr, threads, wide);
  }
  if (!finite) fail(fn, "input contains NaN or infinity");
  return nb::cast(out.array);
}

nb::object nhwc_f32(const AnyArray& x, int threads) {
  const char* fn = "nhwc_f32";
  check_threads(fn, threads);
  auto in = arg<float>(x, fn, "x", 4);
  const i64 n = in.dim(0), c = in.dim(1), h = in.dim(2), w = in.dim(3);
  auto out = make_out<float>({n, h, w, c});
  bool finite = true;
  {
    nb::gil_scoped_release release;
    finite = bitflow::ops::nhwc_f32(in.data, n, c, h, w, out.ptr, threads);
  }
  if (!finite) fail(fn, "input contains NaN or infinity");
  return nb::cast(out.array);
}

template <class T>
nb::object maxpool_typed(const char* fn, const AnyArray& x_, nb::handle kernel, nb::handle stride,
                         nb::handle padding) {
  auto x = arg<T>(x_, fn, "x", 4);
  auto g = pool_geom(fn, x.shape, kernel, stride, padding);
  auto out = make_out<T>({g.n, g.ho(), g.wo(), g.c});
  {
    nb::gil_scoped_release release;
    if constexpr (std::is_same_v<T, float>)
      bitflow::ops::maxpool_f32(x.data, g, out.ptr);
    else
      bitflow::ops::maxpool_i32(x.data, g, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object conv2d_f32(const AnyArray& x_, const AnyArray& w_, std::optional<AnyArray> bias_, nb::handle stride,
                      nb::handle padding, const std::string& kernels, int threads) {
  const char* fn = "conv2d_f32";
  check_threads(fn, threads);
  const KernelSet& ks = kernels_arg(fn, kernels);
  auto x = arg<float>(x_, fn, "x", 4);
  auto w = arg<float>(w_, fn, "w", 4);
  if (w.dim(3) != x.dim(3))
    fail(fn, "w must have shape (O, kh, kw, C) with C = " + std::to_string(x.dim(3)) + " (NHWC input)");
  const float* bias = optional_bias(fn, bias_, w.dim(0));
  auto g = conv_geom(fn, x.dim(0), x.dim(1), x.dim(2), x.dim(3), w.dim(0), w.dim(1), w.dim(2),
                     pair_arg(fn, "stride", stride), pair_arg(fn, "padding", padding));
  auto out = make_out<float>({g.n, g.ho(), g.wo(), g.o});
  {
    nb::gil_scoped_release release;
    bitflow::ops::conv2d_f32(ks, threads, x.data, w.data, bias, g, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object dense_f32(const AnyArray& x_, const AnyArray& w_, std::optional<AnyArray> bias_,
                     const std::string& kernels, int threads) {
  const char* fn = "dense_f32";
  check_threads(fn, threads);
  const KernelSet& ks = kernels_arg(fn, kernels);
  auto x = arg<float>(x_, fn, "x", 2);
  auto w = arg<float>(w_, fn, "w", 2);
  if (w.dim(1) != x.dim(1))
    fail(fn, "w must have shape (O, K) with K = " + std::to_string(x.dim(1)) + ", got K = " + std::to_string(w.dim(1)));
  const float* bias = optional_bias(fn, bias_, w.dim(0));
  auto out = make_out<float>({x.dim(0), w.dim(0)});
  {
    nb::gil_scoped_release release;
    bitflow::ops::dense_f32(ks, threads, x.data, w.data, bias, x.dim(0), x.dim(1), w.dim(0), out.ptr);
  }
  return nb::cast(out.array);
}

nb::object conv2d_u8i8(const AnyArray& x_, const AnyArray& w_, nb::handle stride, nb::handle padding,
                       const std::string& kernels, int threads) {
  const char* fn = "conv2d_u8i8";
  check_threads(fn, threads);
  const KernelSet& ks = kernels_arg(fn, kernels);
  auto x = arg<std::uint8_t>(x_, fn, "x", 4);
  auto w = arg<std::int8_t>(w_, fn, "w", 4);
  if (w.dim(3) != x.dim(3))
    fail(fn, "w must have shape (O, kh, kw, C) with C = " + std::to_string(x.dim(3)) + " (NHWC input)");
  auto g = conv_geom(fn, x.dim(0), x.dim(1), x.dim(2), x.dim(3), w.dim(0), w.dim(1), w.dim(2),
                     pair_arg(fn, "stride", stride), pair_arg(fn, "padding", padding));
  check_u8_fan_in(fn, g);
  auto out = make_out<std::int32_t>({g.n, g.ho(), g.wo(), g.o});
  {
    nb::gil_scoped_release release;
    bitflow::ops::conv2d_u8i8(ks, threads, x.data, w.data, g, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object conv2d_u8b1(const AnyArray& x_, const AnyArray& w_, std::int64_t channels, nb::handle stride,
                       nb::handle padding, const std::string& kernels, int threads) {
  const char* fn = "conv2d_u8b1";
  check_threads(fn, threads);
  const KernelSet& ks = kernels_arg(fn, kernels);
  auto x = arg<std::uint8_t>(x_, fn, "x", 4);
  auto w = arg<std::uint64_t>(w_, fn, "w", 4);
  if (channels != x.dim(3))
    fail(fn, "channels = " + std::to_string(channels) + " but x has " + std::to_string(x.dim(3)) + " (NHWC input)");
  if (w.dim(3) != (channels + 63) / 64)
    fail(fn, "w must have shape (O, kh, kw, ceil(C/64)) with C = " + std::to_string(channels));
  auto g = conv_geom(fn, x.dim(0), x.dim(1), x.dim(2), x.dim(3), w.dim(0), w.dim(1), w.dim(2),
                     pair_arg(fn, "stride", stride), pair_arg(fn, "padding", padding));
  check_u8_fan_in(fn, g);
  auto out = make_out<std::int32_t>({g.n, g.ho(), g.wo(), g.o});
  {
    nb::gil_scoped_release release;
    bitflow::ops::conv2d_u8b1(ks, threads, x.data, w.data, g, out.ptr);
  }
  return nb::cast(out.array);
}

}  // namespace

void bind_real_inputs(nb::module_& m) {
  m.def("quantize_u8_nhwc", &quantize_u8_nhwc, "x"_a, "threads"_a = 1, "kernels"_a = "",
        "float32 [N, C, H, W] in [0, 1] -> uint8 [N, H, W, C] = clip(rint(x * 255), 0, 255) (float32 "
        "multiply, round half to even): a fixed-point first layer's input; ValueError on NaN / inf.");

  m.def("nhwc_f32", &nhwc_f32, "x"_a, "threads"_a = 1,
        "float32 [N, C, H, W] -> float32 [N, H, W, C] (the same values): a float first layer's input; "
        "ValueError on NaN / inf.");

}

void bind_real(nb::module_& m) {
  m.def("maxpool_i32", [](const AnyArray& x, nb::handle k, nb::handle s, nb::handle p) {
    return maxpool_typed<std::int32_t>("maxpool_i32", x, k, s, p);
  }, "x"_a, "kernel"_a, "stride"_a = nb::none(), "padding"_a = 0,
     "Max-pool int32 NHWC (PyTorch semantics: padding ignored, floor mode; stride defaults to kernel).");
  m.def("maxpool_f32", [](const AnyArray& x, nb::handle k, nb::handle s, nb::handle p) {
    return maxpool_typed<float>("maxpool_f32", x, k, s, p);
  }, "x"_a, "kernel"_a, "stride"_a = nb::none(), "padding"_a = 0,
     "Max-pool float32 NHWC (PyTorch semantics incl. NaN propagation; stride defaults to kernel).");

  m.def("conv2d_f32", &conv2d_f32, "x"_a, "w"_a, "bias"_a = nb::none(), "stride"_a = nb::make_tuple(1, 1),
        "padding"_a = nb::make_tuple(0, 0), "kernels"_a = "", "threads"_a = 1,
        "Float conv: x float32 [N, H, W, C], w float32 [O, kh, kw, C], zero padding -> float32 "
        "[N, Ho, Wo, O]. Fast kernels match ref within 2 K 2^-24 sum|x w|.");
  m.def("dense_f32", &dense_f32, "x"_a, "w"_a, "bias"_a = nb::none(), "kernels"_a = "", "threads"_a = 1,
        "Float dense: x float32 [N, K], w float32 [O, K] -> float32 [N, O].");
  m.def("conv2d_u8b1", &conv2d_u8b1, "x"_a, "w"_a, "channels"_a, "stride"_a = nb::make_tuple(1, 1),
        "padding"_a = nb::make_tuple(0, 0), "kernels"_a = "", "threads"_a = 1,
        "Exact W1/A8 conv: x uint8 [N, H, W, C], w packed +-1 bits uint64 [O, kh, kw, ceil(C/64)] "
        "(bit 1 = -1), zero padding -> int32 [N, Ho, Wo, O].");
  m.def("conv2d_u8i8", &conv2d_u8i8, "x"_a, "w"_a, "stride"_a = nb::make_tuple(1, 1),
        "padding"_a = nb::make_tuple(0, 0), "kernels"_a = "", "threads"_a = 1,
        "Exact fixed-point conv: x uint8 [N, H, W, C], w int8 [O, kh, kw, C], zero padding -> int32.");

}

}  // namespace bitflow::pyb
