// The fused float stream (bitflow/float_stream.h) and the vectorized float max-pool.
#include "common.h"

namespace bitflow::pyb {
namespace {

using bitflow::ops::FloatStream;

void float_stream_init(FloatStream* self, i64 o, const std::vector<bool>& i32, const nb::list& stages,
                       std::optional<AnyArray> thr_, std::optional<AnyArray> dir_, bool keep_y,
                       const std::string& kernels) {
  const char* fn = "FloatStream";
  const KernelSet& ks = kernels_arg(fn, kernels);
  if (o < 1) fail(fn, "channels must be >= 1");
  if (i32.empty()) fail(fn, "needs at least one operand");
  if (nb::len(stages) != i32.size()) fail(fn, "stages must hold one list of (scale, bias) pairs per operand");
  std::vector<FloatStream::Operand> ops(i32.size());
  for (std::size_t k = 0; k < i32.size(); ++k) {
    ops[k].i32 = i32[k];
    for (nb::handle st : nb::cast<nb::list>(stages[k])) {
      auto pair = nb::cast<nb::tuple>(st);
      if (nb::len(pair) != 2) fail(fn, "every stage is a (scale, bias) pair");
      auto sc = arg<float>(nb::cast<AnyArray>(pair[0]), fn, "scale", 1);
      auto bi = arg<float>(nb::cast<AnyArray>(pair[1]), fn, "bias", 1);
      if (sc.dim(0) != o || bi.dim(0) != o) fail(fn, "scale and bias must have shape (" + std::to_string(o) + ",)");
      ops[k].stages.push_back({std::vector<float>(sc.data, sc.data + o), std::vector<float>(bi.data, bi.data + o)});
    }
  }
  const float* thr = nullptr;
  const std::int8_t* dir = nullptr;
  std::optional<In<float>> t;
  std::optional<In<std::int8_t>> d;
  if (thr_.has_value() != dir_.has_value()) fail(fn, "give both thr and direction, or neither");
  if (thr_) {
    t = arg<float>(*thr_, fn, "thr", 1);
    d = arg<std::int8_t>(*dir_, fn, "direction", 1);
    if (t->dim(0) != o) fail(fn, "thr must have shape (" + std::to_string(o) + ",)");
    check_direction(fn, *d, o);
    thr = t->data;
    dir = d->data;
  }
  if (!keep_y && thr == nullptr) fail(fn, "nothing to output: keep_y=False and no threshold");
  new (self) FloatStream(o, std::move(ops), thr, dir, keep_y, bitflow::ops::float_rows_wide_for(ks), bitflow::ops::float_rows_avx2_for(ks));
}

/// Validate operands k >= first against the stream (dtype, shape, channels); returns pointers.
std::vector<const void*> stream_operands(const char* fn, const FloatStream& fs, const std::vector<AnyArray>& xs,
                                         std::size_t first, std::vector<i64>& shape) {
  if (xs.size() + first != fs.operand_count())
    fail(fn, "expected " + std::to_string(fs.operand_count() - first) + " operand arrays, got " + std::to_string(xs.size()));
  std::vector<const void*> ptrs;
  for (std::size_t k = first; k < fs.operand_count(); ++k) {
    const AnyArray& a = xs[k - first];
    std::vector<i64> sh;
    if (fs.operand(k).i32) {
      auto in = arg<std::int32_t>(a, fn, "operand", -1);
      sh = in.shape;
      ptrs.push_back(in.data);
    } else {
      auto in = arg<float>(a, fn, "operand", -1);
      sh = in.shape;
      ptrs.push_back(in.data);
    }
    if (shape.empty()) shape = sh;
    if (sh != shape) fail(fn, "every operand must have the same shape");
  }
  if (!shape.empty() && shape.back() != fs.channels())
    fail(fn, "the last axis of the operands must be " + std::to_string(fs.channels()));
  return ptrs;
}

nb::object stream_outputs(const FloatStream& fs, const std::vector<i64>& shape,
                          const std::function<void(float*, std::uint64_t*)>& body) {
  std::optional<Out<float>> y;
  std::optional<Out<std::uint64_t>> bits;
  if (fs.keeps_y()) y = make_out<float>(shape);
  if (fs.has_threshold()) bits = make_out<std::uint64_t>(with_last(shape, words_for(fs.channels())));
  {
    nb::gil_scoped_release release;
    body(y ? y->ptr : nullptr, bits ? bits->ptr : nullptr);
  }
  if (y && bits) return nb::make_tuple(y->array, bits->array);
  if (y) return nb::cast(y->array);
  return nb::cast(bits->array);
}

nb::object float_stream_call(const FloatStream& fs, const std::vector<AnyArray>& xs, int threads) {
  const char* fn = "FloatStream.__call__";
  check_threads(fn, threads);
  std::vector<i64> shape;
  const auto ptrs = stream_operands(fn, fs, xs, 0, shape);
  const i64 rows = rows_of(shape);
  return stream_outputs(fs, shape, [&](float* y, std::uint64_t* b) { fs.run(threads, ptrs.data(), rows, y, b); });
}

nb::object float_stream_after(const FloatStream& fs, const BinaryLayer& layer, const AnyArray& x_,
                              const std::vector<AnyArray>& others, std::size_t pos, int threads) {
  const char* fn = "FloatStream.after";
  check_threads(fn, threads);
  if (layer.has_threshold() || layer.pool().on) fail(fn, "the layer must have neither threshold nor pool");
  if (pos >= fs.operand_count()) fail(fn, "pos must name one of the stream's operands");
  if (!fs.operand(pos).i32) fail(fn, "the layer's operand must be an int32 operand");
  if (layer.out_channels() != fs.channels()) fail(fn, "the layer's output channels differ from the stream's");
  const i64 cw = layer.is_int8() ? layer.geom(1, 1, 1).c : words_for(layer.geom(1, 1, 1).c);
  In<std::uint64_t> xb;
  In<std::uint8_t> x8;
  const void* xdata;
  std::vector<i64> xs;
  if (layer.is_int8()) {
    x8 = arg<std::uint8_t>(x_, fn, "x", 4);
    xdata = x8.data;
    xs = x8.shape;
  } else {
    xb = arg<std::uint64_t>(x_, fn, "x", 4);
    xdata = xb.data;
    xs = xb.shape;
  }
  if (xs[3] != cw) fail(fn, "x must have " + std::to_string(cw) + " channel words in its last axis");
  const auto g = layer.geom(xs[0], xs[1], xs[2]);
  if (g.h + 2 * g.ph < g.kh || g.w + 2 * g.pw < g.kw) fail(fn, "kernel is larger than the padded input");
  std::vector<i64> shape = {g.n, g.ho(), g.wo(), layer.out_channels()};
  // the other operands, validated like a stream without operand `pos`
  if (others.size() + 1 != fs.operand_count())
    fail(fn, "expected " + std::to_string(fs.operand_count() - 1) + " other operand arrays, got " + std::to_string(others.size()));
  std::vector<const void*> ptrs(fs.operand_count(), nullptr);
  for (std::size_t k = 0, j = 0; k < fs.operand_count(); ++k) {
    if (k == pos) continue;
    const AnyArray& a = others[j++];
    std::vector<i64> sh;
    if (fs.operand(k).i32) {
      auto in = arg<std::int32_t>(a, fn, "others", -1);
      sh = in.shape;
      ptrs[k] = in.data;
    } else {
      auto in = arg<float>(a, fn, "others", -1);
      sh = in.shape;
      ptrs[k] = in.data;
    }
    if (sh != shape) fail(fn, "the other operands must have the convolution's output shape");
  }
  return stream_outputs(fs, shape, [&](float* y, std::uint64_t* b) {
    if (g.n == 0) return;
    layer.run_epilogue(threads, xdata, g.n, g.h, g.w, [&](const std::int32_t* acc, i64 m0, i64 m1) {
      std::vector<const void*> p = ptrs;  // per call: the helpers run blocks concurrently
      p[pos] = acc;
      fs.rows(p.data(), m0, m1, y, b);
    });
  });
}

nb::object float_stream_after_conv2d(const FloatStream& fs, const AnyArray& x_, const AnyArray& w_,
                                     std::optional<AnyArray> bias_, nb::handle stride, nb::handle padding,
                                     const std::string& kernels, int threads) {
  const char* fn = "FloatStream.after_conv2d";
  check_threads(fn, threads);
  const KernelSet& ks = kernels_arg(fn, kernels);
  if (fs.operand_count() != 1 || fs.operand(0).i32 || !fs.keeps_y())
    fail(fn, "needs a stream of one float32 operand that keeps y (computed in place)");
  auto x = arg<float>(x_, fn, "x", 4);
  auto w = arg<float>(w_, fn, "w", 4);
  if (w.dim(3) != x.dim(3))
    fail(fn, "w must have shape (O, kh, kw, C) with C = " + std::to_string(x.dim(3)) + " (NHWC input)");
  if (w.dim(0) != fs.channels()) fail(fn, "w must have the stream's " + std::to_string(fs.channels()) + " output channels");
  const float* bias = optional_bias(fn, bias_, w.dim(0));
  auto g = conv_geom(fn, x.dim(0), x.dim(1), x.dim(2), x.dim(3), w.dim(0), w.dim(1), w.dim(2),
                     pair_arg(fn, "stride", stride), pair_arg(fn, "padding", padding));
  return stream_outputs(fs, {g.n, g.ho(), g.wo(), g.o}, [&](float* y, std::uint64_t* b) {
    // the convolution writes y; every finished block of rows is transformed in place
    const bitflow::ops::RowsEpilogue epi = [&](i64 m0, i64 m1) {
      const void* p[1] = {y};
      fs.rows(p, m0, m1, y, b);
    };
    bitflow::ops::conv2d_f32(ks, threads, x.data, w.data, bias, g, y, &epi);
  });
}

/// The geometry of a prepared float convolution's call on x [n, h, w, C] (validated).
bitflow::ops::ConvGeom f32_layer_geom(const char* fn, const Conv2dF32Layer& layer, const In<float>& x) {
  const auto& f = layer.prep.filt;
  if (x.dim(3) != f.c) fail(fn, "x must have " + std::to_string(f.c) + " channels in its last axis (NHWC)");
  return conv_geom(fn, x.dim(0), x.dim(1), x.dim(2), f.c, f.o, f.kh, f.kw, {f.sh, f.sw}, {f.ph, f.pw});
}

nb::object conv2d_f32_layer_call(const Conv2dF32Layer& layer, const AnyArray& x_, int threads) {
  const char* fn = "_Conv2dF32Layer.__call__";
  check_threads(fn, threads);
  auto x = arg<float>(x_, fn, "x", 4);
  const auto g = f32_layer_geom(fn, layer, x);
  auto out = make_out<float>({g.n, g.ho(), g.wo(), g.o});
  {
    nb::gil_scoped_release release;
    bitflow::ops::conv2d_f32_prepared(*layer.ks, threads, x.data, layer.prep, g, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object float_stream_after_conv2d_layer(const FloatStream& fs, const Conv2dF32Layer& layer,
                                           const AnyArray& x_, int threads) {
  const char* fn = "FloatStream.after_conv2d_layer";
  check_threads(fn, threads);
  if (fs.operand_count() != 1 || fs.operand(0).i32 || !fs.keeps_y())
    fail(fn, "needs a stream of one float32 operand that keeps y (computed in place)");
  auto x = arg<float>(x_, fn, "x", 4);
  const auto g = f32_layer_geom(fn, layer, x);
  if (g.o != fs.channels()) fail(fn, "the layer must have the stream's " + std::to_string(fs.channels()) + " output channels");
  return stream_outputs(fs, {g.n, g.ho(), g.wo(), g.o}, [&](float* y, std::uint64_t* b) {
    const bitflow::ops::RowsEpilogue epi = [&](i64 m0, i64 m1) {
      const void* p[1] = {y};
      fs.rows(p, m0, m1, y, b);
    };
    bitflow::ops::conv2d_f32_prepared(*layer.ks, threads, x.data, layer.prep, g, y, &epi);
  });
}

void conv2d_f32_layer_init(Conv2dF32Layer* self, const AnyArray& w_, std::optional<AnyArray> bias_,
                           nb::handle stride, nb::handle padding, const std::string& kernels) {
  const char* fn = "_Conv2dF32Layer";
  const KernelSet& ks = kernels_arg(fn, kernels);
  auto w = arg<float>(w_, fn, "w", 4);
  if (w.dim(0) < 1 || w.dim(3) < 1) fail(fn, "w must have shape (O, kh, kw, C) with O, C >= 1");
  const float* bias = optional_bias(fn, bias_, w.dim(0));
  auto g = conv_geom(fn, 1, w.dim(1), w.dim(2), w.dim(3), w.dim(0), w.dim(1), w.dim(2),
                     pair_arg(fn, "stride", stride), pair_arg(fn, "padding", padding));
  g.n = 0; g.h = 0; g.w = 0;
  new (self) Conv2dF32Layer{&ks, bitflow::ops::prepare_conv_f32(ks, w.data, bias, g)};
}

nb::object maxpool_f32_fast(const AnyArray& x_, nb::handle kernel, nb::handle stride, nb::handle padding, int threads,
                            const std::string& kernels) {
  const char* fn = "maxpool_f32_fast";
  check_threads(fn, threads);
  const bool wide = bitflow::ops::float_rows_wide_for(kernels_arg(fn, kernels));
  auto x = arg<float>(x_, fn, "x", 4);
  auto g = pool_geom(fn, x.shape, kernel, stride, padding);
  auto out = make_out<float>({g.n, g.ho(), g.wo(), g.c});
  {
    nb::gil_scoped_release release;
    bitflow::ops::maxpool_f32_fast(x.data, g, out.ptr, threads, wide);
  }
  return nb::cast(out.array);
}

}  // namespace

void bind_float_stream(nb::module_& m) {
  nb::class_<FloatStream>(m, "FloatStream",
      "The fused float stream of residual networks (bitflow/float_stream.h): operands (int32 or float32, "
      "each through its (scale, bias) stages as scale_bias / affine_f32) summed left to right in float32 "
      "(add_f32), kept and / or thresholded to bits (threshold_f32_bits). Equal to the unfused ops bit for bit.")
      .def("__init__", &float_stream_init, "channels"_a, "i32"_a, "stages"_a, "thr"_a = nb::none(),
           "direction"_a = nb::none(), "keep_y"_a = true, "kernels"_a = "")
      .def_prop_ro("wide", [](const FloatStream& f) { return f.wide(); })
      .def_prop_ro("avx2", [](const FloatStream& f) { return f.avx2(); })
      .def("__call__", &float_stream_call, "xs"_a, "threads"_a = 1,
           "operands [..., O] -> y float32 [..., O], bits uint64 [..., ceil(O/64)] or the tuple (y, bits).")
      .def("after_conv2d_layer", &float_stream_after_conv2d_layer, "layer"_a, "x"_a, "threads"_a = 1,
           "after_conv2d with a prepared _Conv2dF32Layer (weights laid out once).")
      .def("after_conv2d", &float_stream_after_conv2d, "x"_a, "w"_a, "bias"_a = nb::none(),
           "stride"_a = nb::make_tuple(1, 1), "padding"_a = nb::make_tuple(0, 0), "kernels"_a = "", "threads"_a = 1,
           "conv2d_f32 (same arguments and values) with a one-operand float stream applied in place to every "
           "finished block of output rows. Returns like __call__.")
      .def("after", [](const FloatStream& fs, const Int8ConvLayer& layer, const AnyArray& x,
                       const std::vector<AnyArray>& others, std::size_t pos, int threads) {
             return float_stream_after(fs, layer, x, others, pos, threads);
           }, "layer"_a, "x"_a, "others"_a, "pos"_a = 0, "threads"_a = 1)
      .def("after", &float_stream_after, "layer"_a, "x"_a, "others"_a, "pos"_a = 0, "threads"_a = 1,
           "Operand `pos` computed by a prepared BinaryLayer (no threshold, no pool) on x, consumed in its "
           "epilogue block by block; others: the other operands in order. Returns like __call__.");
  nb::class_<Conv2dF32Layer>(m, "_Conv2dF32Layer",
      "conv2d_f32 with its weights laid out once (the engine's float convolution steps; equal to "
      "conv2d_f32 bit for bit).")
      .def("__init__", &conv2d_f32_layer_init, "w"_a, "bias"_a = nb::none(), "stride"_a = nb::make_tuple(1, 1),
           "padding"_a = nb::make_tuple(0, 0), "kernels"_a = "")
      .def("__call__", &conv2d_f32_layer_call, "x"_a, "threads"_a = 1);
  m.def("maxpool_f32_fast", &maxpool_f32_fast, "x"_a, "kernel"_a, "stride"_a = nb::none(), "padding"_a = 0,
        "threads"_a = 1, "kernels"_a = "", "maxpool_f32 with the channel loop vectorized and rows over threads (equal bit for bit).");

}

}  // namespace bitflow::pyb
