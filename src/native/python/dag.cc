// DAG ops: residual adds, requantization, average pools, concatenation (bitflow/elementwise.h).
#include <atomic>

#include "common.h"

namespace bitflow::pyb {
namespace {

/// Inputs of an n-ary op: same dtype T, identical shapes, C-contiguous; at least two.
template <class T>
std::vector<In<T>> same_shape_args(const char* fn, const std::vector<AnyArray>& xs) {
  if (xs.size() < 2) fail(fn, "needs at least two input arrays, got " + std::to_string(xs.size()));
  std::vector<In<T>> ins;
  for (std::size_t k = 0; k < xs.size(); ++k) {
    const std::string name = "xs[" + std::to_string(k) + "]";
    ins.push_back(arg<T>(xs[k], fn, name.c_str(), -1));
    if (ins.back().shape != ins[0].shape) fail(fn, name + " has shape " + shape_str(xs[k]) + ", xs[0] has " + shape_str(xs[0]));
  }
  return ins;
}

nb::object add_f32(const std::vector<AnyArray>& xs) {
  auto ins = same_shape_args<float>("add_f32", xs);
  auto out = make_out<float>(ins[0].shape);
  std::vector<const float*> ptrs;
  for (auto& in : ins) ptrs.push_back(in.data);
  {
    nb::gil_scoped_release release;
    bitflow::ops::add_f32(ptrs, ins[0].size(), out.ptr);
  }
  return nb::cast(out.array);
}

// The optional saturation range of the integer ops: [lo, hi] within int32 (default: all of it).
std::pair<i64, i64> int32_range(const char* fn, const nb::object& lo_, const nb::object& hi_) {
  constexpr i64 kMin = std::numeric_limits<std::int32_t>::min(), kMax = std::numeric_limits<std::int32_t>::max();
  const i64 lo = lo_.is_none() ? kMin : nb::cast<i64>(lo_);
  const i64 hi = hi_.is_none() ? kMax : nb::cast<i64>(hi_);
  if (lo < kMin || hi > kMax || lo > hi)
    fail(fn, "clamp range [" + std::to_string(lo) + ", " + std::to_string(hi) + "] must lie within int32 with lo <= hi");
  return {lo, hi};
}

nb::object add_i32(const std::vector<AnyArray>& xs, const nb::object& lo_, const nb::object& hi_, int threads) {
  check_threads("add_i32", threads);
  auto [lo, hi] = int32_range("add_i32", lo_, hi_);
  auto ins = same_shape_args<std::int32_t>("add_i32", xs);
  auto out = make_out<std::int32_t>(ins[0].shape);
  std::vector<const std::int32_t*> ptrs;
  for (auto& in : ins) ptrs.push_back(in.data);
  bool ok = true;
  {
    nb::gil_scoped_release release;
    ok = bitflow::ops::add_i32(ptrs, ins[0].size(), lo, hi, out.ptr, threads);
  }
  if (!ok) fail("add_i32", "the sum overflows int32");
  return nb::cast(out.array);
}

nb::object requant_i32(const AnyArray& x_, const AnyArray& m_, const AnyArray& b_, int shift, const nb::object& lo_,
                       const nb::object& hi_, int threads) {
  const char* fn = "requant_i32";
  check_threads(fn, threads);
  auto [lo, hi] = int32_range(fn, lo_, hi_);
  auto x = arg<std::int32_t>(x_, fn, "x", -1);
  auto m = arg<std::int64_t>(m_, fn, "m", 1);
  auto b = arg<std::int64_t>(b_, fn, "b", 1);
  const i64 c = x.dim(-1);
  if (m.dim(0) != c || b.dim(0) != c)
    fail(fn, "m and b must have shape (" + std::to_string(c) + ",) to match the last axis of x");
  if (shift < 0 || shift > 62) fail(fn, "shift must be in [0, 62], got " + std::to_string(shift));
  auto out = make_out<std::int32_t>(x.shape);
  bool ok = true;
  {
    nb::gil_scoped_release release;
    ok = bitflow::ops::requant_i32(x.data, rows_of(x.shape), c, m.data, b.data, shift, lo, hi, out.ptr, threads);
  }
  if (!ok) fail(fn, "a result overflows int32 (no clamp range given)");
  return nb::cast(out.array);
}

nb::object affine_f32(const AnyArray& x_, const AnyArray& scale_, const AnyArray& bias_) {
  const char* fn = "affine_f32";
  auto x = arg<float>(x_, fn, "x", -1);
  auto scale = arg<float>(scale_, fn, "scale", 1);
  auto bias = arg<float>(bias_, fn, "bias", 1);
  const i64 o = x.dim(-1);
  if (scale.dim(0) != o || bias.dim(0) != o)
    fail(fn, "scale and bias must have shape (" + std::to_string(o) + ",) to match the last axis of x");
  auto out = make_out<float>(x.shape);
  {
    nb::gil_scoped_release release;
    bitflow::ops::affine_f32(x.data, rows_of(x.shape), o, scale.data, bias.data, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object relu_f32(const AnyArray& x_) {
  auto x = arg<float>(x_, "relu_f32", "x", -1);
  auto out = make_out<float>(x.shape);
  {
    nb::gil_scoped_release release;
    bitflow::ops::relu_f32(x.data, x.size(), out.ptr);
  }
  return nb::cast(out.array);
}

nb::object avgpool_f32(const AnyArray& x_, nb::handle kernel, nb::handle stride, nb::handle padding) {
  const char* fn = "avgpool_f32";
  auto x = arg<float>(x_, fn, "x", 4);
  auto g = pool_geom(fn, x.shape, kernel, stride, padding);
  auto out = make_out<float>({g.n, g.ho(), g.wo(), g.c});
  {
    nb::gil_scoped_release release;
    bitflow::ops::avgpool_f32(x.data, g, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object global_avgpool_f32(const AnyArray& x_) {
  const char* fn = "global_avgpool_f32";
  auto x = arg<float>(x_, fn, "x", 4);
  if (x.dim(1) < 1 || x.dim(2) < 1 || x.dim(3) < 1) fail(fn, "'x' must have non-empty H, W and C axes");
  auto out = make_out<float>({x.dim(0), 1, 1, x.dim(3)});
  {
    nb::gil_scoped_release release;
    bitflow::ops::global_avgpool_f32(x.data, x.dim(0), x.dim(1) * x.dim(2), x.dim(3), out.ptr);
  }
  return nb::cast(out.array);
}

/// Shapes of concat inputs: equal but for the last axis.
template <class T>
std::vector<In<T>> concat_args(const char* fn, const std::vector<AnyArray>& xs) {
  if (xs.size() < 2) fail(fn, "needs at least two input arrays, got " + std::to_string(xs.size()));
  std::vector<In<T>> ins;
  for (std::size_t k = 0; k < xs.size(); ++k) {
    const std::string name = "xs[" + std::to_string(k) + "]";
    ins.push_back(arg<T>(xs[k], fn, name.c_str(), -1));
    const auto& a = ins.back().shape;
    const auto& b = ins[0].shape;
    if (a.size() != b.size() || !std::equal(a.begin(), a.end() - 1, b.begin()))
      fail(fn, name + " has shape " + shape_str(xs[k]) + ", which differs from xs[0] " + shape_str(xs[0]) +
                   " in an axis other than the last");
  }
  return ins;
}

template <class T>
nb::object concat_typed(const std::vector<AnyArray>& xs) {
  auto ins = concat_args<T>("concat", xs);
  std::vector<const void*> ptrs;
  std::vector<i64> widths;
  i64 total = 0;
  for (auto& in : ins) {
    ptrs.push_back(in.data);
    widths.push_back(in.dim(-1));
    total += in.dim(-1);
  }
  auto out = make_out<T>(with_last(ins[0].shape, total));
  {
    nb::gil_scoped_release release;
    bitflow::ops::concat_bytes(ptrs, widths, rows_of(ins[0].shape), sizeof(T), out.ptr);
  }
  return nb::cast(out.array);
}

nb::object concat(const std::vector<AnyArray>& xs) {
  if (xs.empty()) fail("concat", "needs at least two input arrays, got 0");
  const auto d = xs[0].dtype();
  if (d == nb::dtype<float>()) return concat_typed<float>(xs);
  if (d == nb::dtype<std::int32_t>()) return concat_typed<std::int32_t>(xs);
  if (d == nb::dtype<std::uint8_t>()) return concat_typed<std::uint8_t>(xs);
  throw nb::type_error(("concat: arrays must have dtype float32, int32 or uint8 (bits: concat_bits), got " +
                        dtype_name(d)).c_str());
}

nb::object concat_bits(const std::vector<AnyArray>& xs, const std::vector<i64>& channels) {
  const char* fn = "concat_bits";
  auto ins = concat_args<std::uint64_t>(fn, xs);
  if (channels.size() != ins.size()) fail(fn, "needs one channel count per input array");
  std::vector<const std::uint64_t*> ptrs;
  i64 total = 0;
  for (std::size_t k = 0; k < ins.size(); ++k) {
    if (channels[k] < 1 || words_for(channels[k]) != ins[k].dim(-1))
      fail(fn, "xs[" + std::to_string(k) + "] has " + std::to_string(ins[k].dim(-1)) + " words per row, which cannot hold " +
                   std::to_string(channels[k]) + " channels");
    ptrs.push_back(ins[k].data);
    total += channels[k];
  }
  auto out = make_out<std::uint64_t>(with_last(ins[0].shape, words_for(total)));
  {
    nb::gil_scoped_release release;
    bitflow::ops::concat_bits(ptrs, channels, rows_of(ins[0].shape), out.ptr);
  }
  return nb::cast(out.array);
}

template <class T>
nb::object gather_typed(const AnyArray& x_, const AnyArray& index_) {
  const char* fn = "gather_channels";
  auto x = arg<T>(x_, fn, "x", -1);
  auto index = arg<std::int32_t>(index_, fn, "index", 1);
  const i64 cols = x.dim(-1), o = index.dim(0);
  if (o < 1) fail(fn, "'index' is empty");
  for (i64 j = 0; j < o; ++j) {
    if (index.data[j] < 0 || index.data[j] >= cols)
      fail(fn, "index[" + std::to_string(j) + "] = " + std::to_string(index.data[j]) + " is outside [0, " +
                   std::to_string(cols) + ") (the last axis of x)");
  }
  std::vector<i64> shape = x.shape;
  shape.back() = o;
  auto out = make_out<T>(shape);
  {
    nb::gil_scoped_release release;
    bitflow::ops::gather_channels(x.data, rows_of(x.shape), cols, index.data, o, sizeof(T), out.ptr);
  }
  return nb::cast(out.array);
}

nb::object gather_channels(const AnyArray& x, const AnyArray& index) {
  const auto d = x.dtype();
  if (d == nb::dtype<float>()) return gather_typed<float>(x, index);
  if (d == nb::dtype<std::int32_t>()) return gather_typed<std::int32_t>(x, index);
  if (d == nb::dtype<std::uint8_t>()) return gather_typed<std::uint8_t>(x, index);
  throw nb::type_error(("gather_channels: x must have dtype float32, int32 or uint8, got " + dtype_name(d)).c_str());
}

// ------------------------------------------------------------------ IntStream
using bitflow::ops::IntStream;

void int_stream_init(IntStream* self, i64 o, const std::vector<nb::object>& operands, const nb::object& lo_,
                     const nb::object& hi_, std::optional<AnyArray> thr_, std::optional<AnyArray> dir_, bool keep_y,
                     const std::string& kernels) {
  const char* fn = "IntStream";
  const KernelSet& ks = kernels_arg(fn, kernels);
  if (o < 1) fail(fn, "o must be >= 1");
  if (operands.empty()) fail(fn, "needs at least one operand");
  auto [lo, hi] = int32_range(fn, lo_, hi_);
  std::vector<IntStream::Operand> ops;
  for (const nb::object& spec : operands) {
    IntStream::Operand op;
    if (!spec.is_none()) {
      // (m, b, shift, lo, hi): requant_i32's parameters
      auto t = nb::cast<nb::tuple>(spec);
      if (t.size() != 5) fail(fn, "a requantized operand is (m, b, shift, lo, hi)");
      auto m = arg<std::int64_t>(nb::cast<AnyArray>(t[0]), fn, "m", 1);
      auto b = arg<std::int64_t>(nb::cast<AnyArray>(t[1]), fn, "b", 1);
      if (m.dim(0) != o || b.dim(0) != o) fail(fn, "m and b must have shape (" + std::to_string(o) + ",)");
      const int shift = nb::cast<int>(t[2]);
      if (shift < 0 || shift > 62) fail(fn, "shift must be in [0, 62], got " + std::to_string(shift));
      auto [rlo, rhi] = int32_range(fn, t[3], t[4]);
      op.requant = true;
      op.rq = std::make_shared<const bitflow::ops::Requant>(m.data, b.data, o, shift, rlo, rhi);
    }
    ops.push_back(std::move(op));
  }
  const std::int32_t* thr = nullptr;
  const std::int8_t* dir = nullptr;
  std::optional<In<std::int32_t>> t;
  std::optional<In<std::int8_t>> d;
  if (thr_.has_value() != dir_.has_value()) fail(fn, "thr and direction go together");
  if (thr_.has_value()) {
    t = arg<std::int32_t>(*thr_, fn, "thr", 1);
    d = arg<std::int8_t>(*dir_, fn, "direction", 1);
    if (t->dim(0) != o || d->dim(0) != o) fail(fn, "thr and direction must have shape (" + std::to_string(o) + ",)");
    for (i64 c = 0; c < o; ++c)
      if (d->data[c] != 1 && d->data[c] != -1) fail(fn, "direction values must be +1 or -1");
    thr = t->data;
    dir = d->data;
  }
  if (!keep_y && thr == nullptr) fail(fn, "nothing to output (no threshold and keep_y=False)");
  new (self) IntStream(ks, o, std::move(ops), lo, hi, thr, dir, keep_y);
}

nb::object int_stream_outputs(const IntStream& s, const std::vector<i64>& shape,
                              const std::function<bool(std::int32_t*, std::uint64_t*)>& body) {
  std::optional<Out<std::int32_t>> y;
  std::optional<Out<std::uint64_t>> bits;
  if (s.keeps_y()) y = make_out<std::int32_t>(shape);
  if (s.has_threshold()) bits = make_out<std::uint64_t>(with_last(shape, words_for(s.channels())));
  bool ok = true;
  {
    nb::gil_scoped_release release;
    ok = body(y ? y->ptr : nullptr, bits ? bits->ptr : nullptr);
  }
  if (!ok) fail("IntStream", "a requantized value or a sum overflows int32 (no clamp range given)");
  if (y && bits) return nb::make_tuple(y->array, bits->array);
  if (y) return nb::cast(y->array);
  return nb::cast(bits->array);
}

/// The int32 operands other than `skip` (none: -1), validated to one shape [..., o].
std::vector<const std::int32_t*> int_stream_args(const char* fn, const IntStream& s, const std::vector<AnyArray>& xs,
                                                 std::size_t skip, std::vector<i64>& shape) {
  std::vector<const std::int32_t*> ptrs(s.operand_count(), nullptr);
  const std::size_t want = s.operand_count() - (skip < s.operand_count() ? 1 : 0);
  if (xs.size() != want) fail(fn, "expected " + std::to_string(want) + " operand arrays, got " + std::to_string(xs.size()));
  for (std::size_t k = 0, j = 0; k < s.operand_count(); ++k) {
    if (k == skip) continue;
    auto in = arg<std::int32_t>(xs[j++], fn, "xs", -1);
    if (in.dim(-1) != s.channels()) fail(fn, "operands must have " + std::to_string(s.channels()) + " channels in their last axis");
    if (shape.empty()) shape = in.shape;
    else if (in.shape != shape) fail(fn, "operands must have one shape (and the convolution's output shape)");
    ptrs[k] = in.data;
  }
  return ptrs;
}

nb::object int_stream_call(const IntStream& s, const std::vector<AnyArray>& xs, int threads) {
  const char* fn = "IntStream.__call__";
  check_threads(fn, threads);
  std::vector<i64> shape;
  const auto ptrs = int_stream_args(fn, s, xs, static_cast<std::size_t>(-1), shape);
  const i64 rows = rows_of(shape);
  return int_stream_outputs(s, shape, [&](std::int32_t* y, std::uint64_t* b) { return s.run(threads, ptrs.data(), rows, y, b); });
}

nb::object int_stream_after(const IntStream& s, const BinaryLayer& layer, const AnyArray& x_,
                            const std::vector<AnyArray>& others, std::size_t pos, int threads) {
  const char* fn = "IntStream.after";
  check_threads(fn, threads);
  if (layer.is_int8() || layer.has_threshold() || layer.pool().on) fail(fn, "the layer must be a binary one with neither threshold nor pool");
  if (pos >= s.operand_count()) fail(fn, "pos must name one of the stream's operands");
  if (layer.out_channels() != s.channels()) fail(fn, "the layer's output channels differ from the stream's");
  auto x = arg<std::uint64_t>(x_, fn, "x", 4);
  if (x.dim(3) != words_for(layer.geom(1, 1, 1).c)) fail(fn, "x has the wrong number of channel words");
  const auto g = layer.geom(x.dim(0), x.dim(1), x.dim(2));
  if (g.h + 2 * g.ph < g.kh || g.w + 2 * g.pw < g.kw) fail(fn, "kernel is larger than the padded input");
  std::vector<i64> shape = {g.n, g.ho(), g.wo(), layer.out_channels()};
  std::vector<i64> oshape;
  auto ptrs = int_stream_args(fn, s, others, pos, oshape);
  if (!oshape.empty() && oshape != shape) fail(fn, "the other operands must have the convolution's output shape");
  return int_stream_outputs(s, shape, [&](std::int32_t* y, std::uint64_t* b) {
    if (g.n == 0) return true;
    std::atomic<bool> ok{true};
    layer.run_epilogue(threads, x.data, g.n, g.h, g.w, [&](const std::int32_t* acc, i64 m0, i64 m1) {
      std::vector<const std::int32_t*> p = ptrs;  // per call: the helpers run blocks concurrently
      p[pos] = acc;
      if (!s.rows(p.data(), m0, m1, y, b)) ok = false;
    });
    return ok.load();
  });
}

}  // namespace

void bind_dag(nb::module_& m) {
  nb::class_<IntStream>(m, "IntStream",
      "The fused integer residual stream: per row, requant_i32 of the operands that have parameters, "
      "add_i32 with clamp [lo, hi] (one operand: passed through), threshold_bits of the sum; the same "
      "integers as the ops one by one.")
      .def("__init__", &int_stream_init, "o"_a, "operands"_a, "lo"_a = nb::none(), "hi"_a = nb::none(),
           "thr"_a = nb::none(), "direction"_a = nb::none(), "keep_y"_a = true, "kernels"_a = "")
      .def("__call__", &int_stream_call, "xs"_a, "threads"_a = 1,
           "int32 operands [..., O] -> y int32 [..., O], bits uint64 [..., ceil(O/64)] or the tuple (y, bits).")
      .def("after", &int_stream_after, "layer"_a, "x"_a, "others"_a, "pos"_a = 0, "threads"_a = 1,
           "Operand `pos` computed by a prepared BinaryLayer (no threshold, no pool) on x, consumed in its "
           "epilogue block by block; others: the other operands in order. Returns like __call__.");
  m.def("add_f32", &add_f32, "xs"_a, "Elementwise sum of >= 2 float32 arrays of one shape, left to right in float32.");
  m.def("add_i32", &add_i32, "xs"_a, "lo"_a = nb::none(), "hi"_a = nb::none(), "threads"_a = 1,
        "Exact elementwise sum of >= 2 int32 arrays of one shape, saturated to [lo, hi] when given "
        "(an unclamped overflow: ValueError).");
  m.def("requant_i32", &requant_i32, "x"_a, "m"_a, "b"_a, "shift"_a, "lo"_a = nb::none(), "hi"_a = nb::none(),
        "threads"_a = 1,
        "int32 [..., C] -> floor((x * m[c] + b[c]) / 2^shift) (exact, int64 m, b), saturated to [lo, hi] when given.");
  m.def("affine_f32", &affine_f32, "x"_a, "scale"_a, "bias"_a, "float32 [..., O] -> x * scale + bias (two roundings).");
  m.def("relu_f32", &relu_f32, "x"_a, "float32 -> max(x, 0) (NaN propagates).");
  m.def("avgpool_f32", &avgpool_f32, "x"_a, "kernel"_a, "stride"_a = nb::none(), "padding"_a = 0,
        "float32 NHWC average pool (window sum / (kh*kw); zero padding counts).");
  m.def("global_avgpool_f32", &global_avgpool_f32, "x"_a, "float32 [N, H, W, C] -> [N, 1, 1, C] means.");
  m.def("concat", &concat, "xs"_a, "Concatenate float32 / int32 / uint8 arrays along the last axis.");
  m.def("gather_channels", &gather_channels, "x"_a, "index"_a,
        "float32 / int32 / uint8 [..., C] -> [..., O]: y[..., o] = x[..., index[o]] (index int32, values in [0, C)).");
  m.def("concat_bits", &concat_bits, "xs"_a, "channels"_a,
        "Concatenate packed bit rows (channels[i] real bits each) channel by channel.");
}

}  // namespace bitflow::pyb
