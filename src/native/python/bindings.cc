// The only file that includes the binding library. Every function validates its inputs
// (dtype, ndim, shape, C-contiguity, value ranges) and raises TypeError / ValueError with a
// message naming the function, the argument and the problem; computation runs with the GIL
// released.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "bitflow/binary_layer.h"
#include "bitflow/cpu.h"
#include "bitflow/elementwise.h"
#include "bitflow/float_stream.h"
#include "bitflow/kernels.h"
#include "bitflow/ops.h"
#include "../ops/parallel.h"

namespace nb = nanobind;
using namespace nb::literals;
using bitflow::KernelSet;
using bitflow::words_for;
using i64 = std::int64_t;

namespace {

using AnyArray = nb::ndarray<nb::ro, nb::device::cpu>;

std::string dtype_name(const nb::dlpack::dtype& d) {
  std::string base;
  switch (static_cast<nb::dlpack::dtype_code>(d.code)) {
    case nb::dlpack::dtype_code::Int: base = "int"; break;
    case nb::dlpack::dtype_code::UInt: base = "uint"; break;
    case nb::dlpack::dtype_code::Float: base = "float"; break;
    case nb::dlpack::dtype_code::Bool: return "bool";
    case nb::dlpack::dtype_code::Complex: base = "complex"; break;
    default: base = "dtype-code-" + std::to_string(d.code) + "-"; break;
  }
  return base + std::to_string(d.bits);
}

template <class T> const char* type_name();
template <> const char* type_name<float>() { return "float32"; }
template <> const char* type_name<std::int32_t>() { return "int32"; }
template <> const char* type_name<std::int8_t>() { return "int8"; }
template <> const char* type_name<std::uint8_t>() { return "uint8"; }
template <> const char* type_name<std::uint64_t>() { return "uint64"; }
template <> const char* type_name<std::int64_t>() { return "int64"; }

std::string shape_str(const AnyArray& a) {
  std::string s = "(";
  for (std::size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

/// A validated, C-contiguous input view.
template <class T>
struct In {
  const T* data = nullptr;
  std::vector<i64> shape;
  i64 dim(int i) const { return shape[static_cast<std::size_t>(i < 0 ? i + static_cast<int>(shape.size()) : i)]; }
  i64 ndim() const { return static_cast<i64>(shape.size()); }
  i64 size() const {
    i64 s = 1;
    for (i64 d : shape) s *= d;
    return s;
  }
};

/// Check dtype, ndim (exact when ndim >= 0, at least -ndim when ndim < 0) and C-contiguity.
template <class T>
In<T> arg(const AnyArray& a, const char* fn, const char* name, int ndim) {
  if (a.dtype() != nb::dtype<T>()) {
    throw nb::type_error((std::string(fn) + ": '" + name + "' must have dtype " + type_name<T>() +
                          ", got " + dtype_name(a.dtype()))
                             .c_str());
  }
  const int nd = static_cast<int>(a.ndim());
  if ((ndim >= 0 && nd != ndim) || (ndim < 0 && nd < -ndim)) {
    throw nb::value_error((std::string(fn) + ": '" + name + "' must have " +
                           (ndim >= 0 ? "exactly " : "at least ") + std::to_string(ndim >= 0 ? ndim : -ndim) +
                           " dimensions, got shape " + shape_str(a))
                              .c_str());
  }
  In<T> in;
  in.shape.resize(static_cast<std::size_t>(nd));
  i64 expect = 1;
  bool empty = false;
  for (int i = nd - 1; i >= 0; --i) {
    const i64 d = static_cast<i64>(a.shape(static_cast<std::size_t>(i)));
    in.shape[static_cast<std::size_t>(i)] = d;
    if (d == 0) empty = true;
  }
  if (!empty) {
    for (int i = nd - 1; i >= 0; --i) {
      const i64 d = in.shape[static_cast<std::size_t>(i)];
      if (d != 1 && a.stride(static_cast<std::size_t>(i)) != expect) {
        throw nb::value_error((std::string(fn) + ": '" + name +
                               "' must be C-contiguous (use numpy.ascontiguousarray)")
                                  .c_str());
      }
      expect *= d;
    }
  }
  in.data = static_cast<const T*>(static_cast<const void*>(a.data()));
  return in;
}

[[noreturn]] void fail(const std::string& fn, const std::string& msg) {
  throw nb::value_error((fn + ": " + msg).c_str());
}

/// A freshly allocated numpy output array and its data pointer.
template <class T>
struct Out {
  T* ptr = nullptr;
  nb::ndarray<nb::numpy, T> array;
};

template <class T>
Out<T> make_out(const std::vector<i64>& shape) {
  std::vector<std::size_t> sh(shape.begin(), shape.end());
  std::size_t n = 1;
  for (std::size_t d : sh) n *= d;
  std::unique_ptr<T[]> buf(new T[n > 0 ? n : 1]);
  T* ptr = buf.get();
  nb::capsule owner(ptr, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  buf.release();
  Out<T> out;
  out.ptr = ptr;
  out.array = nb::ndarray<nb::numpy, T>(ptr, sh.size(), sh.data(), owner);
  return out;
}

int check_threads(const char* fn, int threads) {
  if (threads < 1 || threads > 1024) fail(fn, "threads must be in [1, 1024], got " + std::to_string(threads));
  return threads;
}

const KernelSet& kernels_arg(const char* fn, const std::string& name) {
  try {
    return bitflow::resolve_kernels(name);
  } catch (const std::invalid_argument& e) {
    fail(fn, std::string("kernels: ") + e.what());
  }
}

/// An integer-like object (int, numpy integer; not bool, not float) -> its value.
bool index_value(nb::handle h, i64& out) {
  if (PyBool_Check(h.ptr()) || !PyIndex_Check(h.ptr())) return false;
  nb::object v = nb::steal(PyNumber_Index(h.ptr()));
  if (!v.is_valid()) {
    PyErr_Clear();
    return false;
  }
  const long long x = PyLong_AsLongLong(v.ptr());
  if (x == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  out = static_cast<i64>(x);
  return true;
}

/// An int or a pair of ints (tuple/list) -> (first, second).
std::pair<i64, i64> pair_arg(const char* fn, const char* name, nb::handle h) {
  i64 a = 0, b = 0;
  if (index_value(h, a)) return {a, a};
  if (PyTuple_Check(h.ptr()) || PyList_Check(h.ptr())) {
    nb::sequence seq = nb::borrow<nb::sequence>(h);
    if (nb::len(seq) == 2) {
      nb::object first = seq[0], second = seq[1];
      if (index_value(first, a) && index_value(second, b)) return {a, b};
    }
  }
  throw nb::type_error((std::string(fn) + ": " + name + " must be an int or a pair of ints, got " +
                        nb::cast<std::string>(nb::repr(h)))
                           .c_str());
}

i64 check_k_bits(const char* fn, i64 k_bits, i64 kw) {
  if (kw < 1) fail(fn, "rows must have at least one 64-bit word");
  if (k_bits < 1 || k_bits > 64 * kw)
    fail(fn, "k_bits must be in [1, 64 * words] = [1, " + std::to_string(64 * kw) + "], got " + std::to_string(k_bits));
  return k_bits;
}

void check_planes_fit(const char* fn, i64 k_bits, i64 pa, i64 pw) {
  if (pa < 1 || pw < 1) fail(fn, "plane axes must be non-empty");
  if (pa > 16 || pw > 16) fail(fn, "at most 16 planes per operand");
  const long double bound = static_cast<long double>(k_bits) * ((1LL << pa) - 1) * ((1LL << pw) - 1);
  if (bound > static_cast<long double>(INT32_MAX))
    fail(fn, "int32 accumulator overflow: k_bits * (2^Pa - 1) * (2^Pw - 1) = " +
                 std::to_string(static_cast<long long>(bound)) + " exceeds 2^31 - 1");
}

std::vector<i64> with_last(const std::vector<i64>& s, i64 last) {
  std::vector<i64> r = s;
  r.back() = last;
  return r;
}

i64 rows_of(const std::vector<i64>& s) {
  i64 r = 1;
  for (std::size_t i = 0; i + 1 < s.size(); ++i) r *= s[i];
  return r;
}

void check_direction(const char* fn, const In<std::int8_t>& d, i64 o) {
  if (d.ndim() != 1 || d.dim(0) != o)
    fail(fn, "direction must have shape (" + std::to_string(o) + ",) to match the last axis");
  for (i64 c = 0; c < o; ++c)
    if (d.data[c] != 1 && d.data[c] != -1)
      fail(fn, "direction values must be +1 or -1, got " + std::to_string(static_cast<int>(d.data[c])) +
                   " at index " + std::to_string(c));
}

bitflow::ops::ConvGeom conv_geom(const char* fn, i64 n, i64 h, i64 w, i64 c, i64 o, i64 kh, i64 kw,
                                 std::pair<i64, i64> stride, std::pair<i64, i64> padding) {
  if (stride.first < 1 || stride.second < 1) fail(fn, "stride must be >= 1");
  if (padding.first < 0 || padding.second < 0) fail(fn, "padding must be >= 0");
  if (kh < 1 || kw < 1) fail(fn, "kernel height and width must be >= 1");
  bitflow::ops::ConvGeom g;
  g.n = n; g.h = h; g.w = w; g.c = c; g.o = o; g.kh = kh; g.kw = kw;
  g.sh = stride.first; g.sw = stride.second; g.ph = padding.first; g.pw = padding.second;
  if (h + 2 * g.ph < kh || w + 2 * g.pw < kw)
    fail(fn, "kernel " + std::to_string(kh) + "x" + std::to_string(kw) + " is larger than the padded input " +
                 std::to_string(h + 2 * g.ph) + "x" + std::to_string(w + 2 * g.pw));
  return g;
}

bitflow::ops::PoolGeom pool_geom(const char* fn, const std::vector<i64>& s, nb::handle kernel,
                                 nb::handle stride, nb::handle padding) {
  const auto k = pair_arg(fn, "kernel", kernel);
  const auto st = stride.is_none() ? k : pair_arg(fn, "stride", stride);
  const auto p = pair_arg(fn, "padding", padding);
  if (k.first < 1 || k.second < 1) fail(fn, "kernel must be >= 1");
  if (st.first < 1 || st.second < 1) fail(fn, "stride must be >= 1");
  if (p.first < 0 || p.second < 0 || 2 * p.first > k.first || 2 * p.second > k.second)
    fail(fn, "padding must be >= 0 and at most half the kernel size (as in PyTorch)");
  bitflow::ops::PoolGeom g;
  g.n = s[0]; g.h = s[1]; g.w = s[2]; g.c = s[3];
  g.kh = k.first; g.kw = k.second; g.sh = st.first; g.sw = st.second; g.ph = p.first; g.pw = p.second;
  if (g.h + 2 * g.ph < g.kh || g.w + 2 * g.pw < g.kw) fail(fn, "pooling window is larger than the padded input");
  return g;
}

// ---------------------------------------------------------------------------------------

nb::object quantize_u8_nhwc(const AnyArray& x, int threads) {
  const char* fn = "quantize_u8_nhwc";
  check_threads(fn, threads);
  auto in = arg<float>(x, fn, "x", 4);
  const i64 n = in.dim(0), c = in.dim(1), h = in.dim(2), w = in.dim(3);
  auto out = make_out<std::uint8_t>({n, h, w, c});
  bool finite = true;
  {
    nb::gil_scoped_release release;
    finite = bitflow::ops::quantize_u8_nhwc(in.data, n, c, h, w, out.ptr, threads);
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

nb::dict kernel_set_dict(const KernelSet& ks) {
  const auto opt = [](const char* name) { return name != nullptr ? nb::cast(std::string(name)) : nb::none(); };
  nb::dict d;
  d["name"] = ks.name; d["bgemm"] = ks.bgemm_name; d["sgemm"] = ks.sgemm_name; d["igemm_u8i8"] = ks.igemm_name;
  d["bitpack_f32"] = ks.bitpack_name; d["threshold_bits"] = ks.threshold_name;
  // kernels of the prepared layers (None: they fall back to bgemm / igemm_u8i8 / sgemm above)
  d["bgemm_packed"] = opt(ks.bgemm_packed_name);
  d["igemm_packed"] = opt(ks.igemm_packed_name);
  d["sgemm_packed"] = opt(ks.sgemm_packed_name);
  return d;
}

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
  const float* bias = nullptr;
  if (bias_) {
    auto b = arg<float>(*bias_, fn, "bias", 1);
    if (b.dim(0) != w.dim(0)) fail(fn, "bias must have shape (" + std::to_string(w.dim(0)) + ",)");
    bias = b.data;
  }
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
  const float* bias = nullptr;
  if (bias_) {
    auto b = arg<float>(*bias_, fn, "bias", 1);
    if (b.dim(0) != w.dim(0)) fail(fn, "bias must have shape (" + std::to_string(w.dim(0)) + ",)");
    bias = b.data;
  }
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
  // |sum| <= K * 255 * 128 must fit in int32.
  if (g.kh * g.kw * g.c * 255 * 128 > INT32_MAX)
    fail(fn, "kh * kw * C = " + std::to_string(g.kh * g.kw * g.c) + " is too large for an exact int32 sum (max 65793)");
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
  // |sum| <= K * 255 must fit in int32 (and the int8 path below needs K * 255 * 128 to).
  if (g.kh * g.kw * g.c * 255 * 128 > INT32_MAX)
    fail(fn, "kh * kw * C = " + std::to_string(g.kh * g.kw * g.c) + " is too large for an exact int32 sum (max 65793)");
  auto out = make_out<std::int32_t>({g.n, g.ho(), g.wo(), g.o});
  {
    nb::gil_scoped_release release;
    bitflow::ops::conv2d_u8b1(ks, threads, x.data, w.data, g, out.ptr);
  }
  return nb::cast(out.array);
}


// ---- MCN W1/A8 activation codes (threshold_u8, threshold_f32_u8; bitflow.ir.ops.w1) -------------
/// x [..., O] (int32 or float32), thr [O, L] (same type, 1 <= L <= 255, ascending, no NaN),
/// direction [O] -> uint8 [..., O], the number of passed thresholds.
template <class T, class Kernel>
nb::object u8_codes_op(const char* fn, const AnyArray& x_, const AnyArray& thr_, const AnyArray& dir_,
                       Kernel kernel) {
  auto x = arg<T>(x_, fn, "x", -1);
  auto thr = arg<T>(thr_, fn, "thr", 2);
  auto dir = arg<std::int8_t>(dir_, fn, "direction", 1);
  const i64 o = x.dim(-1);
  if (o < 1) fail(fn, "the last axis (channels) of x must not be empty");
  if (thr.dim(0) != o) fail(fn, "thr must have shape (O, L) with O = " + std::to_string(o));
  const i64 L = thr.dim(1);
  if (L < 1 || L > 255) fail(fn, "thr must have 1 <= L <= 255 thresholds per channel, got L = " + std::to_string(L));
  check_direction(fn, dir, o);
  for (i64 c = 0; c < o; ++c)
    for (i64 l = 0; l < L; ++l) {
      const T t = thr.data[c * L + l];
      if constexpr (std::is_floating_point_v<T>) {
        if (std::isnan(t)) fail(fn, "thresholds must not be NaN");
      }
      if (l > 0 && t < thr.data[c * L + l - 1])
        fail(fn, "thresholds must be sorted ascending per channel; channel " + std::to_string(c) + " is not");
    }
  const i64 rows = rows_of(x.shape);
  auto out = make_out<std::uint8_t>(x.shape);
  {
    nb::gil_scoped_release release;
    kernel(x.data, rows, o, thr.data, L, dir.data, out.ptr);
  }
  return nb::cast(out.array);
}

nb::object threshold_u8(const AnyArray& acc_, const AnyArray& thr_, const AnyArray& dir_) {
  return u8_codes_op<std::int32_t>("threshold_u8", acc_, thr_, dir_, bitflow::ops::threshold_u8);
}

nb::object threshold_f32_u8(const AnyArray& y_, const AnyArray& thr_, const AnyArray& dir_) {
  return u8_codes_op<float>("threshold_f32_u8", y_, thr_, dir_, bitflow::ops::threshold_f32_u8);
}
// ---- end MCN W1/A8 activation codes

// ---- prepared binary layer ---------------------------------------------------------------

using bitflow::ops::BinaryLayer;

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
                       nb::handle pool_stride, nb::handle pool_padding) {
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
  const LayerPost post = layer_post(fn, g.o, thr_, dir_, pool_kernel, pool_stride, pool_padding);
  bitflow::ops::ConvGeom filt = g;
  filt.n = 0; filt.h = 0; filt.w = 0;
  new (self) BinaryLayer(ks, w.data, filt, pad_value, post.thr ? post.thr->data : nullptr,
                         post.dir ? post.dir->data : nullptr, post.thr_len, post.pool);
}

/// The fixed-point first layer, prepared (a distinct Python type for the uint8 input).
struct Int8ConvLayer : BinaryLayer {
  using BinaryLayer::BinaryLayer;
};

void int8_layer_init(Int8ConvLayer* self, const AnyArray& w_, nb::handle stride, nb::handle padding,
                     const std::string& kernels, std::optional<AnyArray> thr_, std::optional<AnyArray> dir_,
                     nb::handle pool_kernel, nb::handle pool_stride, nb::handle pool_padding) {
  const char* fn = "Int8ConvLayer";
  const KernelSet& ks = kernels_arg(fn, kernels);
  auto w = arg<std::int8_t>(w_, fn, "w", 4);
  if (w.dim(0) < 1 || w.dim(3) < 1) fail(fn, "w must have shape (O, kh, kw, C) with O, C >= 1");
  auto g = conv_geom(fn, 1, w.dim(1), w.dim(2), w.dim(3), w.dim(0), w.dim(1), w.dim(2),
                     pair_arg(fn, "stride", stride), pair_arg(fn, "padding", padding));
  if (g.kh * g.kw * g.c * 255 * 128 > INT32_MAX)
    fail(fn, "kh * kw * C = " + std::to_string(g.kh * g.kw * g.c) + " is too large for an exact int32 sum (max 65793)");
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


// ---- the fused float stream (bitflow/float_stream.h) ------------------------------------
using bitflow::ops::FloatStream;

/// The AVX-512 float rows go with a kernel set whose float bit packing is AVX-512 (the same
/// ISA requirement), so BITFLOW_KERNELS=avx2 / scalar / ref also force the portable rows.
bool wide_for(const KernelSet& ks) {
  return std::string(ks.bitpack_name).find("avx512") != std::string::npos &&
         bitflow::ops::float_stream_wide_available();
}

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
  new (self) FloatStream(o, std::move(ops), thr, dir, keep_y, wide_for(ks));
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
  std::vector<i64> shape = {g.n, g.ho(), g.wo(), g.o};
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
  const float* bias = nullptr;
  if (bias_) {
    auto b = arg<float>(*bias_, fn, "bias", 1);
    if (b.dim(0) != w.dim(0)) fail(fn, "bias must have shape (" + std::to_string(w.dim(0)) + ",)");
    bias = b.data;
  }
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

nb::object maxpool_f32_fast(const AnyArray& x_, nb::handle kernel, nb::handle stride, nb::handle padding, int threads,
                            const std::string& kernels) {
  const char* fn = "maxpool_f32_fast";
  check_threads(fn, threads);
  const bool wide = wide_for(kernels_arg(fn, kernels));
  auto x = arg<float>(x_, fn, "x", 4);
  auto g = pool_geom(fn, x.shape, kernel, stride, padding);
  auto out = make_out<float>({g.n, g.ho(), g.wo(), g.c});
  {
    nb::gil_scoped_release release;
    bitflow::ops::maxpool_f32_fast(x.data, g, out.ptr, threads, wide);
  }
  return nb::cast(out.array);
}

// ---- DAG ops: residual adds, average pools, concatenation (bitflow/elementwise.h) ------

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

}  // namespace

NB_MODULE(_native, m) {
  m.doc() =
      "bitflow native core: bit packing, binary GEMM/convolution (xor-popcount), MBBN bit "
      "planes, output transforms, pooling, float/int8 first and last layers, ISA dispatch.";

  // Resolve the default once at import: a bad BITFLOW_KERNELS fails loudly here.
  bitflow::default_kernel_set();

  m.def("cpu_features", [] {
    const auto& f = bitflow::cpu_features();
    nb::dict d;
    d["popcnt"] = f.popcnt; d["avx2"] = f.avx2; d["fma"] = f.fma; d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw; d["avx512vl"] = f.avx512vl; d["avx512vpopcntdq"] = f.avx512vpopcntdq;
    d["avx512vnni"] = f.avx512vnni; d["avxvnni"] = f.avxvnni; d["neon"] = f.neon; d["dotprod"] = f.dotprod;
    return d;
  }, "CPU features from cpuid/xgetbv (AVX needs OS ymm state, AVX-512 needs zmm/opmask state).");

  m.def("available_kernels", [] {
    std::vector<std::string> v;
    for (const KernelSet* ks : bitflow::eligible_kernel_sets()) v.emplace_back(ks->name);
    return v;
  }, "Kernel sets compiled into this build AND supported by this CPU; 'ref' first, best last.");

  m.def("compiled_kernels", [] {
    std::vector<std::string> v;
    for (const KernelSet* ks : bitflow::compiled_kernel_sets()) v.emplace_back(ks->name);
    return v;
  }, "Every kernel set compiled into this build (some may be unsupported by this CPU).");

  m.def("default_kernels", [] { return std::string(bitflow::default_kernel_set().name); },
        "The kernel set used when kernels='' (BITFLOW_KERNELS if set at import, else 'auto', the per-op selection).");

  m.def("kernel_info", [](const std::string& kernels) {
    return kernel_set_dict(kernels_arg("kernel_info", kernels));
  }, "kernels"_a = "", "Names of the inner kernels of a kernel set ('auto': the per-op selection).");

  m.def("compose_kernels", [](const nb::dict& features) {
    bitflow::CpuFeatures f;
    bool* fields[] = {&f.popcnt, &f.avx2, &f.fma, &f.avx512f, &f.avx512bw, &f.avx512vl,
                      &f.avx512vpopcntdq, &f.avx512vnni, &f.avxvnni, &f.neon, &f.dotprod};
    const char* keys[] = {"popcnt", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                          "avx512vpopcntdq", "avx512vnni", "avxvnni", "neon", "dotprod"};
    for (auto item : features) {
      const std::string key = nb::cast<std::string>(item.first);
      bool known = false;
      for (std::size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); ++i)
        if (key == keys[i]) {
          *fields[i] = nb::cast<bool>(item.second);
          known = true;
        }
      if (!known) fail("compose_kernels", "unknown CPU feature '" + key + "'");
    }
    return kernel_set_dict(bitflow::compose_kernel_set(f));
  }, "features"_a,
     "The per-op selection ('auto') that a CPU with these features (missing keys: absent) would get, "
     "as kernel_info() names; for testing the selection rules on any machine.");

  m.def("_set_grain_ns", [](double ns) {
    if (!(ns >= 0.0)) fail("_set_grain_ns", "the grain must be >= 0");
    return bitflow::ops::set_grain_ns(ns);
  }, "ns"_a,
     "Testing hook: the smallest estimated work (ns of one core) given to another thread "
     "(0: every op uses all its threads, so small inputs take every split). Returns the old value.");

  m.def("peak_probe", [](const std::string& kernels, double seconds) {
    const KernelSet& ks = kernels_arg("peak_probe", kernels);
    if (!(seconds > 0.0 && seconds <= 60.0)) fail("peak_probe", "seconds must be in (0, 60]");
    nb::gil_scoped_release release;
    return ks.peak_probe(seconds);
  }, "kernels"_a = "", "seconds"_a = 0.2,
     "Binary MACs/s of a register-resident xor + popcount + add loop (one thread) for a kernel set.");

  m.def("quantize_u8_nhwc", &quantize_u8_nhwc, "x"_a, "threads"_a = 1,
        "float32 [N, C, H, W] in [0, 1] -> uint8 [N, H, W, C] = clip(rint(x * 255), 0, 255) (float32 "
        "multiply, round half to even): a fixed-point first layer's input; ValueError on NaN / inf.");

  m.def("nhwc_f32", &nhwc_f32, "x"_a, "threads"_a = 1,
        "float32 [N, C, H, W] -> float32 [N, H, W, C] (the same values): a float first layer's input; "
        "ValueError on NaN / inf.");

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
  m.def("threshold_u8", &threshold_u8, "acc"_a, "thr"_a, "direction"_a,
        "int32 [..., O] -> uint8 [..., O]: the number of passed thresholds (acc >= thr[o, l] for "
        "direction +1, acc <= thr[o, l] for -1) among L <= 255 ascending ones per channel.");
  m.def("threshold_f32_u8", &threshold_f32_u8, "y"_a, "thr"_a, "direction"_a,
        "float32 form of threshold_u8 (a NaN passes every threshold).");
  m.def("conv2d_u8i8", &conv2d_u8i8, "x"_a, "w"_a, "stride"_a = nb::make_tuple(1, 1),
        "padding"_a = nb::make_tuple(0, 0), "kernels"_a = "", "threads"_a = 1,
        "Exact fixed-point conv: x uint8 [N, H, W, C], w int8 [O, kh, kw, C], zero padding -> int32.");

  m.def("threshold_bits_range", &threshold_bits_range, "acc"_a, "lo"_a, "hi"_a, "kernels"_a = "",
        "int32 [..., O] -> uint64 [..., ceil(O/64)]: bit 1 (-1) iff acc < lo or acc > hi (per channel); "
        "the kernel set's fused threshold (direction +1: [T, INT32_MAX], -1: [INT32_MIN, T]).");


  // DAG ops (bitflow/elementwise.h)
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
  m.def("concat_bits", &concat_bits, "xs"_a, "channels"_a,
        "Concatenate packed bit rows (channels[i] real bits each) channel by channel.");

  nb::class_<BinaryLayer>(m, "BinaryLayer",
      "A prepared binary layer: bconv2d [-> maxpool_i32] [-> threshold_bits] in one call, with the "
      "weights laid out and the zero-padding correction's tap dots computed once. A binary dense "
      "layer is w [O, 1, 1, Kw] applied to x [N, 1, 1, Kw] with channels = k_bits. Results equal the "
      "unfused ops bit for bit; safe to call from several Python threads.")
      .def("__init__", &binary_layer_init, "w"_a, "channels"_a, "stride"_a = nb::make_tuple(1, 1),
           "padding"_a = nb::make_tuple(0, 0), "pad_value"_a = 0, "kernels"_a = "", "thr"_a = nb::none(),
           "direction"_a = nb::none(), "pool_kernel"_a = nb::none(), "pool_stride"_a = nb::none(),
           "pool_padding"_a = 0)
      .def("__call__", &binary_layer_call, "x"_a, "threads"_a = 1,
           "x uint64 [N, H, W, Cw] -> uint64 bits [N, Ho, Wo, ceil(O/64)] (per-channel thr), bits [N, ceil(Ho*Wo*O/64)] "
           "(flattened thr of Ho*Wo*O values, HWC order) or int32 [N, Ho, Wo, O] (no thr).")
      .def_prop_ro("kernels", [](const BinaryLayer& l) { return std::string(l.kernels().name); })
      .def_prop_ro("out_channels", [](const BinaryLayer& l) { return l.out_channels(); })
      .def_prop_ro("has_threshold", [](const BinaryLayer& l) { return l.has_threshold(); });

  nb::class_<FloatStream>(m, "FloatStream",
      "The fused float stream of residual networks (bitflow/float_stream.h): operands (int32 or float32, "
      "each through its (scale, bias) stages as scale_bias / affine_f32) summed left to right in float32 "
      "(add_f32), kept and / or thresholded to bits (threshold_f32_bits). Equal to the unfused ops bit for bit.")
      .def("__init__", &float_stream_init, "channels"_a, "i32"_a, "stages"_a, "thr"_a = nb::none(),
           "direction"_a = nb::none(), "keep_y"_a = true, "kernels"_a = "")
      .def_prop_ro("wide", [](const FloatStream& f) { return f.wide(); })
      .def("__call__", &float_stream_call, "xs"_a, "threads"_a = 1,
           "operands [..., O] -> y float32 [..., O], bits uint64 [..., ceil(O/64)] or the tuple (y, bits).")
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
  m.def("maxpool_f32_fast", &maxpool_f32_fast, "x"_a, "kernel"_a, "stride"_a = nb::none(), "padding"_a = 0,
        "threads"_a = 1, "kernels"_a = "", "maxpool_f32 with the channel loop vectorized and rows over threads (equal bit for bit).");

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
