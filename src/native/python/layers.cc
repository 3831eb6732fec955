// Prepared layers: BinaryLayer and Int8ConvLayer (bitflow/binary_layer.h).
#include "common.h"

namespace bitflow::pyb {
namespace {

/// The optional fused threshold and pool of a prepared layer with o output channels.
struct LayerPost {
  std::optional<In<std::int32_t>> thr;
  std::optional<In<std::int8_t>> dir;
  i64 thr_len = 0;
  BinaryLayer::Pool pool;
};

LayerPost layer_post(const char* fn, i64 o, const std::optional<AnyArray>& thr_, const std::optional<AnyArray>& dir_,
                     nb::handle pool_kernel, nb::handle pool_stride, nb::handle pool_padding) {
  LayerPost post;
  if (thr_.has_value() != dir_.has_value()) fail(fn, "thr and direction must be given together");
  if (thr_.has_value()) {
    post.thr = arg<std::int32_t>(*thr_, fn, "thr", 1);
    post.dir = arg<std::int8_t>(*dir_, fn, "direction", 1);
    const i64 len = post.thr->dim(0);
    if (len < 1 || len % o != 0)
      fail(fn, "thr must have shape (" + std::to_string(o) + ",) (one per output channel) or (Ho * Wo * " +
                   std::to_string(o) + ",) (flattened output), got " + std::to_string(len));
    check_direction(fn, *post.dir, len);
    post.thr_len = len;
  }
  if (!pool_kernel.is_none()) {
    const auto k = pair_arg(fn, "pool_kernel", pool_kernel);
    const auto st = pool_stride.is_none() ? k : pair_arg(fn, "pool_stride", pool_stride);
    const auto p = pair_arg(fn, "pool_padding", pool_padding);
    if (k.first < 1 || k.second < 1) fail(fn, "pool_kernel must be >= 1");
    if (st.first < 1 || st.second < 1) fail(fn, "pool_stride must be >= 1");
    if (p.first < 0 || p.second < 0 || 2 * p.first > k.first || 2 * p.second > k.second)
      fail(fn, "pool_padding must be >= 0 and at most half the pool kernel size (as in PyTorch)");
    post.pool.on = true;
    post.pool.kh = k.first; post.pool.kw = k.second; post.pool.sh = st.first; post.pool.sw = st.second;
    post.pool.ph = p.first; post.pool.pw = p.second;
  }
  return post;
}

void binary_layer_init(BinaryLayer* self, const AnyArray& w_, i64 channels, nb::handle stride,
                       nb::handle padding, int pad_value, const std::string& kernels,
                       std::optional<AnyArray> thr_, std::optional<AnyArray> dir_, nb::handle pool_kernel,
                       nb::handle pool_stride, nb::handle pool_padding, std::optional<AnyArray> index_) {
  const char* fn = "BinaryLayer";
  const KernelSet& ks = kernels_arg(fn, kernels);
  auto w = arg<std::uint64_t>(w_, fn, "w", 4);
  const i64 cw = w.dim(3);
  if (channels < 1 || words_for(channels) != cw)
    fail(fn, "channels=" + std::to_string(channels) + " does not match " + std::to_string(cw) +
                 " channel words (need 64 * (words - 1) < channels <= 64 * words)");
  if (pad_value != 0 && pad_value != 1) fail(fn, "pad_value must be 0 (zero padding) or 1 (+1 padding)");
  if (w.dim(0) < 1) fail(fn, "w must have at least one output channel");
  // The filter geometry, validated with a 1-sample input as large as the kernel.
  auto g = conv_geom(fn, 1, w.dim(1), w.dim(2), channels, w.dim(0), w.dim(1), w.dim(2),
                     pair_arg(fn, "stride", stride), pair_arg(fn, "padding", padding));
  const i64 k_bits = g.kh * g.kw * channels;
  if (k_bits > INT32_MAX) fail(fn, "kh * kw * channels exceeds the int32 accumulator");
  // gather_channels of the rows (the output channel j is row index[j])
  std::optional<In<std::int32_t>> index;
  i64 o = g.o;
  if (index_.has_value()) {
    index = arg<std::int32_t>(*index_, fn, "index", 1);
    o = index->dim(0);
    if (o < 1) fail(fn, "'index' is empty");
    for (i64 j = 0; j < o; ++j) {
      if (index->data[j] < 0 || index->data[j] >= g.o)
        fail(fn, "index[" + std::to_string(j) + "] = " + std::to_string(index->data[j]) + " is outside [0, " +
                     std::to_string(g.o) + ") (the rows of w)");
    }
  }
  const LayerPost post = layer_post(fn, o, thr_, dir_, pool_kernel, pool_stride, pool_padding);
  bitflow::ops::ConvGeom filt = g;
  filt.n = 0; filt.h = 0; filt.w = 0;
  new (self) BinaryLayer(ks, w.data, filt, pad_value, post.thr ? post.thr->data : nullptr,
                         post.dir ? post.dir->data : nullptr, post.thr_len, post.pool,
                         index ? index->data : nullptr, index ? o : 0);
}


void int8_layer_init(Int8ConvLayer* self, const AnyArray& w_, nb::handle stride, nb::handle padding,
                     const std::string& kernels, std::optional<AnyArray> thr_, std::optional<AnyArray> dir_,
                     nb::handle pool_kernel, nb::handle pool_stride, nb::handle pool_padding) {
  const char* fn = "Int8ConvLayer";
  const KernelSet& ks = kernels_arg(fn, kernels);
  auto w = arg<std::int8_t>(w_, fn, "w", 4);
  if (w.dim(0) < 1 || w.dim(3) < 1) fail(fn, "w must have shape (O, kh, kw, C) with O, C >= 1");
  auto g = conv_geom(fn, 1, w.dim(1), w.dim(2), w.dim(3), w.dim(0), w.dim(1), w.dim(2),
                     pair_arg(fn, "stride", stride), pair_arg(fn, "padding", padding));
  check_u8_fan_in(fn, g);
  const LayerPost post = layer_post(fn, g.o, thr_, dir_, pool_kernel, pool_stride, pool_padding);
  bitflow::ops::ConvGeom filt = g;
  filt.n = 0; filt.h = 0; filt.w = 0;
  new (self) Int8ConvLayer(ks, w.data, filt, post.thr ? post.thr->data : nullptr,
                           post.dir ? post.dir->data : nullptr, post.thr_len, post.pool);
}

template <class T>
nb::object layer_call(const char* fn, const BinaryLayer& layer, const AnyArray& x_, int threads) {
  check_threads(fn, threads);
  auto x = arg<T>(x_, fn, "x", 4);
  const i64 cw = layer.is_int8() ? layer.geom(1, 1, 1).c : words_for(layer.geom(1, 1, 1).c);
  if (x.dim(3) != cw)
    fail(fn, "x must have " + std::to_string(cw) + (layer.is_int8() ? " channels" : " channel words") +
                 " in its last axis, got " + std::to_string(x.dim(3)));
  const auto g = layer.geom(x.dim(0), x.dim(1), x.dim(2));
  if (g.h + 2 * g.ph < g.kh || g.w + 2 * g.pw < g.kw)
    fail(fn, "kernel " + std::to_string(g.kh) + "x" + std::to_string(g.kw) + " is larger than the padded input " +
                 std::to_string(g.h + 2 * g.ph) + "x" + std::to_string(g.w + 2 * g.pw));
  if (layer.pool().on) {
    const auto& p = layer.pool();
    if (g.ho() + 2 * p.ph < p.kh || g.wo() + 2 * p.pw < p.kw) fail(fn, "pooling window is larger than the padded convolution output");
  }
  const auto [ho, wo] = layer.out_hw(g.h, g.w);
  const i64 n = g.n, o = layer.out_channels();
  if (layer.flat_threshold()) {
    if (ho * wo * o != layer.threshold_len())
      fail(fn, "the layer's flattened threshold has " + std::to_string(layer.threshold_len()) + " values but this input gives " +
                   std::to_string(ho) + " x " + std::to_string(wo) + " x " + std::to_string(o) + " outputs per sample");
    auto out = make_out<std::uint64_t>({n, words_for(ho * wo * o)});
    {
      nb::gil_scoped_release release;
      if (n > 0) layer.run(threads, x.data, n, g.h, g.w, out.ptr, nullptr);
    }
    return nb::cast(out.array);
  }
  if (layer.has_threshold()) {
    auto out = make_out<std::uint64_t>({n, ho, wo, words_for(o)});
    {
      nb::gil_scoped_release release;
      if (n > 0) layer.run(threads, x.data, n, g.h, g.w, out.ptr, nullptr);
    }
    return nb::cast(out.array);
  }
  auto out = make_out<std::int32_t>({n, ho, wo, o});
  {
    nb::gil_scoped_release release;
    if (n > 0) layer.run(threads, x.data, n, g.h, g.w, nullptr, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object binary_layer_call(const BinaryLayer& layer, const AnyArray& x, int threads) {
  return layer_call<std::uint64_t>("BinaryLayer.__call__", layer, x, threads);
}

nb::object int8_layer_call(const Int8ConvLayer& layer, const AnyArray& x, int threads) {
  return layer_call<std::uint8_t>("Int8ConvLayer.__call__", layer, x, threads);
}

}  // namespace

void bind_layers(nb::module_& m) {
  nb::class_<BinaryLayer>(m, "BinaryLayer",
      "A prepared binary layer: bconv2d [-> maxpool_i32] [-> threshold_bits] in one call, with the "
      "weights laid out and the zero-padding correction's tap dots computed once. A binary dense "
      "layer is w [O, 1, 1, Kw] applied to x [N, 1, 1, Kw] with channels = k_bits. index (int32, values in "
      "[0, O)): bconv2d -> gather_channels, the output channel j is row index[j] (gathered in the epilogue; "
      "thr and the pool then have len(index) channels). Results equal the unfused ops bit for bit; safe to "
      "call from several Python threads.")
      .def("__init__", &binary_layer_init, "w"_a, "channels"_a, "stride"_a = nb::make_tuple(1, 1),
           "padding"_a = nb::make_tuple(0, 0), "pad_value"_a = 0, "kernels"_a = "", "thr"_a = nb::none(),
           "direction"_a = nb::none(), "pool_kernel"_a = nb::none(), "pool_stride"_a = nb::none(),
           "pool_padding"_a = 0, "index"_a = nb::none())
      .def("__call__", &binary_layer_call, "x"_a, "threads"_a = 1,
           "x uint64 [N, H, W, Cw] -> uint64 bits [N, Ho, Wo, ceil(O/64)] (per-channel thr), bits [N, ceil(Ho*Wo*O/64)] "
           "(flattened thr of Ho*Wo*O values, HWC order) or int32 [N, Ho, Wo, O] (no thr).")
      .def_prop_ro("kernels", [](const BinaryLayer& l) { return std::string(l.kernels().name); })
      .def_prop_ro("out_channels", [](const BinaryLayer& l) { return l.out_channels(); })
      .def_prop_ro("has_threshold", [](const BinaryLayer& l) { return l.has_threshold(); })
      .def_prop_ro("weight_layout", [](const BinaryLayer& l) { return std::string(l.weight_layout()); });

  nb::class_<Int8ConvLayer>(m, "Int8ConvLayer",
      "The fixed-point first layer prepared: conv2d_u8i8 [-> maxpool_i32] [-> threshold_bits] in one call, "
      "weights packed once for the kernel set. Exact; equal to the unfused ops bit for bit.")
      .def("__init__", &int8_layer_init, "w"_a, "stride"_a = nb::make_tuple(1, 1), "padding"_a = nb::make_tuple(0, 0),
           "kernels"_a = "", "thr"_a = nb::none(), "direction"_a = nb::none(), "pool_kernel"_a = nb::none(),
           "pool_stride"_a = nb::none(), "pool_padding"_a = 0)
      .def("__call__", &int8_layer_call, "x"_a, "threads"_a = 1,
           "x uint8 [N, H, W, C] -> uint64 bits [N, Ho, Wo, ceil(O/64)] (per-channel thr), bits [N, ceil(Ho*Wo*O/64)] "
           "(flattened thr) or int32 [N, Ho, Wo, O] (no thr).")
      .def_prop_ro("kernels", [](const Int8ConvLayer& l) { return std::string(l.kernels().name); })
      .def_prop_ro("out_channels", [](const Int8ConvLayer& l) { return l.out_channels(); });
}

}  // namespace bitflow::pyb
